#!/usr/bin/env bash
# Build the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan, replay
# every saved regression input, then fuzz each target for a bounded time
# starting from its seed corpus. Fails when any input crashes, leaks, trips
# a sanitizer, hangs or breaks a target's invariants.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/run-fuzz.sh [--seconds N] [--replay-only] [--build-dir DIR]
                           [TARGET...]

  1. configure (once) and build DIR (default build-fuzz): CXX=clang++,
     -Dfuzz=true -Db_sanitize=address,undefined
  2. replay tests/fuzz/regressions/TARGET/* (inputs that once crashed a
     target; each must now run clean)
  3. fuzz each target for N seconds from tests/fuzz/corpus/TARGET

  --seconds N     fuzzing time per target (default 60; 0 replays only)
  --replay-only   the same as --seconds 0
  --build-dir DIR the clang build directory (default build-fuzz)
  TARGET          fuzz_admin_request, fuzz_device_spec, fuzz_daemon_config
                  (default: all)
  --help          show this help

A crash is saved as DIR/fuzz-artifacts/TARGET/crash-<sha1> (or leak-,
timeout-, oom-); reproduce it with DIR/tests/fuzz/TARGET FILE. Once the
bug is understood, copy the file to tests/fuzz/regressions/TARGET/ under a
name that says what it is, so that every later run replays it. New inputs
the fuzzer finds go to DIR/fuzz-corpus/TARGET, not into the tree.
Ends with "N passed, N failed" (one per replayed file and per fuzz run).
EOF
}

seconds=60
build_dir=build-fuzz
targets=()
all_targets=(fuzz_admin_request fuzz_device_spec fuzz_daemon_config)
while (($#)); do
    case $1 in
        --seconds) seconds=${2:?--seconds needs a value}; shift ;;
        --replay-only) seconds=0 ;;
        --build-dir) build_dir=${2:?--build-dir needs a value}; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "run-fuzz: unknown option: $1" >&2; usage >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
[[ $seconds =~ ^[0-9]+$ ]] || { echo "run-fuzz: bad --seconds: $seconds" >&2; exit 2; }
((${#targets[@]})) || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
    [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "run-fuzz: unknown target: $t" >&2; exit 2; }
done

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
command -v clang++ >/dev/null || { echo "run-fuzz: clang++ not found (scripts/install-deps.sh)" >&2; exit 1; }

# Any sanitizer report ends the run with a crash file. Leak checking is on:
# a parser that leaks on some input would leak on every such request.
export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1

echo "== build ($build_dir, clang)"
if [[ ! -f $build_dir/build.ninja ]]; then
    # Only the fuzz targets are built here; the unit tests and the man pages
    # have their own builds.
    CXX=clang++ meson setup "$build_dir" -Dfuzz=true -Dtests=false -Dman=disabled \
        -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
fi
ninja -C "$build_dir" "${targets[@]/#/tests/fuzz/}"

passed=0
failed=0
failures=()

# tally RC WHAT LOG LINES: count a replay or fuzz run; on failure name it and
# show the first LINES report lines of its log.
tally() {
    local rc=$1 what=$2 log=$3 lines=$4
    if ((rc == 0)); then
        passed=$((passed + 1))
        return
    fi
    failed=$((failed + 1))
    failures+=("$what")
    echo "FAIL $what: exit status $rc (log: $log)"
    grep -m"$lines" -E 'ERROR:|SUMMARY:|terminate called|what\(\):|invariant broken|Test unit written' \
        "$log" | sed 's/^/    /' | cut -c1-240
}

# Replay: one process per file, so that every broken file is named, not
# only the first.
for t in "${targets[@]}"; do
    bin=$build_dir/tests/fuzz/$t
    shopt -s nullglob
    files=(tests/fuzz/regressions/"$t"/*)
    shopt -u nullglob
    ((${#files[@]})) || continue
    echo "== replay $t (${#files[@]} files)"
    for f in "${files[@]}"; do
        log=$build_dir/fuzz-replay-$t-${f##*/}.log
        # The group's 2>/dev/null silences bash's "Aborted" job notice.
        rc=0
        { "$bin" -timeout=25 -rss_limit_mb=4096 "$f" >"$log" 2>&1; } 2>/dev/null || rc=$?
        tally "$rc" "$t replay ${f##*/}" "$log" 3
    done
done

# Fuzz: a private copy of the corpus grows as coverage does; the seed corpus
# in the tree stays small and reviewed. -max_len: requests and specs written
# by people are short, and short inputs keep the fuzzer fast; the deep and
# large cases live in regressions/.
if ((seconds > 0)); then
    for t in "${targets[@]}"; do
        bin=$build_dir/tests/fuzz/$t
        work=$build_dir/fuzz-corpus/$t
        artifacts=$build_dir/fuzz-artifacts/$t/
        log=$build_dir/fuzz-$t.log
        mkdir -p "$work" "$artifacts"
        echo "== fuzz $t (${seconds}s)"
        rc=0
        { "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
            -dict=tests/fuzz/json.dict -artifact_prefix="$artifacts" -print_final_stats=1 \
            "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1; } 2>/dev/null || rc=$?
        grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$log" | sed 's/^/    /' || true
        tally "$rc" "$t fuzz" "$log" 5
    done
fi

echo
((${#failures[@]})) && echo "failed: ${failures[*]}"
echo "$passed passed, $failed failed"
((failed == 0))
