# shellcheck shell=bash
# The host side of the VM harness, for both flavours: run.sh (the initramfs
# VM) and run-systemd.sh (the systemd VM). Options and the selection of
# kernels and cases, qemu and its kernel command line, the results channel
# and its markers, timeouts, the verdicts of the cases and the summary. See
# tests/vm/README.md.
#
# The entry script sets before sourcing this:
#   PROG          its name in messages (run.sh)
#   CASES_SUBDIR  its cases directory under tests/vm (cases)
#   LOGS_SUBDIR   its log directory under the build directory (vm-logs)
#   SKIP_SUITE    its suite in tests/expected-skips.sh (vm, vm-systemd)
#   BOOT_TIMEOUT  seconds from qemu's start to the guest's boot marker
#   SHUTDOWN_TIMEOUT  seconds from the done (or reboot) marker to qemu's exit
#   OWN_OPTIONS   (associative) its own options that take a value, each
#                 naming the variable it sets
#   OWN_FLAGS     (associative) its own options without one, each naming
#                 the variable it sets to 1
# and defines
#   usage         its --help (common_options_help prints the shared part)
#   say_booted UPTIME STATUS DETAIL   its line for a boot marker
set -euo pipefail
export LC_ALL=C

here=$(cd "${BASH_SOURCE[0]%/*}" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../expected-skips.sh
. "$repo/tests/expected-skips.sh"

# Slack on top of a case's timeout for the in-VM kill grace (10 s), cleanup,
# dmesg and log transfer; past it the VM counts as hung.
readonly CASE_GRACE=60
# ttyS0: console. mitigations=off: speculation workarounds only cost time in
# a test VM. i8042.*: no PS/2 probing, which only waits for timeouts.
# tsc=reliable: on a loaded host TCG's vCPUs run late enough for the
# clocksource watchdog to call the TSC unstable now and then; a kworker
# then flips the sched_clock static key by live code patching, and TCG can
# execute the int3 of that patch after it was taken out ("Oops: int3" in
# sched_clock_cpu from a kworker, 47 s into a CI run: a dead VM). The
# emulated TSC is one clock for every vCPU, so the kernel may trust it, and
# with it trusted nothing flips that key.
readonly KERNEL_CMDLINE="console=ttyS0 panic=-1 loglevel=5 mitigations=off i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable"

die() { echo "$PROG: error: $*" >&2; exit 2; }
now() { echo "${EPOCHREALTIME/./}"; } # microseconds
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

# ---- options and selection ------------------------------------------------------

kernels_arg=all
build_dir=$repo/build
timeout=300
log_root=
cases_dir=$here/$CASES_SUBDIR
memory=2G
smp=2
cpu=max
verbose=0
list=0
tier=full
case_args=()
# The limit of one VM run (run.sh's --vm-timeout); empty: none.
vm_timeout=

# common_options_help OWN: the options of both flavours, with OWN (the
# entry script's lines) before the last few, for usage.
common_options_help() {
    cat <<EOF
  --kernel K        6.12, 7.2 or all (default all); a comma list works too
  --build-dir DIR   meson build directory under test (default: build)
  --timeout SECS    per-case timeout unless the case sets \`# vm-timeout:\`
                    (default 300)
  --tier T          quick or full (default full): quick leaves out the cases
                    marked \`# vm-tier: full\` (CI runs the quick tier)
  --cases-dir DIR   where the cases are (default tests/vm/$CASES_SUBDIR);
                    cases kept outside the tree source the harness's
                    libraries as ../NAME, which the VM provides next to them;
                    programs in DIR/bin go to the VM's /usr/local/bin
  --log-dir DIR     where logs go (default: BUILD/$LOGS_SUBDIR); each kernel
                    gets DIR/KERNEL/{console.log,CASE.log,...}, emptied per run
  --memory SIZE     guest memory (default 2G)
  --smp N           guest CPUs (default 2)
$1
  --verbose         stream the serial console to stderr while running
  --list            list the cases with their timeouts and tiers and exit
  --help            show this help
EOF
}

# parse_options ARGS...: the options of both flavours and the entry
# script's (OWN_OPTIONS, OWN_FLAGS); everything else is a case.
parse_options() {
    local o
    local -A valued=([--kernel]=kernels_arg [--build-dir]=build_dir [--timeout]=timeout
        [--log-dir]=log_root [--cases-dir]=cases_dir [--tier]=tier [--memory]=memory [--smp]=smp)
    local -A flags=([--verbose]=verbose [-v]=verbose [--list]=list)
    for o in "${!OWN_OPTIONS[@]}"; do valued[$o]=${OWN_OPTIONS[$o]}; done
    for o in "${!OWN_FLAGS[@]}"; do flags[$o]=${OWN_FLAGS[$o]}; done
    while (($#)); do
        if [[ -n ${valued[$1]:-} ]]; then
            (($# > 1)) || die "$1 needs a value"
            printf -v "${valued[$1]}" '%s' "$2"
            shift
        elif [[ -n ${flags[$1]:-} ]]; then
            printf -v "${flags[$1]}" 1
        else
            case $1 in
                -h | --help) usage; exit 0 ;;
                -*) echo "$PROG: unknown option: $1" >&2; usage >&2; exit 2 ;;
                *) case_args+=("$1") ;;
            esac
        fi
        shift
    done
}

# case_timeout FILE: the `# vm-timeout: N` header (the VM reads the same),
# else --timeout.
case_timeout() {
    local t
    t=$(head -n 30 "$1" | sed -n 's/^# vm-timeout: *\([0-9][0-9]*\).*/\1/p' | head -n 1)
    echo "${t:-$timeout}"
}

# case_tier FILE: the `# vm-tier: full` header, else quick.
case_tier() {
    local t
    t=$(head -n 30 "$1" | sed -n 's/^# vm-tier: *\([a-z]*\).*/\1/p' | head -n 1)
    echo "${t:-quick}"
}

# select_kernels_and_cases: kernels=(...) and cases=(...) from the options,
# cases_dir made absolute; with --list, prints the cases and exits.
select_kernels_and_cases() {
    local k f n c
    [[ $timeout =~ ^[0-9]+$ ]] || die "bad --timeout: $timeout"
    [[ $tier == quick || $tier == full ]] || die "bad --tier: $tier (quick or full)"
    [[ -d $cases_dir ]] || die "no such directory: $cases_dir"
    cases_dir=$(cd "$cases_dir" && pwd)

    case $kernels_arg in
        all) kernels=(6.12 7.2) ;;
        *) IFS=, read -r -a kernels <<<"$kernels_arg" ;;
    esac
    for k in "${kernels[@]}"; do
        [[ $k == 6.12 || $k == 7.2 ]] || die "unsupported kernel '$k' (6.12, 7.2 or all)"
    done

    cases=()
    if ((${#case_args[@]} == 0)); then
        # By number, so that 100 comes after 99 (a glob puts it after 10);
        # the glob's order among equal numbers.
        while IFS= read -r n; do
            f=$cases_dir/$n
            [[ -e $f ]] || continue
            [[ $tier == full || $(case_tier "$f") == quick ]] || continue
            n=${f##*/}
            cases+=("${n%.sh}")
        done < <(cd "$cases_dir" && printf '%s\n' *.sh | sort -s -t- -k1,1n)
    else
        for c in "${case_args[@]}"; do
            n=${c##*/}
            n=${n%.sh}
            [[ -f $cases_dir/$n.sh ]] || die "no such case: $c"
            cases+=("$n")
        done
    fi
    ((${#cases[@]})) || die "no cases in $cases_dir"

    if ((list)); then
        for c in "${cases[@]}"; do
            printf '%-40s %5ss  %s\n' "$c" "$(case_timeout "$cases_dir/$c.sh")" "$(case_tier "$cases_dir/$c.sh")"
        done
        exit 0
    fi
}

# require_tools TOOL...: dies naming the first one missing.
require_tools() {
    local tool
    for tool in "$@"; do
        PATH=$PATH:/usr/sbin:/sbin command -v "$tool" >/dev/null ||
            die "'$tool' not found (run scripts/install-deps.sh)"
    done
}

# setup_dirs WORK_NAME: build_dir and log_root absolute (log_root made),
# build_kind (tests/expected-skips.sh), a work directory removed at exit
# with whatever still runs of the VM.
setup_dirs() {
    [[ -d $build_dir ]] || die "build directory $build_dir does not exist (meson setup $build_dir && ninja -C $build_dir)"
    build_dir=$(cd "$build_dir" && pwd)
    build_kind=$(build_kind "$build_dir")
    log_root=${log_root:-$build_dir/$LOGS_SUBDIR}
    mkdir -p "$log_root"
    log_root=$(cd "$log_root" && pwd)
    work=$(mktemp -d "${TMPDIR:-/tmp}/ublkd-vm-$1.XXXXXX")
    trap cleanup EXIT
    trap 'echo "$PROG: interrupted" >&2; exit 130' INT TERM
}

qemu_pid=
tail_pid=
cleanup() {
    stop_console_tail
    if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null
        wait "$qemu_pid" 2>/dev/null
    fi
    rm -rf "$work"
}

# ---- a kernel's VM ----------------------------------------------------------------

# Results, keyed "kernel/case": verdict, seconds, reason. Rows "(boot)"
# and "(shutdown)" are the boots and the final power-off of a kernel.
declare -A verdict=() seconds=() reason=()
# Kernels whose final power-off failed: the summary gets a "(shutdown)" row.
shutdown_failed=()

# The state of a kernel's run, across its boots (begin_kernel resets it):
# offset (bytes of results.raw parsed), current (the case running),
# log_fd/log_case (the case log being written), seen and log_started (per
# case: result had, log begun), booted/done (markers of the current boot
# and of the run), reboot_case/powercut (a reboot or power cut asked for),
# boot (boots so far), retried (a boot repeated), vm_problem (why the run
# ended early), deadline/vm_end (microseconds), boot_from/shutdown_from
# (offsets in console.log).
declare -A seen=() log_started=()

# begin_kernel K: k, logdir (emptied), console, results, and the state above.
begin_kernel() {
    k=$1
    logdir=$log_root/$k
    rm -rf "$logdir"
    mkdir -p "$logdir"
    console=$logdir/console.log
    results=$logdir/results.raw
    offset=0 current='' log_fd='' log_case='' booted=0 done=0 reboot_case='' powercut=0
    boot=0 retried=0 vm_problem='' deadline=0 vm_end=0 boot_from=0 shutdown_from=0
    seen=() log_started=()
}

# fetch_kernel: kdir and KVER of kernel k (fetch-kernel.sh, cached); on
# failure every case fails and this returns 1.
fetch_kernel() {
    local t0
    t0=$(now)
    kdir=$("$here/fetch-kernel.sh" "$k") || {
        fail_all "kernel $k could not be fetched"
        return 1
    }
    # shellcheck disable=SC1091
    KVER=$(. "$kdir/kernel.env" && echo "$KVER")
    echo "[$k] kernel $KVER ready ($(secs_since "$t0")s)"
}

# fresh_channels: console.log, results.raw and qemu.log emptied.
fresh_channels() {
    : >"$console"
    : >"$results"
    : >"$logdir/qemu.log"
    offset=0
}

# start_qemu INITRD EXTRA_CMDLINE [QEMU ARGS...]: boot kernel k in the
# background (qemu_pid), t_boot its start. The console and the results
# channel append, so they hold every boot of the kernel.
start_qemu() {
    local initrd=$1 append="$KERNEL_CMDLINE${2:+ $2}"
    shift 2
    boot=$((boot + 1))
    boot_from=$(stat -c %s "$console")
    t_boot=$(now)
    deadline=$((t_boot + BOOT_TIMEOUT * 1000000))
    [[ -n $vm_timeout ]] && vm_end=$((t_boot + vm_timeout * 1000000))
    booted=0 reboot_case='' powercut=0 shutdown_from=0
    # ttyS0 the console; the virtio serial port "ublkd.results" the channel
    # written only by the guest's runner (virtio: the emulated 8250 traps on
    # every byte). -nic none: no network, and no option ROM to load. -cpu
    # max gives the guest SSE4.2/CRC32 etc., which fio's crc32c verification
    # uses. -no-reboot: a guest reboot ends qemu.
    qemu-system-x86_64 -accel tcg -cpu "$cpu" -m "$memory" -smp "$smp" \
        -nographic -no-reboot -nic none -monitor none \
        -chardev "file,id=con,path=$console,append=on" -serial chardev:con \
        -device virtio-serial-pci,id=vser -chardev "file,id=results,path=$results,append=on" \
        -device virtserialport,bus=vser.0,chardev=results,name=ublkd.results \
        -kernel "$kdir/vmlinux" -initrd "$initrd" -append "$append" "$@" \
        </dev/null >>"$logdir/qemu.log" 2>&1 &
    qemu_pid=$!
    if ((verbose)) && [[ -z $tail_pid ]]; then
        tail -n +1 -f "$console" >&2 &
        tail_pid=$!
    fi
}

stop_console_tail() {
    [[ -n $tail_pid ]] || return 0
    kill "$tail_pid" 2>/dev/null
    wait "$tail_pid" 2>/dev/null || true
    tail_pid=
}

# follow_vm: parse the results channel as it grows until qemu exits or a
# deadline passes (then vm_problem says which, and qemu is killed). The
# offset counts bytes (LC_ALL=C makes ${#line} a byte count); only whole
# lines are consumed, a partial one waits for the next round.
follow_vm() {
    local alive size line chunk=$work/chunk
    while :; do
        alive=1
        kill -0 "$qemu_pid" 2>/dev/null || alive=0
        size=$(stat -c %s "$results")
        if ((size > offset)); then
            dd if="$results" of="$chunk" iflag=skip_bytes,count_bytes skip="$offset" \
                count=$((size - offset)) status=none
            while IFS= read -r line; do
                offset=$((offset + ${#line} + 1))
                handle_line "${line%$'\r'}"
            done <"$chunk" # read fails on a final unterminated line: left for later
        fi
        ((alive)) || break
        if past_deadline; then
            kill "$qemu_pid" 2>/dev/null || true
            sleep 1
            kill -KILL "$qemu_pid" 2>/dev/null || true
            break
        fi
        sleep 0.25
    done
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=
    if [[ -n $log_fd ]]; then
        exec {log_fd}>&-
        log_fd=
    fi
}

# past_deadline: true, with vm_problem set, when the VM took too long for
# what it was doing.
past_deadline() {
    local t
    t=$(now)
    if ((t > deadline)); then
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
    elif ((vm_end && t > vm_end)); then
        vm_problem="VM run exceeded --vm-timeout ${vm_timeout}s"
    else
        return 1
    fi
}

# handle_line LINE: one line of the results channel: a line of the case log
# being streamed, or a marker (tests/vm/README.md, "Markers").
handle_line() {
    local line=$1 a b c bk="$k/(boot)"
    case $line in
        '|'*)
            [[ -n $log_fd ]] && printf '%s\n' "${line:1}" >&"$log_fd"
            ;;
        '@@UBLKD-BOOT '*)
            # kernel release, guest uptime, ok|error, details
            read -r _ _ a b c <<<"$line"
            booted=1
            say_booted "$a" "$b" "$c"
            # A boot that went wrong (ublk_drv not loaded, the system not
            # up, a kernel report) fails the run even when every case
            # passes.
            if [[ $b != ok ]]; then
                verdict[$bk]=FAIL reason[$bk]=$c
            elif [[ -z ${verdict[$bk]:-} ]]; then
                verdict[$bk]=PASS
            fi
            [[ -n ${seconds[$bk]:-} ]] || seconds[$bk]=$a
            deadline=$(($(now) + CASE_GRACE * 1000000))
            ;;
        '@@UBLKD-PHASE '*)
            read -r _ a b <<<"$line"
            echo "[$k] $a: phase $b"
            ;;
        '@@UBLKD-BEGIN '*)
            read -r _ current a <<<"$line"
            deadline=$(($(now) + (a + CASE_GRACE) * 1000000))
            ;;
        '@@UBLKD-LOG-BEGIN '*)
            # A case that runs in phases across reboots has one log.
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
            # case, verdict, seconds, reason
            read -r _ a b c line <<<"$line"
            verdict[$k/$a]=$b seconds[$k/$a]=$c reason[$k/$a]=$line
            seen[$a]=1
            printf '[%s] %-36s %s %6ss%s\n' "$k" "$a" "$b" "$c" "${line:+  $line}"
            [[ $b == FAIL ]] && show_case_log "$logdir/$a.log"
            current=
            deadline=$(($(now) + CASE_GRACE * 1000000))
            ;;
        '@@UBLKD-REBOOT '*)
            read -r _ reboot_case a <<<"$line"
            echo "[$k] $reboot_case asks for a reboot (phase $a next)"
            deadline=$(($(now) + SHUTDOWN_TIMEOUT * 1000000))
            shutdown_from=$(stat -c %s "$console")
            ;;
        '@@UBLKD-POWERCUT '*)
            read -r _ reboot_case a <<<"$line"
            echo "[$k] $reboot_case asks for a power cut (phase $a next); killing qemu"
            kill -KILL "$qemu_pid" 2>/dev/null || true
            powercut=1
            ;;
        '@@UBLKD-DONE'*)
            done=1
            deadline=$(($(now) + SHUTDOWN_TIMEOUT * 1000000))
            shutdown_from=$(stat -c %s "$console")
            ;;
    esac
    return 0
}

# shutdown_asked: true when the boot that just ended was to end with a clean
# reboot or power-off (the guest said so, it did not ask for a power cut,
# and nothing went wrong before); shutdown_console prints the console since
# then.
shutdown_asked() {
    { ((done)) || [[ -n $reboot_case ]]; } && ((!powercut)) && [[ -z $vm_problem ]]
}
shutdown_console() { tail -c +$((shutdown_from + 1)) "$console"; }

# boot_died_early: true when the boot that just ended died in the kernel
# before the guest reported it, the first time for this kernel: that boot
# ran no case, so the caller boots once more. Under TCG the 7.2 kernel has
# been seen to trip an int3 of its own live code patching there ("Oops:
# int3" in the scheduler, about one boot in tens). A second such death, or
# any death after the boot, fails the run.
boot_died_early() {
    local died
    if ((booted || done || retried)) || [[ -n $vm_problem ]]; then
        return 1
    fi
    died=$(tail -c +$((boot_from + 1)) "$console" | grep -a -m1 -oE 'Oops.*|Kernel panic.*' |
        tr -d '\r' || true)
    [[ -n $died ]] || return 1
    retried=1
    echo "[$k] boot $boot: the kernel died before the guest reported the boot ($died); booting once more"
    tail -c +$((boot_from + 1)) "$console" | tail -n 40 | sed 's/^/    # /'
}

# report_unfinished: when the guest never said it was done, why (the
# kernel's panic line if it panicked) and the end of the console.
report_unfinished() {
    local panic
    ((done)) && return 0
    if [[ -z $vm_problem ]]; then
        vm_problem="VM died"
        panic=$(grep -a -m1 -o 'Kernel panic.*' "$console" | tr -d '\r' || true)
        [[ -n $panic ]] && vm_problem+=" ($panic)"
    fi
    echo "[$k] $vm_problem after $(secs_since "$t_boot")s; last console lines:"
    tail -n 40 "$console" | sed 's/^/    # /'
    [[ -s $logdir/qemu.log ]] && sed 's/^/    qemu: /' "$logdir/qemu.log"
    return 0
}

# show_case_log FILE: a failed case's log on the terminal (its end, if long).
show_case_log() {
    local file=$1 lines
    [[ -f $file ]] || { echo "    (no log transferred)"; return 0; }
    lines=$(wc -l <"$file")
    if ((lines > 150)); then
        echo "    ... $((lines - 150)) earlier lines in $file"
        tail -n 150 "$file" | sed 's/^/    | /'
    else
        sed 's/^/    | /' "$file"
    fi
}

# fail_case CASE REASON: a failed result of kernel k that the guest did not
# report.
fail_case() {
    verdict[$k/$1]=FAIL seconds[$k/$1]=0 reason[$k/$1]=$2
    printf '[%s] %-36s %s %6ss  %s\n' "$k" "$1" FAIL 0 "$2"
}

# fail_all REASON: every case of kernel k fails with REASON.
fail_all() {
    local c
    for c in "${cases[@]}"; do fail_case "$c" "$1"; done
}

# fail_unfinished: the cases of kernel k without a result fail: the one
# running (or rebooting) when the VM ended with its log, the others as not
# run.
fail_unfinished() {
    local c
    for c in "${cases[@]}"; do
        [[ -n ${seen[$c]:-} ]] && continue
        if [[ $c == "$current" || $c == "$reboot_case" ]]; then
            reason[$k/$c]="$vm_problem during the case"
            show_case_log "$logdir/$c.log"
            fail_case "$c" "${reason[$k/$c]}"
        else
            fail_case "$c" "not run: ${vm_problem:-VM ended early}"
        fi
    done
}

# fail_shutdown: the final power-off of kernel k failed (vm_problem): the
# summary's "(shutdown)" row.
fail_shutdown() {
    local sk="$k/(shutdown)"
    echo "[$k] $vm_problem; last console lines:"
    tail -n 40 "$console" | sed 's/^/    # /'
    shutdown_failed+=("$k")
    verdict[$sk]=FAIL seconds[$sk]=0 reason[$sk]=$vm_problem
}

# ---- summary ----------------------------------------------------------------------

# summarize_and_exit: the table of case x kernel into LOGROOT/summary.txt
# and onto stdout, ending with the closing line CI and scripts/run-tests.sh
# read; exit 1 when anything failed.
summarize_and_exit() {
    local c v rows=('(boot)' "${cases[@]}") skip_notes=() summary=$log_root/summary.txt
    local passed=0 failed=0 skipped=0
    ((${#shutdown_failed[@]})) && rows+=("(shutdown)")
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
                    judge_skip "$SKIP_SUITE" "$k" "$build_kind" "$c" "${reason[$k/$c]:-}"
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
            [[ -n ${reason[$k/(shutdown)]:-} ]] && echo "($k shutdown: ${reason[$k/(shutdown)]})"
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
    exit $((failed > 0))
}
