#!/bin/bash
# `ublkctl stats` counts what the device served: per operation its requests
# and bytes equal the kernel's own counts of the block device
# (/sys/block/ublkbN/stat) over the same fio runs, on two queues that both
# served and add up to the total; a failed read counts as a read error; the
# latency histogram holds every answer; nothing is left in flight. --watch
# prints rates while fio runs, and --format prometheus is well-formed and
# says the same.
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd jq fio awk blkdiscard truncate

cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"

m0=$(ctl_ok add m0 --backend mem --size 128MiB --queues 2)
img=$CASE_DIR/f0.img
f0=$(ctl_ok add f0 --backend file --path "$img" --size 16MiB --create --buffered --queues 1)

# kstat DEV: the kernel's counters of DEV as "reads read_sectors writes
# write_sectors discards discard_sectors flushes".
kstat() {
    local f
    read -r -a f <"/sys/block/${1#/dev/}/stat"
    echo "${f[0]} ${f[2]} ${f[4]} ${f[6]} ${f[11]:-0} ${f[13]:-0} ${f[15]:-0}"
}

# ustat NAME: ublkd's totals of NAME in the same order.
ustat() {
    json_get "$(ctl_ok --json stats "$1")" '.devices[0].total |
        "\(.read.ops) \(.read.bytes / 512) \(.write.ops) \(.write.bytes / 512) \(.discard.ops) \(.discard.bytes / 512) \(.flush.ops)"'
}

