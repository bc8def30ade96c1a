#!/bin/bash
# `systemctl stop ublkd` with devices live (one through ublkd@) and fio
# running against them: a clean stop in bounded time, the device unit is
# stopped first, no ublk device left, no kernel splat (the runner checks
# dmesg).
# vm-timeout: 150
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

require_unit ublkd.service ublkd@.service
require_cmd fio jq
mkdir -p /etc/ublkd/devices.d
echo '{"name":"ld0","autostart":false,"backend":{"type":"mem","size":"128MiB"},"queues":2}' >/etc/ublkd/devices.d/ld0.json
echo '{"name":"ld1","backend":{"type":"mem","size":"128MiB"},"queues":2}' >/etc/ublkd/devices.d/ld1.json
add_cleanup "systemctl stop ublkd@ld0.service ublkd.service ublkd.socket; rm -f /etc/ublkd/devices.d/ld0.json /etc/ublkd/devices.d/ld1.json"
systemctl start ublkd@ld0.service || { show_unit ublkd@ld0.service; fail "start ublkd@ld0 failed"; }
list=$(ublkctl --json list)
pids=()
devs=()
for n in ld0 ld1; do
    d=$(jq -r ".[] | select(.name == \"$n\") | .block_device" <<<"$list")
    [[ -b $d ]] || fail "$n not live: $list"
    devs+=("$d")
    fio --name=load --filename="$d" --direct=1 --ioengine=io_uring --rw=randrw --bs=4k \
        --iodepth=32 --time_based --runtime=60 >"$CASE_DIR/fio-$n.out" 2>&1 &
    pids+=($!)
done
sleep 3
# The stop must meet I/O in flight: both writers still running, and both
# devices having completed I/O (reads + writes of /sys/block/X/stat).
for i in 0 1; do
    kill -0 "${pids[i]}" 2>/dev/null || { cat "$CASE_DIR/fio-ld$i.out" >&2; fail "fio on ld$i ended before the stop"; }
    read -r r _ _ _ w _ <"/sys/block/${devs[i]#/dev/}/stat"
    ((r + w > 0)) || fail "no I/O completed on ${devs[i]} before the stop"
done
t0=${EPOCHREALTIME/./}
systemctl stop ublkd.service || { show_unit ublkd.service; fail "systemctl stop ublkd failed"; }
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
log "ublkd stopped in $ms ms with fio running"
((ms < 30000)) || fail "stopping took $ms ms"
[[ $(unit_prop ublkd@ld0.service ActiveState) == inactive ]] || fail "ublkd@ld0 still $(unit_prop ublkd@ld0.service ActiveState)"
[[ $(unit_prop ublkd.service Result) == success ]] || fail "ublkd result: $(unit_prop ublkd.service Result)"
# Each writer ends soon after its device is gone, with an error: an fio
# that went on, or claimed success for a 60 s run cut short, is wrong.
for i in 0 1; do
    for ((t = 0; t < 100; t++)); do
        kill -0 "${pids[i]}" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "${pids[i]}" 2>/dev/null; then
        kill -9 "${pids[i]}"
        fail "fio on ld$i still running 10 s after ublkd stopped"
    fi
    rc=0
    wait "${pids[i]}" || rc=$?
    ((rc != 0)) || { cat "$CASE_DIR/fio-ld$i.out" >&2; fail "fio on ld$i exited 0 although its device went away"; }
    grep -qiE 'error|errno' "$CASE_DIR/fio-ld$i.out" ||
        { cat "$CASE_DIR/fio-ld$i.out" >&2; fail "fio on ld$i exited $rc without reporting an I/O error"; }
    log "fio on ld$i: exit $rc, $(grep -m1 -oiE '[^ ]*error[^,]*' "$CASE_DIR/fio-ld$i.out")"
done
left=$(compgen -G '/dev/ublk[bc]*' | tr '\n' ' ' || true)
[[ -z $left ]] || fail "ublk devices left: $left"
# The device unit's stop job completed before the daemon's (BindsTo= +
# After= order the stop): compare the journal's records of both jobs.
stop_done_at() { # stop_done_at UNIT: monotonic µs of UNIT's last stop job done this boot
    journalctl -b -o json -u "$1" --no-pager |
        jq -r --arg u "$1" 'select(.UNIT == $u and .JOB_TYPE == "stop" and .JOB_RESULT == "done") | .__MONOTONIC_TIMESTAMP' |
        tail -n 1
}
dev_at=$(stop_done_at ublkd@ld0.service)
daemon_at=$(stop_done_at ublkd.service)
[[ -n $dev_at && -n $daemon_at ]] ||
    { unit_journal ublkd@ld0.service >&2; fail "no stop job record in the journal (device '$dev_at', daemon '$daemon_at')"; }
((dev_at < daemon_at)) || fail "ublkd@ld0 stopped at ${dev_at} us, after ublkd.service at ${daemon_at} us"
log "device unit stopped $(((daemon_at - dev_at) / 1000)) ms before the daemon"
