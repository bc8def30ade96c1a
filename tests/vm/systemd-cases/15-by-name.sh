#!/bin/bash
# /dev/ublk/by-name/NAME under systemd and udev: it appears with the device,
# points at its /dev/ublkbN, `info` shows it as stable_path, a partition
# shows as NAME-part1, and after a restart of ublkd that gives the device
# another id (a second ublkd holds the low ids meanwhile) it points at the
# new one and the old name is nobody's; it goes with the device.
# vm-timeout: 150
. "${BASH_SOURCE%/*}/../systemd-lib.sh"

require_unit ublkd.service
require_cmd jq sgdisk udevadm
mkdir -p /etc/ublkd/devices.d
echo '{"name":"nm0","backend":{"type":"mem","size":"64MiB"}}' >/etc/ublkd/devices.d/nm0.json
other=/tmp/by-name-other
add_cleanup "systemctl stop ublkd.service ublkd.socket; rm -f /etc/ublkd/devices.d/nm0.json"
add_cleanup "pkill -f 'ublkd --config-dir $other' || true"

# link_of NAME: where /dev/ublk/by-name/NAME leads, once udev is done.
link_of() {
    udevadm settle -t 10
    readlink -f "/dev/ublk/by-name/$1" 2>/dev/null || true
}

systemctl start ublkd.service || { show_unit ublkd.service; fail "start ublkd failed"; }
dev=$(ublkctl --json info nm0 | jq -r .block_device)
[[ -b $dev ]] || fail "nm0 is not live"
[[ $(link_of nm0) == "$dev" ]] || fail "/dev/ublk/by-name/nm0 leads to '$(link_of nm0)', not $dev"
[[ $(ublkctl --json info nm0 | jq -r .stable_path) == /dev/ublk/by-name/nm0 ]] ||
    fail "info shows no stable_path: $(ublkctl --json info nm0)"
sgdisk -n 1:2048:+8M "$dev" >/dev/null 2>&1 || fail "sgdisk failed on $dev"
udevadm settle -t 10
[[ $(readlink -f /dev/ublk/by-name/nm0-part1) == "${dev}p1" ]] ||
    fail "/dev/ublk/by-name/nm0-part1 leads to '$(readlink -f /dev/ublk/by-name/nm0-part1)', not ${dev}p1"
log "nm0 at $dev, by name and its partition too"

# Another id: ublkd stops (the device goes), a second ublkd takes the two
# lowest ids, and ublkd comes back with nm0.
systemctl stop ublkd.service ublkd.socket
udevadm settle -t 10
[[ ! -e /dev/ublk/by-name/nm0 ]] || fail "/dev/ublk/by-name/nm0 outlived its device"
mkdir -p "$other/devices.d"
for n in o1 o2; do
    echo "{\"name\":\"$n\",\"backend\":{\"type\":\"null\",\"size\":\"64MiB\"}}" >"$other/devices.d/$n.json"
done
"$(command -v ublkd)" --config-dir "$other" --state-dir "$other/state" >"$other/log" 2>&1 &
for _ in {1..100}; do
    [[ $(UBLKD_SOCKET=$other/state/ublkd.sock ublkctl --json list 2>/dev/null |
        jq '[.[] | select(.state == "live")] | length') == 2 ]] && break
    sleep 0.1
done
systemctl start ublkd.service || { show_unit ublkd.service; fail "restart ublkd failed"; }
new=$(ublkctl --json info nm0 | jq -r .block_device)
[[ -b $new && $new != "$dev" ]] || fail "nm0 came back at '$new', want another id than $dev"
[[ $(link_of nm0) == "$new" ]] || fail "after the restart /dev/ublk/by-name/nm0 leads to '$(link_of nm0)', not $new"
log "after the restart nm0 is $new, and so is /dev/ublk/by-name/nm0"

systemctl stop ublkd.service ublkd.socket
udevadm settle -t 10
[[ ! -e /dev/ublk/by-name/nm0 ]] || fail "/dev/ublk/by-name/nm0 outlived its device"
log "by-name links passed"
