#!/bin/bash
# Under systemd a mem device keeps its data and an ext4 file system mounted
# on it sees no I/O error across (1) `ublkctl upgrade`: ublkd exits with 75,
# systemd starts it again at once, and the new process recovers the device
# from the state dir and the memory from the fd store; (2) kill -9: the same
# through Restart=on-failure. A writer appends to a file on the file system
# the whole time. Then `systemctl stop` removes the device and lets the
# stored memory go.
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

require_unit ublkd.service
require_cmd mkfs.ext4 sha256sum jq
mnt=/srv/upg
spec=/etc/ublkd/devices.d/upg0.json
mkdir -p /etc/ublkd/devices.d "$mnt"
echo '{"name":"upg0","backend":{"type":"mem","size":"128MiB"},"queues":2}' >"$spec"
add_cleanup "umount $mnt 2>/dev/null; systemctl stop ublkd.service ublkd.socket; systemctl reset-failed ublkd.service 2>/dev/null; rm -f $spec"
systemctl start ublkd.service || { show_unit ublkd.service; fail "start ublkd failed"; }
dev=$(ublkctl --json info upg0 | jq -r .block_device)
[[ -b $dev ]] || fail "upg0 not live"
mkfs.ext4 -q -F "$dev"
mount "$dev" "$mnt"
dd if=/dev/urandom of="$mnt/data.bin" bs=1M count=16 conv=fsync status=none
sum=$(sha256sum <"$mnt/data.bin")

# The writer: one line per 20 ms, each synced, until told to stop.
(
    i=0
    while [[ ! -e $CASE_DIR/stop-writer ]]; do
        echo "line $i" >>"$mnt/log.txt" || exit 1
        sync "$mnt/log.txt" || exit 1
        i=$((i + 1))
        sleep 0.02
    done
) 2>"$CASE_DIR/writer.err" &
writer=$!
add_cleanup "touch $CASE_DIR/stop-writer; kill $writer 2>/dev/null || true"
sleep 1

# wait_restarted OLD_PID: until ublkd runs as another pid and is active.
wait_restarted() {
    local old=$1 deadline=$((${EPOCHREALTIME/./} + 40000000)) new
    while :; do
        new=$(unit_prop ublkd.service MainPID)
        if ((new > 0 && new != old)) && [[ $(unit_prop ublkd.service ActiveState) == active ]]; then
            echo "$new"
            return 0
        fi
        ((${EPOCHREALTIME/./} < deadline)) || { show_unit ublkd.service; fail "ublkd not back within 40 s"; }
        sleep 0.2
    done
}

# 1: upgrade.
pid=$(unit_prop ublkd.service MainPID)
out=$(ublkctl upgrade) || fail "ublkctl upgrade failed"
log "$out"
[[ $out == *"handed over 1 device(s): upg0"* ]] || fail "unexpected answer: $out"
new=$(wait_restarted "$pid")
unit_journal ublkd.service | grep -q "device upg0 recovered: live again at $dev" ||
    { unit_journal ublkd.service | tail -n 30 >&2; fail "upg0 not recovered after the upgrade"; }
log "upgraded: pid $pid -> $new"
sleep 1

# 2: kill -9.
pid=$new
kill -KILL "$pid"
new=$(wait_restarted "$pid")
[[ $(unit_journal ublkd.service | grep -c "device upg0 recovered: live again at $dev") == 2 ]] ||
    { unit_journal ublkd.service | tail -n 30 >&2; fail "upg0 not recovered after kill -9"; }
log "killed: pid $pid -> $new"
sleep 1

touch "$CASE_DIR/stop-writer"
rc=0
wait "$writer" || rc=$?
((rc == 0)) || fail "the writer on the file system failed (status $rc): $(<"$CASE_DIR/writer.err")"
lines=$(wc -l <"$mnt/log.txt")
[[ $(tail -n 1 "$mnt/log.txt") == "line $((lines - 1))" ]] || fail "log.txt is not contiguous"
log "writer wrote $lines lines across the upgrade and the kill"
umount "$mnt"
e2fsck -f -n "$dev" >"$CASE_DIR/fsck.out" 2>&1 || { cat "$CASE_DIR/fsck.out" >&2; fail "e2fsck found errors"; }
mount "$dev" "$mnt"
[[ $(sha256sum <"$mnt/data.bin") == "$sum" ]] || fail "data.bin changed"
umount "$mnt"
if dmesg | grep -E "EXT4-fs (error|warning)|I/O error, dev ${dev#/dev/}" >&2; then
    fail "the kernel logged file system or I/O errors"
fi

systemctl stop ublkd.service
[[ ! -e $dev ]] || fail "$dev still exists after systemctl stop"
[[ -z $(ls -A /run/ublkd/devices 2>/dev/null) ]] || fail "state records left: $(ls /run/ublkd/devices)"
log "upgrade and crash under systemd passed"
