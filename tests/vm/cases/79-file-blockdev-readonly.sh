#!/bin/bash
# The file backend on a block device and read-only. A device on /dev/ram0
# takes its size from the block device (BLKGETSIZE64) and writes land on it;
# a mounted block device is refused as in use. A read-only device refuses
# writes and reads the file; two read-only devices may share a file, but a
# writable one is refused while they hold it (the lock).
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd mkfs.ext4 blockdev sha256sum dd

modprobe brd rd_nr=1 rd_size=65536 || fail "cannot load brd" # 64 MiB
add_cleanup "rmmod brd"

cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
start_ublkd_api "$cfg"

# A block device as the backing store.
dev=$(ctl_ok add b0 --backend file --path /dev/ram0 --queues 2)
(($(dev_size "$dev") == $(blockdev --getsize64 /dev/ram0))) || fail "$dev is not the size of /dev/ram0"
dd if=/dev/urandom of="$CASE_DIR/pat" bs=1M count=4 status=none
dd if="$CASE_DIR/pat" of="$dev" bs=1M seek=8 oflag=direct conv=fsync status=none
ctl_ok del b0 >/dev/null
got=$(dd if=/dev/ram0 bs=1M skip=8 count=4 iflag=direct status=none | sha256sum)
[[ $got == "$(sha256sum <"$CASE_DIR/pat")" ]] || fail "/dev/ram0 does not hold what b0 wrote"
log "block device backend passed"

# A mounted block device is not served.
mkfs.ext4 -q -F /dev/ram0
mkdir -p "$CASE_DIR/mnt"
mount /dev/ram0 "$CASE_DIR/mnt"
add_cleanup "umount $CASE_DIR/mnt 2>/dev/null || true"
err=$(ctl_err add b1 --backend file --path /dev/ram0)
[[ $err == *"/dev/ram0 is in use"*"[backend-error]" ]] || fail "mounted block device: $err"
umount "$CASE_DIR/mnt"

# Read-only: reads the file, refuses writes; shares the file with another
# read-only device; a writable device is refused meanwhile.
img=$CASE_DIR/ro.img
dd if=/dev/urandom of="$img" bs=1M count=16 status=none
want=$(sha256sum <"$img")
r0=$(ctl_ok add r0 --backend file --path "$img" --read-only)
r1=$(ctl_ok add r1 --backend file --path "$img" --read-only --buffered)
[[ $(<"/sys/block/${r0#/dev/}/ro") == 1 ]] || fail "$r0 is not read-only in the kernel"
for d in "$r0" "$r1"; do
    got=$(dd if="$d" bs=1M iflag=direct status=none | sha256sum)
    [[ $got == "$want" ]] || fail "$d does not read the file"
done
dd if=/dev/zero of="$r0" bs=4k count=1 oflag=direct status=none 2>/dev/null && fail "a write to read-only $r0 succeeded"
err=$(ctl_err add w0 --backend file --path "$img")
[[ $err == *"already in use"*"[backend-error]" ]] || fail "writable device on a shared read-only file: $err"
[[ $(sha256sum <"$img") == "$want" ]] || fail "the read-only file changed"
ctl_ok del r0 >/dev/null
ctl_ok del r1 >/dev/null
# Once they are gone, a writable device may have it.
ctl_ok add w0 --backend file --path "$img" >/dev/null
ctl_ok del w0 >/dev/null

stop_ublkd 20
assert_no_ublk_devices
log "block device and read-only passed"
