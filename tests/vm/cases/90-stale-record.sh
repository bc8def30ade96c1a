#!/bin/bash
# A state record can only ever recover the device it was written for. The
# sequence that once lost data, as an operator runs it: ext4 is mounted on
# device A and A is deleted anyway. A is removed (its I/O fails), `list`
# shows it removed-pending, and its record and kept memory stay while the
# kernel still holds its id; once the file system is unmounted the kernel
# releases the id and both go. A new device B of the same size gets the
# same id and known data. Then the stale record of A (saved before its
# delete, with A's memory or file) is put back, as a failed delete of an
# older ublkd left it, and ublkd is killed (kill -9) or upgraded (`ublkctl
# upgrade`). The next ublkd must recover B with its data under its name and
# /dev/ublkbN, report A's record as stale and retire it (and A's memory),
# and delete nothing. ROUNDS rounds per backend (mem, file) and per way
# (kill -9, upgrade); one round per backend puts A's record back in the
# form an older ublkd wrote (version 1, no identity). 90-stale-record-quick
# is the quick tier's share (2 rounds).
# vm-tier: full
# vm-timeout: 900
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd mkfs.ext4 jq sha256sum dd mount umount
ROUNDS=${ROUNDS:-10}

cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
state=$CASE_DIR/state
start_ublkd_api "$cfg"
wait_for_log "running: " 20 >/dev/null
mnt=$CASE_DIR/mnt
mkdir -p "$mnt"
add_cleanup "umount $mnt 2>/dev/null || true"

# list_field NAME FILTER: FILTER on device NAME of `ublkctl --json list`.
list_field() {
    json_get "$(ctl_ok --json list)" ".[] | select(.name == \"$1\") | $2"
}

# wait_gone NAME: the device leaves the list, its record and memory go.
wait_gone() {
    local name=$1 i
    for ((i = 0; i < 100; i++)); do
        [[ -z $(list_field "$name" .name) && ! -e $state/devices/$name.json &&
            ! -e $state/mem/$name ]] && return 0
        sleep 0.1
    done
    show_log
    fail "$name still listed or kept 10 s after its release: list $(ctl_ok --json list)," \
        "records $(ls "$state/devices"), memory $(ls "$state/mem" 2>/dev/null)"
}

# restart_daemon WAY: kill -9 the daemon, or hand its devices over with
# `ublkctl upgrade`, then start a new one on the same state dir.
restart_daemon() {
    local rc=0
    if [[ $1 == kill ]]; then
        kill9_ublkd
    else
        ctl_ok upgrade >/dev/null
        wait "$UBLKD_PID" || rc=$?
        ((rc == 75)) || fail "ublkd exited with $rc after upgrade, want 75"
    fi
    start_ublkd_api "$cfg"
    wait_for_log "running: " 30 >/dev/null
}

# round BACKEND WAY N FORM
round() {
    local backend=$1 way=$2 n=$3 form=$4 devA devB idA idB spec_args=() sum got
    local a=a$n b=b$n
    if [[ $backend == mem ]]; then
        spec_args=(--backend mem --size 32MiB)
    else
        spec_args=(--backend file --path "$CASE_DIR/$a.img" --create --size 32MiB)
    fi
    devA=$(ctl_ok add "$a" "${spec_args[@]}" --queues 1)
    idA=${devA#/dev/ublkb}
    mkfs.ext4 -q -F "$devA"
    mount -t ext4 "$devA" "$mnt"
    echo "device $a" >"$mnt/hello"
    sync
    cp "$state/devices/$a.json" "$CASE_DIR/stale.json"
    [[ $backend == mem ]] && cp "$state/mem/$a" "$CASE_DIR/stale.mem"

    # Deleted while mounted: removed, but the kernel holds the id.
    local out
    out=$(ctl_ok del --force "$a")
    [[ $out == *"/dev/ublkb$idA is still open"* ]] || fail "del $a said '$out'"
    [[ $(list_field "$a" .state) == removed-pending ]] ||
        fail "$a after del while mounted: $(ctl_ok --json list)"
    [[ $(jq -r .removed "$state/devices/$a.json") == true ]] ||
        fail "the record of $a does not say removed: $(cat "$state/devices/$a.json")"
    [[ $backend != mem || -e $state/mem/$a ]] || fail "the memory of $a went before its release"
    local again
    again=$(ctl_err add "$a" "${spec_args[@]}")
    [[ $again == *"was removed and the kernel releases /dev/ublkb$idA when its last user"* ]] ||
        fail "add $a while removed-pending said: $again"
    umount "$mnt"
    wait_gone "$a"
    wait_for_log "device $a: the kernel released /dev/ublkb$idA; its state record is retired" 10 \
        >/dev/null

    # The id goes to the next device.
    if [[ $backend == file ]]; then
        spec_args=(--backend file --path "$CASE_DIR/$b.img" --create --size 32MiB)
    fi
    devB=$(ctl_ok add "$b" "${spec_args[@]}" --queues 1)
    idB=${devB#/dev/ublkb}
    ((idB == idA)) || fail "$b got /dev/ublkb$idB, not the released /dev/ublkb$idA"
    head -c 4194304 /dev/urandom >"$CASE_DIR/data"
    dd if="$CASE_DIR/data" of="$devB" bs=1M oflag=direct status=none
    sum=$(sha256sum <"$CASE_DIR/data" | cut -d' ' -f1)

    # A's stale record comes back, as a failed delete of an older ublkd left it.
    if [[ $form == v1 ]]; then
        jq '.version = 1 | del(.identity) | del(.removed)' "$CASE_DIR/stale.json" \
            >"$state/devices/$a.json"
    else
        cp "$CASE_DIR/stale.json" "$state/devices/$a.json"
    fi
    [[ $backend == mem ]] && cp "$CASE_DIR/stale.mem" "$state/mem/$a"

    restart_daemon "$way"
    # The data first: that is what a hijack or a wrong delete destroys.
    [[ -b $devB ]] || fail "round $n ($backend, $way, $form): $devB is gone"
    got=$(head -c 4194304 "$devB" | sha256sum | cut -d' ' -f1)
    [[ $got == "$sum" ]] || fail "round $n ($backend, $way, $form): $b lost its data"
    [[ $(list_field "$b" .state) == live && $(list_field "$b" .block_device) == "$devB" ]] ||
        fail "$b after the restart: $(ctl_ok --json list)"
    wait_for_log "device $b recovered: live again at $devB" 5 >/dev/null
    wait_for_log "device $a: kernel device $idA is another device .*: left alone, the record is stale" \
        5 >/dev/null
    wait_gone "$a"
    [[ -e $state/devices/$b.json ]] || fail "the record of $b is gone"
    ctl_ok del "$b" >/dev/null
    wait_gone "$b"
    log "round $n ($backend, $way, $form record): $b kept its data and $devB; $a's record retired"
}

n=0
for backend in mem file; do
    for way in kill upgrade; do
        for ((i = 1; i <= ROUNDS; i++)); do
            form=v2
            [[ $way == kill && $i == 1 ]] && form=v1
            round "$backend" "$way" $((++n)) "$form"
        done
    done
done
grep -q "state new -> recovering" "$UBLKD_LOG" || fail "the last daemon recovered nothing"
stop_ublkd 20
assert_no_ublk_devices
[[ -z $(ls -A "$state/devices") ]] || fail "records left: $(ls "$state/devices")"
log "$n rounds: every healthy device kept its data, every stale record was retired"
