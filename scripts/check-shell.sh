#!/usr/bin/env bash
# Run shellcheck on every shell script in the tree: files ending in .sh and
# files whose first line names sh or bash, tracked by git or new (not
# ignored). Settings: .shellcheckrc.
#   scripts/check-shell.sh [--help]
# Prints shellcheck's findings and exits 1 when there are any.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
command -v shellcheck >/dev/null || { echo "check-shell: shellcheck not found (run scripts/install-deps.sh)" >&2; exit 2; }

scripts=()
while IFS= read -r f; do
    [[ -f $f ]] || continue
    if [[ $f == *.sh ]] || head -n 1 "$f" | grep -qE '^#!.*\b(ba|da|a)?sh\b'; then
        scripts+=("$f")
    fi
# Outside a git checkout: every file but git's own and the build directories'.
done < <(git ls-files --cached --others --exclude-standard 2>/dev/null ||
    find . \( -name .git -o -path './build*' \) -prune -o -type f -print)
((${#scripts[@]})) || { echo "check-shell: no scripts found" >&2; exit 2; }
if shellcheck "${scripts[@]}"; then
    echo "check-shell: ${#scripts[@]} scripts, no findings"
else
    echo "check-shell: findings above (${#scripts[@]} scripts checked)" >&2
    exit 1
fi
