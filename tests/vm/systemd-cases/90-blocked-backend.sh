#!/bin/bash
# A backend that stops answering: a file device whose file lives on a
# device-mapper device that is suspended (its I/O queued, never answered)
# while a reader waits on it. Meanwhile another device keeps serving fio,
# the admin API answers, and systemd's watchdog (WatchdogSec=10) sees its
# pings: no restart over more than a watchdog period. `ublkctl del --force` of the
# stuck device answers within a bound and its reader gets EIO; SIGTERM
# removes the other device and ublkd finishes; once the store answers
# again, the process ends and nothing is left. The store stays blocked for well under the hung-task timeout (60 s),
# which would otherwise report the tasks that wait on it.
# vm-timeout: 240
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

require_unit ublkd.service
modprobe brd rd_nr=1 rd_size=131072 || fail "cannot load brd" # 128 MiB
modprobe dm_mod || fail "cannot load dm_mod"
echo "0 $((128 << 11)) linear /dev/ram0 0" | dmsetup create slowstore || fail "dmsetup create failed"
mnt=/var/lib/ublkd/slow
mkdir -p "$mnt"
mkfs.ext4 -q -F /dev/mapper/slowstore
mount /dev/mapper/slowstore "$mnt"
add_cleanup "rmmod brd 2>/dev/null || true"
add_cleanup "dmsetup remove --retry slowstore 2>/dev/null || true"
add_cleanup "umount $mnt 2>/dev/null || true"
add_cleanup "dmsetup resume slowstore 2>/dev/null || true"
add_cleanup "systemctl stop ublkd.service; systemctl reset-failed ublkd.service 2>/dev/null || true"

systemctl start ublkd.service || { show_unit ublkd.service; fail "start ublkd failed"; }
pid=$(unit_prop ublkd.service MainPID)
stuck=$(ublkctl add stuck --backend file --path "$mnt/stuck.img" --size 64MiB --create --queues 1) ||
    fail "add stuck failed"
fine=$(ublkctl add fine --backend mem --size 64MiB --queues 1) || fail "add fine failed"
dd if=/dev/urandom of="$stuck" bs=1M count=8 oflag=direct status=none || fail "stuck does not take writes yet"

fio --name=fine --filename="$fine" --direct=1 --ioengine=io_uring --rw=randrw --bs=4k --iodepth=16 \
    --verify=crc32c --verify_backlog=64 --verify_fatal=1 --size=32M --time_based --runtime=600 \
    >"$CASE_DIR/fio.fine" 2>&1 &
fio_fine=$!
add_cleanup "kill -KILL $fio_fine 2>/dev/null || true"
wait_dev_writes "$fine" 256 "$fio_fine" 20 || { cat "$CASE_DIR/fio.fine" >&2; fail "fio on fine did not start"; }

# The store stops answering; a reader then waits on the stuck device (fio
# through io_uring: it waits without sleeping uninterruptibly).
dmsetup suspend --nolockfs slowstore || fail "cannot suspend the store"
t_block=${EPOCHREALTIME/./}
fio --name=stuck --filename="$stuck" --direct=1 --ioengine=io_uring --rw=randread --bs=4k --iodepth=4 \
    --size=8M --number_ios=64 >"$CASE_DIR/fio.stuck" 2>&1 &
fio_stuck=$!
add_cleanup "kill -KILL $fio_stuck 2>/dev/null || true"

# 12 s, more than the watchdog period: fine serves, the API answers.
for i in {1..6}; do
    w0=$(dev_writes "$fine")
    wait_dev_writes "$fine" $((w0 + 32)) "$fio_fine" 5 ||
        { cat "$CASE_DIR/fio.fine" >&2; fail "fine stopped serving while the store was blocked (round $i)"; }
    timeout 3 ublkctl list >/dev/null || fail "ublkctl list did not answer within 3 s (round $i)"
    sleep 2
done
ublkd_alive "$fio_stuck" || { cat "$CASE_DIR/fio.stuck" >&2; fail "the reader of stuck ended: the store was not blocked"; }
[[ $(unit_prop ublkd.service MainPID) == "$pid" ]] || fail "ublkd was restarted while the store was blocked"
[[ $(unit_prop ublkd.service NRestarts) == 0 ]] || fail "ublkd has restarts"
if unit_journal ublkd.service | grep -qi "watchdog timeout"; then fail "systemd's watchdog fired"; fi
log "12 s blocked: fine served, the API answered, no watchdog timeout"

# del of the stuck device is bounded: the requests the backend does not
# answer are failed after a grace (3 s), the sync gives up after 10 s, and
# the answer says why.
t0=${EPOCHREALTIME/./}
rc=0
timeout 40 ublkctl del --force stuck >"$CASE_DIR/del.out" 2>&1 || rc=$?
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
log "del stuck: status $rc after $ms ms: $(<"$CASE_DIR/del.out")"
((rc != 124)) || fail "ublkctl del of the stuck device hung"
((ms <= 25000)) || fail "del of the stuck device took $ms ms (limit 25000)"
grep -q "unanswered" "$CASE_DIR/del.out" || fail "del does not say that the backend left requests unanswered"
t0=${EPOCHREALTIME/./}
while ublkd_alive "$fio_stuck"; do
    ((${EPOCHREALTIME/./} - t0 < 5000000)) || fail "the reader of stuck still waits 5 s after the del"
    sleep 0.1
done
rc=0
wait "$fio_stuck" || rc=$?
((rc != 0)) || fail "the reader of stuck ended without an error"
grep -q 'Input/output error' "$CASE_DIR/fio.stuck" || { cat "$CASE_DIR/fio.stuck" >&2; fail "the reader of stuck did not get EIO"; }
timeout 3 ublkctl list >/dev/null || fail "ublkctl list did not answer after the del"
w0=$(dev_writes "$fine")
wait_dev_writes "$fine" $((w0 + 32)) "$fio_fine" 5 || fail "fine stopped serving after the del"

# SIGTERM: ublkd removes fine and finishes within a bound; its process ends
# once the kernel lets go of it, when the store answers again (a task with
# I/O in flight on a store that does not answer cannot end before).
kill -INT "$fio_fine" 2>/dev/null
wait "$fio_fine" 2>/dev/null || true
systemctl stop --no-block ublkd.service
wait_unit_log ublkd.service 'ublkd exiting' 20 >/dev/null
[[ ! -e $fine ]] || fail "$fine still exists after the stop"
blocked_ms=$(((${EPOCHREALTIME/./} - t_block) / 1000))
log "the store was blocked for $blocked_ms ms; resuming it"
dmsetup resume slowstore || fail "cannot resume the store"
# The unit ends failed: ublkd's exit status says that the stuck device was
# not stopped cleanly.
t0=${EPOCHREALTIME/./}
until [[ $(unit_prop ublkd.service ActiveState) == @(inactive|failed) ]]; do
    ((${EPOCHREALTIME/./} - t0 < 30000000)) || { show_unit ublkd.service; fail "ublkd did not end within 30 s of the store's return"; }
    sleep 0.2
done
unit_journal ublkd.service | grep -q "exiting with status 1: 1 device(s) not stopped and deleted cleanly: stuck" ||
    { show_unit ublkd.service; fail "ublkd's exit does not name the device it could not stop cleanly"; }
log "ublkd ended $(((${EPOCHREALTIME/./} - t0) / 1000)) ms after the store came back"
assert_no_ublk_devices 20
log "a blocked backend stayed contained"
