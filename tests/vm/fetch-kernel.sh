#!/usr/bin/env bash
# Fetch a Debian cloud kernel that has ublk_drv and prepare it for booting in
# qemu: an uncompressed vmlinux (booted through PVH with `-kernel`) and the
# kernel modules the VM tests need, decompressed, with a modules.dep that
# covers exactly them. The result is cached outside the source tree; a rerun
# with a prepared cache needs no network.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/vm/fetch-kernel.sh [--refresh] [--quiet] VERSION

VERSION is a kernel series the VM tests support:
  6.12   linux-image-6.12.*-cloud-amd64-unsigned from bookworm(-security),
         through the system's apt configuration
  7.2    linux-binary-7.2.*-cloud-amd64 + linux-modules-7.2.*-cloud-amd64
         (+ linux-base-7.2.*) from Debian sid, through a private apt
         configuration inside the cache (the system's sources are not touched)

The newest matching package version is used. Prints the prepared kernel
directory on stdout; it holds:
  vmlinux                 uncompressed kernel (ELF with a PVH entry point)
  modules/lib/modules/KVER/...  decompressed .ko files + modules.dep etc.
  kernel.env              KVER, package names/versions, packaged modules

Cache: ${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}

  --refresh   look for a newer package even when a prepared kernel is cached
  --quiet     no progress messages on stderr
  --help      show this help
EOF
}

# Bump when the layout of a prepared kernel directory changes, so that old
# caches are rebuilt (from the cached .deb files) instead of misused.
readonly PREP_FORMAT=4

# Modules packaged into the initramfs when the kernel has them as modules.
# ublk_drv is the subject under test; brd, null_blk and loop give cases
# reference block devices, dm_mod backing stores that fail or stall on
# demand (its linear and error targets), dm_delay stores whose every
# request takes a while, nbd the kernel's NBD client the
# benchmark compares the nbd backend with; ext4, virtio and the crc32c providers are listed so
# that a kernel that builds them as modules still gets a usable VM.
readonly WANTED_MODULES=(
    ublk_drv brd null_blk loop dm_mod dm_delay nbd
    ext4 virtio_pci virtio_blk
    crc32c_generic crc32c_intel crc32c_cryptoapi libcrc32c
)
# Modules without which the VM tests are pointless.
readonly REQUIRED_MODULES=(ublk_drv)

refresh=0
quiet=0
version=
while (($#)); do
    case $1 in
        --refresh) refresh=1 ;;
        --quiet) quiet=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "fetch-kernel: unknown option: $1" >&2; usage >&2; exit 2 ;;
        *)
            [[ -z $version ]] || { echo "fetch-kernel: one VERSION only" >&2; exit 2; }
            version=$1
            ;;
    esac
    shift
done
[[ -n $version ]] || { usage >&2; exit 2; }

case $version in
    6.12 | 7.2) ;;
    *) echo "fetch-kernel: unsupported kernel series '$version' (use 6.12 or 7.2)" >&2; exit 2 ;;
esac

cache=${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}
kdir=$cache/kernel-$version

msg() { ((quiet)) || echo "fetch-kernel[$version]: $*" >&2; }
die() { echo "fetch-kernel[$version]: error: $*" >&2; exit 1; }

is_prepared() {
    [[ -f $kdir/.prepared && $(cat "$kdir/.prepared") == "$PREP_FORMAT" ]]
}

# Fast path: no lock, no network, nothing to do.
if ((!refresh)) && is_prepared; then
    echo "$kdir"
    exit 0
fi

mkdir -p "$cache/debs"
# Two runs preparing the same series at once would trample each other.
exec 9>"$cache/.lock-$version"
flock 9
if ((!refresh)) && is_prepared; then
    echo "$kdir"
    exit 0
fi

for tool in apt-get apt-cache dpkg-deb depmod zstd xz od; do
    command -v "$tool" >/dev/null || die "'$tool' not found (run scripts/install-deps.sh)"
done

# --- package lookup ---------------------------------------------------------

# apt options of the private configuration used for sid. Only Dir::Etc,
# Dir::State and Dir::Cache move, which is enough for apt to read our
# sources.list and keep its lists and downloads under the cache.
sid_dir=$cache/apt-sid
sid_opts=(
    -o "Dir::Etc=$sid_dir/etc/apt"
    -o "Dir::State=$sid_dir/state"
    -o "Dir::Cache=$sid_dir/cache"
    -o Debug::NoLocking=1
)

