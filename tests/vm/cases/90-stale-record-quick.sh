#!/bin/bash
# 90-stale-record with 2 rounds per backend and way: the quick tier's share
# of it.
# vm-timeout: 300
ROUNDS=2 exec bash "${BASH_SOURCE%/*}/90-stale-record.sh"
