#!/bin/bash
# Socket activation: with only ublkd.socket active, `ublkctl list` starts
# ublkd.service, which takes the socket from systemd and answers; ublkd.service
# is active afterwards.
# vm-timeout: 90
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

require_unit ublkd.service ublkd.socket
modprobe ublk_drv
add_cleanup "systemctl stop ublkd.service ublkd.socket"
systemctl stop ublkd.service 2>/dev/null || true
systemctl start ublkd.socket
[[ $(unit_prop ublkd.service ActiveState) == inactive ]] || fail "ublkd.service already active"
[[ -S /run/ublkd/ublkd.sock ]] || fail "ublkd.socket did not create /run/ublkd/ublkd.sock"
out=$(ublkctl --json list) || { show_unit ublkd.service; fail "ublkctl list failed: $out"; }
[[ $out == "[]" ]] || fail "list printed $out"
wait_unit_state ublkd.service active 30
wait_unit_log ublkd.service "admin socket from systemd \(fd 3\)" 10 >/dev/null
log "socket activation started ublkd: $(unit_prop ublkd.service StatusText)"
