#!/usr/bin/env bash
# Run the VM test cases (tests/vm/cases/*.sh) against real Debian kernels in
# a throwaway qemu VM (TCG, no KVM needed). See tests/vm/README.md.
set -euo pipefail
export LC_ALL=C

usage() {
    cat <<'EOF'
Usage: tests/vm/run.sh [OPTIONS] [CASE...]

Boots each kernel once with an initramfs holding the project binaries and
runs the cases inside, one after the other, each with its own timeout.

Options:
  --kernel K        6.12, 7.2 or all (default all); a comma list works too
  --build-dir DIR   meson build directory with daemon/ublkd (default: build)
  --timeout SECS    per-case timeout unless the case sets `# vm-timeout:`
                    (default 300)
  --vm-timeout SECS overall limit for one VM run (default: computed from the
                    case timeouts)
  --tier T          quick or full (default full): quick leaves out the cases
                    marked `# vm-tier: full` (CI runs the quick tier)
  --cases-dir DIR   take the cases from DIR instead of tests/vm/cases (for
                    cases kept out of the tree; they source ../lib.sh, which
                    the VM provides next to them)
  --log-dir DIR     where logs go (default: BUILD/vm-logs); each kernel gets
                    DIR/KERNEL/{console.log,CASE.log,...}, emptied per run
  --memory SIZE     guest memory (default 2G)
  --smp N           guest CPUs (default 2)
  --cpu MODEL       qemu CPU model (default max)
  --verbose         stream the serial console to stderr while running
  --list            list the cases with their timeouts and exit
  --help            show this help

CASE is a case name (00-kernel-smoke) or file; default: all cases of the
tier. Cases named explicitly run whatever their tier.
Exit status: 0 when nothing failed, 1 when a case failed, 2 on usage errors.
The kernels are fetched and cached by fetch-kernel.sh
(${UBLKD_VM_CACHE:-/var/cache/ublkd-vm}).
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

kernels_arg=all
build_dir=$repo/build
timeout=300
vm_timeout=
log_root=
cases_dir=$here/cases
memory=2G
smp=2
cpu=max
verbose=0
list=0
tier=full
case_args=()
while (($#)); do
    case $1 in
        --kernel) kernels_arg=${2:?--kernel needs a value}; shift ;;
        --build-dir) build_dir=${2:?--build-dir needs a value}; shift ;;
        --timeout) timeout=${2:?--timeout needs a value}; shift ;;
        --vm-timeout) vm_timeout=${2:?--vm-timeout needs a value}; shift ;;
        --log-dir) log_root=${2:?--log-dir needs a value}; shift ;;
        --cases-dir) cases_dir=${2:?--cases-dir needs a value}; shift ;;
        --tier) tier=${2:?--tier needs a value}; shift ;;
        --memory) memory=${2:?--memory needs a value}; shift ;;
        --smp) smp=${2:?--smp needs a value}; shift ;;
        --cpu) cpu=${2:?--cpu needs a value}; shift ;;
        --verbose | -v) verbose=1 ;;
        --list) list=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "run.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
        *) case_args+=("$1") ;;
    esac
    shift
done

die() { echo "run.sh: error: $*" >&2; exit 2; }
[[ -z $vm_timeout || $vm_timeout =~ ^[0-9]+$ ]] || die "bad --vm-timeout: $vm_timeout"
# shellcheck source=select.sh
. "$here/select.sh"
# shellcheck source=../expected-skips.sh
. "$repo/tests/expected-skips.sh"

# Slack on top of a case's timeout for the in-VM kill grace (10 s), cleanup,
# dmesg and log transfer; past it the VM counts as hung.
readonly CASE_GRACE=60
# From start to the boot marker; TCG boots in a few seconds.
readonly BOOT_TIMEOUT=120

if [[ -z $vm_timeout ]]; then
    vm_timeout=$BOOT_TIMEOUT
    for c in "${cases[@]}"; do
        vm_timeout=$((vm_timeout + $(case_timeout "$cases_dir/$c.sh") + CASE_GRACE))
    done
fi

for tool in qemu-system-x86_64 cpio; do
    command -v "$tool" >/dev/null || die "'$tool' not found (run scripts/install-deps.sh)"
done
[[ -d $build_dir ]] || die "build directory $build_dir does not exist (meson setup $build_dir && ninja -C $build_dir)"
build_dir=$(cd "$build_dir" && pwd)
[[ -x $build_dir/daemon/ublkd ]] || die "$build_dir/daemon/ublkd not built (ninja -C $build_dir)"
# Say so when the daemon is instrumented: its reports fail cases (init.sh).
if [[ -x $build_dir/daemon/ublkd ]]; then
    sanitizers=$(ldd "$build_dir/daemon/ublkd" 2>/dev/null | grep -oE 'lib(asan|ubsan|tsan)' |
        sed 's/^lib//' | sort -u | paste -sd+ || true)
    [[ -n $sanitizers ]] && echo "run.sh: ublkd is built with ${sanitizers^^}; a sanitizer report fails its case"
