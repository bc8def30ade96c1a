#!/usr/bin/env bash
# Install every package the project needs (build, unit tests, VM tests,
# formatting) on a Debian 12 machine. Idempotent and quiet: when everything
# is installed already it touches nothing and needs no network.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/install-deps.sh [--check] [--help]

Installs the Debian packages needed to build ublkd, run its unit tests and
run the VM tests (tests/vm/run.sh). Must run as root. Packages already
installed are left alone; `apt-get update` runs only when a package has no
install candidate or the install fails on stale package lists.

  --check   only list missing packages; exit 1 if any are missing
  --help    show this help
EOF
}

# Build: compiler, meson/ninja and the libraries meson.build asks for.
# Unit tests: catch2. VM tests (tests/vm): qemu, the initramfs contents
# (busybox, fio, e2fsprogs, util-linux, kmod, jq, dmsetup) and the tools that unpack Debian
# kernels (zstd, xz-utils, cpio). The benchmark (bench/) draws its chart with
# gnuplot. The nbd backend builds on libnbd; its tests and VM cases serve
# exports with nbdkit, and the benchmark compares it with the kernel's
# nbd-client. debootstrap and clang-format are used by other scripts of the
# project, shellcheck by scripts/check-shell.sh. The fuzz targets
# (scripts/run-fuzz.sh) build with clang, whose
# libFuzzer runtime is in libclang-rt-14-dev. scripts/run-tests.sh compiles
# through ccache. The rbd backend builds on librbd-dev; its tests run a
# throwaway cluster (tests/ceph) made of ceph-mon, ceph-osd and the tools in
# ceph-common, and the benchmark compares it with rbd-nbd.
PACKAGES=(
    meson ninja-build g++ pkg-config
    liburing-dev libspdlog-dev nlohmann-json3-dev libsystemd-dev
    catch2
    qemu-system-x86 busybox-static fio e2fsprogs zstd cpio kmod xz-utils jq
    util-linux dmsetup gdisk debootstrap clang-format scdoc gnuplot-nox shellcheck
    clang libclang-rt-14-dev ccache
    libnbd-dev libnbd-bin nbdkit nbd-client
    librbd-dev ceph-mon ceph-osd ceph-common rbd-nbd
)

check_only=0
while (($#)); do
    case $1 in
        --check) check_only=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install-deps: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# One dpkg-query for all packages: spawning one per package is slow.
missing_packages() {
    local -A installed=()
    local pkg status
    while read -r pkg status; do
        [[ $status == "install ok installed" ]] && installed[${pkg%%:*}]=1
    done < <(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
    for pkg in "${PACKAGES[@]}"; do
        [[ -n ${installed[$pkg]:-} ]] || echo "$pkg"
    done
}

mapfile -t missing < <(missing_packages)
if ((${#missing[@]} == 0)); then
    exit 0
fi
if ((check_only)); then
    echo "install-deps: missing: ${missing[*]}"
    exit 1
fi
if ((EUID != 0)); then
    echo "install-deps: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# True when every missing package has an install candidate in the current
# package lists; a fresh machine has empty lists and needs an update first.
have_candidates() {
    local pkg cand
    for pkg in "${missing[@]}"; do
        cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
        [[ -n $cand && $cand != "(none)" ]] || return 1
    done
}

apt_update() {
    # Unreachable third-party sources only produce warnings; a real failure
    # shows up in the install that follows.
    apt-get update -qq >/dev/null || true
}

install() {
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

echo "install-deps: installing ${missing[*]}" >&2
updated=0
if ! have_candidates; then
    apt_update
    updated=1
fi
if ! install; then
    # Stale lists point at package versions the mirror no longer has.
    ((updated)) && exit 1
    apt_update
    install
fi
