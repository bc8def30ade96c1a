# shellcheck shell=bash
# Kernel reports ("splats"): the kernel messages that fail a VM case, a boot
# or a shutdown whatever else happened. One list for the guest (guest-lib.sh
# checks dmesg around each case and after each boot) and the host
# (run-systemd.sh checks the console during a shutdown). Only the kernel's
# log counts, never a case's own output. The hung-task report needs the
# timeout the guest sets (HUNG_TASK_SECS in guest-lib.sh).
#
# Only constants, for the files that source this one (none is used here).
# shellcheck disable=SC2034

# The first line of a report.
readonly SPLAT_START_RE='WARNING:|BUG:|Oops|possible circular locking|INFO: task .* blocked for more than|general protection fault|kernel BUG at|UBSAN:|KASAN:|Kernel panic'
# Any line of one: a first line, a line inside a report ("Call Trace:"), or
# lockdep's own complaints.
readonly SPLAT_RE="$SPLAT_START_RE|lockdep|Call Trace:"
# The last line of a report.
readonly SPLAT_END_RE='---\[ end trace|</TASK>'
