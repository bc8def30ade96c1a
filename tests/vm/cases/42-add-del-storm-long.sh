#!/bin/bash
# 41-add-del-storm with 1000 cycles.
# vm-tier: full
# vm-timeout: 2400
. "${BASH_SOURCE%/*}/../lib.sh"
add_del_storm 1000
log "1000 add/del cycles passed"
