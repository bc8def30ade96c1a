#!/bin/bash
# A table of bad requests and bad specs sent raw to the admin socket: each
# gets its own error code and a message naming the problem, and the daemon
# keeps serving. Also: a 2 MiB line, binary garbage, a client that sends
# nothing, one that stops half-way, and ublkctl's own bad arguments. At the
# end the daemon is alive, the devices that existed before still hold their
# data, and nothing else was created.
# vm-timeout: 240
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd jq ublkd-admin-send sha256sum dd

cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
start_ublkd_api "$cfg"
sock=$UBLKD_SOCKET

# Devices that must come through untouched: good0 (mem) with a pattern, and
# locked0, a file device whose file a bad request tries to take.
good=$(ctl_ok add good0 --backend mem --size 32MiB)
img=$CASE_DIR/locked.img
ctl_ok add locked0 --backend file --path "$img" --create --size 16MiB >/dev/null
dd if=/dev/urandom of="$CASE_DIR/pat" bs=1M count=8 status=none
dd if="$CASE_DIR/pat" of="$good" bs=1M seek=4 oflag=direct conv=fsync status=none
want=$(sha256sum <"$CASE_DIR/pat")

# send LINE: one request line (newline added), prints the response line.
send() {
    printf '%s\n' "$1" | ublkd-admin-send --lines 1 --timeout-ms 20000 "$sock" 2>"$CASE_DIR/send.err"
}

# spec JSON-BACKEND [EXTRA-FIELDS]: an add request for device "bad".
spec() {
    printf '{"op":"add","spec":{"name":"bad","backend":%s%s}}' "$1" "${2:+,$2}"
}

mem='{"type":"mem","size":"16MiB"}'
checked=0
# expect CODE FRAGMENT REQUEST: the response is an error with CODE whose
# message contains FRAGMENT, and the daemon still answers a list.
expect() {
    local code=$1 fragment=$2 req=$3 resp ok got_code msg
    resp=$(send "$req")
    # One jq per request: processes are slow to start under TCG.
    IFS=$'\t' read -r ok got_code msg < <(jq -r '[.ok, .error.code, .error.message] | @tsv' <<<"$resp" 2>/dev/null) ||
        fail "response is not JSON: $resp (request: ${req:0:200})"
    [[ $ok == false ]] || fail "request succeeded: ${req:0:200} -> $resp"
    [[ $got_code == "$code" ]] || fail "request ${req:0:200}: code '$got_code', want '$code' ($msg)"
    [[ $msg == *"$fragment"* ]] || fail "request ${req:0:200}: message '$msg' lacks '$fragment'"
    printf '  %-18s %s\n' "$code" "$msg" >&2
    checked=$((checked + 1))
}

log "bad specs"
expect invalid-spec 'must be greater than 0' "$(spec '{"type":"mem","size":0}')"
expect invalid-spec 'not a multiple of the logical block size 512' "$(spec '{"type":"mem","size":1000}')"
expect invalid-spec 'not a multiple of the logical block size 4096' '{"op":"add","spec":{"name":"bad","logical_block_size":4096,"backend":{"type":"mem","size":6144}}}'
expect invalid-spec 'exceeds the largest mem device' "$(spec '{"type":"mem","size":"1000TiB"}')"
expect invalid-spec 'larger than 18446744073709551615' "$(spec '{"type":"null","size":"99999999999TiB"}')"
expect invalid-spec 'unknown unit' "$(spec '{"type":"mem","size":"12XB"}')"
expect invalid-spec 'invalid name "bad/name"' '{"op":"add","spec":{"name":"bad/name","backend":{"type":"mem","size":4096}}}'
expect invalid-spec 'invalid name ""' '{"op":"add","spec":{"name":"","backend":{"type":"mem","size":4096}}}'
expect invalid-spec 'invalid name' "{\"op\":\"add\",\"spec\":{\"name\":\"$(printf 'a%.0s' {1..33})\",\"backend\":{\"type\":\"mem\",\"size\":4096}}}"
expect invalid-spec 'invalid name ".."' '{"op":"add","spec":{"name":"..","backend":{"type":"mem","size":4096}}}'
expect invalid-spec 'backend.path: required field is missing' "$(spec '{"type":"file"}')"
expect invalid-spec 'is not an absolute path' "$(spec '{"type":"file","path":"disk.img"}')"
expect backend-error 'is a directory' "$(spec '{"type":"file","path":"/tmp"}')"
expect backend-error 'does not exist' "$(spec '{"type":"file","path":"/tmp/no-such-file.img"}')"
expect backend-error 'already in use' "$(spec "{\"type\":\"file\",\"path\":\"$img\"}")"
expect invalid-spec 'unknown backend type "iscsi"' "$(spec '{"type":"iscsi","size":4096}')"
expect invalid-spec 'spec.backend.uri: required field is missing' "$(spec '{"type":"nbd","size":4096}')"
expect invalid-spec 'unknown key "colour"' "$(spec "$mem" '"colour":"red"')"
expect invalid-spec 'unknown key "path"' "$(spec '{"type":"mem","size":4096,"path":"/x"}')"
expect invalid-spec 'queues: expected an integer' "$(spec "$mem" '"queues":"4"')"
expect invalid-spec 'queues: 0 is out of range' "$(spec "$mem" '"queues":0')"
expect invalid-spec 'queue_depth: 5000 is out of range' "$(spec "$mem" '"queue_depth":5000')"
expect invalid-spec 'logical_block_size: 1000 is not a power of two' "$(spec "$mem" '"logical_block_size":1000')"
expect invalid-spec 'read_only: expected true or false' "$(spec "$mem" '"read_only":"yes"')"
expect invalid-spec 'backend: required field is missing' '{"op":"add","spec":{"name":"bad"}}'
expect exists 'device good0 already exists' '{"op":"add","spec":{"name":"good0","backend":{"type":"mem","size":4096}}}'

