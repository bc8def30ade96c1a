#!/bin/bash
# No acknowledged write is lost when ublkd is killed: 20 randomized cycles
# of kill -9 / restart / recover per backend (mem, and file on ext4), each
# checked by fio's verify state (see kill9_verify_cycles in lib.sh). Then
# the proof that the check can fail: one block fio wrote is overwritten
# behind its back, and verification must report it.
# vm-tier: full
# vm-timeout: 1500
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd fio
CYCLES=${CYCLES:-20}

cfg=$CASE_DIR/config
state=$CASE_DIR/state
ext4_on_ram_disk "$CASE_DIR/ext4" 128
img=$CASE_DIR/ext4/disk.img
write_spec "$cfg" vm '{"name":"vm","backend":{"type":"mem","size":"64MiB"},"queues":2,"queue_depth":32}'
write_spec "$cfg" vf "{\"name\":\"vf\",\"backend\":{\"type\":\"file\",\"path\":\"$img\",\"size\":\"64MiB\",\"create\":true},\"queues\":2,\"queue_depth\":32}"
start_ublkd "$cfg" --state-dir "$state"
mdev=$(wait_live vm 20)
fdev=$(wait_live vf 20)

kill9_verify_cycles "$cfg" "$state" vm "$mdev" "$CYCLES"
kill9_verify_cycles "$cfg" "$state" vf "$fdev" "$CYCLES"

# The check can fail: write a full pass (every block once), corrupt one
# block, verify.
for dev in "$mdev" "$fdev"; do
    rm -f "$CASE_DIR"/*-verify.state
    args=(--name=p --filename="$dev" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k
        --iodepth=16 --size=8M --verify=crc32c --randseed=1234)
    fio "${args[@]}" --do_verify=0 >"$CASE_DIR/proof.write" 2>&1 || { cat "$CASE_DIR/proof.write" >&2; fail "proof writer failed"; }
    head -c 4096 /dev/urandom | dd of="$dev" bs=4096 seek=1000 oflag=direct status=none
    rc=0
    fio "${args[@]}" --verify_only --verify_fatal=1 >"$CASE_DIR/proof.verify" 2>&1 || rc=$?
    ((rc != 0)) || { cat "$CASE_DIR/proof.verify" >&2; fail "verification missed a corrupted block on $dev"; }
    grep -m1 -E 'verify: bad|crc32c: verify failed|bad magic' "$CASE_DIR/proof.verify" >&2 ||
        { cat "$CASE_DIR/proof.verify" >&2; fail "fio failed on $dev, but not with a verify error"; }
    log "verification reported the corrupted block on $dev, as it must"
done

stop_ublkd 20
assert_no_ublk_devices
log "no acknowledged write lost in $CYCLES cycles per backend"
