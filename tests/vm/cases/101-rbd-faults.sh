#!/bin/bash
# The OSD stops answering (SIGSTOP). A write (librbd's cache still writing
# through) and then a flush (the cache writing back) fail with EIO within
# op_timeout (5 s) + 3 s, never as a hang, and `info` names what failed and
# why. Once the OSD runs again (SIGCONT) writes and flushes work and what
# was written before is intact. With the OSD frozen again, `del` and
# ublkd's shutdown end within three times op_timeout (closing the image
# waits on the OSD to unlock the object map, to give up the lock and to
# tell the other clients, one after the other).
# vm-timeout: 180
# vm-tier: full (about a minute per kernel; the unit tests freeze an OSD too, in every CI run)
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd fio jq

start_ceph
cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"
rbd_args=(--backend rbd --ceph-conf "$CEPH_CONF" --create)
dev=$(ctl_ok add f0 "${rbd_args[@]}" --image rbd/f0 --size 64MiB --op-timeout 5s --queues 2 --depth 32)
[[ $(json_get "$(ctl_ok --json info f0)" .backend.op_timeout_ms) == 5000 ]] || fail "op_timeout not taken"

# What must survive the freezes, in the first 16 MiB.
fio_verify "$dev" --size=16M --iodepth=16 --bsrange=4k-64k
verify_early_data() {
    local rc=0
    fio --name=v --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --size=16M \
        --iodepth=16 --bsrange=4k-64k --verify=crc32c --verify_only --verify_fatal=1 \
        >"$CASE_DIR/verify.out" 2>&1 || rc=$?
    ((rc == 0)) || { cat "$CASE_DIR/verify.out" >&2; fail "$1: the data written before does not verify"; }
}
# The frozen writes go to objects that exist already (4 MiB each, at 32
# and 36 MiB): the first write to an object also updates the object map,
# which takes librbd a second op_timeout when the OSD does not answer
# (ublkd's own deadline, op_timeout + 5 s, then ends the request).
dd if=/dev/urandom of="$dev" bs=1M count=1 seek=32 oflag=direct status=none
dd if=/dev/urandom of="$dev" bs=1M count=1 seek=36 oflag=direct status=none
add_cleanup "kill -CONT $CEPH_OSD_PID 2>/dev/null || true"

# freeze_fails WHAT ERROR CMD...: with the OSD frozen, CMD fails with EIO
# within op_timeout + 3 s and info's last_error is ERROR; then the OSD runs
# again, a write and a flush work, and the early data verifies.
freeze_fails() {
    local what=$1 error=$2 t0 ms info last
    shift 2
    log "freezing the OSD (pid $CEPH_OSD_PID)"
    kill -STOP "$CEPH_OSD_PID"
    t0=${EPOCHREALTIME/./}
    must_fail_eio "$what with the OSD frozen" "$@"
    ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
    ((ms >= 4000 && ms <= 8000)) || fail "$what failed after $ms ms, want op_timeout (5 s) + at most 3 s"
    log "OSD frozen: $what failed with EIO after $ms ms"
    info=$(ctl_ok --json info f0)
    log "info f0: $(jq -c .backend.negotiated <<<"$info")"
    last=$(json_get "$info" '.backend.negotiated.last_error // ""')
    [[ $last == "$error" ]] || fail "info's last_error is '$last', want '$error'"
    (($(json_get "$info" .backend.negotiated.errors) >= 1)) || fail "info counts no error"
    [[ $(json_get "$info" .state) == live ]] || fail "f0 did not stay live"

    log "thawing the OSD"
    kill -CONT "$CEPH_OSD_PID"
    dd if=/dev/urandom of="$dev" bs=64k count=16 seek=512 oflag=direct conv=fsync status=none ||
        fail "a write and a flush after the OSD came back failed"
    verify_early_data "after the OSD came back"
}

# Before the first flush librbd's cache writes through
# (rbd_cache_writethrough_until_flush): the write itself waits on the OSD.
freeze_fails "a write (cache writing through)" "write of 65536 bytes at 33554432: Connection timed out" \
    dd if=/dev/urandom of="$dev" bs=64k count=1 seek=512 oflag=direct
# The flush after the thaw turned the cache to write-back: the write lands
# in the cache, the flush waits on the OSD.
freeze_fails "a flush (cache writing back)" "flush: Connection timed out" \
    dd if=/dev/urandom of="$dev" bs=64k count=1 seek=576 oflag=direct conv=fsync
log "OSD back: writes and flushes work, earlier data intact"

# Frozen again: del and the shutdown wait on the OSD, but not for ever. f1,
# with a shorter op_timeout, is left for the shutdown.
ctl_ok add f1 "${rbd_args[@]}" --image rbd/f1 --size 16MiB --op-timeout 2s >/dev/null
kill -STOP "$CEPH_OSD_PID"
t0=${EPOCHREALTIME/./}
timeout 60 "$UBLKCTL" del f0 >"$CASE_DIR/del.out" 2>&1 ||
    { cat "$CASE_DIR/del.out" >&2; fail "del f0 with the OSD frozen failed or hung (60 s)"; }
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
log "del with the OSD frozen: $ms ms"
# The slack is for the rest of a del, which a sanitizer build under TCG
# stretches: 15.7-15.9 s plain, 16.7-16.9 s with ASan or TSan.
((ms <= 3 * 5000 + 8000)) || fail "del took $ms ms with the OSD frozen, want at most 3 x op_timeout (5 s) + 8 s"
t0=${EPOCHREALTIME/./}
stop_ublkd 60
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
log "shutdown with the OSD frozen: $ms ms"
((ms <= 3 * 2000 + 8000)) || fail "shutdown took $ms ms with the OSD frozen, want at most 3 x op_timeout (2 s) + 8 s"
assert_no_ublk_devices
kill -CONT "$CEPH_OSD_PID"
stop_ceph
