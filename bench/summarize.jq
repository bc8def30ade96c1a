# Input: every @@BENCH record of the run (slurped). Output: results.json,
# per kernel the medians over repeats, ratios to the kernel counterparts
# and the targets of docs/performance.md.
def median: sort | if length == 0 then null
    elif length % 2 == 1 then .[length / 2 | floor]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def r3: . * 1000 | round / 1000;
def r1: . * 10 | round / 10;
# The kernel device each ublkd device is compared with.
def counterpart: {"ublkd-null": "null_blk", "ublkd-mem": "brd", "ublkd-file": "brd",
                  "ublkd-null-q2": "null_blk", "ublkd-nbd": "kernel-nbd",
                  "ublkd-rbd": "rbd-nbd"}[.];
# ublkd-null-q2 (2 queues) is shown against the default, not held to a target.
def target_ratio: {"ublkd-null": 0.90, "ublkd-mem": 0.95, "ublkd-file": 1.0}[.];
# The ratio a row is held to: its device's at 4k iodepth 64 with one job,
# 0.75 there with two jobs, 0.90 for 128k; none at iodepth 1 (latency is
# compared instead).
# ublkd-nbd against the kernel's nbd client on the same export: at least
# as fast at 4k iodepth 64, 1.3 times at 512k.
# ublkd-rbd against rbd-nbd on the same cluster: 1.2 times at 4k iodepth 64
# and 128k.
def row_target: if .device == "ublkd-nbd" then
      (if (.job | test("-4k-64$")) then 1.0 elif (.job | test("-512k-")) then 1.3 else null end)
    elif .device == "ublkd-rbd" then
      (if (.job | test("-4k-64$|-128k-")) then 1.2 else null end)
    elif (.device | target_ratio) == null then null
    elif (.job | test("-4k-64$")) then (if .numjobs == 1 then (.device | target_ratio) else 0.75 end)
    elif (.job | test("-128k-")) then 0.90
    else null end;

