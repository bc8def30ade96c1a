# Data for chart.gp: one line per job and numjobs, the ratio of each ublkd
# device's IOPS to its kernel counterpart (null/null_blk, mem/brd,
# file/brd); "-" where missing.
.kernels[$k].fio as $fio
| ($fio | map(select(.device == "ublkd-null" or .device == "ublkd-mem" or .device == "ublkd-file"))
  | group_by([.job, .numjobs]) | sort_by(.[0].numjobs, .[0].job)[]
  | (map({key: .device, value: .ratio}) | from_entries) as $r
  | "\(.[0].job)x\(.[0].numjobs)\t\($r["ublkd-null"] // "-")\t\($r["ublkd-mem"] // "-")\t\($r["ublkd-file"] // "-")")
