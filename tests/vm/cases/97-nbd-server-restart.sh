#!/bin/bash
# The NBD server dies under load. nbdkit (file plugin on tmpfs) is killed
# with SIGKILL in the middle of fio writes and started again on the same
# file 2 s later: fio goes on without an error (the queues reconnect and
# re-send what they held), and every write the device acknowledged is there
# (fio verify_state_save / verify_state_load). Then the server is killed for
# good: I/O fails with EIO once reconnect_timeout (8 s) has passed, not
# before and never as a hang; later I/O fails at once; `del` and the
# daemon's shutdown stay bounded.
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd nbdkit fio jq

img=$CASE_DIR/disk.img
truncate -s 128M "$img"
start_nbdkit srv file "$img"

cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"
dev=$(ctl_ok add nr --backend nbd --uri "$(nbd_uri srv)" --queues 2 --depth 32 \
    --reconnect-timeout 8s)

seed=$((RANDOM * 32768 + RANDOM))
common=(--name=w --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite
    --bs=4k --iodepth=16 --size=48M --verify=crc32c --randseed="$seed")
w0=$(dev_writes "$dev")
(cd "$CASE_DIR" && exec fio "${common[@]}" --do_verify=0 --verify_state_save=1) \
    >"$CASE_DIR/w.write" 2>&1 &
fio_pid=$!
wait_dev_writes "$dev" $((w0 + 64)) "$fio_pid" 20 ||
    { cat "$CASE_DIR/w.write" >&2; fail "fio did not start writing"; }
kill -0 "$fio_pid" 2>/dev/null || fail "fio was done before the kill; nothing would be tested"
log "killing nbdkit under fio"
stop_nbdkit "$NBDKIT_PID" KILL
sleep 2
start_nbdkit srv file "$img"
log "nbdkit back"
rc=0
wait "$fio_pid" || rc=$?
if ((rc != 0)) || grep -qE 'err= *[1-9]|error' "$CASE_DIR/w.write"; then
    cat "$CASE_DIR/w.write" >&2
    fail "the writer saw an error across the server restart (status $rc)"
fi
rc=0
(cd "$CASE_DIR" && exec fio "${common[@]}" --verify_only --verify_state_load=1 --verify_fatal=1) \
    >"$CASE_DIR/w.verify" 2>&1 || rc=$?
((rc == 0)) || { cat "$CASE_DIR/w.verify" >&2; fail "acknowledged writes were lost (status $rc)"; }
grep -E '^ *(write|read):' "$CASE_DIR/w.write" "$CASE_DIR/w.verify" >&2 || true
reconnects=$(json_get "$(ctl_ok --json info nr)" .backend.negotiated.reconnects)
((reconnects >= 1)) || fail "info counts $reconnects reconnects"
log "server restart: no error, no lost write ($reconnects reconnects)"

# For good, this time.
stop_nbdkit "$NBDKIT_PID" KILL
t0=${EPOCHREALTIME/./}
rc=0
timeout 30 dd if="$dev" of=/dev/null bs=4k count=1 skip=100 iflag=direct 2>"$CASE_DIR/dd.err" || rc=$?
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
cat "$CASE_DIR/dd.err" >&2
((rc != 124)) || fail "a read hung with the server gone"
((rc != 0)) || fail "a read succeeded with the server gone"
grep -q 'Input/output error' "$CASE_DIR/dd.err" || fail "the read failed, but not with EIO"
((ms >= 6500 && ms <= 11000)) || fail "the read failed after $ms ms, want reconnect_timeout (8 s) + at most 3 s"
log "server gone: EIO after $ms ms"
t0=${EPOCHREALTIME/./}
timeout 10 dd if="$dev" of=/dev/null bs=4k count=1 skip=200 iflag=direct 2>/dev/null &&
    fail "a read succeeded with the server gone"
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
((ms < 2000)) || fail "past reconnect_timeout a read took $ms ms to fail, want at once"
[[ $(json_get "$(ctl_ok --json info nr)" .state) == live ]] || fail "the device did not stay"

t0=${EPOCHREALTIME/./}
ctl_ok del nr >/dev/null
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
((ms < 10000)) || fail "del took $ms ms with the server gone"
log "del with the server gone: $ms ms"
# A second device on the dead server, left for the shutdown.
start_nbdkit srv2 memory 16M
ctl_ok add nd --backend nbd --uri "$(nbd_uri srv2)" --reconnect-timeout 60s >/dev/null
stop_nbdkit "$NBDKIT_PID" KILL
t0=${EPOCHREALTIME/./}
stop_ublkd 20
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
((ms < 15000)) || fail "shutdown took $ms ms with the server gone"
log "shutdown with the server gone: $ms ms"
assert_no_ublk_devices
