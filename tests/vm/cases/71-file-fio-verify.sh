#!/bin/bash
# fio write + verify (crc32c, verify_fatal) through file devices with two
# queues, at queue depth 1 and 64: one backed by a file on tmpfs, one by a
# file on ext4 (on a brd RAM disk) with O_DIRECT. Afterwards the backing files
# hold what the devices hold, byte for byte.
# vm-tier: full
# vm-timeout: 240
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd fio mkfs.ext4 jq cmp

mnt=$CASE_DIR/ext4
ext4_on_ram_disk "$mnt" 128
cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
start_ublkd_api "$cfg"

tmpfs_img=$CASE_DIR/tmpfs.img
ext4_img=$mnt/ext4.img
d_tmpfs=$(ctl_ok add ft --backend file --path "$tmpfs_img" --create --size 64MiB --queues 2 --depth 64)
d_ext4=$(ctl_ok add fe --backend file --path "$ext4_img" --create --size 64MiB --queues 2 --depth 64)
log "tmpfs file at $d_tmpfs, ext4 file at $d_ext4"
[[ $(json_get "$(ctl_ok --json info fe)" .backend.direct_io) == true ]] || fail "fe is not using O_DIRECT"

for d in "$d_tmpfs" "$d_ext4"; do
    nq=$(compgen -G "/sys/block/${d#/dev/}/mq/*" | wc -l)
    ((nq == 2)) || fail "$d has $nq hardware queues, want 2"
    [[ $(<"/sys/block/${d#/dev/}/queue/write_cache") == "write back" ]] ||
        fail "$d does not advertise a volatile write cache"
done

# Two jobs, one per CPU, on their own halves of the device: the block layer
# maps each CPU to its own hardware queue, so both queues carry requests.
for d in "$d_tmpfs" "$d_ext4"; do
    fio_verify "$d" --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
        --size=32M --offset_increment=32M --iodepth=1 --bs=4k --number_ios=1024
    fio_verify "$d" --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
        --size=32M --offset_increment=32M --iodepth=64 --bsrange=4k-128k
    assert_queues_used "$d"
done

# The device and its file agree (FLUSH reached the file: conv=fsync below is
# a flush; the compare reads the device with O_DIRECT and the file from the
# page cache, which is coherent with O_DIRECT writes).
sync
for pair in "$d_tmpfs:$tmpfs_img" "$d_ext4:$ext4_img"; do
    d=${pair%%:*} f=${pair#*:}
    cmp <(dd if="$d" bs=1M iflag=direct status=none) "$f" || fail "$d and $f differ"
done
log "devices and backing files agree"

ctl_ok del ft >/dev/null
ctl_ok del fe >/dev/null
stop_ublkd 20
assert_no_ublk_devices
e2fsck_out=$(umount "$mnt" && e2fsck -fn /dev/ram0 2>&1) || { echo "$e2fsck_out" >&2; fail "ext4 under the backing file is damaged"; }
log "file fio verify passed"
