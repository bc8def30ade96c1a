#!/bin/bash
# Power cut under a file system: two file devices on the VM's virtual disk
# (the backing files fully written beforehand, one device buffered, one
# O_DIRECT), ext4 on each, a writer creating files with fsync and
# recording each synced file (and its checksum) in a manifest on the root
# file system, plus a writer that never syncs; then qemu is killed
# (powercut_and_continue) with both running. After the next boot ublkd
# brings the devices up again from their drop-ins: after the journal replay
# (mount) each file system is clean (e2fsck -fn) and every file the
# manifest lists is there with its checksum. The guest's periodic writeback
# is off in the first phase, so on the buffered device only ublkd's
# fdatasync on FLUSH (and FUA) can have put the synced files on the disk.
# vm-timeout: 240
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

require_unit ublkd.service
store=/var/lib/ublkd/powercut
manifest=$CASE_DIR/manifest
names=(pcb pcd)

case $UBLKD_PHASE in
    1)
        mkdir -p "$store" /etc/ublkd/devices.d
        # Written in full, so that the devices' writes overwrite blocks in
        # place: the root file system's own journal (data=ordered) never
        # has a reason to write them out on ublkd's behalf.
        for n in "${names[@]}"; do
            dd if=/dev/zero of="$store/$n.img" bs=1M count=192 conv=fsync status=none
        done
        echo '{"name":"pcb","backend":{"type":"file","path":"'"$store"'/pcb.img","direct_io":false},"queues":2}' \
            >/etc/ublkd/devices.d/pcb.json
        echo '{"name":"pcd","backend":{"type":"file","path":"'"$store"'/pcd.img","direct_io":true},"queues":2}' \
            >/etc/ublkd/devices.d/pcd.json
        sync
        systemctl start ublkd.service || { show_unit ublkd.service; fail "start ublkd failed"; }
        for n in "${names[@]}"; do
            dev=$(ublkctl --json info "$n" | jq -r .block_device)
            [[ -b $dev ]] || fail "$n is not live"
            # No discard: it would punch holes that later writes fill
            # again, and filling a hole goes through the root file
            # system's journal.
            mkfs.ext4 -q -F -E nodiscard "$dev"
            mkdir -p "/mnt/$n"
            mount "$dev" "/mnt/$n"
            mkdir -p "/mnt/$n/synced"
        done
        # From here on nothing is written back unless someone syncs.
        sysctl -q vm.dirty_writeback_centisecs=0 vm.dirty_expire_centisecs=360000 \
            vm.dirty_background_ratio=50 vm.dirty_ratio=80
        : >"$manifest"
        sync "$manifest" "$CASE_DIR"
        cat >"$CASE_DIR/writer.sh" <<'EOF'
#!/bin/bash
# writer.sh MANIFEST MNT...: files with fsync, each recorded once durable.
manifest=$1
shift
i=0
while :; do
    for m in "$@"; do
        f=$m/synced/f$i
        dd if=/dev/urandom of="$f" bs=16k count=$((RANDOM % 15 + 1)) conv=fsync status=none || exit 1
        sync "$m/synced" || exit 1
        echo "$f $(sha256sum <"$f" | cut -d' ' -f1)" >>"$manifest"
        sync "$manifest" || exit 1
    done
    i=$((i + 1))
done
EOF
        cat >"$CASE_DIR/churn.sh" <<'EOF'
#!/bin/bash
# churn.sh MNT...: writes that nobody syncs.
while :; do
    for m in "$@"; do
        dd if=/dev/urandom of="$m/churn$((RANDOM % 8))" bs=64k count=32 status=none || exit 1
    done
done
EOF
        mounts=("${names[@]/#//mnt/}")
        systemd-run -q --unit=pc-writer bash "$CASE_DIR/writer.sh" "$manifest" "${mounts[@]}" ||
            fail "cannot start the writer"
        systemd-run -q --unit=pc-churn bash "$CASE_DIR/churn.sh" "${mounts[@]}" ||
            fail "cannot start the churn"
        t0=${EPOCHREALTIME/./}
        while (($(wc -l <"$manifest") < 40)); do
            [[ $(unit_prop pc-writer.service ActiveState) == active ]] ||
                { journalctl -u pc-writer --no-pager >&2; fail "the writer stopped"; }
            ((${EPOCHREALTIME/./} - t0 < 90000000)) || fail "the writer synced fewer than 40 files in 90 s"
            sleep 0.5
        done
        for u in pc-writer pc-churn; do
            [[ $(unit_prop $u.service ActiveState) == active ]] || fail "$u is not running at the cut"
        done
        log "$(wc -l <"$manifest") files synced; cutting the power with both writers running"
        powercut_and_continue
        ;;
    2)
        add_cleanup "systemctl stop ublkd.service; rm -f /etc/ublkd/devices.d/pcb.json /etc/ublkd/devices.d/pcd.json; rm -rf $store"
        [[ -s $manifest ]] || fail "the manifest of synced files is empty after the power cut"
        systemctl start ublkd.service || { show_unit ublkd.service; fail "start ublkd failed"; }
        for n in "${names[@]}"; do
            dev=$(ublkctl --json info "$n" | jq -r .block_device)
            [[ -b $dev ]] || fail "$n is not live after the power cut"
            # The journal replay is the mount's; then the file system must
            # be consistent.
            mount "$dev" "/mnt/$n" || fail "cannot mount $n after the power cut"
            add_cleanup "umount /mnt/$n 2>/dev/null || true"
        done
        checked=0 bad=0
        while read -r f sum; do
            # The last line may be cut short by the power cut: its file was
            # synced, its record was not.
            [[ ${#sum} == 64 ]] || continue
            checked=$((checked + 1))
            if [[ ! -f $f ]]; then
                log "missing: $f"
                bad=$((bad + 1))
            elif [[ $(sha256sum <"$f" | cut -d' ' -f1) != "$sum" ]]; then
                log "wrong contents: $f"
                bad=$((bad + 1))
            fi
        done <"$manifest"
        log "$checked synced files checked, $bad lost or damaged"
        for n in "${names[@]}"; do
            dev=$(ublkctl --json info "$n" | jq -r .block_device)
            umount "/mnt/$n"
            e2fsck -fn "$dev" >"$CASE_DIR/fsck.$n" 2>&1 ||
                { cat "$CASE_DIR/fsck.$n" >&2; fail "e2fsck of $n after the power cut is not clean"; }
        done
        ((bad == 0)) || fail "$bad of $checked synced files lost or damaged by the power cut"
        ((checked >= 40)) || fail "only $checked records in the manifest"
        systemctl stop ublkd.service
        ;;
    *) fail "unexpected phase $UBLKD_PHASE" ;;
esac
