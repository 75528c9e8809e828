#!/bin/bash
# `make bench` / `make bench-quick`: every benchmark in one go, each table printed and appended
# to build/bench/report.md. Runs the four benchmarks even if one fails; exits non-zero if any
# did. Usage: contrib/bench-all.sh [--quick]
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
quick=()
[ "${1:-}" = --quick ] && quick=(--quick)
mkdir -p "$repo/build/bench"
report=$repo/build/bench/report.md
: > "$report"
"$here/bench-deps.sh" || { echo "bench-all: contrib/bench-deps.sh failed" >&2; exit 1; }
failed=()
for bench in bench_transport bench_scale bench bench_mount; do
    printf '\n## %s (%s)\n\n' "contrib/$bench.py ${quick[*]}" "$(date -u '+%Y-%m-%d %H:%M UTC')" \
        | tee -a "$report"
    "$py" "$here/$bench.py" --no-deps "${quick[@]}" | tee -a "$report" || failed+=("$bench")
done
echo "bench-all: tables in $report" >&2
if [ "${#failed[@]}" -gt 0 ]; then
    echo "bench-all: failed: ${failed[*]}" >&2
    exit 1
fi
