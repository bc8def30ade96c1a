#!/bin/bash
# kill -9 of ublkd under fio with an nbd device (nbdkit, file plugin, two
# queues with multi-conn): the next ublkd recovers the device, its queues
# connect again, and no acknowledged write is lost (3 cycles of
# kill9_verify_cycles in lib.sh).
# vm-tier: full
# vm-timeout: 300
. "${BASH_SOURCE%/*}/../lib.sh"
require_cmd nbdkit fio

img=$CASE_DIR/disk.img
truncate -s 64M "$img"
start_nbdkit srv file "$img"
cfg=$CASE_DIR/config
state=$CASE_DIR/state
write_spec "$cfg" vn "{\"name\":\"vn\",\"backend\":{\"type\":\"nbd\",\"uri\":\"$(nbd_uri srv)\"},\"queues\":2,\"queue_depth\":32}"
start_ublkd "$cfg" --state-dir "$state"
dev=$(wait_live vn 20)
kill9_verify_cycles "$cfg" "$state" vn "$dev" "${CYCLES:-3}"
stop_ublkd 20
assert_no_ublk_devices
stop_nbdkit "$NBDKIT_PID"
