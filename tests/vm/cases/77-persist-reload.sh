#!/bin/bash
# Drop-ins at run time. `add --persist` writes devices.d/NAME.json, which
# brings the device back (with its data, for a file) when ublkd restarts.
# `reload` starts a new drop-in, reports an invalid one with file, line and
# column, says a changed spec needs a restart, and leaves a device whose
# drop-in was removed running; SIGHUP does the same as reload. Nothing that
# runs is disturbed by any of it.
# vm-timeout: 240
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd jq sha256sum dd

cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
start_ublkd_api "$cfg"
img=$CASE_DIR/pf.img

ctl_ok add p0 --backend mem --size 32MiB --persist >/dev/null
pf=$(ctl_ok add pf --backend file --path "$img" --create --size 32MiB --persist)
for n in p0 pf; do
    f=$cfg/devices.d/$n.json
    [[ -f $f ]] || fail "add --persist $n wrote no $f"
    [[ $(jq -r .name "$f") == "$n" ]] || fail "$f does not describe $n: $(<"$f")"
done
[[ $(jq -r '.backend.type + " " + .backend.path + " " + (.backend.size | tostring)' "$cfg/devices.d/pf.json") == "file $img 33554432" ]] ||
    fail "pf's drop-in: $(<"$cfg/devices.d/pf.json")"
compgen -G "$cfg/devices.d/.*" >/dev/null && fail "temporary files left in devices.d: $(ls -a "$cfg/devices.d")"
info=$(ctl_ok --json info pf)
[[ $(json_get "$info" '"\(.persistent) \(.source)"') == "true $cfg/devices.d/pf.json" ]] || fail "pf: $info"
# A second persist of the same name is refused, and changes nothing.
err=$(ctl_err add p0 --backend mem --size 8MiB --persist)
[[ $err == *exists* ]] || fail "second persist of p0: $err"

dd if=/dev/urandom of="$CASE_DIR/pat" bs=1M count=4 status=none
dd if="$CASE_DIR/pat" of="$pf" bs=1M seek=2 oflag=direct conv=fsync status=none
want=$(sha256sum <"$CASE_DIR/pat")

# Restart: both come back from their drop-ins.
stop_ublkd 20
assert_no_ublk_devices
start_ublkd_api "$cfg"
wait_live p0 30 >/dev/null
pf=$(wait_live pf 30)
got=$(dd if="$pf" bs=1M skip=2 count=4 iflag=direct status=none | sha256sum)
[[ $got == "$want" ]] || fail "pf lost its data across the restart"
log "persisted devices are back after a restart"

# reload: a new drop-in comes up.
write_spec "$cfg" r0 '{"name":"r0","backend":{"type":"null","size":"1GiB"}}'
rep=$(ctl_ok --json reload)
[[ $(json_get "$rep" '.started | join(",")') == r0 ]] || fail "reload did not start r0: $rep"
[[ $(json_get "$(ctl_ok --json info r0)" .state) == live ]] || fail "r0 not live after reload"

# An invalid drop-in: reported with file, line and column; nothing else changes.
printf '{\n  "name": "bad",\n  "backend": {"type": "mem", "size": }\n}\n' >"$cfg/devices.d/bad.json"
rep=$(ctl_ok --json reload)
prob=$(json_get "$rep" '.problems | join(" | ")')
[[ $prob == *"$cfg/devices.d/bad.json:3:"* || $prob == *"bad.json"*"line 3"* ]] ||
    fail "reload did not report bad.json with its position: $rep"
[[ $(json_get "$rep" '.started | length') == 0 ]] || fail "reload with a bad drop-in started something: $rep"
rm "$cfg/devices.d/bad.json"

# A changed spec of a live device: "restart the device to apply".
jq '.queue_depth = 16' "$cfg/devices.d/p0.json" >"$CASE_DIR/p0.json" && mv "$CASE_DIR/p0.json" "$cfg/devices.d/p0.json"
rep=$(ctl_ok --json reload)
[[ $(json_get "$rep" '.changed[] | select(.name == "p0") | .message') == *"restart the device to apply"* ]] ||
    fail "reload did not report p0's changed spec: $rep"
ctl_ok reload | grep -q "p0.*restart the device to apply" || fail "ublkctl reload does not say p0 needs a restart"

# A removed drop-in: the device keeps running until del.
rm "$cfg/devices.d/r0.json"
rep=$(ctl_ok --json reload)
[[ $(json_get "$rep" '.orphaned | join(",")') == r0 ]] || fail "reload did not report r0 as orphaned: $rep"
[[ $(json_get "$(ctl_ok --json info r0)" .state) == live ]] || fail "r0 stopped when its drop-in went"

# SIGHUP: the same as reload.
write_spec "$cfg" h0 '{"name":"h0","backend":{"type":"mem","size":"8MiB"}}'
kill -HUP "$UBLKD_PID"
wait_live h0 30 >/dev/null

# Everything that ran before is still live, and pf still holds its data.
list=$(ctl_ok --json list)
[[ $(json_get "$list" '[.[] | .name + ":" + .state] | join(" ")') == "h0:live p0:live pf:live r0:live" ]] ||
    fail "devices after the reloads: $list"
got=$(dd if="$pf" bs=1M skip=2 count=4 iflag=direct status=none | sha256sum)
[[ $got == "$want" ]] || fail "pf lost its data during the reloads"

# del leaves a drop-in in place (documented): the device comes back on restart.
ctl_ok del p0 >/dev/null
[[ -f $cfg/devices.d/p0.json ]] || fail "del p0 removed its drop-in"
# ... and a new persist of that name would overwrite it: refused.
err=$(ctl_err add p0 --backend mem --size 8MiB --persist)
[[ $err == *"drop-in $cfg/devices.d/p0.json already exists"* ]] || fail "persist over a drop-in: $err"
[[ $(json_get "$(ctl_ok --json list)" 'map(.name) | join(",")') == h0,pf,r0 ]] || fail "the refused add left a device"
stop_ublkd 30
assert_no_ublk_devices
log "persist and reload passed"
