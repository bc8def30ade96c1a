#!/bin/bash
# kill -9 of ublkd under fio with an rbd device (two queues, recovery on):
# the next ublkd recovers the device and no acknowledged write is lost (2
# cycles of kill9_verify_cycles); then data a flush covered survives a kill
# -9 with librbd's cache writing back. Each recovery waits for the image's
# exclusive lock: the dead ublkd still holds it until the OSD drops the
# dead client's watch (osd_client_watch_timeout, 30 s), so a recovery takes
# about 30 s, not the second or two of the other backends; how long each
# took is logged.
# vm-tier: full
# vm-timeout: 300
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd fio

# The lock passes on 30 s after the kill; the rest is slack for a slow
# TCG guest.
RECOVER_SECS=75

start_ceph
cfg=$CASE_DIR/config
state=$CASE_DIR/state
write_spec "$cfg" rk "{\"name\":\"rk\",\"backend\":{\"type\":\"rbd\",\"image\":\"rbd/rk\",\"conf\":\"$CEPH_CONF\",\"create\":true,\"size\":\"64MiB\"},\"queues\":2,\"queue_depth\":32}"
start_ublkd "$cfg" --state-dir "$state"
dev=$(wait_live rk 30)

# Nothing here flushes before the kills, so librbd's cache writes through
# (rbd_cache_writethrough_until_flush, Ceph's default) and a write ublkd
# acknowledged is on the OSD: all of them must verify.
# 16 MiB, not the usual 48: 4 KiB writes through to a TCG guest's OSD run
# at about 150 a second.
kill9_verify_cycles "$cfg" "$state" rk "$dev" "${CYCLES:-2}" "$RECOVER_SECS" 16M

# A flush turns the cache to write-back; what the flush covered is on the
# OSD and must survive the kill. Past the 16 MiB the cycles use.
flushed=(--name=f --filename="$dev" --direct=1 --ioengine=io_uring --rw=write --bs=64k
    --offset=32M --size=8M --iodepth=8 --verify=crc32c)
fio "${flushed[@]}" --do_verify=0 --end_fsync=1 >"$CASE_DIR/flushed.write" 2>&1 ||
    { cat "$CASE_DIR/flushed.write" >&2; fail "writing the flushed region failed"; }
t0=${EPOCHREALTIME/./}
kill9_ublkd
restart_recover "$cfg" "$state" "$RECOVER_SECS" rk
log "kill -9 to the device live again: $(((${EPOCHREALTIME/./} - t0) / 1000)) ms"
fio "${flushed[@]}" --verify_only --verify_fatal=1 >"$CASE_DIR/flushed.verify" 2>&1 ||
    { cat "$CASE_DIR/flushed.verify" >&2; fail "data covered by a flush was lost across kill -9"; }
log "flushed data survived kill -9"

# How long each recovery waited for the lock, from the new daemon's start
# (its logs).
for f in "${_UBLKD_LOGS[@]:1}"; do
    from=$(grep -m1 'device rk: recovering' "$f") || fail "no recovery in $f"
    to=$(grep -m1 'device rk recovered: live again' "$f") || fail "no recovery in $f"
    log "recovery (lock takeover) in ${f##*/}: $(span_ms "$from" "$to") ms"
done

stop_ublkd 30
assert_no_ublk_devices
stop_ceph
