#!/bin/bash
# A read-only device stays read-only: a mem device (all zeros) and a file
# device over known data are read-only in the kernel, and after
# `blockdev --setrw` every way of writing (direct and buffered writes, fio,
# discard, zeroing, mkfs) still fails and the data read back is unchanged.
# Behind the kernel's check, ublkd refuses writes to a read-only device
# itself (QueueConfig::read_only).
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"

img=$CASE_DIR/ro.img
dd if=/dev/urandom of="$img" bs=1M count=16 status=none
want_file=$(sha256sum <"$img")
want_mem=$(head -c $((16 << 20)) /dev/zero | sha256sum)

mdev=$(ctl_ok add rom --backend mem --size 16MiB --read-only)
fdev=$(ctl_ok add rof --backend file --path "$img" --read-only)

# try_write DEV WHAT CMD...: CMD must fail.
try_write() {
    local dev=$1 what=$2
    shift 2
    if "$@" >"$CASE_DIR/try.out" 2>&1; then
        cat "$CASE_DIR/try.out" >&2
        fail "$what on read-only $dev succeeded"
    fi
    log "$what on $dev refused: $(tail -n 1 "$CASE_DIR/try.out")"
}

for pair in "$mdev:$want_mem" "$fdev:$want_file"; do
    dev=${pair%%:*}
    want=${pair#*:}
    [[ $(<"/sys/block/${dev#/dev/}/ro") == 1 ]] || fail "$dev is not read-only in the kernel"
    [[ $(blockdev --getro "$dev") == 1 ]] || fail "blockdev --getro $dev is not 1"
    try_write "$dev" "direct write before setrw" dd if=/dev/urandom of="$dev" bs=4k count=1 oflag=direct

    # The flag setrw clears is the block device's own; the disk's read-only
    # flag, which ublkd set, must keep refusing.
    blockdev --setrw "$dev" || log "blockdev --setrw $dev refused (status $?)"
    try_write "$dev" "direct write after setrw" dd if=/dev/urandom of="$dev" bs=4k count=4 seek=3 oflag=direct
    try_write "$dev" "buffered write after setrw" dd if=/dev/urandom of="$dev" bs=4k count=4 conv=fsync
    try_write "$dev" "fio write after setrw" fio --name=w --filename="$dev" --direct=1 --ioengine=io_uring \
        --rw=randwrite --bs=4k --size=1M --iodepth=8
    try_write "$dev" "discard after setrw" blkdiscard "$dev"
    try_write "$dev" "zeroing after setrw" blkdiscard -z -o 0 -l 1M "$dev"
    try_write "$dev" "mkfs after setrw" mkfs.ext4 -q -F "$dev"
    got=$(dd if="$dev" bs=1M iflag=direct status=none | sha256sum)
    [[ $got == "$want" ]] || fail "$dev's data changed although every write was refused"
    blockdev --setro "$dev" || true
done
[[ $(sha256sum <"$img") == "$want_file" ]] || fail "the read-only backing file changed"

ctl_ok del rom >/dev/null
ctl_ok del rof >/dev/null
stop_ublkd 20
assert_no_ublk_devices
log "read-only devices stayed read-only"
