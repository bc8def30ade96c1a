#!/bin/bash
# The benchmark, run inside the test VM by bench/run.sh, which puts the
# parameters (BENCH_*) at the top of a copy of this file. Every result is
# one line "@@BENCH {json}" in the case log; bench/run.sh collects them.
#
# Devices, each of BENCH_SIZE_MIB: kernel brd, null_blk, loop with direct
# I/O on a tmpfs file; ublkd null, mem, and file on a tmpfs file. All but
# the null devices are written in full first, so reads hit real data.
# Then the network pair: one nbdkit memory export on a Unix socket, served
# to the kernel's nbd client (nbd-client, one connection) and to an ublkd
# nbd device (its default queues: a connection each), with a matrix of its
# own (BENCH_NBD_JOBS). Then the Ceph pair: two images of one in-VM
# cluster (one mon, one MemStore OSD), one served by rbd-nbd through the
# kernel's nbd client, the other by an ublkd rbd device (BENCH_RBD_JOBS);
# the kernel's own rbd client is not in Debian's cloud kernels.
# In the VM this file is a case, next to the harness's lib.sh.
# shellcheck source=../../tests/vm/lib.sh
. "${BASH_SOURCE%/*}/../lib.sh"

: "${BENCH_RUNTIME:=3}" "${BENCH_RAMP:=1}" "${BENCH_REPEATS:=3}" "${BENCH_SIZE_MIB:=256}"
: "${BENCH_JOBS:=randread-4k-1 randwrite-4k-1 randread-4k-64 randwrite-4k-64 read-128k-16 write-128k-16}"
: "${BENCH_NUMJOBS:=1 2}"
: "${BENCH_NBD_JOBS:=randread-4k-1 randwrite-4k-1 randread-4k-64 randwrite-4k-64 read-512k-16 write-512k-16}"
: "${BENCH_RBD_JOBS:=randread-4k-64 randwrite-4k-64 read-128k-16 write-128k-16}"
: "${BENCH_QUEUES:=}" "${BENCH_DEPTH:=128}" # BENCH_QUEUES empty: ublkd's default
: "${BENCH_UBLKD_JSON:={\}}" # ublkd.json of this build's daemons
# --queues N when BENCH_QUEUES is set, nothing (the daemon's default) when not.
queues_opt=()
[[ -n $BENCH_QUEUES ]] && queues_opt=(--queues "$BENCH_QUEUES")

require_cmd fio losetup blockdev dd jq mkfs.ext4

size=$((BENCH_SIZE_MIB * 1048576))
kernel=$(uname -r)
emit() { printf '@@BENCH %s\n' "$1"; }

dir=$CASE_DIR/bench
mkdir -p "$dir" # /tmp is tmpfs in the VM

# ---- the daemon ---------------------------------------------------------------
cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
echo "$BENCH_UBLKD_JSON" >"$cfg/ublkd.json"
start_ublkd_api "$cfg"

# ---- memory: ublkd's RSS with a 1 GiB mem device after 16 MiB written ---------
# First, while no other device exists, so nothing else is counted.
rss_of() { # rss_of FIELD: kB of that /proc/PID/status field
    local k v _
    while read -r k v _; do
        [[ $k == "$1:" ]] && { echo "$v"; return; }
    done <"/proc/$UBLKD_PID/status"
    echo 0
}
rss_idle=$(rss_of VmRSS)
rssdev=$(ctl_ok add rss0 --backend mem --size 1GiB "${queues_opt[@]}" --depth "$BENCH_DEPTH")
rss_added=$(rss_of VmRSS)
dd if=/dev/urandom of="$dir/16m" bs=1M count=16 status=none
dd if="$dir/16m" of="$rssdev" bs=1M count=16 oflag=direct conv=fsync status=none
rss_written=$(rss_of VmRSS)
emit "{\"kind\":\"memory\",\"kernel\":\"$kernel\",\"device_size_mib\":1024,\"written_mib\":16,\"rss_idle_kib\":$rss_idle,\"rss_added_kib\":$rss_added,\"rss_kib\":$rss_written,\"rss_anon_kib\":$(rss_of RssAnon),\"rss_shmem_kib\":$(rss_of RssShmem),\"rss_file_kib\":$(rss_of RssFile)}"
rm -f "$dir/16m"
ctl_ok del rss0 >/dev/null
log "memory: RSS ${rss_idle} kB idle, ${rss_added} kB with rss0 added, ${rss_written} kB after 16 MiB written"

