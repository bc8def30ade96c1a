#!/bin/bash
# SIGTERM while the device is busy: two fio jobs run random reads and writes
# at queue depth 64 against a mem device when ublkd is told to stop. The
# device has 2 x 32 tags for those 128 requests, so every tag is busy and
# more requests wait in the block layer when the signal comes. ublkd
# must exit with status 0 within 10 s of the signal after removing the
# device, fio must not hang (its I/O errors are expected: the device goes
# away under it), and no ublk device may be left. Kernel warnings or hung
# tasks in dmesg fail the case through the harness.
# vm-timeout: 90
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd fio

readonly STOP_LIMIT=10 # seconds from SIGTERM to ublkd's exit
readonly FIO_LIMIT=20  # seconds from SIGTERM to fio's exit

cfg=$CASE_DIR/config
write_spec "$cfg" load0 \
    '{"name":"load0","backend":{"type":"mem","size":"256MiB"},"queues":2,"queue_depth":32}'
start_ublkd "$cfg" --start-timeout 10
dev=$(wait_live load0 15)
stat_file=/sys/block/${dev#/dev/}/stat

# ios: reads + writes the device completed so far.
ios() { awk '{print $1 + $5}' "$stat_file"; }

fio_out=$CASE_DIR/fio.out
log "starting fio randrw, 2 jobs at iodepth 64, 30 s"
fio --name=load --filename="$dev" --direct=1 --ioengine=io_uring \
    --rw=randrw --bs=4k --iodepth=64 --numjobs=2 --size=128M \
    --time_based --runtime=30 --group_reporting >"$fio_out" 2>&1 &
fio_pid=$!
add_cleanup "kill -KILL $fio_pid 2>/dev/null || true"

# Wait until fio is really moving I/O through the daemon.
deadline=$((${EPOCHREALTIME/./} + 15000000))
before=$(ios)
while :; do
    sleep 1
    ublkd_alive "$fio_pid" || { cat "$fio_out" >&2; fail "fio ended before the signal"; }
    now=$(ios)
    ((now - before > 2000)) && break
    ((${EPOCHREALTIME/./} < deadline)) || fail "fio made no progress on $dev ($before -> $now I/Os)"
done
sleep 1
log "fio running: $(ios) I/Os completed, $(awk '{print $9}' "$stat_file") in flight"
ublkd_alive || fail "ublkd died under load"

# The signal, then the clocks.
t_sig=${EPOCHREALTIME/./}
daemon_pid=$UBLKD_PID
stop_ublkd "$STOP_LIMIT"
t_exit=${EPOCHREALTIME/./}
stop_ms=$(((t_exit - t_sig) / 1000))
log "ublkd exited ${stop_ms} ms after SIGTERM"
((stop_ms <= STOP_LIMIT * 1000)) || fail "ublkd took ${stop_ms} ms to exit (limit ${STOP_LIMIT}s)"

# fio must come back on its own: every I/O it had queued was answered.
fio_rc=
while :; do
    # ublkd_alive works for any pid: a zombie (exited, not reaped) is gone.
    if ! ublkd_alive "$fio_pid"; then
        fio_rc=0
        wait "$fio_pid" || fio_rc=$?
        break
    fi
    if ((${EPOCHREALTIME/./} - t_sig > FIO_LIMIT * 1000000)); then
        for p in $(pidof fio); do
            echo "fio pid $p: state $(cut -d' ' -f3 "/proc/$p/stat") wchan $(cat "/proc/$p/wchan")" >&2
            cat "/proc/$p/stack" >&2 2>/dev/null || true
        done
        fail "fio still running ${FIO_LIMIT}s after SIGTERM to ublkd"
    fi
    sleep 0.1
done
fio_ms=$(((${EPOCHREALTIME/./} - t_sig) / 1000))
log "fio exited with status $fio_rc ${fio_ms} ms after SIGTERM"
grep -E 'err=|error' "$fio_out" | head -n 5 >&2 || true
# The device went away under a 30 s run: fio must say so, not succeed.
((fio_rc != 0)) || { cat "$fio_out" >&2; fail "fio exited 0 although its device went away"; }
grep -qiE 'error' "$fio_out" || { cat "$fio_out" >&2; fail "fio exited $fio_rc without reporting an I/O error"; }

# The daemon's view: a clean stop and removal, no failed teardown.
grep -q 'device load0: state live -> stopping' "$UBLKD_LOG" || fail "load0 never went live -> stopping"
grep -q 'device load0: state stopping -> removed' "$UBLKD_LOG" || fail "load0 never went stopping -> removed"
grep -q 'device load0 removed' "$UBLKD_LOG" || fail "no 'device load0 removed' in the log"
if grep -E 'device load0: state [a-z-]+ -> failed' "$UBLKD_LOG" >&2; then
    fail "load0 failed while stopping under load"
fi
[[ ! -e /proc/$daemon_pid ]] || fail "ublkd pid $daemon_pid still exists"
assert_no_ublk_devices
show_log "$UBLKD_LOG" 20
log "sigterm under load passed"
