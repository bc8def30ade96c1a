#!/bin/bash
# The test runner of the systemd VM flavour (see tests/vm/README.md, "systemd
# flavour"). ublkd-vm-tests.service starts it once systemd has booted the
# Debian image; it waits for the boot to finish, runs the cases listed in
# /etc/ublkd-vm/run.conf one by one and powers the VM off.
#
# It speaks the marker protocol of init.sh on the virtio serial port
# "ublkd.results", plus
#   @@UBLKD-PHASE <case> <phase>      before a phase after the first
#   @@UBLKD-REBOOT <case> <phase>     the case asked for a reboot; the VM
#                                     reboots (qemu exits: -no-reboot) and the
#                                     host boots the same image again, where
#                                     the case continues with that phase
#   @@UBLKD-POWERCUT <case> <phase>   the case asked for a power cut: the host
#                                     kills qemu at once (nothing in the
#                                     guest's memory reaches the disk) and
#                                     boots the same image again, where the
#                                     case continues with that phase
# A case asks for the reboot with reboot_and_continue, for the power cut
# with powercut_and_continue (systemd-lib.sh). The
# runner's progress lives on the root disk (/var/lib/ublkd-vm-tests), so it
# picks up where it left off after the reboot. What both flavours share is
# in guest-lib.sh.
set -uo pipefail

readonly STATE_DIR=/var/lib/ublkd-vm-tests
readonly STATE=$STATE_DIR/state
readonly LOGS=$STATE_DIR/logs
readonly RUNNER=runner
# shellcheck source=guest-lib.sh
. "${BASH_SOURCE[0]%/*}/guest-lib.sh"
# File systems systemd mounts by itself when something touches them
# (configfs once null_blk loads configfs, ...): not left behind by a case.
readonly IGNORED_FS_RE='^(configfs|debugfs|tracefs|binfmt_misc|fusectl|autofs|mqueue|hugetlbfs|securityfs|pstore|bpf|efivarfs|rpc_pipefs|nsfs)$'
# The installed binaries, for the cases.
UBLKD=$(command -v ublkd || echo /usr/local/sbin/ublkd)
UBLKCTL=$(command -v ublkctl || echo /usr/local/sbin/ublkctl)

open_results_channel

# shellcheck disable=SC1091
. /etc/ublkd-vm/run.conf
UBLKD_VM_MAX_PHASES=${UBLKD_VM_MAX_PHASES:-5}

mkdir -p "$STATE_DIR" "$LOGS"
# Progress across boots: BOOT (count), NEXT (index of the case to run),
# PHASE (its phase), SECS (its seconds so far, tenths), PHASE_END (uptime of
# the previous boot when the last phase ended, for the journal check).
BOOT=0 NEXT=0 PHASE=1 SECS=0 PHASE_END=0
# shellcheck disable=SC1090
[[ -f $STATE ]] && . "$STATE"
BOOT=$((BOOT + 1))
save_state() {
    printf 'BOOT=%s NEXT=%s PHASE=%s SECS=%s PHASE_END=%s\n' \
        "$BOOT" "$NEXT" "$PHASE" "$SECS" "$PHASE_END" >"$STATE.tmp"
    sync "$STATE.tmp"
    mv "$STATE.tmp" "$STATE"
    sync "$STATE_DIR"
}
save_state

# Wait for the boot to finish: this unit is Type=exec, so the boot does not
# wait for it.
sysstate=$(timeout 180 systemctl is-system-running --wait 2>/dev/null)
boot_status=ok
boot_detail="boot $BOOT, system $sysstate"
startup=$(systemd-analyze time 2>/dev/null | sed -n 's/^Startup finished in //p' | head -n 1)
[[ -n $startup ]] && boot_detail+=", $startup"
if [[ $sysstate != running && $sysstate != degraded ]]; then
    boot_status=error
fi
if [[ $sysstate != running ]]; then
    failed_units=$(systemctl list-units --failed --plain --no-legend 2>/dev/null | awk '{print $1}' | tr '\n' ' ')
    [[ -n $failed_units ]] && boot_detail+=" (failed: ${failed_units% })"
fi
report_boot "$LOGS/boot$BOOT-dmesg.log"

open_wake_fifo

# ---- the system's state, to tell what a case left behind --------------------

