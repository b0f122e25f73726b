#!/usr/bin/env bash
# One GPU, one command (see bench/gpu.py): Qwen2-VL-2B extraction throughput and FLOP utilisation, LightGCN and
# FREEDOM epochs, the 1M-item kNN build; appends its table to bench/RESULTS.md.
#   bench/gpu.sh                                   # on a GPU machine, from anywhere
#   bench/gpu.sh --dry-run --out /tmp/gpu-dry.md   # every part at toy size on the CPU
# Python: $PYTHON, else the repo's .venv, else python3 (a GPU image's own torch + transformers; rmm is found
# through PYTHONPATH, so it need not be installed there).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$python" bench/gpu.py "$@"
