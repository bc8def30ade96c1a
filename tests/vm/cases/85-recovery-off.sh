#!/bin/bash
# A device with recovery off goes with the daemon: after kill -9 its I/O
# fails within 5 s instead of waiting, nothing hangs, and the next ublkd
# deletes what the kernel still holds of it (reporting it in `list` as
# failed) instead of recovering it; `ublkctl del` then forgets it. A device
# with recovery on, in the same daemon, is recovered as usual.
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

cfg=$CASE_DIR/config
state=$CASE_DIR/state
mkdir -p "$cfg"
start_ublkd_api "$cfg"
off=$(ctl_ok add off0 --backend mem --size 64MiB --no-recovery)
on=$(ctl_ok add on0 --backend mem --size 64MiB)
[[ $(json_get "$(ctl_ok --json info off0)" .recovery) == false ]] || fail "off0 does not report recovery off"
flags=$(json_get "$(ctl_ok --json info off0)" '.kernel_flag_names | join(" ")')
[[ $flags != *USER_RECOVERY* ]] || fail "off0 was created with USER_RECOVERY: $flags"
flags=$(json_get "$(ctl_ok --json info on0)" '.kernel_flag_names | join(" ")')
[[ $flags == *USER_RECOVERY* ]] || fail "on0 was created without USER_RECOVERY: $flags"

# A reader that has the device open and reads the whole time.
dd if="$off" of=/dev/null bs=4k iflag=direct status=none 2>"$CASE_DIR/dd.err" &
reader=$!
add_cleanup "kill -KILL $reader 2>/dev/null || true"
sleep 1
ublkd_alive "$reader" || fail "the reader ended before the kill"
kill9_ublkd
t0=${EPOCHREALTIME/./}
while ublkd_alive "$reader" && ((${EPOCHREALTIME/./} - t0 < 20000000)); do sleep 0.05; done
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
ublkd_alive "$reader" && fail "the reader still runs 20 s after kill -9 (a hang)"
rc=0
wait "$reader" || rc=$?
log "reader of $off after kill -9: status $rc after $ms ms ($(<"$CASE_DIR/dd.err"))"
((rc != 0)) || fail "reading the device without recovery did not fail"
((ms <= 5000)) || fail "the read took $ms ms to fail (limit 5000)"
rc=0
dd if="$off" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null || rc=$?
((rc != 0)) || fail "a new read of the device without recovery succeeded"

start_ublkd_api "$cfg"
wait_for_log "device on0 recovered: live again at $on" 30 >/dev/null
wait_for_log "device off0: not recovered \(.*\); nothing of it is left in the kernel" 30 >/dev/null
[[ $(json_get "$(ctl_ok --json info off0)" .state) == failed ]] || fail "off0 is not listed as failed"
ctl_ok del off0 >/dev/null
[[ $(ctl_err info off0) == *"no device named off0"* ]] || fail "off0 still listed after del"
[[ ! -e $off ]] || fail "$off still exists"
dd if="$on" of=/dev/null bs=4k count=1 iflag=direct status=none || fail "on0 does not serve reads"
stop_ublkd 20
assert_no_ublk_devices
log "recovery off: I/O failed in $ms ms, device cleaned up"