# same_deltas WHAT K0 K1 U0 U1 [FIELD...]: the kernel's and ublkd's counts
# grew alike, in every field or in those (indices) given.
same_deltas() {
    local what=$1 i names=(reads read_sectors writes write_sectors discards discard_sectors flushes)
    local -a kb ka ub ua fields
    read -r -a kb <<<"$2"
    read -r -a ka <<<"$3"
    read -r -a ub <<<"$4"
    read -r -a ua <<<"$5"
    shift 5
    fields=("$@")
    ((${#fields[@]})) || fields=("${!names[@]}")
    for i in "${fields[@]}"; do
        local kd=$((ka[i] - kb[i])) ud=$((ua[i] - ub[i]))
        ((kd == ud)) || fail "$what: ${names[i]} grew by $kd in the kernel's count, by $ud in ublkd's"
        log "$what: ${names[i]} +$ud (the kernel counts the same)"
    done
}

k0=$(kstat "$m0")
u0=$(ustat m0)
fio_args=(--filename="$m0" --direct=1 --ioengine=io_uring --bs=4k --iodepth=16 --numjobs=2
    --cpus_allowed=0-1 --cpus_allowed_policy=split --size=64M --offset_increment=64M
    --group_reporting)
fio --name=w --rw=randwrite --number_ios=2000 "${fio_args[@]}" >"$CASE_DIR/fio.w" 2>&1 ||
    { cat "$CASE_DIR/fio.w" >&2; fail "fio randwrite failed"; }
fio --name=r --rw=randread --number_ios=1500 "${fio_args[@]}" >"$CASE_DIR/fio.r" 2>&1 ||
    { cat "$CASE_DIR/fio.r" >&2; fail "fio randread failed"; }
blkdiscard -o 0 -l 8M "$m0" || fail "blkdiscard failed"
k1=$(kstat "$m0")
u1=$(ustat m0)
same_deltas m0 "$k0" "$k1" "$u0" "$u1"
read -r -a d0 <<<"$u0"
read -r -a d1 <<<"$u1"
((d1[0] - d0[0] >= 3000 - 50 && d1[2] - d0[2] >= 4000 - 50)) ||
    fail "fewer requests than fio made: $((d1[0] - d0[0])) reads, $((d1[2] - d0[2])) writes"

s=$(ctl_ok --json stats m0)
[[ $(json_get "$s" '.devices[0].queues | length') == 2 ]] || fail "m0 does not list 2 queues"
json_get "$s" '.devices[0].queues | all(.write.ops > 0)' | grep -qx true ||
    fail "not both queues served writes: $(json_get "$s" '[.devices[0].queues[].write.ops]')"
[[ $(json_get "$s" '.devices[0] | ([.queues[].read.ops] | add) == .total.read.ops') == true ]] ||
    fail "the queues' reads do not add up to the total"
[[ $(json_get "$s" '.devices[0].total | .latency_us.count == ([.read, .write, .flush, .discard, .write_zeroes] | map(.ops) | add)') == true ]] ||
    fail "the latency histogram does not hold every answer"
[[ $(json_get "$s" '.devices[0].total.in_flight') == 0 ]] || fail "requests left in flight"
[[ $(json_get "$s" '[.devices[0].total[] | objects | .errors // 0] | add') == 0 ]] ||
    fail "errors counted on m0"

# Flushes, on a device with a write cache.
k0=$(kstat "$f0")
u0=$(ustat f0)
fio --name=fl --filename="$f0" --rw=write --bs=4k --size=1M --fsync=8 --ioengine=sync \
    >"$CASE_DIR/fio.f" 2>&1 || { cat "$CASE_DIR/fio.f" >&2; fail "fio with fsync failed"; }
k1=$(kstat "$f0")
u1=$(ustat f0)
# Not the writes: the kernel also counts each fsync's empty flush bio as a
# write (of no sectors), which reaches the device as the flush alone.
same_deltas f0 "$k0" "$k1" "$u0" "$u1" 0 1 3 6
read -r -a d0 <<<"$u0"
read -r -a d1 <<<"$u1"
read -r -a kd0 <<<"$k0"
read -r -a kd1 <<<"$k1"
log "f0: writes +$((d1[2] - d0[2])) (the kernel counts $((kd1[2] - kd0[2])) with the empty flush bios)"
# The block layer may join a flush with one still in flight (31 for 32
# seen): the kernel's count is the measure, the fsyncs only a floor.
((d1[6] - d0[6] >= 16)) || fail "$((d1[6] - d0[6])) flushes for 32 fsyncs"

# A read the backend fails: its file was cut behind the device's back. The
# block read was written first: a file on tmpfs is served from its pages,
# and a 64 KiB chunk nothing was written to is zeros without asking the file.
dd if=/dev/urandom of="$f0" bs=4k seek=3000 count=1 oflag=direct status=none
truncate -s 8M "$img"
if dd if="$f0" of=/dev/null bs=4k skip=3000 count=1 iflag=direct status=none 2>/dev/null; then
    fail "a read past the cut file succeeded"
fi
errors=$(json_get "$(ctl_ok --json stats f0)" '.devices[0].total.read.errors')
((errors >= 1)) || fail "the failed read was not counted as a read error"
log "read errors on f0: $errors"
ctl_ok del f0 >/dev/null

# Rates while fio reads.
fio --name=bg --rw=randread --time_based --runtime=4 "${fio_args[@]}" >/dev/null 2>&1 &
bg=$!
add_cleanup "kill $bg 2>/dev/null || true"
watch=$(ctl_ok stats m0 --watch 1 --count 2)
wait "$bg" || fail "the background fio failed"
printf '%s\n' "$watch" >&2
(($(grep -c '^NAME ' <<<"$watch") == 2)) || fail "--count 2 did not print 2 reports"
awk '$1 == "m0" && $2 + 0 > 0 { n++ } END { exit n ? 0 : 1 }' <<<"$watch" ||
    fail "--watch showed no reads per second while fio read"

# Prometheus: every line a comment or a sample, and the same numbers.
prom=$(ctl_ok stats --format prometheus)
bad=$(grep -Ev '^(# (HELP|TYPE) .*|[a-z_]+\{[^}]*\} [0-9.e+-]+)$' <<<"$prom" || true)
[[ -z $bad ]] || fail "not Prometheus's text format: $bad"
s=$(ctl_ok --json stats m0)
writes=$(json_get "$s" '.devices[0].total.write.ops')
grep -qx "ublkd_requests_total{device=\"m0\",op=\"write\"} $writes" <<<"$prom" ||
    fail "Prometheus shows other writes than $writes"
inf=$(awk '/^ublkd_request_latency_seconds_bucket\{device="m0",le="\+Inf"\}/ { print $2 }' <<<"$prom")
count=$(awk '/^ublkd_request_latency_seconds_count\{device="m0"\}/ { print $2 }' <<<"$prom")
[[ -n $inf && $inf == "$count" ]] || fail "the +Inf bucket ($inf) is not the count ($count)"

stop_ublkd 30
assert_no_ublk_devices
log "stats passed"
