#!/bin/bash
# ext4 on a mem device: mkfs, mount, write a tree of files of assorted sizes
# from /dev/urandom, record their checksums, unmount, e2fsck -fn finds the
# file system clean, mount again and every checksum matches. Then SIGTERM
# stops ublkd cleanly and no ublk device is left.
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd mkfs.ext4 e2fsck sha256sum mount umount

cfg=$CASE_DIR/config
write_spec "$cfg" ext0 \
    '{"name":"ext0","backend":{"type":"mem","size":"256MiB"},"queues":2,"queue_depth":64}'
start_ublkd "$cfg" --start-timeout 10
dev=$(wait_live ext0 15)

mnt=$CASE_DIR/mnt
mkdir -p "$mnt"
add_cleanup "umount '$mnt' 2>/dev/null || true"

mkfs.ext4 -q -F "$dev" || fail "mkfs.ext4 on $dev failed"
mount -t ext4 "$dev" "$mnt" || fail "mounting $dev failed"

# A tree: nested directories, empty and tiny files, sizes around block and
# page boundaries, and a few larger files that span many requests.
sizes=(0 1 511 512 4095 4096 4097 65536 131071 1048576)
n=0 bytes=0
for d in a a/b a/b/c d e/f/g; do
    mkdir -p "$mnt/$d"
    for s in "${sizes[@]}"; do
        # head -c from urandom: random data, an exact byte count.
        head -c "$s" /dev/urandom >"$mnt/$d/file-$s" || fail "writing $mnt/$d/file-$s failed"
        n=$((n + 1)) bytes=$((bytes + s))
    done
done
for big in a/b/big-3M:3145728 e/big-8M:8388608; do
    head -c "${big#*:}" /dev/urandom >"$mnt/${big%:*}"
    n=$((n + 1)) bytes=$((bytes + ${big#*:}))
done
# Small files with long names in one directory: about 128 bytes per entry,
# so the directory spans several blocks.
mkdir -p "$mnt/many"
long=$(printf '%0120d' 0)
for i in $(seq 1 80); do
    head -c $((i * 97)) /dev/urandom >"$mnt/many/$long-$i"
    n=$((n + 1)) bytes=$((bytes + i * 97))
done
dir_bytes=$(stat -c %s "$mnt/many")
((dir_bytes > 4096)) || log "note: $mnt/many is only $dir_bytes bytes"
# A file rewritten in the middle, and a removed one: not just appends.
head -c 4194304 /dev/urandom >"$mnt/rewritten"
dd if=/dev/urandom of="$mnt/rewritten" bs=4096 seek=100 count=50 conv=notrunc status=none
n=$((n + 1)) bytes=$((bytes + 4194304))
head -c 1048576 /dev/urandom >"$mnt/removed" # not counted: gone below
sync
rm "$mnt/removed"
log "wrote $n files ($(du -sh "$mnt" | cut -f1))"

sums=$CASE_DIR/sums
(cd "$mnt" && find . -type f | LC_ALL=C sort | xargs sha256sum) >"$sums"
count=$(wc -l <"$sums")
((count == n)) || fail "checksummed $count files, wrote $n"

umount "$mnt" || fail "umount $mnt failed"

# -f: check even though the file system is clean; -n: change nothing.
if ! e2fsck -f -n "$dev" >"$CASE_DIR/e2fsck.out" 2>&1; then
    cat "$CASE_DIR/e2fsck.out" >&2
    fail "e2fsck -fn reports problems on $dev"
fi
log "e2fsck: $(tail -n 1 "$CASE_DIR/e2fsck.out")"

# Drop cached pages of the block device so the second mount really reads
# from the daemon.
blockdev --flushbufs "$dev"
echo 3 >/proc/sys/vm/drop_caches
# sectors_read: field 3 of the device's stat file.
sectors_read() { awk '{print $3}' "/sys/block/${dev#/dev/}/stat"; }
before=$(sectors_read)

mount -t ext4 "$dev" "$mnt" || fail "mounting $dev again failed"
if ! (cd "$mnt" && sha256sum --quiet -c "$sums") >"$CASE_DIR/check.out" 2>&1; then
    head -n 20 "$CASE_DIR/check.out" >&2
    fail "checksums differ after remount"
fi
# The check really read the files from the daemon, not from a cache.
read_bytes=$((($(sectors_read) - before) * 512))
log "checking read ${read_bytes} bytes from $dev for ${bytes} bytes of files"
((read_bytes >= bytes)) || fail "the checksum pass read only ${read_bytes} bytes from $dev for ${bytes} bytes of files"
[[ ! -e $mnt/removed ]] || fail "a removed file is back after remount"
now=$(cd "$mnt" && find . -type f | wc -l)
((now == n)) || fail "$now files after remount, wrote $n"
log "all $n checksums match after remount"
umount "$mnt" || fail "final umount failed"

stop_ublkd 15
grep -q 'device ext0 removed' "$UBLKD_LOG" || fail "no 'device ext0 removed' in the log"
assert_no_ublk_devices
log "mem ext4 passed"
