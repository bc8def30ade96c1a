#!/usr/bin/env bash
# Configure (once; options given again are applied to an existing build
# directory) and build into a meson build directory.
#   scripts/build.sh [BUILD_DIR] [MESON OPTIONS...]
# e.g. scripts/build.sh build-asan -Db_sanitize=address,undefined -Db_lundef=false
# Warnings are not errors by default; the test scripts add -Dwerror=true.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-build}
shift || true
cd "$top"
if [[ ! -f $dir/build.ninja ]]; then
    meson setup "$dir" "$@" >/dev/null
elif (($#)); then
    meson configure "$dir" "$@" >/dev/null
fi
ninja -C "$dir"
