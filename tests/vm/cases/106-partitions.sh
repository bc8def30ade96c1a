#!/bin/bash
# Partitions and block sizes. A GPT written on a file device makes
# /dev/ublkbNp1 and p2 appear; verified I/O and ext4 work on them; `del`
# works while they exist; re-added, the device shows them again from its
# partition scan at start. With "partition_scan": false the kernel shows
# none where it offers UBLK_F_NO_AUTO_PART_SCAN (7.2); where it does not
# (6.12) the device is refused with a message naming the flag and leaves
# nothing behind. A device of 4096-byte blocks passes a verified fio run
# and refuses 512-byte direct I/O.
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd sgdisk fio mkfs.ext4 jq

cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"

offered=$(offered NO_AUTO_PART_SCAN)

# wait_for_node PATH SECS: PATH appears (devtmpfs) within SECS.
wait_for_node() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        [[ -b $1 ]] && return 0
        sleep 0.1
    done
    return 1
}

img=$CASE_DIR/p0.img
p0=$(ctl_ok add p0 --backend file --path "$img" --size 64MiB --create --buffered)
sgdisk -n 1:2048:+16M -n 2:0:0 "$p0" >"$CASE_DIR/sgdisk.log" 2>&1 ||
    { cat "$CASE_DIR/sgdisk.log" >&2; fail "sgdisk failed on $p0"; }
wait_for_node "${p0}p1" 5 || fail "${p0}p1 did not appear"
wait_for_node "${p0}p2" 5 || fail "${p0}p2 did not appear"
fio_verify "${p0}p1" --size=8M --bs=4k --iodepth=16
mkfs.ext4 -q -F "${p0}p2"
mnt=$CASE_DIR/mnt
mkdir -p "$mnt"
mount "${p0}p2" "$mnt"
dd if=/dev/urandom of="$mnt/f" bs=1M count=8 status=none
(cd "$mnt" && sha256sum f >"$CASE_DIR/sums")
umount "$mnt"
# The partitions are the device's: past p1's end, p2 starts.
(($(blockdev --getsize64 "${p0}p1") == 16 << 20)) || fail "${p0}p1 is not 16 MiB"
ctl_ok del p0 >/dev/null
[[ ! -e ${p0}p1 && ! -e $p0 ]] || fail "$p0 or its partitions outlived del"
log "del with partitions present: done"

# Added again: the kernel's scan at start finds the table.
p0=$(ctl_ok add p0 --backend file --path "$img" --buffered)
wait_for_node "${p0}p2" 5 || fail "the partitions did not come back with the device"
mount "${p0}p2" "$mnt"
(cd "$mnt" && sha256sum -c --quiet "$CASE_DIR/sums") || fail "ext4 on p2 changed"
umount "$mnt"
ctl_ok del p0 >/dev/null

if [[ $offered == true ]]; then
    p0=$(ctl_ok add p0 --backend file --path "$img" --buffered --no-partition-scan)
    [[ $(json_get "$(ctl_ok --json info p0)" .partition_scan) == false ]] ||
        fail "info does not show partition_scan false"
    sleep 1
    [[ ! -e ${p0}p1 ]] || fail "${p0}p1 appeared although partition_scan is false"
    log "no partitions with partition_scan false"
    ctl_ok del p0 >/dev/null
else
    err=$(ctl_err add p0 --backend file --path "$img" --buffered --no-partition-scan)
    [[ $err == *"[kernel-error]"* && $err == *NO_AUTO_PART_SCAN* ]] ||
        fail "partition_scan false was not refused by name: $err"
    [[ $(json_get "$(ctl_ok --json list)" 'length') == 0 ]] || fail "the refused device is listed"
    assert_no_ublk_devices
    log "partition_scan false refused: $err"
fi

# 4096-byte logical blocks.
b4=$(ctl_ok add b4 --backend mem --size 64MiB --block-size 4096)
[[ $(<"/sys/block/${b4#/dev/}/queue/logical_block_size") == 4096 ]] ||
    fail "$b4 does not have 4096-byte blocks"
fio_verify "$b4" --size=16M --bsrange=4k-256k --iodepth=16
if dd if="$b4" of=/dev/null bs=512 count=1 iflag=direct status=none 2>/dev/null; then
    fail "a 512-byte direct read of a 4096-byte block device succeeded"
fi
ctl_ok del b4 >/dev/null

stop_ublkd 30
assert_no_ublk_devices
log "partitions and block sizes passed"
