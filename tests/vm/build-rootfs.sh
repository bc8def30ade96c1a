#!/usr/bin/env bash
# Build the Debian 12 (bookworm) root file system that the systemd flavour of
# the VM tests (run-systemd.sh) boots: debootstrap --variant=minbase plus
# systemd and the tools the cases use, trimmed, packed as a tar archive and
# cached outside the source tree. The archive holds no kernel, no project
# files and no test files: run-systemd.sh adds those per run.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/vm/build-rootfs.sh [--rebuild] [--quiet] [--mirror URL]

Prints the path of the cached root file system archive on stdout,
building it first when it is not cached yet:

  ${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}/rootfs-<key>.tar

<key> is a hash of this script (package list, trimming and configuration
live here) and the mirror. Building takes about a minute and needs network
access to the Debian archive (debootstrap, no change to the system's apt
sources); a cached archive needs none. Must run as root.

  --mirror URL  Debian mirror (default: $UBLKD_VM_DEBIAN_MIRROR, else
                http://deb.debian.org/debian)
  --rebuild     build again even when the archive is cached
  --quiet       no progress messages on stderr
  --help        show this help
EOF
}

# Debian 12, like the machines ublkd is built on: the binaries from the build
# directory run in the image as they are.
readonly SUITE=bookworm
# Beyond minbase: systemd as init (systemd-sysv) with udev, module loading,
# what the cases use (fio, e2fsprogs, jq, util-linux, procps, dmsetup, gdisk), and the
# libraries ublkd and ublkctl link (ldd build/daemon/ublkd: liburing2,
# libspdlog1.10, libfmt9; libsystemd0 for the systemd integration).
readonly PACKAGES=(
    systemd systemd-sysv udev kmod
    fio e2fsprogs jq util-linux procps dmsetup gdisk
    liburing2 libspdlog1.10 libfmt9 libsystemd0
)

cache=${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}
mirror=${UBLKD_VM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
rebuild=0
quiet=0
while (($#)); do
    case $1 in
        --mirror) mirror=${2:?--mirror needs a value}; shift ;;
        --rebuild) rebuild=1 ;;
        --quiet) quiet=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build-rootfs: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

msg() { ((quiet)) || echo "build-rootfs: $*" >&2; }
die() { echo "build-rootfs: error: $*" >&2; exit 1; }

key=$( {
    cat "${BASH_SOURCE[0]}"
    echo "$mirror"
} | sha256sum | cut -c1-16)
out=$cache/rootfs-$key.tar

if ((!rebuild)) && [[ -f $out ]]; then
    echo "$out"
    exit 0
fi

((EUID == 0)) || die "must run as root (debootstrap)"
for tool in debootstrap chroot tar; do
    PATH=$PATH:/usr/sbin:/sbin command -v "$tool" >/dev/null ||
        die "'$tool' not found (run scripts/install-deps.sh)"
done
mkdir -p "$cache"
# Two runs building at once would both download; the second waits and then
# finds the archive.
exec 9>"$cache/.lock-rootfs"
flock 9
if ((!rebuild)) && [[ -f $out ]]; then
    echo "$out"
    exit 0
fi

work=$(mktemp -d "$cache/.rootfs.XXXXXX")
root=$work/root
# debootstrap mounts proc and sys inside the target while it runs and
# unmounts them at the end; an interrupted run may leave them.
cleanup() {
    local m
    for m in "$root/proc" "$root/sys" "$root/dev/pts" "$root/dev"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    rm -rf "$work"
}
trap cleanup EXIT

t0=$SECONDS
msg "debootstrap $SUITE (minbase + ${#PACKAGES[@]} packages) from $mirror"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
kopt=()
[[ -f $keyring ]] && kopt=(--keyring="$keyring")
# The downloaded packages are kept: a rebuild after a change to this script
# downloads only what changed.
mkdir -p "$cache/rootfs-debs"
if ! debootstrap --variant=minbase --components=main "${kopt[@]}" --cache-dir="$cache/rootfs-debs" \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [[ -f $root/debootstrap/debootstrap.log ]] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
fi
msg "debootstrap done ($((SECONDS - t0))s)"

# ---- configuration ---------------------------------------------------------
# Only what any use of the system wants; what makes it a fast test VM (units
# masked, the test service, fstab) is run-systemd.sh's business, so that
# changing it does not mean another debootstrap.

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }

echo ublkd-vm >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tublkd-vm\n' >"$root/etc/hosts"
# No machine id in the archive: run-systemd.sh writes a fresh one into each
# image (both boots of a reboot case share it, so journalctl -b -1 works).
rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
# Keep the journal across the reboots of a case (journalctl -b -1).
mkdir -p "$root/var/log/journal"
mkdir -p "$root/etc/systemd/journald.conf.d"
cat >"$root/etc/systemd/journald.conf.d/ublkd-vm.conf" <<'EOF'
# Test VM: small journal, nothing forwarded to the (slow, emulated) console.
[Journal]
SystemMaxUse=32M
ForwardToConsole=no
EOF

# ---- trimming ----------------------------------------------------------------

in_root apt-get clean >/dev/null 2>&1 || true
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/usr/share/lintian "$root"/debootstrap \
    "$root"/var/log/*.log "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
find "$root/dev" -mindepth 1 -delete 2>/dev/null || true

msg "packing $out"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$root" -cf "$work/rootfs.tar" .
# Archives of older versions of this script go; the new one replaces them.
rm -f "$cache"/rootfs-*.tar
mv "$work/rootfs.tar" "$out"
msg "done in $((SECONDS - t0))s: $(du -m "$out" | cut -f1) MiB"
echo "$out"
