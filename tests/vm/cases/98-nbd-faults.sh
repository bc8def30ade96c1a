#!/bin/bash
# What goes wrong on the NBD side reaches the application as an error, in
# bounded time, and bad input leaves nothing behind:
# - server errors (nbdkit's error filter) are EIO for reads and writes, and
#   the device serves again once the server does;
# - a server slower than request_timeout (delay filter, 6 s against 2 s):
#   the read fails with EIO within request_timeout + 2 s;
# - TLS-PSK (nbds+unix://, tls-psk-file=): a verified round trip, and TLS is
#   what was negotiated;
# - a wrong key, a wrong export, a socket nobody listens on: `add` fails with
#   one line naming the URI, and no device, record or thread is left.
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd nbdkit fio jq

trigger=$CASE_DIR/fail-now
start_nbdkit err --filter=error memory 64M error=EIO error-rate=100% "error-file=$trigger"
start_nbdkit slow --filter=delay memory 64M delay-read=6
key=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
printf 'ublkd:%s\n' "$key" >"$CASE_DIR/keys.psk"
printf 'ublkd:%s\n' "${key//0/f}" >"$CASE_DIR/wrong.psk"
start_nbdkit tls --tls=require "--tls-psk=$CASE_DIR/keys.psk" memory 64M
start_nbdkit named --filter=exportname memory 16M exportname-strict=true exportname=good

cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg" --state-dir "$CASE_DIR/state"

# Server errors.
de=$(ctl_ok add e --backend nbd --uri "$(nbd_uri err)")
dd if=/dev/urandom of="$de" bs=4k count=16 oflag=direct status=none || fail "write before the errors failed"
touch "$trigger"
must_fail_eio "read with the server failing" dd if="$de" of=/dev/null bs=4k count=4 iflag=direct
must_fail_eio "write with the server failing" dd if=/dev/zero of="$de" bs=4k count=4 oflag=direct
rm -f "$trigger"
dd if="$de" of=/dev/null bs=4k count=16 iflag=direct status=none || fail "read after the errors failed"
[[ $(json_get "$(ctl_ok --json info e)" .state) == live ]] || fail "e is not live after the errors"

# A server slower than request_timeout.
ds=$(ctl_ok add s --backend nbd --uri "$(nbd_uri slow)" --request-timeout 2)
[[ $(json_get "$(ctl_ok --json info s)" .backend.request_timeout_ms) == 2000 ]] || fail "request_timeout not taken"
# The kernel's partition scan after the add (asynchronous on 7.2) reads
# the slow server too and holds the device's open until it gives up: one
# read first, whose open waits for it, so the timed one measures only the
# request timeout.
must_fail_eio "first read from a server slower than request_timeout" \
    dd if="$ds" of=/dev/null bs=4k count=1 skip=1 iflag=direct
t0=${EPOCHREALTIME/./}
must_fail_eio "read from a server slower than request_timeout" dd if="$ds" of=/dev/null bs=4k count=1 iflag=direct
ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
((ms >= 1500 && ms <= 4000)) || fail "the slow read failed after $ms ms, want request_timeout (2 s) + at most 2 s"
log "slow server: EIO after $ms ms"

# TLS-PSK.
tls_uri="nbds+unix://ublkd@/?socket=$CASE_DIR/tls.sock&tls-psk-file=$CASE_DIR/keys.psk"
dt=$(ctl_ok add t --backend nbd --uri "$tls_uri")
info=$(ctl_ok --json info t)
[[ $(json_get "$info" .backend.negotiated.tls) == true ]] || fail "TLS was not negotiated"
grep -q "$key" <<<"$info" && fail "info shows the key"
fio_verify "$dt" --size=16M --iodepth=16 --bsrange=4k-256k

# Bad input: nothing left behind.
devices_before=$(compgen -G '/dev/ublkb*' | wc -l)
tasks=("/proc/$UBLKD_PID/task/"*)
threads_before=${#tasks[@]}
bad_uris=(
    "nbds+unix://ublkd@/?socket=$CASE_DIR/tls.sock&tls-psk-file=$CASE_DIR/wrong.psk"
    "$(nbd_uri named wrong)"
    "$(nbd_uri nobody)"
)
i=0
for uri in "${bad_uris[@]}"; do
    i=$((i + 1))
    t0=${EPOCHREALTIME/./}
    msg=$(ctl_err add "bad$i" --backend nbd --uri "$uri" --connect-timeout 3)
    ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
    log "bad$i: $msg ($ms ms)"
    [[ $msg == *"$uri"* ]] || fail "the error for bad$i does not name the URI: $msg"
    ((ms < 8000)) || fail "add bad$i took $ms ms"
    ctl_ok --json list | jq -e --arg n "bad$i" 'map(select(.name == $n)) | length == 0' >/dev/null ||
        fail "bad$i is listed after its add failed"
    [[ ! -e $CASE_DIR/state/devices/bad$i.json ]] || fail "bad$i left a state record"
done
(($(compgen -G '/dev/ublkb*' | wc -l) == devices_before)) || fail "a failed add left a device"
tasks=("/proc/$UBLKD_PID/task/"*)
threads=${#tasks[@]}
((threads <= threads_before)) || fail "failed adds left threads ($threads_before before, $threads after)"
dd if="$dt" of=/dev/null bs=64k count=16 iflag=direct status=none || fail "t stopped serving after the failed adds"

for n in e s t; do ctl_ok del "$n" >/dev/null; done
stop_ublkd 20
assert_no_ublk_devices
