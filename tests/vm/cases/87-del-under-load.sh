#!/bin/bash
# Delete under heavy I/O: fio with 4 jobs at iodepth 128 on a mem and a
# file device; plain `ublkctl del` is refused, naming fio; `del --force` of
# each returns within 30 s, fio exits (its
# I/O errors are expected: the device goes away), ublkd keeps running and
# the kernel reports nothing (the harness fails the case on any splat).
# vm-timeout: 150
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd fio

cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"
mdev=$(ctl_ok add dm --backend mem --size 256MiB --queues 2 --depth 64)
fdev=$(ctl_ok add df --backend file --path "$CASE_DIR/df.img" --size 256MiB --create --queues 2 --depth 64)

pids=()
for dev in "$mdev" "$fdev"; do
    fio --name=load --filename="$dev" --direct=1 --ioengine=io_uring --rw=randrw --bs=4k \
        --iodepth=128 --numjobs=4 --size=256M --time_based --runtime=60 --group_reporting \
        >"$CASE_DIR/fio.${dev##*/}" 2>&1 &
    pids+=($!)
    add_cleanup "kill -KILL $! 2>/dev/null || true"
done
sleep 3
for p in "${pids[@]}"; do ublkd_alive "$p" || fail "fio ended before the delete"; done

# Without --force: refused, naming fio, while it has the device open.
err=$(ctl_err del dm)
[[ $err == *"[busy]"* && $err == *"open in fio"* ]] || fail "del under load was not refused naming fio: $err"
for name in dm df; do
    t0=${EPOCHREALTIME/./}
    timeout 60 "$UBLKCTL" del --force "$name" || fail "ublkctl del --force $name failed or hung (status $?)"
    ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
    log "del $name under load took $ms ms"
    ((ms <= 30000)) || fail "del $name took $ms ms (limit 30000)"
done
t0=${EPOCHREALTIME/./}
for p in "${pids[@]}"; do
    while ublkd_alive "$p"; do
        ((${EPOCHREALTIME/./} - t0 < 30000000)) || fail "fio (pid $p) still runs 30 s after the delete"
        sleep 0.1
    done
    wait "$p" || true
done
ublkd_alive || fail "ublkd died"
[[ $(json_get "$(ctl_ok --json list)" 'length') == 0 ]] || fail "devices left in the list"
stop_ublkd 20
assert_no_ublk_devices
log "delete under load passed"
