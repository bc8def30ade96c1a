#!/usr/bin/env bash
# Run the systemd VM test cases (tests/vm/systemd-cases/*.sh) in a Debian 12
# system booted with systemd as PID 1, in a throwaway qemu VM (TCG), on each
# kernel. The root file system is a disk image made fresh per kernel from the
# cached Debian root file system (build-rootfs.sh), the project installed
# into it with `meson install --destdir`. Cases may reboot the VM and go on
# afterwards on the same image. See tests/vm/README.md, "systemd flavour".
set -euo pipefail
export LC_ALL=C

usage() {
    cat <<'EOF'
Usage: tests/vm/run-systemd.sh [OPTIONS] [CASE...]

Per kernel: makes a root disk image from the cached Debian root file system
with the kernel's modules, the project (meson install --destdir) and the
cases; boots it (systemd as PID 1) as often as the cases ask for reboots;
ublkd-vm-tests.service runs the cases inside, each with its own timeout.

Options:
  --kernel K        6.12, 7.2 or all (default all); a comma list works too
  --build-dir DIR   meson build directory to install from (default: build)
  --timeout SECS    per-case timeout unless the case sets `# vm-timeout:`
                    (default 300); a phase of a rebooting case gets it anew
  --tier T          quick or full (default full), as in run.sh
  --cases-dir DIR   take the cases from DIR instead of tests/vm/systemd-cases
                    (they source ../systemd-lib.sh, which the image provides)
  --log-dir DIR     where logs go (default: BUILD/vm-logs-systemd); each kernel
                    gets DIR/KERNEL/{console.log,CASE.log,...}, emptied per run
  --disk-size SIZE  size of the root disk image (sparse; default 2G)
  --keep-image      keep the root disk image as DIR/KERNEL/root.img
  --memory SIZE     guest memory (default 2G)
  --smp N           guest CPUs (default 2)
  --verbose         stream the serial console to stderr while running
  --list            list the cases with their timeouts and exit
  --help            show this help

Exit status: 0 when nothing failed, 1 when a case failed, 2 on usage errors.
Kernels come from fetch-kernel.sh, the Debian root file system from
build-rootfs.sh; both are cached in ${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}.
Must run as root (debootstrap, and an image whose files belong to root).
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

kernels_arg=all
build_dir=$repo/build
timeout=300
log_root=
cases_dir=$here/systemd-cases
disk_size=2G
keep_image=0
memory=2G
smp=2
verbose=0
list=0
tier=full
case_args=()
while (($#)); do
    case $1 in
        --kernel) kernels_arg=${2:?--kernel needs a value}; shift ;;
        --build-dir) build_dir=${2:?--build-dir needs a value}; shift ;;
        --timeout) timeout=${2:?--timeout needs a value}; shift ;;
        --log-dir) log_root=${2:?--log-dir needs a value}; shift ;;
        --cases-dir) cases_dir=${2:?--cases-dir needs a value}; shift ;;
        --tier) tier=${2:?--tier needs a value}; shift ;;
        --disk-size) disk_size=${2:?--disk-size needs a value}; shift ;;
        --keep-image) keep_image=1 ;;
        --memory) memory=${2:?--memory needs a value}; shift ;;
        --smp) smp=${2:?--smp needs a value}; shift ;;
        --verbose | -v) verbose=1 ;;
        --list) list=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "run-systemd.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
        *) case_args+=("$1") ;;
    esac
    shift
done

die() { echo "run-systemd.sh: error: $*" >&2; exit 2; }
# shellcheck source=select.sh
. "$here/select.sh"
# shellcheck source=../expected-skips.sh
. "$repo/tests/expected-skips.sh"

# Slack past a case's timeout before the VM counts as hung (in-VM kill
# grace, cleanup, log transfer).
readonly CASE_GRACE=60
# qemu start to the runner's boot marker: kernel, shim, systemd, the wait
# for the boot to finish. ~10-20 s under TCG; much more on a loaded host.
readonly BOOT_TIMEOUT=240
# From the reboot or done marker to qemu's exit: a clean shutdown, which
# waits up to 90 s for a unit that does not stop.
readonly SHUTDOWN_TIMEOUT=150
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
# shellcheck source=kernel-reports.sh
. "$here/kernel-reports.sh"

