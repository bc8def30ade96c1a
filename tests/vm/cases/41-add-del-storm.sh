#!/bin/bash
# Add/del storms beside devices under I/O, with a kill -9 in the middle of
# an add: 50 cycles, and nothing leaks (fds, memfds, threads, kernel
# devices, state records and mem files are as before the storm); the I/O
# devices see no error. add_del_storm in lib.sh; 42 runs 1000 cycles.
# vm-timeout: 600
. "${BASH_SOURCE%/*}/../lib.sh"
add_del_storm 50
log "50 add/del cycles passed"
