#!/bin/bash
# START_DEV failure path. The test hook UBLKD_TEST_UNPRIMED_TAG=bad0 leaves
# one tag of bad0 without a FETCH_REQ, so the kernel's START_DEV never
# completes. With --start-timeout 3, bad0 must end `failed` with the timeout
# as the reason about 3 s after it started, be deleted from the kernel (no
# /dev/ublkb or /dev/ublkc of it left), and not take the daemon down with
# it: good0, in the same configuration, goes live and serves a verified fio
# run, and SIGTERM still stops everything and exits 0. Twice: with a command
# per request, and with "batch_io": true (where the kernel offers
# UBLK_F_BATCH_IO the unprimed tag is one left out of PREP_IO_CMDS).
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd fio

readonly START_TIMEOUT=3
# How far past the timeout bad0 may take to be torn down and reported.
readonly MARGIN=4

# round BATCH_IO: the whole check, with "batch_io" set to BATCH_IO.
round() {
    cfg=$CASE_DIR/config-$1
    mkdir -p "$cfg"
    echo "{\"batch_io\": $1}" >"$cfg/ublkd.json"
    # bad0 sorts first: a daemon that brings devices up one at a time meets the
    # failure before it gets to good0.
    write_spec "$cfg" bad0 \
        '{"name":"bad0","backend":{"type":"mem","size":"64MiB"},"queues":1,"queue_depth":32}'
    write_spec "$cfg" good0 \
        '{"name":"good0","backend":{"type":"mem","size":"128MiB"},"queues":2,"queue_depth":64}'

    t_start=${EPOCHREALTIME/./}
    UBLKD_TEST_UNPRIMED_TAG=bad0 start_ublkd "$cfg" --start-timeout "$START_TIMEOUT"

    # Generous: the bound that matters is checked on the daemon's own clock
    # below; this one only has to survive a slow (sanitizer, loaded host) run.
    failed_line=$(wait_for_log 'device bad0: state [a-z-]+ -> failed: ' 30)
    t_failed=${EPOCHREALTIME/./}
    log "bad0: ${failed_line#* device bad0: }"
    log "daemon start -> bad0 failed: $(((t_failed - t_start) / 1000)) ms"

    grep -q 'device bad0: test hook active' "$UBLKD_LOG" || fail "the test hook did not engage for bad0"
    # It failed where it should: waiting in START_DEV, for the timeout.
    [[ $failed_line == *'device bad0: state start-pending -> failed: START_DEV timed out after '* ]] ||
        fail "bad0 failed, but not by the START_DEV timeout: $failed_line"
    [[ $failed_line == *"timed out after $((START_TIMEOUT * 1000)) ms"* ]] ||
        fail "the timeout reported is not the configured ${START_TIMEOUT}s: $failed_line"
    # A failed teardown is appended as "(cleanup: ...)".
    [[ $failed_line != *'(cleanup:'* ]] || fail "tearing bad0 down had problems: $failed_line"
    want='new -> added,added -> params-set,params-set -> queues-primed,queues-primed -> start-pending,start-pending -> failed'
    got=$(grep -oE 'device bad0: state [a-z-]+ -> [a-z-]+' "$UBLKD_LOG" | sed 's/^device bad0: state //' | paste -sd, -)
    [[ $got == "$want" ]] || fail "bad0 state transitions: got '$got', want '$want'"
    grep -q 'device bad0 live' "$UBLKD_LOG" && fail "bad0 was reported live"

    # Timing on the daemon's own clock. The START_DEV deadline starts once the
    # parameters are set: the failure must not come before it, and must come
    # within the margin after it (cancelling START_DEV, stopping the queues and
    # deleting the device included).
    added_line=$(grep -m1 'device bad0: state new -> added' "$UBLKD_LOG")
    params_line=$(grep -m1 'device bad0: state added -> params-set' "$UBLKD_LOG")
    took=$(span_ms "$params_line" "$failed_line")
    total=$(span_ms "$added_line" "$failed_line")
    log "bad0 params-set -> failed: ${took} ms, added -> failed: ${total} ms (timeout ${START_TIMEOUT}s)"
    ((took >= START_TIMEOUT * 1000 - 50)) || fail "bad0 failed after ${took} ms, before the ${START_TIMEOUT}s timeout"
    ((total <= (START_TIMEOUT + MARGIN) * 1000)) ||
        fail "bad0 failed only ${total} ms after it was added (timeout ${START_TIMEOUT}s + ${MARGIN}s margin)"

    good=$(wait_live good0 20)
    ublkd_alive || fail "ublkd exited after bad0 failed"
    if [[ $1 == true ]] && grep -q 'kernel ublk features .*BATCH_IO' "$UBLKD_LOG"; then
        grep -q 'device good0 live at .*batched io commands' "$UBLKD_LOG" || fail "good0 is not batched"
    fi

    # Exactly one ublk device in the kernel: good0's. bad0's was deleted.
    good_id=${good#/dev/ublkb}
    blocks=$(compgen -G '/dev/ublkb*' | paste -sd' ' - || true)
    chars=$(compgen -G '/dev/ublkc*' | paste -sd' ' - || true)
    [[ $blocks == "$good" ]] || fail "block devices: '$blocks', want only $good"
    [[ $chars == "/dev/ublkc$good_id" ]] || fail "char devices: '$chars', want only /dev/ublkc$good_id"
    if [[ -d /sys/class/ublk-char ]]; then
        sys=$(compgen -G '/sys/class/ublk-char/*' | sed 's|.*/||' | paste -sd' ' - || true)
        [[ $sys == "ublkc$good_id" ]] || fail "/sys/class/ublk-char holds '$sys', want only ublkc$good_id"
    fi

    # The daemon still serves I/O.
    fio_verify "$good" --size=16M --bs=4k --iodepth=32
    ublkd_alive || fail "ublkd exited while serving good0"

    stop_ublkd 15
    grep -q 'device good0 removed' "$UBLKD_LOG" || fail "no 'device good0 removed' in the log"
    assert_no_ublk_devices
    show_log "$UBLKD_LOG" 30
    log "start timeout passed (batch_io $1)"
}

round false
round true