((EUID == 0)) || die "must run as root"
for tool in qemu-system-x86_64 cpio mkfs.ext4 tar meson busybox; do
    PATH=$PATH:/usr/sbin:/sbin command -v "$tool" >/dev/null || die "'$tool' not found (run scripts/install-deps.sh)"
done
[[ -d $build_dir ]] || die "build directory $build_dir does not exist (meson setup $build_dir && ninja -C $build_dir)"
build_dir=$(cd "$build_dir" && pwd)
build_kind=$(build_kind "$build_dir")
log_root=${log_root:-$build_dir/vm-logs-systemd}
mkdir -p "$log_root"
log_root=$(cd "$log_root" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/ublkd-vm-systemd.XXXXXX")
qemu_pid=
tail_pid=
cleanup() {
    [[ -n $tail_pid ]] && kill "$tail_pid" 2>/dev/null
    if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null
        wait "$qemu_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "run-systemd.sh: interrupted" >&2; exit 130' INT TERM

now() { echo "${EPOCHREALTIME/./}"; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

declare -A verdict=() seconds=() reason=()
# Rows of the summary beyond the cases: "(shutdown)" when the final
# shutdown of a kernel's VM hung or made the kernel complain.
extra_rows=()

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

# show_case_log FILE: a failed case's log (its end, if long).
show_case_log() {
    local file=$1 lines
    [[ -f $file ]] || { echo "    (no log transferred)"; return; }
    lines=$(wc -l <"$file")
    if ((lines > 150)); then
        echo "    ... $((lines - 150)) earlier lines in $file"
        tail -n 150 "$file" | sed 's/^/    | /'
    else
        sed 's/^/    | /' "$file"
    fi
}

# fail_all K REASON: every case of kernel K fails with REASON.
fail_all() {
    local c
    for c in "${cases[@]}"; do
        verdict[$1/$c]=FAIL seconds[$1/$c]=0 reason[$1/$c]=$2
        printf '[%s] %-36s %s %6ss  %s\n' "$1" "$c" FAIL 0 "$2"
    done
}

run_kernel() {
    local k=$1 t0 kdir logdir img shim KVER
    logdir=$log_root/$k
    rm -rf "$logdir"
    mkdir -p "$logdir"

    t0=$(now)
    kdir=$("$here/fetch-kernel.sh" "$k") || { fail_all "$k" "kernel $k could not be fetched"; return; }
    # shellcheck disable=SC1091
    KVER=$(. "$kdir/kernel.env" && echo "$KVER")
    echo "[$k] kernel $KVER ready ($(secs_since "$t0")s)"

    t0=$(now)
    img=$work/root-$k.img
    shim=$work/shim-$k.cpio
    if ! make_shim "$kdir" "$KVER" "$shim" || ! make_image "$k" "$kdir" "$KVER" "$img"; then
        fail_all "$k" "root disk image for $k could not be made"
        return
    fi
    echo "[$k] root disk image made ($(secs_since "$t0")s, $(du -m "$img" | cut -f1) MiB used of $disk_size)"

    local console=$logdir/console.log results=$logdir/results.raw
    : >"$console"
    : >"$results"
    # As run.sh, plus the root disk and the shim; -no-reboot turns the
    # guest's reboot into qemu's exit, and the next boot is a new qemu on the
    # same image. Both channels append across boots.
    local cmdline="console=ttyS0 panic=-1 loglevel=5 mitigations=off i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable"  # tsc=reliable: see run.sh
    cmdline+=" root=/dev/vda systemd.show_status=error"

    # Parser state, kept across the boots of this kernel.
    local offset=0 size chunk=$work/chunk line len
    local current='' log_fd='' log_case='' done=0 vm_problem='' boot=0
    local -A seen=() log_started=()
    local reboot_case='' powercut=0 t_boot deadline booted sk="$k/(shutdown)" boot_from retried=0
    while :; do
        boot=$((boot + 1))
        if ((boot > MAX_BOOTS)); then
            vm_problem="more than $MAX_BOOTS boots"
            break
        fi
        echo "======== run-systemd.sh: boot $boot of $KVER" >>"$console"
        boot_from=$(stat -c %s "$console")
        t_boot=$(now)
        qemu-system-x86_64 -accel tcg -cpu max -m "$memory" -smp "$smp" \
            -nographic -no-reboot -nic none -monitor none \
            -chardev "file,id=con,path=$console,append=on" -serial chardev:con \
            -device virtio-serial-pci,id=vser -chardev "file,id=results,path=$results,append=on" \
            -device virtserialport,bus=vser.0,chardev=results,name=ublkd.results \
            -drive "file=$img,if=virtio,format=raw" \
            -kernel "$kdir/vmlinux" -initrd "$shim" -append "$cmdline" \
            </dev/null >>"$logdir/qemu.log" 2>&1 &
        qemu_pid=$!
        if ((verbose)) && [[ -z $tail_pid ]]; then
            tail -n +1 -f "$console" >&2 &
            tail_pid=$!
        fi

        booted=0
        reboot_case=''
        powercut=0
        deadline=$((t_boot + BOOT_TIMEOUT * 1000000))
        local shutdown_from=0
        while :; do
            local alive=1
            kill -0 "$qemu_pid" 2>/dev/null || alive=0
            size=$(stat -c %s "$results")
            if ((size > offset)); then
                dd if="$results" of="$chunk" iflag=skip_bytes,count_bytes skip="$offset" \
                    count=$((size - offset)) status=none
                while IFS= read -r line; do
                    len=${#line}
                    offset=$((offset + len + 1))
                    line=${line%$'\r'}
                    case $line in
                        '|'*)
                            [[ -n $log_fd ]] && printf '%s\n' "${line:1}" >&"$log_fd"
                            ;;
                        '@@UBLKD-BOOT '*)
                            booted=1
                            local buptime bstatus bdetail
                            read -r _ _ buptime bstatus bdetail <<<"$line"
                            echo "[$k] boot $boot: up in $(secs_since "$t_boot")s (guest uptime ${buptime}s) $bstatus: $bdetail"
                            # Any boot that went wrong (the system not up, a
                            # kernel report) fails the run.
                            if [[ $bstatus != ok ]]; then
                                verdict[$k/(boot)]=FAIL reason[$k/(boot)]="boot $boot: $bdetail"
                            elif [[ -z ${verdict[$k/(boot)]:-} ]]; then
                                verdict[$k/(boot)]=PASS seconds[$k/(boot)]=$buptime
                            fi
                            deadline=$(($(now) + CASE_GRACE * 1000000))
                            ;;
                        '@@UBLKD-PHASE '*)
                            local pcase pnum
                            read -r _ pcase pnum <<<"$line"
                            echo "[$k] $pcase: phase $pnum"
                            ;;
                        '@@UBLKD-BEGIN '*)
                            local ctimeout
                            read -r _ current ctimeout <<<"$line"
                            deadline=$(($(now) + (ctimeout + CASE_GRACE) * 1000000))
                            ;;
                        '@@UBLKD-LOG-BEGIN '*)
                            log_case=${line#@@UBLKD-LOG-BEGIN }
                            if [[ -n ${log_started[$log_case]:-} ]]; then
                                exec {log_fd}>>"$logdir/$log_case.log"
                            else
                                exec {log_fd}>"$logdir/$log_case.log"
                                log_started[$log_case]=1
                            fi
                            ;;
                        '@@UBLKD-LOG-END '*)
                            [[ -n $log_fd ]] && exec {log_fd}>&-
                            log_fd=
                            ;;
                        '@@UBLKD-RESULT '*)
                            local rcase rverdict rsecs rreason
                            read -r _ rcase rverdict rsecs rreason <<<"$line"
                            verdict[$k/$rcase]=$rverdict seconds[$k/$rcase]=$rsecs reason[$k/$rcase]=$rreason
                            seen[$rcase]=1
                            printf '[%s] %-36s %s %6ss%s\n' "$k" "$rcase" "$rverdict" "$rsecs" "${rreason:+  $rreason}"
                            [[ $rverdict == FAIL ]] && show_case_log "$logdir/$rcase.log"
                            current=
                            deadline=$(($(now) + CASE_GRACE * 1000000))
                            ;;
                        '@@UBLKD-REBOOT '*)
                            local rbnext
                            read -r _ reboot_case rbnext <<<"$line"
                            echo "[$k] $reboot_case asks for a reboot (phase $rbnext next)"
                            deadline=$(($(now) + SHUTDOWN_TIMEOUT * 1000000))
                            shutdown_from=$(stat -c %s "$console")
                            ;;
                        '@@UBLKD-POWERCUT '*)
                            local pcnext
                            read -r _ reboot_case pcnext <<<"$line"
                            echo "[$k] $reboot_case asks for a power cut (phase $pcnext next); killing qemu"
                            kill -KILL "$qemu_pid" 2>/dev/null || true
                            powercut=1
                            ;;
                        '@@UBLKD-DONE'*)
                            done=1
                            deadline=$(($(now) + SHUTDOWN_TIMEOUT * 1000000))
                            shutdown_from=$(stat -c %s "$console")
                            ;;
                    esac
                done <"$chunk"
            fi
            ((alive)) || break
            if (($(now) > deadline)); then
                if ((done)); then
                    vm_problem="VM did not power off within ${SHUTDOWN_TIMEOUT}s"
                elif [[ -n $reboot_case ]]; then
                    vm_problem="VM did not reboot within ${SHUTDOWN_TIMEOUT}s"
                elif ((!booted)); then
                    vm_problem="VM did not boot within ${BOOT_TIMEOUT}s (boot $boot)"
                elif [[ -n $current ]]; then
                    vm_problem="VM unresponsive: no result ${CASE_GRACE}s past the case timeout"
                else
                    vm_problem="VM unresponsive between cases"
                fi
                kill "$qemu_pid" 2>/dev/null || true
                sleep 1
                kill -KILL "$qemu_pid" 2>/dev/null || true
                break
            fi
            sleep 0.25
        done
        wait "$qemu_pid" 2>/dev/null || true
        qemu_pid=
        [[ -n $log_fd ]] && exec {log_fd}>&-
        log_fd=

        # As in run.sh: a kernel that dies before the test runner reported
        # the boot ran no case (TCG can trip the kernel's own live code
        # patching); that boot is repeated once, saying so.
        if ((!booted && !done && !retried)) && [[ -z $vm_problem ]]; then
            local died
            died=$(tail -c +$((boot_from + 1)) "$console" | grep -a -m1 -oE 'Oops.*|Kernel panic.*' |
                tr -d '\r' || true)
            if [[ -n $died ]]; then
                retried=1
                echo "[$k] boot $boot: the kernel died before the test runner started ($died); booting once more"
                tail -c +$((boot_from + 1)) "$console" | tail -n 40 | sed 's/^/    # /'
                continue
            fi
        fi

        # A reboot or power-off must be clean: the kernel's last words are on
        # the console ("reboot: Restarting system" / "reboot: Power down"),
        # and so are its complaints during the shutdown (the guest's journal
        # is gone by then).
        # A power cut has no last words.
        if ((done)) || [[ -n $reboot_case ]] && ((!powercut)) && [[ -z $vm_problem ]]; then
            local what=reboot last=Restarting splat
            ((done)) && what="final shutdown" last="Power down"
            splat=$(tail -c +$((shutdown_from + 1)) "$console" | grep -m1 -aE "$SPLAT_RE" | tr -d '\r' || true)
            if [[ -n $splat ]]; then
                vm_problem="kernel splat during the $what: $splat"
            elif ! tail -c +$((shutdown_from + 1)) "$console" | grep -aq "reboot: $last"; then
                vm_problem="VM stopped without a clean $what"
            fi
        fi
        if [[ -n $vm_problem ]] || ((done)) || [[ -z $reboot_case ]]; then
            break
        fi
        echo "[$k] boot $boot ended after $(secs_since "$t_boot")s; booting the same image again"
    done
    if [[ -n $tail_pid ]]; then
        kill "$tail_pid" 2>/dev/null
        wait "$tail_pid" 2>/dev/null || true
        tail_pid=
    fi

    if ((done)) && [[ -n $vm_problem ]]; then
        # Every case has its result; the shutdown itself failed.
        echo "[$k] $vm_problem; last console lines:"
        tail -n 40 "$console" | sed 's/^/    # /'
        extra_rows+=("$k")
        verdict[$sk]=FAIL seconds[$sk]=0 reason[$sk]=$vm_problem
    elif ((!done)); then
        if [[ -z $vm_problem ]]; then
            vm_problem="VM died"
            local panic
            panic=$(grep -a -m1 -o 'Kernel panic.*' "$console" | tr -d '\r' || true)
            [[ -n $panic ]] && vm_problem+=" ($panic)"
        fi
        echo "[$k] $vm_problem; last console lines:"
        tail -n 40 "$console" | sed 's/^/    # /'
        [[ -s $logdir/qemu.log ]] && sed 's/^/    qemu: /' "$logdir/qemu.log"
    fi
    local c
    for c in "${cases[@]}"; do
        [[ -n ${seen[$c]:-} ]] && continue
        if [[ $c == "$current" || $c == "$reboot_case" ]]; then
            reason[$k/$c]="$vm_problem during the case"
            show_case_log "$logdir/$c.log"
        else
            reason[$k/$c]="not run: ${vm_problem:-VM ended early}"
        fi
        verdict[$k/$c]=FAIL seconds[$k/$c]=0
        printf '[%s] %-36s %s %6ss  %s\n' "$k" "$c" FAIL 0 "${reason[$k/$c]}"
    done
    if ((keep_image)); then
        mv "$img" "$logdir/root.img"
        cp "$shim" "$logdir/shim.cpio"
    fi
    rm -f "$img"
    echo "[$k] $boot boot(s), $(secs_since "$t0")s from image to power-off; logs in $logdir"
}

