#!/bin/bash
# An rbd device follows `rbd resize` of its image. Where the kernel offers
# UPDATE_SIZE (7.2): the device grows live, blockdev and sysfs see the new
# size at once, ext4 on it is grown online with resize2fs and its files
# stay intact, and the log says so; data written past the old end reads
# back. Where it does not (6.12): the device keeps its size, the log says
# why once, and I/O goes on.
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd rbd jq mkfs.ext4 resize2fs e2fsck sha256sum

start_ceph
cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"

offered=$(offered UPDATE_SIZE)

dev=$(ctl_ok add g0 --backend rbd --image rbd/grow0 --ceph-conf "$CEPH_CONF" --create --size 64MiB)
granted=$(json_get "$(ctl_ok --json info g0)" '.kernel_flag_names | index("UPDATE_SIZE") != null')
[[ $granted == "$offered" ]] || fail "kernel offers UPDATE_SIZE: $offered, g0 was granted it: $granted"

mnt=$CASE_DIR/mnt
mkdir -p "$mnt"
mkfs.ext4 -q -F "$dev"
mount "$dev" "$mnt"
add_cleanup "umount $mnt 2>/dev/null || true"
dd if=/dev/urandom of="$mnt/before" bs=1M count=16 status=none
(cd "$mnt" && sha256sum before >"$CASE_DIR/sums")

rbd resize --size 128M rbd/grow0 >/dev/null 2>&1 || fail "rbd resize failed"
if [[ $offered == true ]]; then
    wait_for_log "device g0: resized from $((64 << 20)) to $((128 << 20)) bytes, as its storage" 10 >/dev/null ||
        { show_log; fail "no resize logged within 10 s"; }
    (($(dev_size "$dev") == 128 << 20)) || fail "$dev is $(dev_size "$dev") bytes after the resize"
    (($(<"/sys/block/${dev#/dev/}/size") == (128 << 20) / 512)) || fail "sysfs shows the old size"
    [[ $(json_get "$(ctl_ok --json info g0)" .size) == $((128 << 20)) ]] || fail "info shows the old size"
    resize2fs "$dev" >"$CASE_DIR/resize2fs.log" 2>&1 || { cat "$CASE_DIR/resize2fs.log" >&2; fail "resize2fs failed"; }
    dd if=/dev/urandom of="$mnt/after" bs=1M count=48 status=none || fail "the grown file system does not take 48 MiB more"
    (cd "$mnt" && sha256sum after >>"$CASE_DIR/sums")
    umount "$mnt"
    out=$(e2fsck -fn "$dev" 2>&1) || { echo "$out" >&2; fail "e2fsck found damage"; }
    mount "$dev" "$mnt"
    (cd "$mnt" && sha256sum -c --quiet "$CASE_DIR/sums") || fail "files changed across the resize"
    # The new blocks are the image's: past the old end, straight to the device.
    umount "$mnt"
    dd if=/dev/urandom of="$CASE_DIR/tail" bs=1M count=1 status=none
    dd if="$CASE_DIR/tail" of="$dev" bs=1M seek=127 oflag=direct status=none || fail "writing past the old end failed"
    cmp <(dd if="$dev" bs=1M skip=127 count=1 iflag=direct status=none) "$CASE_DIR/tail" ||
        fail "the block past the old end reads back different"
else
    wait_for_log "device g0: its storage is now $((128 << 20)) bytes, the device stays at $((64 << 20)): the kernel cannot change a live device's size" 10 >/dev/null ||
        { show_log; fail "no warning logged within 10 s"; }
    (($(dev_size "$dev") == 64 << 20)) || fail "$dev changed size without UPDATE_SIZE"
    dd if=/dev/urandom of="$mnt/more" bs=1M count=8 status=none || fail "I/O stopped after the resize"
    (cd "$mnt" && sha256sum -c --quiet "$CASE_DIR/sums") || fail "files changed"
    umount "$mnt"
    # Logged once, not at every change of the image's header (a snapshot
    # changes it too).
    rbd snap create rbd/grow0@s1 >/dev/null 2>&1 || fail "rbd snap create failed"
    sleep 2
    n=$(grep -c "its storage is now" "$UBLKD_LOG")
    ((n == 1)) || fail "the warning was logged $n times"
fi
ctl_ok del g0 >/dev/null
stop_ublkd
