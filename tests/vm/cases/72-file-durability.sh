#!/bin/bash
# Acknowledged writes are in the backing file even when ublkd dies without a
# chance to clean up: random data goes through two file devices (O_DIRECT on
# ext4, buffered on tmpfs), `sync`, then SIGKILL. The files then hold exactly
# the data written, a new daemon can serve them again at once (the lock died
# with the process) and reads back the same bytes.
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd mkfs.ext4 jq sha256sum dd ublkd-del-dev

mnt=$CASE_DIR/ext4
ext4_on_ram_disk "$mnt" 128
cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
start_ublkd_api "$cfg"

declare -A img=([de]=$mnt/de.img [db]=$CASE_DIR/db.img)
declare -A dev=() id=()
dev[de]=$(ctl_ok add de --backend file --path "${img[de]}" --create --size 64MiB --queues 2)
dev[db]=$(ctl_ok add db --backend file --path "${img[db]}" --create --size 64MiB --queues 2 --buffered)
for n in de db; do id[$n]=${dev[$n]#/dev/ublkb}; done
# Whatever happens below, the kernel devices of the killed daemon go.
dead_ids=()
# Single quotes: the list is read when the cleanup runs, not now.
# shellcheck disable=SC2016
add_cleanup '((${#dead_ids[@]} == 0)) || ublkd-del-dev "${dead_ids[@]}"'

# 40 MiB of random data at 8 MiB, in writes of mixed sizes, plus a small
# write at the very end.
dd if=/dev/urandom of="$CASE_DIR/data" bs=1M count=40 status=none
dd if=/dev/urandom of="$CASE_DIR/tail" bs=4k count=1 status=none
want=$(sha256sum <"$CASE_DIR/data")
want_tail=$(sha256sum <"$CASE_DIR/tail")
for n in de db; do
    dd if="$CASE_DIR/data" of="${dev[$n]}" bs=1M seek=8 count=24 oflag=direct status=none
    dd if="$CASE_DIR/data" of="${dev[$n]}" bs=64k skip=384 seek=512 oflag=direct status=none
    dd if="$CASE_DIR/tail" of="${dev[$n]}" bs=4k seek=$((64 * 256 - 1)) oflag=direct status=none
done
sync
log "data written and synced; killing ublkd with SIGKILL"
dead_ids=("${id[de]}" "${id[db]}")
kill -KILL "$UBLKD_PID"
wait "$UBLKD_PID" 2>/dev/null || true

check_file() {
    local f=$1 got
    got=$(dd if="$f" bs=1M skip=8 count=40 status=none | sha256sum)
    [[ $got == "$want" ]] || fail "$f does not hold the 40 MiB written at 8 MiB"
    got=$(dd if="$f" bs=4k skip=$((64 * 256 - 1)) count=1 status=none | sha256sum)
    [[ $got == "$want_tail" ]] || fail "$f does not hold the last block written"
}
for n in de db; do check_file "${img[$n]}"; done
log "backing files hold exactly the data written"

# The killed daemon's devices are dead; remove them, then a new daemon serves
# the same files, and the devices read back the same data.
ublkd-del-dev "${dead_ids[@]}" || fail "could not delete the dead devices"
dead_ids=()
start_ublkd_api "$cfg"
for n in de db; do
    opts=()
    [[ $n == db ]] && opts=(--buffered)
    dev[$n]=$(ctl_ok add "$n" --backend file --path "${img[$n]}" --queues 2 "${opts[@]}")
    got=$(dd if="${dev[$n]}" bs=1M skip=8 count=40 iflag=direct status=none | sha256sum)
    [[ $got == "$want" ]] || fail "$n does not read back the data after the restart"
done
ctl_ok del de >/dev/null
ctl_ok del db >/dev/null
stop_ublkd 20
assert_no_ublk_devices
log "durability passed"
