#!/usr/bin/env bash
# Runs one command against a throwaway Ceph cluster (tests/ceph/cluster.sh)
# made for it alone, and takes the cluster down afterwards whatever happens.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: tests/ceph/with-cluster.sh CMD [ARGS...]
       tests/ceph/with-cluster.sh --help

Starts a cluster in a new directory under $TMPDIR (default /var/tmp), runs
CMD with
  UBLKD_TEST_CEPH_CONF=DIR/ceph.conf  (also exported as CEPH_CONF, so plain
                                       `rbd ls` talks to this cluster)
  UBLKD_TEST_CEPH_DIR=DIR
then stops the cluster. The directory is removed when CMD succeeds and kept
(its path printed) when CMD fails. Exits with CMD's status; 77 (skip) when
ceph-mon or ceph-osd is not installed; 1 when the cluster does not start.
An INT, TERM or HUP to this script ends CMD with TERM, then cleans up.
EOF
}

# Runs once, on any exit: the daemons live in their own session, so nothing
# else would stop them.
cleanup() {
    local status=$?
    trap - EXIT INT TERM HUP
    if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    local stopped=1
    "$cluster" stop "$dir" || stopped=0
    if ((status == 0 && stopped)); then
        rm -rf "$dir"
    else
        echo "with-cluster: cluster files kept in $dir" >&2
    fi
    exit "$status"
}

# A signal only ends CMD: the wait below returns, and cleanup follows.
on_signal() {
    signal=$1
    [[ -n $child ]] && kill -TERM "$child" 2>/dev/null
    return 0
}

main() {
    case ${1:-} in
        -h | --help) usage; exit 0 ;;
        '') usage >&2; exit 2 ;;
    esac

    here=$(cd "$(dirname "$0")" && pwd)
    cluster=$here/cluster.sh

    for tool in ceph-mon ceph-osd; do
        if ! command -v "$tool" >/dev/null; then
            echo "with-cluster: skipped: $tool not installed (scripts/install-deps.sh installs ceph-mon ceph-osd ceph-common)" >&2
            exit 77
        fi
    done

    dir=$(mktemp -d "${TMPDIR:-/var/tmp}/ublkd-ceph.XXXXXX") ||
        { echo "with-cluster: mktemp -d under ${TMPDIR:-/var/tmp} failed" >&2; exit 1; }
    child=
    signal=

    trap cleanup EXIT
    trap 'on_signal INT' INT
    trap 'on_signal TERM' TERM
    trap 'on_signal HUP' HUP

    if ! "$cluster" start "$dir"; then
        echo "with-cluster: the Ceph cluster did not start (details above)" >&2
        exit 1
    fi
    [[ -z $signal ]] || exit $((128 + $(kill -l "$signal")))

    export UBLKD_TEST_CEPH_CONF=$dir/ceph.conf UBLKD_TEST_CEPH_DIR=$dir CEPH_CONF=$dir/ceph.conf

    # In the background so a signal is handled at once rather than after CMD
    # ends; stdin is passed on explicitly (a background job would get
    # /dev/null).
    "$@" <&0 &
    child=$!
    status=0
    while :; do
        wait "$child" && status=0 || status=$?
        # wait returns early (status > 128) when a trapped signal arrives.
        kill -0 "$child" 2>/dev/null || break
    done
    child=
    [[ -z $signal ]] || status=$((128 + $(kill -l "$signal")))
    # Not exit: shellcheck would take the trap handlers for dead code.
    return "$status"
}

main "$@"
