# shellcheck shell=bash
# Kernel and case selection shared by run.sh and run-systemd.sh. The caller
# has set: kernels_arg, timeout, tier, cases_dir, case_args (array), list,
# and defined die(). This sets kernels and cases (arrays) and cases_dir
# (absolute), and with list=1 prints the cases and exits.

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

cases=()
if ((${#case_args[@]} == 0)); then
    for f in "$cases_dir"/*.sh; do
        [[ -e $f ]] || continue
        [[ $tier == full || $(case_tier "$f") == quick ]] || continue
        n=${f##*/}
        cases+=("${n%.sh}")
    done
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
