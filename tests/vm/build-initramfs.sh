#!/usr/bin/env bash
# Build the initramfs the VM tests boot. It is the concatenation of three or
# four cpio archives (the kernel unpacks them one after the other):
#   1. userland: busybox plus the real tools the cases need (bash, fio,
#      e2fsprogs, util-linux, coreutils, kmod) with their shared libraries.
#      ~100 MiB, the same for every kernel and run: cached, rebuilt only when
#      this script or the installed packages change.
#   2. ceph, only when a case to run calls start_ceph: ceph-mon, ceph-osd,
#      rados, rbd and rbd-nbd (the benchmark's counterpart) with the libraries (1) lacks and the object classes RBD
#      needs, tests/ceph/cluster.sh, and a cluster it built here and stopped
#      (one mon, one MemStore OSD, pool rbd), which start_ceph copies and
#      resumes. ~43 MiB; cached like the userland, and rebuilt with it or
#      when cluster.sh changes.
#   3. modules: the kernel modules prepared by fetch-kernel.sh; cached in the
#      prepared kernel directory.
#   4. project: ublkd (and ublkctl), the libraries they need beyond (1-2), the
#      test libraries and cases, /init and the list of cases to run. Small;
#      built every time.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/vm/build-initramfs.sh --kernel-dir DIR --output FILE
                                   [--build-dir DIR] [--cases-dir DIR]
                                   [--timeout SECS] [CASE...]

  --kernel-dir DIR  prepared kernel directory (output of fetch-kernel.sh)
  --output FILE     initramfs to write (uncompressed cpio, newc format)
  --build-dir DIR   meson build directory with daemon/ublkd (and optionally
                    daemon/ublkctl); default: build in the source tree
  --cases-dir DIR   where the cases are (default tests/vm/cases); programs
                    in DIR/bin go to /usr/local/bin, with their libraries
  --timeout SECS    default per-case timeout inside the VM (default 300);
                    a case may set its own with a `# vm-timeout: SECS` line
  CASE...           cases to run at boot, by name (00-kernel-smoke) or file;
                    default: every *.sh of the cases directory, in the
                    order of their numbers (100 after 99)
  --help            show this help

The archive is uncompressed on purpose: under TCG the guest decompresses
slowly, while qemu loads a larger file at almost no cost. The userland part
is cached in ${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}/userland.
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

kernel_dir=
output=
build_dir=$repo/build
cases_dir=$here/cases
timeout=300
cases=()
while (($#)); do
    case $1 in
        --kernel-dir) kernel_dir=${2:?}; shift ;;
        --output) output=${2:?}; shift ;;
        --build-dir) build_dir=${2:?}; shift ;;
        --cases-dir) cases_dir=${2:?}; shift ;;
        --timeout) timeout=${2:?}; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "build-initramfs: unknown option: $1" >&2; usage >&2; exit 2 ;;
        *) cases+=("$1") ;;
    esac
    shift
done
[[ -n $kernel_dir && -n $output ]] || { usage >&2; exit 2; }
[[ $timeout =~ ^[0-9]+$ ]] || { echo "build-initramfs: bad --timeout: $timeout" >&2; exit 2; }

die() { echo "build-initramfs: error: $*" >&2; exit 1; }
warn() { echo "build-initramfs: warning: $*" >&2; }

[[ -f $kernel_dir/kernel.env && -d $kernel_dir/modules ]] ||
    die "$kernel_dir is not a prepared kernel (run fetch-kernel.sh)"
cache=${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}
mkdir -p "$cache/userland"
# Runs in parallel (other build directories) share the cached archives.
exec 8>"$cache/userland/.lock"
flock 8

