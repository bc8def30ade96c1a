#!/bin/bash
# The harness's reboot: a file written (and synced) before
# reboot_and_continue is on the root file system after the clean reboot, the
# boot id changed, $CASE_DIR survived, and the journal of the boot before is
# readable (journalctl -b -1) with the marker the first phase logged. The
# pattern for cases that check what ublkd and its units do across a reboot.
# vm-timeout: 60
# vm-tier: full
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

marker=/var/lib/ublkd-vm-reboot-marker
case $UBLKD_PHASE in
    1)
        boot_id=$(</proc/sys/kernel/random/boot_id)
        token=$RANDOM$RANDOM
        printf '%s %s\n' "$boot_id" "$token" >"$marker"
        cp "$marker" "$CASE_DIR/phase1"
        sync
        logger -t ublkd-vm-reboot "phase 1 token $token"
        log "phase 1 on boot $boot_id (token $token)"
        reboot_and_continue
        ;;
    2)
        add_cleanup "rm -f $marker"
        [[ -f $marker ]] || fail "$marker did not survive the reboot"
        [[ -f $CASE_DIR/phase1 ]] || fail "\$CASE_DIR lost its files across the reboot"
        cmp -s "$marker" "$CASE_DIR/phase1" || fail "$marker changed across the reboot"
        read -r old_id token <"$marker"
        new_id=$(</proc/sys/kernel/random/boot_id)
        [[ $new_id != "$old_id" ]] || fail "same boot id $new_id: the VM did not reboot"
        log "phase 2 on boot $new_id; before: $old_id"
        journalctl -b -1 -t ublkd-vm-reboot --no-pager -o cat | grep -qx "phase 1 token $token" ||
            fail "the previous boot's journal lacks the phase 1 message"
        # The previous boot ended with a clean shutdown.
        journalctl -b -1 --no-pager -o cat | grep -qE 'Reached target .*(Reboot|System Reboot)' ||
            log "note: no 'Reached target Reboot' in the previous boot's journal"
        ;;
    *) fail "unexpected phase $UBLKD_PHASE" ;;
esac
