#!/bin/bash
# An rbd device on a Ceph cluster running in the VM (start_ceph: one mon,
# one MemStore OSD). The image is created by the add; `info` and sysfs show
# what was negotiated (size, the exclusive lock, librbd's cache as a
# volatile write cache). fio crc32c verify at 4k QD1 and 4k..1M QD64 on two
# queues, both used; ext4 with checksums across a remount, and e2fsck. A
# second writable add of the image is refused as "in use" and leaves
# nothing behind; a read-only add beside the writer sees its files. After
# `del` the image is free again.
# vm-timeout: 240
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd fio jq mkfs.ext4 e2fsck sha256sum

start_ceph
cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"
rbd_args=(--backend rbd --image rbd/img0 --ceph-conf "$CEPH_CONF")

dev=$(ctl_ok add r0 "${rbd_args[@]}" --create --size 256MiB --queues 2 --depth 64)
info=$(ctl_ok --json info r0)
log "info r0: $(jq -c .backend <<<"$info")"
[[ $(json_get "$info" .backend.image) == rbd/img0 ]] || fail "info shows another image"
[[ $(json_get "$info" .queues) == 2 ]] || fail "r0 has $(json_get "$info" .queues) queues, want 2"
[[ $(json_get "$info" .size) == $((256 << 20)) ]] || fail "r0 is not the image's size"
[[ $(json_get "$info" .backend.negotiated.image_size) == $((256 << 20)) ]] || fail "info shows another image size"
[[ $(json_get "$info" .backend.negotiated.exclusive_lock) == true ]] || fail "r0 does not hold the exclusive lock"
[[ $(json_get "$info" .backend.negotiated.librbd_cache) == true ]] || fail "librbd's cache is not on (Ceph's default)"
(($(dev_size "$dev") == 256 << 20)) || fail "$dev is $(dev_size "$dev") bytes, want 256 MiB"
q=/sys/block/${dev#/dev/}/queue
[[ $(<"$q/write_cache") == "write back" ]] || fail "no volatile write cache, though librbd caches writes"
(($(<"$q/discard_max_bytes") > 0)) || fail "no discard"

# Half of what 96 (nbd) does: each request crosses the guest's OSD, which
# shares the two TCG CPUs with everything else.
fio_verify "$dev" --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
    --size=32M --offset_increment=32M --iodepth=1 --bs=4k --number_ios=256
fio_verify "$dev" --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
    --size=32M --offset_increment=32M --iodepth=64 --bsrange=4k-1M
assert_queues_used "$dev"

# A second writer of the same image: refused while r0 holds the lock, with
# nothing of it left in the daemon, the kernel or the state dir.
devices_before=$(compgen -G '/dev/ublkb*' | wc -l)
t0=${EPOCHREALTIME/./}
msg=$(ctl_err add r1 "${rbd_args[@]}")
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
log "second writer: $msg ($ms ms)"
[[ $msg == *"rbd/img0"* && $msg == *"in use"* ]] || fail "the refusal does not say the image is in use: $msg"
((ms < 10000)) || fail "the refusal took $ms ms"
names=$(ctl_ok --json list | jq -c 'map(.name)')
[[ $names == '["r0"]' ]] || fail "after the refused add the daemon lists $names, want only r0"
(($(compgen -G '/dev/ublkb*' | wc -l) == devices_before)) || fail "the refused add left a device"
[[ ! -e $CASE_DIR/state/devices/r1.json ]] || fail "the refused add left a state record"

mnt=$CASE_DIR/mnt
mkdir -p "$mnt"
mkfs.ext4 -q -F "$dev"
mount "$dev" "$mnt"
add_cleanup "umount $mnt 2>/dev/null || true"
for i in 1 2 3; do dd if=/dev/urandom of="$mnt/f$i" bs=1M count=4 status=none; done
(cd "$mnt" && sha256sum f1 f2 f3 >"$CASE_DIR/sums")
umount "$mnt"
mount "$dev" "$mnt"
(cd "$mnt" && sha256sum -c --quiet "$CASE_DIR/sums") || fail "files changed across a remount"
umount "$mnt"
out=$(e2fsck -fn "$dev" 2>&1) || { echo "$out" >&2; fail "e2fsck found damage"; }

# A reader beside the writer: no lock, so it opens; it sees what r0 wrote
# (the unmount flushed r0's cache to the OSD) and takes no write.
dro=$(ctl_ok add r0ro "${rbd_args[@]}" --read-only)
info=$(ctl_ok --json info r0ro)
[[ $(json_get "$info" .backend.negotiated.exclusive_lock) == false ]] || fail "the read-only device holds the lock"
[[ $(blockdev --getro "$dro") == 1 ]] || fail "$dro is not read-only in the kernel"
[[ $(json_get "$(ctl_ok --json info r0)" .state) == live ]] || fail "r0 is not live beside the reader"
mount -o ro,noload "$dro" "$mnt"
(cd "$mnt" && sha256sum -c --quiet "$CASE_DIR/sums") || fail "the read-only device does not see r0's files"
umount "$mnt"
dd if=/dev/zero of="$dro" bs=4k count=1 oflag=direct status=none 2>/dev/null &&
    fail "a write to the read-only device succeeded"
ctl_ok del r0ro >/dev/null

ctl_ok del r0 >/dev/null
# del gave the lock up: a new writer takes it at once.
t0=${EPOCHREALTIME/./}
ctl_ok add r2 "${rbd_args[@]}" >/dev/null
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
log "the image is free again after del: add took $ms ms"
((ms < 10000)) || fail "add after del took $ms ms: was the lock given up?"
ctl_ok del r2 >/dev/null
stop_ublkd 20
assert_no_ublk_devices
stop_ceph
log "rbd fio verify passed"
