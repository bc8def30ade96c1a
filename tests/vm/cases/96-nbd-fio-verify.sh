#!/bin/bash
# nbd devices served by nbdkit over a Unix socket. A memory export with
# multi-conn: two queues, a connection each, both used; fio crc32c verify
# at 4k QD1 and 4k..1M QD64. An export without multi-conn: one queue
# although two were asked for, and `info` and the log say why; fio verify,
# then ext4 round trip (checksums across a remount) and e2fsck. `info`
# shows the URI and what was negotiated; the server's capabilities reach
# the block device (write cache, FUA, discard).
# vm-timeout: 240
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd nbdkit fio jq mkfs.ext4 e2fsck sha256sum

start_nbdkit mc memory 256M
mc_pid=$NBDKIT_PID
start_nbdkit one --filter=multi-conn memory 128M multi-conn-mode=disable
one_pid=$NBDKIT_PID

cfg=$CASE_DIR/config
mkdir -p "$cfg"
start_ublkd_api "$cfg"

d2=$(ctl_ok add n2 --backend nbd --uri "$(nbd_uri mc)" --queues 2 --depth 64)
info=$(ctl_ok --json info n2)
log "info n2: $(jq -c .backend <<<"$info")"
[[ $(json_get "$info" .backend.uri) == "$(nbd_uri mc)" ]] || fail "info shows another URI"
[[ $(json_get "$info" .queues) == 2 ]] || fail "n2 has $(json_get "$info" .queues) queues, want 2"
[[ $(json_get "$info" .size) == $((256 << 20)) ]] || fail "n2 is not the export's size"
[[ $(json_get "$info" .backend.negotiated.multi_conn) == true ]] || fail "multi-conn not negotiated"
[[ $(json_get "$info" .backend.request_timeout_ms) == 30000 ]] || fail "request_timeout is not the default"
q=/sys/block/${d2#/dev/}/queue
[[ $(<"$q/write_cache") == "write back" ]] || fail "no volatile write cache (the server can flush)"
[[ $(<"$q/fua") == 1 ]] || fail "no FUA (the server has it)"
(($(<"$q/discard_max_bytes") > 0)) || fail "no discard (the server can trim)"

fio_verify "$d2" --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
    --size=32M --offset_increment=32M --iodepth=1 --bs=4k --number_ios=512
fio_verify "$d2" --numjobs=2 --cpus_allowed=0-1 --cpus_allowed_policy=split \
    --size=64M --offset_increment=64M --iodepth=64 --bsrange=4k-1M
assert_queues_used "$d2"

d1=$(ctl_ok add n1 --backend nbd --uri "$(nbd_uri one)" --queues 2)
info=$(ctl_ok --json info n1)
log "info n1: $(jq -c .backend <<<"$info")"
[[ $(json_get "$info" .queues) == 1 ]] || fail "n1 has $(json_get "$info" .queues) queues without multi-conn"
json_get "$info" .backend.negotiated.queues_note | grep -q multi-conn || fail "info does not say why n1 has one queue"
wait_for_log "device n1 live at .*one queue: the server does not allow several connections" 5 >/dev/null
fio_verify "$d1" --size=32M --iodepth=64 --bsrange=4k-1M

mnt=$CASE_DIR/mnt
mkdir -p "$mnt"
mkfs.ext4 -q -F "$d1"
mount "$d1" "$mnt"
add_cleanup "umount $mnt 2>/dev/null || true"
for i in 1 2 3; do dd if=/dev/urandom of="$mnt/f$i" bs=1M count=8 status=none; done
(cd "$mnt" && sha256sum f1 f2 f3 >"$CASE_DIR/sums")
umount "$mnt"
mount "$d1" "$mnt"
(cd "$mnt" && sha256sum -c --quiet "$CASE_DIR/sums") || fail "files changed across a remount"
umount "$mnt"
out=$(e2fsck -fn "$d1" 2>&1) || { echo "$out" >&2; fail "e2fsck found damage"; }

ctl_ok del n1 >/dev/null
ctl_ok del n2 >/dev/null
stop_ublkd 20
assert_no_ublk_devices
stop_nbdkit "$mc_pid"
stop_nbdkit "$one_pid"
log "nbd fio verify passed"
