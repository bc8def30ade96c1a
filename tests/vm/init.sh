#!/bin/bash
# /init of the VM test initramfs (see tests/vm/README.md).
#
# Runs as PID 1: sets up a minimal system, loads ublk_drv, runs the cases
# listed in /etc/ublkd-vm/run.conf one by one and powers the VM off.
#
# Two channels to the host: ttyS0 is the console (kernel messages and short
# progress lines for people); the virtio serial port "ublkd.results"
# carries only what this script writes, so the host can parse it without
# kernel messages interleaved:
#   @@UBLKD-BOOT <kernel release> <guest uptime> <ok|error> [details]
#   @@UBLKD-BEGIN <case> <timeout seconds>
#   @@UBLKD-LOG-BEGIN <case>   then the case log as it is written, each line
#                              prefixed by '|', then the harness's trailer
#   @@UBLKD-LOG-END <case>
#   @@UBLKD-RESULT <case> <PASS|FAIL|SKIP> <seconds> [reason]
#   @@UBLKD-DONE
# What both flavours share is in guest-lib.sh.
#
# No `set -e` here: PID 1 exiting panics the kernel, so every step handles
# its own failure.
set -uo pipefail

readonly LOGS=/tmp/vm-logs
readonly RUNNER=init
# shellcheck source=guest-lib.sh
if ! . /ublkd-tests/guest-lib.sh; then
    echo "init: /ublkd-tests/guest-lib.sh missing from the initramfs" >/dev/console
    poweroff -f
fi

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
open_results_channel

# shellcheck disable=SC1091
. /etc/ublkd-vm/run.conf

mkdir -p "$LOGS"
boot_status=ok
boot_detail=
if ! modprobe ublk_drv 2>"$LOGS/modprobe.err"; then
    boot_status=error
    boot_detail="modprobe ublk_drv failed: $(tr '\n' ' ' <"$LOGS/modprobe.err")"
    boot_detail=${boot_detail% }
fi
# udev is not running, so nothing else holds /dev/ublkcN after ADD_DEV.
# A kernel report while loading ublk_drv counts as one during the boot.
report_boot "$LOGS/boot-dmesg.log"

open_wake_fifo
take_baseline

# collect_user_procs EXCLUDE...: PROCS=("pid state pgrp comm" of every
# user-space process but PID 1 and the excluded pids). Kernel threads have
# an empty cmdline.
collect_user_procs() {
    local d pid arg0 ex
    PROCS=()
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        ((pid == 1)) && continue
        for ex in "$@"; do [[ $pid == "$ex" ]] && continue 2; done
        arg0=
        read -r -d '' arg0 2>/dev/null <"$d/cmdline"
        [[ -n $arg0 ]] || continue
        add_proc "$pid"
    done
    return 0
}

# cleanup_after_case PGID: put the system back to the baseline.
# LEFTOVERS=(what was left behind), for the verdict.
cleanup_after_case() {
    local pgid=$1 pid
    LEFTOVERS=() KILLED=0
    # Daemons still running: named before they are killed with the group.
    collect_pids ublkd
    for pid in "${PIDS[@]}"; do
        LEFTOVERS+=("ublkd pid $pid still running")
    done
    # Anything else the case started outside its process group (what is
    # still in the group is killed without counting against the case).
    collect_user_procs "$FORWARDER" "${PIDS[@]}"
    kill -KILL -- "-$pgid" 2>/dev/null && KILLED=1
    ((${#PIDS[@]})) && kill -KILL "${PIDS[@]}" 2>/dev/null && KILLED=1
    kill_stray_procs "$pgid"
    await_killed collect_user_procs "$FORWARDER"
    remove_new_mounts
    remove_new_devices
    [[ -d /sys/module/ublk_drv ]] || modprobe ublk_drv || LEFTOVERS+=("(could not reload ublk_drv)")
    unload_new_modules
}

# mounted_below DIR: whether DIR or anything below it is a mount point.
mounted_below() {
    awk -v d="$1" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/mounts
}

run_case() {
    local name=$1 file=$TESTS/cases/$1.sh
    local log=$LOGS/$name.log dir=/tmp/cases/$name secs

    read_case_header "$file"
    [[ -e $dir ]] && rm -rf "$dir"
    mkdir -p "$dir"
    emit "@@UBLKD-BEGIN $name $CASE_TIMEOUT"
    begin_case_log "$name" "$log"
    prepare_sanitizer_dir "$name"
    run_case_file "$name" "$file" "$dir" "$CASE_TIMEOUT" "$log" \
        UBLKD=/usr/local/bin/ublkd UBLKCTL=/usr/local/bin/ublkctl
    secs=$(((CASE_END - CASE_START) / 100)).$(((CASE_END - CASE_START) / 10 % 10))

    # Cleanup first: tearing down what the case left can itself make the
    # kernel complain, and that belongs to this case.
    cleanup_after_case "$CASE_PID"
    dmesg >"$LOGS/$name.dmesg" 2>&1
    mapfile -t DMESG_LINES <"$LOGS/$name.dmesg"
    SPLATS=() KNOWN=()
    classify_splats "${DMESG_LINES[@]}"
    scan_sanitizer_reports "$name" "$log" "$dir"
    judge_case "$name" "$log" ""
    case_trailer "$name" "$secs" >>"$log"
    # /tmp is memory: what a passed case wrote there (backing files, mem
    # devices' memory) would otherwise be held until the VM ends and crowd
    # out the cases after it. A failed case's files stay for the look, and
    # so does anything still mounted below the directory (busybox's rm has
    # no --one-file-system).
    if [[ $VERDICT == PASS ]] && ! mounted_below "$dir"; then
        rm -rf "$dir"
    fi

    end_case_log "$name"
    emit "@@UBLKD-RESULT $name $VERDICT $secs${REASON:+ $REASON}"
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
