#!/bin/bash
# A file device added while its file was on tmpfs has UBLK_F_USER_COPY (the
# kernel copies nothing itself; the file's mapped pages are copied through
# the char device). If ublkd is killed and the path then leads to a copy of
# the file on ext4, the recovered device still has USER_COPY but its backend
# serves from buffers: the queue threads copy between the requests and
# their buffers themselves. The data written before the kill reads back,
# new writes verify at iodepth 1 and 64 on two queues, the live line says
# how the device is served, and what was written lands in the ext4 file.
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
truncate -s 64M "$on_tmpfs"
ln -s "$on_tmpfs" "$link"
write_spec "$cfg" f0 "{\"name\":\"f0\",\"backend\":{\"type\":\"file\",\"path\":\"$link\",\"size\":\"64MiB\"},\"queues\":2}"
start_ublkd "$cfg" --state-dir "$state"
dev=$(wait_live f0 20)
grep -qE "kernel ublk features .*[:|]USER_COPY[|]" "$UBLKD_LOG" || skip "the kernel does not offer USER_COPY"
grep -q "device f0 live at $dev .*; user copy (UBLK_F_USER_COPY)" "$UBLKD_LOG" ||
    fail "the tmpfs file's device was not given USER_COPY: $(grep 'device f0 live' "$UBLKD_LOG")"

head -c 16777216 /dev/urandom >"$CASE_DIR/pattern"
dd if="$CASE_DIR/pattern" of="$dev" bs=1M oflag=direct status=none
sum=$(sha256sum <"$CASE_DIR/pattern" | cut -d' ' -f1)

old_pid=$UBLKD_PID
log "kill -9 ublkd (pid $old_pid); the path now leads to a copy on ext4"
kill -KILL "$old_pid"
wait "$old_pid" 2>/dev/null || true
cp "$on_tmpfs" "$mnt/d.img"
rm "$on_tmpfs"
ln -sfn "$mnt/d.img" "$link"

start_ublkd "$cfg" --state-dir "$state"
line=$(wait_for_log "device f0 recovered: live again at $dev" 30)
[[ $(dd if="$dev" bs=1M count=16 iflag=direct status=none | sha256sum | cut -d' ' -f1) == "$sum" ]] ||
    fail "the data written before the kill does not read back through the recovered device"
[[ $line == *"user copy (UBLK_F_USER_COPY) through buffers"* ]] ||
    fail "the recovered device does not say it copies through buffers: $line"
fio_verify "$dev" --size=16M --offset=16M --iodepth=1
fio_verify "$dev" --size=16M --offset=32M --iodepth=64 --bs=4k-128k
dd if="$CASE_DIR/pattern" of="$dev" bs=1M seek=16 oflag=direct status=none

stop_ublkd 20
assert_no_ublk_devices
cmp -n 16777216 "$mnt/d.img" "$CASE_DIR/pattern" || fail "the ext4 file lost the data written before the kill"
cmp -n 16777216 -i 16777216:0 "$mnt/d.img" "$CASE_DIR/pattern" ||
    fail "the ext4 file does not hold what was written through the recovered device"
log "recovered USER_COPY device served through buffers"

grep -qE "kernel ublk features .*[|]AUTO_BUF_REG[|]" "$UBLKD_LOG" || {
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
ctl_in() { "$UBLKCTL" --socket "$state/ublkd.sock" "$@"; }
ctl_in del z0 >/dev/null || fail "del of the unservable device failed"
stop_ublkd 20
assert_no_ublk_devices
log "unservable zero-copy device reported and removed"
