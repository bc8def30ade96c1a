#!/usr/bin/env bash
# Run the systemd VM test cases (tests/vm/systemd-cases/*.sh) in a Debian 12
# system booted with systemd as PID 1, in a throwaway qemu VM (TCG), on each
# kernel. The root file system is a disk image made fresh per kernel from the
# cached Debian root file system (build-rootfs.sh), the project installed
# into it with `meson install --destdir`. Cases may reboot the VM and go on
# afterwards on the same image. See tests/vm/README.md, "systemd flavour".
# What both flavours share is in host-lib.sh.
set -euo pipefail

usage() {
    cat <<'EOF_USAGE'
Usage: tests/vm/run-systemd.sh [OPTIONS] [CASE...]

Per kernel: makes a root disk image from the cached Debian root file system
with the kernel's modules, the project (meson install --destdir) and the
cases; boots it (systemd as PID 1) as often as the cases ask for reboots;
ublkd-vm-tests.service runs the cases inside, each with its own timeout (a
phase of a rebooting case gets it anew).

Options:
EOF_USAGE
    common_options_help "\
  --disk-size SIZE  size of the root disk image (sparse; default 2G)
  --keep-image      keep the root disk image as DIR/KERNEL/root.img"
    cat <<'EOF_USAGE'

CASE is a case name (00-systemd-boot) or file; default: all cases of the
tier. Cases named explicitly run whatever their tier.
Exit status: 0 when nothing failed, 1 when a case failed, 2 on usage errors.
Kernels come from fetch-kernel.sh, the Debian root file system from
build-rootfs.sh; both are cached in ${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}.
Must run as root (debootstrap, and an image whose files belong to root).
EOF_USAGE
}

readonly PROG=run-systemd.sh CASES_SUBDIR=systemd-cases LOGS_SUBDIR=vm-logs-systemd SKIP_SUITE=vm-systemd
# qemu start to the runner's boot marker: kernel, shim, systemd, the wait
# for the boot to finish. ~10-20 s under TCG; much more on a loaded host.
readonly BOOT_TIMEOUT=240
# From the reboot or done marker to qemu's exit: a clean shutdown, which
# waits up to 90 s for a unit that does not stop.
readonly SHUTDOWN_TIMEOUT=150
disk_size=2G
keep_image=0
declare -rA OWN_OPTIONS=([--disk-size]=disk_size) OWN_FLAGS=([--keep-image]=keep_image)
# shellcheck source=host-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/host-lib.sh"
# shellcheck source=kernel-reports.sh
. "$here/kernel-reports.sh"

# Boots per kernel at most: a case looping on reboots ends there.
readonly MAX_BOOTS=20
# Units that only cost boot time in the test VM, or wait for what it lacks.
# Masked in the image.
readonly MASKED_UNITS=(
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer
    e2scrub_all.timer e2scrub_reap.service fstrim.timer
    proc-sys-fs-binfmt_misc.automount systemd-binfmt.service
    getty@tty1.service serial-getty@ttyS0.service console-getty.service
    getty-static.service systemd-firstboot.service
    systemd-remount-fs.service systemd-update-utmp.service
    systemd-update-utmp-runlevel.service
    dev-hugepages.mount dev-mqueue.mount sys-kernel-tracing.mount
    sys-fs-fuse-connections.mount modprobe@drm.service
    modprobe@efi_pstore.service modprobe@fuse.service
)

parse_options "$@"
select_kernels_and_cases
((EUID == 0)) || die "must run as root"
require_tools qemu-system-x86_64 cpio mkfs.ext4 tar meson busybox
setup_dirs systemd

# ---- the image ----------------------------------------------------------------

echo "[rootfs] preparing the Debian root file system"
t0=$(now)
rootfs_tar=$(nice "$here/build-rootfs.sh") || die "build-rootfs.sh failed"
echo "[rootfs] $(basename "$rootfs_tar") ready ($(secs_since "$t0")s)"

