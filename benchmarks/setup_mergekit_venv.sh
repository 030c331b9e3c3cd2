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
test -x "$PY" || python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "$TORCH_PIN"
TORCH_BEFORE="$("$PY" -c 'import torch; print(torch.__version__)')"

report="$(mktemp)"
"$PY" -m pip install -q --dry-run --report "$report" "$MERGEKIT_PIN"
if ! "$PY" - "$report" <<'PYEOF'
import json, sys
names = [item["metadata"]["name"].lower() for item in json.load(open(sys.argv[1]))["install"]]
sys.exit(1 if [n for n in names if n in ("torch", "triton") or n.startswith("nvidia-")] else 0)
PYEOF
then
  echo "refusing: installing $MERGEKIT_PIN would replace torch or pull CUDA packages (see $report)" >&2
  exit 1
fi
rm -f "$report"
"$PY" -m pip install -q "$MERGEKIT_PIN"

TORCH_AFTER="$("$PY" -c 'import torch; print(torch.__version__)')"
if [ "$TORCH_BEFORE" != "$TORCH_AFTER" ]; then
  echo "torch changed from $TORCH_BEFORE to $TORCH_AFTER" >&2
  exit 1
fi
"$VENV/bin/mergekit-yaml" --help >/dev/null
"$PY" -c "import importlib.metadata as m, torch; print('mergekit venv ready: mergekit', m.version('mergekit'), 'torch', torch.__version__)"