# collect_units: UNITS=(ublkd* units that are active, activating, reloading
# or deactivating).
collect_units() {
    local u _rest
    UNITS=()
    while read -r u _rest; do
        [[ -n $u ]] && UNITS+=("$u")
    done < <(systemctl list-units --all --plain --no-legend --state=active,activating,deactivating,reloading \
        'ublkd*' 2>/dev/null)
}
# collect_files: FILES=(what is under /etc/ublkd and /etc/systemd/system:
# configuration, unit files, drop-ins and the links of enabled units).
collect_files() {
    FILES=()
    mapfile -t FILES < <(find /etc/ublkd /etc/systemd/system -mindepth 1 2>/dev/null)
    return 0
}
# unit_of PID: UNIT= the systemd unit whose cgroup PID is in, or empty.
unit_of() {
    local line
    UNIT=
    read -r line 2>/dev/null <"/proc/$1/cgroup" || return 0
    line=${line#0::}
    line=${line##*/}
    [[ $line == *.service || $line == *.scope ]] && UNIT=$line
    return 0
}
# Processes of this service other than the runner itself (the cases run in
# it).
MY_CGROUP=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
readonly MY_CGROUP
# collect_cgroup_procs EXCLUDE...: PROCS=("pid state pgrp comm" of them but
# the excluded pids).
collect_cgroup_procs() {
    local pid ex
    PROCS=()
    [[ -r $MY_CGROUP/cgroup.procs ]] || return 0
    while read -r pid; do
        ((pid == $$ || pid == BASHPID)) && continue
        for ex in "$@"; do [[ $pid == "$ex" ]] && continue 2; done
        add_proc "$pid"
    done <"$MY_CGROUP/cgroup.procs"
    return 0
}

# The baseline is taken on the first boot, before any case, and kept on disk:
# a unit a case enabled before a reboot is active on the next boot, and that
# is still the case's to undo.
declare -A baseline_units=() baseline_files=()
if [[ -f $STATE_DIR/baseline ]]; then
    # shellcheck disable=SC1091
    . "$STATE_DIR/baseline"
else
    take_baseline
    collect_units
    for m in "${UNITS[@]}"; do baseline_units[$m]=1; done
    collect_files
    for m in "${FILES[@]}"; do baseline_files[$m]=1; done
    # declare -p inside a function would make them local when sourced: -g.
    declare -p baseline_mounts baseline_modules baseline_units baseline_files baseline_devs |
        sed 's/^declare -A /declare -gA /' >"$STATE_DIR/baseline"
fi

# cleanup_after_case: back to the baseline; LEFTOVERS=(what the case left
# behind).
cleanup_after_case() {
    local pid m i u
    LEFTOVERS=() KILLED=0
    # Units first: stopping them is the orderly way to end their daemons.
    collect_units
    for u in "${UNITS[@]}"; do
        [[ -n ${baseline_units[$u]:-} ]] && continue
        LEFTOVERS+=("unit $u still active")
        timeout 60 systemctl stop "$u" 2>/dev/null || LEFTOVERS+=("(could not stop $u)")
    done
    systemctl reset-failed 'ublkd*' 2>/dev/null
    # Processes: daemons anywhere, and whatever else runs in this service.
    collect_pids ublkd
    for pid in "${PIDS[@]}"; do
        # A daemon of a unit that runs from boot is part of the baseline.
        unit_of "$pid"
        [[ -n $UNIT && -n ${baseline_units[$UNIT]:-} ]] && continue
        LEFTOVERS+=("ublkd pid $pid${UNIT:+ ($UNIT)} still running")
        kill -KILL "$pid" 2>/dev/null && KILLED=1
    done
    collect_cgroup_procs "$FORWARDER"
    kill_stray_procs
    await_killed collect_cgroup_procs "$FORWARDER"
    remove_new_mounts
    remove_new_devices

    # Configuration a case added (a drop-in under /etc/ublkd, a unit or
    # drop-in or enable link under /etc/systemd/system) would change what
    # the next case gets.
    local reload=0
    collect_files
    for ((i = ${#FILES[@]} - 1; i >= 0; i--)); do
        m=${FILES[i]}
        [[ -n ${baseline_files[$m]:-} ]] && continue
        LEFTOVERS+=("file $m")
        rm -rf "$m"
        [[ $m == /etc/systemd/* ]] && reload=1
    done
    ((reload)) && systemctl daemon-reload

    # ublk_drv too, unless the boot loaded it.
    unload_new_modules
}

# previous_boot_splats NAME LOG: a phase after a reboot or power cut owns the
# kernel messages of the previous boot after its last phase (the shutdown)
# and those of this boot: their reports go to SPLATS and KNOWN.
previous_boot_splats() {
    local name=$1 log=$2 shutdown=$LOGS/$1.shutdown$PHASE.log
    echo "==== phase $PHASE, boot $BOOT (after a reboot requested by phase $((PHASE - 1)))" >>"$log"
    journalctl -k -b -1 -o short-monotonic --no-pager 2>/dev/null |
        awk -v t="$PHASE_END" '{ s = $0; sub(/^\[ */, "", s); sub(/\].*/, "", s); if (s + 0 >= t) print }' \
            >"$shutdown"
    classify_splats_in "$shutdown"
    classify_splats_in "$LOGS/boot$BOOT-dmesg.log"
}

# run_phase NAME: one phase ($PHASE) of a case. Emits its result unless the
# case asked for a reboot or a power cut (then NEXT_BOOT=reboot or
# powercut).
run_phase() {
    local name=$1 file=$TESTS/systemd-cases/$1.sh
    local log=$LOGS/$name.phase$PHASE.log dir=$STATE_DIR/cases/$name
    local secs asked='' suffix=''
    local -a early_splats early_known
    NEXT_BOOT=

    read_case_header "$file"
    if ((PHASE == 1)); then
        rm -rf "$dir"
        mkdir -p "$dir"
        SECS=0
        prepare_sanitizer_dir "$name"
    else
        emit "@@UBLKD-PHASE $name $PHASE"
        suffix=" in phase $PHASE"
    fi
    emit "@@UBLKD-BEGIN $name $CASE_TIMEOUT"
    rm -f "$dir/.reboot-requested" "$dir/.powercut-requested"
    begin_case_log "$name" "$log"
    SPLATS=() KNOWN=()
    ((PHASE > 1)) && previous_boot_splats "$name" "$log"
    early_splats=("${SPLATS[@]}") early_known=("${KNOWN[@]}")

    run_case_file "$name" "$file" "$dir" "$CASE_TIMEOUT" "$log" \
        UBLKD="$UBLKD" UBLKCTL="$UBLKCTL" UBLKD_VM_SYSTEMD=1 UBLKD_PHASE="$PHASE" \
        UBLKD_BOOT="$BOOT" UBLKD_REBOOT_FILE="$dir/.reboot-requested" \
        UBLKD_POWERCUT_FILE="$dir/.powercut-requested"
    SECS=$((SECS + (CASE_END - CASE_START) / 10))
    secs=$((SECS / 10)).$((SECS % 10))

    dmesg >"$LOGS/$name.phase$PHASE.dmesg" 2>&1
    mapfile -t DMESG_LINES <"$LOGS/$name.phase$PHASE.dmesg"
    classify_splats "${DMESG_LINES[@]}"
    scan_sanitizer_reports "$name" "$log" "$dir"

    [[ -f $dir/.reboot-requested ]] && asked=reboot
    [[ -f $dir/.powercut-requested ]] && asked=powercut
    if ((CASE_RC == 0)) && [[ -n $asked ]] && ((${#SPLATS[@]} == 0 && ${#SAN_REPORTS[@]} == 0)) &&
        [[ -z $SAN_STDERR ]]; then
        if ((PHASE < UBLKD_VM_MAX_PHASES)); then
            # Leftovers are the point here: the clean reboot tears them down,
            # the power cut drops them.
            NEXT_BOOT=$asked
            {
                echo
                echo "---- $name phase $PHASE: exit status 0 after ${secs}s, $asked requested"
                if ((${#KNOWN[@]})); then
                    echo "---- known kernel report the case declares (# vm-known-splat), not a failure:"
                    printf '%s\n' "${KNOWN[@]}"
                fi
                echo "---- dmesg during the phase:"
                ((${#DMESG_LINES[@]})) && printf '%s\n' "${DMESG_LINES[@]}"
            } >>"$log"
            end_case_log "$name"
            return
        fi
        CASE_RC=1
        echo "FAIL: more than $UBLKD_VM_MAX_PHASES phases ($asked requested by phase $PHASE)" >>"$log"
    fi

    # The verdict counts the cleanup's kernel messages too: tearing down
    # what the case left can make the kernel complain. The kernel log was
    # not cleared since the phase began, so it is read again in full.
    cleanup_after_case
    dmesg >"$LOGS/$name.phase$PHASE.dmesg" 2>&1
    mapfile -t DMESG_LINES <"$LOGS/$name.phase$PHASE.dmesg"
    SPLATS=("${early_splats[@]}") KNOWN=("${early_known[@]}")
    classify_splats "${DMESG_LINES[@]}"
    judge_case "$name" "$log" "$suffix"
    case_trailer "$name" "$secs" >>"$log"

    end_case_log "$name"
    emit "@@UBLKD-RESULT $name $VERDICT $secs${REASON:+ $REASON}"
}

while ((NEXT < ${#UBLKD_VM_CASES[@]})); do
    c=${UBLKD_VM_CASES[NEXT]}
    if [[ ! -f $TESTS/systemd-cases/$c.sh ]]; then
        emit "@@UBLKD-RESULT $c FAIL 0 case file missing in the image"
    else
        run_phase "$c"
        if [[ -n $NEXT_BOOT ]]; then
            PHASE=$((PHASE + 1))
            PHASE_END=$(uptime_s)
            save_state
            if [[ $NEXT_BOOT == powercut ]]; then
                # Only the runner's state is made durable (save_state
                # fsyncs it): a sync here would write out what the power
                # cut is meant to lose. The host kills qemu on the marker.
                emit "@@UBLKD-POWERCUT $c $PHASE"
                sleep infinity
            fi
            emit "@@UBLKD-REBOOT $c $PHASE"
            sync
            systemctl reboot
            exit 0
        fi
    fi
    NEXT=$((NEXT + 1)) PHASE=1 SECS=0
    save_state
done
emit "@@UBLKD-DONE"
sync
systemctl poweroff
