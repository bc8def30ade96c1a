#!/bin/bash
# kill -9 is a non-event for the people using the devices: ublkd serves a
# mem and a file device, each with a known pattern on it, and is killed
# with SIGKILL. The kernel keeps both devices (quiesced): the block device
# nodes stay, and a read started while no daemon runs waits instead of
# failing. A new ublkd with the same state dir recovers both, under the same
# /dev/ublkbN, before it reports ready; the waiting read then completes with
# the right data, and the data written before the kill is all there. SIGTERM
# afterwards still removes everything, records and kept memory included.
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

cfg=$CASE_DIR/config
state=$CASE_DIR/state
img=$CASE_DIR/disk.img
write_spec "$cfg" m0 '{"name":"m0","backend":{"type":"mem","size":"64MiB"},"queues":2}'
write_spec "$cfg" f0 "{\"name\":\"f0\",\"backend\":{\"type\":\"file\",\"path\":\"$img\",\"size\":\"64MiB\",\"create\":true},\"queues\":2}"
start_ublkd "$cfg" --state-dir "$state"
mdev=$(wait_live m0 20)
fdev=$(wait_live f0 20)
wait_for_log "running: 2 device\(s\) live" 20 >/dev/null
[[ -f $state/devices/m0.json && -f $state/devices/f0.json ]] || fail "no state records in $state/devices"
[[ -f $state/mem/m0 ]] || fail "the mem device's memory is not in $state/mem"

# A pattern, different per device, over the first 16 MiB.
pattern() { # DEV SEED
    head -c 16777216 /dev/urandom >"$CASE_DIR/pattern.$2"
    dd if="$CASE_DIR/pattern.$2" of="$1" bs=1M oflag=direct status=none
}
pattern "$mdev" m
pattern "$fdev" f
sum_m=$(sha256sum <"$CASE_DIR/pattern.m" | cut -d' ' -f1)
sum_f=$(sha256sum <"$CASE_DIR/pattern.f" | cut -d' ' -f1)

old_pid=$UBLKD_PID
log "kill -9 ublkd (pid $old_pid)"
kill -KILL "$old_pid"
wait "$old_pid" 2>/dev/null || true
sleep 1
[[ -b $mdev && -b $fdev ]] || fail "the block devices went away with the daemon"

# A read while nobody serves the device: it must wait, not fail.
dd if="$mdev" of="$CASE_DIR/read.m" bs=1M count=16 iflag=direct status=none &
reader=$!
add_cleanup "kill -KILL $reader 2>/dev/null || true"
sleep 2
if ! ublkd_alive "$reader"; then
    wait "$reader" && fail "the read finished with no daemon running"
    fail "the read failed with no daemon running"
fi

t0=${EPOCHREALTIME/./}
start_ublkd "$cfg" --state-dir "$state"
wait_for_log "device m0 recovered: live again at $mdev" 30 >/dev/null
wait_for_log "device f0 recovered: live again at $fdev" 30 >/dev/null
wait_for_log "running: 2 device\(s\) live" 30 >/dev/null
log "recovered in $(((${EPOCHREALTIME/./} - t0) / 1000)) ms"
grep -q "state new -> recovering" "$UBLKD_LOG" || fail "no 'recovering' state in the log"
list=$("$UBLKCTL" --socket "$state/ublkd.sock" --json list)
[[ $(json_get "$list" '[.[] | select(.state == "live")] | length') == 2 ]] ||
    fail "ublkctl list after recovery: $list"

rc=0
wait "$reader" || rc=$?
((rc == 0)) || fail "the read that waited through the recovery failed (status $rc)"
cmp "$CASE_DIR/read.m" "$CASE_DIR/pattern.m" || fail "the waiting read returned wrong data"
[[ $(head -c 16777216 "$mdev" | sha256sum | cut -d' ' -f1) == "$sum_m" ]] ||
    fail "mem device data changed across kill -9"
[[ $(dd if="$fdev" bs=1M count=16 iflag=direct status=none | sha256sum | cut -d' ' -f1) == "$sum_f" ]] ||
    fail "file device data changed across kill -9"
# And it still takes writes.
fio_verify "$mdev" --size=16M --offset=16M
fio_verify "$fdev" --size=16M --offset=16M

stop_ublkd 20
assert_no_ublk_devices
[[ -z $(ls -A "$state/devices" 2>/dev/null) ]] || fail "state records left after SIGTERM: $(ls "$state/devices")"
[[ -z $(ls -A "$state/mem" 2>/dev/null) ]] || fail "mem kept after SIGTERM: $(ls "$state/mem")"
log "kill -9 recovery passed"
