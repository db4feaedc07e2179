#!/usr/bin/env bash
# The GPU check of issue 14 (benchmarks/gpu_check.py), no install needed:
#   bash benchmarks/gpu_check.sh OUT [--smoke]
# Before, on a machine with ../shared: copy the data it trains and scores on into the ignored
# benchmarks/.data (carried to the GPU machine; ../shared does not travel):
#   mkdir -p benchmarks/.data && cp -r ../shared/data/set5 ../shared/data/sun80 benchmarks/.data/
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUT [--smoke]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export SEARCHSR_CACHE="$out/cache"  # the image cache beside the figures: nothing written to ~
exec timeout 480 python3 benchmarks/gpu_check.py "$out" "$@"
