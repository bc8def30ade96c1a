#!/bin/bash
# A 256 MiB mem device with two queues goes live within the start timeout,
# walking the state machine in order, with the geometry asked for; fio then
# writes random data and verifies it (crc32c, every block read back) with
# 4 KiB blocks and with mixed sizes from 512 B to 128 KiB, each at queue
# depth 1 and 64. Finally SIGTERM removes the device and ublkd exits 0.
# vm-timeout: 150
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd fio blockdev

readonly START_TIMEOUT=10
readonly SIZE=$((256 << 20))
cfg=$CASE_DIR/config
write_spec "$cfg" mem0 \
    '{"name":"mem0","backend":{"type":"mem","size":"256MiB"},"queues":2,"queue_depth":128}'

t_start=${EPOCHREALTIME/./}
start_ublkd "$cfg" --start-timeout "$START_TIMEOUT"
dev=$(wait_live mem0 $((START_TIMEOUT + 20)))
t_live=${EPOCHREALTIME/./}

# On the daemon's own clock: from its first log line (the process is up) and
# from ADD_DEV to "live at", each within the start timeout.
first_line=$(grep -m1 -E '^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3} ' "$UBLKD_LOG") ||
    fail "no timestamped line in the daemon log"
added_line=$(grep -m1 -E 'device mem0: state new -> added' "$UBLKD_LOG") ||
    fail "no 'state new -> added' line for mem0"
live_line=$(grep -m1 -E 'device mem0 live at ' "$UBLKD_LOG")
up_live_ms=$(span_ms "$first_line" "$live_line")
add_live_ms=$(span_ms "$added_line" "$live_line")
log "per the daemon log: start -> live ${up_live_ms} ms, added -> live ${add_live_ms} ms"
((up_live_ms <= START_TIMEOUT * 1000)) ||
    fail "mem0 went live ${up_live_ms} ms after the daemon started (start timeout ${START_TIMEOUT}s)"
((add_live_ms <= START_TIMEOUT * 1000)) ||
    fail "mem0 took ${add_live_ms} ms from added to live (start timeout ${START_TIMEOUT}s)"

# Wall clock from exec to a usable block device. It also counts loading the
# binary, which a sanitizer build on a slow emulated CPU can stretch to
# seconds, hence the slack; normally this is well under a second or two.
wall_ms=$(((t_live - t_start) / 1000))
log "exec -> $dev usable: ${wall_ms} ms"
((wall_ms <= (START_TIMEOUT + 10) * 1000)) ||
    fail "mem0 took ${wall_ms} ms from exec to a usable $dev"

# Every state on the way, in order, and nothing else.
want='new -> added,added -> params-set,params-set -> queues-primed,queues-primed -> start-pending,start-pending -> live'
got=$(grep -oE 'device mem0: state .*' "$UBLKD_LOG" | sed 's/^device mem0: state //' | paste -sd, -)
[[ $got == "$want" ]] || fail "mem0 state transitions: got '$got', want '$want'"

# Geometry: size, logical block size, two hardware queues.
size=$(dev_size "$dev")
((size == SIZE)) || fail "$dev is $size bytes, want $SIZE"
lbs=$(blockdev --getss "$dev")
((lbs == 512)) || fail "$dev logical block size $lbs, want 512"
blk=${dev#/dev/}
nq=$(compgen -G "/sys/block/$blk/mq/*" | wc -l)
((nq == 2)) || fail "$dev has $nq hardware queues, want 2"

# Random writes, then every block read back and checked. 8-16 MiB a run
# keeps TCG fast (queue depth 1 with 4 KiB blocks is the slowest); the
# offsets spread the runs over the device.
fio_verify "$dev" --size=8M --offset=0 --bs=4k --iodepth=1
fio_verify "$dev" --size=16M --offset=64M --bs=4k --iodepth=64
fio_verify "$dev" --size=16M --offset=128M --bsrange=512-128k --iodepth=1
fio_verify "$dev" --size=16M --offset=$((256 - 16))M --bsrange=512-128k --iodepth=64

# The daemon logged no I/O trouble while serving the runs.
if grep -E ' (error|critical) ' "$UBLKD_LOG" >&2; then
    fail "ublkd logged errors while serving fio"
fi

stop_ublkd 15
grep -q 'device mem0 removed' "$UBLKD_LOG" || fail "no 'device mem0 removed' in the log"
assert_no_ublk_devices
log "mem fio verify passed"
