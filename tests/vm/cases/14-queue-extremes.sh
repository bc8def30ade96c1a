#!/bin/bash
# Queue layouts at their limits, each with verified I/O: one queue of depth
# 1 under iodepth 32 (the kernel queues what does not fit), depth 4096 (the
# most the kernel takes) filled by 2 x iodepth 1024, 64 queues asked for on
# a 2-CPU VM (the kernel grants at most one per CPU: the device must come
# up with what it got and say so), and requests of the device's largest
# size (1 MiB and 4 MiB application writes, split by the kernel at the
# device's max_sectors).
# vm-timeout: 300
# vm-tier: full (a minute per kernel; the quick tier keeps the default layouts only)
. "${BASH_SOURCE%/*}/../lib.sh"

cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"

# granted_queues DEV: hardware queues the block layer has for DEV.
granted_queues() { compgen -G "/sys/block/${1#/dev/}/mq/*" | wc -l; }

# Depth 1: every request waits for the one tag.
d1=$(ctl_ok add d1 --backend mem --size 64MiB --queues 1 --depth 1)
[[ $(<"/sys/block/${d1#/dev/}/queue/nr_requests") == 1 ]] || fail "$d1: nr_requests is not 1"
fio_verify "$d1" --size=32M --iodepth=32 --bssplit=4k/50:64k/30:256k/20 --numjobs=1
ctl_ok del d1 >/dev/null

# Depth 4096 on mem and file.
d4k=$(ctl_ok add d4k --backend mem --size 256MiB --queues 1 --depth 4096)
f4k=$(ctl_ok add f4k --backend file --path "$CASE_DIR/f4k.img" --size 256MiB --create --queues 2 --depth 4096)
for dev in "$d4k" "$f4k"; do
    [[ $(<"/sys/block/${dev#/dev/}/queue/nr_requests") == 4096 ]] || fail "$dev: nr_requests is not 4096"
    fio_verify "$dev" --size=32M --iodepth=1024 --numjobs=2 --offset_increment=128M \
        --bs=4k --iodepth_batch_submit=256 --group_reporting
done
ctl_ok del d4k >/dev/null
ctl_ok del f4k >/dev/null

# 64 queues asked for; 2 CPUs here.
cpus=$(nproc)
q64=$(ctl_ok add q64 --backend mem --size 64MiB --queues 64 --depth 64)
got=$(granted_queues "$q64")
listed=$(json_get "$(ctl_ok --json list)" '.[] | select(.name == "q64") | .queues')
log "64 queues asked, $cpus CPUs: the block layer has $got, ublkd lists $listed"
((got >= 1 && got <= 64)) || fail "$q64 has $got hardware queues"
[[ $listed == "$got" ]] || fail "ublkd lists $listed queues for q64, the kernel has $got"
if ((got < 64)); then
    grep -q "device q64: kernel granted $got queues" "$UBLKD_LOG" ||
        fail "ublkd did not say that the kernel granted fewer queues"
fi
fio_verify "$q64" --size=16M --iodepth=16 --numjobs=4 --offset_increment=16M --group_reporting
ctl_ok del q64 >/dev/null

# The largest requests, on mem and on an O_DIRECT file.
big=$(ctl_ok add big --backend mem --size 256MiB --queues 1)
bigf=$(ctl_ok add bigf --backend file --path "$CASE_DIR/big.img" --size 256MiB --create --queues 1)
for dev in "$big" "$bigf"; do
    max_kb=$(<"/sys/block/${dev#/dev/}/queue/max_sectors_kb")
    ((max_kb >= 512)) || fail "$dev: max_sectors_kb is $max_kb, want at least 512"
    for bs in 1M 4M; do
        read -r -a s0 <"/sys/block/${dev#/dev/}/stat"
        fio_verify "$dev" --size=64M --bs="$bs" --iodepth=8 --rw=write
        read -r -a s1 <"/sys/block/${dev#/dev/}/stat"
        writes=$((s1[4] - s0[4]))
        sectors=$((s1[6] - s0[6]))
        ((writes > 0)) || fail "$dev: no writes counted"
        avg_kb=$((sectors / 2 / writes))
        log "$dev bs=$bs: $writes writes of $avg_kb KiB on average (max_sectors_kb $max_kb)"
        # Sequential writes of bs >= max are cut at max_sectors (merging
        # may join them back up to that): the device saw requests of its
        # largest size.
        ((avg_kb * 10 >= max_kb * 9)) || fail "$dev bs=$bs: average request $avg_kb KiB, want about $max_kb"
    done
done
ctl_ok del big >/dev/null
ctl_ok del bigf >/dev/null

stop_ublkd 30
assert_no_ublk_devices
log "queue extremes passed"
