# shellcheck shell=bash
# The guest side of the VM harness, for both flavours: init.sh (PID 1 of the
# initramfs VM) and systemd-runner.sh (the test service of the systemd VM).
# The results channel and its markers, the streaming of a case log, case
# headers, running a case file, the kernel-report (splat) and sanitizer
# checks, the verdict and the log trailer of a case, and the parts of the
# leftover check that are the same in both. See tests/vm/README.md.
#
# Before sourcing, the runner sets LOGS (a directory for its own files) and
# RUNNER (its name in messages). Only definitions here: the runner decides
# when anything happens. Process spawns are slow under TCG (tenths of a
# second each on a busy host), so the per-case bookkeeping uses bash
# builtins and fills global arrays instead of printing into $(...).

# shellcheck source=kernel-reports.sh
. "${BASH_SOURCE[0]%/*}/kernel-reports.sh"

shopt -s nullglob
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8

readonly TESTS=/ublkd-tests
# Seconds a task may stay blocked before the kernel reports it. Lower than
# the default 120 so a hang shows up in dmesg within a case's timeout.
readonly HUNG_TASK_SECS=60
# A dmesg line without its timestamp; a case's timeout header.
readonly DMESG_TS_RE='^\[[ 0-9.]*\] (.*)'
readonly TIMEOUT_RE='^# vm-timeout: *([0-9]+)'
# `# vm-known-splat: KSERIES REGEX` in a case's header: a kernel report the
# case expects on that kernel series (a known kernel bug its feature
# triggers there). The one report whose first line matches, up to its end
# marker, is logged as known instead of failing the case; another report,
# even one starting before that end, and the same report on another kernel
# still fail it.
readonly KNOWN_SPLAT_RE='^# vm-known-splat: *([0-9]+\.[0-9]+) +(.+)$'
# Sanitizer reports of the binaries under test (an ASan+UBSan or TSan build
# directory) go to files here, per case, instead of into daemon logs a case
# may never show; any file there fails the case. The options are set for
# every case: binaries built without a sanitizer ignore them.
readonly SANITIZER_LOGS=$LOGS/sanitizer
readonly SANITIZER_SHOWN_LINES=200
# UBSan next to ASan (GCC's two runtimes) ignores log_path and reports on
# stderr, so reports are also looked for where stderr goes: the case log and
# the logs in the case directory (the daemon's). A report's first line.
readonly SANITIZER_STDERR_RE=':[0-9]+:[0-9]+: runtime error: |ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer'
# Reviewed ThreadSanitizer suppressions (third-party false positives only).
TSAN_SUPPRESSIONS=
[[ -f $TESTS/tsan.supp ]] && TSAN_SUPPRESSIONS=$TESTS/tsan.supp

KVER=$(uname -r)
KSERIES=${KVER%"${KVER#*.*.}"}
KSERIES=${KSERIES%.}

# ---- the results channel ------------------------------------------------------

