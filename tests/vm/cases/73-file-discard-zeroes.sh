#!/bin/bash
# DISCARD on a file device punches holes in the backing file (its allocated
# blocks go down); WRITE_ZEROES reads back zeros, through the device and in
# the file; data around both stays intact. On ext4 (both fallocate modes) and
# on tmpfs (served from the file's mapped pages with USER_COPY: whole 64 KiB
# chunks punched out, zeros written around them).
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd mkfs.ext4 blkdiscard stat sha256sum cmp

mnt=$CASE_DIR/ext4
ext4_on_ram_disk "$mnt" 128
cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
start_ublkd_api "$cfg"
user_copy_offered=$(offered USER_COPY)

MiB=$((1 << 20))
dd if=/dev/urandom of="$CASE_DIR/data" bs=1M count=48 status=none

zeros_at() { # DEV_OR_FILE OFFSET_MIB LENGTH_MIB [DD FLAGS]
    cmp -s -n $(($3 * MiB)) /dev/zero <(dd if="$1" bs=1M skip="$2" count="$3" ${4:+"$4"} status=none)
}
sum_at() { # DEV_OR_FILE OFFSET_MIB LENGTH_MIB [DD FLAGS]
    local s
    s=$(dd if="$1" bs=1M skip="$2" count="$3" ${4:+"$4"} status=none | sha256sum)
    echo "${s%% *}"
}

for where in ext4 tmpfs; do
    if [[ $where == ext4 ]]; then img=$mnt/d.img; else img=$CASE_DIR/d.img; fi
    name=dz-$where
    dev=$(ctl_ok add "$name" --backend file --path "$img" --create --size 64MiB)
    [[ $(<"/sys/block/${dev#/dev/}/queue/discard_max_bytes") != 0 ]] || fail "$dev: no discard support"
    [[ $(<"/sys/block/${dev#/dev/}/queue/write_zeroes_max_bytes") != 0 ]] || fail "$dev: no write-zeroes support"
    # Only a file on tmpfs is served from its pages, through USER_COPY.
    user_copy=$(json_get "$(ctl_ok --json info "$name")" '.kernel_flag_names | index("USER_COPY") != null')
    [[ $user_copy == "$([[ $where == tmpfs ]] && echo "$user_copy_offered" || echo false)" ]] ||
        fail "$where: USER_COPY granted is $user_copy"

    dd if="$CASE_DIR/data" of="$dev" bs=1M oflag=direct conv=fsync status=none
    keep=$(sum_at "$CASE_DIR/data" 16 16)
    before=$(stat -c %b "$img")
    ((before * 512 >= 48 * MiB)) || fail "$img: only $((before / 2)) KiB allocated after writing 48 MiB"

    # DISCARD 0..16 MiB: the file loses (nearly) 16 MiB of blocks.
    blkdiscard -o 0 -l $((16 * MiB)) "$dev"
    sync
    after=$(stat -c %b "$img")
    freed=$(((before - after) * 512))
    log "$where: discard of 16 MiB freed $((freed / 1024)) KiB of $img"
    ((freed >= 15 * MiB)) || fail "$where: discard freed only $freed bytes of $img"
    zeros_at "$dev" 0 16 iflag=direct || fail "$where: discarded range does not read zeros"

    # WRITE_ZEROES 32..48 MiB (it was random data).
    blkdiscard -z -o $((32 * MiB)) -l $((16 * MiB)) "$dev"
    zeros_at "$dev" 32 16 iflag=direct || fail "$where: write-zeroes range does not read zeros"

    # Untouched: 16..32 MiB on the device and in the file.
    [[ $(sum_at "$dev" 16 16 iflag=direct) == "$keep" ]] || fail "$where: data next to the ranges changed"
    ctl_ok del "$name" >/dev/null
    zeros_at "$img" 0 16 || fail "$where: $img not zero where discarded"
    zeros_at "$img" 32 16 || fail "$where: $img not zero where zeroed"
    [[ $(sum_at "$img" 16 16) == "$keep" ]] || fail "$where: $img lost data next to the ranges"
    log "$where: discard and write-zeroes passed"
done

stop_ublkd 20
assert_no_ublk_devices