# Case names: accept "00-x", "00-x.sh" or a path; they must exist.
if ((${#cases[@]} == 0)); then
    while IFS= read -r f; do
        [[ -e $cases_dir/$f ]] && cases+=("$cases_dir/$f")
    done < <(cd "$cases_dir" && printf '%s\n' *.sh | sort -s -t- -k1,1n)
fi
names=()
for c in "${cases[@]}"; do
    n=${c##*/}
    n=${n%.sh}
    [[ -f $cases_dir/$n.sh ]] || die "no such case: $c (looked for $cases_dir/$n.sh)"
    names+=("$n")
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ublkd-initramfs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# pack DIR OUT: DIR's contents as a newc archive owned by root.
pack() {
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$2"
}

# Files put into a stage, by path inside it: copy each only once.
declare -A copied=()

# copy_file STAGE SRC [DST]: copy dereferenced SRC to DST (default: the same
# path) inside STAGE.
copy_file() {
    local stage=$1 src=$2 dst=${3:-$2}
    [[ -n ${copied[$dst]:-} ]] && return 0
    copied[$dst]=1
    mkdir -p "$stage${dst%/*}"
    cp -L "$src" "$stage$dst"
}

# copy_libs STAGE BINARY: the shared libraries and dynamic loader BINARY
# needs, at the paths ldd resolves them to (RUNPATHs into a build tree too).
copy_libs() {
    local stage=$1 bin=$2 out line lib
    out=$(ldd "$bin" 2>/dev/null) || return 0 # static binary
    while IFS= read -r line; do
        case $line in
            *'=> not found'*) die "$bin needs a library that is not installed: $line" ;;
            *'=> /'*) lib=${line#*=> } ;;
            *[[:space:]]/*) lib=${line#"${line%%/*}"} ;;
            *) continue ;;
        esac
        lib=${lib%% (*}
        copy_file "$stage" "$lib"
    done <<<"$out"
}

# copy_bin STAGE PATH [DST]: an executable and its libraries.
copy_bin() {
    local stage=$1 src=$2 dst=${3:-}
    [[ -x $src ]] || die "missing executable $src"
    [[ -n $dst ]] || dst=$(readlink -f "$src")
    copy_file "$stage" "$src" "$dst"
    copy_libs "$stage" "$src"
}

# ---- 1. userland (cached) -----------------------------------------------------

# Real tools, where busybox lacks what cases use (dmesg -C, timeout -k,
# dd oflag=direct, blkdiscard -z, losetup --direct-io, mount options, comm),
# and dmsetup for device-mapper stores that fail on demand.
readonly TOOLS=(
    bash fio mke2fs e2fsck blkdiscard blockdev dmesg losetup mount umount
    timeout dd sha256sum md5sum stat truncate cmp comm sync stdbuf kmod setsid
    setpriv jq dmsetup nbdkit nbd-client resize2fs sgdisk busybox
)
# The nbdkit plugins and filters the nbd cases and the benchmark serve
# exports with (nbdkit loads them from its compiled-in directory).
readonly NBDKIT_DIR=/usr/lib/x86_64-linux-gnu/nbdkit
readonly NBDKIT_MODULES=(
    plugins/nbdkit-memory-plugin.so plugins/nbdkit-file-plugin.so
    filters/nbdkit-delay-filter.so filters/nbdkit-error-filter.so
    filters/nbdkit-pause-filter.so filters/nbdkit-multi-conn-filter.so
    filters/nbdkit-exportname-filter.so
)

tool_paths=()
for t in "${TOOLS[@]}"; do
    p=$(PATH=$PATH:/usr/sbin:/sbin command -v "$t") ||
        die "tool '$t' not found (run scripts/install-deps.sh)"
    tool_paths+=("$p")
done

# The cache key changes with this script (the tool list and layout live
# here) and with any package installation (dpkg's status file).
key=$( {
    cat "${BASH_SOURCE[0]}"
    stat -L -c '%n %s %Y' "${tool_paths[@]}" /var/lib/dpkg/status
} | sha256sum | cut -c1-16)
userland=$cache/userland/userland-$key.cpio
userland_files=$cache/userland/userland-$key.files

build_userland() {
    local stage=$tmp/userland t bb
    mkdir -p "$stage"/usr/{bin,sbin,lib,lib64} \
        "$stage"/{dev,proc,sys,tmp,run,root,mnt,etc,var/tmp}
    # Merged /usr like the host, so ldd's /lib/... and /lib64/... paths land
    # in the right place when copied through the symlinks.
    ln -s usr/bin "$stage/bin"
    ln -s usr/sbin "$stage/sbin"
    ln -s usr/lib "$stage/lib"
    ln -s usr/lib64 "$stage/lib64"
    chmod 1777 "$stage/tmp" "$stage/var/tmp"
    # The kernel's built-in initramfs has /dev/console already; this covers
    # a kernel without (mknod may be refused in a container: not fatal).
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true

    for t in "${tool_paths[@]}"; do
        [[ ${t##*/} == busybox ]] && continue
        copy_bin "$stage" "$t"
    done
    # stdbuf works through a preload library.
    [[ -f /usr/libexec/coreutils/libstdbuf.so ]] &&
        copy_file "$stage" /usr/libexec/coreutils/libstdbuf.so
    ln -s mke2fs "$stage/usr/sbin/mkfs.ext4"
    ln -s mke2fs "$stage/usr/sbin/mkfs.ext2"
    ln -s e2fsck "$stage/usr/sbin/fsck.ext4"
    for t in modprobe insmod rmmod lsmod modinfo depmod; do
        ln -s ../bin/kmod "$stage/usr/sbin/$t"
    done
    [[ -f /etc/mke2fs.conf ]] && copy_file "$stage" /etc/mke2fs.conf
    local m
    for m in "${NBDKIT_MODULES[@]}"; do
        [[ -f $NBDKIT_DIR/$m ]] || die "missing $NBDKIT_DIR/$m (run scripts/install-deps.sh)"
        copy_file "$stage" "$NBDKIT_DIR/$m"
        copy_libs "$stage" "$NBDKIT_DIR/$m"
    done

    # busybox for everything else. --install makes absolute links to its own
    # path and skips names that exist, so the real tools above stay. Those
    # in /usr/sbin win through PATH order (sbin first, as in /init).
    bb=$(PATH=$PATH:/usr/sbin:/sbin command -v busybox)
    ldd "$bb" >/dev/null 2>&1 && warn "$bb is dynamically linked; install busybox-static"
    copy_bin "$stage" "$bb" /usr/bin/busybox
    if [[ $(readlink -f "$bb") == /usr/bin/busybox ]]; then
        "$bb" --install -s "$stage/usr/bin"
    else
        local a
        for a in $("$bb" --list); do
            [[ -e $stage/usr/bin/$a ]] || ln -s /usr/bin/busybox "$stage/usr/bin/$a"
        done
    fi

    cat >"$stage/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$stage/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
    ln -s /proc/mounts "$stage/etc/mtab"
    echo ublkd-vm >"$stage/etc/hostname"

    rm -f "$cache"/userland/userland-*
    printf '%s\n' "${!copied[@]}" >"$userland_files.tmp"
    pack "$stage" "$userland.tmp"
    mv "$userland_files.tmp" "$userland_files"
    mv "$userland.tmp" "$userland"
}

