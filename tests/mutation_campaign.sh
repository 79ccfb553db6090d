#!/usr/bin/env bash
# The mutation campaign (docs/testing.md), in one command:
#     bash tests/mutation_campaign.sh [COPY [MUTMUT-RUN-ARGS...]]    (default COPY: /tmp/mutation)
# copies the repository to COPY (mutmut edits the files in place while it runs), starts the warm
# runner there (tests/mutation_runner.py), runs mutmut over the core (mutmut_config.py) and prints
# the results and the CPU time it took. mutmut caches its results in COPY/.mutmut-cache: run again
# on the same COPY, it tests only what changed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
copy=${1:-/tmp/mutation}
shift || true
command -v mutmut > /dev/null || { echo "mutmut is missing: pip install mutmut==2.4.5" >&2; exit 2; }
mkdir -p "$copy"
# the sources, not data, results or git
tar -C "$repo" --exclude=./data --exclude=./results --exclude=./.git --exclude=./.mutmut-cache \
    --exclude='__pycache__' -cf - . | tar -C "$copy" -xf -
cd "$copy"
export PYTHONDONTWRITEBYTECODE=1
rm -f .mutation-runner.sock
python tests/mutation_runner.py serve &
server=$!
trap 'kill $server 2> /dev/null; rm -f .mutation-runner.sock' EXIT
for _ in $(seq 120); do [ -S .mutation-runner.sock ] && break; sleep 1; done
start=$(date +%s)
mutmut run --no-progress "$@" || true   # its exit status encodes the survivors; the results say it
echo "wall time: $(( $(date +%s) - start )) s"
mutmut results || true
tick=$(getconf CLK_TCK)
echo "CPU time of the runner and its tests: $(awk -v t="$tick" '{printf "%.0f", ($14+$15+$16+$17)/t}' \
    /proc/$server/stat) s; of mutmut itself:"
times
