#!/bin/bash
# The systemd test image works: systemd is PID 1, the boot finished (running,
# or degraded with the failed units named), ublk_drv loads and
# /dev/ublk-control appears, and `meson install` put the project's binaries
# on the PATH (ublkd --version).
# vm-timeout: 60
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

comm=$(</proc/1/comm)
exe=$(readlink /proc/1/exe)
[[ $comm == systemd ]] || fail "PID 1 is $comm ($exe), not systemd"
log "PID 1: $exe, $(systemctl --version | head -n 1)"

state=$(systemctl is-system-running || true)
case $state in
    running) log "system state: running" ;;
    degraded)
        log "system state: degraded; failed units:"
        systemctl list-units --failed --no-pager --plain >&2
        ;;
    *)
        systemctl list-units --failed --no-pager --plain >&2 || true
        systemctl list-jobs --no-pager >&2 || true
        fail "system state is '$state', not running or degraded"
        ;;
esac

# The harness does not load ublk_drv: units and cases load what they need.
modprobe ublk_drv || fail "modprobe ublk_drv failed"
for _ in {1..50}; do
    [[ -c /dev/ublk-control ]] && break
    sleep 0.1
done
[[ -c /dev/ublk-control ]] || fail "no /dev/ublk-control after modprobe ublk_drv"
log "ublk_drv loaded: $(ls -l /dev/ublk-control)"

ublkd=$(command -v ublkd) || fail "ublkd is not installed on the PATH ($PATH)"
version=$(ublkd --version) || fail "ublkd --version failed"
[[ $version == "ublkd "[0-9]* ]] || fail "ublkd --version printed '$version'"
log "$ublkd: $version"
ublkctl=$(command -v ublkctl) || fail "ublkctl is not installed on the PATH"
log "ublkctl: $ublkctl"
# The libraries they link are in the image.
for b in "$ublkd" "$ublkctl"; do
    if ldd "$b" | grep -q 'not found'; then
        ldd "$b" >&2
        fail "$b needs libraries the image lacks"
    fi
done

# What `meson install` brought for systemd (nothing yet is fine).
units=$(systemctl list-unit-files --no-legend --plain 'ublkd*' 2>/dev/null |
    awk '$1 != "ublkd-vm-tests.service" { print $1 " (" $2 ")" }' | tr '\n' ' ')
log "project units: ${units:-none installed}"
