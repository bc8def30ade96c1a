#!/bin/bash
# Devices handed over by a ublkd from before device identities (an upgrade
# from it): their kernel devices carry no identity (test hook
# UBLKD_TEST_NO_IDENTITY) and their records are of version 1. A new ublkd
# recovers such a device with its data when one record names it. A second,
# older version-1 record naming the same device (the stale record of a
# device deleted before) is retired as superseded and recovers nothing;
# the newer record's device keeps its data.
# vm-timeout: 90
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd jq sha256sum dd
cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
state=$CASE_DIR/state

UBLKD_TEST_NO_IDENTITY=1 start_ublkd_api "$cfg"
dev=$(ctl_ok add old0 --backend mem --size 16MiB)
head -c 8388608 /dev/urandom >"$CASE_DIR/data"
dd if="$CASE_DIR/data" of="$dev" bs=1M oflag=direct status=none
sum=$(sha256sum <"$CASE_DIR/data" | cut -d' ' -f1)
kill9_ublkd

# What the older ublkd wrote: version 1, no identity, no "removed". First a
# stale record for the same id, with other memory behind it; then, newer,
# old0's own.
v1() { jq '.version = 1 | del(.identity) | del(.removed)' "$1"; }
v1 "$state/devices/old0.json" | jq '.spec.name = "ghost"' >"$state/devices/ghost.json"
head -c 16777216 /dev/zero >"$state/mem/ghost"
sleep 0.1
v1 "$state/devices/old0.json" >"$CASE_DIR/r.json"
mv "$CASE_DIR/r.json" "$state/devices/old0.json"

start_ublkd_api "$cfg"
wait_for_log "running: " 30 >/dev/null
grep -q "device old0 recovered: live again at $dev" "$UBLKD_LOG" || { show_log; fail "old0 not recovered"; }
grep -q "device ghost: its state record (written by a ublkd without device identities) names $dev, as the newer record of device old0 does: the record is stale and retired" \
    "$UBLKD_LOG" || { show_log; fail "the older record was not retired as superseded"; }
[[ ! -e $state/devices/ghost.json && ! -e $state/mem/ghost ]] || fail "ghost's record or memory left"
got=$(head -c 8388608 "$dev" | sha256sum | cut -d' ' -f1)
[[ $got == "$sum" ]] || fail "old0 lost its data"
[[ $(jq -r .version "$state/devices/old0.json") == 1 ]] ||
    log "old0's record was rewritten: $(cat "$state/devices/old0.json")"
ctl_ok del old0 >/dev/null
stop_ublkd 20
assert_no_ublk_devices
log "a device of an older ublkd recovered; its stale sibling record retired"
