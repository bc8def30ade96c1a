#!/usr/bin/env bash
# The benchmark: ublkd against the kernel's own block devices, in one VM run
# per kernel. See bench/README.md and docs/performance.md.
set -euo pipefail
export LC_ALL=C

usage() {
    cat <<'EOF_USAGE'
Usage: bench/run.sh [OPTIONS]

Boots the test VM (qemu, TCG, 2 vCPUs) once per kernel and runs identical
fio jobs against kernel brd, null_blk and loop (direct I/O, tmpfs file) and
ublkd's null, mem and file (tmpfs file) devices at the default queue count,
and a null device with 2 queues, interleaved and repeated; then the
kernel's nbd client (nbd-client) and an ublkd nbd device on one nbdkit
memory export (4k at iodepth 1 and 64, 512k at iodepth 16; BENCH_NBD_JOBS);
then rbd-nbd and an ublkd rbd device on two images of one Ceph cluster in
the VM (4k at iodepth 64, 128k at iodepth 16; BENCH_RBD_JOBS).
Also measures add->live latency, ublkd's RSS and its CPU time per I/O, and
that CPU time against a baseline build of an earlier commit (null and mem
devices served by both daemons in turn, 4k at iodepth 64).
Prints a table per kernel with each ublkd row's ratio to its kernel
counterpart, and writes OUT/results.json, OUT/results.txt and
OUT/chart-KERNEL.png.

Options:
  --kernel K       6.12, 7.2 or all (default all)
  --runtime SECS   fio runtime per job and device (default 3)
  --ramp SECS      fio ramp time, not measured (default 1)
  --repeats N      repeats of the whole matrix (default 3)
  --size MIB       size of every device (default 256)
  --cpu MODEL      qemu CPU model (default max,-erms,-fsrm: without fast
                   string moves, which TCG emulates a byte at a time; see
                   docs/performance.md)
  --quick          --runtime 2 --repeats 1: a fast look, not a result
  --jobs "J..."    only these jobs (default: all six, e.g. randread-4k-64)
  --numjobs "N.."  fio numjobs values (default "1 2")
  --nbd-jobs "J.." the nbd pair's jobs (default: 4k at iodepth 1 and 64,
                   512k at iodepth 16); none: skip the pair
  --rbd-jobs "J.." the rbd pair's jobs (default: 4k at iodepth 64, 128k at
                   iodepth 16); none: skip the pair
  --baseline REV   the earlier commit to compare CPU per I/O with (built
                   once per commit, same buildtype, kept in
                   BUILD/bench-baseline); default: the commit before the
                   per-queue statistics; none: skip the comparison
  --ublkd-json OBJ settings for this build's daemons in the VM, as in
                   ublkd.json (e.g. '{"batch_io": true}'); not given to the
                   baseline, which may not know them (default: none)
  --build-dir DIR  meson build directory (default: build), always brought up
                   to date; refused when built with sanitizers or without
                   optimisation
  --out DIR        where results go (default: BUILD/bench-results)
  --help           show this help

Exit status: 0 when every kernel's run completed (targets missed or not),
1 when a run failed, 2 on usage errors.
EOF_USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

kernels=all
runtime=3
ramp=1
repeats=3
size=256
cpu=max,-erms,-fsrm
jobs=
numjobs=
nbd_jobs=
rbd_jobs=
build_dir=$repo/build
out=
baseline=
ublkd_json='{}'
while (($#)); do
    case $1 in
        --kernel) kernels=${2:?--kernel needs a value}; shift ;;
        --runtime) runtime=${2:?--runtime needs a value}; shift ;;
        --ramp) ramp=${2:?--ramp needs a value}; shift ;;
        --repeats) repeats=${2:?--repeats needs a value}; shift ;;
        --size) size=${2:?--size needs a value}; shift ;;
        --cpu) cpu=${2:?--cpu needs a value}; shift ;;
        --quick) runtime=2 repeats=1 ;;
        --jobs) jobs=${2:?--jobs needs a value}; shift ;;
        --numjobs) numjobs=${2:?--numjobs needs a value}; shift ;;
        --nbd-jobs) nbd_jobs=${2:?--nbd-jobs needs a value}; shift ;;
        --rbd-jobs) rbd_jobs=${2:?--rbd-jobs needs a value}; shift ;;
        --build-dir) build_dir=${2:?--build-dir needs a value}; shift ;;
        --baseline) baseline=${2:?--baseline needs a value}; shift ;;
        --out) out=${2:?--out needs a value}; shift ;;
        --ublkd-json) ublkd_json=${2:?--ublkd-json needs a value}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench/run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
