#!/bin/bash
# The main job, end to end: ublkd serves the default memory device
# (config/devices.d/mem0.json: 256 MiB, 2 queues), and it works as a disk:
# mkfs.ext4, mount, write files, read them back, unmount, stop the daemon.
# scripts/run-main.sh runs this on the host when /dev/ublk-control exists,
# else in the VM; it is also the first VM test.
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd mkfs.ext4 sha256sum
cfg=$CASE_DIR/config
write_spec "$cfg" mem0 '{
  "name": "mem0",
  "backend": { "type": "mem", "size": "256MiB" },
  "queues": 2, "queue_depth": 128, "logical_block_size": 512, "read_only": false
}'
start_ublkd "$cfg"
dev=$(wait_live mem0 15)
echo "ublkd serves mem0 at $dev ($(dev_size "$dev") bytes)"

mkfs.ext4 -q -F "$dev"
mnt=$CASE_DIR/mnt
mkdir -p "$mnt"
mount "$dev" "$mnt"
add_cleanup "umount '$mnt' 2>/dev/null || true"
echo "mounted $dev on $mnt:"
df -h "$mnt" | tail -n 1

dd if=/dev/urandom of="$mnt/random.bin" bs=1M count=16 status=none
echo "hello from ublkd" >"$mnt/hello.txt"
want=$(sha256sum <"$mnt/random.bin" | cut -d' ' -f1)
sync
umount "$mnt"
echo 3 >/proc/sys/vm/drop_caches

# Read back through a fresh mount so the data comes from the device, not the
# page cache of the first mount.
mount "$dev" "$mnt"
got=$(sha256sum <"$mnt/random.bin" | cut -d' ' -f1)
echo "wrote 16 MiB, sha256 $want"
echo "read back,    sha256 $got"
[[ $want == "$got" ]] || fail "data read back differs from data written"
[[ $(cat "$mnt/hello.txt") == "hello from ublkd" ]] || fail "hello.txt differs"
echo "hello.txt: $(cat "$mnt/hello.txt")"
umount "$mnt"

stop_ublkd 15
assert_no_ublk_devices
echo "main job passed: mkfs, mount, write, read back all good"
