#!/usr/bin/env bash
# Every test: install what is needed, build, run the unit tests (plain, under
# ASan+UBSan and, in the full tier, under TSan), fuzz the parsers for a
# bounded time, then the VM suite on both kernels (6.12 and 7.2) with the
# plain daemon and again with the ASan+UBSan daemon (and the TSan one).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/run-tests.sh [--unit-only] [--vm-only] [--kernel K] [--quick|--full] [--help]

  1. scripts/install-deps.sh, then scripts/check-shell.sh: shellcheck on
     every shell script (.shellcheckrc); a finding fails the run
  2. build ./build and run the unit tests (Catch2); compile ublkd and
     ublkctl once more as a release build (./build-release, -O3), where
     a warning only optimization shows fails the run too
  3. build ./build-asan (-Db_sanitize=address,undefined) and run them again
  4. full tier: build ./build-tsan (-Db_sanitize=thread) and run them again
  5. scripts/run-fuzz.sh: replay tests/fuzz/regressions, then fuzz each
     parser for 10 s (quick tier) or 300 s (full tier)
  6. tests/vm/run.sh on kernels 6.12 and 7.2: every case in tests/vm/cases
     (the full tier), or with --quick the cases not marked `# vm-tier: full`;
     then tests/vm/run-systemd.sh, the same for tests/vm/systemd-cases in a
     VM booted by systemd (quick tier: on 6.12 only)
  7. tests/vm/run.sh with ublkd, ublkctl and the test tools from build-asan:
     in the full tier every case on the kernels of step 6, then the same
     from build-tsan; in the quick tier the cases of ASAN_QUICK_CASES below
     on one kernel (7.2, or the one --kernel names). A sanitizer report
     fails its case.

The quick tier (CI) leaves out step 4, most of step 7 and the
`vm-tier: full` cases to stay within CI's time budget; the full tier is
this same command without --quick. Compilations go through ccache (cache
in $CCACHE_DIR, default /var/cache/ublkd-ccache) so a rerun on the same
machine rebuilds only what changed.

  --unit-only   steps 1-5
  --vm-only     steps 1, 2 (the ./build build only), 6 and 7 (building the
                sanitizer builds' binaries, not running their unit tests)
  --kernel K    VM kernels: 6.12, 7.2 or all (default all)
  --quick       the quick tier; the default when CI=true
  --full        the full tier; the default otherwise
Must run as root (packages, and the VM tests' downloads and cache).
Ends with one line "N passed, N failed, N skipped": the shellcheck run and
the release build (one each), unit test cases of the builds, fuzz replays
and runs, and VM cases per kernel and build.
USAGE
}

# The quick tier's ASan+UBSan daemon cases: the control path, I/O with
# verification, crash recovery and delete under load. The admin API's bad
# input is the fuzz targets' (clang ASan+UBSan over the whole request path).
ASAN_QUICK_CASES=(01-main-demo 10-mem-fio-verify 81-recover-kill9 87-del-under-load)

unit=1
vm=1
kernel=all
tier=full
[[ ${CI:-} == true ]] && tier=quick
while (($#)); do
    case $1 in
        --unit-only) vm=0 ;;
        --vm-only) unit=0 ;;
        --kernel) kernel=${2:?--kernel needs a value}; shift ;;
        --quick) tier=quick ;;
        --full) tier=full ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run-tests: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
((EUID == 0)) || { echo "run-tests: must run as root" >&2; exit 1; }

# shellcheck source=../tests/expected-skips.sh
. tests/expected-skips.sh

passed=0
failed=0
skipped=0
failures=()
skip_notes=()
started=$SECONDS

# section TITLE: a "== TITLE" line with the time since the run began, so a
# run's log shows where its time went.
section() {
    local t=$((SECONDS - started))
    printf '== %s [%dm%02ds]\n' "$1" $((t / 60)) $((t % 60))
}

