#!/bin/bash
# Resource limits give one clear error each, and no retry loop or log
# flood; the daemon and its other device carry on:
#   - file descriptors: ublkd runs with a small RLIMIT_NOFILE
#   - memory: the address space for a mem device is refused (RLIMIT_AS)
# (ublk_drv's ublks_max limits unprivileged devices only on both kernels
# tested, so ublkd, as root, never meets it; docs/reliability.md.)
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

# A sanitizer's shadow memory does not fit in the address-space limit.
if LD_TRACE_LOADED_OBJECTS=1 "$UBLKD" 2>/dev/null | grep -qE 'lib(asan|tsan)'; then
    skip "ublkd is built with a sanitizer, which cannot run under ulimit -v"
fi
cfg=$CASE_DIR/config
mkdir -p "$cfg"
# 40 fds: enough for the daemon and a few small devices.
# 3 GiB of address space: enough for the daemon, not for a 64 GiB mapping.
export UBLKD_SOCKET=$CASE_DIR/ublkd.sock
cat >"$CASE_DIR/limited-ublkd" <<WRAP
#!/bin/bash
ulimit -n 40
ulimit -v $((3 << 20))
exec "$UBLKD" "\$@"
WRAP
chmod +x "$CASE_DIR/limited-ublkd"
UBLKD=$CASE_DIR/limited-ublkd start_ublkd "$cfg" --socket "$UBLKD_SOCKET" --state-dir "$CASE_DIR/state"
wait_for_log "admin socket $UBLKD_SOCKET" 20 >/dev/null
keep=$(ctl_ok add keep --backend mem --size 16MiB --queues 1)
head -c 1048576 /dev/urandom >"$CASE_DIR/pattern"
dd if="$CASE_DIR/pattern" of="$keep" bs=1M oflag=direct status=none

# check_failure WHAT PATTERN: the last ublkctl error matches PATTERN, and
# the daemon logged at most 12 lines for it.
check_failure() {
    local what=$1 pattern=$2 err lines
    err=$(<"$CASE_DIR/ctl.err")
    log "$what: $err"
    [[ $err =~ $pattern ]] || fail "$what: unclear error: $err"
    sleep 1
    lines=$(($(wc -l <"$UBLKD_LOG") - log_before))
    ((lines <= 12)) || { show_log "$UBLKD_LOG" 30; fail "$what: $lines log lines for one failure"; }
    ublkd_alive || fail "ublkd died after: $what"
    cmp <(dd if="$keep" bs=1M count=1 iflag=direct status=none) "$CASE_DIR/pattern" ||
        fail "the other device lost its data after: $what"
}

# File descriptors: add devices until the fds run out.
added=()
for i in $(seq 1 20); do
    log_before=$(wc -l <"$UBLKD_LOG")
    ctl add "fd$i" --backend null --size 16MiB --queues 2 >/dev/null || break
    added+=("fd$i")
done
((${#added[@]} < 20)) || fail "20 devices fit in 40 fds"
check_failure "RLIMIT_NOFILE after ${#added[@]} devices" "Too many open files"
for name in "${added[@]}"; do ctl_ok del "$name" >/dev/null; done

# Memory.
log_before=$(wc -l <"$UBLKD_LOG")
ctl add big --backend mem --size 64GiB >/dev/null && fail "a 64 GiB mapping fit in 3 GiB of address space"
check_failure "RLIMIT_AS" "Cannot allocate memory"

# After all that, new devices still work.
ok=$(ctl_ok add after --backend mem --size 16MiB --queues 1)
dd if=/dev/zero of="$ok" bs=1M count=1 oflag=direct status=none || fail "a new device does not work"
stop_ublkd 20
assert_no_ublk_devices
log "resource limits passed"
