#!/bin/bash
# SIGTERM while a device's START_DEV is pending in the kernel does not wait
# out the start timeout: the test hook leaves one tag of slow0 unprimed so
# START_DEV never completes, --start-timeout is 120 s, and SIGTERM once
# slow0 is start-pending must end the daemon within a few seconds: slow0's
# start aborted and torn down, the live device stopped, exit status 0, no
# device left in the kernel. A client still waiting on its `add` gets
# "shutting-down".
# vm-timeout: 90
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd jq ublkd-admin-send

cfg=$CASE_DIR/config
write_spec "$cfg" live0 '{"name":"live0","backend":{"type":"mem","size":"32MiB"}}'
export UBLKD_SOCKET=$CASE_DIR/ublkd.sock
UBLKD_TEST_UNPRIMED_TAG=slow0 start_ublkd "$cfg" --start-timeout 120 --socket "$UBLKD_SOCKET"
wait_live live0 30 >/dev/null

# slow0 comes through the API, so a client waits on it.
echo '{"op":"add","spec":{"name":"slow0","backend":{"type":"mem","size":"16MiB"},"queue_depth":8}}' |
    ublkd-admin-send --lines 1 --timeout-ms 60000 "$UBLKD_SOCKET" >"$CASE_DIR/add.out" 2>"$CASE_DIR/add.err" &
client=$!
wait_for_log "device slow0: state queues-primed -> start-pending" 30 >/dev/null
sleep 1 # START_DEV is in the kernel now

# The control plane is not blocked meanwhile: list answers at once and shows
# slow0 coming up.
t0=${EPOCHREALTIME/./}
list=$("$UBLKCTL" --json list) || fail "list failed while slow0 is starting"
t1=${EPOCHREALTIME/./}
(((t1 - t0) < 3000000)) || fail "list took $(((t1 - t0) / 1000)) ms while slow0 is starting"
[[ $(jq -r '.[] | select(.name == "slow0") | .state' <<<"$list") == start-pending ]] ||
    fail "list does not show slow0 start-pending: $list"

t0=${EPOCHREALTIME/./}
stop_ublkd 20
t1=${EPOCHREALTIME/./}
elapsed_ms=$(((t1 - t0) / 1000))
log "ublkd exited ${elapsed_ms} ms after SIGTERM"
((elapsed_ms < 10000)) || fail "ublkd took ${elapsed_ms} ms to stop with a start pending (start timeout 120 s)"

grep -qE "device slow0: state [a-z-]+ -> failed: start aborted: ublkd is shutting down" "$UBLKD_LOG" ||
    { show_log; fail "no 'start aborted' for slow0 in the log"; }
grep -q "device live0 removed" "$UBLKD_LOG" || fail "live0 was not removed"
wait "$client" || true
[[ $(jq -r .error.code "$CASE_DIR/add.out") == shutting-down ]] ||
    fail "the waiting add got: $(<"$CASE_DIR/add.out") $(<"$CASE_DIR/add.err")"
assert_no_ublk_devices
log "SIGTERM during START_DEV passed"
