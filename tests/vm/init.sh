#!/bin/bash
# /init of the VM test initramfs (see tests/vm/README.md).
#
# Runs as PID 1: sets up a minimal system, loads ublk_drv, runs the cases
# listed in /etc/ublkd-vm/run.conf one by one and powers the VM off.
#
# Two serial lines: ttyS0 is the console (kernel messages and short progress
# lines for people); ttyS1 carries only what this script writes, so the host
# can parse it without kernel messages interleaved:
#   @@UBLKD-BOOT <kernel release> <ok|error> [details]
#   @@UBLKD-BEGIN <case> <timeout seconds>
#   @@UBLKD-LOG-BEGIN <case>   then the case log, each line prefixed by '|'
#   @@UBLKD-LOG-END <case>
#   @@UBLKD-RESULT <case> <PASS|FAIL|SKIP> <seconds> [reason]
#   @@UBLKD-DONE
#
# No `set -e` here: PID 1 exiting panics the kernel, so every step handles
# its own failure.
set -uo pipefail

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8

readonly TESTS=/ublkd-tests
readonly LOGS=/tmp/vm-logs
# Seconds a task may stay blocked before the kernel reports it. Lower than
# the default 120 so a hang shows up in dmesg within a case's timeout.
readonly HUNG_TASK_SECS=60
# Kernel messages that make a case fail whatever its exit status. Only dmesg
# is checked, never the case's own output.
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

# Results channel. Raw mode: no CR insertion, no echo.
if [[ -c /dev/ttyS1 ]]; then
    stty -F /dev/ttyS1 raw -echo 115200 2>/dev/null
    exec 3>/dev/ttyS1
else
    echo "init: no /dev/ttyS1; results go to the console" >&2
    exec 3>&1
fi

emit() { printf '%s\n' "$*" >&3; }
uptime_s() { local up _; read -r up _ </proc/uptime; echo "$up"; }

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
echo "init: kernel $kver, ublk_drv: $boot_status $boot_detail"
emit "@@UBLKD-BOOT $kver $boot_status $boot_detail"
dmesg >"$LOGS/boot-dmesg.log" 2>&1

# What the system looks like before any case; anything beyond it afterwards
# was left behind by the case.
baseline_mounts=$(awk '{print $2}' /proc/mounts | sort)
baseline_modules=$(awk '{print $1}' /proc/modules | sort)

# send_log CASE FILE: the case log over the results channel; very long logs
# are cut to their end, which is where failures are.
send_log() {
    local name=$1 file=$2 max=5000 lines
    lines=$(wc -l <"$file")
    emit "@@UBLKD-LOG-BEGIN $name"
    {
        if ((lines > max)); then
            echo "[log cut: first $((lines - max)) of $lines lines not transferred]"
            tail -n "$max" "$file"
        else
            cat "$file"
        fi
    } | sed 's/^/|/' >&3
    emit "@@UBLKD-LOG-END $name"
}

# case_timeout FILE: the `# vm-timeout: N` header of a case, else the default.
case_timeout() {
    local t
    t=$(head -n 30 "$1" | sed -n 's/^# vm-timeout: *\([0-9][0-9]*\).*/\1/p' | head -n 1)
    echo "${t:-$UBLKD_VM_DEFAULT_TIMEOUT}"
}

