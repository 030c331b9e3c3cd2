#!/usr/bin/env bash
# Build .venv-mergekit: mergekit, the anchor of benchmarks/merge.py, in its own interpreter so that
# its pins (transformers, accelerate, ...) never move the project's .venv. Re-running it is safe.
#
#   bash benchmarks/setup_mergekit_venv.sh        # then: .venv/bin/python benchmarks/merge.py
#
# torch goes in first, pinned to the CPU wheel on this machine's disk, and mergekit's install plan is
# checked with --dry-run: it is refused if it would replace torch or pull CUDA packages (GBs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MERGEKIT_VENV:-$ROOT/.venv-mergekit}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"
MERGEKIT_PIN="${MERGEKIT_PIN:-mergekit==0.1.5}"
PY="$VENV/bin/python"

# benchmarks/merge.py reads each trial's peak memory from GNU time
test -x /usr/bin/time || { apt-get update -qq && apt-get install -y -qq time; }
source "$ROOT/benchmarks/_venv.sh"
venv_with_torch "$VENV"
install_keeping_torch "$MERGEKIT_PIN"
torch_unchanged
"$VENV/bin/mergekit-yaml" --help >/dev/null
"$PY" -c "import importlib.metadata as m, torch; print('mergekit venv ready: mergekit', m.version('mergekit'), 'torch', torch.__version__)"
