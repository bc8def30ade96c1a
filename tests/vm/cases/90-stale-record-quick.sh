#!/bin/bash
# 90-stale-record with one round per backend and way: the quick tier's
# share of it (a build without the identity check fails in the first).
# vm-timeout: 300
ROUNDS=1 exec bash "${BASH_SOURCE%/*}/90-stale-record.sh"
