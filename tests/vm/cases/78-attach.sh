#!/bin/bash
# `ublkctl attach NAME` (what ublkd@NAME.service runs) against the real
# daemon: it brings up a drop-in that has autostart off, prints the block
# device, stays while the device is live, and exits 0 when the device is
# deleted; attaching to a device that is live already just attaches; a
# missing or invalid drop-in is an error and nothing comes up; and attach
# ends when ublkd stops.
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd jq

cfg=$CASE_DIR/config
write_spec "$cfg" a0 '{"name":"a0","autostart":false,"backend":{"type":"mem","size":"16MiB"}}'
write_spec "$cfg" a1 '{"name":"a1","backend":{"type":"null","size":"1GiB"}}'
printf '{"name": "bad", "backend": {"type": "mem"}}\n' >"$cfg/devices.d/bad.json"
start_ublkd_api "$cfg"
wait_live a1 30 >/dev/null
[[ $(json_get "$(ctl_ok --json list)" 'map(.name) | join(",")') == a1 ]] || fail "a0 (autostart off) came up by itself"

# attach_bg NAME: ublkctl attach in the background; pid in $attach_pid.
attach_bg() {
    "$UBLKCTL" attach "$1" >"$CASE_DIR/attach-$1.out" 2>"$CASE_DIR/attach-$1.err" &
    attach_pid=$!
}
# wait_exit PID SECS: the process ends within SECS; its status in $rc.
wait_exit() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$1" 2>/dev/null && fail "process $1 still running after $2 s"
    rc=0
    wait "$1" || rc=$?
}

attach_bg a0
p0=$attach_pid
for _ in $(seq 100); do [[ -s $CASE_DIR/attach-a0.out ]] && break; sleep 0.1; done
dev=$(<"$CASE_DIR/attach-a0.out")
[[ $dev =~ ^/dev/ublkb[0-9]+$ && -b $dev ]] || fail "attach a0 printed '$dev'"
info=$(ctl_ok --json info a0)
[[ $(json_get "$info" '"\(.state) \(.persistent)"') == "live true" ]] || fail "a0: $info"
sleep 2
kill -0 "$p0" 2>/dev/null || fail "attach a0 exited while a0 is live: $(<"$CASE_DIR/attach-a0.err")"

# A device that is live already (autostarted): attach just attaches.
attach_bg a1
p1=$attach_pid
for _ in $(seq 100); do [[ -s $CASE_DIR/attach-a1.out ]] && break; sleep 0.1; done
[[ $(<"$CASE_DIR/attach-a1.out") =~ ^/dev/ublkb[0-9]+$ ]] || fail "attach a1 printed '$(<"$CASE_DIR/attach-a1.out")'"

# Missing and invalid drop-ins.
err=$(ctl_err attach nosuch)
[[ $err == *"no drop-in describes a device named nosuch"*"[not-found]" ]] || fail "attach nosuch: $err"
err=$(ctl_err attach bad)
[[ $err == *"bad.json"*"backend.size"*"[invalid-spec]" ]] || fail "attach bad: $err"

# del ends the attach with status 0.
ctl_ok del a0 >/dev/null
wait_exit "$p0" 10
((rc == 0)) || fail "attach a0 exited $rc after del: $(<"$CASE_DIR/attach-a0.err")"
grep -qE "device a0 is (gone|stopping|removed)" "$CASE_DIR/attach-a0.err" || fail "attach a0 said: $(<"$CASE_DIR/attach-a0.err")"
ctl_ok del --if-exists a0 >/dev/null

# Stopping ublkd ends the other attach too.
stop_ublkd 20
wait_exit "$p1" 10
log "attach a1 ended with status $rc after ublkd stopped: $(<"$CASE_DIR/attach-a1.err")"
assert_no_ublk_devices
log "attach passed"
