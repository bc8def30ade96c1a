#!/usr/bin/env bash
# A throwaway single-node Ceph cluster for the rbd backend's tests: one mon,
# one OSD (BlueStore on a sparse file, or MemStore), pool "rbd" of size 1,
# cephx on, bound to 127.0.0.1 only. Every file it makes lives under the
# directory it is given; /etc/ceph and /var/lib/ceph are never read or
# written.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/ceph/cluster.sh start [--verbose] [--memstore] DIR
       tests/ceph/cluster.sh resume [--verbose] DIR
       tests/ceph/cluster.sh stop DIR
       tests/ceph/cluster.sh --help

start   builds a new cluster in DIR (created if missing; a DIR left by an
        earlier start of this script is wiped first, any other non-empty DIR
        is refused) and returns once pool "rbd" takes I/O. Writes:
          DIR/ceph.conf                  for `rbd -c` and rados_conf_read_file
          DIR/client.admin.keyring       found through ceph.conf's keyring=
          DIR/client.ublkd-ro.keyring    read-only rbd user (--id ublkd-ro)
          DIR/mon.a/ DIR/osd.0/          daemon data (osd.0/block: 2 GiB sparse;
                                         none with --memstore)
          DIR/log/                       daemon logs, cluster log, setup output
          DIR/run/                       admin sockets
          DIR/mon.a.pid DIR/osd.0.pid    the daemons this script started
        On failure it names the step, shows the log tail, stops what it
        started and exits 1.
resume  starts the mon and the OSD of a cluster that start built and stop
        stopped, in DIR or in a copy of it made elsewhere (ceph.conf is
        written again for where DIR is now), and returns once pool "rbd"
        takes I/O. Needs ceph-mon, ceph-osd and rados only (no python).
        The mon keeps its port: copies of one cluster cannot run side by
        side.
