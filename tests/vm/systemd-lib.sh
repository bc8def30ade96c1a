# shellcheck shell=bash
# Helper library for the cases of the systemd VM flavour
# (tests/vm/systemd-cases/*.sh, run by run-systemd.sh). A case starts with
#
#   #!/bin/bash
#   . "${BASH_SOURCE%/*}/../systemd-lib.sh"
#
# which brings in lib.sh (log, fail, skip, add_cleanup, write_spec, ...) and
# the systemd helpers below. The case runs as root inside the booted Debian
# system, in ublkd-vm-tests.service; $CASE_DIR is on the root disk and
# survives reboots.
#
# Cases that reboot: a phase ends with reboot_and_continue (or
# powercut_and_continue); after a clean reboot of the VM (or a power cut)
# the case runs again from the top on the same root file system, with
# UBLKD_PHASE one higher, in the same $CASE_DIR:
#
#   if ((UBLKD_PHASE == 1)); then
#       echo data >/var/lib/marker
#       reboot_and_continue
#   fi
#   [[ $(cat /var/lib/marker) == data ]] || fail "marker lost"

# shellcheck source=lib.sh
. "${BASH_SOURCE[0]%/*}/lib.sh"

UBLKD_PHASE=${UBLKD_PHASE:-1}

# reboot_and_continue: end this phase; the VM reboots cleanly (systemctl
# reboot: units stopped, file systems unmounted) and the case runs again with
# UBLKD_PHASE+1. Nothing the phase leaves (running units, devices, files) is
# held against it; the cleanups registered with add_cleanup still run now,
# and daemons started with start_ublkd are still stopped, so use units for
# what must last until the reboot.
reboot_and_continue() {
    [[ -n ${UBLKD_REBOOT_FILE:-} ]] || fail "reboot_and_continue: not run by the systemd VM runner"
    log "phase $UBLKD_PHASE done; requesting a reboot"
    : >"$UBLKD_REBOOT_FILE"
    exit 0
}

# powercut_and_continue: end this phase with a power cut: the host kills
# the VM at once, with whatever this phase left running still running, and
# boots the same image again; the case runs again with UBLKD_PHASE+1.
# What the guest kept in memory (page cache, write caches of the devices
# it serves) is lost; what reached the virtual disk stays. The cleanups
# registered with add_cleanup and the stop of daemons started with
# start_ublkd still run before the cut, so run what must be cut under
# systemd (a unit, systemd-run).
powercut_and_continue() {
    [[ -n ${UBLKD_POWERCUT_FILE:-} ]] || fail "powercut_and_continue: not run by the systemd VM runner"
    log "phase $UBLKD_PHASE done; requesting a power cut"
    : >"$UBLKD_POWERCUT_FILE"
    exit 0
}

# require_unit UNIT...: skip unless systemd knows the units (installed by
# `meson install`).
require_unit() {
    local u
    for u in "$@"; do
        systemctl cat "$u" >/dev/null 2>&1 || skip "unit $u is not installed"
    done
}

# unit_prop UNIT PROPERTY: the value of a unit property (systemctl show).
unit_prop() { systemctl show -P "$2" "$1"; }

# wait_unit_state UNIT STATE TIMEOUT: wait until ActiveState of UNIT is STATE
# (active, inactive, failed, ...); fails with the unit's status and journal
# on timeout.
wait_unit_state() {
    local unit=$1 want=$2 timeout=$3 deadline now
    deadline=$((${EPOCHREALTIME/./} + timeout * 1000000))
    while :; do
        now=$(unit_prop "$unit" ActiveState)
        [[ $now == "$want" ]] && return 0
        if ((${EPOCHREALTIME/./} > deadline)); then
            show_unit "$unit"
            fail "$unit is $now, not $want, after ${timeout}s"
        fi
        sleep 0.2
    done
}

# show_unit UNIT [LINES]: systemctl status and the unit's journal of this boot
# into the case log.
show_unit() {
    local unit=$1 lines=${2:-60}
    echo "---- systemctl status $unit:" >&2
    systemctl status --no-pager --full "$unit" >&2 || true
    echo "---- last $lines journal lines of $unit (this boot):" >&2
    journalctl -b -u "$unit" -n "$lines" --no-pager -o short-monotonic >&2 || true
    echo "----" >&2
}

# unit_journal UNIT [BOOT]: the unit's messages (without metadata) of this
# boot, or of BOOT (-1: the previous one).
unit_journal() { journalctl -b "${2:-0}" -u "$1" --no-pager -o cat; }

# wait_unit_log UNIT PATTERN TIMEOUT: wait for an ERE in the unit's journal of
# this boot; prints the line.
wait_unit_log() {
    local unit=$1 pattern=$2 timeout=$3 deadline line
    deadline=$((${EPOCHREALTIME/./} + timeout * 1000000))
    while :; do
        if line=$(unit_journal "$unit" | grep -E -m1 -- "$pattern"); then
            printf '%s\n' "$line"
            return 0
        fi
        if ((${EPOCHREALTIME/./} > deadline)); then
            show_unit "$unit"
            fail "no line matching /$pattern/ in the journal of $unit within ${timeout}s"
        fi
        sleep 0.3
    done
}