log "bad requests"
expect invalid-request '"spec"' '{"op":"add","spec":"good0"}'
expect invalid-request '"persist"' "{\"op\":\"add\",\"spec\":{\"name\":\"bad\",\"backend\":$mem},\"persist\":\"yes\"}"
expect invalid-request 'spec' '{"op":"add"}'
expect invalid-request '"x"' '{"op":"list","x":1}'
expect invalid-request 'name' '{"op":"del"}'
expect not-found 'no device named nosuch' '{"op":"del","name":"nosuch"}'
expect not-found 'no device named nosuch' '{"op":"info","name":"nosuch"}'
expect unknown-op 'frobnicate' '{"op":"frobnicate"}'
expect invalid-request 'op' '{"id":1}'
expect invalid-request 'op' '{"op":7}'
expect invalid-request 'object' '[1,2]'
expect invalid-json 'column' '{"op": "list"'
expect invalid-json '' 'list please'

# Double delete: the second one finds nothing.
ctl_ok add tmp0 --backend null --size 1MiB >/dev/null
ctl_ok del tmp0 >/dev/null
expect not-found 'no device named tmp0' '{"op":"del","name":"tmp0"}'

# Binary garbage (no newline inside), then a newline.
head -c 3000 /dev/urandom | tr -d '\n' >"$CASE_DIR/garbage"
resp=$({ cat "$CASE_DIR/garbage"; echo; } | ublkd-admin-send --lines 1 "$sock" 2>/dev/null)
[[ $(jq -r .error.code <<<"$resp") == invalid-json ]] || fail "binary garbage: $resp"
checked=$((checked + 1))

# A 2 MiB line: request-too-large, then the daemon closes the connection.
resp=$({ head -c $((2 << 20)) /dev/zero | tr '\0' 'a'; echo; } |
    ublkd-admin-send --timeout-ms 20000 "$sock" 2>"$CASE_DIR/send.err")
[[ $(head -n 1 <<<"$resp" | jq -r .error.code) == request-too-large ]] || fail "2 MiB line: $resp"
grep -q closed-by-peer "$CASE_DIR/send.err" || fail "2 MiB line: connection not closed: $(<"$CASE_DIR/send.err")"
checked=$((checked + 1))

# Silent and half-sent clients are dropped after the idle timeout, and while
# they hang on, other clients are served at once.
ublkd-admin-send --timeout-ms 30000 "$sock" </dev/null >"$CASE_DIR/silent.out" 2>"$CASE_DIR/silent.err" &
silent=$!
printf '{"op": "li' | ublkd-admin-send --timeout-ms 30000 "$sock" >"$CASE_DIR/half.out" 2>"$CASE_DIR/half.err" &
half=$!
sleep 1
t0=${EPOCHREALTIME/./}
ctl_ok list >/dev/null
t1=${EPOCHREALTIME/./}
(((t1 - t0) < 5000000)) || fail "list took $(((t1 - t0) / 1000)) ms while idle clients were connected"
wait "$silent" "$half"
for w in silent half; do
    grep -q closed-by-peer "$CASE_DIR/$w.err" || fail "$w client not dropped: $(<"$CASE_DIR/$w.err")"
    ms=$(grep -oE '[0-9]+ ms' "$CASE_DIR/$w.err" | cut -d' ' -f1)
    ((ms >= 9000 && ms <= 20000)) || fail "$w client dropped after $ms ms, want about 10 s"
    log "$w client dropped after $ms ms"
done
[[ ! -s $CASE_DIR/silent.out ]] || fail "the silent client got a response: $(<"$CASE_DIR/silent.out")"
checked=$((checked + 2))

# ublkctl's own mistakes: status 1, one line, no request sent.
for args in "add" "add x" "add x --backend" "del" "info a b" "frobnicate" "list --bogus" \
    "add x --backend mem --size 1MiB --queues zero"; do
    # shellcheck disable=SC2086
    line=$(ctl_err $args)
    log "ublkctl $args -> $line"
    checked=$((checked + 1))
done
line=$(UBLKD_SOCKET=$CASE_DIR/nowhere.sock ctl_err list)
[[ $line == "ublkctl: cannot connect to ublkd at $CASE_DIR/nowhere.sock: "* ]] || fail "unreachable daemon: $line"

log "$checked bad inputs rejected"
((checked >= 25)) || fail "only $checked bad inputs checked"

# The daemon is fine: it answers, lists exactly the two devices, they are
# live, and good0 still holds its data.
ublkd_alive || fail "ublkd died"
list=$(ctl_ok --json list)
[[ $(json_get "$list" '[.[] | .name + ":" + .state] | join(" ")') == "good0:live locked0:live" ]] ||
    fail "devices after the bad requests: $list"
got=$(dd if="$good" bs=1M skip=4 count=8 iflag=direct status=none | sha256sum)
[[ $got == "$want" ]] || fail "good0 lost its data"
! grep -qiE 'internal|exception|terminate' "$UBLKD_LOG" || fail "the daemon log reports an internal error"

ctl_ok del good0 >/dev/null
ctl_ok del locked0 >/dev/null
stop_ublkd 20
assert_no_ublk_devices
log "bad requests passed"
