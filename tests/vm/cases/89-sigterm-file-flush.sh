#!/bin/bash
# SIGTERM under load with a file device (buffered, so its writes sit in the
# page cache until flushed): ublkd exits cleanly within 10 s, and every
# write acknowledged before it went is in the backing file afterwards. The
# file lives on ext4 and is read back after a remount.
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd fio

cfg=$CASE_DIR/config
ext4_on_ram_disk "$CASE_DIR/ext4" 160
img=$CASE_DIR/ext4/flush.img
write_spec "$cfg" fl "{\"name\":\"fl\",\"backend\":{\"type\":\"file\",\"path\":\"$img\",\"size\":\"128MiB\",\"create\":true,\"direct_io\":false},\"queues\":2,\"queue_depth\":64}"
start_ublkd "$cfg" --state-dir "$CASE_DIR/state"
dev=$(wait_live fl 20)

# Load: fio random writes at iodepth 64 on the second half. Record: a
# writer puts a known 1 MiB block at MiB i of the first half with O_DIRECT,
# one dd at a time, and notes i only after dd returned success.
fio --name=load --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
    --iodepth=64 --offset=64M --size=64M --time_based --runtime=60 >"$CASE_DIR/fio.out" 2>&1 &
fio_pid=$!
add_cleanup "kill -KILL $fio_pid 2>/dev/null || true"
head -c 1048576 /dev/urandom >"$CASE_DIR/block"
(
    for ((i = 0; i < 64; i++)); do
        dd if="$CASE_DIR/block" of="$dev" bs=1M seek="$i" oflag=direct conv=nocreat,notrunc status=none 2>/dev/null ||
            exit 0
        echo "$i" >>"$CASE_DIR/acked"
    done
) &
writer=$!
sleep 2
ublkd_alive "$fio_pid" || { cat "$CASE_DIR/fio.out" >&2; fail "fio ended before the signal"; }
ublkd_alive "$writer" || fail "the writer finished before the signal"

t0=${EPOCHREALTIME/./}
stop_ublkd 10
log "ublkd exited $(((${EPOCHREALTIME/./} - t0) / 1000)) ms after SIGTERM"
deadline=$((${EPOCHREALTIME/./} + 20000000))
for p in "$fio_pid" "$writer"; do
    while ublkd_alive "$p"; do
        ((${EPOCHREALTIME/./} < deadline)) || fail "pid $p still runs 20 s after the device went away"
        sleep 0.1
    done
    wait "$p" || true
done
assert_no_ublk_devices
acked=$(wc -l <"$CASE_DIR/acked")
((acked > 0)) || fail "no write was acknowledged before the signal"

umount "$CASE_DIR/ext4"
mount -t ext4 /dev/ram0 "$CASE_DIR/ext4"
while read -r i; do
    cmp <(dd if="$img" bs=1M skip="$i" count=1 status=none) "$CASE_DIR/block" ||
        fail "acknowledged MiB $i is not in the backing file"
done <"$CASE_DIR/acked"
log "all $acked acknowledged MiB are in the backing file"