# cleanup_after_case: put the system back to the baseline. Prints what was
# left behind (one item per line) for the verdict.
cleanup_after_case() {
    local pgid=$1 pid m
    # Daemons still running: named before they are killed with the group.
    for pid in $(pidof ublkd 2>/dev/null); do
        echo "ublkd pid $pid still running"
    done
    kill -KILL -- "-$pgid" 2>/dev/null
    for pid in $(pidof ublkd 2>/dev/null); do
        kill -KILL "$pid" 2>/dev/null
    done
    sleep 0.2

    # Mounts made by the case, innermost first.
    for m in $(comm -13 <(echo "$baseline_mounts") <(awk '{print $2}' /proc/mounts | sort) | sort -r); do
        echo "mount $m left"
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done

    # ublk devices outlive a killed server until DEL_DEV. Unloading the
    # module deletes them, so the next case starts with none.
    local devs
    devs=$(ls -d /dev/ublkb* /dev/ublkc* 2>/dev/null | tr '\n' ' ')
    if [[ -n $devs ]]; then
        echo "ublk devices left: $devs"
        if ! rmmod ublk_drv 2>/dev/null; then
            sleep 1
            rmmod ublk_drv 2>/dev/null || echo "could not unload ublk_drv to remove them"
        fi
    fi
    [[ -d /sys/module/ublk_drv ]] || modprobe ublk_drv || echo "could not reload ublk_drv"

    # Modules the case loaded (brd, null_blk, ...): unloaded so the next
    # case gets them with its own parameters. Not a failure.
    for m in $(comm -13 <(echo "$baseline_modules") <(awk '{print $1}' /proc/modules | sort)); do
        rmmod "$m" 2>/dev/null
    done
    for m in $(comm -13 <(echo "$baseline_modules") <(awk '{print $1}' /proc/modules | sort)); do
        rmmod "$m" 2>/dev/null
    done
    return 0
}

run_case() {
    local name=$1 file=$TESTS/cases/$1.sh
    local log=$LOGS/$name.log dir=/tmp/cases/$name
    local timeout start end secs rc verdict reason leftovers splats pid

    timeout=$(case_timeout "$file")
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "=== $name (timeout ${timeout}s)"
    emit "@@UBLKD-BEGIN $name $timeout"

    echo "$HUNG_TASK_SECS" >/proc/sys/kernel/hung_task_timeout_secs 2>/dev/null
    dmesg -C
    start=$(uptime_s)
    # timeout puts the case in its own process group and signals the whole
    # group; -k: SIGKILL if SIGTERM was not enough.
    (
        cd "$dir" || exit 1
        export UBLKD_VM=1 UBLKD_VM_KSERIES=$kseries UBLKD_CASE=$name UBLKD_CASE_DIR=$dir
        export UBLKD=/usr/local/bin/ublkd UBLKCTL=/usr/local/bin/ublkctl
        exec timeout -k 10 "$timeout" bash "$file"
    ) </dev/null >"$log" 2>&1 &
    pid=$!
    wait "$pid"
    rc=$?
    end=$(uptime_s)
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')

    leftovers=$(cleanup_after_case "$pid")
    dmesg >"$LOGS/$name.dmesg" 2>&1
    splats=$(grep -E "$SPLAT_RE" "$LOGS/$name.dmesg" | head -n 5)

    case $rc in
        0) verdict=PASS reason= ;;
        77) verdict=SKIP reason=$(grep -m1 '^SKIP: ' "$log" | cut -c7- || true) ;;
        124 | 137) verdict=FAIL reason="timed out after ${timeout}s" ;;
        *)
            verdict=FAIL
            reason="exit status $rc"
            # The case's own explanation, from fail() in lib.sh.
            local why
            why=$(grep -m1 '^FAIL: ' "$log" | cut -c7- || true)
            [[ -n $why ]] && reason+=": $why"
            ;;
    esac
    if [[ -n $leftovers && $verdict != FAIL ]]; then
        verdict=FAIL
        reason="left behind: $(echo "$leftovers" | paste -sd ';' -)"
    fi
    if [[ -n $splats ]]; then
        verdict=FAIL
        reason="kernel splat in dmesg: $(echo "$splats" | head -n 1 | sed 's/^\[[ 0-9.]*\] //')"
    fi

    {
        echo
        echo "---- $name: exit status $rc after ${secs}s -> $verdict${reason:+ ($reason)}"
        [[ -n $leftovers ]] && echo "---- left behind (cleaned up by the harness):" && echo "$leftovers"
        [[ -n $splats ]] && echo "---- kernel splat lines:" && echo "$splats"
        echo "---- dmesg during the case:"
        cat "$LOGS/$name.dmesg"
    } >>"$log"

    send_log "$name" "$log"
    emit "@@UBLKD-RESULT $name $verdict $secs${reason:+ $reason}"
    echo "=== $name: $verdict ${secs}s${reason:+ ($reason)}"
}

send_log _boot "$LOGS/boot-dmesg.log"
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
