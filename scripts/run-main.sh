#!/usr/bin/env bash
# The main job: install what is needed, build, and show ublkd serving the
# default memory device (mkfs.ext4, mount, write, read back). Runs on this
# machine when it has /dev/ublk-control, otherwise in a throwaway VM with a
# Debian kernel that has ublk_drv (tests/vm/run.sh).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/run-main.sh [--kernel 6.12|7.2] [--vm] [--help]

Installs the build dependencies (scripts/install-deps.sh), builds ublkd and
ublkctl into ./build (not the unit tests), then runs the main demo (tests/vm/cases/01-main-demo.sh): ublkd
serves a 256 MiB memory device, which gets an ext4 file system, a mount,
16 MiB of data written and read back and compared.

  --vm         use the VM even when /dev/ublk-control exists here
  --kernel K   kernel for the VM (default 6.12)
  --help       show this help
Must run as root (packages, block devices, mounts).
USAGE
}

kernel=6.12
force_vm=0
while (($#)); do
    case $1 in
        --kernel) kernel=${2:?--kernel needs a value}; shift ;;
        --vm) force_vm=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run-main: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
((EUID == 0)) || { echo "run-main: must run as root" >&2; exit 1; }

scripts/install-deps.sh
# Only what the demo runs: the unit tests would take most of the build time.
scripts/build.sh build -- daemon/ublkd daemon/ublkctl

if [[ -c /dev/ublk-control ]] && ((!force_vm)); then
    echo "== /dev/ublk-control exists: running the demo on this machine"
    UBLKD=$top/build/daemon/ublkd bash tests/vm/cases/01-main-demo.sh
else
    echo "== no /dev/ublk-control here: running the demo in a VM (kernel $kernel)"
    # The VM's initramfs carries the test helpers too (tests/vm/build-initramfs.sh).
    scripts/build.sh build -- tests/ublkd-admin-send tests/ublkd-del-dev bench/ublkd-bench-add-live
    rc=0
    tests/vm/run.sh --kernel "$kernel" --build-dir build 01-main-demo || rc=$?
    echo "== demo output (build/vm-logs/$kernel/01-main-demo.log):"
    cat "build/vm-logs/$kernel/01-main-demo.log" 2>/dev/null || true
    exit "$rc"
fi