# install_project STAGE: the project as `meson install` installs it, under
# STAGE. Falls back to copying ublkd and ublkctl to /usr/local/sbin when the
# build directory has nothing to install.
install_project() {
    local stage=$1 installed
    installed=$(meson introspect --installed "$build_dir" 2>/dev/null || echo '{}')
    if [[ $installed == *ublkd* ]]; then
        nice meson install -C "$build_dir" --destdir "$stage" --no-rebuild --quiet \
            >"$work/meson-install.log" 2>&1 || {
            cat "$work/meson-install.log" >&2
            echo "run-systemd.sh: meson install from $build_dir failed" >&2
            return 1
        }
    else
        echo "run-systemd.sh: warning: $build_dir has no install targets; copying the binaries to /usr/local/sbin" >&2
        mkdir -p "$stage/usr/local/sbin"
        local b
        for b in ublkd ublkctl; do
            [[ -x $build_dir/daemon/$b ]] && cp "$build_dir/daemon/$b" "$stage/usr/local/sbin/"
        done
    fi
    # Test helpers, as in the initramfs flavour.
    local t
    for t in ublkd-admin-send ublkd-del-dev; do
        if [[ -x $build_dir/tests/$t ]]; then
            mkdir -p "$stage/usr/local/bin"
            cp "$build_dir/tests/$t" "$stage/usr/local/bin/"
        fi
    done
    # The libraries the binaries need must be in the image (build-rootfs.sh
    # installs those of today's ublkd).
    local bin missing
    for bin in "$stage"/usr/sbin/ublk* "$stage"/usr/local/sbin/ublk* "$stage"/usr/local/bin/ublk*; do
        [[ -f $bin && -x $bin ]] || continue
        missing=$(chroot "$stage" /usr/bin/ldd "${bin#"$stage"}" 2>&1 | grep 'not found' || true)
        [[ -z $missing ]] || echo "run-systemd.sh: warning: ${bin#"$stage"} needs libraries the image lacks (add them to build-rootfs.sh): ${missing//$'\n'/ }" >&2
    done
    return 0
}