for k in "${kernels[@]}"; do
    run_kernel "$k"
done

# ---- summary ----------------------------------------------------------------

passed=0 failed=0 skipped=0
skip_notes=()
summary=$log_root/summary.txt
rows=('(boot)' "${cases[@]}")
((${#extra_rows[@]})) && rows+=("(shutdown)")
{
    echo
    printf '%-40s' case
    for k in "${kernels[@]}"; do printf ' %-14s' "$k"; done
    echo
    for c in "${rows[@]}"; do
        printf '%-40s' "$c"
        for k in "${kernels[@]}"; do
            if [[ $c == "(shutdown)" && -z ${verdict[$k/$c]:-} ]]; then
                printf ' %-14s' "ok"
                continue
            fi
            v=${verdict[$k/$c]:-FAIL}
            # A skip nobody listed in tests/expected-skips.sh is a failure.
            if [[ $v == SKIP ]]; then
                judge_skip vm-systemd "$k" "$build_kind" "$c" "${reason[$k/$c]:-}"
                v=$VERDICT
                skip_notes+=("$SKIP_NOTE")
            fi
            printf ' %-14s' "$(printf '%-4s %7ss' "$v" "${seconds[$k/$c]:-0}")"
            case $v in
                PASS) passed=$((passed + 1)) ;;
                SKIP) skipped=$((skipped + 1)) ;;
                *) failed=$((failed + 1)) ;;
            esac
        done
        echo
    done
    for k in "${kernels[@]}"; do
        sk="$k/(shutdown)"
        [[ -n ${reason[$sk]:-} ]] && echo "($k shutdown: ${reason[$sk]})"
        [[ ${verdict[$k/(boot)]:-} == FAIL ]] && echo "($k ${reason[$k/(boot)]:-no boot})"
    done
    echo
    if ((${#skip_notes[@]})); then
        echo "skipped or unexpectedly skipped ($build_kind build):"
        printf '%s\n' "${skip_notes[@]}"
        echo
    fi
    # The closing line CI and scripts/run-tests.sh read.
    echo "$passed passed, $failed failed, $skipped skipped"
} >"$summary"
cat "$summary"
((failed == 0))
