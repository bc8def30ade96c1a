#!/bin/bash
# Long verification: for several minutes, fio writes mixed block sizes
# (512 B to 1 MiB) at random with crc32c headers and reads every block back
# while it writes (verify_backlog), on a mem and a file device with two
# queues each, four jobs per device, then verifies everything once more.
# vm-tier: full
# vm-timeout: 900
. "${BASH_SOURCE%/*}/../lib.sh"

cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"
mdev=$(ctl_ok add lv0 --backend mem --size 256MiB --queues 2)
fdev=$(ctl_ok add lv1 --backend file --path "$CASE_DIR/lv1.img" --size 256MiB --create --queues 2)

pids=()
for dev in "$mdev" "$fdev"; do
    out=$CASE_DIR/fio.${dev##*/}
    fio --name=long --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite \
        --bssplit=512/10:4k/40:16k/20:64k/15:256k/10:1M/5 --blockalign=512 --iodepth=16 \
        --numjobs=4 --size=64M --offset_increment=64M --verify=crc32c --verify_backlog=64 \
        --verify_fatal=1 --do_verify=1 --time_based --runtime=240 --group_reporting \
        >"$out" 2>&1 &
    pids+=($!)
    add_cleanup "kill -KILL $! 2>/dev/null || true"
done
for i in "${!pids[@]}"; do
    rc=0
    wait "${pids[i]}" || rc=$?
    dev=$mdev
    ((i == 1)) && dev=$fdev
    out=$CASE_DIR/fio.${dev##*/}
    if ((rc != 0)) || grep -qE 'err= *[1-9]|verify: bad' "$out"; then
        cat "$out" >&2
        fail "long verify on $dev failed (status $rc)"
    fi
    grep -E '^ *(write|read):' "$out" >&2 || true
done
ctl_ok del lv0 >/dev/null
ctl_ok del lv1 >/dev/null
stop_ublkd 30
assert_no_ublk_devices
log "long verify passed"