stop    TERM to the daemons in DIR/*.pid (KILL after 15 s), then removes the
        pid files; DIR itself is kept. Succeeds on a stopped or half-built
        cluster. A MemStore OSD writes its objects to DIR/osd.0 as it stops,
        so that resume finds them again.

  --verbose   progress lines on stderr (start and resume are otherwise silent)
  --memstore  the OSD keeps its objects in memory (Ceph's MemStore): no
              block file, no O_DIRECT, a directory that is small to copy

Environment:
  UBLKD_CEPH_MON_PORT       mon port (default: a free one in 10000-29999,
                            below the ephemeral range)
  UBLKD_CEPH_START_TIMEOUT  seconds start waits for the pool (default 120)
EOF
}

# Same names as ceph's own tools use: mon "a", osd 0.
MON_ID=a
OSD_ID=0
RO_USER=ublkd-ro
BLOCK_SIZE=$((2 << 30))
STOP_GRACE=15
# Marks a directory this script made, so start may wipe it and nothing else.
MARKER=.ublkd-ceph-fixture

verbose=0
store=bluestore
COMMAND=
t0=$SECONDS

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

bad_usage() {
    echo "cluster.sh: $* (--help for usage)" >&2
    exit 2
}

progress() {
    ((verbose)) || return 0
    echo "cluster.sh: [$((SECONDS - t0))s] $*" >&2
}

# BlueStore's mkfs reports, as errors, that there is nothing there yet.
MKFS_NOISE='_read_bdev_label failed to open|_read_fsid unparsable uuid'

# show_log FILE: the last non-blank lines of FILE on stderr, to explain a
# failure.
show_log() {
    local file=$1 lines
    [[ -s $file ]] || return 0
    lines=$(grep -v -E -e '^[[:space:]]*$' -e "$MKFS_NOISE" "$file" | tail -n 15) || true
    [[ -n $lines ]] || return 0
    echo "--- $file:" >&2
    printf '%s\n' "$lines" >&2
}

# log_run CMD...: CMD with its output in the setup log.
log_run() {
    printf '+ %s\n' "$*" >>"$DIR/log/setup.log"
    "$@" >>"$DIR/log/setup.log" 2>&1 </dev/null
}

# run STEP CMD...: log_run, and a failure named with the step and the
# command (fail_start then shows the logs).
run() {
    local step=$1 rc=0
    shift
    log_run "$@" || rc=$?
    ((rc == 0)) && return 0
    echo "cluster.sh: $step: $1 exited with status $rc" >&2
    return 1
}

# set_dir DIR: absolute DIR and the paths derived from it. ceph.conf takes
# each value up to the end of the line, expands $word and splits the keyring
# list at commas, so those characters cannot be in the path.
set_dir() {
    [[ -n $1 ]] || die "empty directory name"
    [[ $1 != *[\$,\;#\ $'\n\t']* ]] ||
        die "directory '$1': ceph.conf cannot hold a path with spaces, \$ , ; or #"
    case $1 in
        /*) DIR=$1 ;;
        *) DIR=$PWD/$1 ;;
    esac
    DIR=${DIR%/}
    CONF=$DIR/ceph.conf
    # Client admin sockets are DIR/run/client.NAME.PID.asok, and a Unix
    # socket path has at most 107 bytes.
    ((${#DIR} <= 70)) ||
        die "directory '$DIR' is ${#DIR} characters long; admin sockets under it need at most 70"
}

# --- stop -------------------------------------------------------------------

# our_daemon PID: true when PID runs, is not a zombie and was started with
# this cluster's ceph.conf, so a recycled PID is never signalled.
our_daemon() {
    local pid=$1 stat arg
    read -r stat 2>/dev/null <"/proc/$pid/stat" || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]] || return 1
    while IFS= read -r -d '' arg; do
        [[ $arg == "$CONF" ]] && return 0
    done 2>/dev/null <"/proc/$pid/cmdline"
    return 1
}

# stop_daemon PIDFILE: TERM, a bounded wait, then KILL.
stop_daemon() {
    local pidfile=$1 pid deadline
    pid=$(cat "$pidfile" 2>/dev/null) || return 0
    if [[ $pid =~ ^[0-9]+$ ]] && our_daemon "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + STOP_GRACE))
        while our_daemon "$pid" && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if our_daemon "$pid"; then
            echo "cluster.sh: ${pidfile##*/}: pid $pid still running after ${STOP_GRACE}s, sending KILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            while our_daemon "$pid"; do sleep 0.1; done
        fi
    fi
    rm -f "$pidfile"
}

