#!/bin/bash
# Zeros on a mem device: space never written reads as zeros; DISCARD
# (blkdiscard) and WRITE_ZEROES (blkdiscard -z) turn a range of written data
# into zeros while the data around it stays intact, including ranges that
# cover only part of a 64 KiB allocation chunk; a discarded range takes new
# data again. Then a 1 TiB device (sparse: nothing is allocated up front)
# goes live and serves a write and read at its last 4 KiB.
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd blkdiscard cmp dd sha256sum

readonly KiB=1024 MiB=$((1 << 20)) GiB=$((1 << 30)) TiB=$((1 << 40))

# read_range DEV OFFSET LENGTH: LENGTH bytes at OFFSET (both multiples of
# 4 KiB), read with O_DIRECT so they come from the daemon, not the page cache.
read_range() {
    dd if="$1" bs=1M skip="$2" count="$3" iflag=direct,skip_bytes,count_bytes status=none
}
# write_range DEV OFFSET FILE: FILE's contents at OFFSET, O_DIRECT.
write_range() {
    dd if="$3" of="$1" bs=1M seek="$2" oflag=direct,seek_bytes conv=notrunc,fsync status=none
}
# assert_zeros DEV OFFSET LENGTH WHAT: the range reads back as zeros.
assert_zeros() {
    local out
    if ! out=$(read_range "$1" "$2" "$3" | cmp -n "$3" - /dev/zero 2>&1); then
        fail "$4: $1 at offset $2, length $3 is not all zeros ($out)"
    fi
}
# sum DEV OFFSET LENGTH: sha256 of a range.
sum() { read_range "$1" "$2" "$3" | sha256sum | cut -d' ' -f1; }
# discard_ios DEV: completed discard requests (field 12 of the stat file).
discard_ios() { awk '{print $12}' "/sys/block/${1#/dev/}/stat"; }

cfg=$CASE_DIR/config
write_spec "$cfg" z0 '{"name":"z0","backend":{"type":"mem","size":"1GiB"},"queues":1,"queue_depth":64}'
start_ublkd "$cfg" --start-timeout 10
dev=$(wait_live z0 15)
size=$(dev_size "$dev")
((size == GiB)) || fail "$dev is $size bytes, want $GiB"

