#!/usr/bin/env bash
# Configure (once; options given again are applied to an existing build
# directory) and build into a meson build directory: every target, or only
# the ninja targets named after "--".
#   scripts/build.sh [BUILD_DIR] [MESON OPTIONS...] [-- TARGET...]
# e.g. scripts/build.sh build-asan -Db_sanitize=address,undefined -Db_lundef=false
#      scripts/build.sh build -- daemon/ublkd
# Warnings are not errors by default; the test scripts add -Dwerror=true.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-build}
shift || true
options=()
while (($#)) && [[ $1 != -- ]]; do
    options+=("$1")
    shift
done
(($#)) && shift
cd "$top"
if [[ ! -f $dir/build.ninja ]]; then
    meson setup "$dir" "${options[@]}" >/dev/null
elif ((${#options[@]})); then
    meson configure "$dir" "${options[@]}" >/dev/null
fi
ninja -C "$dir" "$@"
