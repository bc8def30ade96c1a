#!/bin/bash
# `ublkctl resize` of live devices. Where the kernel offers UPDATE_SIZE
# (7.2): a mem device under ext4 grows live (blockdev, sysfs and `info` see
# the new size at once, resize2fs grows ext4 online, files stay intact),
# its drop-in is rewritten with the new size, and after a kill -9 it is
# recovered at that size with its data; a file device grows its file,
# refuses a shrink below data written to it (would-lose-data, nothing
# changed), shrinks with --force (the file is cut, the data below kept)
# and reads zeros where it grows again; sizes the spec could not have are
# refused. Where it does not (6.12): every resize fails as unsupported,
# naming UPDATE_SIZE, and nothing changes.
# vm-timeout: 240
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd jq mkfs.ext4 resize2fs e2fsck sha256sum cmp

cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"

offered=$(offered UPDATE_SIZE)

MiB=$((1 << 20))
img=$CASE_DIR/f0.img
dropin=$cfg/devices.d/m0.json
m0=$(ctl_ok add m0 --backend mem --size 64MiB --persist)
f0=$(ctl_ok add f0 --backend file --path "$img" --size 32MiB --create --buffered)

# expect_size DEV BYTES: the kernel, sysfs and `info` agree on the size.
expect_size() {
    local dev=$1 bytes=$2 name
    name=$(json_get "$(ctl_ok --json list)" ".[] | select(.block_device == \"$dev\") | .name")
    (($(dev_size "$dev") == bytes)) || fail "$dev is $(dev_size "$dev") bytes, want $bytes"
    (($(<"/sys/block/${dev#/dev/}/size") == bytes / 512)) || fail "sysfs: $dev is not $bytes bytes"
    [[ $(json_get "$(ctl_ok --json info "$name")" .size) == "$bytes" ]] ||
        fail "info $name does not say $bytes bytes"
}

# expect_refused WHAT CODE TEXT ARGS...: `ublkctl resize ARGS` fails with
# CODE and a message containing TEXT.
expect_refused() {
    local what=$1 code=$2 text=$3 err
    shift 3
    err=$(ctl_err resize "$@")
    [[ $err == *"[$code]"* && $err == *"$text"* ]] ||
        fail "$what: want [$code] and \"$text\", got: $err"
    log "$what refused: $err"
}

if [[ $offered != true ]]; then
    expect_refused "grow m0" unsupported UPDATE_SIZE m0 128MiB
    expect_refused "grow f0" unsupported "nothing changed" f0 64MiB
    expect_refused "shrink f0" unsupported UPDATE_SIZE --force f0 16MiB
    expect_size "$m0" $((64 * MiB))
    expect_size "$f0" $((32 * MiB))
    (($(stat -c %s "$img") == 32 * MiB)) || fail "$img changed length"
    [[ $(jq -r .backend.size "$dropin") == $((64 * MiB)) ]] || fail "the drop-in changed"
    dd if=/dev/urandom of="$f0" bs=1M count=1 seek=31 oflag=direct status=none ||
        fail "I/O failed after the refusals"
    stop_ublkd 30
    assert_no_ublk_devices
    log "resize refused without UPDATE_SIZE, nothing changed"
    exit 0
fi

# A mem device under a mounted ext4 grows live.
mnt=$CASE_DIR/mnt
mkdir -p "$mnt"
mkfs.ext4 -q -F "$m0"
mount "$m0" "$mnt"
add_cleanup "umount $mnt 2>/dev/null || true"
dd if=/dev/urandom of="$mnt/before" bs=1M count=16 status=none
(cd "$mnt" && sha256sum before >"$CASE_DIR/sums")
out=$(ctl_ok resize m0 128MiB)
[[ $out == "$m0: 128MiB ($((128 * MiB)) bytes)" ]] || fail "resize printed: $out"
expect_size "$m0" $((128 * MiB))
wait_for_log "device m0: resized from $((64 * MiB)) to $((128 * MiB)) bytes" 5 >/dev/null
[[ $(jq -r .backend.size "$dropin") == $((128 * MiB)) ]] ||
    fail "the drop-in still says $(jq -r .backend.size "$dropin")"
resize2fs "$m0" >"$CASE_DIR/resize2fs.log" 2>&1 ||
    { cat "$CASE_DIR/resize2fs.log" >&2; fail "resize2fs failed"; }
dd if=/dev/urandom of="$mnt/after" bs=1M count=64 status=none ||
    fail "the grown file system does not take 64 MiB more"
(cd "$mnt" && sha256sum after >>"$CASE_DIR/sums")
umount "$mnt"
out=$(e2fsck -fn "$m0" 2>&1) || { echo "$out" >&2; fail "e2fsck found damage after the grow"; }

# A kill -9 after the resize: the recovery serves the new size.
kill9_ublkd
start_ublkd_api "$cfg"
for name in m0 f0; do
    wait_for_log "device $name recovered: live again at /dev/ublkb[0-9]+" 30 >/dev/null
done
expect_size "$m0" $((128 * MiB))
mount "$m0" "$mnt"
(cd "$mnt" && sha256sum -c --quiet "$CASE_DIR/sums") || fail "files changed across grow and kill -9"
umount "$mnt"

# A file device grows its file ...
ctl_ok resize f0 64MiB >/dev/null
expect_size "$f0" $((64 * MiB))
(($(stat -c %s "$img") == 64 * MiB)) || fail "$img is $(stat -c %s "$img") bytes, want 64 MiB"
dd if=/dev/urandom of="$CASE_DIR/head" bs=1M count=1 status=none
dd if=/dev/urandom of="$CASE_DIR/tail" bs=1M count=1 status=none
dd if="$CASE_DIR/head" of="$f0" bs=1M seek=1 oflag=direct status=none || fail "write at 1 MiB failed"
dd if="$CASE_DIR/tail" of="$f0" bs=1M seek=60 oflag=direct status=none || fail "write at 60 MiB failed"

# ... refuses to drop what was written past the new end ...
expect_refused "shrink over data" would-lose-data "data is written at byte" f0 32MiB
expect_size "$f0" $((64 * MiB))
(($(stat -c %s "$img") == 64 * MiB)) || fail "a refused shrink changed $img"
cmp <(dd if="$f0" bs=1M skip=60 count=1 iflag=direct status=none) "$CASE_DIR/tail" ||
    fail "a refused shrink changed the data"

# ... drops it when forced, keeping what lies below ...
ctl_ok resize --force f0 32MiB >/dev/null
expect_size "$f0" $((32 * MiB))
(($(stat -c %s "$img") == 32 * MiB)) || fail "$img was not cut to 32 MiB"
cmp <(dd if="$f0" bs=1M skip=1 count=1 iflag=direct status=none) "$CASE_DIR/head" ||
    fail "data below the new end changed"

# ... and reads zeros where it grows again.
ctl_ok resize f0 64MiB >/dev/null
cmp <(dd if="$f0" bs=1M skip=60 count=1 iflag=direct status=none) <(head -c "$MiB" /dev/zero) ||
    fail "the dropped data came back"

# Sizes the spec could not have; a resize to the current size is no change.
expect_refused "a size that is no multiple of the block size" invalid-request \
    "not a multiple of the logical block size" f0 1000
expect_refused "a size of zero" invalid-request "greater than 0" f0 0
expect_refused "a size with a decimal unit" invalid-request "2GiB" f0 2GB
ctl_ok resize f0 64MiB >/dev/null
expect_refused "a missing device" not-found "no device named nope" nope 1GiB

stop_ublkd 30
assert_no_ublk_devices
log "live resize passed"
