#!/bin/bash
# `ublkctl upgrade` twice under fio, on a mem device and on a file device
# over a device-mapper delay target (every request takes 200 ms, so dozens
# are in flight whenever the upgrade comes). Where the kernel offers
# UBLK_F_QUIESCE (7.2) both devices are granted it, and the old ublkd
# answers every request it holds before it exits: its log counts those of
# the slow device (more than 0) and leaves 0 for the next ublkd. Where it
# does not (6.12) the devices are handed over as they run and the kernel
# sends the slow device's requests in flight (more than 0) to the next
# ublkd again. Either way fio's crc32c verify passes, with no I/O error,
# and the new ublkd recovers both devices. The daemon's "batch_io": false
# (the default) is stated: a device with batched io commands is never
# quiesced (108-batch-io).
# vm-timeout: 200
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd fio jq dmsetup

dmesg_from=$(dmesg | wc -l)
cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
echo '{"batch_io": false}' >"$cfg/ublkd.json"
start_ublkd_api "$cfg"
offered=$(offered QUIESCE)
export DM_DISABLE_UDEV=1 # no udev in this VM: dmsetup makes the nodes itself
modprobe dm_delay || fail "cannot load dm_delay"
load_module brd rd_nr=1 rd_size=$((64 * 1024))
add_cleanup "rmmod brd"
echo "0 $((64 << 11)) delay /dev/ram0 0 200" | dmsetup create slow || fail "dmsetup create failed"
add_cleanup "dmsetup remove --retry slow 2>/dev/null || true"
[[ -b /dev/mapper/slow ]] || fail "/dev/mapper/slow did not appear"

ctl_ok add m0 --backend mem --size 64MiB --queues 2 >/dev/null
ctl_ok add f0 --backend file --path /dev/mapper/slow --queues 2 >/dev/null
for name in m0 f0; do
    granted=$(json_get "$(ctl_ok --json info $name)" '.kernel_flag_names | index("QUIESCE") != null')
    [[ $granted == "$offered" ]] || fail "kernel offers QUIESCE: $offered, $name was granted it: $granted"
done
devm=/dev/ublkb$(json_get "$(ctl_ok --json info m0)" .id)
devf=/dev/ublkb$(json_get "$(ctl_ok --json info f0)" .id)

out=$CASE_DIR/fio.out
# Each writer is held to 1500 writes/s of 4-64 KiB, so it lasts several
# seconds past both upgrades; every block is checked at the end.
fio --direct=1 --ioengine=io_uring --bsrange=4k-64k --rw=randwrite --iodepth=32 \
    --size=48M --rate_iops=1500 --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --name=mem --filename="$devm" --name=file --filename="$devf" >"$out" 2>&1 &
fio_pid=$!
add_cleanup "kill -KILL $fio_pid 2>/dev/null || true"
for dev in "$devm" "$devf"; do
    wait_dev_writes "$dev" 256 "$fio_pid" 20 || { cat "$out" >&2; fail "fio did not start writing to $dev"; }
done

for round in 1 2; do
    for dev in "$devm" "$devf"; do
        w0=$(dev_writes "$dev")
        wait_dev_writes "$dev" $((w0 + 16)) "$fio_pid" 5 ||
            { cat "$out" >&2; fail "round $round: fio was not writing to $dev before the upgrade"; }
    done
    old_log=$UBLKD_LOG
    answer=$(ctl_ok upgrade)
    log "round $round: $answer"
    rc=0
    wait "$UBLKD_PID" || rc=$?
    ((rc == 75)) || { show_log "$old_log"; fail "ublkd exited with $rc after upgrade, want 75"; }
    for name in m0 f0; do
        if [[ $offered == true ]]; then
            line=$(grep -E "device $name: quiesced for the hand-over: [0-9]+ request\(s\) in flight answered, 0 left for the next ublkd \([0-9]+ served in all\)" "$old_log") ||
                { show_log "$old_log"; fail "round $round: $name not quiesced with nothing left"; }
            n=$(grep -oE '[0-9]+ served' <<<"$line" | grep -oE '[0-9]+')
            ((n > 0)) || fail "round $round: $name served no request before the hand-over: $line"
        else
            line=$(grep -E "device $name: handed over as it runs \(no UBLK_F_QUIESCE\): [0-9]+ request\(s\) in flight go to the next ublkd again" "$old_log") ||
                { show_log "$old_log"; fail "round $round: no hand-over line for $name"; }
        fi
        log "round $round: ${line#* device }"
        if [[ $name == f0 ]]; then
            n=$(grep -oE '[0-9]+ request\(s\) in flight' <<<"$line" | grep -oE '^[0-9]+')
            ((n > 0)) || fail "round $round: nothing in flight on the slow device at the hand-over: $line"
        fi
    done
    ublkd_alive "$fio_pid" || { cat "$out" >&2; fail "fio ended during round $round"; }
    start_ublkd_api "$cfg"
    for name in m0 f0; do
        wait_for_log "device $name recovered: live again at /dev/ublkb[0-9]+" 30 >/dev/null
    done
    ((round == 1)) && sleep_ms "$(rand_ms 300 800)"
done

fio_passed "$fio_pid" "$out" "across two upgrades"
if dmesg | tail -n +$((dmesg_from + 1)) | grep -E "I/O error, dev ublkb" >&2; then
    fail "the kernel logged I/O errors on a ublk device"
fi
stop_ublkd 20
assert_no_ublk_devices
log "two upgrades under fio passed (quiesce offered: $offered)"
