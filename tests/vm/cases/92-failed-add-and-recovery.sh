#!/bin/bash
# Failed adds and failed recoveries leave neither a device, nor a record,
# nor kept memory behind, and never leave I/O hanging:
#  1. an add whose START_DEV times out (test hook UBLKD_TEST_UNPRIMED_TAG);
#  2. an add whose state record cannot be written (STATE_DIR/devices is a
#     file): refused with io-error before the kernel knows the device;
#  3. a recovery whose mem memory was lost, and one whose record's spec no
#     longer matches the kernel device: the device is this one (its
#     identity matches), so it is deleted; a read that waited for the
#     recovery fails with an I/O error instead of waiting for ever.
# vm-timeout: 150
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd jq dd
cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
state=$CASE_DIR/state

gone() { # NAME: no record, no memory
    [[ ! -e $state/devices/$1.json ]] || fail "record of $1 left: $(cat "$state/devices/$1.json")"
    [[ ! -e $state/mem/$1 ]] || fail "memory of $1 left"
}

UBLKD_TEST_UNPRIMED_TAG=t1 start_ublkd_api "$cfg" --start-timeout 3
log "1. START_DEV times out"
err=$(ctl_err add t1 --backend mem --size 16MiB)
[[ $err == *"START_DEV timed out"*"[timeout]"* ]] || fail "add t1 said: $err"
gone t1
assert_no_ublk_devices

log "2. the state record cannot be written"
rm -rf "$state/devices"
: >"$state/devices"
err=$(ctl_err add r1 --backend mem --size 16MiB)
[[ $err == *"device r1: state record: create $state/devices"*"[io-error]" ]] || fail "add r1 said: $err"
[[ ! -e $state/mem/r1 ]] || fail "memory of r1 left"
assert_no_ublk_devices
rm -f "$state/devices"
ctl_ok add ok1 --backend mem --size 16MiB >/dev/null
ctl_ok del ok1
stop_ublkd 20

log "3. recoveries that cannot succeed end in an I/O error, not a hang"
img=$CASE_DIR/s2.img
start_ublkd_api "$cfg"
dev1=$(ctl_ok add s1 --backend mem --size 16MiB)
dev2=$(ctl_ok add s2 --backend file --path "$img" --create --size 16MiB)
kill9_ublkd
# What the next ublkd cannot use: s1's memory is lost, s2's record asks for
# less than the kernel device has (blocks the file system may use are gone;
# more would be served at the kernel's size).
rm -f "$state/mem/s1"
truncate -s 8M "$img"
jq '.spec.backend.size = 8388608' "$state/devices/s2.json" >"$CASE_DIR/r.json"
mv "$CASE_DIR/r.json" "$state/devices/s2.json"
readers=()
for dev in "$dev1" "$dev2"; do
    dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null &
    readers+=($!)
    add_cleanup "kill -KILL $! 2>/dev/null || true"
done
sleep 1
for pid in "${readers[@]}"; do
    ublkd_alive "$pid" || fail "a read finished while no daemon ran"
done
start_ublkd_api "$cfg"
wait_for_log "running: " 30 >/dev/null
grep -q "device s1: state recovering -> failed: backend: .*memory kept by the last ublkd" "$UBLKD_LOG" ||
    { show_log; fail "no reason given for s1"; }
grep -q "device s2: state recovering -> failed: the kernel device has 32768 sectors, the backend only 16384" \
    "$UBLKD_LOG" || { show_log; fail "no reason given for s2"; }
for pid in "${readers[@]}"; do
    rc=0
    for _ in {1..100}; do ublkd_alive "$pid" || break; sleep 0.1; done
    ublkd_alive "$pid" && fail "a read still waits 10 s after the failed recovery"
    wait "$pid" || rc=$?
    ((rc != 0)) || fail "a read of a device that could not be recovered succeeded"
done
gone s1
gone s2
assert_no_ublk_devices
ctl_ok del s1
ctl_ok del s2
stop_ublkd 20
[[ -z $(ls -A "$state/devices") ]] || fail "records left: $(ls "$state/devices")"
log "failed adds and recoveries left nothing and hung nothing"
