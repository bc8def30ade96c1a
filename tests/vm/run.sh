#!/usr/bin/env bash
# Run the VM test cases (tests/vm/cases/*.sh) against real Debian kernels in
# a throwaway qemu VM (TCG, no KVM needed). See tests/vm/README.md. What
# both flavours share is in host-lib.sh.
set -euo pipefail

usage() {
    cat <<'EOF_USAGE'
Usage: tests/vm/run.sh [OPTIONS] [CASE...]

Boots each kernel once with an initramfs holding the project binaries and
runs the cases inside, one after the other, each with its own timeout.

Options:
EOF_USAGE
    common_options_help "\
  --vm-timeout SECS overall limit for one VM run (default: computed from the
                    case timeouts)
  --cpu MODEL       qemu CPU model (default max)"
    cat <<'EOF_USAGE'

CASE is a case name (00-kernel-smoke) or file; default: all cases of the
tier. Cases named explicitly run whatever their tier.
Exit status: 0 when nothing failed, 1 when a case failed, 2 on usage errors.
The kernels are fetched and cached by fetch-kernel.sh
(${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}).
EOF_USAGE
}

readonly PROG=run.sh CASES_SUBDIR=cases LOGS_SUBDIR=vm-logs SKIP_SUITE=vm
# From start to the boot marker; TCG boots in a few seconds.
readonly BOOT_TIMEOUT=120
# From the done marker to qemu's exit: /init powers off at once.
readonly SHUTDOWN_TIMEOUT=30
declare -rA OWN_OPTIONS=([--vm-timeout]=vm_timeout [--cpu]=cpu) OWN_FLAGS=()
# shellcheck source=host-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/host-lib.sh"

parse_options "$@"
[[ -z $vm_timeout || $vm_timeout =~ ^[0-9]+$ ]] || die "bad --vm-timeout: $vm_timeout"
select_kernels_and_cases

if [[ -z $vm_timeout ]]; then
    vm_timeout=$BOOT_TIMEOUT
    for c in "${cases[@]}"; do
        vm_timeout=$((vm_timeout + $(case_timeout "$cases_dir/$c.sh") + CASE_GRACE))
    done
fi

require_tools qemu-system-x86_64 cpio
setup_dirs run
[[ -x $build_dir/daemon/ublkd ]] || die "$build_dir/daemon/ublkd not built (ninja -C $build_dir)"
# Say so when the daemon is instrumented: its reports fail cases (guest-lib.sh).
sanitizers=$(ldd "$build_dir/daemon/ublkd" 2>/dev/null | grep -oE 'lib(asan|ubsan|tsan)' |
    sed 's/^lib//' | sort -u | paste -sd+ || true)
[[ -n $sanitizers ]] && echo "run.sh: ublkd is built with ${sanitizers^^}; a sanitizer report fails its case"

say_booted() {
    echo "[$k] booted $KVER in $(secs_since "$t_boot")s (guest uptime ${1}s)${3:+ $2: $3}"
}

run_kernel() {
    local t0 initrd
    begin_kernel "$1"
    fetch_kernel || return 0

    t0=$(now)
    initrd=$work/initramfs-$k.cpio
    if ! "$here/build-initramfs.sh" --kernel-dir "$kdir" --build-dir "$build_dir" \
        --cases-dir "$cases_dir" --timeout "$timeout" --output "$initrd" "${cases[@]}"; then
        fail_all "initramfs for $k could not be built"
        return 0
    fi
    echo "[$k] initramfs $(($(stat -c %s "$initrd") / 1048576)) MiB built ($(secs_since "$t0")s)"

    while :; do
        fresh_channels
        start_qemu "$initrd" ""
        follow_vm
        boot_died_early || break
        # The boot that died stays beside the next one's console.
        cp "$console" "$logdir/console-boot$boot.log"
    done
    stop_console_tail
    report_unfinished
    fail_unfinished
    echo "[$k] VM run took $(secs_since "$t_boot")s; logs in $logdir"
}

for kernel in "${kernels[@]}"; do
    run_kernel "$kernel"
done
summarize_and_exit
