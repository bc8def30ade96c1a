#!/bin/bash
# `systemctl reload ublkd` brings up a new drop-in, and the reload completes
# (ublkd back to active, not reloading).
# vm-timeout: 90
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

require_unit ublkd.service
mkdir -p /etc/ublkd/devices.d
add_cleanup "systemctl stop ublkd.service ublkd.socket; rm -f /etc/ublkd/devices.d/rl0.json"
systemctl start ublkd.service || { show_unit ublkd.service; fail "start ublkd failed"; }
[[ $(ublkctl --json list) == "[]" ]] || fail "devices before the reload"
echo '{"name":"rl0","backend":{"type":"null","size":"1GiB"}}' >/etc/ublkd/devices.d/rl0.json
systemctl reload ublkd.service || { show_unit ublkd.service; fail "reload failed"; }
[[ $(unit_prop ublkd.service ActiveState) == active ]] || fail "ublkd not active after reload"
state=$(ublkctl --json info rl0 | jq -r .state)
[[ $state == live ]] || fail "rl0 is '$state' after systemctl reload"
[[ $(unit_prop ublkd.service StatusText) == "1 device live" ]] || fail "STATUS: $(unit_prop ublkd.service StatusText)"
log "reload brought up rl0"
