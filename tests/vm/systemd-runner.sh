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
# picks up where it left off after the reboot.
set -uo pipefail
shopt -s nullglob

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8

readonly TESTS=/ublkd-tests
readonly STATE_DIR=/var/lib/ublkd-vm-tests
readonly STATE=$STATE_DIR/state
readonly LOGS=$STATE_DIR/logs
readonly HUNG_TASK_SECS=60
readonly DMESG_TS_RE='^\[[ 0-9.]*\] (.*)'
readonly TIMEOUT_RE='^# vm-timeout: *([0-9]+)'
# The same list as init.sh: kernel messages that fail a case.
readonly SPLAT_RE='WARNING:|BUG:|Oops|lockdep|possible circular locking|INFO: task .* blocked for more than|general protection fault|Call Trace:|kernel BUG at|UBSAN:|KASAN:|Kernel panic'
# File systems systemd mounts by itself when something touches them
# (configfs once null_blk loads configfs, ...): not left behind by a case.
readonly PSEUDO_FS_RE='^(configfs|debugfs|tracefs|binfmt_misc|fusectl|autofs|mqueue|hugetlbfs|securityfs|pstore|bpf|efivarfs|rpc_pipefs|nsfs)$'

# say MSG: a line on the console (the unit sends stdout to journal+console).
say() { local up _; read -r up _ </proc/uptime; printf '[%12s] %s\n' "$up" "$*"; }
uptime_s() { local up _; read -r up _ </proc/uptime; echo "$up"; }
uptime_cs() { local up _; read -r up _ </proc/uptime; echo $((10#${up/./})); }

# Results channel: the virtio serial port named "ublkd.results".
results_dev=
for _ in {1..100}; do
    for p in /sys/class/virtio-ports/*; do
        [[ $(cat "$p/name" 2>/dev/null) == ublkd.results ]] && results_dev=/dev/${p##*/}
    done
    [[ -n $results_dev && -c $results_dev ]] && break
    sleep 0.1
done
if [[ -n $results_dev ]]; then
    exec 3>"$results_dev"
else
    say "runner: no results channel; results go to the console"
    exec 3>/dev/console
fi
emit() {
    printf '%s\n' "$*" >&3
    [[ $1 == @@UBLKD-LOG-* ]] || say "$*"
}

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

kver=$(uname -r)
kseries=$(cut -d. -f1,2 <<<"$kver")

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
# A kernel report while booting fails the run (the host counts the boot as
# a failed result); the first case would otherwise never look at it.
dmesg >"$LOGS/boot$BOOT-dmesg.log" 2>&1
if grep -qE "$SPLAT_RE" "$LOGS/boot$BOOT-dmesg.log"; then
    say "runner: kernel report during boot $BOOT (before any case):"
    grep -E "$SPLAT_RE" "$LOGS/boot$BOOT-dmesg.log"
    boot_status=error
    boot_detail+=", kernel report: $(grep -m1 -E "$SPLAT_RE" "$LOGS/boot$BOOT-dmesg.log")"
fi
emit "@@UBLKD-BOOT $kver $(uptime_s) $boot_status $boot_detail"

mkfifo "$LOGS/.wake" 2>/dev/null
exec {wake_fd}<>"$LOGS/.wake"

# ---- the system's state, to tell what a case left behind --------------------

collect_mounts() {
    local _src mp fstype _rest
    MOUNTS=()
    while read -r _src mp fstype _rest; do
        [[ $fstype =~ $PSEUDO_FS_RE ]] && continue
        MOUNTS+=("$mp")
    done </proc/mounts
}
collect_modules() {
    local name _rest
    MODULES=()
    while read -r name _rest; do MODULES+=("$name"); done </proc/modules
}
collect_pids() {
    local d comm
    PIDS=()
    for d in /proc/[0-9]*; do
        read -r comm 2>/dev/null <"$d/comm" && [[ $comm == "$1" ]] && PIDS+=("${d#/proc/}")
    done
    return 0
}
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
# it): CGPROCS=("pid state comm").
MY_CGROUP=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
readonly MY_CGROUP
collect_cgroup_procs() {
    local pid stat comm rest state ex skip
    CGPROCS=()
    [[ -r $MY_CGROUP/cgroup.procs ]] || return 0
    while read -r pid; do
        ((pid == $$ || pid == BASHPID)) && continue
        skip=0
        for ex in "$@"; do [[ $pid == "$ex" ]] && skip=1; done
        ((skip)) && continue
        read -r stat 2>/dev/null <"/proc/$pid/stat" || continue
        comm=${stat#*(}
        comm=${comm%)*}
        rest=${stat##*) }
        state=${rest%% *}
        CGPROCS+=("$pid $state $comm")
    done <"$MY_CGROUP/cgroup.procs"
}
ublk_devices() {
    UBLK_DEVS=(/dev/ublkb* /dev/ublkc*)
}

# The baseline is taken on the first boot, before any case, and kept on disk:
# a unit a case enabled before a reboot is active on the next boot, and that
# is still the case's to undo.
declare -A baseline_mounts=() baseline_modules=() baseline_units=() baseline_files=() \
    baseline_devs=()
if [[ -f $STATE_DIR/baseline ]]; then
    # shellcheck disable=SC1091
    . "$STATE_DIR/baseline"
else
    collect_mounts
    for m in "${MOUNTS[@]}"; do baseline_mounts[$m]=1; done
    collect_modules
    for m in "${MODULES[@]}"; do baseline_modules[$m]=1; done
    collect_units
    for m in "${UNITS[@]}"; do baseline_units[$m]=1; done
    collect_files
    for m in "${FILES[@]}"; do baseline_files[$m]=1; done
    ublk_devices
    for m in "${UBLK_DEVS[@]}"; do baseline_devs[$m]=1; done
    # declare -p inside a function would make them local when sourced: -g.
    declare -p baseline_mounts baseline_modules baseline_units baseline_files baseline_devs |
        sed 's/^declare -A /declare -gA /' >"$STATE_DIR/baseline"
fi

# forward_log FILE: as in init.sh, FILE's lines to the results channel, each
# prefixed with '|', as they are written; a last pass when woken.
forward_log() {
    local file=$1 line buf pending='' sent=0 final=0 capped=0 rfd
    local LC_ALL=C
    exec {rfd}<"$file"
    while :; do
        buf=
        while IFS= read -r -u "$rfd" line; do
            ((capped)) && continue
            buf+="|$pending$line"$'\n'
            pending=
            if ((${#buf} > 65536)); then
                printf '%s' "$buf" >&3
                sent=$((sent + ${#buf}))
                buf=
                if ((sent > 8 * 1048576)); then
                    capped=1
                    printf '|[... output beyond 8 MiB not sent during the case ...]\n' >&3
                fi
            fi
        done
        [[ -n $buf ]] && printf '%s' "$buf" >&3
        sent=$((sent + ${#buf}))
        pending+=$line
        if ((final)); then
            if ((capped)); then
                printf '|[... end of the log:]\n' >&3
                tail -n 300 "$file" | sed 's/^/|/' >&3
            elif [[ -n $pending ]]; then
                printf '|%s\n' "$pending" >&3
            fi
            break
        fi
        read -r -t 0.3 -u "$wake_fd" _ && final=1
    done
    exec {rfd}<&-
}

case_timeout() {
    local line n=0
    CASE_TIMEOUT=$UBLKD_VM_DEFAULT_TIMEOUT
    while IFS= read -r line && ((n++ < 30)); do
        if [[ $line =~ $TIMEOUT_RE ]]; then
            CASE_TIMEOUT=${BASH_REMATCH[1]}
            break
        fi
    done <"$1"
}

# cleanup_after_case FORWARDER_PID: back to the baseline; LEFTOVERS=(what
# the case left behind).
cleanup_after_case() {
    local fwd=$1 pid m p state comm killed=0 i u
    LEFTOVERS=()
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
        kill -KILL "$pid" 2>/dev/null && killed=1
    done
    collect_cgroup_procs "$fwd"
    for p in "${CGPROCS[@]}"; do
        read -r pid state comm <<<"$p"
        [[ $comm == ublkd ]] && continue
        LEFTOVERS+=("process $pid ($comm) still running")
        kill -KILL "$pid" 2>/dev/null && killed=1
    done
    if ((killed)); then
        for ((i = 0; i < 50; i++)); do
            sleep 0.1
            collect_cgroup_procs "$fwd"
            ((${#CGPROCS[@]})) || break
        done
        for p in "${CGPROCS[@]}"; do
            read -r pid state comm <<<"$p"
            LEFTOVERS+=("process $pid ($comm) unkillable, state $state")
        done
    fi

    collect_mounts
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${MOUNTS[i]}
        [[ -n ${baseline_mounts[$m]:-} ]] && continue
        LEFTOVERS+=("mount $m")
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done

    ublk_devices
    local -a new_devs=()
    for m in "${UBLK_DEVS[@]}"; do
        [[ -n ${baseline_devs[$m]:-} ]] || new_devs+=("$m")
    done
    if ((${#new_devs[@]})); then
        LEFTOVERS+=("ublk devices ${new_devs[*]}")
        if ! rmmod ublk_drv 2>/dev/null; then
            sleep 1
            rmmod ublk_drv 2>/dev/null || LEFTOVERS+=("(could not unload ublk_drv to remove them)")
        fi
    fi

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

    # Modules the case loaded (ublk_drv too, unless the boot loaded it):
    # unloaded, not a failure.
    collect_modules
    for m in "${MODULES[@]}"; do
        [[ -n ${baseline_modules[$m]:-} ]] || rmmod "$m" 2>/dev/null
    done
    return 0
}

# splats_in FILE: SPLATS=(lines of FILE matching SPLAT_RE).
splats_in() {
    local line
    SPLATS=()
    [[ -f $1 ]] || return 0
    while IFS= read -r line; do
        [[ $line =~ $SPLAT_RE ]] && SPLATS+=("$line")
    done <"$1"
    return 0
}

# run_phase NAME INDEX: one phase ($PHASE) of a case. Emits its result
# unless the case asked for a reboot or a power cut (then NEXT_BOOT=reboot
# or powercut).
run_phase() {
    local name=$1 file=$TESTS/systemd-cases/$1.sh
    local log=$LOGS/$name.phase$PHASE.log dir=$STATE_DIR/cases/$name
    local timeout start end rc verdict reason fwd line why secs asked=
    local -a splats=() dmesg_lines=()
    NEXT_BOOT=

    case_timeout "$file"
    timeout=$CASE_TIMEOUT
    if ((PHASE == 1)); then
        rm -rf "$dir"
        mkdir -p "$dir"
        SECS=0
        emit "@@UBLKD-BEGIN $name $timeout"
    else
        emit "@@UBLKD-PHASE $name $PHASE"
        emit "@@UBLKD-BEGIN $name $timeout"
    fi
    rm -f "$dir/.reboot-requested" "$dir/.powercut-requested"
    emit "@@UBLKD-LOG-BEGIN $name"
    : >"$log"
    forward_log "$log" &
    fwd=$!

    if ((PHASE > 1)); then
        # The reboot belongs to the case: the kernel messages of the
        # previous boot after its last phase (the shutdown) and of this
        # boot count against it.
        {
            echo "==== phase $PHASE, boot $BOOT (after a reboot requested by phase $((PHASE - 1)))"
            journalctl -k -b -1 -o short-monotonic --no-pager 2>/dev/null |
                awk -v t="$PHASE_END" '{ s = $0; sub(/^\[ */, "", s); sub(/\].*/, "", s); if (s + 0 >= t) print }' \
                    >"$LOGS/$name.shutdown$PHASE.log"
        } >>"$log"
        splats_in "$LOGS/$name.shutdown$PHASE.log"
        splats+=("${SPLATS[@]}")
        splats_in "$LOGS/boot$BOOT-dmesg.log"
        splats+=("${SPLATS[@]}")
    fi

    echo "$HUNG_TASK_SECS" >/proc/sys/kernel/hung_task_timeout_secs 2>/dev/null
    dmesg -C
    start=$(uptime_cs)
    (
        cd "$dir" || exit 1
        export UBLKD_VM=1 UBLKD_VM_SYSTEMD=1 UBLKD_VM_KSERIES=$kseries UBLKD_CASE=$name \
            UBLKD_CASE_DIR=$dir UBLKD_PHASE=$PHASE UBLKD_BOOT=$BOOT \
            UBLKD_REBOOT_FILE=$dir/.reboot-requested UBLKD_POWERCUT_FILE=$dir/.powercut-requested
        UBLKD=$(command -v ublkd || echo /usr/local/sbin/ublkd)
        UBLKCTL=$(command -v ublkctl || echo /usr/local/sbin/ublkctl)
        export UBLKD UBLKCTL
        exec timeout -k 10 "$timeout" bash "$file"
    ) </dev/null >>"$log" 2>&1 &
    wait $!
    rc=$?
    end=$(uptime_cs)
    SECS=$((SECS + (end - start) / 10))
    secs=$((SECS / 10)).$((SECS % 10))

    dmesg >"$LOGS/$name.phase$PHASE.dmesg" 2>&1
    mapfile -t dmesg_lines <"$LOGS/$name.phase$PHASE.dmesg"
    for line in "${dmesg_lines[@]}"; do
        [[ $line =~ $SPLAT_RE ]] && splats+=("$line")
    done

    [[ -f $dir/.reboot-requested ]] && asked=reboot
    [[ -f $dir/.powercut-requested ]] && asked=powercut
    if ((rc == 0)) && [[ -n $asked ]] && ((${#splats[@]} == 0)); then
        if ((PHASE < UBLKD_VM_MAX_PHASES)); then
            # Leftovers are the point here: the clean reboot tears them down,
            # the power cut drops them.
            NEXT_BOOT=$asked
            {
                echo
                echo "---- $name phase $PHASE: exit status 0 after ${secs}s, $asked requested"
                echo "---- dmesg during the phase:"
                ((${#dmesg_lines[@]})) && printf '%s\n' "${dmesg_lines[@]}"
            } >>"$log"
            echo stop >&"$wake_fd"
            wait "$fwd"
            emit "@@UBLKD-LOG-END $name"
            return
        fi
        rc=1
        echo "FAIL: more than $UBLKD_VM_MAX_PHASES phases ($asked requested by phase $PHASE)" >>"$log"
    fi

    cleanup_after_case "$fwd"
    dmesg >"$LOGS/$name.cleanup.dmesg" 2>&1
    mapfile -t -O "${#dmesg_lines[@]}" dmesg_lines <"$LOGS/$name.cleanup.dmesg"
    splats_in "$LOGS/$name.cleanup.dmesg"
    splats+=("${SPLATS[@]}")

    case $rc in
        0) verdict=PASS reason= ;;
        77) verdict=SKIP reason=$(grep -m1 '^SKIP: ' "$log" | cut -c7- || true) ;;
        124)
            verdict=FAIL reason="timed out after ${timeout}s"
            ((PHASE > 1)) && reason+=" in phase $PHASE"
            ;;
        137)
            verdict=FAIL
            if (((end - start) / 100 >= timeout)); then
                reason="timed out after ${timeout}s (needed SIGKILL)"
            else
                reason="killed by SIGKILL"
            fi
            ;;
        *)
            verdict=FAIL
            reason="exit status $rc"
            ((PHASE > 1)) && reason+=" in phase $PHASE"
            why=$(grep -m1 '^FAIL: ' "$log" | cut -c7- || true)
            [[ -n $why ]] && reason+=": $why"
            ;;
    esac
    if ((${#LEFTOVERS[@]})) && [[ $verdict != FAIL ]]; then
        verdict=FAIL
        reason="left behind: ${LEFTOVERS[*]}"
    fi
    if ((${#splats[@]})); then
        verdict=FAIL
        line=${splats[0]}
        [[ $line =~ $DMESG_TS_RE ]] && line=${BASH_REMATCH[1]}
        reason="kernel splat in dmesg: $line"
    fi

    {
        echo
        echo "---- $name: exit status $rc after ${secs}s -> $verdict${reason:+ ($reason)}"
        if ((${#LEFTOVERS[@]})); then
            echo "---- left behind (cleaned up by the harness):"
            printf '%s\n' "${LEFTOVERS[@]}"
        fi
        if ((${#splats[@]})); then
            echo "---- kernel splat lines:"
            printf '%s\n' "${splats[@]}"
        fi
        echo "---- dmesg during the case:"
        ((${#dmesg_lines[@]})) && printf '%s\n' "${dmesg_lines[@]}"
    } >>"$log"

    echo stop >&"$wake_fd"
    wait "$fwd"
    emit "@@UBLKD-LOG-END $name"
    emit "@@UBLKD-RESULT $name $verdict $secs${reason:+ $reason}"
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
