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
for n in ld0 ld1; do
    d=$(jq -r ".[] | select(.name == \"$n\") | .block_device" <<<"$list")
    [[ -b $d ]] || fail "$n not live: $list"
    fio --name=load --filename="$d" --direct=1 --ioengine=io_uring --rw=randrw --bs=4k \
        --iodepth=32 --time_based --runtime=60 >/dev/null 2>&1 &
    pids+=($!)
done
sleep 3
t0=${EPOCHREALTIME/./}
systemctl stop ublkd.service || { show_unit ublkd.service; fail "systemctl stop ublkd failed"; }
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
log "ublkd stopped in $ms ms with fio running"
((ms < 30000)) || fail "stopping took $ms ms"
[[ $(unit_prop ublkd@ld0.service ActiveState) == inactive ]] || fail "ublkd@ld0 still $(unit_prop ublkd@ld0.service ActiveState)"
[[ $(unit_prop ublkd.service Result) == success ]] || fail "ublkd result: $(unit_prop ublkd.service Result)"
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
left=$(compgen -G '/dev/ublk[bc]*' | tr '\n' ' ' || true)
[[ -z $left ]] || fail "ublk devices left: $left"
# Device unit stopped before the daemon.
journalctl -b --no-pager -o short-monotonic -u ublkd@ld0.service -u ublkd.service | grep -E "Stopp(ing|ed)" >&2 || true
