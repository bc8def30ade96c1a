#!/bin/bash
# 82-kill9-no-lost-writes with 3 cycles per backend: the quick tier's share
# of it.
# vm-timeout: 400
CYCLES=3 exec bash "${BASH_SOURCE%/*}/82-kill9-no-lost-writes.sh"