if [[ ! -f $userland || ! -f $userland_files ]]; then
    echo "build-initramfs: building the userland archive (cached for later runs)" >&2
    build_userland
else
    while IFS= read -r f; do copied[$f]=1; done <"$userland_files"
fi

# ---- 2. ceph (cached; only for the cases that start a cluster) -------------------

readonly CEPH_TOOLS=(ceph-mon ceph-osd rados rbd rbd-nbd)
# What the fixture's OSD loads (osd_class_load_list in cluster.sh).
readonly CEPH_CLASSES=(
    /usr/lib/x86_64-linux-gnu/rados-classes/libcls_rbd.so.1
    /usr/lib/x86_64-linux-gnu/rados-classes/libcls_lock.so.1
)
readonly CEPH_FIXTURE=$repo/tests/ceph/cluster.sh
# Where the guest finds them (lib.sh's start_ceph).
readonly CEPH_GUEST_DIR=/ublkd-tests/ceph

need_ceph=0
for n in "${names[@]}"; do
    grep -q '^[^#]*\bstart_ceph\b' "$cases_dir/$n.sh" && need_ceph=1
done

# build_ceph OUT FILES: the ceph archive, and the list of the files in it.
# In a subshell: copy_file's record of what is in the archives must not
# count these files when a later run leaves this part out.
build_ceph() (
    local out=$1 files=$2 stage=$tmp/ceph t p cluster
    mkdir -p "$stage/usr/lib" "$stage/usr/lib64" "$stage$CEPH_GUEST_DIR"
    ln -s usr/lib "$stage/lib"
    ln -s usr/lib64 "$stage/lib64"
    for t in "${CEPH_TOOLS[@]}"; do
        p=$(command -v "$t") || die "$t not found (run scripts/install-deps.sh)"
        copy_bin "$stage" "$p"
    done
    for p in "${CEPH_CLASSES[@]}"; do
        [[ -f $p ]] || die "missing $p (run scripts/install-deps.sh)"
        copy_file "$stage" "$p"
        copy_libs "$stage" "$p"
    done
    # The OSD finds a class by its .so name.
    for p in "${CEPH_CLASSES[@]}"; do
        ln -s "${p##*/}" "$stage${p%.1}"
    done
    cp "$CEPH_FIXTURE" "$stage$CEPH_GUEST_DIR/cluster.sh"
    # Built outside the stage: its path must stay short (admin sockets).
    cluster=$(mktemp -d "${TMPDIR:-/var/tmp}/ublkd-vm-ceph.XXXXXX")
    if ! "$CEPH_FIXTURE" start --memstore "$cluster"; then
        "$CEPH_FIXTURE" stop "$cluster" || true
        die "the Ceph cluster for the initramfs did not start; its files are in $cluster"
    fi
    "$CEPH_FIXTURE" stop "$cluster" || die "stopping the Ceph cluster in $cluster failed"
    # The build's logs and the inputs of its mkfs are no use in the guest.
    rm -rf "$cluster/log" "$cluster/run" "$cluster/crash" "$cluster/monmap" "$cluster/osdmap"
    cp -a "$cluster" "$stage$CEPH_GUEST_DIR/cluster"
    rm -rf "$cluster"
    rm "$stage/lib" "$stage/lib64"
    (cd "$stage" && find . -mindepth 1 ! -type d | sed 's/^\.//') >"$files.tmp"
    pack "$stage" "$out.tmp"
    mv "$files.tmp" "$files"
    mv "$out.tmp" "$out"
)

