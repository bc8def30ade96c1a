#!/bin/bash
# SIGTERM under load with a file device (buffered, so its writes sit in the
# page cache until flushed): ublkd exits cleanly within 10 s, and every
# write acknowledged before it went is on the backing store afterwards.
#
# "On the backing store" is read where no later flush can help: the file
# lives on ext4 on a brd RAM disk, the kernel's periodic writeback is off
# for the case, and right after ublkd exits the RAM disk is copied with
# O_DIRECT. Only what ublkd's own fdatasync wrote out is in that copy; the
# copy's journal is replayed by e2fsck and the file read from it. A second
# round with UBLKD_TEST_SKIP_SYNC (the stop leaves the fdatasync out) must
# find acknowledged writes missing from the copy: the check can fail.
# vm-timeout: 240
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd fio e2fsck losetup cmp

load_module loop
ext4_on_ram_disk "$CASE_DIR/ext4" 160

# Dirty pages stay dirty until someone syncs: no flusher wake-ups, no
# expiry, no threshold within reach of this case's 128 MiB.
# Writing a ratio back turns its *_bytes counterpart off again.
vm_knobs=(dirty_writeback_centisecs dirty_expire_centisecs dirty_background_ratio dirty_ratio)
declare -A saved=()
for k in "${vm_knobs[@]}"; do saved[$k]=$(cat "/proc/sys/vm/$k"); done
restore_writeback() {
    local k
    for k in "${vm_knobs[@]}"; do echo "${saved[$k]}" >"/proc/sys/vm/$k"; done
}
add_cleanup restore_writeback
echo 0 >/proc/sys/vm/dirty_writeback_centisecs
echo 360000 >/proc/sys/vm/dirty_expire_centisecs
echo $((1024 * 1048576)) >/proc/sys/vm/dirty_background_bytes
echo $((1200 * 1048576)) >/proc/sys/vm/dirty_bytes

head -c 1048576 /dev/urandom >"$CASE_DIR/block"
snap=$CASE_DIR/ram0.copy
snap_mnt=$CASE_DIR/copy
mkdir -p "$snap_mnt"

# round NAME: a device on ext4/NAME.img under load, SIGTERM, then copy the
# RAM disk. Sets ACKED (acknowledged MiB) and MISSING (those not in the
# copy's file).
round() {
    local name=$1 cfg=$CASE_DIR/config-$1 img=$CASE_DIR/ext4/$1.img acked=$CASE_DIR/acked-$1
    local fio_pid writer t0 deadline p i loopdev
    : >"$acked"
    write_spec "$cfg" "$name" "{\"name\":\"$name\",\"backend\":{\"type\":\"file\",\"path\":\"$img\",\"size\":\"128MiB\",\"create\":true,\"direct_io\":false},\"queues\":2,\"queue_depth\":64}"
    # What the earlier round left dirty is not this round's to find.
    sync
    start_ublkd "$cfg" --state-dir "$CASE_DIR/state-$name"
    local dev
    dev=$(wait_live "$name" 20)

    # Load: fio random writes at iodepth 64 on the second half. Record: a
    # writer puts a known 1 MiB block at MiB i of the first half with
    # O_DIRECT, one dd at a time, and notes i only after dd returned.
    fio --name=load --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
        --iodepth=64 --offset=64M --size=64M --time_based --runtime=60 >"$CASE_DIR/fio-$name.out" 2>&1 &
    fio_pid=$!
    add_cleanup "kill -KILL $fio_pid 2>/dev/null || true"
    (
        for ((i = 0; i < 64; i++)); do
            dd if="$CASE_DIR/block" of="$dev" bs=1M seek="$i" oflag=direct conv=nocreat,notrunc status=none 2>/dev/null ||
                exit 0
            echo "$i" >>"$acked"
        done
    ) &
    writer=$!
    sleep 2
    ublkd_alive "$fio_pid" || { cat "$CASE_DIR/fio-$name.out" >&2; fail "$name: fio ended before the signal"; }
    ublkd_alive "$writer" || fail "$name: the writer finished before the signal"

    t0=${EPOCHREALTIME/./}
    stop_ublkd 10
    log "$name: ublkd exited $(((${EPOCHREALTIME/./} - t0) / 1000)) ms after SIGTERM"
    # The copy is taken before anything else can write the page cache out.
    dd if=/dev/ram0 of="$snap" bs=1M iflag=direct status=none || fail "cannot copy /dev/ram0"
    deadline=$((${EPOCHREALTIME/./} + 20000000))
    for p in "$fio_pid" "$writer"; do
        while ublkd_alive "$p"; do
            ((${EPOCHREALTIME/./} < deadline)) || fail "$name: pid $p still runs 20 s after the device went away"
            sleep 0.1
        done
        wait "$p" || true
    done
    assert_no_ublk_devices
    ACKED=$(wc -l <"$acked")
    ((ACKED > 0)) || fail "$name: no write was acknowledged before the signal"

    # e2fsck replays the copy's journal (exit 1: it fixed something, which
    # is the replay); 2 and above mean a damaged file system.
    local rc=0
    e2fsck -fy "$snap" >"$CASE_DIR/e2fsck-$name.out" 2>&1 || rc=$?
    ((rc <= 1)) || { cat "$CASE_DIR/e2fsck-$name.out" >&2; fail "$name: e2fsck of the copy exited $rc"; }
    loopdev=$(losetup --find --show --read-only "$snap") || fail "cannot attach the copy"
    mount -t ext4 -o ro,noload "$loopdev" "$snap_mnt" || fail "cannot mount the copy"
    MISSING=0
    while read -r i; do
        cmp -s <(dd if="$snap_mnt/$name.img" bs=1M skip="$i" count=1 status=none) "$CASE_DIR/block" ||
            MISSING=$((MISSING + 1))
    done <"$acked"
    umount "$snap_mnt"
    losetup -d "$loopdev"
    rm -f "$snap"
}

round fl
((MISSING == 0)) || fail "$MISSING of $ACKED acknowledged MiB are not on the RAM disk after ublkd's clean stop"
log "fl: all $ACKED acknowledged MiB are on the RAM disk (not only in the page cache)"

export UBLKD_TEST_SKIP_SYNC=1
round nosync
unset UBLKD_TEST_SKIP_SYNC
grep -q 'test hook active: a clean stop does not sync' "$UBLKD_LOG" || fail "the skip-sync hook was not active"
((MISSING > 0)) ||
    fail "with the stop's fdatasync left out, all $ACKED acknowledged MiB were still found: the check cannot tell"
log "nosync: without the fdatasync $MISSING of $ACKED acknowledged MiB are missing, as they must be"
