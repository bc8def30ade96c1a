# shellcheck shell=bash
# Helper library for VM test cases (tests/vm/cases/*.sh). A case starts with
#
#   #!/bin/bash
#   . "${BASH_SOURCE%/*}/../lib.sh"
#
# and then runs as root inside the test VM with `set -euo pipefail` in force.
# Exit status: 0 pass, 1 fail, 77 skip (use fail/skip). Messages go to
# stderr, so functions whose stdout is captured ($(wait_live ...)) still log.
#
# On exit, any ublkd the case started and did not stop is killed (which
# turns a passing case into a failing one, since stopping the daemon cleanly
# is part of every test), then registered cleanups run, last first.
#
# Do not call start_ublkd/stop_ublkd inside $(...) or a pipeline: they keep
# their state in shell variables of the case.

set -euo pipefail

UBLKD=${UBLKD:-/usr/local/bin/ublkd}
UBLKCTL=${UBLKCTL:-/usr/local/bin/ublkctl}
CASE_NAME=${UBLKD_CASE:-$(basename "$0" .sh)}
if [[ -z ${UBLKD_CASE_DIR:-} ]]; then
    UBLKD_CASE_DIR=$(mktemp -d "/tmp/$CASE_NAME.XXXXXX")
fi
CASE_DIR=$UBLKD_CASE_DIR

UBLKD_PID=       # the daemon started last
UBLKD_LOG=       # its log file (stdout and stderr)
_UBLKD_PIDS=()   # every daemon started by this case
_UBLKD_LOGS=()
_CLEANUPS=()
_T0=${EPOCHREALTIME/./}

# ---- messages -------------------------------------------------------------

# log MSG...: timestamped (seconds since the case started) to stderr. No
# $(...) inside: forks are slow under TCG.
log() {
    local us=$((${EPOCHREALTIME/./} - _T0)) t
    printf -v t '%d.%d' $((us / 1000000)) $((us / 100000 % 10))
    printf '[%6ss] %s\n' "$t" "$*" >&2
}

# fail MSG...: end the case as failed. The "FAIL: " line is what the harness
# reports as the reason.
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}

# skip MSG...: end the case as skipped (exit 77), e.g. the kernel lacks a
# feature.
skip() {
    printf 'SKIP: %s\n' "$*" >&2
    exit 77
}

# add_cleanup CMD...: run CMD (through eval) when the case exits, before the
# daemons are stopped; cleanups run in reverse order of registration.
add_cleanup() { _CLEANUPS+=("$*"); }

# ---- environment ----------------------------------------------------------

# require_cmd CMD...: skip unless every command exists.
require_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || skip "command '$c' not available"
    done
}

# load_module NAME [PARAM=VALUE...]: modprobe a module or skip the case. The
# harness unloads modules a case loaded once the case ends.
load_module() {
    modprobe "$@" || skip "cannot load kernel module $1"
}