# ---- add -> live ------------------------------------------------------------------
addlat=$(ublkd-bench-add-live --count 20 --queues "${BENCH_QUEUES:-2}" "$UBLKD_SOCKET") ||
    fail "add->live measurement failed"
emit "{\"kind\":\"add_live\",\"kernel\":\"$kernel\",${addlat#\{}"
log "add->live: $addlat"

# ---- the devices --------------------------------------------------------------------
# ram0 is benchmarked; ram1 holds the ext4 for the zero-copy comparison.
load_module brd rd_nr=2 rd_size=$((BENCH_SIZE_MIB * 1024))
load_module null_blk nr_devices=1 gb=1 bs=512 submit_queues="$(nproc)" \
    hw_queue_depth="$BENCH_DEPTH"
load_module loop
truncate -s "$size" "$dir/loop.img"
loopdev=$(losetup --direct-io=on --show -f "$dir/loop.img")
add_cleanup "losetup -d $loopdev"
loop_dio=$(cat "/sys/block/${loopdev#/dev/}/loop/dio")
((loop_dio == 1)) || fail "$loopdev does not do direct I/O on tmpfs (loop/dio is $loop_dio)"

add_dev() { # add_dev NAME ADD-OPTIONS...
    local name=$1
    shift
    ctl_ok add "$name" --size "${BENCH_SIZE_MIB}MiB" "${queues_opt[@]}" --depth "$BENCH_DEPTH" "$@"
}
declare -A dev=(
    [brd]=/dev/ram0
    [null_blk]=/dev/nullb0
    [loop]=$loopdev
    [ublkd-null]=$(add_dev b-null --backend null)
    [ublkd-mem]=$(add_dev b-mem --backend mem)
    [ublkd-file]=$(add_dev b-file --backend file --path "$dir/file.img" --create)
    # The layout the default replaced: a queue per vCPU (docs/performance.md).
    [ublkd-null-q2]=$(ctl_ok add b-null-q2 --size "${BENCH_SIZE_MIB}MiB" --queues 2 \
        --depth "$BENCH_DEPTH" --backend null)
)
devices=(brd null_blk loop ublkd-null ublkd-mem ublkd-file ublkd-null-q2)
queues=$(json_get "$(ctl_ok --json info b-null)" .queues)
for d in "${devices[@]}"; do
    [[ -b ${dev[$d]} ]] || fail "$d: ${dev[$d]} is not a block device"
    (($(dev_size "${dev[$d]}") >= size)) || fail "$d: ${dev[$d]} is smaller than $size bytes"
done
log "devices: $(for d in "${devices[@]}"; do printf '%s=%s ' "$d" "${dev[$d]}"; done)"

# Written in full once, so that reads find data and writes overwrite it.
for d in brd loop ublkd-mem ublkd-file; do
    fio --name=fill --filename="${dev[$d]}" --ioengine=io_uring --direct=1 --rw=write \
        --bs=1M --iodepth=16 --size="$size" --output=/dev/null ||
        fail "$d: filling ${dev[$d]} failed"
done
log "filled"

# ---- the fio matrix ---------------------------------------------------------------
# run_fio JOB NUMJOBS REP DEVICE...: one fio run, the devices one after the
# other (stonewall), each its own reporting group named after the device.
run_fio() {
    local job=$1 nj=$2 rep=$3 rw bs qd out d
    shift 3
    IFS=- read -r rw bs qd <<<"$job"
    local -a args=(--output-format=json --ioengine=io_uring --direct=1 --time_based
        --runtime="$BENCH_RUNTIME" --ramp_time="$BENCH_RAMP" --group_reporting
        --norandommap --randrepeat=0 --rw="$rw" --bs="$bs" --iodepth="$qd"
        --numjobs="$nj" --size="$size")
    for d in "$@"; do args+=(--name="$d" --filename="${dev[$d]}" --stonewall); done
    out=$dir/fio.json
    fio "${args[@]}" >"$out" 2>"$dir/fio.err" || { cat "$dir/fio.err" >&2; fail "fio $job x$nj failed"; }
    jq -c --arg k "$kernel" --arg job "$job" --argjson nj "$nj" --argjson rep "$rep" '
        .jobs[] | (if .read.io_bytes > 0 then .read else .write end) as $d
        | if .error != 0 then error("\(.jobname): fio error \(.error)") else . end
        | {kind: "fio", kernel: $k, device: .jobname, job: $job, numjobs: $nj, rep: $rep,
           iops: $d.iops, mbps: ($d.bw_bytes / 1e6), ios: $d.total_ios,
           p50_us: ($d.clat_ns.percentile["50.000000"] / 1000),
           p99_us: ($d.clat_ns.percentile["99.000000"] / 1000)}' "$out" |
        sed 's/^/@@BENCH /' || fail "fio $job x$nj: unexpected output"
}