fi
build_kind=$(build_kind "$build_dir")
log_root=${log_root:-$build_dir/vm-logs}
mkdir -p "$log_root"
log_root=$(cd "$log_root" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/ublkd-vm-run.XXXXXX")
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
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

now() { echo "${EPOCHREALTIME/./}"; } # microseconds
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

# Results, keyed "kernel/case": verdict, seconds, reason.
declare -A verdict=() seconds=() reason=()

# ---- one VM run -------------------------------------------------------------

# show_case_log FILE: a failed case's log on the terminal (its end, if long).
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

run_kernel() {
    local k=$1 t0 kdir logdir initrd
    logdir=$log_root/$k
    rm -rf "$logdir"
    mkdir -p "$logdir"

    t0=$(now)
    kdir=$("$here/fetch-kernel.sh" "$k") || {
        for c in "${cases[@]}"; do
            verdict[$k/$c]=FAIL seconds[$k/$c]=0 reason[$k/$c]="kernel $k could not be fetched"
        done
        return
    }
    local KVER
    # shellcheck disable=SC1091
    KVER=$(. "$kdir/kernel.env" && echo "$KVER")
    echo "[$k] kernel $KVER ready ($(secs_since "$t0")s)"

    t0=$(now)
    initrd=$work/initramfs-$k.cpio
    if ! "$here/build-initramfs.sh" --kernel-dir "$kdir" --build-dir "$build_dir" \
        --cases-dir "$cases_dir" --timeout "$timeout" --output "$initrd" "${cases[@]}"; then
        for c in "${cases[@]}"; do
            verdict[$k/$c]=FAIL seconds[$k/$c]=0 reason[$k/$c]="initramfs for $k could not be built"
        done
        return
    fi
    echo "[$k] initramfs $(($(stat -c %s "$initrd") / 1048576)) MiB built ($(secs_since "$t0")s)"

    local console=$logdir/console.log results=$logdir/results.raw
    # ttyS0: console. The virtio serial port "ublkd.results": the channel
    # written only by /init (virtio: the emulated 8250 traps on every byte).
    # -nic none: no network, and no option ROM to load. -cpu max gives the
    # guest SSE4.2/CRC32 etc., which fio's crc32c verification uses.
    # mitigations=off: speculation workarounds only cost time in a test VM.
    # i8042.*: no PS/2 probing, which only waits for timeouts.
    # tsc=reliable: on a loaded host TCG's vCPUs run late enough for the
    # clocksource watchdog to call the TSC unstable now and then; a kworker
    # then flips the sched_clock static key by live code patching, and TCG
    # can execute the int3 of that patch after it was taken out ("Oops:
    # int3" in sched_clock_cpu from a kworker, 47 s into a CI run: a dead
    # VM). The emulated TSC is one clock for every vCPU, so the kernel may
    # trust it, and with it trusted nothing flips that key.
    local cmdline="console=ttyS0 panic=-1 loglevel=5 mitigations=off i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable"
    # A kernel that dies before the guest's /init reported the boot ran no
    # case: TCG has been seen to trip an int3 of the kernel's own live code
    # patching there (7.2, "Oops: int3" in the scheduler, about one boot in
    # tens). That boot is repeated once, saying so; a second such boot, or
    # any death after the boot, fails the run as before.
    local attempt
    for attempt in 1 2; do
        : >"$console"
        : >"$results"
        t0=$(now)
        qemu-system-x86_64 -accel tcg -cpu "$cpu" -m "$memory" -smp "$smp" \
            -nographic -no-reboot -nic none -monitor none \
            -serial "file:$console" \
            -device virtio-serial-pci,id=vser -chardev "file,id=results,path=$results" \
            -device virtserialport,bus=vser.0,chardev=results,name=ublkd.results \
            -kernel "$kdir/vmlinux" -initrd "$initrd" -append "$cmdline" \
            </dev/null >"$logdir/qemu.log" 2>&1 &
        qemu_pid=$!
        if ((verbose)); then
            tail -n +1 -f "$console" >&2 &
            tail_pid=$!
        fi

        # Parse the results channel as it grows. The offset counts bytes
        # (LC_ALL=C makes ${#line} a byte count); only whole lines are consumed,
        # a partial one waits for the next round.
        local offset=0 size chunk=$work/chunk line len
        local current='' deadline=$((t0 + BOOT_TIMEOUT * 1000000)) end=$((t0 + vm_timeout * 1000000))
        local booted=0 done=0 vm_problem='' log_fd='' log_case=''
        local -A seen=()
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
                            echo "[$k] booted $KVER in $(secs_since "$t0")s (guest uptime ${buptime}s)${bdetail:+ $bstatus: $bdetail}"
                            # A boot that went wrong (ublk_drv not loaded,
                            # a kernel report) fails the run even when
                            # every case passes.
                            seconds[$k/(boot)]=$buptime reason[$k/(boot)]=$bdetail
                            verdict[$k/(boot)]=PASS
                            [[ $bstatus == ok ]] || verdict[$k/(boot)]=FAIL
                            deadline=$(($(now) + CASE_GRACE * 1000000))
                            ;;
                        '@@UBLKD-BEGIN '*)
                            read -r _ current ctimeout <<<"$line"
                            deadline=$(($(now) + (ctimeout + CASE_GRACE) * 1000000))
                            ;;
                        '@@UBLKD-LOG-BEGIN '*)
                            log_case=${line#@@UBLKD-LOG-BEGIN }
                            [[ $log_case == _boot ]] && log_case=boot-dmesg
                            exec {log_fd}>"$logdir/$log_case.log"
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
                            if [[ $rverdict == FAIL ]]; then
                                show_case_log "$logdir/$rcase.log"
                            fi
                            current=
                            deadline=$(($(now) + CASE_GRACE * 1000000))
                            ;;
                        '@@UBLKD-DONE'*)
                            done=1
                            deadline=$(($(now) + 30 * 1000000))
                            ;;
                    esac
                done <"$chunk" # read fails on a final unterminated line: left for later
            fi
            ((alive)) || break
            if (($(now) > deadline)); then
                if ((done)); then
                    vm_problem="VM did not power off"
                elif ((!booted)); then
                    vm_problem="VM did not boot within ${BOOT_TIMEOUT}s"
                elif [[ -n $current ]]; then
                    vm_problem="VM unresponsive: no result ${CASE_GRACE}s past the case timeout"
                else
                    vm_problem="VM unresponsive between cases"
                fi
            elif (($(now) > end)); then
                vm_problem="VM run exceeded --vm-timeout ${vm_timeout}s"
            fi
            if [[ -n $vm_problem ]]; then
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
        if [[ -n $tail_pid ]]; then
            kill "$tail_pid" 2>/dev/null
            wait "$tail_pid" 2>/dev/null || true
            tail_pid=
        fi
        if ((attempt == 1 && !done && !booted)) && [[ -z $vm_problem ]] &&
            grep -qE 'Kernel panic|Oops' "$console"; then
            echo "[$k] the kernel died during boot, before any case ($(grep -m1 -oE 'Oops.*|Kernel panic.*' "$console" | tr -d '\r')); booting once more"
            tail -n 40 "$console" | sed 's/^/    # /'
            cp "$console" "$logdir/console-boot$attempt.log"
            continue
        fi
        break
    done

    if ((!done)); then
        if [[ -z $vm_problem ]]; then
            vm_problem="VM died"
            # A panic says why; keep its first line for the summary.
            local panic
            panic=$(grep -m1 -o 'Kernel panic.*' "$console" | tr -d '\r' || true)
            [[ -n $panic ]] && vm_problem+=" ($panic)"
        fi
        echo "[$k] $vm_problem after $(secs_since "$t0")s; last console lines:"
        tail -n 40 "$console" | sed 's/^/    # /'
        [[ -s $logdir/qemu.log ]] && sed 's/^/    qemu: /' "$logdir/qemu.log"
    fi
    for c in "${cases[@]}"; do
        [[ -n ${seen[$c]:-} ]] && continue
        if [[ $c == "$current" ]]; then
            reason[$k/$c]="$vm_problem during the case"
            show_case_log "$logdir/$c.log"
        else
            reason[$k/$c]="not run: ${vm_problem:-VM ended early}"
        fi
        verdict[$k/$c]=FAIL seconds[$k/$c]=0
        printf '[%s] %-36s %s %6ss  %s\n' "$k" "$c" FAIL 0 "${reason[$k/$c]}"
    done
    echo "[$k] VM run took $(secs_since "$t0")s; logs in $logdir"
}

for k in "${kernels[@]}"; do
    run_kernel "$k"
done

# ---- summary ----------------------------------------------------------------

passed=0 failed=0 skipped=0
skip_notes=()
summary=$log_root/summary.txt
{
    echo
    printf '%-40s' case
    for k in "${kernels[@]}"; do printf ' %-14s' "$k"; done
    echo
    for c in '(boot)' "${cases[@]}"; do
        printf '%-40s' "$c"
        for k in "${kernels[@]}"; do
            v=${verdict[$k/$c]:-FAIL}
            # A skip nobody listed in tests/expected-skips.sh is a failure.
            if [[ $v == SKIP ]]; then
                judge_skip vm "$k" "$build_kind" "$c" "${reason[$k/$c]:-}"
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
        [[ ${verdict[$k/(boot)]:-} == FAIL ]] && echo "($k boot: ${reason[$k/(boot)]:-})"
        [[ -z ${verdict[$k/(boot)]:-} ]] && echo "($k boot: no boot marker)"
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
