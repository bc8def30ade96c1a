#!/bin/bash
# Who may use the admin socket. With "admin_group": "ublkadm" in ublkd.json
# the socket is mode 0660, owner root, group ublkadm. A client as uid 65534
# outside the group is refused (by the socket's mode, and, with the mode
# opened up, by ublkd's own SO_PEERCRED check, which answers
# permission-denied and logs the uid); uid 65534 with ublkadm as a
# supplementary or as its primary group is served.
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd setpriv jq stat

gid=990
# The VM's /etc is the initramfs's: add the group and user for this case.
grep -q '^ublkadm:' /etc/group 2>/dev/null || echo "ublkadm:x:$gid:" >>/etc/group
grep -q '^nogroup:' /etc/group || echo "nogroup:x:65534:" >>/etc/group
grep -q '^nobody:' /etc/passwd 2>/dev/null || echo "nobody:x:65534:65534:nobody:/nonexistent:/bin/false" >>/etc/passwd
grep -q '^root:' /etc/passwd || echo "root:x:0:0:root:/root:/bin/bash" >>/etc/passwd
grep -q '^root:' /etc/group || echo "root:x:0:" >>/etc/group

cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
echo '{"admin_group": "ublkadm"}' >"$cfg/ublkd.json"
# uid 65534 must be able to reach the socket's directory.
chmod 755 "$CASE_DIR" "${CASE_DIR%/*}"
start_ublkd_api "$cfg"
wait_for_log "admin socket .* \(group ublkadm\)" 5 >/dev/null

read -r mode uid group <<<"$(stat -c '%a %u %g' "$UBLKD_SOCKET")"
[[ "$mode $uid $group" == "660 0 $gid" ]] || fail "socket is mode $mode uid $uid gid $group, want 660 0 $gid"

as_nobody() { setpriv --reuid 65534 --regid 65534 --clear-groups -- "$@"; }
as_member() { setpriv --reuid 65534 --regid 65534 --groups "$gid" -- "$@"; }
as_primary() { setpriv --reuid 65534 --regid "$gid" --clear-groups -- "$@"; }

# Outside the group: the socket's mode already says no.
rc=0
out=$(as_nobody "$UBLKCTL" list 2>&1) || rc=$?
((rc == 1)) || fail "uid 65534 outside the group: status $rc ($out)"
[[ $out == "ublkctl: cannot connect to ublkd at $UBLKD_SOCKET: Permission denied" ]] ||
    fail "uid 65534 outside the group: $out"
log "outside the group: $out"

# In the group, either way: served, and can manage devices.
for who in as_member as_primary; do
    out=$($who "$UBLKCTL" --json list 2>&1) || fail "$who: list failed: $out"
    [[ $out == "[]" ]] || fail "$who: list printed $out"
done
dev=$(as_member "$UBLKCTL" add g0 --backend mem --size 8MiB 2>&1) || fail "group member cannot add: $dev"
[[ -b $dev ]] || fail "group member's add printed $dev"
as_primary "$UBLKCTL" del g0 || fail "group member (primary) cannot del"
log "group members are served"

# With the socket opened to everyone, ublkd's own check still refuses.
chmod 666 "$UBLKD_SOCKET"
rc=0
out=$(as_nobody "$UBLKCTL" list 2>&1) || rc=$?
((rc == 1)) || fail "uid 65534 on an open socket: status $rc ($out)"
[[ $out == *"permission"* && $out == *"denied"* ]] || fail "uid 65534 on an open socket: $out"
# The raw response carries the code, and the daemon closes the connection.
resp=$(echo '{"op":"list"}' | as_nobody ublkd-admin-send --timeout-ms 10000 "$UBLKD_SOCKET" 2>"$CASE_DIR/send.err")
[[ $(jq -r .error.code <<<"$resp") == permission-denied ]] || fail "raw response: $resp"
grep -q closed-by-peer "$CASE_DIR/send.err" || fail "connection of a refused peer not closed"
wait_for_log "permission denied for uid 65534" 5 >/dev/null
log "ublkd refuses uid 65534 itself: $out"

# Root is always served.
[[ $(ctl_ok --json list) == "[]" ]] || fail "root's list is not empty"
stop_ublkd 20
assert_no_ublk_devices