# make_shim KDIR KVER OUT: the boot shim initramfs (systemd-shim-init.sh as
# /init, static busybox, virtio_blk and what it depends on).
make_shim() {
    local kdir=$1 kver=$2 out=$3 s=$work/shim a m d
    local moddir=$kdir/modules/lib/modules/$kver
    rm -rf "$s"
    mkdir -p "$s"/{bin,dev,proc,sys,newroot,modules,etc}
    cp "$(PATH=$PATH:/usr/sbin:/sbin command -v busybox)" "$s/bin/busybox"
    for a in sh mount umount insmod sleep switch_root poweroff cat echo mkdir; do
        ln -s busybox "$s/bin/$a"
    done
    cp "$here/systemd-shim-init.sh" "$s/init"
    chmod 755 "$s/init"
    # modules.dep: "path: dep1 dep2 ..."; dependencies load last to first.
    local -a order=()
    local -A have=()
    local line path deps i
    line=$(grep -E '(^|/)virtio_blk\.ko[^:]*:' "$moddir/modules.dep" || true)
    if [[ -n $line ]]; then
        path=${line%%:*}
        read -r -a deps <<<"${line#*:}"
        for ((i = ${#deps[@]} - 1; i >= 0; i--)); do order+=("${deps[i]}"); done
        order+=("$path")
    fi
    : >"$s/etc/shim-modules"
    for m in "${order[@]}"; do
        [[ -n ${have[$m]:-} ]] && continue
        have[$m]=1
        d=${m##*/}
        cp "$moddir/$m" "$s/modules/$d"
        echo "$d" >>"$s/etc/shim-modules"
    done
    (cd "$s" && find . -mindepth 1 | sort | cpio -o -H newc -R 0:0 --quiet) >"$out"
}

# make_image K KDIR KVER IMG: the root disk image of kernel K.
make_image() {
    local k=$1 kdir=$2 kver=$3 img=$4
    local stage=$work/stage-$k
    rm -rf "$stage"
    mkdir -p "$stage"
    nice tar --numeric-owner --xattrs --xattrs-include='*' -C "$stage" -xf "$rootfs_tar" || return 1
    # The kernel's modules (fetch-kernel.sh's subset, with its modules.dep).
    mkdir -p "$stage/usr/lib/modules"
    cp -a "$kdir/modules/lib/modules/$kver" "$stage/usr/lib/modules/"
    depmod -b "$stage" "$kver" 2>/dev/null || true
    # Test VM settings. The shim mounts the root read-write, so there is
    # nothing to remount (systemd-remount-fs is masked) and nothing to fsck.
    printf '/dev/vda\t/\text4\trw\t0\t0\n' >"$stage/etc/fstab"
    local u
    for u in "${MASKED_UNITS[@]}"; do
        ln -sfn /dev/null "$stage/etc/systemd/system/$u"
    done
    ln -sfn /lib/systemd/system/multi-user.target "$stage/etc/systemd/system/default.target"
    # ublkd's default configuration directory, empty: cases (and the units)
    # find it in place whatever `meson install` brings.
    mkdir -p "$stage/etc/ublkd/devices.d"
    install_project "$stage" || return 1
    # The tests, laid out so that cases find ../systemd-lib.sh and ../lib.sh,
    # and the runner its guest-lib.sh (which sources kernel-reports.sh).
    mkdir -p "$stage/ublkd-tests/systemd-cases" "$stage/etc/ublkd-vm"
    cp "$here/lib.sh" "$here/systemd-lib.sh" "$here/systemd-runner.sh" "$here/guest-lib.sh" \
        "$here/kernel-reports.sh" "$stage/ublkd-tests/"
    # For a TSan build; guest-lib.sh points TSAN_OPTIONS at it.
    [[ -f $repo/tests/tsan.supp ]] && cp "$repo/tests/tsan.supp" "$stage/ublkd-tests/"
    cp "$cases_dir"/*.sh "$stage/ublkd-tests/systemd-cases/"
    chmod 755 "$stage/ublkd-tests/systemd-runner.sh"
    cp "$here/ublkd-vm-tests.service" "$stage/etc/systemd/system/"
    mkdir -p "$stage/etc/systemd/system/multi-user.target.wants"
    ln -sf ../ublkd-vm-tests.service "$stage/etc/systemd/system/multi-user.target.wants/ublkd-vm-tests.service"
    {
        echo "# Generated by run-systemd.sh"
        echo "UBLKD_VM_DEFAULT_TIMEOUT=$timeout"
        printf 'UBLKD_VM_CASES=('
        printf '%q ' "${cases[@]}"
        printf ')\n'
    } >"$stage/etc/ublkd-vm/run.conf"
    # A machine id of its own, the same in every boot of this image.
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$stage/etc/machine-id"
    echo >>"$stage/etc/machine-id"
    rm -f "$img"
    truncate -s "$disk_size" "$img"
    nice mkfs.ext4 -q -F -L ublkd-root -d "$stage" "$img" || return 1
    rm -rf "$stage"
}

# ---- running the VM ---------------------------------------------------------

say_booted() {
    echo "[$k] boot $boot: up in $(secs_since "$t_boot")s (guest uptime ${1}s) $2: $3"
}

# check_shutdown: a reboot or power-off must be clean: the kernel's last
# words are on the console ("reboot: Restarting system" / "reboot: Power
# down"), and so are its complaints during the shutdown (the guest's
# journal is gone by then). A power cut has no last words.
check_shutdown() {
    local what=reboot last=Restarting splat
    shutdown_asked || return 0
    ((done)) && what="final shutdown" last="Power down"
    splat=$(shutdown_console | grep -m1 -aE "$SPLAT_RE" | tr -d '\r' || true)
    if [[ -n $splat ]]; then
        vm_problem="kernel splat during the $what: $splat"
    elif ! shutdown_console | grep -aq "reboot: $last"; then
        vm_problem="VM stopped without a clean $what"
    fi
    return 0
}

run_kernel() {
    local t0 img shim
    begin_kernel "$1"
    fetch_kernel || return 0

    t0=$(now)
    img=$work/root-$k.img
    shim=$work/shim-$k.cpio
    if ! make_shim "$kdir" "$KVER" "$shim" || ! make_image "$k" "$kdir" "$KVER" "$img"; then
        fail_all "root disk image for $k could not be made"
        return 0
    fi
    echo "[$k] root disk image made ($(secs_since "$t0")s, $(du -m "$img" | cut -f1) MiB used of $disk_size)"

    # Every boot is a new qemu on the same image (a guest reboot ends qemu);
    # the console and the results channel hold them all.
    fresh_channels
    while :; do
        if ((boot >= MAX_BOOTS)); then
            vm_problem="more than $MAX_BOOTS boots"
            break
        fi
        echo "======== run-systemd.sh: boot $((boot + 1)) of $KVER" >>"$console"
        start_qemu "$shim" "root=/dev/vda systemd.show_status=error" \
            -drive "file=$img,if=virtio,format=raw"
        follow_vm
        boot_died_early && continue
        check_shutdown
        if [[ -n $vm_problem ]] || ((done)) || [[ -z $reboot_case ]]; then
            break
        fi
        echo "[$k] boot $boot ended after $(secs_since "$t_boot")s; booting the same image again"
    done
    stop_console_tail

    # Every case has its result when only the shutdown failed.
    ((done)) && [[ -n $vm_problem ]] && fail_shutdown
    report_unfinished
    fail_unfinished
    if ((keep_image)); then
        mv "$img" "$logdir/root.img"
        cp "$shim" "$logdir/shim.cpio"
    fi
    rm -f "$img"
    echo "[$k] $boot boot(s), $(secs_since "$t0")s from image to power-off; logs in $logdir"
}

for kernel in "${kernels[@]}"; do
    run_kernel "$kernel"
done
summarize_and_exit
