#!/bin/bash
# /init of the VM test initramfs (see tests/vm/README.md).
#
# Runs as PID 1: sets up a minimal system, loads ublk_drv, runs the cases
# listed in /etc/ublkd-vm/run.conf one by one and powers the VM off.
#
# Two channels to the host: ttyS0 is the console (kernel messages and short
# progress lines for people); the virtio serial port "ublkd.results" (ttyS1
# when there is none) carries only what this script writes, so the host can
# parse it without kernel messages interleaved:
#   @@UBLKD-BOOT <kernel release> <guest uptime> <ok|error> [details]
#   @@UBLKD-BEGIN <case> <timeout seconds>
#   @@UBLKD-LOG-BEGIN <case>   then the case log as it is written, each line
#                              prefixed by '|', then the harness's trailer
#   @@UBLKD-LOG-END <case>
#   @@UBLKD-RESULT <case> <PASS|FAIL|SKIP> <seconds> [reason]
#   @@UBLKD-DONE
#
# No `set -e` here: PID 1 exiting panics the kernel, so every step handles
# its own failure.
set -uo pipefail
shopt -s nullglob

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8

readonly TESTS=/ublkd-tests
readonly LOGS=/tmp/vm-logs
# Seconds a task may stay blocked before the kernel reports it. Lower than
# the default 120 so a hang shows up in dmesg within a case's timeout.
readonly HUNG_TASK_SECS=60
# Kernel messages that make a case fail whatever its exit status. Only dmesg
# is checked, never the case's own output.
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
readonly SPLAT_END_RE='---\[ end trace|</TASK>'
# The first line of a kernel report (SPLAT_RE also matches lines inside one,
# such as "Call Trace:").
readonly SPLAT_START_RE='WARNING:|BUG:|Oops|possible circular locking|INFO: task .* blocked for more than|general protection fault|kernel BUG at|UBSAN:|KASAN:|Kernel panic'
# Sanitizer reports of the binaries under test (an ASan+UBSan or TSan build
# directory given to run.sh) go to files here, per case, instead of into
# daemon logs a case may never show; any file there fails the case. The
# options are set for every case: binaries built without a sanitizer
# ignore them.
readonly SANITIZER_LOGS=$LOGS/sanitizer
readonly SANITIZER_SHOWN_LINES=200
# UBSan next to ASan (GCC's two runtimes) ignores log_path and reports on
# stderr, so reports are also looked for where stderr goes: the case log and
# the logs in the case directory (the daemon's). A report's first line.
readonly SANITIZER_STDERR_RE=':[0-9]+:[0-9]+: runtime error: |ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer'
# Reviewed ThreadSanitizer suppressions (third-party false positives only).
TSAN_SUPPRESSIONS=
[[ -f $TESTS/tsan.supp ]] && TSAN_SUPPRESSIONS=$TESTS/tsan.supp
readonly SPLAT_RE='WARNING:|BUG:|Oops|lockdep|possible circular locking|INFO: task .* blocked for more than|general protection fault|Call Trace:|kernel BUG at|UBSAN:|KASAN:|Kernel panic'

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=000 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mount -t configfs configfs /sys/kernel/config 2>/dev/null || true
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
hostname ublkd-vm
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

exec </dev/console >/dev/console 2>&1

# Results channel: the virtio serial port the host named "ublkd.results"
# (fast: no trap per byte like the emulated 8250), else ttyS1, else the
# console.
results_dev=
for p in /sys/class/virtio-ports/*; do
    [[ $(cat "$p/name" 2>/dev/null) == ublkd.results ]] && results_dev=/dev/${p##*/}
done
if [[ -z $results_dev && -c /dev/ttyS1 ]]; then
    results_dev=/dev/ttyS1
    stty -F /dev/ttyS1 raw -echo 115200 2>/dev/null # no CR insertion, no echo
fi
if [[ -n $results_dev ]]; then
    exec 3>"$results_dev"
else
    echo "init: no results channel; results go to the console" >&2
    exec 3>&1
fi

