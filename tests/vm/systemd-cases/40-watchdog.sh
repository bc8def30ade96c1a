#!/bin/bash
# Watchdog: `kill -STOP` the daemon; systemd notices the missing pings
# (WatchdogSec=10), kills it and restarts it (Restart=on-failure), and the
# new daemon is ready again.
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

require_unit ublkd.service
add_cleanup "systemctl stop ublkd.service ublkd.socket; systemctl reset-failed ublkd.service 2>/dev/null || true"
systemctl start ublkd.service || { show_unit ublkd.service; fail "start ublkd failed"; }
pid=$(unit_prop ublkd.service MainPID)
wd=$(unit_prop ublkd.service WatchdogUSec)
log "ublkd pid $pid, watchdog $wd"
((pid > 0)) || fail "no MainPID"
t0=${EPOCHREALTIME/./}
kill -STOP "$pid"
deadline=$((t0 + 40 * 1000000))
while :; do
    new=$(unit_prop ublkd.service MainPID)
    if ((new > 0 && new != pid)) && [[ $(unit_prop ublkd.service ActiveState) == active ]]; then break; fi
    ((${EPOCHREALTIME/./} < deadline)) || { show_unit ublkd.service; fail "ublkd not restarted within 40 s of SIGSTOP"; }
    sleep 0.5
done
secs=$(((${EPOCHREALTIME/./} - t0) / 1000000))
log "restarted as pid $new after ${secs}s"
journalctl -b -u ublkd.service --no-pager | grep -qi "watchdog timeout" || fail "the journal does not show a watchdog timeout"
((secs >= 8)) || fail "restarted after ${secs}s, before the watchdog period"
