#!/bin/bash
# A file device added while its file was on tmpfs has UBLK_F_USER_COPY (the
# kernel copies nothing itself; the file's mapped pages are copied through
# the char device). If ublkd is killed and the path then leads to a copy of
# the file on ext4, the recovered device still has USER_COPY but its backend
# serves from buffers: the queue threads copy between the requests and
# their buffers themselves. The data written before the kill reads back,
# new writes verify at iodepth 1 and 64 on both queues, the live line says
# how the device is served, and what was written lands in the ext4 file;
# with a command per request, and batched where the kernel offers BATCH_IO.
# The other way round, where the kernel offers zero copy (7.2): a device
# added with it for a file on ext4 and recovered for a file on tmpfs cannot
# be served (the kernel neither copies nor lets the server copy); ublkd says
# so, naming the remedy, and its reads fail with an error, never with
# wrong data.
# vm-timeout: 180
# 7.2's io_uring reports its own __counted_by annotation on the first
# zero-copy registration (docs/configuration.md, "Zero copy"):
# vm-known-splat: 7.2 UBSAN: array-index-out-of-bounds in .*io_uring/rsrc\.c
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd fio mkfs.ext4 sha256sum cmp
mnt=$CASE_DIR/ext4
ext4_on_ram_disk "$mnt" 128
cfg=$CASE_DIR/config
state=$CASE_DIR/state
on_tmpfs=$CASE_DIR/d.img
link=$CASE_DIR/link.img
head -c 16777216 /dev/urandom >"$CASE_DIR/pattern"
sum=$(sha256sum <"$CASE_DIR/pattern" | cut -d' ' -f1)
# ublkctl (kernel_offers, ctl_ok) talks to the daemon of the state dir.
export UBLKD_SOCKET=$state/ublkd.sock

# bridged MODE: one round, MODE per-request or batched (UBLK_F_BATCH_IO,
# whose commands carry the answers in lists).
bridged() {
    local mode=$1 dev line
    rm -f "$cfg/ublkd.json"
    [[ $mode == batched ]] && echo '{"batch_io": true}' >"$cfg/ublkd.json"
    truncate -s 64M "$on_tmpfs"
    ln -sfn "$on_tmpfs" "$link"
    write_spec "$cfg" f0 "{\"name\":\"f0\",\"backend\":{\"type\":\"file\",\"path\":\"$link\",\"size\":\"64MiB\"},\"queues\":2}"
    start_ublkd "$cfg" --state-dir "$state"
    dev=$(wait_live f0 20)
    kernel_offers USER_COPY || skip "the kernel does not offer USER_COPY"
    # Asked while a daemon runs, for the rounds after this one.
    if [[ $mode == per-request ]]; then
        batch_offered=$(offered BATCH_IO)
        zero_copy_offered=$(offered AUTO_BUF_REG)
    fi
    line=$(grep "device f0 live at $dev" "$UBLKD_LOG")
    [[ $line == *"; user copy (UBLK_F_USER_COPY)"* ]] ||
        fail "the tmpfs file's device was not given USER_COPY: $line"
    if [[ $mode == batched && $line != *"batched io commands"* ]]; then
        fail "the device was not batched: $line"
    fi
    dd if="$CASE_DIR/pattern" of="$dev" bs=1M oflag=direct status=none

    log "$mode: kill -9 ublkd (pid $UBLKD_PID); the path now leads to a copy on ext4"
    kill -KILL "$UBLKD_PID"
    wait "$UBLKD_PID" 2>/dev/null || true
    cp "$on_tmpfs" "$mnt/d.img"
    rm "$on_tmpfs"
    ln -sfn "$mnt/d.img" "$link"

    start_ublkd "$cfg" --state-dir "$state"
    line=$(wait_for_log "device f0 recovered: live again at $dev" 30)
    [[ $(dd if="$dev" bs=1M count=16 iflag=direct status=none | sha256sum | cut -d' ' -f1) == "$sum" ]] ||
        fail "$mode: the data written before the kill does not read back through the recovered device"
    [[ $line == *"user copy (UBLK_F_USER_COPY) through buffers"* ]] ||
        fail "$mode: the recovered device does not say it copies through buffers: $line"
    # Two jobs, one per CPU, on their own halves of 16-48 MiB: both queues.
    fio_verify "$dev" --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
        --offset=16M --size=16M --offset_increment=16M --iodepth=1 --bs=4k --number_ios=1024
    fio_verify "$dev" --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
        --offset=16M --size=16M --offset_increment=16M --iodepth=64 --bsrange=4k-128k
    assert_queues_used "$dev"
    dd if="$CASE_DIR/pattern" of="$dev" bs=1M seek=16 oflag=direct status=none

    stop_ublkd 20
    assert_no_ublk_devices
    cmp -n 16777216 "$mnt/d.img" "$CASE_DIR/pattern" ||
        fail "$mode: the ext4 file lost the data written before the kill"
    cmp -n 16777216 -i 16777216:0 "$mnt/d.img" "$CASE_DIR/pattern" ||
        fail "$mode: the ext4 file does not hold what was written through the recovered device"
    rm "$mnt/d.img"
    log "$mode: recovered USER_COPY device served through buffers"
}

bridged per-request
if [[ $batch_offered == true ]]; then
    bridged batched
else
    log "the kernel offers no BATCH_IO: no batched round"
fi
rm -f "$cfg/ublkd.json"

[[ $zero_copy_offered == true ]] || {
    log "the kernel offers no zero copy (AUTO_BUF_REG): the other direction does not arise"
    exit 0
}
rm "$cfg/devices.d/f0.json"
write_spec "$cfg" z0 "{\"name\":\"z0\",\"backend\":{\"type\":\"file\",\"path\":\"$link\",\"size\":\"16MiB\",\"zero_copy\":true}}"
truncate -s 16M "$mnt/z.img"
ln -sfn "$mnt/z.img" "$link"
start_ublkd "$cfg" --state-dir "$state"
zdev=$(wait_live z0 20)
grep -q "device z0 live at $zdev .*; zero copy" "$UBLKD_LOG" ||
    fail "the ext4 file's device was not given zero copy: $(grep 'device z0 live' "$UBLKD_LOG")"
dd if="$CASE_DIR/pattern" of="$zdev" bs=1M count=4 oflag=direct status=none
kill -KILL "$UBLKD_PID"
wait "$UBLKD_PID" 2>/dev/null || true
cp "$mnt/z.img" "$CASE_DIR/z.img"
ln -sfn "$CASE_DIR/z.img" "$link"
start_ublkd "$cfg" --state-dir "$state"
wait_for_log "device z0 recovered: live again at $zdev" 30 >/dev/null
wait_for_log "device z0: the kernel lends it each request's pages .* every read and write fails with EINVAL; del the device and add it again" 10 >/dev/null
if dd if="$zdev" of=/dev/null bs=1M count=1 iflag=direct status=none 2>"$CASE_DIR/dd.err"; then
    fail "a read of the unservable zero-copy device succeeded"
fi
log "read refused: $(cat "$CASE_DIR/dd.err")"
ctl_ok del z0 >/dev/null
stop_ublkd 20
assert_no_ublk_devices
log "unservable zero-copy device reported and removed"