# say MSG: a line on the console, stamped with the guest uptime.
say() { local up _; read -r up _ </proc/uptime; printf '[%12s] %s\n' "$up" "$*"; }
uptime_s() { local up _; read -r up _ </proc/uptime; echo "$up"; }
# uptime_cs: uptime in hundredths of a second, for arithmetic.
uptime_cs() { local up _; read -r up _ </proc/uptime; echo $((10#${up/./})); }

# open_results_channel: fd 3 to the virtio serial port the host named
# "ublkd.results", where only this runner writes, so the host can parse it
# without kernel messages breaking lines apart (and fast: no trap per byte
# as on the emulated 8250). Without it, the console.
open_results_channel() {
    local p i name dev=
    # Under systemd, udev makes the port's node a moment after the boot.
    for ((i = 0; i < 100; i++)); do
        for p in /sys/class/virtio-ports/*; do
            read -r name 2>/dev/null <"$p/name" && [[ $name == ublkd.results ]] && dev=/dev/${p##*/}
        done
        [[ -n $dev && -c $dev ]] && break
        sleep 0.1
    done
    if [[ -n $dev && -c $dev ]]; then
        exec 3>"$dev"
    else
        say "$RUNNER: no results channel; results go to the console"
        exec 3>/dev/console
    fi
}

# emit LINE: a marker line to the host. It goes to the console as well,
# stamped with the guest uptime like kernel messages, so console.log reads on
# its own and shows where time goes; the host parses only the results
# channel.
emit() {
    printf '%s\n' "$*" >&3
    [[ $1 == @@UBLKD-LOG-* ]] || say "$*"
}

# open_wake_fifo: fd $wake_fd, through which a case's end wakes its log
# forwarder. Opened read-write so that neither side blocks in open().
open_wake_fifo() {
    [[ -p $LOGS/.wake ]] || mkfifo "$LOGS/.wake"
    exec {wake_fd}<>"$LOGS/.wake"
}

# forward_log FILE: copy FILE's lines to the results channel as they are
# written, each prefixed with '|', so the host has a case's output even when
# the VM dies during the case. Stops after a last pass when woken through
# the wake-up fifo. Builtins only: a poll loop that forks would take CPU
# from the case under TCG. Past 8 MiB only the end of the log is sent, at
# the last pass: the serial line is slow and the end is where failures
# show.
forward_log() {
    local file=$1 line buf pending='' sent=0 final=0 capped=0 rfd
    local LC_ALL=C # ${#line} counts bytes
    exec {rfd}<"$file"
    while :; do
        # Lines are batched: one write per 64 KiB instead of one per line.
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
        # read stops at the end of the file; a partial last line is kept
        # until its newline arrives.
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
        # Sleep up to 0.3 s, or until end_case_log says the case is over.
        read -r -t 0.3 -u "$wake_fd" _ && final=1
    done
    exec {rfd}<&-
}

# begin_case_log NAME LOG: LOG (emptied) is the case's log from here on,
# streamed to the host; FORWARDER= the pid streaming it.
begin_case_log() {
    emit "@@UBLKD-LOG-BEGIN $1"
    : >"$2"
    forward_log "$2" &
    FORWARDER=$!
}

# end_case_log NAME: the last lines of the log sent, its end marked.
end_case_log() {
    echo stop >&"$wake_fd"
    wait "$FORWARDER"
    emit "@@UBLKD-LOG-END $1"
}

# ---- a case ---------------------------------------------------------------------

# read_case_header FILE: from the first 30 lines of a case,
# CASE_TIMEOUT= its `# vm-timeout: N` (else the default of run.conf),
# KNOWN_SPLATS=(its `# vm-known-splat:` regexes for the running kernel's
# series), KNOWN_SPLAT_MALFORMED= a known-splat line without the series.
read_case_header() {
    local line n=0 timeout_seen=0
    CASE_TIMEOUT=$UBLKD_VM_DEFAULT_TIMEOUT
    KNOWN_SPLATS=() KNOWN_SPLAT_MALFORMED=
    while IFS= read -r line && ((n++ < 30)); do
        if ((!timeout_seen)) && [[ $line =~ $TIMEOUT_RE ]]; then
            CASE_TIMEOUT=${BASH_REMATCH[1]} timeout_seen=1
        elif [[ $line =~ $KNOWN_SPLAT_RE ]]; then
            [[ ${BASH_REMATCH[1]} == "$KSERIES" ]] && KNOWN_SPLATS+=("${BASH_REMATCH[2]}")
        elif [[ $line == '# vm-known-splat:'* ]]; then
            KNOWN_SPLAT_MALFORMED=$line
        fi
    done <"$1"
    return 0
}

# prepare_sanitizer_dir NAME: an empty SANITIZER_LOGS/NAME for the case's
# reports. World-writable: cases run tools as other users too (setpriv).
prepare_sanitizer_dir() {
    rm -rf "${SANITIZER_LOGS:?}/$1"
    mkdir -p "$SANITIZER_LOGS/$1"
    chmod 1777 "$SANITIZER_LOGS/$1"
}

# run_case_file NAME FILE DIR TIMEOUT LOG [VAR=VALUE...]: run the case in DIR
# with the harness's environment plus the given variables, its output
# appended to LOG, under `timeout`: its own process group, signalled as a
# whole; SIGKILL 10 s after the SIGTERM. Waits for it: CASE_PID= its pid
# (and process group), CASE_RC= its exit status, CASE_START, CASE_END= the
# guest uptime around it in hundredths of a second.
run_case_file() {
    local name=$1 file=$2 dir=$3 timeout=$4 log=$5 san=$SANITIZER_LOGS/$1 v
    shift 5
    echo "$HUNG_TASK_SECS" >/proc/sys/kernel/hung_task_timeout_secs 2>/dev/null
    dmesg -C
    CASE_START=$(uptime_cs)
    (
        cd "$dir" || exit 1
        export UBLKD_VM=1 UBLKD_VM_KSERIES=$KSERIES UBLKD_CASE=$name UBLKD_CASE_DIR=$dir
        for v in "$@"; do export "${v%%=*}=${v#*=}"; done
        # A memory error or undefined behaviour ends the process at once
        # (what follows it proves nothing); data races are all collected and
        # make the process exit 66 at its end. log_path appends .PID.
        export ASAN_OPTIONS="log_path=$san/asan:halt_on_error=1:detect_leaks=1"
        export UBSAN_OPTIONS="log_path=$san/ubsan:halt_on_error=1:print_stacktrace=1"
        export TSAN_OPTIONS="log_path=$san/tsan:halt_on_error=0:exitcode=66:second_deadlock_stack=1${TSAN_SUPPRESSIONS:+:suppressions=$TSAN_SUPPRESSIONS}"
        exec timeout -k 10 "$timeout" bash "$file"
    ) </dev/null >>"$log" 2>&1 &
    CASE_PID=$!
    wait "$CASE_PID"
    CASE_RC=$?
    CASE_END=$(uptime_cs)
}

# classify_splats LINE...: adds to SPLATS the kernel report lines among
# LINE... that the case did not declare known, to KNOWN those of its
# declared reports (KNOWN_SPLATS, read_case_header). A known report runs
# from its first line to its end marker; a new report's first line inside
# it ends it.
classify_splats() {
    local line re in_known=0
    for line in "$@"; do
        if ((in_known)) && [[ $line =~ $SPLAT_START_RE ]]; then
            in_known=0
        fi
        if ((in_known)); then
            [[ $line =~ $SPLAT_RE ]] && KNOWN+=("$line")
            [[ $line =~ $SPLAT_END_RE ]] && in_known=0
            continue
        fi
        [[ $line =~ $SPLAT_RE ]] || continue
        if [[ $line =~ $SPLAT_START_RE ]]; then
            for re in "${KNOWN_SPLATS[@]}"; do
                [[ $line =~ $re ]] && in_known=1
            done
        fi
        if ((in_known)); then
            KNOWN+=("$line")
        else
            SPLATS+=("$line")
        fi
    done
    return 0
}

# classify_splats_in FILE: classify_splats with FILE's lines.
classify_splats_in() {
    local -a lines=()
    [[ -f $1 ]] && mapfile -t lines <"$1"
    classify_splats "${lines[@]}"
}

# scan_sanitizer_reports NAME LOG DIR: SAN_REPORTS=(the case's report
# files), SAN_STDERR= the first report lines in LOG and DIR/*.log.
scan_sanitizer_reports() {
    SAN_REPORTS=("$SANITIZER_LOGS/$1"/*)
    SAN_STDERR=$(grep -H -m3 -E "$SANITIZER_STDERR_RE" "$2" "$3"/*.log 2>/dev/null | head -n 20)
}

# judge_case NAME LOG SUFFIX: VERDICT and REASON of a case from its exit
# (CASE_RC, CASE_START, CASE_END, CASE_TIMEOUT), a malformed header, what
# it left behind (LEFTOVERS), sanitizer reports (scan_sanitizer_reports)
# and kernel reports (SPLATS). SUFFIX (" in phase 2") goes after the reason
# of a failed exit.
judge_case() {
    local log=$2 suffix=$3 line why secs=$(((CASE_END - CASE_START) / 100))
    case $CASE_RC in
        0) VERDICT=PASS REASON= ;;
        77) VERDICT=SKIP REASON=$(grep -m1 '^SKIP: ' "$log" | cut -c7- || true) ;;
        124) VERDICT=FAIL REASON="timed out after ${CASE_TIMEOUT}s$suffix" ;;
        137)
            # timeout -k: the case ignored SIGTERM and was killed; or
            # something else (the OOM killer) killed it early.
            VERDICT=FAIL
            if ((secs >= CASE_TIMEOUT)); then
                REASON="timed out after ${CASE_TIMEOUT}s (needed SIGKILL)$suffix"
            else
                REASON="killed by SIGKILL$suffix"
            fi
            ;;
        *)
            VERDICT=FAIL
            REASON="exit status $CASE_RC$suffix"
            # The case's own explanation, from fail() in lib.sh.
            why=$(grep -m1 '^FAIL: ' "$log" | cut -c7- || true)
            [[ -n $why ]] && REASON+=": $why"
            ;;
    esac
    if [[ -n $KNOWN_SPLAT_MALFORMED ]]; then
        VERDICT=FAIL
        REASON="header needs '# vm-known-splat: KSERIES REGEX': $KNOWN_SPLAT_MALFORMED"
    fi
    if ((${#LEFTOVERS[@]})) && [[ $VERDICT != FAIL ]]; then
        VERDICT=FAIL
        REASON="left behind: ${LEFTOVERS[*]}"
    fi
    if ((${#SAN_REPORTS[@]})) || [[ -n $SAN_STDERR ]]; then
        VERDICT=FAIL
        line=
        ((${#SAN_REPORTS[@]})) && line=$(grep -h -m1 -E '^SUMMARY: ' "${SAN_REPORTS[@]}" | head -n 1)
        [[ -n $line ]] || line=${SAN_STDERR%%$'\n'*}
        REASON="sanitizer report: ${line:-see the case log}"
    fi
    if ((${#SPLATS[@]})); then
        VERDICT=FAIL
        line=${SPLATS[0]}
        [[ $line =~ $DMESG_TS_RE ]] && line=${BASH_REMATCH[1]}
        REASON="kernel splat in dmesg: $line"
    fi
    return 0
}

# case_trailer NAME SECS: what the harness adds to a case's log: the
# verdict and what led to it, then DMESG_LINES, the kernel messages during
# the case.
case_trailer() {
    local f
    echo
    echo "---- $1: exit status $CASE_RC after ${2}s -> $VERDICT${REASON:+ ($REASON)}"
    if ((${#LEFTOVERS[@]})); then
        echo "---- left behind (cleaned up by the harness):"
        printf '%s\n' "${LEFTOVERS[@]}"
    fi
    if ((${#SPLATS[@]})); then
        echo "---- kernel splat lines:"
        printf '%s\n' "${SPLATS[@]}"
    fi
    if [[ -n $SAN_STDERR ]]; then
        echo "---- sanitizer report lines in the case's output and logs:"
        printf '%s\n' "$SAN_STDERR"
    fi
    for f in "${SAN_REPORTS[@]}"; do
        echo "---- sanitizer report ${f#"$SANITIZER_LOGS"/} (first $SANITIZER_SHOWN_LINES lines):"
        head -n "$SANITIZER_SHOWN_LINES" "$f"
    done
    if ((${#KNOWN[@]})); then
        echo "---- known kernel report the case declares (# vm-known-splat), not a failure:"
        printf '%s\n' "${KNOWN[@]}"
    fi
    echo "---- dmesg during the case:"
    ((${#DMESG_LINES[@]})) && printf '%s\n' "${DMESG_LINES[@]}"
    return 0
}

# report_boot FILE: the boot marker, with boot_status (ok, error) and
# boot_detail. The kernel log of the boot goes to FILE first: a kernel
# report in it makes the boot an error (the host counts the boot as a
# failed result), which the first case's `dmesg -C` would otherwise wipe
# unseen.
report_boot() {
    dmesg >"$1" 2>&1
    if grep -qE "$SPLAT_RE" "$1"; then
        say "$RUNNER: kernel report during boot (before any case):"
        grep -E "$SPLAT_RE" "$1"
        boot_status=error
        boot_detail+="${boot_detail:+, }kernel report during boot: $(grep -m1 -E "$SPLAT_RE" "$1")"
    fi
    emit "@@UBLKD-BOOT $KVER $(uptime_s) $boot_status $boot_detail"
}

# ---- what a case left behind ----------------------------------------------------

# collect_mounts: MOUNTS=(mount points, in mount order), but those of the
# file systems IGNORED_FS_RE matches, if the runner sets it.
collect_mounts() {
    local _src mp fstype _rest
    MOUNTS=()
    while read -r _src mp fstype _rest; do
        [[ -n ${IGNORED_FS_RE:-} && $fstype =~ $IGNORED_FS_RE ]] && continue
        MOUNTS+=("$mp")
    done </proc/mounts
}
# collect_modules: MODULES=(loaded modules, newest first).
collect_modules() {
    local name _rest
    MODULES=()
    while read -r name _rest; do MODULES+=("$name"); done </proc/modules
}
# collect_pids NAME: PIDS=(processes whose command name is NAME).
collect_pids() {
    local d comm
    PIDS=()
    for d in /proc/[0-9]*; do
        read -r comm 2>/dev/null <"$d/comm" && [[ $comm == "$1" ]] && PIDS+=("${d#/proc/}")
    done
    return 0
}
# add_proc PID: PROCS+=("pid state pgrp comm"), unless PID is gone.
add_proc() {
    local stat comm state pgrp
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    comm=${stat#*(}
    comm=${comm%)*}
    read -r state _ pgrp _ <<<"${stat##*) }"
    PROCS+=("$1 $state $pgrp $comm")
}
# ublk_devices: UBLK_DEVS=(the ublk device nodes).
ublk_devices() { UBLK_DEVS=(/dev/ublkb* /dev/ublkc*); }

# take_baseline: what the system holds before any case (mounts, modules,
# ublk devices); anything beyond it afterwards was left behind by a case.
declare -A baseline_mounts=() baseline_modules=() baseline_devs=()
take_baseline() {
    local m
    collect_mounts
    for m in "${MOUNTS[@]}"; do baseline_mounts[$m]=1; done
    collect_modules
    for m in "${MODULES[@]}"; do baseline_modules[$m]=1; done
    ublk_devices
    for m in "${UBLK_DEVS[@]}"; do baseline_devs[$m]=1; done
}

# kill_stray_procs [PGID]: each process in PROCS but daemons (ublkd: the
# caller names those) and the members of process group PGID (the case's,
# killed as a whole without counting against it) was left behind: named in
# LEFTOVERS and killed. KILLED=1 when a signal went out.
kill_stray_procs() {
    local p pid _state pgrp comm
    for p in "${PROCS[@]}"; do
        read -r pid _state pgrp comm <<<"$p"
        [[ $comm == ublkd || $pgrp == "${1:-}" ]] && continue
        LEFTOVERS+=("process $pid ($comm) still running")
        kill -KILL "$pid" 2>/dev/null && KILLED=1
    done
    return 0
}

# await_killed COLLECT ARGS...: after a kill -KILL (KILLED=1), up to 5 s
# for the processes `COLLECT ARGS...` lists in PROCS to go, so that the
# kernel has torn down what they held. A process that stays in
# uninterruptible sleep (D) cannot be killed: it waits on I/O that never
# completes, which is worth knowing (LEFTOVERS).
await_killed() {
    local i p pid state _pgrp comm
    ((KILLED)) || return 0
    for ((i = 0; i < 50; i++)); do
        sleep 0.1
        "$@"
        ((${#PROCS[@]})) || break
    done
    for p in "${PROCS[@]}"; do
        read -r pid state _pgrp comm <<<"$p"
        LEFTOVERS+=("process $pid ($comm) unkillable, state $state")
    done
}

# remove_new_mounts: unmount what is not in the baseline, innermost (last
# mounted) first; LEFTOVERS names each.
remove_new_mounts() {
    local i m
    collect_mounts
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${MOUNTS[i]}
        [[ -n ${baseline_mounts[$m]:-} ]] && continue
        LEFTOVERS+=("mount $m")
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
}

# remove_new_devices: ublk devices outlive a killed server until DEL_DEV.
# Unloading the module deletes them, so the next case starts without.
remove_new_devices() {
    local m
    local -a new=()
    ublk_devices
    for m in "${UBLK_DEVS[@]}"; do
        [[ -n ${baseline_devs[$m]:-} ]] || new+=("$m")
    done
    ((${#new[@]})) || return 0
    LEFTOVERS+=("ublk devices ${new[*]}")
    if ! rmmod ublk_drv 2>/dev/null; then
        sleep 1
        rmmod ublk_drv 2>/dev/null || LEFTOVERS+=("(could not unload ublk_drv to remove them)")
    fi
    return 0
}

# unload_new_modules: modules a case loaded (brd, null_blk, ...), so that
# the next case gets them with its own parameters. Not a failure.
# /proc/modules lists the newest first, so users go before what they depend
# on.
unload_new_modules() {
    local m
    collect_modules
    for m in "${MODULES[@]}"; do
        [[ -n ${baseline_modules[$m]:-} ]] || rmmod "$m" 2>/dev/null
    done
    return 0
}
