#!/usr/bin/env bash
# Every test: install what is needed, build, run the unit tests (plain and
# under ASan+UBSan), then the VM suite on both kernels (6.12 and 7.2).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/run-tests.sh [--unit-only] [--vm-only] [--kernel K] [--quick|--full] [--help]

  1. scripts/install-deps.sh
  2. build ./build and run the unit tests (Catch2)
  3. build ./build-asan (-Db_sanitize=address,undefined) and run them again
  4. tests/vm/run.sh on kernels 6.12 and 7.2: every case in tests/vm/cases
     (the full tier), or with --quick the cases not marked `# vm-tier: full`;
     then tests/vm/run-systemd.sh, the same for tests/vm/systemd-cases in a
     VM booted by systemd

  --unit-only   steps 1-3
  --vm-only     steps 1, 2 (build only) and 4
  --kernel K    VM kernels: 6.12, 7.2 or all (default all)
  --quick       the quick VM tier; the default when CI=true
  --full        the full VM tier; the default otherwise
Must run as root (packages, and the VM tests' downloads and cache).
Ends with one line "N passed, N failed": unit test cases of both builds plus
VM cases per kernel.
USAGE
}

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

passed=0
failed=0
failures=()

# unit_suite NAME BUILD_DIR: run the Catch2 binary and add its case counts.
unit_suite() {
    local name=$1 dir=$2 out rc=0 total fails
    out=$dir/unit-tests.out
    echo "== unit tests ($name)"
    "$dir/tests/unit/unit-tests" >"$out" 2>&1 || rc=$?
    tail -n 3 "$out"
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
    passed=$((passed + total - fails))
    failed=$((failed + fails))
}

scripts/install-deps.sh
echo "== build"
scripts/build.sh build

if ((unit)); then
    unit_suite plain build
    echo "== build with ASan+UBSan"
    # GCC 12 reports false -Wmaybe-uninitialized inside std::function and
    # std::regex once ASan instruments them; every other warning stays fatal.
    # Only the unit test binary: the daemon and tools are not run from this
    # build, and instrumenting them too costs CI minutes.
    [[ -f build-asan/build.ninja ]] ||
        meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false \
            -Dcpp_args=-Wno-maybe-uninitialized >/dev/null
    ninja -C build-asan tests/unit/unit-tests
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        unit_suite asan build-asan
fi

# vm_suite NAME SCRIPT OUT: a VM suite on the chosen kernels and tier; its
# closing "N passed, N failed" line goes into the totals.
vm_suite() {
    local name=$1 script=$2 vm_out=$3 rc=0 line p f
    echo "== $name (kernel $kernel, $tier tier)"
    "$script" --kernel "$kernel" --tier "$tier" --build-dir build 2>&1 | tee "$vm_out" || rc=$?
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$vm_out" | tail -n 1 || true)
    if [[ -z $line ]]; then
        failures+=("$name (no summary)")
        failed=$((failed + 1))
    else
        p=$(grep -oE '^[0-9]+' <<<"$line")
        f=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '^[0-9]+')
        passed=$((passed + p))
        failed=$((failed + f))
        ((f == 0 && rc == 0)) || failures+=("$name")
    fi
}

if ((vm)); then
    vm_suite "VM tests" tests/vm/run.sh build/vm-summary.out
    vm_suite "VM tests under systemd" tests/vm/run-systemd.sh build/vm-systemd-summary.out
fi

echo
if ((${#failures[@]})); then
    echo "failed: ${failures[*]}"
fi
echo "$passed passed, $failed failed"
((failed == 0 && ${#failures[@]} == 0))
