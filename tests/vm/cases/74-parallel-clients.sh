#!/bin/bash
# Eight ublkctl clients at once against one daemon: each adds its own device
# while all eight race to add one shared name, then all delete at once, for
# three rounds. Every request succeeds or fails with a clean error (exactly
# one client wins the shared name; the others get "exists" or "busy"), live
# devices have unique ids, and afterwards nothing is left: no devices, and
# the daemon's open files and threads are back where they started.
# vm-timeout: 240
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd jq

cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
start_ublkd_api "$cfg"

fds() { compgen -G "/proc/$UBLKD_PID/fd/*" | wc -l; }
threads() { compgen -G "/proc/$UBLKD_PID/task/*" | wc -l; }
fds0=$(fds)
threads0=$(threads)

# client I: add c-I, race for "shared", report; one line per outcome.
client() {
    local i=$1 out rc
    out=$("$UBLKCTL" add "c$i" --backend mem --size 16MiB --queues 1 --depth 16 2>&1) && rc=0 || rc=$?
    echo "own $i $rc $out"
    out=$("$UBLKCTL" add shared --backend mem --size 8MiB --queues 1 --depth 16 2>&1) && rc=0 || rc=$?
    echo "shared $i $rc $out"
}

for round in 1 2 3; do
    # `wait` with the pids: a bare wait would also wait for ublkd.
    pids=()
    for i in {1..8}; do
        client "$i" >"$CASE_DIR/round.$i" &
        pids+=($!)
    done
    wait "${pids[@]}"
    cat "$CASE_DIR"/round.[1-8] >"$CASE_DIR/round"
    rm -f "$CASE_DIR"/round.[1-8]
    cat "$CASE_DIR/round" >&2

    own_ok=$(grep -cE '^own [0-9] 0 /dev/ublkb[0-9]+$' "$CASE_DIR/round" || true)
    ((own_ok == 8)) || fail "round $round: $own_ok of 8 clients could add their own device"
    shared_ok=$(grep -cE '^shared [0-9] 0 /dev/ublkb[0-9]+$' "$CASE_DIR/round" || true)
    ((shared_ok == 1)) || fail "round $round: $shared_ok clients added 'shared', want exactly 1"
    # The losers failed with status 1 and the daemon's reason.
    bad=$(grep -E '^shared [0-9] ' "$CASE_DIR/round" | grep -vE ' 0 /dev/ublkb' |
        grep -vE '^shared [0-9] 1 ublkctl: .*(already exists|is busy)' || true)
    [[ -z $bad ]] || fail "round $round: unclean failures: $bad"

    list=$(ctl_ok --json list)
    n=$(json_get "$list" 'length')
    ((n == 9)) || fail "round $round: $n devices listed, want 9"
    [[ $(json_get "$list" '[.[].state] | unique | join(",")') == live ]] || fail "round $round: not all live: $list"
    ids=$(json_get "$list" '[.[].id] | unique | length')
    ((ids == 9)) || fail "round $round: ids are not unique: $(json_get "$list" '[.[].id]')"
    devs=$(json_get "$list" '[.[].block_device] | unique | length')
    ((devs == 9)) || fail "round $round: block devices are not unique"

    # Everyone deletes at once, the shared device by all eight.
    pids=()
    for i in {1..8}; do
        {
            "$UBLKCTL" del "c$i" 2>&1 && echo "del-own $i ok" || echo "del-own $i failed"
            "$UBLKCTL" del shared 2>&1 && echo "del-shared $i ok" || echo "del-shared $i failed"
        } >"$CASE_DIR/del.$i" &
        pids+=($!)
    done
    wait "${pids[@]}"
    cat "$CASE_DIR"/del.[1-8] >&2
    own_del=$(cat "$CASE_DIR"/del.[1-8] | grep -c '^del-own [0-9] ok' || true)
    ((own_del == 8)) || fail "round $round: $own_del of 8 own devices deleted"
    shared_del=$(cat "$CASE_DIR"/del.[1-8] | grep -c '^del-shared [0-9] ok' || true)
    ((shared_del == 1)) || fail "round $round: 'shared' deleted $shared_del times"
    odd=$(cat "$CASE_DIR"/del.[1-8] | grep -vE '^del-|no device named shared|device shared is busy' || true)
    [[ -z $odd ]] || fail "round $round: unexpected del output: $odd"
    [[ $(ctl_ok --json list) == "[]" ]] || fail "round $round: devices left after deleting all"
    assert_no_ublk_devices
    log "round $round passed"
done

# Nothing leaked in the daemon: worker threads ended, fds closed (allow the
# log's and one transient connection's).
t=$(threads)
# TSan starts a background thread of its own some time after start-up.
if grep -q libtsan "/proc/$UBLKD_PID/maps"; then
    ((t <= threads0 + 1)) || fail "ublkd has $t threads, had $threads0 before (TSan adds one)"
else
    ((t == threads0)) || fail "ublkd has $t threads, had $threads0 before"
fi
f=$(fds)
((f <= fds0)) || { ls -l "/proc/$UBLKD_PID/fd" >&2; fail "ublkd has $f open files, had $fds0 before"; }
stop_ublkd 20
log "parallel clients passed"
