#!/bin/bash
# I/O errors of the backing store reach the application as EIO, never as a
# hang or a false success, and the device goes on serving the good ranges.
# The store is a device-mapper device over a RAM disk with a 1 MiB `error`
# target in the middle; file devices over it, direct and buffered. Then the
# whole store fails for a while (its table replaced by `error`, as a dying
# disk) and comes back: the same ublk device serves again without a
# restart. Last, a mem device whose memory runs out (its tmpfs full): its
# writes fail with ENOSPC, the daemon lives on, and a discard frees space.
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../lib.sh"

export DM_DISABLE_UDEV=1 # no udev in this VM: dmsetup makes the nodes itself
modprobe dm_mod || fail "cannot load dm_mod"
load_module brd rd_nr=1 rd_size=65536 # 64 MiB
add_cleanup "rmmod brd"
add_cleanup "rmmod dm_mod 2>/dev/null || true"

sectors=$((64 << 11))
bad_from=$((16 << 11)) bad_len=$((1 << 11)) # 1 MiB at 16 MiB
good_table() { echo "0 $sectors linear /dev/ram0 0"; }
holed_table() {
    echo "0 $bad_from linear /dev/ram0 0"
    echo "$bad_from $bad_len error"
    echo "$((bad_from + bad_len)) $((sectors - bad_from - bad_len)) linear /dev/ram0 $((bad_from + bad_len))"
}
holed_table | dmsetup create store || fail "dmsetup create failed"
add_cleanup "dmsetup remove --retry store 2>/dev/null || true"
store=/dev/mapper/store
[[ -b $store ]] || fail "$store did not appear"

cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"

# Direct I/O: every request reaches the store.
dev=$(ctl_ok add de --backend file --path "$store" --queues 2)
fio_verify "$dev" --size=16M --offset=0
must_fail_eio "read of the bad range" dd if="$dev" of=/dev/null bs=4k skip=$((bad_from / 8)) count=16 iflag=direct
must_fail_eio "write to the bad range" dd if=/dev/zero of="$dev" bs=4k seek=$((bad_from / 8 + 4)) count=1 oflag=direct
must_fail_eio "fio across the bad range" fio --name=x --filename="$dev" --direct=1 --ioengine=io_uring \
    --rw=randread --bs=64k --iodepth=8 --offset=15M --size=3M --number_ios=512
# A request straddling the edge fails as a whole: a 64 KiB read ending inside
# the bad range.
must_fail_eio "read straddling into the bad range" dd if="$dev" of=/dev/null bs=64k \
    skip=$((bad_from * 512 / 65536 - 1)) count=2 iflag=direct
fio_verify "$dev" --size=40M --offset=20M
[[ $(json_get "$(ctl_ok --json info de)" .state) == live ]] || fail "de is not live after the errors"

# The whole store fails, then comes back.
{ dmsetup suspend store && echo "0 $sectors error" | dmsetup reload store && dmsetup resume store; } ||
    fail "cannot switch the store to error"
must_fail_eio "read while the store is failing" dd if="$dev" of=/dev/null bs=4k count=8 iflag=direct
must_fail_eio "write while the store is failing" dd if=/dev/zero of="$dev" bs=4k count=8 oflag=direct
{ good_table | dmsetup reload store && dmsetup suspend store && dmsetup resume store; } ||
    fail "cannot switch the store back"
fio_verify "$dev" --size=32M --offset=0
log "the same device serves again after the store came back"
ctl_ok del de >/dev/null

# Buffered: a write lands in the page cache of the store, and the error
# comes with the flush that should have made it durable.
{ holed_table | dmsetup reload store && dmsetup suspend store && dmsetup resume store; } ||
    fail "cannot put the bad range back"
echo 3 >/proc/sys/vm/drop_caches
dev=$(ctl_ok add bu --backend file --path "$store" --buffered --queues 1)
must_fail_eio "read of the bad range (buffered)" dd if="$dev" of=/dev/null bs=4k skip=$((bad_from / 8)) count=4 iflag=direct
must_fail_eio "write + fsync to the bad range (buffered)" dd if=/dev/urandom of="$dev" bs=4k \
    seek=$((bad_from / 8 + 8)) count=4 oflag=direct conv=fsync
fio_verify "$dev" --size=8M --offset=0 --fsync=16
ctl_ok del bu >/dev/null

ublkd_alive || fail "ublkd died"
stop_ublkd 30

# A mem device whose memory lives on a tmpfs that fills up (its state dir,
# as outside systemd): writes beyond the space fail with ENOSPC, nothing
# crashes, what was written stays, and discarding gives the space back.
small=$CASE_DIR/small
mkdir -p "$small"
mount -t tmpfs -o size=8m tmpfs "$small"
add_cleanup "umount $small 2>/dev/null || true"
export UBLKD_SOCKET=$small/ublkd.sock
start_ublkd "$cfg" --socket "$UBLKD_SOCKET" --state-dir "$small/state"
wait_for_log "admin socket $UBLKD_SOCKET" 20 >/dev/null
dev=$(ctl_ok add thin --backend mem --size 64MiB --queues 1)
dd if=/dev/urandom of="$CASE_DIR/head" bs=1M count=4 status=none
dd if="$CASE_DIR/head" of="$dev" bs=1M oflag=direct status=none || fail "the first 4 MiB did not fit"
rc=0
dd if=/dev/urandom of="$dev" bs=1M seek=8 count=16 oflag=direct status=none 2>"$CASE_DIR/full.err" || rc=$?
((rc != 0)) || fail "16 MiB more fit into an 8 MiB tmpfs"
grep -q 'No space left on device' "$CASE_DIR/full.err" ||
    { cat "$CASE_DIR/full.err" >&2; fail "writing past the space did not fail with ENOSPC"; }
log "writing past the space: $(<"$CASE_DIR/full.err")"
ublkd_alive || fail "ublkd died when its memory ran out"
cmp -n $((4 << 20)) "$CASE_DIR/head" "$dev" || fail "the data written before the space ran out changed"
blkdiscard -o $((8 << 20)) -l $((16 << 20)) "$dev" || fail "discard failed"
dd if=/dev/urandom of="$dev" bs=1M seek=40 count=2 oflag=direct status=none ||
    fail "writing after the discard gave the space back failed"
ctl_ok del thin >/dev/null
stop_ublkd 30
assert_no_ublk_devices
log "backend I/O errors reached the application as EIO (ENOSPC for memory that ran out)"