die() { echo "bench/run.sh: error: $*" >&2; exit 2; }
for v in runtime ramp repeats size; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "--$v must be a whole number, not '${!v}'"
done
((runtime > 0 && repeats > 0 && size >= 16)) || die "--runtime and --repeats must be > 0, --size >= 16"
jq -e 'type == "object"' <<<"$ublkd_json" >/dev/null 2>&1 ||
    die "--ublkd-json must be a JSON object, not '$ublkd_json'"
ublkd_json=$(jq -c . <<<"$ublkd_json")
case $kernels in
    all) klist=(6.12 7.2) ;;
    6.12 | 7.2) klist=("$kernels") ;;
    *) die "--kernel must be 6.12, 7.2 or all, not '$kernels'" ;;
esac
valid_jobs=" randread-4k-1 randwrite-4k-1 randread-4k-64 randwrite-4k-64 read-128k-16 write-128k-16 "
for j in $jobs; do
    [[ $valid_jobs == *" $j "* ]] || die "unknown job '$j' (one of:$valid_jobs)"
done
net_jobs=" randread-4k-1 randwrite-4k-1 randread-4k-64 randwrite-4k-64 read-128k-16 write-128k-16 read-512k-16 write-512k-16 "
for j in $nbd_jobs $rbd_jobs; do
    [[ $j == none || $net_jobs == *" $j "* ]] || die "unknown nbd/rbd job '$j' (one of:$net_jobs none)"
done
for n in $numjobs; do [[ $n =~ ^[1-8]$ ]] || die "--numjobs values are 1..8, not '$n'"; done
for tool in jq gnuplot; do
    command -v "$tool" >/dev/null || die "'$tool' not found (run scripts/install-deps.sh)"
done

# Always built: a stale binary would measure the code of another commit.
"$repo/scripts/build.sh" "$build_dir" >/dev/null || die "building $build_dir failed"
build_dir=$(cd "$build_dir" && pwd)
# Only an optimised build without sanitizers says anything about speed.
buildopts=$(meson introspect --buildoptions "$build_dir") || die "meson introspect $build_dir failed"
bopt() { jq -r --arg n "$1" '.[] | select(.name == $n) | .value | tostring' <<<"$buildopts"; }
buildtype=$(bopt buildtype)
optimization=$(bopt optimization)
sanitize=$(bopt b_sanitize)
[[ $sanitize == none ]] || die "$build_dir is built with -Db_sanitize=$sanitize; benchmark a build without sanitizers"
[[ $optimization == 2 || $optimization == 3 || $optimization == s ]] ||
    die "$build_dir is built with -O$optimization (buildtype $buildtype); benchmark an optimised build (release or debugoptimized)"
# The compile command of the I/O path's hottest file: the flags as they were.
cxxflags=$(jq -r '.[] | select(.file | endswith("queue/queue_worker.cpp")) | .command'     "$build_dir/compile_commands.json" | head -n 1)
compiler=$(c++ --version | head -n 1)
host_cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
commit=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)
out=${out:-$build_dir/bench-results}
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/ublkd-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/cases"

# The baseline daemon: ublkd of an earlier commit, built from a clean
# export of it with this build's type, kept per commit.
baseline_commit=
if [[ $baseline != none ]]; then
    if [[ -z $baseline ]]; then
        first=$(git -C "$repo" log --diff-filter=A --format=%H -- lib/queue/queue_stats.h | tail -n 1)
        [[ -n $first ]] || die "no commit adds lib/queue/queue_stats.h (a shallow clone?); pass --baseline REV or none"
        baseline=$first^
    fi
    baseline_commit=$(git -C "$repo" rev-parse --verify --quiet "$baseline^{commit}") ||
        die "--baseline: '$baseline' is not a commit of $repo"
    bbin=$build_dir/bench-baseline/ublkd-${baseline_commit:0:12}
    if [[ ! -x $bbin ]]; then
        echo "bench: building the baseline ublkd at ${baseline_commit:0:12} ($buildtype)"
        mkdir -p "$work/baseline-src"
        git -C "$repo" archive "$baseline_commit" | tar -x -C "$work/baseline-src"
        meson setup "$work/baseline-build" "$work/baseline-src" -Dbuildtype="$buildtype" >/dev/null ||
            die "configuring the baseline at $baseline failed"
        ninja -C "$work/baseline-build" daemon/ublkd >/dev/null || die "building the baseline at $baseline failed"
        mkdir -p "${bbin%/*}"
        cp "$work/baseline-build/daemon/ublkd" "$bbin.tmp" && mv "$bbin.tmp" "$bbin"
    fi
    mkdir -p "$work/cases/bin"
    cp "$bbin" "$work/cases/bin/ublkd-baseline"
fi

