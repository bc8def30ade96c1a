#!/bin/bash
# With fio running, kill -9 and restart: fio sees no I/O error, its I/O only
# stalls while no daemon runs. Twice in a row: the second kill comes 0.5 to
# 1.5 s after the first recovery. Two fio jobs on a mem device: one writes
# random blocks with crc32c headers and verifies them all at the end, the
# other reads at random the whole time. (6.12 has been seen to leave a
# device live and unserved when its server is killed within milliseconds
# of END_USER_RECOVERY; ublkd then deletes it rather than let its I/O hang,
# docs/operations.md.)
# vm-timeout: 150
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd fio

cfg=$CASE_DIR/config
state=$CASE_DIR/state
write_spec "$cfg" busy '{"name":"busy","backend":{"type":"mem","size":"128MiB"},"queues":2,"queue_depth":64}'
start_ublkd "$cfg" --state-dir "$state"
dev=$(wait_live busy 20)

out=$CASE_DIR/fio.out
# The writer is held to 2000 writes/s, so its 16k writes last about 8 s
# (longer on a slower host): both kills, within 6 s of the start, meet it
# writing.
fio --filename="$dev" --direct=1 --ioengine=io_uring --bs=4k \
    --name=writer --rw=randwrite --iodepth=32 --size=64M --rate_iops=2000 --verify=crc32c \
    --do_verify=1 --verify_fatal=1 \
    --name=reader --rw=randread --iodepth=32 --offset=64M --size=64M --time_based --runtime=12 \
    >"$out" 2>&1 &
fio_pid=$!
add_cleanup "kill -KILL $fio_pid 2>/dev/null || true"
# writing_now ROUND: the writer is at work now: 16 more writes complete
# within 5 s (at 2000 a second they take 8 ms).
writing_now() {
    local w0
    w0=$(dev_writes "$dev")
    wait_dev_writes "$dev" $((w0 + 16)) "$fio_pid" 5 ||
        { cat "$out" >&2; fail "round $1: the writer was not writing before the kill"; }
}
wait_dev_writes "$dev" 256 "$fio_pid" 20 || { cat "$out" >&2; fail "fio did not start writing"; }

for round in 1 2; do
    writing_now "$round"
    kill9_ublkd
    t0=${EPOCHREALTIME/./}
    ((round == 1)) && sleep 0.5
    restart_recover "$cfg" "$state" 30 busy
    log "round $round: daemon gone for $(((${EPOCHREALTIME/./} - t0) / 1000)) ms until recovered"
    ublkd_alive "$fio_pid" || { cat "$out" >&2; fail "fio ended during round $round"; }
    ((round == 1)) && sleep_ms "$(rand_ms 500 1500)"
done

fio_passed "$fio_pid" "$out" "across two kill -9"
stop_ublkd 20
assert_no_ublk_devices
log "fio ran through two kill -9 without an error"
