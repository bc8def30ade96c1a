#!/bin/bash
# Writeback under memory pressure does not deadlock: a writer confined to a
# memory cgroup with memory.max far below what it writes fills an ext4 on a
# ublk device with buffered writes, so its page cache is reclaimed through
# writeback to that device while it keeps dirtying more. Twice: on a mem
# device with ublkd outside the cgroup, and on a buffered file device with
# ublkd itself in a cgroup that holds the daemon and its buffers but not the
# backing file's page cache (its queue threads then reclaim while they
# serve the writeback that reclaim waits for: what PR_SET_IO_FLUSHER is
# for). The writer and sync must finish in bounded
# time and the data read back after dropping the caches must match.
# vm-timeout: 300
. "${BASH_SOURCE%/*}/../lib.sh"

cg=/sys/fs/cgroup
if [[ ! -e $cg/cgroup.controllers ]]; then
    mkdir -p "$cg"
    mount -t cgroup2 none "$cg" || fail "cannot mount cgroup2"
    add_cleanup "umount $cg 2>/dev/null || true"
fi
grep -qw memory "$cg/cgroup.controllers" || fail "no memory controller in cgroup2"
echo +memory >"$cg/cgroup.subtree_control"

# make_cgroup NAME MAX: a cgroup with memory.max MAX (no swap here).
make_cgroup() {
    mkdir -p "$cg/$1"
    echo "$2" >"$cg/$1/memory.max"
    add_cleanup "rmdir $cg/$1 2>/dev/null || true"
}

# pressure_round DEV MIB: ext4 on DEV, MIB MiB written by a writer in cgroup
# "writer", synced, read back after drop_caches.
pressure_round() {
    local dev=$1 mib=$2 mnt=$CASE_DIR/mnt rc=0 t0 ms
    mkfs.ext4 -q -F "$dev"
    mkdir -p "$mnt"
    mount -t ext4 "$dev" "$mnt"
    add_cleanup "umount $mnt 2>/dev/null || true"
    dd if=/dev/urandom of="$CASE_DIR/pattern" bs=1M count=8 status=none
    t0=${EPOCHREALTIME/./}
    # Buffered writes of the same 8 MiB pattern over and over, then sync;
    # the shell in the cgroup is the writer.
    timeout 200 bash -c '
        echo $$ >'"$cg"'/writer/cgroup.procs || exit 9
        for ((i = 0; i < '"$((mib / 8))"'; i++)); do
            cat '"$CASE_DIR"'/pattern || exit 8
        done >'"$mnt"'/big
        sync '"$mnt"'/big
    ' || rc=$?
    ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
    ((rc == 0)) || fail "the writer in the cgroup failed or hung (status $rc after $ms ms)"
    log "$mib MiB written and synced through a $(<"$cg/writer/memory.max")-byte cgroup in $ms ms" \
        "(memory.events: $(tr '\n' ' ' <"$cg/writer/memory.events"))"
    # The cgroup was really pressed: its limit was hit.
    local max_events
    max_events=$(awk '$1 == "max" { print $2 }' "$cg/writer/memory.events")
    ((max_events > 0)) || fail "the writer's cgroup never reached memory.max; the case tested nothing"
    umount "$mnt"
    echo 3 >/proc/sys/vm/drop_caches
    mount -t ext4 "$dev" "$mnt"
    local want got
    want=$(for ((i = 0; i < mib / 8; i++)); do cat "$CASE_DIR/pattern"; done | sha256sum)
    got=$(sha256sum <"$mnt/big")
    [[ $got == "$want" ]] || fail "the file read back differs from what was written"
    umount "$mnt"
}

cfg=$CASE_DIR/config
mkdir -p "$cfg"
make_cgroup writer 24M

# Round 1: mem device, ublkd unconfined.
start_ublkd_api "$cfg"
dev=$(ctl_ok add mp0 --backend mem --size 512MiB)
pressure_round "$dev" 256
ctl_ok del mp0 >/dev/null
stop_ublkd 20

# Round 2: ublkd in its own tight cgroup, a buffered file device on ext4 on
# a RAM disk: the backing file's page cache is ublkd's to reclaim.
ext4_on_ram_disk "$CASE_DIR/store" 512
# The writer gets more room here: this round presses ublkd, and a writer
# squeezed as hard as in round 1 behind a throttled writeback is OOM-killed
# by its own cgroup (its dirty pages cannot be cleaned as fast as it makes
# them), which is the kernel's memcg policy, not a hang. 64 MiB was seen
# too little once on 7.2 with the other kernel's VM beside it (ext4's
# journal allocates with __GFP_NOFAIL in the writer's cgroup).
echo 128M >"$cg/writer/memory.max"
# Room for the daemon itself and its tag buffers (one queue of 128 x
# 512 KiB, docs/configuration.md), not for the backing file's page cache:
# that must be reclaimed while the device serves. The daemon's share
# includes what its network backends' client libraries allocate when they
# load (librados and librbd: about 4 MiB).
make_cgroup daemon 104M
echo $$ >"$cg/daemon/cgroup.procs"
start_ublkd_api "$cfg"
echo $$ >"$cg/cgroup.procs"
grep -qx "$UBLKD_PID" "$cg/daemon/cgroup.procs" || fail "ublkd is not in its cgroup"
dev=$(ctl_ok add mp1 --backend file --path "$CASE_DIR/store/mp1.img" --size 400MiB --create --buffered)
pressure_round "$dev" 256
log "ublkd's cgroup: $(tr '\n' ' ' <"$cg/daemon/memory.events")"
ublkd_alive || fail "ublkd died in its cgroup"
[[ $(awk '$1 == "oom_kill" { print $2 }' "$cg/daemon/memory.events") == 0 ]] || fail "the OOM killer struck in ublkd's cgroup"
(($(awk '$1 == "max" { print $2 }' "$cg/daemon/memory.events") > 0)) ||
    fail "ublkd's cgroup never reached memory.max; round 2 tested nothing"
ctl_ok del mp1 >/dev/null
stop_ublkd 20
assert_no_ublk_devices
log "memory pressure passed"