# The device advertises both operations to the kernel, so blkdiscard below
# reaches the daemon as DISCARD / WRITE_ZEROES, not as emulated writes.
q=/sys/block/${dev#/dev/}/queue
log "discard_max_bytes=$(cat "$q/discard_max_bytes") discard_granularity=$(cat "$q/discard_granularity") write_zeroes_max_bytes=$(cat "$q/write_zeroes_max_bytes")"
(($(cat "$q/discard_max_bytes") > 0)) || fail "$dev does not support discard"
(($(cat "$q/write_zeroes_max_bytes") > 0)) || fail "$dev does not support write zeroes"

# 1. Never written: the first and last MiB and a range in the middle.
assert_zeros "$dev" 0 "$MiB" "fresh device, first MiB"
assert_zeros "$dev" $((GiB - MiB)) "$MiB" "fresh device, last MiB"
assert_zeros "$dev" $((512 * MiB - 4 * KiB)) $((2 * MiB)) "fresh device, middle"
log "never-written ranges read as zeros"

# 2. 8 MiB of random data at 100 MiB; the reference is kept in a file.
base=$((100 * MiB))
data=$CASE_DIR/data
dd if=/dev/urandom of="$data" bs=1M count=8 status=none
write_range "$dev" "$base" "$data"
[[ $(sum "$dev" "$base" $((8 * MiB))) == $(sha256sum <"$data" | cut -d' ' -f1) ]] ||
    fail "8 MiB of random data at $base do not read back"

# expect_data DEV OFFSET LENGTH WHAT: the range holds what $data holds at
# the same place.
expect_data() {
    local want
    want=$(dd if="$data" bs=1M skip=$(($2 - base)) count="$3" iflag=skip_bytes,count_bytes status=none |
        sha256sum | cut -d' ' -f1)
    [[ $(sum "$1" "$2" "$3") == "$want" ]] || fail "$4: data at offset $2, length $3 changed"
}

d0=$(discard_ios "$dev")
# DISCARD of 2 MiB, chunk aligned: [102 MiB, 104 MiB).
blkdiscard -o $((base + 2 * MiB)) -l $((2 * MiB)) "$dev" || fail "blkdiscard failed"
# DISCARD that covers only parts of chunks: 12 KiB at 106 MiB + 8 KiB, and
# 96 KiB straddling a chunk boundary at 107 MiB - 32 KiB.
blkdiscard -o $((base + 6 * MiB + 8 * KiB)) -l $((12 * KiB)) "$dev" || fail "small blkdiscard failed"
blkdiscard -o $((base + 7 * MiB - 32 * KiB)) -l $((96 * KiB)) "$dev" || fail "straddling blkdiscard failed"
d1=$(discard_ios "$dev")
((d1 > d0)) || fail "blkdiscard issued no discard request to $dev (stat discards $d0 -> $d1)"
# WRITE_ZEROES of 1 MiB + 4 KiB at 104 MiB + 512 KiB (not chunk aligned).
blkdiscard -z -o $((base + 4 * MiB + 512 * KiB)) -l $((MiB + 4 * KiB)) "$dev" ||
    fail "blkdiscard -z failed"

# What must be zeros now, and what must not have changed around it.
assert_zeros "$dev" $((base + 2 * MiB)) $((2 * MiB)) "after discard"
assert_zeros "$dev" $((base + 6 * MiB + 8 * KiB)) $((12 * KiB)) "after a 12 KiB discard"
assert_zeros "$dev" $((base + 7 * MiB - 32 * KiB)) $((96 * KiB)) "after a chunk-straddling discard"
assert_zeros "$dev" $((base + 4 * MiB + 512 * KiB)) $((MiB + 4 * KiB)) "after write zeroes"
expect_data "$dev" "$base" $((2 * MiB)) "before the discarded range"
expect_data "$dev" $((base + 4 * MiB)) $((512 * KiB)) "between discard and write zeroes"
expect_data "$dev" $((base + 5 * MiB + 516 * KiB)) $((MiB - 516 * KiB + 8 * KiB)) "after write zeroes"
expect_data "$dev" $((base + 6 * MiB + 20 * KiB)) $((MiB - 52 * KiB)) "between the small discards"
expect_data "$dev" $((base + 7 * MiB + 64 * KiB)) $((MiB - 64 * KiB)) "after the straddling discard"
log "discarded and zeroed ranges read as zeros, neighbours intact"

# 3. A discarded range takes data again.
dd if=/dev/urandom of="$CASE_DIR/again" bs=64k count=5 status=none
write_range "$dev" $((base + 2 * MiB + 64 * KiB)) "$CASE_DIR/again"
[[ $(sum "$dev" $((base + 2 * MiB + 64 * KiB)) $((320 * KiB))) == $(sha256sum <"$CASE_DIR/again" | cut -d' ' -f1) ]] ||
    fail "data written into a discarded range does not read back"
assert_zeros "$dev" $((base + 2 * MiB)) $((64 * KiB)) "discarded range before the rewrite"
assert_zeros "$dev" $((base + 2 * MiB + 384 * KiB)) $((MiB + 640 * KiB)) "discarded range after the rewrite"

# 4. Discarding the whole device leaves nothing but zeros.
blkdiscard "$dev" || fail "blkdiscard of the whole device failed"
assert_zeros "$dev" "$base" $((8 * MiB)) "after discarding the whole device"
log "whole-device discard reads as zeros"

stop_ublkd 15
assert_no_ublk_devices

# 5. 1 TiB, sparse. Run separately so that a VM unable to map it can only
# skip this part, after the rest passed.
cfg2=$CASE_DIR/config-huge
write_spec "$cfg2" huge0 '{"name":"huge0","backend":{"type":"mem","size":"1TiB"},"queues":1,"queue_depth":32}'
start_ublkd "$cfg2" --start-timeout 10
line=$(wait_for_log 'device huge0 live at|device huge0: (backend|state)' 15)
if [[ $line != *' live at '* && $line != *': state '* ]]; then
    # The backend could not be created. Only a lack of memory for the
    # mapping excuses that.
    stop_ublkd 15
    assert_no_ublk_devices
    [[ $line == *'Cannot allocate memory'* ]] || fail "the 1 TiB mem backend failed: $line"
    skip "the VM cannot map a 1 TiB mem device: $line"
fi
huge=$(wait_live huge0 5)
hsize=$(dev_size "$huge")
((hsize == TiB)) || fail "$huge is $hsize bytes, want $TiB"
assert_zeros "$huge" $((TiB - MiB)) "$MiB" "1 TiB device, last MiB"
dd if=/dev/urandom of="$CASE_DIR/tail" bs=4k count=1 status=none
write_range "$huge" $((TiB - 4 * KiB)) "$CASE_DIR/tail"
[[ $(sum "$huge" $((TiB - 4 * KiB)) $((4 * KiB))) == $(sha256sum <"$CASE_DIR/tail" | cut -d' ' -f1) ]] ||
    fail "the last 4 KiB of the 1 TiB device do not read back"
assert_zeros "$huge" $((TiB - MiB)) $((MiB - 4 * KiB)) "1 TiB device, before the last 4 KiB"
assert_zeros "$huge" $((TiB / 2)) "$MiB" "1 TiB device, middle"
# Writing past the end must fail, not wrap around or succeed.
if dd if="$CASE_DIR/tail" of="$huge" bs=4k seek=$((TiB / 4096)) oflag=direct status=none 2>/dev/null; then
    fail "a write past the end of the 1 TiB device succeeded"
fi
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$UBLKD_PID/status")
log "1 TiB device serves its last 4 KiB; ublkd RSS ${rss} kB"
stop_ublkd 15
assert_no_ublk_devices
log "zeros and discard passed"
