#!/bin/bash
# The VM itself works: ublk_drv is loaded and /dev/ublk-control exists, the
# packaged reference modules load, and the tools other cases rely on (fio
# with io_uring, mkfs.ext4, e2fsck, blkdiscard, dd, sha256sum) run. Needs no
# daemon, so it proves the harness on its own.
# vm-timeout: 120
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "${BASH_SOURCE%/*}/../lib.sh"

log "kernel $(uname -r)"

[[ -d /sys/module/ublk_drv ]] || fail "ublk_drv is not loaded"
grep -qw '^ublk_drv' /proc/modules || log "ublk_drv is built in"
[[ -c /dev/ublk-control ]] || fail "/dev/ublk-control is missing or not a character device"
log "ublk_drv loaded, /dev/ublk-control present ($(stat -c '%t:%T' /dev/ublk-control))"
if [[ -r /sys/module/ublk_drv/parameters/ublks_max ]]; then
    log "ublks_max=$(cat /sys/module/ublk_drv/parameters/ublks_max)"
fi
assert_no_ublk_devices 0

# io_uring must be usable by root (some distributions restrict it).
if [[ -r /proc/sys/kernel/io_uring_disabled ]]; then
    [[ $(cat /proc/sys/kernel/io_uring_disabled) == 0 ]] ||
        fail "io_uring is disabled (kernel.io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled))"
fi

# Reference block devices the daemon tests compare against.
load_module brd rd_nr=1 rd_size=65536
[[ -b /dev/ram0 ]] || fail "brd loaded but /dev/ram0 is missing"
load_module null_blk nr_devices=1
[[ -b /dev/nullb0 ]] || fail "null_blk loaded but /dev/nullb0 is missing"
load_module loop
[[ -c /dev/loop-control ]] || fail "loop loaded but /dev/loop-control is missing"

# fio with io_uring and verification, as fio_verify runs it.
fio_verify /dev/ram0 --size=16M

# dd and checksums agree on what was written.
dd if=/dev/urandom of="$CASE_DIR/pattern" bs=1M count=4 status=none
dd if="$CASE_DIR/pattern" of=/dev/ram0 bs=1M oflag=direct status=none
want=$(sha256sum <"$CASE_DIR/pattern" | cut -d' ' -f1)
got=$(dd if=/dev/ram0 bs=1M count=4 iflag=direct status=none | sha256sum | cut -d' ' -f1)
[[ $want == "$got" ]] || fail "read back differs from what dd wrote ($got != $want)"
md5sum /dev/null >/dev/null

# A file system on a block device, as the ext4 cases use it.
blkdiscard -f /dev/ram0
mkfs.ext4 -q -F /dev/ram0
mkdir -p "$CASE_DIR/mnt"
mount /dev/ram0 "$CASE_DIR/mnt"
add_cleanup "umount '$CASE_DIR/mnt' 2>/dev/null || true"
echo hello >"$CASE_DIR/mnt/file"
sync
umount "$CASE_DIR/mnt"
e2fsck -f -n /dev/ram0 >/dev/null || fail "e2fsck found errors on a fresh ext4"

log "kernel smoke passed"