# The OSD first: it tells the mon it is going down, which needs the mon up.
stop_cluster() {
    stop_daemon "$DIR/osd.$OSD_ID.pid"
    stop_daemon "$DIR/mon.$MON_ID.pid"
    local f
    for f in "$DIR"/*.pid; do
        [[ -e $f ]] && stop_daemon "$f"
    done
    return 0
}

# --- start ------------------------------------------------------------------

# listening_ports: every local TCP port in LISTEN state, in decimal.
listening_ports() {
    local f
    for f in /proc/net/tcp /proc/net/tcp6; do
        [[ -r $f ]] || continue
        awk 'NR > 1 && $4 == "0A" { split($2, a, ":"); print a[2] }' "$f"
    done | while read -r hex; do echo $((16#$hex)); done
}

# pick_port: a port nothing listens on, below the ephemeral range so an
# outgoing connection cannot take it between now and the mon's bind.
pick_port() {
    if [[ -n ${UBLKD_CEPH_MON_PORT:-} ]]; then
        echo "$UBLKD_CEPH_MON_PORT"
        return
    fi
    local used port i
    used=" $(listening_ports | tr '\n' ' ') "
    for ((i = 0; i < 100; i++)); do
        port=$((10000 + (RANDOM * 32768 + RANDOM) % 20000))
        [[ $used == *" $port "* ]] || { echo "$port"; return; }
    done
    die "no free TCP port found in 10000-29999"
}

# prepare_dir: an empty DIR, wiping one that an earlier start left behind.
prepare_dir() {
    if [[ -d $DIR ]] && [[ -n $(ls -A "$DIR") ]]; then
        [[ -e $DIR/$MARKER ]] ||
            die "$DIR is not empty and was not made by this script; refusing to wipe it"
        stop_cluster
        # Not rm -rf DIR: the directory may be a mount point or owned by
        # whoever made it for us.
        find "$DIR" -mindepth 1 -delete ||
            die "cannot empty $DIR"
    fi
    mkdir -p "$DIR" || die "cannot create $DIR"
    touch "$DIR/$MARKER"
    mkdir -p "$DIR/log" "$DIR/run" "$DIR/crash"
}

# write_conf PORT FSID OBJECTSTORE: the one file daemons, tools and librbd
# all read. Every path in it is under DIR, so resume writes it again when
# DIR has moved.
write_conf() {
    local port=$1 fsid=$2 store=$3
    cat >"$CONF" <<EOF
# Throwaway test cluster made by tests/ceph/cluster.sh; all of it is in
# $DIR.
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$port]
public_network = 127.0.0.1/32
cluster_network = 127.0.0.1/32
ms_bind_ipv4 = true
ms_bind_ipv6 = false
# msgr2 only: one port per daemon fewer, and every client here speaks it.
ms_bind_msgr1 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = $DIR/run
crash_dir = $DIR/crash
mon_cluster_log_file = $DIR/log/cluster.log
# One OSD: every pool has one copy and one OSD as its failure domain.
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
# A nearly full disk on a test machine must not stop the mon.
mon_data_avail_warn = 2
mon_data_avail_crit = 1
# Replicated pools only: the mon and the OSD need not load erasure-code
# plugins at start (a plugin that fails to load stops them).
osd_erasure_code_plugins =

[mon]
mon_data = $DIR/\$name
keyring = \$mon_data/keyring
log_file = $DIR/log/\$name.log
# A lone mon has nobody to batch proposals with: waiting the default 1 s
# between map updates is most of the time a start takes.
paxos_propose_interval = 0.1
# osd.0 comes from the initial osdmap, not from "ceph osd new", so the mon
# does not see it as new and would leave it out.
mon_osd_auto_mark_in = true

[osd]
osd_data = $DIR/\$name
keyring = \$osd_data/keyring
log_file = $DIR/log/\$name.log
osd_objectstore = $store
# Already under its host in the initial crush map, and no device class
# is used: two mon round trips fewer at each start.
osd_crush_update_on_start = false
osd_class_update_on_start = false
# Each shard probes the block file once at start (about 0.3 s each); one
# shard with two threads is plenty for tests on a small machine.
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 2
# The object classes RBD calls; the OSD would load all 19 at start.
osd_class_load_list = rbd lock
osd_class_default_list = rbd lock
EOF
    if [[ $store == memstore ]]; then
        cat >>"$CONF" <<EOF
# The capacity MemStore reports (its objects are in memory): as large as
# the BlueStore file, so that the full ratios are as far away.
memstore_device_bytes = $BLOCK_SIZE
# MemStore writes its objects to osd_data when it is unmounted and reads
# them back at start; the fast shutdown (the default) exits before that.
osd_fast_shutdown = false
EOF
    else
        cat >>"$CONF" <<EOF
bluestore_block_create = true
bluestore_block_size = $BLOCK_SIZE
bluestore_fsck_on_mkfs = false
# Small caches: by default they grow towards a 4 GiB memory target. The
# target cannot go below 896 MiB (a smaller value is silently replaced by
# the default), so the cache is sized directly instead of autotuned.
osd_memory_target = 939524096
bluestore_cache_autotune = false
bluestore_cache_size = 67108864
# RocksDB keeps up to 4 memtables of 256 MiB; small writes fill them.
bluestore_rocksdb_options_annex = write_buffer_size=16777216,max_write_buffer_number=2
EOF
    fi
    cat >>"$CONF" <<EOF

[client]
keyring = $DIR/\$name.keyring
# One socket per process: two clients of one name would fight over it.
admin_socket = \$run_dir/\$name.\$pid.asok
log_file =
# Fail instead of waiting forever (defaults: 300 s, no limit, no limit).
client_mount_timeout = 15
rados_osd_op_timeout = 30
rados_mon_op_timeout = 15
EOF
}

# write_keyring FILE NAME KEY [SUBSYSTEM CAPS]...
write_keyring() {
    local file=$1 name=$2 key=$3
    shift 3
    {
        printf '[%s]\n\tkey = %s\n' "$name" "$key"
        while (($# >= 2)); do
            printf '\tcaps %s = "%s"\n' "$1" "$2"
            shift 2
        done
    } >>"$file"
    chmod 0600 "$file"
}

gen_key() {
    ceph-authtool --gen-print-key 2>>"$DIR/log/setup.log" ||
        die "ceph-authtool --gen-print-key failed (see $DIR/log/setup.log)"
}

# make_keys: every entity's key goes into the mon's mkfs keyring, which puts
# them all in the auth database up front: no "ceph auth" call later.
make_keys() {
    local mon_key admin_key osd_key ro_key
    mon_key=$(gen_key)
    admin_key=$(gen_key)
    osd_key=$(gen_key)
    ro_key=$(gen_key)
    local admin_caps=(mon 'allow *' osd 'allow *' mgr 'allow *' mds 'allow *')
    local osd_caps=(mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *')
    local ro_caps=(mon 'profile rbd' osd "profile rbd-read-only pool=rbd")
    local mk=$DIR/mkfs.keyring
    write_keyring "$mk" mon. "$mon_key" mon 'allow *'
    write_keyring "$mk" client.admin "$admin_key" "${admin_caps[@]}"
    write_keyring "$mk" "osd.$OSD_ID" "$osd_key" "${osd_caps[@]}"
    write_keyring "$mk" "client.$RO_USER" "$ro_key" "${ro_caps[@]}"
    write_keyring "$DIR/client.admin.keyring" client.admin "$admin_key" "${admin_caps[@]}"
    write_keyring "$DIR/client.$RO_USER.keyring" "client.$RO_USER" "$ro_key" "${ro_caps[@]}"
    mkdir -p "$DIR/osd.$OSD_ID"
    write_keyring "$DIR/osd.$OSD_ID/keyring" "osd.$OSD_ID" "$osd_key"
}

# make_maps PORT FSID: the monmap, and an osdmap that already holds osd.0
# and its crush placement, so no "ceph osd new" is needed: the mon adds
# osd.0 when it first boots.
make_maps() {
    local port=$1 fsid=$2
    run "monmap" monmaptool --create --clobber --fsid "$fsid" \
        --addv "$MON_ID" "[v2:127.0.0.1:$port]" "$DIR/monmap" || return 1
    run "osdmap" osdmaptool -c "$CONF" --createsimple 1 --clobber "$DIR/osdmap"
}

# spawn NAME CMD...: start a daemon in its own session (a Ctrl-C meant for
# the test must not kill it mid-test) and record its pid. Debian's Ceph uses
# glibc malloc, whose per-thread arenas (the OSD runs ~55 threads) hold on
# to freed memory: two arenas cut the OSD's RSS after heavy writes by a
# quarter.
spawn() {
    local name=$1
    shift
    MALLOC_ARENA_MAX=2 setsid "$@" </dev/null >>"$DIR/log/$name.stderr" 2>&1 &
    local pid=$! stat
    echo "$pid" >"$DIR/$name.pid"
    # Until the child has exec'd, its command line is this script's, and
    # daemon_died would take it for a daemon that exited (a slow machine
    # shows it when the first check follows at once, as in resume).
    while ! our_daemon "$pid"; do
        read -r stat 2>/dev/null <"/proc/$pid/stat" || break
        stat=${stat##*) }
        [[ ${stat%% *} != Z ]] || break
        sleep 0.02
    done
}

start_mon() {
    run "mon mkfs" ceph-mon -c "$CONF" -i "$MON_ID" --mkfs --monmap "$DIR/monmap" \
        --osdmap "$DIR/osdmap" --keyring "$DIR/mkfs.keyring" || return 1
    rm -f "$DIR/mkfs.keyring"
    spawn "mon.$MON_ID" ceph-mon -c "$CONF" -i "$MON_ID" -f
}

# OSD mkfs needs no mon (--no-mon-config), so it runs while the mon starts.
mkfs_osd() {
    run "osd mkfs" ceph-osd -c "$CONF" -i "$OSD_ID" --mkfs --no-mon-config \
        --osd-uuid "$(cat /proc/sys/kernel/random/uuid)"
}

# The only python "ceph" call: the pool needs the mon to create it (a pool
# put into the initial osdmap lacks the CREATING flag, and the OSD never
# makes its PGs). Size 1 comes from osd_pool_default_size in ceph.conf, which
# mon_allow_pool_size_one permits without --yes-i-really-mean-it. Retried
# until the deadline: on a slow machine the mon may not answer within
# client_mount_timeout, and creating an existing pool succeeds.
create_pool() {
    local name
    until log_run timeout -k 5 60 ceph -c "$CONF" osd pool create rbd 8 8 replicated; do
        if ((SECONDS >= DEADLINE)) || name=$(daemon_died); then
            echo "cluster.sh: pool create: ceph osd pool create rbd failed" >&2
            return 1
        fi
        sleep 1
    done
}

start_osd() {
    spawn "osd.$OSD_ID" ceph-osd -c "$CONF" -i "$OSD_ID" -f
}

# daemon_died: the name of a daemon that has exited, if any.
daemon_died() {
    local name pid
    for name in "mon.$MON_ID" "osd.$OSD_ID"; do
        pid=$(cat "$DIR/$name.pid" 2>/dev/null) || continue
        our_daemon "$pid" || { echo "$name"; return 0; }
    done
    return 1
}

fail_start() {
    echo "cluster.sh: $COMMAND failed: $*" >&2
    # A daemon's errors and crash dumps are in its .stderr; its .log is
    # mostly RocksDB statistics.
    show_log "$DIR/log/setup.log"
    show_log "$DIR/log/mon.$MON_ID.stderr"
    show_log "$DIR/log/osd.$OSD_ID.stderr"
    echo "cluster.sh: daemon logs: $DIR/log/mon.$MON_ID.log $DIR/log/osd.$OSD_ID.log" >&2
    stop_cluster
    echo "cluster.sh: files kept in $DIR" >&2
    exit 1
}

# probe DEADLINE CMD...: CMD bounded by the time left (its own timeouts
# come from ceph.conf); a daemon that exits meanwhile ends the start at once.
probe() {
    local deadline=$1 left rc=0 pid name
    shift
    left=$((deadline - SECONDS))
    ((left > 0)) || left=1
    printf '+ %s (at %ss)\n' "$*" "$((SECONDS - t0))" >>"$DIR/log/setup.log"
    timeout -k 5 "$left" "$@" </dev/null >>"$DIR/log/setup.log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        if name=$(daemon_died); then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            fail_start "$name exited"
        fi
        sleep 0.1
    done
    wait "$pid" || rc=$?
    return "$rc"
}

# wait_pool: ready once "rbd pool init" has written rbd_info. Its
# exit status is no proof: rbd 16.2 exits 0 when the pool's OSD ops time
# out. Ops queued for PGs the OSD is still creating just wait, so the first
# try normally succeeds.
wait_pool() {
    until probe "$DEADLINE" rbd -c "$CONF" pool init rbd &&
        probe "$DEADLINE" rados -c "$CONF" -p rbd stat rbd_info; do
        ((SECONDS < DEADLINE)) || fail_start "pool rbd not usable after ${TIMEOUT}s"
        sleep 1
    done
}

# set_deadline: DEADLINE for the pool to become usable.
set_deadline() {
    TIMEOUT=${UBLKD_CEPH_START_TIMEOUT:-120}
    [[ $TIMEOUT =~ ^[0-9]+$ ]] || die "UBLKD_CEPH_START_TIMEOUT=$TIMEOUT is not a number of seconds"
    DEADLINE=$((SECONDS + TIMEOUT))
}

need_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs it)"
    done
}

start_cluster() {
    set_deadline
    local port fsid
    need_tools ceph-mon ceph-osd ceph-authtool monmaptool osdmaptool ceph rbd rados setsid timeout
    prepare_dir
    port=$(pick_port)
    fsid=$(cat /proc/sys/kernel/random/uuid)
    progress "building in $DIR ($store), mon on 127.0.0.1:$port"
    write_conf "$port" "$fsid" "$store"
    make_keys
    make_maps "$port" "$fsid" || fail_start "making the maps"
    mkfs_osd &
    local mkfs_pid=$! pool_pid
    start_mon || { wait "$mkfs_pid" || true; fail_start "starting the mon"; }
    create_pool &
    pool_pid=$!
    wait "$mkfs_pid" || { wait "$pool_pid" || true; fail_start "making the OSD's BlueStore"; }
    progress "mon started, osd made"
    start_osd
    wait "$pool_pid" || fail_start "creating pool rbd"
    progress "pool created"
    wait_pool
    progress "pool rbd ready"
}

# --- resume -----------------------------------------------------------------

# conf_value KEY: KEY's value in ceph.conf, as write_conf wrote it.
conf_value() {
    sed -n "s/^$1 = //p" "$CONF" | head -n 1
}

# running_daemon: the name of a daemon of this cluster that runs, if any.
running_daemon() {
    local f pid
    for f in "$DIR"/*.pid; do
        [[ -e $f ]] || continue
        pid=$(cat "$f" 2>/dev/null) || continue
        [[ $pid =~ ^[0-9]+$ ]] && our_daemon "$pid" && { basename "$f" .pid; return 0; }
    done
    return 1
}

# A cluster that start built and stop stopped, here or wherever it was
# built: ceph.conf is written again for DIR (the mon's port and the fsid
# are in its stores, so they stay), then both daemons start at once (the
# OSD waits for the mon by itself). Ready means what it means for start:
# rbd_info can be read, which needs the pool's PGs active.
resume_cluster() {
    set_deadline
    need_tools ceph-mon ceph-osd rados setsid timeout
    [[ -e $DIR/$MARKER && -f $CONF && -d $DIR/mon.$MON_ID && -d $DIR/osd.$OSD_ID ]] ||
        die "$DIR holds no cluster built by 'cluster.sh start'"
    local name fsid host port
    if name=$(running_daemon); then
        die "$DIR: $name is running already (cluster.sh stop $DIR first)"
    fi
    fsid=$(conf_value fsid)
    host=$(conf_value mon_host)
    store=$(conf_value osd_objectstore)
    port=${host##*:}
    port=${port%]}
    [[ -n $fsid && $port =~ ^[0-9]+$ && -n $store ]] ||
        die "$CONF: no fsid, mon_host port or osd_objectstore in it"
    rm -f "$DIR"/*.pid "$DIR"/run/*.asok
    mkdir -p "$DIR/log" "$DIR/run" "$DIR/crash"
    write_conf "$port" "$fsid" "$store"
    progress "resuming in $DIR ($store), mon on 127.0.0.1:$port"
    spawn "mon.$MON_ID" ceph-mon -c "$CONF" -i "$MON_ID" -f
    start_osd
    until probe "$DEADLINE" rados -c "$CONF" -p rbd stat rbd_info; do
        ((SECONDS < DEADLINE)) || fail_start "pool rbd not usable after ${TIMEOUT}s"
        sleep 0.5
    done
    progress "pool rbd ready"
}

main() {
    COMMAND=${1:-}
    case $COMMAND in
        -h | --help) usage; exit 0 ;;
        start | resume)
            shift
            while (($#)); do
                case $1 in
                    -v | --verbose) verbose=1 ;;
                    --memstore) [[ $COMMAND == start ]] || bad_usage "--memstore is for start"; store=memstore ;;
                    -*) bad_usage "unknown option '$1'" ;;
                    *) break ;;
                esac
                shift
            done
            (($# == 1)) || bad_usage "$COMMAND takes one DIR"
            set_dir "$1"
            if [[ $COMMAND == start ]]; then start_cluster; else resume_cluster; fi
            ;;
        stop)
            shift
            (($# == 1)) || bad_usage "stop takes one DIR"
            set_dir "$1"
            [[ -d $DIR ]] || exit 0
            stop_cluster
            ;;
        '') bad_usage "no command" ;;
        *) bad_usage "unknown command '$1'" ;;
    esac
}

main "$@"