# unit_skips NAME KIND OUT: count the skips the unit test binary listed
# ("SKIP: CASE: REASON", "SKIP (part): ..."); WHOLE= the number of whole
# cases skipped (not passes). A skip tests/expected-skips.sh does not list is
# a failure.
unit_skips() {
    local name=$1 kind=$2 out=$3 line part tcase why
    WHOLE=0
    while IFS= read -r line; do
        part=
        [[ $line == 'SKIP (part): '* ]] && part=' (part)'
        line=${line#SKIP: }
        line=${line#SKIP (part): }
        tcase=${line%%: *}
        if why=$(skip_expected unit '*' "$kind" "$tcase"); then
            skip_notes+=("unit tests ($name): $tcase$part: ${line#*: } (expected: $why)")
            skipped=$((skipped + 1))
        else
            skip_notes+=("unit tests ($name): $tcase$part: ${line#*: } (UNEXPECTED: counted as failed)")
            failed=$((failed + 1))
            failures+=("unit tests ($name): unexpected skip")
        fi
        [[ -z $part ]] && WHOLE=$((WHOLE + 1))
    done < <(grep -E '^SKIP( \(part\))?: ' "$out" || true)
}

# unit_suite NAME KIND BUILD_DIR: run the Catch2 binary and add its case
# counts; skipped cases count as skipped, not passed.
unit_suite() {
    local name=$1 kind=$2 dir=$3 out rc=0 total fails
    out=$dir/unit-tests.out
    section "unit tests ($name)"
    # The rbd cases need a Ceph cluster: one for the whole run (tests/ceph).
    # Without Ceph installed they run bare and their skips fail the suite.
    local -a wrap=()
    command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null &&
        wrap=(tests/ceph/with-cluster.sh)
    "${wrap[@]}" "$dir/tests/unit/unit-tests" >"$out" 2>&1 || rc=$?
    tail -n 3 "$out"
    grep -E '^SKIP( \(part\))?: ' "$out" || true
    # Catch2: "All tests passed (A assertions in N test cases)" or
    # "test cases: N | P passed | F failed".
    total=$(grep -oE '[0-9]+ test cases?' "$out" | tail -n 1 | grep -oE '^[0-9]+' || echo 0)
    fails=$(grep -oE 'test cases:.*\| *[0-9]+ failed' "$out" | grep -oE '[0-9]+ failed' |
        grep -oE '^[0-9]+' || echo 0)
    if ((rc != 0)); then
        cat "$out"
        ((fails > 0)) || fails=1
        failures+=("unit tests ($name)")
    fi
    unit_skips "$name" "$kind" "$out"
    passed=$((passed + total - fails - WHOLE))
    failed=$((failed + fails))
}

# add_summary NAME OUT RC: add the closing "N passed, N failed[, N
# skipped]" line of a script's output OUT to the totals, and the skips it
# listed to the notes; no such line is one failure.
add_summary() {
    local name=$1 out=$2 rc=$3 line p f sk
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1 || true)
    if [[ -z $line ]]; then
        failures+=("$name (no summary)")
        failed=$((failed + 1))
        return
    fi
    p=$(grep -oE '^[0-9]+' <<<"$line")
    f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '^[0-9]+')
    sk=$(grep -oE '[0-9]+ skipped' <<<"$line" | grep -oE '^[0-9]+' || echo 0)
    passed=$((passed + p))
    failed=$((failed + f))
    skipped=$((skipped + sk))
    while IFS= read -r line; do
        skip_notes+=("$name:${line}")
    done < <(sed -n '/^skipped or unexpectedly skipped/,/^$/p' "$out" | grep '^  ' || true)
    ((f == 0 && rc == 0)) || failures+=("$name")
}

# check NAME CMD...: a check that counts as one passed or failed; its
# output, which is short, is shown as it comes.
check() {
    local name=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
    fi
}

scripts/install-deps.sh
section shellcheck
check shellcheck scripts/check-shell.sh
# Outside the tree, like the VM caches: a clean clone reuses it.
export CCACHE_DIR=${CCACHE_DIR:-/var/cache/ublkd-ccache}
# Paths relative to the checkout, so that another clone hits the same cache.
export CCACHE_BASEDIR=$top CCACHE_NOHASHDIR=true
mkdir -p "$CCACHE_DIR"
section build
# Warnings are errors here (not in a user's build: a newer compiler's new
# warning must not break it).
scripts/build.sh build -Dwerror=true

# release_build: ublkd and ublkctl compiled as users build them for
# production (-O3): GCC warns about some code only when it optimizes it
# that far. A unity build of the two binaries keeps it to a few minutes;
# ninja's progress goes to a log, shown when the build fails.
release_build() {
    local log=build/release-build.log
    if scripts/build.sh build-release --buildtype=release -Dwerror=true -Dunity=on \
        -- daemon/ublkd daemon/ublkctl >"$log" 2>&1; then
        echo "release build: ublkd and ublkctl compile without warnings"
    else
        tail -n 80 "$log"
        echo "release build failed; the whole output is in $log"
        return 1
    fi
}

