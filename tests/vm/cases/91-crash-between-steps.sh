#!/bin/bash
# Every step of a device's life where a crash leaves a record and the kernel
# out of step, and what the next ublkd makes of it (docs/reliability.md,
# "Records and kept memory"):
#  1. killed between ADD_DEV and completing the record with the id (test
#     hook UBLKD_TEST_CRASH_AT=after-add-dev): the record, written before
#     ADD_DEV, has the identity; the next ublkd finds the device by it and
#     deletes it (it never went live); record and memory go.
#  2. killed after the kernel released a deleted device, before the record
#     went (UBLKD_TEST_CRASH_AT=after-del-dev): the kernel has no such
#     device; the record and memory go.
#  3. killed while a deleted device is still held (mounted): the record says
#     removed; the next ublkd lists it removed-pending and retires the record
#     and memory once it is unmounted.
#  4. the same, killed before the record said removed: the next ublkd sees
#     the device is deleted, tracks it the same way.
# No case deletes or recovers anything it should not, and nothing is left.
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd mkfs.ext4 jq mount umount
cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
state=$CASE_DIR/state
mnt=$CASE_DIR/mnt
mkdir -p "$mnt"
add_cleanup "umount $mnt 2>/dev/null || true"

# crash_exit: the daemon must end with the hook's status 99.
crash_exit() {
    local rc=0
    wait "$UBLKD_PID" || rc=$?
    ((rc == 99)) || { show_log; fail "ublkd exited with $rc, want 99 from the test hook"; }
}

# records_and_memory_gone NAME
records_and_memory_gone() {
    [[ ! -e $state/devices/$1.json ]] || fail "record of $1 left: $(cat "$state/devices/$1.json")"
    [[ ! -e $state/mem/$1 ]] || fail "memory of $1 left"
}

log "1. crash between ADD_DEV and the record naming the id"
UBLKD_TEST_CRASH_AT=after-add-dev start_ublkd_api "$cfg"
ctl add c1 --backend mem --size 16MiB >/dev/null || true
crash_exit
ids=(/sys/class/ublk-char/ublkc*)
[[ -e ${ids[0]} ]] || fail "the kernel has no device after the crash after ADD_DEV"
[[ $(jq -r .dev_id "$state/devices/c1.json") == null ]] ||
    fail "the record already had the id: $(cat "$state/devices/c1.json")"
identity=$(jq -r .identity "$state/devices/c1.json")
start_ublkd_api "$cfg"
wait_for_log "running: " 30 >/dev/null
grep -q "device c1: recovering the device with identity $identity" "$UBLKD_LOG" ||
    { show_log; fail "c1 was not looked for by its identity"; }
wait_for_log "device c1: not recovered \(.*not running.*\); nothing of it is left in the kernel" 5 \
    >/dev/null
records_and_memory_gone c1
assert_no_ublk_devices
stop_ublkd 20

log "2. crash after the kernel released a deleted device, before its record went"
UBLKD_TEST_CRASH_AT=after-del-dev start_ublkd_api "$cfg"
ctl_ok add c2 --backend mem --size 16MiB >/dev/null
[[ -e $state/devices/c2.json && -e $state/mem/c2 ]] || fail "c2 has no record or memory"
ctl del c2 >/dev/null || true
crash_exit
assert_no_ublk_devices
[[ -e $state/devices/c2.json ]] || fail "the hook did not leave the record of c2"
start_ublkd_api "$cfg"
wait_for_log "running: " 30 >/dev/null
wait_for_log "device c2: not recovered \(the kernel has no device [0-9]+" 5 >/dev/null
records_and_memory_gone c2
# Listed as failed, with the reason, until deleted.
[[ $(json_get "$(ctl_ok --json info c2)" .state) == failed ]] || fail "c2 not listed as failed"
ctl_ok del c2 >/dev/null
[[ -z $(json_get "$(ctl_ok --json list)" '.[].name') ]] || fail "devices listed: $(ctl_ok list)"

log "3 and 4. crash while a deleted device is still mounted"
for variant in marked unmarked; do
    dev=$(ctl_ok add "c$variant" --backend mem --size 32MiB)
    mkfs.ext4 -q -F "$dev"
    mount -t ext4 "$dev" "$mnt"
    ctl_ok del --force "c$variant" >/dev/null
    [[ $(jq -r .removed "$state/devices/c$variant.json") == true ]] ||
        fail "record not marked removed"
    kill9_ublkd
    if [[ $variant == unmarked ]]; then
        # As if the crash had come before the record said so.
        jq '.removed = false' "$state/devices/c$variant.json" >"$CASE_DIR/r.json"
        mv "$CASE_DIR/r.json" "$state/devices/c$variant.json"
    fi
    start_ublkd_api "$cfg"
    wait_for_log "running: " 30 >/dev/null
    if [[ $variant == marked ]]; then
        grep -q "device c$variant: removed by the last ublkd; the kernel releases $dev" "$UBLKD_LOG" ||
            { show_log; fail "c$variant not taken for removed"; }
        want=removed-pending
    else
        wait_for_log "device c$variant: not recovered \(the device was deleted already.*\); deleted, and the kernel releases $dev" 5 >/dev/null
        want=failed
    fi
    st=$(json_get "$(ctl_ok --json list)" ".[] | select(.name == \"c$variant\") | .state")
    [[ $st == "$want" ]] || fail "c$variant is listed as '$st', want $want"
    [[ -e $state/devices/c$variant.json && -e $state/mem/c$variant ]] ||
        fail "c$variant lost its record or memory while still held"
    umount "$mnt"
    wait_for_log "device c$variant: the kernel released $dev; its state record is retired" 10 \
        >/dev/null
    records_and_memory_gone "c$variant"
    [[ $variant == unmarked ]] && ctl_ok del "c$variant" >/dev/null
    [[ -z $(json_get "$(ctl_ok --json list)" '.[].name') ]] || fail "devices listed: $(ctl_ok list)"
done
stop_ublkd 20
assert_no_ublk_devices
[[ -z $(ls -A "$state/devices") ]] || fail "records left: $(ls "$state/devices")"
log "every crash point left nothing behind and took nothing it should not"
