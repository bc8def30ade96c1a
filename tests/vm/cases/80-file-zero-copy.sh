#!/bin/bash
# Zero copy for the file backend ("zero_copy": true): where the kernel offers
# UBLK_F_AUTO_BUF_REG (7.2 here, not 6.12) a file device on ext4 gets it and
# says so in its live line; elsewhere it keeps copying and does not. Either
# way fio's crc32c verify passes at iodepth 1 and 64 with mixed sizes on two
# queues, a file system on the device survives a remount and e2fsck, and the
# backing file holds exactly what the device holds. A file on tmpfs is
# served inline and never uses zero copy, nor does a device without
# "zero_copy" (the default).
# vm-timeout: 240
# 7.2's io_uring reports its own __counted_by annotation on the first
# registration (docs/configuration.md, "Zero copy"):
# vm-known-splat: 7.2 UBSAN: array-index-out-of-bounds in .*io_uring/rsrc\.c
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd fio mkfs.ext4 e2fsck jq cmp sha256sum

mnt=$CASE_DIR/ext4
ext4_on_ram_disk "$mnt" 160
cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
start_ublkd_api "$cfg"

offered=$(offered AUTO_BUF_REG)

img=$mnt/zc.img
printf '{"name": "zc", "queues": 2, "queue_depth": 64, "backend": {"type": "file", "path": "%s", "create": true, "size": "96MiB", "zero_copy": true}}' \
    "$img" | ctl_ok add --spec - >/dev/null
dev=/dev/ublkb$(json_get "$(ctl_ok --json info zc)" .id)
printf '{"name": "zt", "backend": {"type": "file", "path": "%s", "create": true, "size": "16MiB", "zero_copy": true}}' \
    "$CASE_DIR/tmpfs.img" | ctl_ok add --spec - >/dev/null
live=$(grep -m1 'device zc live at' "$UBLKD_LOG") || fail "no live line for zc"
tlive=$(grep -m1 'device zt live at' "$UBLKD_LOG") || fail "no live line for zt"
log "$live"
granted=$(json_get "$(ctl_ok --json info zc)" '.kernel_flag_names | index("AUTO_BUF_REG") != null')
[[ $granted == "$offered" ]] || fail "kernel offers AUTO_BUF_REG: $offered, zc was granted it: $granted"
if [[ $offered == true ]]; then
    [[ $live == *'zero copy'* ]] || fail "kernel offers AUTO_BUF_REG but zc is not zero copy: $live"
else
    [[ $live != *'zero copy'* ]] || fail "zc claims zero copy on a kernel without AUTO_BUF_REG: $live"
fi
[[ $tlive == *'served inline'* && $tlive != *'zero copy'* ]] ||
    fail "the tmpfs file should be served inline, without zero copy: $tlive"
# Without "zero_copy" the copy stays, whatever the kernel offers.
ctl_ok add zo --backend file --path "$mnt/zo.img" --create --size 8MiB --queues 1 >/dev/null
olive=$(grep -m1 'device zo live at' "$UBLKD_LOG") || fail "no live line for zo"
[[ $olive != *'zero copy'* ]] || fail "zo did not ask for zero copy but uses it: $olive"
[[ $(json_get "$(ctl_ok --json info zo)" '.kernel_flag_names | index("AUTO_BUF_REG") != null') == false ]] ||
    fail "zo was created with AUTO_BUF_REG"
fio_verify /dev/ublkb"$(json_get "$(ctl_ok --json info zo)" .id)" --size=8M --iodepth=16 --bsrange=4k-64k
ctl_ok del zo >/dev/null

# Both queues, both depths, sizes from one block to beyond a page.
fio_verify "$dev" --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
    --size=32M --offset_increment=32M --iodepth=1 --bs=4k --number_ios=512
fio_verify "$dev" --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
    --size=32M --offset_increment=32M --iodepth=64 --bsrange=512-256k
# Reads and writes of the same blocks at once, through both queues.
fio --name=mix --filename="$dev" --direct=1 --ioengine=io_uring --rw=randrw --bs=4k \
    --iodepth=32 --numjobs=2 --offset=64M --size=32M --time_based --runtime=3 \
    --output=/dev/null || fail "mixed random read/write failed"

# The backing file holds what the device holds.
cmp <(dd if="$dev" bs=1M iflag=direct status=none) "$img" || fail "$dev and $img differ"

# A file system on top: page-cache writes, journal FLUSH/FUA, a remount.
mkfs.ext4 -q -F "$dev"
top=$CASE_DIR/top
mkdir -p "$top"
mount "$dev" "$top"
dd if=/dev/urandom of="$top/data" bs=1M count=24 status=none
want=$(sha256sum <"$top/data")
umount "$top"
mount "$dev" "$top"
[[ $(sha256sum <"$top/data") == "$want" ]] || fail "data changed across a remount"
umount "$top"
e2fsck -fn "$dev" >/dev/null 2>&1 || fail "e2fsck found errors on $dev"

ctl_ok del zc >/dev/null
ctl_ok del zt >/dev/null
stop_ublkd 20
assert_no_ublk_devices
log "zero copy ($offered) file device verified"