# GCC 12 reports false -Wmaybe-uninitialized inside std::function and
# std::regex once ASan instruments them; every other warning stays fatal.
# The unit tests and what the VM suite runs (daemon, ublkctl, test tools):
# building everything else would only cost CI time. -O1, as ASan's own
# documentation advises: it compiles faster than -O2 and reports the same.
setup_asan() {
    section "build with ASan+UBSan"
    scripts/build.sh build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false \
        -Doptimization=1 -Dcpp_args=-Wno-maybe-uninitialized -- tests/unit/unit-tests daemon/ublkd daemon/ublkctl \
        tests/ublkd-admin-send tests/ublkd-del-dev bench/ublkd-bench-add-live
}
setup_tsan() {
    section "build with TSan"
    scripts/build.sh build-tsan -Dwerror=true -Db_sanitize=thread -Db_lundef=false
}
# Suppressions only for reviewed third-party false positives, each with its
# reason in the file.
tsan_options=halt_on_error=0:second_deadlock_stack=1
[[ -f tests/tsan.supp ]] && tsan_options+=:suppressions=$top/tests/tsan.supp

if ((unit)); then
    section "release build (compile only)"
    check "release build" release_build
    unit_suite plain plain build
    setup_asan
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 unit_suite asan asan build-asan
    if [[ $tier == full ]]; then
        setup_tsan
        TSAN_OPTIONS=$tsan_options unit_suite tsan tsan build-tsan
    fi

    # Fuzzing: a crash, a sanitizer report or a broken invariant fails it.
    fuzz_seconds=300
    [[ $tier == quick ]] && fuzz_seconds=10
    section "fuzz (${fuzz_seconds}s per target)"
    fuzz_out=build/fuzz-summary.out
    rc=0
    scripts/run-fuzz.sh --seconds "$fuzz_seconds" 2>&1 | tee "$fuzz_out" || rc=$?
    add_summary fuzz "$fuzz_out" "$rc"
fi

# vm_suite NAME SCRIPT OUT BUILD_DIR KERNEL [CASE...]: a VM suite on the
# given kernels (and the tier's cases, unless named); its closing line goes
# into the totals.
vm_suite() {
    local name=$1 script=$2 vm_out=$3 dir=$4 kernels=$5 rc=0
    shift 5
    section "$name (kernel $kernels, $tier tier${*:+: $*})"
    "$script" --kernel "$kernels" --tier "$tier" --build-dir "$dir" "$@" 2>&1 |
        tee "$vm_out" || rc=$?
    add_summary "$name" "$vm_out" "$rc"
}

if ((vm)); then
    vm_suite "VM tests" tests/vm/run.sh build/vm-summary.out build "$kernel"
    # Under systemd the quick tier boots one kernel, 6.12 (Debian 12's own):
    # what differs between the kernels is proven by the suite above.
    systemd_kernel=$kernel
    [[ $tier == quick && $kernel == all ]] && systemd_kernel=6.12
    vm_suite "VM tests under systemd" tests/vm/run-systemd.sh build/vm-systemd-summary.out \
        build "$systemd_kernel"

    # The same cases with instrumented binaries: a report fails the case
    # (tests/vm/guest-lib.sh).
    ((unit)) || setup_asan
    if [[ $tier == quick ]]; then
        asan_kernel=7.2
        [[ $kernel == all ]] || asan_kernel=$kernel
        vm_suite "VM tests (ASan+UBSan)" tests/vm/run.sh build-asan/vm-summary.out build-asan \
            "$asan_kernel" "${ASAN_QUICK_CASES[@]}"
    else
        vm_suite "VM tests (ASan+UBSan)" tests/vm/run.sh build-asan/vm-summary.out build-asan \
            "$kernel"
        ((unit)) || setup_tsan
        vm_suite "VM tests (TSan)" tests/vm/run.sh build-tsan/vm-summary.out build-tsan "$kernel"
    fi
fi

echo
if ((${#skip_notes[@]})); then
    echo "skipped:"
    printf '  %s\n' "${skip_notes[@]}"
fi
if ((${#failures[@]})); then
    echo "failed: ${failures[*]}"
fi
section "done"
echo "$passed passed, $failed failed, $skipped skipped"
((failed == 0 && ${#failures[@]} == 0))