ceph_part=
if ((need_ceph)); then
    for t in "${CEPH_TOOLS[@]}"; do
        command -v "$t" >/dev/null || die "$t not found: a case needs Ceph (run scripts/install-deps.sh)"
    done
    # With the userland's key: the libraries left out here are those the
    # userland has.
    ceph_key=$( {
        echo "$key"
        cat "$CEPH_FIXTURE"
        stat -L -c '%n %s %Y' "$(command -v ceph-osd)" "${CEPH_CLASSES[@]}"
    } | sha256sum | cut -c1-16)
    ceph_part=$cache/userland/ceph-$ceph_key.cpio
    if [[ ! -f $ceph_part || ! -f $ceph_part.files ]]; then
        echo "build-initramfs: building the ceph archive (cached for later runs)" >&2
        rm -f "$cache"/userland/ceph-*
        build_ceph "$ceph_part" "$ceph_part.files"
    fi
    while IFS= read -r f; do copied[$f]=1; done <"$ceph_part.files"
fi

# ---- 3. modules (cached per kernel) ---------------------------------------------

modules=$kernel_dir/modules.cpio
if [[ ! -f $modules || $modules -ot $kernel_dir/kernel.env ]]; then
    mkdir -p "$tmp/modules/usr/lib"
    cp -a "$kernel_dir/modules/lib/modules" "$tmp/modules/usr/lib/"
    pack "$tmp/modules" "$modules.tmp.$$"
    mv "$modules.tmp.$$" "$modules"
fi

# ---- 4. project (every time) ----------------------------------------------------

stage=$tmp/project
mkdir -p "$stage/usr/local/bin" "$stage/etc/ublkd-vm" "$stage/ublkd-tests/cases"
# The libraries are copied through the same merged-/usr symlinks.
ln -s usr/lib "$stage/lib"
ln -s usr/lib64 "$stage/lib64"
mkdir -p "$stage/usr/lib" "$stage/usr/lib64"

# Every binary the cases and the benchmark use: one that was not built is
# an error here, not a case that skips (or fails obscurely) inside the VM.
for t in daemon/ublkd daemon/ublkctl tests/ublkd-admin-send tests/ublkd-del-dev \
    bench/ublkd-bench-add-live; do
    [[ -x $build_dir/$t ]] || die "$build_dir/$t not found: build it first (ninja -C $build_dir)"
    copy_bin "$stage" "$build_dir/$t" "/usr/local/bin/${t##*/}"
done
# Programs a caller put beside its cases (the benchmark's baseline ublkd).
for t in "$cases_dir"/bin/*; do
    [[ -f $t && -x $t ]] || continue
    copy_bin "$stage" "$t" "/usr/local/bin/${t##*/}"
done
# The symlinks are in the userland archive already; in this one they would
# replace nothing but must not become directories either.
rm "$stage/lib" "$stage/lib64"

# Tests, laid out as in the tree so cases can source ../lib.sh; /init
# sources guest-lib.sh, which sources kernel-reports.sh.
cp "$here/lib.sh" "$here/guest-lib.sh" "$here/kernel-reports.sh" "$stage/ublkd-tests/"
# For a TSan build of the binaries; guest-lib.sh points TSAN_OPTIONS at it.
cp "$repo/tests/tsan.supp" "$stage/ublkd-tests/" 2>/dev/null || true
cp "$cases_dir"/*.sh "$stage/ublkd-tests/cases/"
cp "$here/init.sh" "$stage/init"
chmod 755 "$stage/init"

# What /init runs: plain bash assignments, sourced by init.sh.
{
    echo "# Generated by build-initramfs.sh"
    echo "UBLKD_VM_DEFAULT_TIMEOUT=$timeout"
    printf 'UBLKD_VM_CASES=('
    printf '%q ' "${names[@]}"
    printf ')\n'
} >"$stage/etc/ublkd-vm/run.conf"

pack "$stage" "$tmp/project.cpio"

mkdir -p "$(dirname "$output")"
cat "$userland" ${ceph_part:+"$ceph_part"} "$modules" "$tmp/project.cpio" >"$output.tmp"
mv "$output.tmp" "$output"
