# The skips a test run expects, sourced by scripts/run-tests.sh (unit tests)
# and tests/vm/run.sh, run-systemd.sh (VM cases). Any skip not listed here
# fails the run: a case that could not run has proven nothing, and only a
# reason someone has looked at may excuse that.
#
# One entry a line: "SUITE KERNEL BUILD NAME|WHY"
#   SUITE   unit, vm or vm-systemd
#   KERNEL  6.12, 7.2, or * (unit tests run on the host: always *)
#   BUILD   plain, asan (ASan+UBSan), tsan, or *
#   NAME    the unit test case's name, or the VM case's
#   WHY     why the skip is right there, shown in the summary
# shellcheck shell=bash disable=SC2034
EXPECTED_SKIPS=(
    'unit * * a queue thread with CAP_SYS_RESOURCE becomes an I/O flusher|only where the tests run without CAP_SYS_RESOURCE (a container, such as the sandbox CI runs in)'
    'vm * asan 88-resource-limits|a sanitizer runtime cannot start under ulimit -v'
    'vm * tsan 88-resource-limits|a sanitizer runtime cannot start under ulimit -v'
)

# skip_expected SUITE KERNEL BUILD NAME: prints WHY and succeeds when the
# skip is listed; fails otherwise.
skip_expected() {
    local entry spec s k b n
    for entry in "${EXPECTED_SKIPS[@]}"; do
        spec=${entry%%|*}
        read -r s k b n <<<"$spec"
        [[ $s == "$1" && ($k == '*' || $k == "$2") && ($b == '*' || $b == "$3") && $n == "$4" ]] ||
            continue
        printf '%s\n' "${entry#*|}"
        return 0
    done
    return 1
}

# judge_skip SUITE KERNEL BUILD CASE REASON: for a VM case that skipped,
# VERDICT=SKIP if the skip is listed, else FAIL; SKIP_NOTE= the summary's
# line for it.
judge_skip() {
    local why
    if why=$(skip_expected "$1" "$2" "$3" "$4"); then
        VERDICT=SKIP SKIP_NOTE="  $4 [$2]: $5 (expected: $why)"
    else
        VERDICT=FAIL SKIP_NOTE="  $4 [$2]: $5 (UNEXPECTED: counted as failed)"
    fi
}

# build_kind DIR: plain, asan or tsan, from the sanitizer runtimes
# DIR/daemon/ublkd links.
build_kind() {
    local libs
    libs=$(ldd "$1/daemon/ublkd" 2>/dev/null || true)
    if [[ $libs == *libtsan* ]]; then
        echo tsan
    elif [[ $libs == *libasan* ]]; then
        echo asan
    else
        echo plain
    fi
}