# kernel_at_least MAJOR.MINOR: true when the running kernel is that or newer.
kernel_at_least() {
    local want_major=${1%%.*} want_minor=${1#*.} rel major minor
    rel=$(uname -r)
    major=${rel%%.*}
    minor=${rel#*.}
    minor=${minor%%[!0-9]*}
    ((major > want_major || (major == want_major && minor >= want_minor)))
}

# dev_size DEV: size of a block device in bytes.
dev_size() { blockdev --getsize64 "$1"; }

# kernel_offers FEATURE: whether ublk_drv offers UBLK_F_FEATURE (by the name
# `ublkctl features` gives it, e.g. UPDATE_SIZE); needs a running ublkd.
kernel_offers() {
    [[ $(json_get "$(ctl_ok --json features)" "[.known[].name] | index(\"$1\") != null") == true ]]
}

# offered FLAG: true or false, whether the kernel offers FLAG (as
# kernel_offers), logged.
offered() {
    local o=false
    kernel_offers "$1" && o=true
    log "kernel offers $1: $o"
    echo "$o"
}

# fio_passed PID OUT WHAT: wait for the fio run PID, whose output is in OUT;
# fail, naming WHAT, if it exited non-zero or reported an error; then log
# its summary lines.
fio_passed() {
    local rc=0
    wait "$1" || rc=$?
    if ((rc != 0)) || grep -qE 'err= *[1-9]|verify|error' "$2"; then
        cat "$2" >&2
        fail "fio saw an error $3 (status $rc)"
    fi
    grep -E '^ *(write|read):|err=' "$2" >&2
}

# ---- daemon ---------------------------------------------------------------

# log_ms LINE: milliseconds since midnight of a daemon log line's timestamp
# ("YYYY-MM-DD HH:MM:SS.mmm level message").
log_ms() {
    local h m s ms
    IFS=:. read -r h m s ms <<<"${1:11:12}"
    echo $(((10#$h * 3600 + 10#$m * 60 + 10#$s) * 1000 + 10#$ms))
}
# span_ms FIRST_LINE LAST_LINE: milliseconds between two log lines.
span_ms() {
    local d=$(($(log_ms "$2") - $(log_ms "$1")))
    ((d < 0)) && d=$((d + 86400000))
    echo "$d"
}

# ext4_on_ram_disk MNT MIB: a brd RAM disk /dev/ram0 of MIB MiB with ext4,
# mounted on MNT; unmounted and unloaded again when the case ends.
ext4_on_ram_disk() {
    local mnt=$1 mib=$2
    modprobe brd rd_nr=1 rd_size=$((mib * 1024)) || fail "cannot load brd"
    add_cleanup "rmmod brd"
    mkdir -p "$mnt"
    mkfs.ext4 -q -F /dev/ram0
    mount -t ext4 /dev/ram0 "$mnt"
    add_cleanup "umount $mnt 2>/dev/null || true"
}

# ---- admin socket -----------------------------------------------------------

# start_ublkd_api CONFIG_DIR [ARGS...]: start_ublkd with the admin socket at
# $CASE_DIR/ublkd.sock (exported as UBLKD_SOCKET for ublkctl), and wait until
# it accepts requests.
start_ublkd_api() {
    local dir=$1
    shift
    export UBLKD_SOCKET=$CASE_DIR/ublkd.sock
    start_ublkd "$dir" --socket "$UBLKD_SOCKET" --state-dir "$CASE_DIR/state" "$@"
    wait_for_log "admin socket $UBLKD_SOCKET" 20 >/dev/null
}

# ctl ARGS...: ublkctl ARGS; its stdout is printed, stderr goes to the case
# log and to $CASE_DIR/ctl.err; the exit status is ublkctl's.
ctl() {
    local rc=0
    "$UBLKCTL" "$@" 2>"$CASE_DIR/ctl.err" || rc=$?
    cat "$CASE_DIR/ctl.err" >&2
    return "$rc"
}

# ctl_ok ARGS...: ublkctl ARGS, failing the case unless it succeeds.
ctl_ok() {
    local out rc=0
    out=$(ctl "$@") || rc=$?
    ((rc == 0)) || { show_log; fail "ublkctl $* exited $rc: $(<"$CASE_DIR/ctl.err")"; }
    printf '%s\n' "$out"
}

# ctl_err ARGS...: ublkctl ARGS must fail with status 1 and exactly one line
# on stderr; prints that line.
ctl_err() {
    local rc=0 lines
    ctl "$@" >/dev/null || rc=$?
    ((rc == 1)) || fail "ublkctl $* exited $rc, want 1"
    lines=$(wc -l <"$CASE_DIR/ctl.err")
    ((lines == 1)) || fail "ublkctl $* wrote $lines lines to stderr, want 1"
    cat "$CASE_DIR/ctl.err"
}

# json_get JSON FILTER: jq -r FILTER on JSON, failing the case on a jq error
# (null and false print as such).
json_get() {
    jq -r "$2" <<<"$1" || fail "jq $2 failed on: $1"
}

# write_spec DIR NAME JSON: write the device spec DIR/devices.d/NAME.json.
write_spec() {
    local dir=$1 name=$2 json=$3
    mkdir -p "$dir/devices.d"
    printf '%s\n' "$json" >"$dir/devices.d/$name.json"
}

# start_ublkd CONFIG_DIR [ARGS...]: start `ublkd --config-dir CONFIG_DIR
# ARGS...` in the background. Sets UBLKD_PID and UBLKD_LOG.
start_ublkd() {
    local dir=$1
    shift
    [[ -x $UBLKD ]] || fail "ublkd not found at $UBLKD (is the build dir right?)"
    UBLKD_LOG=$CASE_DIR/ublkd.${#_UBLKD_PIDS[@]}.log
    log "starting ublkd --config-dir $dir $* (log $UBLKD_LOG)"
    "$UBLKD" --config-dir "$dir" "$@" >"$UBLKD_LOG" 2>&1 &
    UBLKD_PID=$!
    _UBLKD_PIDS+=("$UBLKD_PID")
    _UBLKD_LOGS+=("$UBLKD_LOG")
}

# ublkd_alive [PID]: true while the daemon runs. A zombie counts as gone: in
# a subshell the exit is not reaped yet.
ublkd_alive() {
    local pid=${1:-$UBLKD_PID} stat
    [[ -n $pid ]] && read -r stat 2>/dev/null <"/proc/$pid/stat" || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# show_log [FILE] [LINES]: the end of a daemon log, into the case log.
show_log() {
    local file=${1:-$UBLKD_LOG} lines=${2:-40}
    [[ -f $file ]] || return 0
    echo "---- last $lines lines of $file:" >&2
    tail -n "$lines" "$file" >&2
    echo "----" >&2
}

# wait_for_log PATTERN TIMEOUT [FILE]: wait until a line of FILE (default the
# current daemon's log) matches the extended regex PATTERN; prints that line.
# Fails on timeout, or early when the daemon writing FILE has exited.
wait_for_log() {
    local pattern=$1 timeout=$2 file=${3:-$UBLKD_LOG}
    local deadline=$((${EPOCHREALTIME/./} + timeout * 1000000)) line
    local pid=
    [[ $file == "$UBLKD_LOG" ]] && pid=$UBLKD_PID
    while :; do
        if line=$(grep -E -m1 -- "$pattern" "$file" 2>/dev/null); then
            printf '%s\n' "$line"
            return 0
        fi
        if [[ -n $pid ]] && ! ublkd_alive "$pid"; then
            # One last look: the line may have come just before the exit.
            if line=$(grep -E -m1 -- "$pattern" "$file" 2>/dev/null); then
                printf '%s\n' "$line"
                return 0
            fi
            show_log "$file"
            fail "ublkd exited while waiting for /$pattern/ in $file"
        fi
        if ((${EPOCHREALTIME/./} > deadline)); then
            show_log "$file"
            fail "no line matching /$pattern/ in $file within ${timeout}s"
        fi
        sleep 0.1
    done
}

# wait_live NAME TIMEOUT: wait for "device NAME live at /dev/ublkbN" from the
# current daemon and for the block device node; prints /dev/ublkbN.
wait_live() {
    local name=$1 timeout=$2 line dev deadline
    deadline=$((${EPOCHREALTIME/./} + timeout * 1000000))
    line=$(wait_for_log "device $name live at /dev/ublkb[0-9]+" "$timeout")
    dev=$(grep -oE '/dev/ublkb[0-9]+' <<<"$line" | head -n 1)
    until [[ -b $dev ]]; do
        ((${EPOCHREALTIME/./} < deadline)) || fail "$dev reported live but no block device node appeared"
        sleep 0.05
    done
    log "device $name live at $dev"
    printf '%s\n' "$dev"
}

# stop_ublkd [TIMEOUT] [PID]: SIGTERM the daemon (default: the current one)
# and wait up to TIMEOUT seconds (default 30) for it to exit. Fails if it
# does not exit in time (it is then SIGKILLed) or exits non-zero.
stop_ublkd() {
    local timeout=${1:-30} pid=${2:-$UBLKD_PID} rc=0 i log_file=$UBLKD_LOG
    [[ -n $pid ]] || fail "stop_ublkd: no daemon started"
    for i in "${!_UBLKD_PIDS[@]}"; do
        [[ ${_UBLKD_PIDS[i]} == "$pid" ]] && log_file=${_UBLKD_LOGS[i]}
    done
    log "stopping ublkd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((${EPOCHREALTIME/./} + timeout * 1000000))
    while ublkd_alive "$pid"; do
        if ((${EPOCHREALTIME/./} > deadline)); then
            show_log "$log_file"
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            fail "ublkd (pid $pid) still running ${timeout}s after SIGTERM; killed"
        fi
        sleep 0.1
    done
    wait "$pid" 2>/dev/null || rc=$?
    if ((rc != 0)); then
        show_log "$log_file"
        fail "ublkd (pid $pid) exited with status $rc"
    fi
    log "ublkd (pid $pid) exited cleanly"
}

# assert_no_ublk_devices [TIMEOUT]: no /dev/ublkb* and no /dev/ublkc* left,
# allowing TIMEOUT seconds (default 5) for device nodes to go away. The
# cases that pass TIMEOUT are other files than this one.
# shellcheck disable=SC2120
assert_no_ublk_devices() {
    local timeout=${1:-5} left deadline
    deadline=$((${EPOCHREALTIME/./} + timeout * 1000000))
    while :; do
        left=$(compgen -G '/dev/ublk[bc]*' | tr '\n' ' ' || true)
        [[ -z $left ]] && return 0
        ((${EPOCHREALTIME/./} < deadline)) || fail "ublk devices left: $left"
        sleep 0.1
    done
}

# ---- NBD servers -------------------------------------------------------------

_NBDKIT_PIDS=()

# start_nbdkit NAME ARGS...: nbdkit in the foreground on the Unix socket
# $CASE_DIR/NAME.sock, serving ARGS (plugin, filters, parameters); waits
# until it listens. Sets NBDKIT_PID; its log is $CASE_DIR/nbdkit.NAME.log.
# Killed at the end of the case if still running.
start_nbdkit() {
    local name=$1 sock=$CASE_DIR/$1.sock pidfile=$CASE_DIR/$1.nbdkit.pid i
    shift
    rm -f "$sock" "$pidfile"
    nbdkit -f -U "$sock" -P "$pidfile" "$@" >>"$CASE_DIR/nbdkit.$name.log" 2>&1 &
    NBDKIT_PID=$!
    _NBDKIT_PIDS+=("$NBDKIT_PID")
    for ((i = 0; i < 200; i++)); do
        [[ -s $pidfile ]] && return 0
        kill -0 "$NBDKIT_PID" 2>/dev/null ||
            { cat "$CASE_DIR/nbdkit.$name.log" >&2; fail "nbdkit $* exited at start"; }
        sleep 0.05
    done
    fail "nbdkit $* did not listen on $sock within 10 s"
}

# stop_nbdkit PID [SIGNAL]: end an nbdkit (SIGTERM by default) and reap it.
stop_nbdkit() {
    kill "-${2:-TERM}" "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# nbd_uri NAME [EXPORT]: the URI of start_nbdkit NAME's socket.
nbd_uri() { echo "nbd+unix:///${2:-}?socket=$CASE_DIR/$1.sock"; }

# ---- Ceph ----------------------------------------------------------------------

# Packed into the initramfs by build-initramfs.sh when a case calls
# start_ceph: tests/ceph/cluster.sh and a cluster it built and stopped.
CEPH_PACKED=/ublkd-tests/ceph
_CEPH_PIDS=()

# start_ceph: a copy of the packed cluster (one mon, one MemStore OSD, pool
# rbd of size 1, cephx, 127.0.0.1) in $CASE_DIR/ceph, resumed; returns once
# pool rbd takes I/O. Exports CEPH_CONF (its ceph.conf: client.admin's
# keyring is found through it); sets CEPH_DIR, CEPH_MON_PID, CEPH_OSD_PID.
# Each case gets the cluster as it was built: no image from another case.
# The daemons run in their own session: stop_ceph, or the end of the case
# (after its daemons, which may still need the cluster), kills them.
start_ceph() {
    local t0=${EPOCHREALTIME/./} rc=0
    [[ -x $CEPH_PACKED/cluster.sh && -d $CEPH_PACKED/cluster ]] ||
        fail "no Ceph cluster in the initramfs ($CEPH_PACKED): build-initramfs.sh packs one for cases that call start_ceph"
    CEPH_DIR=$CASE_DIR/ceph
    rm -rf "$CEPH_DIR"
    cp -a "$CEPH_PACKED/cluster" "$CEPH_DIR"
    # The resume takes 3-7 s in a TCG guest, 17 s seen with the host busy:
    # the bound is for a guest that makes no progress at all.
    UBLKD_CEPH_START_TIMEOUT=${UBLKD_CEPH_START_TIMEOUT:-90} \
        "$CEPH_PACKED/cluster.sh" resume "$CEPH_DIR" || rc=$?
    local f
    for f in "$CEPH_DIR"/*.pid; do
        [[ -s $f ]] && _CEPH_PIDS+=("$(<"$f")")
    done
    if ((rc != 0)); then
        # cluster.sh showed the daemons' stderr; the reason may be in
        # their own logs, which go when the VM does.
        for f in "$CEPH_DIR"/log/{mon.a,osd.0}.log; do
            [[ -s $f ]] || continue
            echo "---- last 30 lines of $f:" >&2
            tail -n 30 "$f" >&2
        done
        fail "the Ceph cluster did not start (cluster.sh resume exited $rc)"
    fi
    CEPH_MON_PID=$(<"$CEPH_DIR/mon.a.pid")
    CEPH_OSD_PID=$(<"$CEPH_DIR/osd.0.pid")
    export CEPH_CONF=$CEPH_DIR/ceph.conf
    log "ceph cluster up in $(((${EPOCHREALTIME/./} - t0) / 1000)) ms (mon pid $CEPH_MON_PID, osd pid $CEPH_OSD_PID)"
}

# _ceph_gone PID: the daemon has exited (a zombie counts: its parent, a
# shell of cluster.sh, is gone and init reaps it).
_ceph_gone() {
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 0
    stat=${stat##*) }
    [[ ${stat:0:1} == Z ]]
}

# stop_ceph: SIGKILL the cluster's daemons (also a frozen one) and wait
# until they are gone. Nothing of the copy is kept, so there is nothing a
# clean stop would save.
stop_ceph() {
    local pid i
    for pid in "${_CEPH_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in "${_CEPH_PIDS[@]}"; do
        for ((i = 0; i < 100; i++)); do
            _ceph_gone "$pid" && break
            sleep 0.05
        done
        _ceph_gone "$pid" || log "ceph daemon pid $pid still there 5 s after SIGKILL"
    done
    _CEPH_PIDS=()
}

# ---- I/O ------------------------------------------------------------------

# must_fail_eio WHAT CMD...: CMD must fail with an I/O error within 30 s:
# neither hang nor succeed against a backing store that is failing.
must_fail_eio() {
    local what=$1 rc=0
    shift
    timeout 30 "$@" >"$CASE_DIR/cmd.out" 2>&1 || rc=$?
    ((rc != 124)) || fail "$what hung (30 s)"
    ((rc != 0)) || fail "$what succeeded against a failing store (a false success)"
    grep -qi 'Input/output error\|err=.*5\|error=Input' "$CASE_DIR/cmd.out" ||
        { cat "$CASE_DIR/cmd.out" >&2; fail "$what failed, but not with EIO"; }
    log "$what: EIO as expected"
}

# assert_queues_used DEV: where debugfs shows per-queue counts, both
# hardware queues of DEV dispatched requests.
assert_queues_used() {
    local h n
    for h in /sys/kernel/debug/block/"${1#/dev/}"/hctx{0,1}; do
        [[ -r $h/dispatched ]] || continue
        n=$(awk '{ s += $2 } END { print s + 0 }' "$h/dispatched")
        ((n > 0)) || fail "$1: ${h##*/} dispatched no requests"
    done
}

# fio_verify DEV [FIO ARGS...]: random writes with crc32c verification over
# the whole device (4 KiB, queue depth 32, io_uring, O_DIRECT). Extra
# arguments come last and so override the defaults (--size=64M, --bs=...).
fio_verify() {
    local dev=$1 out rc=0
    shift
    out=$CASE_DIR/fio.$RANDOM.out
    log "fio verify on $dev $*"
    fio --name=v --filename="$dev" --direct=1 --ioengine=io_uring \
        --rw=randwrite --bs=4k --iodepth=32 \
        --verify=crc32c --do_verify=1 --verify_fatal=1 \
        "$@" >"$out" 2>&1 || rc=$?
    if ((rc != 0)); then
        cat "$out" >&2
        fail "fio verify on $dev failed (status $rc)"
    fi
    # Only the summary lines: full fio output makes logs hard to read.
    grep -E '^ *(write|read):|err=' "$out" >&2 || true
}

# ---- exit handling --------------------------------------------------------

_lib_on_exit() {
    local rc=$? i pid left=0
    set +e
    trap - EXIT
    for i in "${!_UBLKD_PIDS[@]}"; do
        pid=${_UBLKD_PIDS[i]}
        ublkd_alive "$pid" || continue
        left=1
        log "cleanup: ublkd (pid $pid) still running; sending SIGTERM"
        kill -TERM "$pid" 2>/dev/null
        for _ in {1..50}; do
            ublkd_alive "$pid" || break
            sleep 0.1
        done
        if ublkd_alive "$pid"; then
            log "cleanup: ublkd (pid $pid) ignored SIGTERM for 5s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    # After the daemons, whose devices they serve.
    for pid in "${_NBDKIT_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    ((${#_CEPH_PIDS[@]} == 0)) || stop_ceph
    # After the daemons: they may hold what the cleanups release (a mount
    # under a backing file, a module).
    for ((i = ${#_CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${_CLEANUPS[i]}" || log "cleanup '${_CLEANUPS[i]}' failed"
    done
    if ((rc != 0 && rc != 77)); then
        for i in "${!_UBLKD_LOGS[@]}"; do
            show_log "${_UBLKD_LOGS[i]}" 60
        done
    fi
    if ((left && rc == 0)); then
        printf 'FAIL: %s\n' "case ended with ublkd still running" >&2
        rc=1
    fi
    exit "$rc"
}
trap _lib_on_exit EXIT
# A signal (the harness's timeout sends SIGTERM) must still run the cleanup.
trap 'log "terminated by signal"; exit 143' TERM INT HUP

# ---- crash recovery -------------------------------------------------------

# kill9_ublkd: SIGKILL the current daemon and reap it.
kill9_ublkd() {
    local pid=$UBLKD_PID
    log "kill -9 ublkd (pid $pid)"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# restart_recover CONFIG_DIR STATE_DIR TIMEOUT NAME...: start ublkd again on
# the same state dir and wait until each NAME is recovered and the daemon is
# ready.
restart_recover() {
    local cfg=$1 state=$2 timeout=$3 name
    shift 3
    start_ublkd "$cfg" --state-dir "$state"
    for name in "$@"; do
        wait_for_log "device $name recovered: live again at /dev/ublkb[0-9]+" "$timeout" >/dev/null
    done
    wait_for_log "running: [0-9]+ device\(s\) live" "$timeout" >/dev/null
}

# rand_ms LO HI: a random whole number of milliseconds in [LO, HI].
rand_ms() { echo $((RANDOM % ($2 - $1 + 1) + $1)); }

# sleep_ms MS
sleep_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }

# dev_writes DEV: writes DEV has completed since it appeared (/sys/block/X/stat).
dev_writes() {
    local f
    read -r -a f <"/sys/block/${1#/dev/}/stat"
    echo "${f[4]}"
}

# wait_dev_writes DEV COUNT PID SECS: until DEV has completed COUNT writes;
# false when PID (the writer) ends first or SECS pass.
wait_dev_writes() {
    local dev=$1 want=$2 pid=$3 deadline=$((${EPOCHREALTIME/./} + $4 * 1000000))
    while (($(dev_writes "$dev") < want)); do
        ublkd_alive "$pid" || return 1
        ((${EPOCHREALTIME/./} < deadline)) || return 1
        sleep 0.02
    done
}

# kill9_verify_cycles CONFIG_DIR STATE_DIR NAME DEV CYCLES [RECOVER_SECS
# [SIZE]]: no acknowledged write is lost across kill -9. Each cycle: fio
# writes random 4 KiB blocks with crc32c headers (O_DIRECT, iodepth 16, its
# own seed); ublkd is killed at a random moment and restarted after a
# random pause; in odd cycles fio is then interrupted (SIGINT) at a random
# moment, in even ones it runs to its end. fio saves which writes completed
# (verify_state_save) and a second fio verifies exactly those
# (verify_state_load). Any I/O error of the writer or any verify failure
# fails the case. RECOVER_SECS (default 30) bounds each recovery; SIZE
# (default 48M) is how much of DEV fio writes.
kill9_verify_cycles() {
    local cfg=$1 state=$2 name=$3 dev=$4 cycles=$5 recover_secs=${6:-30} size=${7:-48M}
    local c seed out rc t_kill t_pause
    local common
    for ((c = 1; c <= cycles; c++)); do
        seed=$((RANDOM * 32768 + RANDOM))
        out=$CASE_DIR/w.$name.$c
        rm -f "$CASE_DIR"/*-verify.state
        common=(--name=w --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite
            --bs=4k --iodepth=16 --size="$size" --verify=crc32c --randseed="$seed")
        t_kill=$(rand_ms 0 300)
        t_pause=$(rand_ms 0 800)
        log "cycle $c/$cycles on $name: kill ${t_kill} ms after the first writes, restart after ${t_pause} ms"
        local writes0
        writes0=$(dev_writes "$dev")
        (cd "$CASE_DIR" && exec fio "${common[@]}" --do_verify=0 --verify_state_save=1) \
            >"$out.write" 2>&1 &
        local fio_pid=$!
        # The kill must meet a writer at work, or the cycle proves nothing:
        # wait for its first 64 writes, kill within 300 ms of them (12k
        # writes make the run last far longer), and check it still runs.
        wait_dev_writes "$dev" $((writes0 + 64)) "$fio_pid" 20 ||
            { cat "$out.write" >&2; fail "cycle $c: fio did not start writing to $dev"; }
        sleep_ms "$t_kill"
        ublkd_alive "$fio_pid" ||
            { cat "$out.write" >&2; fail "cycle $c: fio was done before the kill; the cycle would test nothing"; }
        kill9_ublkd
        sleep_ms "$t_pause"
        restart_recover "$cfg" "$state" "$recover_secs" "$name"
        local interrupted=0
        if ((c % 2 == 1)) && ublkd_alive "$fio_pid"; then
            sleep_ms "$(rand_ms 0 1500)"
            kill -INT "$fio_pid" 2>/dev/null && interrupted=1
        fi
        rc=0
        wait "$fio_pid" || rc=$?
        # fio ends with status 128 when a signal stopped it.
        ((interrupted && rc == 128)) && rc=0
        if ((rc != 0)) || grep -qE 'err= *[1-9]|error' "$out.write"; then
            cat "$out.write" >&2
            fail "cycle $c: the writer saw an error (status $rc)"
        fi
        [[ -f $CASE_DIR/w-0-verify.state || -f $CASE_DIR/local-w-0-verify.state ]] ||
            { ls "$CASE_DIR" >&2; fail "cycle $c: fio saved no verify state"; }
        rc=0
        (cd "$CASE_DIR" && exec fio "${common[@]}" --verify_only --verify_state_load=1 \
            --verify_fatal=1) >"$out.verify" 2>&1 || rc=$?
        if ((rc != 0)); then
            cat "$out.verify" >&2
            fail "cycle $c: verification of the acknowledged writes failed (status $rc)"
        fi
        grep -E '^ *(write|read):' "$out.write" "$out.verify" >&2 || true
    done
}

# ---- add/del storms -----------------------------------------------------------

# daemon_resources PID STATE_DIR: one line "fds=N memfds=N threads=N
# kernel=N records=N memfiles=N": the daemon's open fds, those of them that
# are memfds, its threads, the ublk devices the kernel has, the state
# records and the kept mem files of STATE_DIR.
daemon_resources() {
    local pid=$1 state=$2 fds=0 memfds=0 f target
    for f in "/proc/$pid/fd/"*; do
        target=$(readlink "$f" 2>/dev/null) || continue
        fds=$((fds + 1))
        [[ $target == /memfd:* ]] && memfds=$((memfds + 1))
    done
    local -a tasks=("/proc/$pid/task/"*) kdevs records memfiles
    mapfile -t kdevs < <(compgen -G '/sys/class/ublk-char/ublkc*' || true)
    mapfile -t records < <(compgen -G "$state/devices/*.json" || true)
    mapfile -t memfiles < <(compgen -G "$state/mem/*" || true)
    echo "fds=$fds memfds=$memfds threads=${#tasks[@]} kernel=${#kdevs[@]} records=${#records[@]} memfiles=${#memfiles[@]}"
}

# storm_cycles N PREFIX: N times add a device (mem, null and file in turn)
# and del it again, as requests pipelined on one admin connection (it
# answers them one at a time, in order), in batches of 25; every response
# must be ok. After each batch, one more cycle through ublkctl that reads
# the new device's first block.
storm_cycles() {
    local n=$1 prefix=$2 i done=0 batch reqs out oks name dev
    while ((done < n)); do
        batch=$((n - done < 25 ? n - done : 25))
        reqs=
        for ((i = done; i < done + batch; i++)); do
            name=$prefix$i
            case $((i % 3)) in
                0) reqs+='{"op":"add","spec":{"name":"'$name'","backend":{"type":"mem","size":"16MiB"},"queues":2,"queue_depth":32}}'$'\n' ;;
                1) reqs+='{"op":"add","spec":{"name":"'$name'","backend":{"type":"null","size":"1GiB"},"queue_depth":64}}'$'\n' ;;
                2) reqs+='{"op":"add","spec":{"name":"'$name'","backend":{"type":"file","path":"'$CASE_DIR/$name.img'","size":"16MiB","create":true}}}'$'\n' ;;
            esac
            reqs+='{"op":"del","name":"'$name'"}'$'\n'
        done
        out=$(printf '%s' "$reqs" | ublkd-admin-send --lines $((2 * batch)) --timeout-ms 120000 "$UBLKD_SOCKET" 2>/dev/null) ||
            fail "storm $prefix: the admin connection failed"
        oks=$(grep -c '"ok":true' <<<"$out" || true)
        ((oks == 2 * batch)) || { printf '%s\n' "$out" | grep -v '"ok":true' >&2; fail "storm $prefix: $oks of $((2 * batch)) requests ok"; }
        rm -f "$CASE_DIR/$prefix"*.img
        done=$((done + batch))
        name=${prefix}io$done
        dev=$(ctl_ok add "$name" --backend mem --size 16MiB)
        dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none || fail "storm $prefix: $dev does not read"
        ctl_ok del "$name" >/dev/null
        ((done % 100 == 0)) && log "storm $prefix: $done of $n cycles"
    done
    return 0
}

# add_del_storm CYCLES: add/del storms with I/O running on two other devices
# (a mem and a file device, each under a verifying fio) and a kill -9 of
# ublkd in the middle of an add; afterwards the daemon holds what it held
# before the storm: the same number of fds, memfds and threads, the kernel
# the same number of ublk devices, the state dir the same records and mem
# files; and the I/O devices saw no error.
add_del_storm() {
    local cycles=$1 cfg=$CASE_DIR/config state=$CASE_DIR/state half=$(($1 / 2))
    mkdir -p "$cfg"
    start_ublkd_api "$cfg"
    local mdev fdev
    mdev=$(ctl_ok add io0 --backend mem --size 128MiB --queues 2)
    fdev=$(ctl_ok add io1 --backend file --path "$CASE_DIR/io1.img" --size 128MiB --create --queues 2)
    local -a fio_pids=()
    local dev
    for dev in "$mdev" "$fdev"; do
        # Held to 500 writes/s each so the storm gets the CPU it needs; the
        # verify backlog checks the blocks while they are written.
        fio --name=bg --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
            --iodepth=16 --size=64M --rate_iops=500 --verify=crc32c --verify_backlog=256 \
            --verify_fatal=1 --time_based --runtime=3600 >"$CASE_DIR/fio.${dev##*/}" 2>&1 &
        fio_pids+=($!)
        add_cleanup "kill -KILL $! 2>/dev/null || true"
    done

    storm_cycles 10 warm
    local before after
    before=$(daemon_resources "$UBLKD_PID" "$state")
    log "before the storm: $before"
    storm_cycles "$half" a

    # kill -9 while an add is under way, then recover.
    "$UBLKCTL" add cut --backend mem --size 16MiB >/dev/null 2>&1 &
    local add_pid=$!
    sleep_ms "$(rand_ms 0 60)"
    kill9_ublkd
    wait "$add_pid" || true
    start_ublkd "$cfg" --socket "$UBLKD_SOCKET" --state-dir "$state"
    wait_for_log "running: [0-9]+ device\(s\) live" 60 >/dev/null
    local name
    for name in io0 io1; do
        [[ $(json_get "$(ctl_ok --json info "$name")" .state) == live ]] || fail "$name is not live after the restart"
    done
    # The add cut short left a device that is recovered, or nothing.
    if ctl info cut >/dev/null 2>&1; then ctl_ok del cut >/dev/null; fi

    storm_cycles 10 warm2-
    before=$(daemon_resources "$UBLKD_PID" "$state")
    log "after the restart: $before"
    storm_cycles $((cycles - half)) b
    after=$(daemon_resources "$UBLKD_PID" "$state")
    log "after the storm:   $after"
    [[ $after == "$before" ]] || fail "resources changed over the storm: before $before, after $after"
    [[ $after == *" kernel=2 "* && $after == *" records=2 "* ]] ||
        fail "the kernel or the state dir hold more than the two I/O devices: $after"

    local p rc
    for p in "${fio_pids[@]}"; do
        ublkd_alive "$p" || { cat "$CASE_DIR"/fio.* >&2; fail "a background fio ended during the storm"; }
        kill -INT "$p"
        rc=0
        wait "$p" || rc=$?
        ((rc == 0 || rc == 128)) || { cat "$CASE_DIR"/fio.* >&2; fail "a background fio failed (status $rc)"; }
    done
    grep -qE 'err= *[1-9]|verify: bad' "$CASE_DIR"/fio.* && { cat "$CASE_DIR"/fio.* >&2; fail "I/O errors on the background devices"; }
    ctl_ok del io0 >/dev/null
    ctl_ok del io1 >/dev/null
    stop_ublkd 30
    assert_no_ublk_devices
}