setup_sid_apt() {
    mkdir -p "$sid_dir"/etc/apt/{apt.conf.d,preferences.d,sources.list.d,trusted.gpg.d} \
        "$sid_dir"/state/lists/partial "$sid_dir"/cache/archives/partial
    echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main' \
        >"$sid_dir/etc/apt/sources.list"
}

# apt_cmd TOOL ARGS...: run apt-get/apt-cache with the configuration of this
# series. -o APT::Sandbox::User=root: downloads go to a root-owned directory
# the _apt user cannot write.
apt_cmd() {
    local tool=$1
    shift
    if [[ $version == 7.2 ]]; then
        "$tool" "${sid_opts[@]}" -o APT::Sandbox::User=root "$@"
    else
        "$tool" -o APT::Sandbox::User=root "$@"
    fi
}

apt_update() {
    msg "updating package lists"
    # Not fatal: a third-party source in the system configuration may be
    # unreachable while Debian's are fine; the lookup that follows decides.
    apt_cmd apt-get update -qq >/dev/null || msg "warning: apt-get update failed"
}

# Newest package whose name matches the (extended) regex $1, by name: the
# names carry the upstream version (6.12.117+deb12...) so version sort on
# them orders releases.
newest_package() {
    { apt_cmd apt-cache search --names-only "$1" || true; } | awk '{print $1}' | { grep -E "$1" || true; } | sort -V | tail -n 1
}

candidate_version() {
    apt_cmd apt-cache policy "$1" | awk '/Candidate:/ {print $2}'
}

# Sets main_pkg and extra_pkgs: the image package and the packages that
# complete it (modules, base files), all of the same kernel release.
find_packages() {
    case $version in
        6.12)
            main_pkg=$(newest_package '^linux-image-6\.12\.[0-9]+\+deb[0-9]+-cloud-amd64-unsigned$')
            extra_pkgs=()
            ;;
        7.2)
            # sid splits the kernel: linux-binary has vmlinuz, linux-modules
            # the modules, linux-base config and modules.builtin.
            main_pkg=$(newest_package '^linux-binary-7\.2\.[0-9]+\+deb[0-9]+-cloud-amd64$')
            local rel=${main_pkg#linux-binary-}
            extra_pkgs=("linux-modules-$rel" "linux-base-$rel")
            ;;
    esac
}

updated=0 # package lists updated by this run
if [[ $version == 7.2 ]]; then
    setup_sid_apt
    # No Packages index yet: first use of this cache.
    if ! compgen -G "$sid_dir/state/lists/*_Packages*" >/dev/null; then
        apt_update
        updated=1
    fi
fi

# resolve_packages: sets pkgs (names), pkg_specs (name=version) and
# main_version from the current package lists.
resolve_packages() {
    local p v
    find_packages
    [[ -n $main_pkg ]] || return 1
    pkgs=("$main_pkg" "${extra_pkgs[@]}")
    pkg_specs=()
    for p in "${pkgs[@]}"; do
        v=$(candidate_version "$p")
        if [[ -z $v || $v == "(none)" ]]; then
            # linux-base exists only for the split packaging; the rest is required.
            [[ $p == linux-base-* ]] && { msg "no $p; continuing without it"; continue; }
            die "package $p has no install candidate"
        fi
        pkg_specs+=("$p=$v")
    done
    main_version=$(candidate_version "$main_pkg")
}

