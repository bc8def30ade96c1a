# results.json as text: per kernel, the fio table, then the other numbers
# and the targets.
def pad($n): tostring | if length >= $n then . else . + (" " * ($n - length)) end;
def lpad($n): tostring | if length >= $n then . else (" " * ($n - length)) + . end;
def num: if . == null then "-" else tostring end;
def fmt: if . == null then "-" elif . >= 100 then (. | round | tostring) else tostring end;

. as $root
| "build: \(.build.buildtype // "?") (-O\(.build.optimization // "?")), sanitizers \(.build.sanitize // "?"), \(.build.compiler // "?"), commit \(.build.commit // "?"); host CPU \(.build.host_cpu // "?") x\(.build.host_cpus // "?"), qemu -cpu \(.build.qemu_cpu // "?")\(if (.build.ublkd_json // {}) != {} then "; ublkd.json \(.build.ublkd_json | tojson)" else "" end)",
(.kernels | to_entries[] | .key as $k | .value as $v
| "== kernel \($k): fio, medians of \($v.run.repeats // "?") repeat(s) of \($v.run.runtime_s // "?") s, \($v.run.cpus // "?") vCPUs (TCG), guest rep movsb fast (fsrm): \(if $v.run.cpu_fsrm == null then "?" else $v.run.cpu_fsrm end) ==",
  (("job" | pad(18)) + ("nj" | pad(3)) + ("device" | pad(11)) + ("IOPS" | lpad(9)) + ("MB/s" | lpad(8))
   + ("p50 us" | lpad(9)) + ("p99 us" | lpad(9)) + "  ratio (counterpart)"),
  ($v.fio | sort_by(.job, .numjobs, (.device | {"brd":0,"null_blk":1,"loop":2,"ublkd-null":3,"ublkd-mem":4,"ublkd-file":5,"kernel-nbd":6,"ublkd-nbd":7,"rbd-nbd":8,"ublkd-rbd":9}[.]))[]
   | ((.job | pad(18)) + (.numjobs | pad(3)) + (.device | pad(11)) + (.iops | fmt | lpad(9))
      + (.mbps | fmt | lpad(8)) + (.p50_us | fmt | lpad(9)) + (.p99_us | fmt | lpad(9))
      + (if .counterpart then "  \(.ratio | num) (\(.counterpart))" else "" end)
      + (if .ratio_loop then ", \(.ratio_loop) (loop)" else "" end))),
  "",
  "added p50 latency at iodepth 1, ublkd null over null_blk: "
    + ([$v.added_latency_qd1[] | "\(.job) +\(.added_p50_us) us"] | join(", ")),
  "add->live: median \($v.add_live.median_ms | num | .[0:6]) ms, max \($v.add_live.max_ms | num | .[0:6]) ms (\($v.add_live.count | num) devices)",
  "memory: ublkd RSS \(($v.memory.rss_kib // 0) / 1024 | . * 10 | round / 10) MiB with a 1 GiB mem device after 16 MiB written (idle \(($v.memory.rss_idle_kib // 0) / 1024 | . * 10 | round / 10) MiB)",
  "CPU per I/O at iodepth 64, 1 job (all ublkd threads / queue threads; I/Os per queue thread wake-up):",
  ($v.cpu[] | "  \(.device | pad(11)) \(.job | split("-")[0] | pad(10)) \(.cpu_us_per_io | num) / \(.queue_cpu_us_per_io | num) us; \(.ios_per_wakeup | num)"),
  (if ($v.baseline | length) > 0 then
     "CPU per I/O against the baseline build \($root.build.baseline_commit // "?") at iodepth 64, 1 job (queue threads / all threads, us; IOPS):",
     ($v.baseline[] | "  \(.backend | pad(5)) \(.job | split("-")[0] | pad(10)) \(.queue_us | num) vs \(.base_queue_us | num) (x\(.queue_ratio | num), own spread \(.spread | num)); all \(.all_us | num) vs \(.base_all_us | num); IOPS \(.iops | fmt) vs \(.base_iops | fmt) (x\(.iops_ratio | num))")
   else empty end),
  (if ($v.zero_copy | length) > 0 then
     "zero copy (file on ext4, \"zero_copy\": true) against the copy (the default), IOPS:",
     ($v.zero_copy[] | "  \(.job | pad(16)) \(.zero_copy_iops | fmt | lpad(8)) vs \(.copy_iops | fmt | lpad(8))  ratio \(.ratio | num)")
   else "zero copy: not offered by this kernel (no AUTO_BUF_REG)" end),
  "",
  "targets:",
  ($v.targets[] | "  " + (if .met then "met    " else "MISSED " end) + .name + ": " + (.value | num) + " (target " + (if (.name | test("ms|MiB|\\(us\\)|CPU per I/O")) then "<= " else ">= " end) + (.target | tostring) + ")"),
  "")