# run_pair A B JOBS: each of JOBS on devices A and B, one fio job each,
# BENCH_REPEATS times; A and B take turns at going first.
run_pair() {
    local a=$1 b=$2 jobs=$3 rep job pair
    for ((rep = 1; rep <= BENCH_REPEATS; rep++)); do
        pair=("$a" "$b")
        ((rep % 2 == 0)) && pair=("$b" "$a")
        for job in $jobs; do
            run_fio "$job" 1 "$rep" "${pair[@]}"
            total=$((total + 1))
        done
    done
}

# Repeats are interleaved across devices and jobs, and each repeat starts
# with another device, so drift over the run hits every device alike.
total=0
for ((rep = 1; rep <= BENCH_REPEATS; rep++)); do
    n=${#devices[@]}
    order=()
    for ((i = 0; i < n; i++)); do order+=("${devices[(i + rep - 1) % n]}"); done
    for nj in $BENCH_NUMJOBS; do
        for job in $BENCH_JOBS; do
            run_fio "$job" "$nj" "$rep" "${order[@]}"
            total=$((total + 1))
        done
    done
    log "repeat $rep of $BENCH_REPEATS done"
done

# ---- CPU per I/O of ublkd's threads at iodepth 64 ---------------------------------
# utime + stime in clock ticks (USER_HZ, 100 on x86) around one fio run per
# device: of the whole process (which keeps the time of threads that have
# exited, such as io_uring's io-wq workers), and of the queue threads.
# Also the queue threads' context switches: each voluntary one is a sleep
# in io_uring_enter and so one wake-up. Of ublkd, or of the daemon PID.
cpu_ticks() {
    local pid=${1:-$UBLKD_PID} t stat f all q=0 comm k v sw=0
    read -r stat <"/proc/$pid/stat"
    read -r -a f <<<"${stat##*) }"
    all=$((f[11] + f[12]))
    for t in /proc/"$pid"/task/*; do
        read -r stat <"$t/stat" || continue
        comm=${stat#*(}
        comm=${comm%)*}
        [[ $comm == ublk*-q* ]] || continue
        read -r -a f <<<"${stat##*) }"
        q=$((q + f[11] + f[12]))
        while read -r k v; do
            [[ $k == voluntary_ctxt_switches: ]] && sw=$((sw + v))
        done <"$t/status"
    done
    echo "$all $q $sw"
}
# cpu_run DEVICE RW [PID]: one 4k iodepth 64 fio run of RW on dev[DEVICE];
# sets CPU_RUN to the JSON members of what it cost daemon PID (default
# ublkd): the I/Os done, cpu_ticks' three counts around it, and the tick
# rate. Not in $(...), so that its fail ends the case.
cpu_run() {
    local d=$1 rw=$2 pid=${3:-$UBLKD_PID} a0 q0 w0 a1 q1 w1 ios
    read -r a0 q0 w0 <<<"$(cpu_ticks "$pid")"
    ios=$(fio --output-format=json --name="$d" --filename="${dev[$d]}" --ioengine=io_uring \
        --direct=1 --time_based --runtime="$BENCH_RUNTIME" --norandommap --randrepeat=0 \
        --rw="$rw" --bs=4k --iodepth=64 --size="$size" |
        jq '.jobs[0] | .read.total_ios + .write.total_ios') || fail "$d: fio for CPU cost failed"
    read -r a1 q1 w1 <<<"$(cpu_ticks "$pid")"
    CPU_RUN="\"ios\":$ios,\"ticks_all\":$((a1 - a0)),\"ticks_queues\":$((q1 - q0)),\"queue_wakeups\":$((w1 - w0)),\"hz\":100"
}
for d in ublkd-null ublkd-mem ublkd-file; do
    for rw in randread randwrite; do
        cpu_run "$d" $rw
        emit "{\"kind\":\"cpu\",\"kernel\":\"$kernel\",\"device\":\"$d\",\"job\":\"$rw-4k-64\",$CPU_RUN}"
    done
done

# ---- CPU per I/O against the baseline build (bench/run.sh --baseline) -------------
# Two more daemons, each with its own socket and state dir: this build's
# ublkd and the baseline (an earlier commit's), both with the idle spin off
# so that their queue threads' CPU time is the work, not the wait. A null
# and a mem device on each, the same fio job on each in turn (the order
# alternates per repeat), the queue threads' CPU counted per daemon.
if [[ -n ${BENCH_BASELINE:-} ]]; then
    require_cmd ublkd-baseline
    declare -A ab_pid ab_sock
    for build in this baseline; do
        bin=$UBLKD
        [[ $build == baseline ]] && bin=$(command -v ublkd-baseline)
        bdir=$CASE_DIR/ab-$build
        mkdir -p "$bdir/config/devices.d"
        settings='{"idle_spin_us": 0}'
        [[ $build == this ]] && settings=$(jq -c ". + {idle_spin_us: 0}" <<<"$BENCH_UBLKD_JSON")
        echo "$settings" >"$bdir/config/ublkd.json"
        ab_sock[$build]=$bdir/ublkd.sock
        "$bin" --config-dir "$bdir/config" --socket "${ab_sock[$build]}" --state-dir "$bdir/state" \
            >"$bdir/ublkd.log" 2>&1 &
        ab_pid[$build]=$!
        add_cleanup "kill ${ab_pid[$build]} 2>/dev/null || true"
        wait_for_log "admin socket ${ab_sock[$build]}" 20 "$bdir/ublkd.log" >/dev/null
        for b in null mem; do
            dev[$build-$b]=$(UBLKD_SOCKET=${ab_sock[$build]} ctl_ok add "ab-$b" \
                --size "${BENCH_SIZE_MIB}MiB" "${queues_opt[@]}" --depth "$BENCH_DEPTH" --backend "$b")
        done
        fio --name=fill --filename="${dev[$build-mem]}" --ioengine=io_uring --direct=1 --rw=write \
            --bs=1M --iodepth=16 --size="$size" --output=/dev/null || fail "filling $build-mem failed"
    done
    for ((rep = 1; rep <= BENCH_REPEATS; rep++)); do
        for b in null mem; do
            for rw in randread randwrite; do
                order=(this baseline)
                ((rep % 2 == 0)) && order=(baseline this)
                for build in "${order[@]}"; do
                    cpu_run "$build-$b" $rw "${ab_pid[$build]}"
                    emit "{\"kind\":\"cpu_ab\",\"kernel\":\"$kernel\",\"build\":\"$build\",\"backend\":\"$b\",\"job\":\"$rw-4k-64\",\"rep\":$rep,\"secs\":$BENCH_RUNTIME,$CPU_RUN}"
                done
            done
        done
    done
    for build in this baseline; do
        for b in null mem; do UBLKD_SOCKET=${ab_sock[$build]} ctl_ok del "ab-$b" >/dev/null; done
        kill -TERM "${ab_pid[$build]}"
        wait "${ab_pid[$build]}" || fail "the $build ublkd of the comparison exited with status $?"
    done
    log "CPU per I/O against the baseline (${BENCH_BASELINE}) measured"
fi

# ---- zero copy against the copy, where the kernel offers it ----------------------
# Two file devices on one ext4 (on a second brd disk): "zero_copy": true and
# the default. A file on tmpfs is served inline and never uses zero copy, so
# the matrix above cannot show it.
if [[ $(ctl_ok --json features | jq '[.known[].name] | index("AUTO_BUF_REG") != null') == true ]]; then
    zmnt=$dir/zc-ext4
    zc_mib=$((BENCH_SIZE_MIB * 3 / 8)) # two of them, and ext4's own space
    mkdir -p "$zmnt"
    mkfs.ext4 -q -F /dev/ram1
    mount /dev/ram1 "$zmnt"
    add_cleanup "umount $zmnt"
    for zc in true false; do
        printf '{"name": "b-zc-%s", "queues": %s, "queue_depth": %s, "backend": {"type": "file", "path": "%s/%s.img", "create": true, "size": "%sMiB", "zero_copy": %s}}' \
            "$zc" "$queues" "$BENCH_DEPTH" "$zmnt" "$zc" "$zc_mib" "$zc" |
            ctl_ok add --spec - >/dev/null
        dev[zc-$zc]=/dev/ublkb$(json_get "$(ctl_ok --json info "b-zc-$zc")" .id)
        fio --name=fill --filename="${dev[zc-$zc]}" --ioengine=io_uring --direct=1 --rw=write \
            --bs=1M --iodepth=16 --size="${zc_mib}M" --output=/dev/null || fail "filling zc-$zc failed"
    done
    for ((rep = 1; rep <= BENCH_REPEATS; rep++)); do
        for job in randread-4k-64 randwrite-4k-64 read-128k-16 write-128k-16; do
            IFS=- read -r rw bs qd <<<"$job"
            for zc in true false; do
                fio --output-format=json --name=x --filename="${dev[zc-$zc]}" --ioengine=io_uring \
                    --direct=1 --time_based --runtime="$BENCH_RUNTIME" --ramp_time="$BENCH_RAMP" \
                    --norandommap --randrepeat=0 --rw="$rw" --bs="$bs" --iodepth="$qd" \
                    --size="${zc_mib}M" |
                    jq -c --arg k "$kernel" --arg job "$job" --argjson zc "$zc" --argjson rep "$rep" '
                        .jobs[0] | (if .read.io_bytes > 0 then .read else .write end) as $d
                        | {kind: "zerocopy", kernel: $k, job: $job, zero_copy: $zc, rep: $rep,
                           iops: $d.iops}' | sed 's/^/@@BENCH /' || fail "fio zero copy $job failed"
            done
        done
    done
    for zc in true false; do ctl_ok del "b-zc-$zc" >/dev/null; done
    log "zero copy measured"
fi

# ---- NBD: the kernel's client and ublkd's nbd backend, one nbdkit export ----------
# The same export for both, so both talk to the same server process; each
# pair of runs alternates which goes first.
modprobe nbd nbds_max=2 || fail "the nbd module does not load (the kernel's client is the nbd counterpart)"
add_cleanup "rmmod nbd 2>/dev/null || true"
[[ $BENCH_NBD_JOBS == none ]] || {
    require_cmd nbdkit nbd-client
    start_nbdkit bench memory "${BENCH_SIZE_MIB}M"
    nbdkit_pid=$NBDKIT_PID
    nbd-client -unix "$CASE_DIR/bench.sock" /dev/nbd0 -b 4096 >"$dir/nbd-client.log" 2>&1 ||
        { cat "$dir/nbd-client.log" >&2; fail "nbd-client could not connect /dev/nbd0"; }
    add_cleanup "nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true"
    dev[kernel-nbd]=/dev/nbd0
    dev[ublkd-nbd]=$(ctl_ok add b-nbd --backend nbd --uri "$(nbd_uri bench)" "${queues_opt[@]}" \
        --depth "$BENCH_DEPTH")
    nbd_queues=$(json_get "$(ctl_ok --json info b-nbd)" .queues)
    log "nbd: kernel /dev/nbd0 (max_sectors_kb $(<"/sys/block/nbd0/queue/max_sectors_kb")), ublkd ${dev[ublkd-nbd]} ($nbd_queues queues)"
    fio --name=fill --filename="${dev[ublkd-nbd]}" --ioengine=io_uring --direct=1 --rw=write \
        --bs=1M --iodepth=16 --size="$size" --output=/dev/null || fail "filling the nbd export failed"
    run_pair kernel-nbd ublkd-nbd "$BENCH_NBD_JOBS"
    for rw in randread randwrite; do
        cpu_run ublkd-nbd $rw
        emit "{\"kind\":\"cpu\",\"kernel\":\"$kernel\",\"device\":\"ublkd-nbd\",\"job\":\"$rw-4k-64\",$CPU_RUN}"
    done
    ctl_ok del b-nbd >/dev/null
    nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
    stop_nbdkit "$nbdkit_pid"
    log "nbd measured"
}

# ---- RBD: rbd-nbd and ublkd's rbd backend, two images of one cluster --------------
# Each its own image (the exclusive lock allows one writer per image), in
# the same pool on the same OSD. CPU per I/O is each client's process: the
# rbd-nbd daemon, and ublkd (its queue threads and librbd's).
[[ $BENCH_RBD_JOBS == none ]] || {
    require_cmd rbd rbd-nbd
    start_ceph
    rbd_mib=$((BENCH_SIZE_MIB < 128 ? BENCH_SIZE_MIB : 128)) # the OSD keeps it in memory
    rbd_size=$((rbd_mib * 1048576))
    rbd create --size "${rbd_mib}M" rbd/b-nbd || fail "rbd create b-nbd failed"
    dev[rbd-nbd]=$(rbd-nbd map rbd/b-nbd 2>"$dir/rbd-nbd.err") ||
        { cat "$dir/rbd-nbd.err" >&2; fail "rbd-nbd map failed"; }
    add_cleanup "rbd-nbd unmap ${dev[rbd-nbd]} >/dev/null 2>&1 || true"
    # The process serving the nbd device, as the nbd driver records it.
    rbd_nbd_pid=$(<"/sys/block/${dev[rbd-nbd]#/dev/}/pid") || fail "no pid for ${dev[rbd-nbd]}"
    dev[ublkd-rbd]=$(ctl_ok add b-rbd --backend rbd --image rbd/b-rbd --create --size "${rbd_mib}MiB" \
        --ceph-conf "$CEPH_CONF" "${queues_opt[@]}" --depth "$BENCH_DEPTH")
    log "rbd: rbd-nbd ${dev[rbd-nbd]} (max_sectors_kb $(<"/sys/block/${dev[rbd-nbd]#/dev/}/queue/max_sectors_kb")), ublkd ${dev[ublkd-rbd]} ($(json_get "$(ctl_ok --json info b-rbd)" .queues) queues)"
    for d in rbd-nbd ublkd-rbd; do
        fio --name=fill --filename="${dev[$d]}" --ioengine=io_uring --direct=1 --rw=write \
            --bs=1M --iodepth=16 --size="$rbd_size" --output=/dev/null || fail "filling $d failed"
    done
    saved_size=$size
    size=$rbd_size
    run_pair rbd-nbd ublkd-rbd "$BENCH_RBD_JOBS"
    proc_ticks() { # utime + stime of PID
        local stat f
        read -r stat <"/proc/$1/stat"
        read -r -a f <<<"${stat##*) }"
        echo $((f[11] + f[12]))
    }
    for rw in randread randwrite; do
        for d in rbd-nbd ublkd-rbd; do
            if [[ $d == rbd-nbd ]]; then a0=$(proc_ticks "$rbd_nbd_pid"); else read -r a0 q0 w0 <<<"$(cpu_ticks)"; fi
            ios=$(fio --output-format=json --name=$d --filename="${dev[$d]}" --ioengine=io_uring \
                --direct=1 --time_based --runtime="$BENCH_RUNTIME" --norandommap --randrepeat=0 \
                --rw=$rw --bs=4k --iodepth=64 --size="$size" |
                jq '.jobs[0] | .read.total_ios + .write.total_ios') || fail "$d: fio for CPU cost failed"
            if [[ $d == rbd-nbd ]]; then
                a1=$(proc_ticks "$rbd_nbd_pid") q0=0 q1=0 w0=0 w1=0
            else
                read -r a1 q1 w1 <<<"$(cpu_ticks)"
            fi
            emit "{\"kind\":\"cpu\",\"kernel\":\"$kernel\",\"device\":\"$d\",\"job\":\"$rw-4k-64\",\"ios\":$ios,\"ticks_all\":$((a1 - a0)),\"ticks_queues\":$((q1 - q0)),\"queue_wakeups\":$((w1 - w0)),\"hz\":100}"
        done
    done
    size=$saved_size
    ctl_ok del b-rbd >/dev/null
    rbd-nbd unmap "${dev[rbd-nbd]}" >/dev/null 2>&1 || true
    stop_ceph
    log "rbd measured"
}

# Whether the guest CPU has fast short rep movsb (see docs/performance.md).
fsrm=false
grep -qw fsrm /proc/cpuinfo && fsrm=true
guest_cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//; s/"//g')
# How many of the main daemon's devices were served with batched commands
# (--ublkd-json '{"batch_io": true}' on a kernel that offers them).
batched=$(grep -c 'live at .*batched io commands' "$UBLKD_LOG" || true)
emit "{\"kind\":\"run\",\"batched_devices\":${batched:-0},\"kernel\":\"$kernel\",\"guest_cpu\":\"$guest_cpu\",\"runtime_s\":$BENCH_RUNTIME,\"ramp_s\":$BENCH_RAMP,\"repeats\":$BENCH_REPEATS,\"size_mib\":$BENCH_SIZE_MIB,\"queues\":$queues,\"depth\":$BENCH_DEPTH,\"cpus\":$(nproc),\"cpu_fsrm\":$fsrm,\"fio_runs\":$total,\"fio\":\"$(fio --version)\",\"loop_dio\":$loop_dio}"

for n in b-null b-mem b-file b-null-q2; do ctl_ok del "$n" >/dev/null; done
stop_ublkd