# download_packages: sets debs to the .deb files of pkg_specs, downloading
# those not in the cache yet. Fails if a download fails.
download_packages() {
    local spec p v deb
    debs=()
    for spec in "${pkg_specs[@]}"; do
        p=${spec%%=*}
        v=${spec#*=}
        # Kernel packages have no epoch, so the file name is plain.
        deb=$cache/debs/${p}_${v}_amd64.deb
        if [[ ! -s $deb ]]; then
            msg "downloading $spec"
            (cd "$cache/debs" && apt_cmd apt-get download -qq "$spec" >/dev/null) || return 1
            [[ -s $deb ]] || die "download of $spec did not produce $deb"
        fi
        debs+=("$deb")
    done
}

if ((refresh && !updated)) || ! resolve_packages; then
    # Lists missing or possibly stale: update once and look again.
    apt_update
    updated=1
    resolve_packages || die "no kernel package for $version found in the package lists"
fi

if ((refresh)) && is_prepared; then
    # shellcheck disable=SC1091
    cached=$(. "$kdir/kernel.env" && echo "$PKG_MAIN=$PKG_MAIN_VERSION")
    if [[ $cached == "$main_pkg=$main_version" ]]; then
        msg "cached kernel is the newest ($cached)"
        echo "$kdir"
        exit 0
    fi
fi

# --- download ---------------------------------------------------------------

if ! download_packages; then
    # Old lists name versions the archive has dropped (the security archive
    # keeps only the latest): update and try the then newest once more.
    ((updated)) && die "download of ${pkg_specs[*]} failed"
    msg "download failed; updating the package lists and retrying"
    apt_update
    resolve_packages || die "no kernel package for $version found in the package lists"
    download_packages || die "download of ${pkg_specs[*]} failed"
fi

# --- preparation ------------------------------------------------------------

work=$(mktemp -d "$cache/.prep-$version.XXXXXX")
trap 'rm -rf "$work"' EXIT

msg "unpacking ${pkgs[*]}"
for deb in "${debs[@]}"; do
    dpkg-deb -x "$deb" "$work/root"
done

# Modules live in /lib/modules (bookworm) or /usr/lib/modules (sid).
moddir=
for d in "$work"/root/lib/modules/* "$work"/root/usr/lib/modules/*; do
    [[ -d $d/kernel ]] && { moddir=$d; break; }
done
[[ -n $moddir ]] || die "no modules directory in ${pkgs[*]}"
kver=${moddir##*/}

vmlinuz=
for f in "$work/root/boot/vmlinuz-$kver" "$moddir/vmlinuz"; do
    [[ -f $f ]] && { vmlinuz=$f; break; }
done
[[ -n $vmlinuz ]] || die "no vmlinuz in ${pkgs[*]}"

config=
for f in "$work/root/boot/config-$kver" "$moddir/config"; do
    [[ -f $f ]] && { config=$f; break; }
done

# read_le FILE OFFSET BYTES: little-endian unsigned integer from a file.
read_le() {
    od -An -t "u$3" -j "$2" -N "$3" "$1" | tr -d ' '
}

# A bzImage is real-mode setup code followed by the compressed kernel. The
# boot protocol header says where: setup_sects at 0x1f1, payload_offset and
# payload_length at 0x248/0x24c (relative to the protected-mode code, which
# starts after the (setup_sects + 1) 512-byte sectors). The kernel build
# appends the uncompressed size as 4 bytes to the payload; the decompressors
# reject those, so they are cut off. Debian compresses with zstd; xz and gzip
# are handled too for kernels built differently.
extract_vmlinux() {
    local in=$1 out=$2
    local setup_sects payload_off payload_len start magic
    setup_sects=$(read_le "$in" $((0x1f1)) 1)
    ((setup_sects)) || setup_sects=4
    payload_off=$(read_le "$in" $((0x248)) 4)
    payload_len=$(read_le "$in" $((0x24c)) 4)
    start=$(((setup_sects + 1) * 512 + payload_off))
    magic=$(od -An -t x1 -j "$start" -N 6 "$in" | tr -d ' \n')
    local -a decomp
    case $magic in
        28b52ffd*) decomp=(zstd -dcq) ;;
        fd377a585a00) decomp=(xz -dcq) ;;
        1f8b*) decomp=(gzip -dcq) ;;
        *)
            # Header not understood: fall back to scanning for a zstd frame.
            start=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$in" | head -n 1 | cut -d: -f1)
            [[ -n $start ]] || die "no compressed kernel found in $in (magic '$magic')"
            payload_len=$(($(stat -c %s "$in") - start))
            decomp=(zstd -dcq)
            ;;
    esac
    dd if="$in" iflag=skip_bytes,count_bytes skip="$start" count=$((payload_len - 4)) \
        bs=1M status=none | "${decomp[@]}" >"$out" ||
        die "decompressing the kernel in $in failed"
    [[ $(od -An -t x1 -N 4 "$out" | tr -d ' \n') == 7f454c46 ]] ||
        die "decompressed kernel from $in is not an ELF file"
}

