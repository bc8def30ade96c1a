#!/bin/bash
# A device with recovery off goes away under a mounted ext4 with a writer
# running, once by `ublkctl del --force` (plain `del` is refused, naming the
# mount) and once by kill -9 of ublkd: the writer
# gets an error within a bound instead of hanging, the file system reports
# I/O errors or shuts down (and nothing worse: any kernel WARNING, BUG or hung task fails
# the case), umount works, and the kernel lets go of the device once it is
# unmounted (after del: by itself; after the kill: once the next ublkd has
# cleaned up).
# vm-timeout: 240
. "${BASH_SOURCE%/*}/../lib.sh"

cfg=$CASE_DIR/config
mkdir -p "$cfg"

# mount_with_writer DEV MNT: ext4 on DEV mounted on MNT, and a writer that
# creates 256 KiB files with fsync in a loop; WRITER= its pid, once it has
# written its first files.
mount_with_writer() {
    local dev=$1 mnt=$2
    mkfs.ext4 -q -F "$dev"
    mkdir -p "$mnt"
    mount -t ext4 "$dev" "$mnt"
    add_cleanup "umount -l $mnt 2>/dev/null || true"
    (
        i=0
        while :; do
            dd if=/dev/urandom of="$mnt/f$((i % 64))" bs=64k count=4 conv=fsync status=none || exit 3
            i=$((i + 1))
        done
    ) 2>"$CASE_DIR/writer.err" &
    WRITER=$!
    add_cleanup "kill -KILL $WRITER 2>/dev/null || true"
    local t0=${EPOCHREALTIME/./}
    until [[ -e $mnt/f3 ]]; do
        ublkd_alive "$WRITER" || fail "the writer on $mnt ended at once: $(<"$CASE_DIR/writer.err")"
        ((${EPOCHREALTIME/./} - t0 < 20000000)) || fail "the writer on $mnt wrote nothing in 20 s"
        sleep 0.1
    done
}

# writer_fails_within SECS: the writer must end with an error within SECS.
writer_fails_within() {
    local t0=${EPOCHREALTIME/./} rc=0 ms
    while ublkd_alive "$WRITER"; do
        ((${EPOCHREALTIME/./} - t0 < $1 * 1000000)) || fail "the writer still runs $1 s after the device went away"
        sleep 0.1
    done
    wait "$WRITER" || rc=$?
    ms=$(((${EPOCHREALTIME/./} - t0) / 1000))
    ((rc != 0)) || fail "the writer ended without an error"
    log "writer ended with status $rc after $ms ms: $(tail -n 1 "$CASE_DIR/writer.err")"
}

# fs_noticed: the kernel log says the file system met the end of its
# device: I/O errors, or (7.2) the shutdown the block layer asks of a file
# system whose disk went away.
fs_noticed() {
    dmesg | grep -qiE 'I/O error|EXT4-fs (error|warning)|Buffer I/O|EXT4-fs \(.*\): shut down requested' ||
        fail "the file system reported neither I/O errors nor a shutdown"
}

# umount_within MNT SECS
umount_within() {
    timeout "$2" umount "$1" || fail "umount $1 failed or took longer than $2 s (status $?)"
    log "umount $1 done"
}

# ---- del of a mounted device ----
start_ublkd_api "$cfg"
dev=$(ctl_ok add gone --backend mem --size 128MiB --no-recovery)
mount_with_writer "$dev" "$CASE_DIR/mnt-del"
# Without --force: refused, naming the mount, and the device goes on.
err=$(ctl_err del gone)
[[ $err == *"[busy]"* && $err == *"mounted on $CASE_DIR/mnt-del"* ]] ||
    fail "del of a mounted device was not refused naming the mount: $err"
[[ $(json_get "$(ctl_ok --json info gone)" .state) == live ]] || fail "a refused del changed the device"
log "del without --force refused: $err"
dmesg -C
t0=${EPOCHREALTIME/./}
timeout 30 "$UBLKCTL" del --force gone >/dev/null 2>"$CASE_DIR/del.err" ||
    fail "ublkctl del --force of the mounted device failed or hung (status $?): $(<"$CASE_DIR/del.err")"
log "del returned after $(((${EPOCHREALTIME/./} - t0) / 1000)) ms: $(<"$CASE_DIR/del.err")"
writer_fails_within 20
state=$(json_get "$(ctl_ok --json list)" '.[] | select(.name == "gone") | .state')
[[ $state == removed-pending ]] || fail "the deleted, still mounted device is listed as '$state', not removed-pending"
fs_noticed
umount_within "$CASE_DIR/mnt-del" 20
t0=${EPOCHREALTIME/./}
while [[ -n $(json_get "$(ctl_ok --json list)" '.[] | select(.name == "gone") | .name') ]]; do
    ((${EPOCHREALTIME/./} - t0 < 15000000)) || fail "the device is still listed 15 s after its umount"
    sleep 0.2
done
[[ ! -e $dev ]] || fail "$dev still exists after umount"
stop_ublkd 20

# ---- the daemon dies under a mounted device ----
start_ublkd_api "$cfg"
dev=$(ctl_ok add dies --backend mem --size 128MiB --no-recovery)
mount_with_writer "$dev" "$CASE_DIR/mnt-kill"
dmesg -C
kill9_ublkd
writer_fails_within 20
fs_noticed
umount_within "$CASE_DIR/mnt-kill" 20
# What the kernel still holds of it goes when the next ublkd starts.
start_ublkd_api "$cfg"
wait_for_log "device dies: not recovered \(.*\); nothing of it is left in the kernel" 30 >/dev/null
ctl_ok del dies >/dev/null
stop_ublkd 20
assert_no_ublk_devices
log "removal and daemon death under a mounted file system passed"
