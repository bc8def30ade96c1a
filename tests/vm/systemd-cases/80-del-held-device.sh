#!/bin/bash
# The operator's sequence that once lost data, under systemd with mem
# memory in the fd store: ext4 is mounted on mem device A and `ublkctl del
# A` is run anyway. A is removed, listed as removed-pending; its record and
# memfd stay. `systemctl stop ublkd` succeeds (the unit does not fail for a
# device the kernel already deleted), and the next ublkd lists A as
# removed-pending again. Once unmounted, the kernel releases the id, and A's
# record goes. Device B of the same size gets the same id and known
# data, and survives `ublkctl upgrade` and kill -9 with it, with no stale
# record anywhere.
# vm-timeout: 180
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

require_unit ublkd.service
require_cmd mkfs.ext4 sha256sum jq
mnt=/srv/held
mkdir -p "$mnt"
add_cleanup "umount $mnt 2>/dev/null; systemctl stop ublkd.service ublkd.socket; systemctl reset-failed ublkd.service 2>/dev/null"
systemctl start ublkd.service || { show_unit ublkd.service; fail "start ublkd failed"; }

state_of() { ublkctl --json list | jq -r ".[] | select(.name == \"$1\") | .state"; }

dev=$(ublkctl add held0 --backend mem --size 64MiB) || fail "add held0 failed"
mkfs.ext4 -q -F "$dev"
mount "$dev" "$mnt"
echo hello >"$mnt/hello"
sync

if ublkctl del held0 2>"$CASE_DIR/del.err"; then fail "del of a mounted device without --force succeeded"; fi
grep -q "mounted on" "$CASE_DIR/del.err" || fail "the refusal does not name the mount: $(<"$CASE_DIR/del.err")"
out=$(ublkctl del --force held0) || fail "del --force of a mounted device failed"
[[ $out == *"$dev is still open"* ]] || fail "del said: $out"
[[ $(state_of held0) == removed-pending ]] || fail "held0 is $(state_of held0), want removed-pending"
[[ $(jq -r .removed /run/ublkd/devices/held0.json) == true ]] || fail "the record does not say removed"

systemctl stop ublkd.service
[[ $(unit_prop ublkd.service ActiveState) == inactive ]] ||
    { show_unit ublkd.service; fail "ublkd.service is $(unit_prop ublkd.service ActiveState) after stop"; }
[[ $(unit_prop ublkd.service Result) == success ]] ||
    { show_unit ublkd.service; fail "systemctl stop: result $(unit_prop ublkd.service Result)"; }
unit_journal ublkd.service | grep -q "device held0 removed from the system; the kernel releases $dev" ||
    { show_unit ublkd.service; fail "no journal line for the held device at stop"; }

systemctl start ublkd.service || { show_unit ublkd.service; fail "restart failed"; }
[[ $(state_of held0) == removed-pending ]] || fail "after the restart held0 is '$(state_of held0)'"
umount "$mnt"
for _ in {1..50}; do
    [[ -z $(state_of held0) && ! -e /run/ublkd/devices/held0.json ]] && break
    sleep 0.2
done
[[ -z $(state_of held0) && ! -e /run/ublkd/devices/held0.json ]] ||
    fail "held0 still listed or recorded 10 s after the unmount"
wait_unit_log ublkd.service "device held0: the kernel released $dev; its state record is retired" 5 \
    >/dev/null

dev2=$(ublkctl add new0 --backend mem --size 64MiB) || fail "add new0 failed"
[[ $dev2 == "$dev" ]] || fail "new0 got $dev2, not the released $dev"
head -c 8388608 /dev/urandom >"$CASE_DIR/data"
dd if="$CASE_DIR/data" of="$dev2" bs=1M oflag=direct status=none
sum=$(sha256sum <"$CASE_DIR/data" | cut -d' ' -f1)

restarted() { # OLD_PID
    local old=$1 new
    for _ in {1..200}; do
        new=$(unit_prop ublkd.service MainPID)
        if ((new > 0 && new != old)) && [[ $(unit_prop ublkd.service ActiveState) == active ]]; then
            return 0
        fi
        sleep 0.2
    done
    show_unit ublkd.service
    fail "ublkd not back within 40 s"
}
pid=$(unit_prop ublkd.service MainPID)
ublkctl upgrade >/dev/null || fail "upgrade failed"
restarted "$pid"
pid=$(unit_prop ublkd.service MainPID)
kill -KILL "$pid"
restarted "$pid"
[[ $(state_of new0) == live ]] || fail "new0 is '$(state_of new0)' after upgrade and kill -9"
got=$(head -c 8388608 "$dev2" | sha256sum | cut -d' ' -f1)
[[ $got == "$sum" ]] || fail "new0 lost its data"
unit_journal ublkd.service | grep -E "stale|not recovered" >&2 && fail "a record was stale or not recovered"
[[ $(ls /run/ublkd/devices) == new0.json ]] || fail "records: $(ls /run/ublkd/devices)"

ublkctl del new0 || fail "del new0 failed"
systemctl stop ublkd.service
[[ $(unit_prop ublkd.service Result) == success ]] || fail "the last stop did not succeed"
[[ -z $(ls -A /run/ublkd/devices 2>/dev/null) ]] || fail "records left: $(ls /run/ublkd/devices)"
log "a device deleted while mounted is tracked until released; its id's next device keeps its data"