# say MSG: a line on the console, stamped with the guest uptime.
say() { local up _; read -r up _ </proc/uptime; printf '[%12s] %s\n' "$up" "$*"; }
# emit LINE: a marker line to the host. It goes to the console as well,
# stamped with the guest uptime like kernel messages, so console.log reads on
# its own and shows where time goes; the host parses only the results
# channel, where kernel messages cannot break a line apart.
emit() {
    printf '%s\n' "$*" >&3
    [[ $1 == @@UBLKD-LOG-* ]] || say "$*"
}
uptime_s() { local up _; read -r up _ </proc/uptime; echo "$up"; }
# uptime_cs: uptime in hundredths of a second, for arithmetic.
uptime_cs() { local up _; read -r up _ </proc/uptime; echo $((10#${up/./})); }

# shellcheck disable=SC1091
. /etc/ublkd-vm/run.conf

mkdir -p "$LOGS"
kver=$(uname -r)
kseries=$(cut -d. -f1,2 <<<"$kver")
boot_status=ok
boot_detail=
if ! modprobe ublk_drv 2>"$LOGS/modprobe.err"; then
    boot_status=error
    boot_detail="modprobe ublk_drv failed: $(tr '\n' ' ' <"$LOGS/modprobe.err")"
fi
# udev is not running, so nothing else holds /dev/ublkcN after ADD_DEV.
# A kernel report while booting or loading ublk_drv fails the run (the
# host counts the boot as a failed result): the first case's `dmesg -C`
# would otherwise wipe it unseen.
dmesg >"$LOGS/boot-dmesg.log" 2>&1
if grep -qE "$SPLAT_RE" "$LOGS/boot-dmesg.log"; then
    say "init: kernel report during boot (before any case):"
    grep -E "$SPLAT_RE" "$LOGS/boot-dmesg.log"
    boot_status=error
    boot_detail+="kernel report during boot: $(grep -m1 -E "$SPLAT_RE" "$LOGS/boot-dmesg.log")"
fi
emit "@@UBLKD-BOOT $kver $(uptime_s) $boot_status $boot_detail"

# Wakes the log forwarder of a case once the case is over. Opened read-write
# so that neither side blocks in open().
mkfifo "$LOGS/.wake"
exec {wake_fd}<>"$LOGS/.wake"

# Process spawns are slow under TCG (tenths of a second each on a busy
# host), so the per-case bookkeeping uses bash builtins and fills global
# arrays instead of printing into $(...) subshells.

# collect_mounts: MOUNTS=(mount points, in mount order).
collect_mounts() {
    local _src mp _rest
    MOUNTS=()
    while read -r _src mp _rest; do MOUNTS+=("$mp"); done </proc/mounts
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

# collect_user_procs EXCLUDE...: PROCS=("pid state pgrp comm" of every
# user-space process but PID 1 and the excluded pids). Kernel threads have
# an empty cmdline.
collect_user_procs() {
    local d pid arg0 stat rest comm ex skip state pgrp
    PROCS=()
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        ((pid == 1)) && continue
        skip=0
        for ex in "$@"; do [[ $pid == "$ex" ]] && skip=1; done
        ((skip)) && continue
        arg0=
        read -r -d '' arg0 2>/dev/null <"$d/cmdline"
        [[ -n $arg0 ]] || continue
        read -r stat 2>/dev/null <"$d/stat" || continue
        comm=${stat#*(}
        comm=${comm%)*}
        rest=${stat##*) }
        read -r state _ pgrp _ <<<"$rest"
        PROCS+=("$pid $state $pgrp $comm")
    done
    return 0
}

# What the system looks like before any case; anything beyond it afterwards
# was left behind by the case.
declare -A baseline_mounts=() baseline_modules=()
collect_mounts
for m in "${MOUNTS[@]}"; do baseline_mounts[$m]=1; done
collect_modules
for m in "${MODULES[@]}"; do baseline_modules[$m]=1; done

# forward_log FILE: copy FILE's lines to the results channel as they are
# written, each prefixed with '|', so the host has a case's output even when
# the VM dies during the case. Stops after a last pass when woken through
# the wake-up fifo (fd $wake_fd). Builtins only: a poll loop that forks would
# take CPU from the case under TCG. Past 8 MiB only the end of the log is
# sent, at the last pass: the serial line is slow and the end is where
# failures show.
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
        # Sleep up to 0.3 s, or until run_case says the case is over.
        read -r -t 0.3 -u "$wake_fd" _ && final=1
    done
    exec {rfd}<&-
}

# case_timeout FILE: CASE_TIMEOUT= the `# vm-timeout: N` header of a case
# (first 30 lines), else the default.
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

# known_splats FILE: KNOWN_SPLATS=(the `# vm-known-splat:` regexes in the
# first 30 lines of a case that belong to the running kernel's series).
known_splats() {
    local line n=0
    KNOWN_SPLATS=() KNOWN_SPLAT_MALFORMED=
    while IFS= read -r line && ((n++ < 30)); do
        if [[ $line =~ $KNOWN_SPLAT_RE ]]; then
            [[ ${BASH_REMATCH[1]} == "$kseries" ]] && KNOWN_SPLATS+=("${BASH_REMATCH[2]}")
        elif [[ $line == '# vm-known-splat:'* ]]; then
            KNOWN_SPLAT_MALFORMED=$line
        fi
    done <"$1"
    return 0
}

# classify_splats LINE...: SPLATS=(report lines not declared known),
# KNOWN=(lines of the declared reports). A known report runs from its first
# line to its end marker; a new report's first line inside it ends it.
classify_splats() {
    local line re in_known=0
    SPLATS=() KNOWN=()
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

# cleanup_after_case PGID FORWARDER_PID: put the system back to the
# baseline. LEFTOVERS=(what was left behind), for the verdict.
cleanup_after_case() {
    local pgid=$1 fwd=$2 pid m killed=0 i p state pgrp comm
    local -a devs
    LEFTOVERS=()
    # Daemons still running: named before they are killed with the group.
    collect_pids ublkd
    for pid in "${PIDS[@]}"; do
        LEFTOVERS+=("ublkd pid $pid still running")
    done
    # Anything else the case started outside its process group (what is
    # still in the group is killed without counting against the case).
    collect_user_procs "$fwd" "${PIDS[@]}"
    kill -KILL -- "-$pgid" 2>/dev/null && killed=1
    ((${#PIDS[@]})) && kill -KILL "${PIDS[@]}" 2>/dev/null && killed=1
    for p in "${PROCS[@]}"; do
        read -r pid state pgrp comm <<<"$p"
        ((pgrp == pgid)) && continue
        LEFTOVERS+=("process $pid ($comm) still running")
        kill -KILL "$pid" 2>/dev/null && killed=1
    done
    # Let the kernel finish tearing down what the killed processes held. A
    # process that stays in uninterruptible sleep (D) cannot be killed: it
    # waits on I/O that never completes, which is worth knowing.
    if ((killed)); then
        for ((i = 0; i < 50; i++)); do
            sleep 0.1
            collect_user_procs "$fwd"
            ((${#PROCS[@]})) || break
        done
        for p in "${PROCS[@]}"; do
            read -r pid state pgrp comm <<<"$p"
            LEFTOVERS+=("process $pid ($comm) unkillable, state $state")
        done
    fi

    # Mounts made by the case, innermost (last mounted) first.
    collect_mounts
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${MOUNTS[i]}
        [[ -n ${baseline_mounts[$m]:-} ]] && continue
        LEFTOVERS+=("mount $m")
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done

    # ublk devices outlive a killed server until DEL_DEV. Unloading the
    # module deletes them, so the next case starts with none.
    devs=(/dev/ublkb* /dev/ublkc*)
    if ((${#devs[@]})); then
        LEFTOVERS+=("ublk devices ${devs[*]}")
        if ! rmmod ublk_drv 2>/dev/null; then
            sleep 1
            rmmod ublk_drv 2>/dev/null || LEFTOVERS+=("(could not unload ublk_drv to remove them)")
        fi
    fi
    [[ -d /sys/module/ublk_drv ]] || modprobe ublk_drv || LEFTOVERS+=("(could not reload ublk_drv)")

    # Modules the case loaded (brd, null_blk, ...): unloaded so the next
    # case gets them with its own parameters. Not a failure. /proc/modules
    # lists the newest first, so users go before what they depend on.
    collect_modules
    for m in "${MODULES[@]}"; do
        [[ -n ${baseline_modules[$m]:-} ]] || rmmod "$m" 2>/dev/null
    done
    return 0
}

run_case() {
    local name=$1 file=$TESTS/cases/$1.sh
    local log=$LOGS/$name.log dir=/tmp/cases/$name
    local timeout start end secs rc verdict reason pid fwd line why
    local -a splats known dmesg_lines

    case_timeout "$file"
    timeout=$CASE_TIMEOUT
    [[ -e $dir ]] && rm -rf "$dir"
    mkdir -p "$dir"
    emit "@@UBLKD-BEGIN $name $timeout"
    emit "@@UBLKD-LOG-BEGIN $name"
    : >"$log"
    forward_log "$log" &
    fwd=$!

    # World-writable: cases run tools as other users too (setpriv).
    local san_dir=$SANITIZER_LOGS/$name
    local -a san_reports
    local san_stderr
    rm -rf "$san_dir"
    mkdir -p "$san_dir"
    chmod 1777 "$san_dir"

    echo "$HUNG_TASK_SECS" >/proc/sys/kernel/hung_task_timeout_secs 2>/dev/null
    dmesg -C
    start=$(uptime_cs)
    # timeout puts the case in its own process group and signals the whole
    # group; -k: SIGKILL if SIGTERM was not enough.
    (
        cd "$dir" || exit 1
        export UBLKD_VM=1 UBLKD_VM_KSERIES=$kseries UBLKD_CASE=$name UBLKD_CASE_DIR=$dir
        export UBLKD=/usr/local/bin/ublkd UBLKCTL=/usr/local/bin/ublkctl
        # A memory error or undefined behaviour ends the process at once
        # (what follows it proves nothing); data races are all collected and
        # make the process exit 66 at its end. log_path appends .PID.
        export ASAN_OPTIONS="log_path=$san_dir/asan:halt_on_error=1:detect_leaks=1"
        export UBSAN_OPTIONS="log_path=$san_dir/ubsan:halt_on_error=1:print_stacktrace=1"
        export TSAN_OPTIONS="log_path=$san_dir/tsan:halt_on_error=0:exitcode=66:second_deadlock_stack=1${TSAN_SUPPRESSIONS:+:suppressions=$TSAN_SUPPRESSIONS}"
        exec timeout -k 10 "$timeout" bash "$file"
    ) </dev/null >>"$log" 2>&1 &
    pid=$!
    wait "$pid"
    rc=$?
    end=$(uptime_cs)
    secs=$(((end - start) / 100)).$(((end - start) / 10 % 10))

    # Cleanup first: tearing down what the case left can itself make the
    # kernel complain, and that belongs to this case.
    cleanup_after_case "$pid" "$fwd"
    dmesg >"$LOGS/$name.dmesg" 2>&1
    mapfile -t dmesg_lines <"$LOGS/$name.dmesg"
    known_splats "$file"
    classify_splats "${dmesg_lines[@]}"
    splats=("${SPLATS[@]}") known=("${KNOWN[@]}")

    case $rc in
        0) verdict=PASS reason= ;;
        77) verdict=SKIP reason=$(grep -m1 '^SKIP: ' "$log" | cut -c7- || true) ;;
        124) verdict=FAIL reason="timed out after ${timeout}s" ;;
        137)
            # timeout -k: the case ignored SIGTERM and was killed; or
            # something else (the OOM killer) killed it early.
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
            # The case's own explanation, from fail() in lib.sh.
            why=$(grep -m1 '^FAIL: ' "$log" | cut -c7- || true)
            [[ -n $why ]] && reason+=": $why"
            ;;
    esac
    if [[ -n $KNOWN_SPLAT_MALFORMED ]]; then
        verdict=FAIL
        reason="header needs '# vm-known-splat: KSERIES REGEX': $KNOWN_SPLAT_MALFORMED"
    fi
    if ((${#LEFTOVERS[@]})) && [[ $verdict != FAIL ]]; then
        verdict=FAIL
        reason="left behind: ${LEFTOVERS[*]}"
    fi
    san_reports=("$san_dir"/*)
    san_stderr=$(grep -H -m3 -E "$SANITIZER_STDERR_RE" "$log" "$dir"/*.log 2>/dev/null | head -n 20)
    if ((${#san_reports[@]})) || [[ -n $san_stderr ]]; then
        verdict=FAIL
        line=
        ((${#san_reports[@]})) && line=$(grep -h -m1 -E '^SUMMARY: ' "${san_reports[@]}" | head -n 1)
        [[ -n $line ]] || line=${san_stderr%%$'\n'*}
        reason="sanitizer report: ${line:-see the case log}"
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
        if [[ -n $san_stderr ]]; then
            echo "---- sanitizer report lines in the case's output and logs:"
            printf '%s\n' "$san_stderr"
        fi
        for f in "${san_reports[@]}"; do
            echo "---- sanitizer report ${f#"$SANITIZER_LOGS"/} (first $SANITIZER_SHOWN_LINES lines):"
            head -n "$SANITIZER_SHOWN_LINES" "$f"
        done
        if ((${#known[@]})); then
            echo "---- known kernel report the case declares (# vm-known-splat), not a failure:"
            printf '%s\n' "${known[@]}"
        fi
        echo "---- dmesg during the case:"
        ((${#dmesg_lines[@]})) && printf '%s\n' "${dmesg_lines[@]}"
    } >>"$log"

    echo stop >&"$wake_fd"
    wait "$fwd"
    emit "@@UBLKD-LOG-END $name"
    emit "@@UBLKD-RESULT $name $verdict $secs${reason:+ $reason}"
}

for c in "${UBLKD_VM_CASES[@]}"; do
    if [[ -f $TESTS/cases/$c.sh ]]; then
        run_case "$c"
    else
        emit "@@UBLKD-RESULT $c FAIL 0 case file missing in the initramfs"
    fi
done
emit "@@UBLKD-DONE"
sync
poweroff -f
# poweroff -f does not return; if it did, PID 1 must not exit.
while :; do sleep 3600; done
