#!/bin/bash
# Four mem devices in one daemon, of different sizes and queue counts. fio
# writes and verifies all four at the same time (one fio per device, each
# checked on its own). Then a distinct pattern goes to the same offsets of
# every device and each device reads back its own pattern only: no request
# lands on the wrong device or in another device's memory.
# vm-tier: full
# vm-timeout: 120
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd fio dd sha256sum

names=(m0 m1 m2 m3)
declare -A size_mib=([m0]=64 [m1]=96 [m2]=128 [m3]=192)
declare -A queues=([m0]=1 [m1]=2 [m2]=1 [m3]=2)
declare -A depth=([m0]=32 [m1]=64 [m2]=128 [m3]=16)

cfg=$CASE_DIR/config
for n in "${names[@]}"; do
    write_spec "$cfg" "$n" "{\"name\":\"$n\",\"backend\":{\"type\":\"mem\",\"size\":\"${size_mib[$n]}MiB\"},\"queues\":${queues[$n]},\"queue_depth\":${depth[$n]}}"
done
start_ublkd "$cfg" --start-timeout 10

declare -A dev=()
for n in "${names[@]}"; do
    dev[$n]=$(wait_live "$n" 20)
done

# Four distinct devices, each with its own geometry.
seen=$(printf '%s\n' "${dev[@]}" | sort -u | wc -l)
((seen == 4)) || fail "four devices share block device nodes: ${dev[*]}"
for n in "${names[@]}"; do
    d=${dev[$n]}
    s=$(dev_size "$d")
    ((s == size_mib[$n] << 20)) || fail "$n ($d) is $s bytes, want $((size_mib[$n] << 20))"
    nq=$(compgen -G "/sys/block/${d#/dev/}/mq/*" | wc -l)
    ((nq == queues[$n])) || fail "$n ($d) has $nq hardware queues, want ${queues[$n]}"
done

# run_fio_all WHAT [FIO ARGS...]: one fio per device, all at once, each on
# its own offset range (a mixup between devices shows as a verify failure)
# with its own exit status and output.
run_fio_all() {
    local what=$1 n rc
    shift
    local -A pid=()
    local bad=()
    log "fio $what on all four devices concurrently"
    for n in "${names[@]}"; do
        fio --name="v-$n" --filename="${dev[$n]}" --direct=1 --ioengine=io_uring \
            --rw=randwrite --bsrange=512-64k --iodepth=32 --size=8M --offset=4M \
            --verify=crc32c --verify_fatal=1 "$@" \
            >"$CASE_DIR/fio-$what-$n.out" 2>&1 &
        pid[$n]=$!
    done
    for n in "${names[@]}"; do
        rc=0
        wait "${pid[$n]}" || rc=$?
        if ((rc != 0)); then
            cat "$CASE_DIR/fio-$what-$n.out" >&2
            bad+=("$n (status $rc)")
        else
            grep -E '^ *(write|read):' "$CASE_DIR/fio-$what-$n.out" | sed "s/^ */$n: /" >&2
        fi
    done
    ((${#bad[@]} == 0)) || fail "concurrent fio $what failed on: ${bad[*]}"
}

run_fio_all verify --do_verify=1
log "concurrent fio verify done"

# Cross-check: a different 2 MiB random pattern at the same offsets of each
# device (the start, where fio did not write, and the end), then every device
# must read back exactly its own pattern. (Few processes: forks are slow
# under TCG.)
declare -A want=()
for n in "${names[@]}"; do
    dd if=/dev/urandom of="$CASE_DIR/pat-$n" bs=1M count=2 status=none
    sum=$(sha256sum <"$CASE_DIR/pat-$n")
    want[$n]=${sum%% *}
done
for n in "${names[@]}"; do
    d=${dev[$n]}
    last=$((size_mib[$n] - 2))
    dd if="$CASE_DIR/pat-$n" of="$d" bs=1M seek=0 oflag=direct conv=fsync status=none ||
        fail "writing the pattern to the start of $n failed"
    dd if="$CASE_DIR/pat-$n" of="$d" bs=1M seek="$last" oflag=direct conv=fsync status=none ||
        fail "writing the pattern to the end of $n failed"
done
for n in "${names[@]}"; do
    d=${dev[$n]}
    last=$((size_mib[$n] - 2))
    for at in 0 "$last"; do
        got=$(dd if="$d" bs=1M skip="$at" count=2 iflag=direct status=none | sha256sum)
        got=${got%% *}
        [[ $got == "${want[$n]}" ]] && continue
        for o in "${names[@]}"; do
            [[ $got == "${want[$o]}" ]] && fail "$n ($d) at ${at} MiB holds the pattern written to $o"
        done
        fail "$n ($d) at ${at} MiB does not read back its pattern"
    done
done
log "each device reads back its own pattern"

# The fio data between the patterns is still intact everywhere: the same
# jobs (same seeds, so the same blocks) only read and verify this time.
run_fio_all reverify --verify_only=1

stop_ublkd 20
for n in "${names[@]}"; do
    grep -q "device $n removed" "$UBLKD_LOG" || fail "no 'device $n removed' in the log"
done
assert_no_ublk_devices
log "four devices passed"
