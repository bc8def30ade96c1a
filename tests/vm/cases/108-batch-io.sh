#!/bin/bash
# UBLK_F_BATCH_IO ("batch_io": true in ublkd.json). A daemon on the
# defaults adds l0 (mem) with a command per request. It is killed (-9); the
# next ublkd, with "batch_io": true, recovers l0 as it was added (no
# BATCH_IO: a recovered device keeps its flags) and adds m0 (mem: user
# copy, no buffers) and f0 (file on tmpfs: a buffer per tag), which are
# granted BATCH_IO exactly where the kernel offers it (7.2), and say so in
# their live line. fio's crc32c verify passes
# on all three at queue depth 1 and with two jobs at depth 64 (both
# queues), and across an upgrade and a kill -9 under fio on m0 and l0,
# after which each device is recovered with the flags it had. A batched
# device is not granted QUIESCE, and the upgrade says why it hands it over
# as it runs.
# vm-timeout: 200
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd fio jq

cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
start_ublkd_api "$cfg"
offered=$(offered BATCH_IO)

# batched NAME: true or false, whether the kernel granted NAME BATCH_IO.
batched() {
    json_get "$(ctl_ok --json info "$1")" '.kernel_flag_names | index("BATCH_IO") != null'
}
dev_of() { echo "/dev/ublkb$(json_get "$(ctl_ok --json info "$1")" .id)"; }
# expect_batched NAME WANT: NAME has BATCH_IO iff WANT, and its last live
# (or recovered) line says so.
expect_batched() {
    local got line
    got=$(batched "$1")
    [[ $got == "$2" ]] || fail "$1: granted BATCH_IO: $got, expected $2"
    line=$(grep -E "device $1 (live at|recovered: live again at) " "$UBLKD_LOG" | tail -n 1)
    [[ -n $line ]] || { show_log "$UBLKD_LOG"; fail "$1: no live line"; }
    if [[ $2 == true ]]; then
        grep -q 'batched io commands (UBLK_F_BATCH_IO)' <<<"$line" || fail "$1: live line lacks the batch note: $line"
    elif grep -q 'batched' <<<"$line"; then
        fail "$1: live line claims batched io commands: $line"
    fi
    log "$1: BATCH_IO $got"
}

ctl_ok add l0 --backend mem --size 64MiB --queues 2 >/dev/null
expect_batched l0 false

kill9_ublkd
echo '{"batch_io": true}' >"$cfg/ublkd.json"
start_ublkd_api "$cfg"
wait_for_log "device l0 recovered: live again at /dev/ublkb[0-9]+" 30 >/dev/null
expect_batched l0 false
ctl_ok add m0 --backend mem --size 64MiB --queues 2 >/dev/null
ctl_ok add f0 --backend file --path "$CASE_DIR/f0.img" --create --size 64MiB --queues 2 >/dev/null
expect_batched m0 "$offered"
expect_batched f0 "$offered"

for name in l0 m0 f0; do
    dev=$(dev_of "$name")
    fio_verify "$dev" --size=8M --iodepth=1
    fio_verify "$dev" --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split --size=24M \
        --offset_increment=32M --iodepth=64 --bsrange=4k-128k
    assert_queues_used "$dev"
done

# An upgrade, then a kill -9, while fio writes (and verifies) on m0 and l0.
# A batched device is never granted QUIESCE (7.2's QUIESCE_DEV would fail
# the requests that come before the next ublkd), so the upgrade hands m0
# over as it runs; l0 is quiesced where the kernel offers QUIESCE.
[[ $(json_get "$(ctl_ok --json info m0)" '.kernel_flag_names | index("QUIESCE") != null') == false ]] ||
    fail "m0 was granted QUIESCE"
out=$CASE_DIR/fio.out
fio --direct=1 --ioengine=io_uring --bs=4k --rw=randwrite --iodepth=32 --size=32M \
    --rate_iops=1500 --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --name=m0 --filename="$(dev_of m0)" --name=l0 --filename="$(dev_of l0)" >"$out" 2>&1 &
fio_pid=$!
add_cleanup "kill -KILL $fio_pid 2>/dev/null || true"
for name in m0 l0; do
    wait_dev_writes "$(dev_of "$name")" 256 "$fio_pid" 20 ||
        { cat "$out" >&2; fail "fio did not start writing to $name"; }
done
old_log=$UBLKD_LOG
log "$(ctl_ok upgrade)"
rc=0
wait "$UBLKD_PID" || rc=$?
((rc == 75)) || { show_log "$old_log"; fail "ublkd exited with $rc after upgrade, want 75"; }
line=$(grep -E "device m0: handed over as it runs \(no UBLK_F_QUIESCE(: batched io commands)?\)" "$old_log") ||
    { show_log "$old_log"; fail "no hand-over line for m0"; }
log "upgrade: ${line#* device }"
if [[ $offered == true ]]; then
    grep -q "batched io commands" <<<"$line" || fail "m0's hand-over line does not say why: $line"
fi
start_ublkd_api "$cfg"
for name in l0 m0 f0; do
    wait_for_log "device $name recovered: live again at /dev/ublkb[0-9]+" 30 >/dev/null
done
ublkd_alive "$fio_pid" || { cat "$out" >&2; fail "fio ended at the upgrade"; }
w0=$(dev_writes "$(dev_of m0)")
wait_dev_writes "$(dev_of m0)" $((w0 + 16)) "$fio_pid" 10 ||
    { cat "$out" >&2; fail "fio was not writing to m0 before the kill"; }
kill9_ublkd
start_ublkd_api "$cfg"
for name in l0 m0 f0; do
    wait_for_log "device $name recovered: live again at /dev/ublkb[0-9]+" 30 >/dev/null
done
fio_passed "$fio_pid" "$out" "across an upgrade and a kill -9"
expect_batched l0 false
expect_batched m0 "$offered"
expect_batched f0 "$offered"

stop_ublkd 20
assert_no_ublk_devices
log "batched and per-request devices served side by side (BATCH_IO offered: $offered)"