# The case the VM runs: bench/vm/bench.sh with the parameters in front.
# Its timeout: the fio matrix (6 devices per run, plus fio's start-up) and
# the rest, with room for a slow host.
njobs=$(wc -w <<<"${jobs:-x x x x x x}")
nnum=$(wc -w <<<"${numjobs:-1 2}")
# The network pairs: two devices a job, the rbd pair after a cluster start.
matrix=$((repeats * njobs * nnum * (7 * (runtime + ramp) + 15) + repeats * 8 * (runtime + ramp + 3) +
    repeats * 8 * (runtime + ramp + 3) + repeats * 8 * (runtime + 3) + 180))
vm_timeout=$((2 * (matrix + 7 * runtime + 300) + 300))
{
    echo '#!/bin/bash'
    echo "# vm-timeout: $vm_timeout"
    # Zero copy on 7.2 (docs/configuration.md, "Zero copy"):
    echo '# vm-known-splat: 7.2 UBSAN: array-index-out-of-bounds in .*io_uring/rsrc\.c'
    echo "BENCH_RUNTIME=$runtime BENCH_RAMP=$ramp BENCH_REPEATS=$repeats BENCH_SIZE_MIB=$size"
    [[ -n $jobs ]] && printf 'BENCH_JOBS=%q\n' "$jobs"
    [[ -n $numjobs ]] && printf 'BENCH_NUMJOBS=%q\n' "$numjobs"
    [[ -n $nbd_jobs ]] && printf 'BENCH_NBD_JOBS=%q\n' "$nbd_jobs"
    [[ -n $rbd_jobs ]] && printf 'BENCH_RBD_JOBS=%q\n' "$rbd_jobs"
    [[ -n $baseline_commit ]] && printf 'BENCH_BASELINE=%q\n' "${baseline_commit:0:12}"
    printf 'BENCH_UBLKD_JSON=%q\n' "$ublkd_json"
    grep -v '^#!' "$here/vm/bench.sh"
} >"$work/cases/bench.sh"

status=0
: >"$work/records.jsonl"
jq -nc --arg buildtype "$buildtype" --arg optimization "$optimization" --arg sanitize "$sanitize" \
    --arg command "$cxxflags" --arg compiler "$compiler" --arg host_cpu "$host_cpu" \
    --arg guest_cpu "$cpu" --arg commit "$commit" --argjson host_cpus "$(nproc)" \
    --arg baseline "${baseline_commit:0:12}" --argjson ublkd_json "$ublkd_json" \
    '{kind: "build", buildtype: $buildtype, optimization: $optimization, sanitize: $sanitize,
      compiler: $compiler, compile_command: $command, commit: $commit, host_cpu: $host_cpu,
      host_cpus: $host_cpus, qemu_cpu: $guest_cpu, baseline_commit: $baseline,
      ublkd_json: $ublkd_json}' >"$work/build.json"
for k in "${klist[@]}"; do
    echo "bench: kernel $k: runtime ${runtime}s, ramp ${ramp}s, $repeats repeat(s), devices of $size MiB, CPU $cpu (VM case timeout ${vm_timeout}s)"
    if ! "$repo/tests/vm/run.sh" --kernel "$k" --build-dir "$build_dir" --cases-dir "$work/cases" \
        --log-dir "$out/vm-logs" --memory 3G --smp 2 --cpu "$cpu" bench; then
        echo "bench: the run on $k failed; its logs are in $out/vm-logs/$k" >&2
        status=1
        continue
    fi
    sed -n 's/^@@BENCH //p' "$out/vm-logs/$k/bench.log" | tee "$out/raw-$k.jsonl" >>"$work/records.jsonl"
done
[[ -s $work/records.jsonl ]] || { echo "bench: no results" >&2; exit 1; }

jq -s --arg date "$(date -u +%FT%TZ)" --slurpfile build "$work/build.json" \
    -f "$here/summarize.jq" "$work/records.jsonl" >"$out/results.json"
jq -r -f "$here/table.jq" "$out/results.json" | tee "$out/results.txt"

# One chart per kernel: each ublkd device's throughput as a fraction of its
# kernel counterpart, per job.
for kver in $(jq -r '.kernels | keys[]' "$out/results.json"); do
    series=$(cut -d. -f1,2 <<<"$kver")
    jq -r --arg k "$kver" -f "$here/chart-data.jq" "$out/results.json" >"$work/chart.dat"
    gnuplot -e "datafile='$work/chart.dat'; outfile='$out/chart-$series.png'; kernel='$kver'" \
        "$here/chart.gp" || { echo "bench: gnuplot failed for $kver" >&2; status=1; }
done
echo "bench: results in $out (results.json, results.txt, chart-*.png)"
exit "$status"
