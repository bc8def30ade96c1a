#!/bin/bash
# Two ublkds with their own state dirs share one kernel: each serves a
# device of the same name (m0) and size, with its own data. Both are killed
# with SIGKILL and started again in the opposite order; each recovers its
# own m0, with its own data, and neither touches the other's. A third ublkd
# on a state dir that is in use is refused with a clear error and changes
# nothing.
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd sha256sum dd
declare -A pid=() log_of=() dev=() sum=()
start_one() { # X: ublkd number X with its own config, socket and state dir
    local x=$1
    mkdir -p "$CASE_DIR/cfg$x/devices.d"
    start_ublkd "$CASE_DIR/cfg$x" --socket "$CASE_DIR/$x.sock" --state-dir "$CASE_DIR/state$x"
    pid[$x]=$UBLKD_PID
    log_of[$x]=$UBLKD_LOG
    wait_for_log "running: " 30 >/dev/null
}
ctl_on() { # X ARGS...
    local x=$1
    shift
    ctl_ok --socket "$CASE_DIR/$x.sock" "$@"
}

for x in 1 2; do
    start_one "$x"
    dev[$x]=$(ctl_on "$x" add m0 --backend mem --size 16MiB)
    head -c 8388608 /dev/urandom >"$CASE_DIR/data$x"
    dd if="$CASE_DIR/data$x" of="${dev[$x]}" bs=1M oflag=direct status=none
    sum[$x]=$(sha256sum <"$CASE_DIR/data$x" | cut -d' ' -f1)
done
[[ ${dev[1]} != "${dev[2]}" ]] || fail "both daemons' m0 are ${dev[1]}"

# A third on the first's state dir: refused, the first untouched.
mkdir -p "$CASE_DIR/cfg3/devices.d"
rc=0
"$UBLKD" --config-dir "$CASE_DIR/cfg3" --socket "$CASE_DIR/3.sock" --state-dir "$CASE_DIR/state1" \
    >"$CASE_DIR/third.log" 2>&1 || rc=$?
((rc == 1)) || { cat "$CASE_DIR/third.log" >&2; fail "a ublkd on a used state dir exited $rc"; }
grep -q "state dir $CASE_DIR/state1 is in use by another ublkd (pid ${pid[1]})" "$CASE_DIR/third.log" ||
    { cat "$CASE_DIR/third.log" >&2; fail "no clear error for the shared state dir"; }
[[ $(json_get "$(ctl_on 1 --json list)" '.[0].state') == live ]] || fail "the first ublkd was disturbed"

for x in 1 2; do
    UBLKD_PID=${pid[$x]}
    kill9_ublkd
done
for x in 2 1; do
    start_one "$x"
    grep -q "device m0 recovered: live again at ${dev[$x]}" "${log_of[$x]}" ||
        { show_log "${log_of[$x]}"; fail "ublkd $x did not recover its m0 at ${dev[$x]}"; }
    grep -q "stale" "${log_of[$x]}" && { show_log "${log_of[$x]}"; fail "ublkd $x saw a stale record"; }
done
for x in 1 2; do
    got=$(head -c 8388608 "${dev[$x]}" | sha256sum | cut -d' ' -f1)
    [[ $got == "${sum[$x]}" ]] || fail "ublkd $x's m0 does not hold its own data"
done
for x in 1 2; do
    ctl_on "$x" del m0 >/dev/null
    stop_ublkd 20 "${pid[$x]}"
done
assert_no_ublk_devices
log "two daemons, one kernel: each recovered its own device"