group_by(.kernel) | map(
  . as $recs
  | ($recs | map(select(.kind == "fio"))
     | group_by([.device, .job, .numjobs])
     | map({device: .[0].device, job: .[0].job, numjobs: .[0].numjobs,
            repeats: length,
            iops: (map(.iops) | median | r1),
            iops_min: (map(.iops) | min | r1), iops_max: (map(.iops) | max | r1),
            mbps: (map(.mbps) | median | r1),
            p50_us: (map(.p50_us) | median | r1),
            p99_us: (map(.p99_us) | median | r1)})) as $fio
  | ($fio | map({key: "\(.device) \(.job) \(.numjobs)", value: .}) | from_entries) as $by
  | ($fio | map(. as $r
       | if ($r.device | counterpart) == null then $r
         else ($by["\($r.device | counterpart) \($r.job) \($r.numjobs)"]) as $c
         | $r + {counterpart: ($r.device | counterpart),
                 ratio: (if $c == null or $c.iops == 0 then null else $r.iops / $c.iops | r3 end)}
           + (if $r.device == "ublkd-file" and $by["loop \($r.job) \($r.numjobs)"] != null
              then {ratio_loop: ($r.iops / $by["loop \($r.job) \($r.numjobs)"].iops | r3)} else {} end)
         end)) as $fio
  | ($recs | map(select(.kind == "zerocopy")) | group_by(.job)
     | map({job: .[0].job,
            zero_copy_iops: (map(select(.zero_copy) | .iops) | median | if . then r1 else . end),
            copy_iops: (map(select(.zero_copy | not) | .iops) | median | if . then r1 else . end)}
           | . + {ratio: (if .copy_iops and .copy_iops > 0 and .zero_copy_iops
                          then .zero_copy_iops / .copy_iops | r3 else null end)})) as $zc
  | ($recs | map(select(.kind == "add_live")) | .[0]) as $add
  | ($recs | map(select(.kind == "memory")) | .[0]) as $mem
  | ($recs | map(select(.kind == "cpu"))
     | map({device, job, ios,
            cpu_us_per_io: (if .ios > 0 then .ticks_all * 1e6 / .hz / .ios | r1 else null end),
            queue_cpu_us_per_io: (if .ios > 0 then .ticks_queues * 1e6 / .hz / .ios | r1 else null end),
            ios_per_wakeup: (if .queue_wakeups > 0 then .ios / .queue_wakeups | r1 else null end)})) as $cpu
  # This build against the baseline (--baseline): per backend and job, the
  # medians over repeats of the queue threads' and the whole daemon's CPU
  # per I/O, and of IOPS; `spread` is this build's own queue CPU range over
  # its repeats, relative to its median: the noise a difference must beat.
  | ($recs | map(select(.kind == "cpu_ab" and .ios > 0)
                | . + {q: (.ticks_queues * 1e6 / .hz / .ios), a: (.ticks_all * 1e6 / .hz / .ios),
                       iops: (.ios / .secs)})
     | group_by(.backend + " " + .job)
     | map(. as $g
           | (map(select(.build == "this"))) as $t | (map(select(.build == "baseline"))) as $b
           | {backend: $g[0].backend, job: $g[0].job, repeats: ($t | length),
              queue_us: ($t | map(.q) | median | r1), base_queue_us: ($b | map(.q) | median | r1),
              all_us: ($t | map(.a) | median | r1), base_all_us: ($b | map(.a) | median | r1),
              iops: ($t | map(.iops) | median | r1), base_iops: ($b | map(.iops) | median | r1),
              spread: (($t | map(.q)) as $q | if ($q | length) > 1 and ($q | median) > 0
                       then (($q | max) - ($q | min)) / ($q | median) | r3 else null end)}
           | . + {queue_ratio: (if .base_queue_us > 0 then .queue_us / .base_queue_us | r3 else null end),
                  iops_ratio: (if .base_iops > 0 then .iops / .base_iops | r3 else null end)})) as $ab
  | ([$fio[] | select(row_target != null) | row_target as $t
      | {name: "\(.device) \(.job) x\(.numjobs) / \(.counterpart)", value: .ratio,
         target: $t, met: (.ratio != null and .ratio >= $t)}]
     + [$fio[] | select(.device == "ublkd-null" and (.job | test("-4k-1$")) and .numjobs == 1)
        | . as $u | $by["null_blk \(.job) 1"] as $n | $by["loop \(.job) 1"] as $l
        | $by["brd \(.job) 1"] as $b
        | select($n != null and $l != null and $b != null)
        | (($u.p50_us - $n.p50_us) | r1) as $added | (($l.p50_us - $b.p50_us) | r1) as $loop
        | {name: "\(.job) added p50 (us), ublkd-null over null_blk <= loop over brd",
           value: $added, target: $loop, met: ($added <= $loop)}]
     + [$cpu[] | select(.device == "ublkd-rbd") | . as $u
        | ($cpu[] | select(.device == "rbd-nbd" and .job == $u.job)) as $n
        | select($u.cpu_us_per_io != null and $n.cpu_us_per_io != null and $n.cpu_us_per_io > 0)
        | ($u.cpu_us_per_io / $n.cpu_us_per_io | r3) as $r
        | {name: "\(.job) client CPU per I/O, ublkd-rbd / rbd-nbd", value: $r, target: 0.6,
           met: ($r <= 0.6)}]
     + [{name: "add->live median (ms)", value: ($add.median_ms // null | if . then r1 else . end),
         target: 150, met: ($add != null and $add.median_ms <= 150)},
        {name: "RSS, 1 GiB mem device, 16 MiB written (MiB)",
         value: ($mem.rss_kib // null | if . then . / 1024 | r1 else . end),
         target: 64, met: ($mem != null and $mem.rss_kib <= 65536)}]) as $targets
  | ([$fio[] | select(.device == "ublkd-null" and (.job | test("-4k-1$")) and .numjobs == 1)
      | . as $u | ($by["null_blk \(.job) 1"]) as $n
      | {job, ublkd_null_p50_us: .p50_us, null_blk_p50_us: $n.p50_us,
         added_p50_us: ((.p50_us - $n.p50_us) | r1)}]) as $lat
  | {key: $recs[0].kernel,
     value: {run: ($recs | map(select(.kind == "run")) | .[0]),
             fio: $fio, added_latency_qd1: $lat, add_live: $add, memory: $mem, cpu: $cpu,
             zero_copy: $zc, baseline: $ab,
             targets: $targets}})
| {generated: $date, build: $build[0], kernels: from_entries}
