#!/bin/bash
# `systemctl start ublkd@mem0` brings device mem0 (devices.d/mem0.json,
# autostart off) live through ublkd, which it starts: ublkctl lists it,
# /dev/ublkbN exists, fio verify passes, the unit is active and ublkd is
# ready with a STATUS that counts it. `systemctl stop ublkd@mem0` while a
# process holds the device leaves it live and names the holder in the
# journal; once it is free the stop removes the device and the unit goes
# inactive; ublkd keeps running. Logs carry DEVICE=mem0 in the journal.
# vm-timeout: 150
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

require_unit ublkd.service ublkd@.service
require_cmd fio jq
mkdir -p /etc/ublkd/devices.d
echo '{"name":"mem0","autostart":false,"backend":{"type":"mem","size":"128MiB"},"queues":2}' \
    >/etc/ublkd/devices.d/mem0.json
add_cleanup "systemctl stop ublkd@mem0.service ublkd.service ublkd.socket; rm -f /etc/ublkd/devices.d/mem0.json"

systemctl start ublkd@mem0.service || { show_unit ublkd@mem0.service; show_unit ublkd.service; fail "start ublkd@mem0 failed"; }
[[ $(unit_prop ublkd@mem0.service ActiveState) == active ]] || fail "ublkd@mem0 not active after start"
[[ $(unit_prop ublkd.service ActiveState) == active ]] || fail "ublkd not active"
list=$(ublkctl --json list)
dev=$(jq -r '.[] | select(.name == "mem0" and .state == "live") | .block_device' <<<"$list")
[[ -b $dev ]] || fail "mem0 is not live in ublkctl list: $list"
log "ublkd@mem0 active, mem0 live at $dev"
status=$(unit_prop ublkd.service StatusText)
[[ $status == "1 device live" ]] || fail "ublkd STATUS is '$status'"
fio_verify "$dev" --size=32M --iodepth=16

journalctl -b -u ublkd.service DEVICE=mem0 --no-pager -o cat | grep -q "device mem0 live at $dev" ||
    fail "no journal entry with DEVICE=mem0 saying it is live"

# Stopped while a process holds the device open: the unit stops, the device
# does not, and the journal says who holds it.
(exec 3<"$dev" && exec sleep 30) &
holder=$!
add_cleanup "kill $holder 2>/dev/null || true"
sleep 0.5
systemctl stop ublkd@mem0.service
[[ $(unit_prop ublkd@mem0.service ActiveState) == inactive ]] || fail "ublkd@mem0 not inactive after a refused stop"
[[ $(ublkctl --json info mem0 | jq -r .state) == live ]] || fail "mem0 was deleted although a process held it"
unit_journal ublkd@mem0.service | grep -q "device mem0 is in use (${dev#/dev/} open in sleep (pid $holder))" ||
    { unit_journal ublkd@mem0.service | tail -5 >&2; fail "the journal does not say who holds mem0"; }
log "stop of ublkd@mem0 while held: unit inactive, device live, the journal names the holder"
kill "$holder"
wait "$holder" 2>/dev/null || true
systemctl start ublkd@mem0.service || fail "ublkd@mem0 did not start again"
systemctl stop ublkd@mem0.service
[[ $(unit_prop ublkd@mem0.service ActiveState) == inactive ]] || fail "ublkd@mem0 not inactive after stop"
for _ in {1..50}; do [[ -e $dev ]] || break; sleep 0.1; done
[[ ! -e $dev ]] || fail "$dev still exists after stopping ublkd@mem0"
[[ $(ublkctl --json list) == "[]" ]] || fail "mem0 still listed after stop"
[[ $(unit_prop ublkd.service ActiveState) == active ]] || fail "ublkd stopped along with the device unit"
systemctl stop ublkd.service ublkd.socket
log "device unit passed"
