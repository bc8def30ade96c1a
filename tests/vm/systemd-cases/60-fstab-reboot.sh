#!/bin/bash
# A file-backed device in /etc/fstab with x-systemd.requires=ublkd@disk0.service
# mounts at boot: phase 1 makes the device (file in /var/lib/ublkd), an ext4
# file system on it and the fstab line, enables nothing else, writes files
# and reboots cleanly; phase 2 finds the file system mounted at boot through
# ublkd@disk0, the files intact (checksums), and no I/O error or hang in the
# previous boot's shutdown.
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

require_unit ublkd.service ublkd@.service
require_cmd mkfs.ext4 sha256sum jq
mnt=/srv/ublkdata
spec=/etc/ublkd/devices.d/disk0.json

case $UBLKD_PHASE in
    1)
        mkdir -p /etc/ublkd/devices.d "$mnt"
        echo '{"name":"disk0","autostart":false,"backend":{"type":"file","path":"/var/lib/ublkd/disk0.img","size":"128MiB","create":true},"queues":2,"logical_block_size":4096}' >"$spec"
        systemctl start ublkd@disk0.service || { show_unit ublkd@disk0.service; show_unit ublkd.service; fail "start ublkd@disk0 failed"; }
        dev=$(ublkctl --json info disk0 | jq -r .block_device)
        [[ -b $dev ]] || fail "disk0 not live"
        mkfs.ext4 -q -F -L ublkdata "$dev"
        # 60-ublkd.rules: udev sees the new file system and links its label.
        udevadm settle
        for _ in {1..50}; do [[ -e /dev/disk/by-label/ublkdata ]] && break; sleep 0.1; done
        [[ $(readlink -f /dev/disk/by-label/ublkdata) == "$dev" ]] ||
            fail "no /dev/disk/by-label/ublkdata for $dev (udev rule 60-ublkd.rules)"
        cp /etc/fstab "$CASE_DIR/fstab.orig"
        echo "LABEL=ublkdata $mnt ext4 x-systemd.requires=ublkd@disk0.service,nofail 0 2" >>/etc/fstab
        systemctl daemon-reload
        systemctl start srv-ublkdata.mount || { show_unit srv-ublkdata.mount; fail "mounting from fstab failed"; }
        dd if=/dev/urandom of="$mnt/data.bin" bs=1M count=16 status=none
        echo "written before the reboot" >"$mnt/hello.txt"
        (cd "$mnt" && sha256sum data.bin hello.txt) >"$CASE_DIR/sums"
        sync
        log "disk0 at $dev mounted on $mnt from fstab; files written"
        # Phase 2 judges the kernel log from here on: earlier cases of this
        # boot may have failed I/O on purpose (50-stop-under-load).
        date +%s >"$CASE_DIR/reboot-time"
        reboot_and_continue
        ;;
    2)
        add_cleanup "systemctl stop srv-ublkdata.mount ublkd@disk0.service ublkd.service ublkd.socket; cp $CASE_DIR/fstab.orig /etc/fstab; systemctl daemon-reload; rm -f $spec /var/lib/ublkd/disk0.img"
        wait_unit_state srv-ublkdata.mount active 60
        [[ $(unit_prop ublkd@disk0.service ActiveState) == active ]] || fail "ublkd@disk0 is not active"
        src=$(findmnt -n -o SOURCE "$mnt")
        [[ $src == /dev/ublkb* ]] || fail "$mnt is mounted from '$src'"
        (cd "$mnt" && sha256sum -c --quiet "$CASE_DIR/sums") || fail "files changed across the reboot"
        log "$mnt mounted at boot from $src; files intact"
        since=$(<"$CASE_DIR/reboot-time")
        prev=$(journalctl -b -1 -k --no-pager -o cat --since "@$since")
        if grep -E "I/O error|blocked for more than|Buffer I/O error" <<<"$prev" >&2; then
            fail "I/O errors or hung tasks in the previous boot"
        fi
        journalctl -b -1 --no-pager -o cat -u ublkd.service | grep -q "ublkd exiting" ||
            fail "ublkd did not exit cleanly at the reboot"
        ;;
    *) fail "unexpected phase $UBLKD_PHASE" ;;
esac