out=$work/out
mkdir -p "$out"
msg "extracting vmlinux from ${vmlinuz##*/}"
extract_vmlinux "$vmlinuz" "$out/vmlinux"
if [[ -n $config ]]; then
    cp "$config" "$out/config"
    # -kernel vmlinux needs the PVH entry point.
    grep -q '^CONFIG_PVH=y' "$config" || msg "warning: kernel built without CONFIG_PVH; vmlinux boot will fail"
fi

# Resolve dependencies with depmod on the original (compressed) tree; the
# result lists every module with all of its dependencies, transitively.
base=$work/depbase
mkdir -p "$base/lib/modules"
mv "$moddir" "$base/lib/modules/$kver"
moddir=$base/lib/modules/$kver
depmod -b "$base" "$kver" 2>/dev/null || depmod -b "$base" "$kver"

declare -A dep_line=() mod_path=()
while IFS= read -r line; do
    path=${line%%:*}
    name=${path##*/}
    name=${name%%.ko*}
    name=${name//-/_}
    mod_path[$name]=$path
    dep_line[$path]=${line#*:}
done <"$moddir/modules.dep"

builtin_names=" "
if [[ -f $moddir/modules.builtin ]]; then
    while IFS= read -r path; do
        name=${path##*/}
        name=${name%.ko}
        builtin_names+="${name//-/_} "
    done <"$moddir/modules.builtin"
fi

declare -A picked=()
packaged=() builtin=() absent=()
for m in "${WANTED_MODULES[@]}"; do
    if [[ -n ${mod_path[$m]:-} ]]; then
        path=${mod_path[$m]}
        packaged+=("$m")
        picked[$path]=1
        for d in ${dep_line[$path]}; do picked[$d]=1; done
    elif [[ $builtin_names == *" $m "* ]]; then
        builtin+=("$m")
    else
        absent+=("$m")
    fi
done
for m in "${REQUIRED_MODULES[@]}"; do
    [[ -n ${mod_path[$m]:-} || $builtin_names == *" $m "* ]] || die "kernel $kver has no $m"
done

# Decompress the picked modules into the output tree; modprobe in the VM
# then loads plain .ko files and needs no decompression support.
omods=$out/modules/lib/modules/$kver
mkdir -p "$omods"
files=()
for path in "${!picked[@]}"; do
    dst=$omods/${path%.ko*}.ko
    mkdir -p "${dst%/*}"
    case $path in
        *.ko.xz) xz -dc "$moddir/$path" >"$dst" ;;
        *.ko.zst) zstd -dcq "$moddir/$path" >"$dst" ;;
        *.ko.gz) gzip -dc "$moddir/$path" >"$dst" ;;
        *.ko) cp "$moddir/$path" "$dst" ;;
        *) die "unknown module file type: $path" ;;
    esac
    files+=("${path##*/}")
done
for f in modules.builtin modules.builtin.modinfo modules.order; do
    [[ -f $moddir/$f ]] && cp "$moddir/$f" "$omods/"
done
# modules.dep and friends for the subset, naming the .ko files.
depmod -b "$out/modules" "$kver"

{
    echo "KSERIES=$version"
    echo "KVER=$kver"
    echo "PKG_MAIN=$main_pkg"
    echo "PKG_MAIN_VERSION=$main_version"
    echo "PACKAGES=\"${pkg_specs[*]}\""
    echo "MODULES_PACKAGED=\"${packaged[*]}\""
    echo "MODULES_BUILTIN=\"${builtin[*]}\""
    echo "MODULES_ABSENT=\"${absent[*]}\""
    echo "MODULE_FILES=\"$(printf '%s\n' "${files[@]}" | sort | tr '\n' ' ' | sed 's/ $//')\""
} >"$out/kernel.env"
echo "$PREP_FORMAT" >"$out/.prepared"

# Swap in the new directory; an old one may be in use by a running VM only
# through open files, which survive the removal.
rm -rf "$kdir.old"
[[ -e $kdir ]] && mv "$kdir" "$kdir.old"
mv "$out" "$kdir"
rm -rf "$kdir.old"

msg "prepared $kver in $kdir"
msg "  modules packaged: ${packaged[*]}"
msg "  built in: ${builtin[*]:-none}; not available: ${absent[*]:-none}"
echo "$kdir"
