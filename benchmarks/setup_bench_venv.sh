#!/usr/bin/env bash
# Build .venv-bench: ONE interpreter with posttrain and TRL, kept apart from the project's .venv
# (TRL's requirements could move shared packages there). Re-running it is safe.
#
#   bash benchmarks/setup_bench_venv.sh            # then: .venv-bench/bin/python benchmarks/sft_vs_trl.py
#
# Order matters: torch goes in first, pinned, so that nothing later pulls a multi-GB CUDA build
# (on the CPU machines the pin resolves to the CPU wheel on disk). Every later install is checked
# with --dry-run first and refused if it would replace torch.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.venv-bench}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"
TRL_PIN="${TRL_PIN:-trl==1.16.0}"
PY="$VENV/bin/python"

test -x "$PY" || python3 -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip

if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "$TORCH_PIN"
fi
TORCH_BEFORE="$("$PY" -c 'import torch; print(torch.__version__)')"

# Install "$@" only if pip's plan leaves torch alone.
install_keeping_torch() {
  local report
  report="$(mktemp)"
  "$PY" -m pip install -q --dry-run --report "$report" "$@"
  if "$PY" - "$report" <<'EOF'
import json, sys
plan = json.load(open(sys.argv[1]))["install"]
names = [item["metadata"]["name"].lower() for item in plan]
bad = [n for n in names if n == "torch" or n.startswith("nvidia-") or n == "triton"]
sys.exit(1 if bad else 0)
EOF
  then
    "$PY" -m pip install -q "$@"
  else
    echo "refusing: installing $* would replace torch or pull CUDA packages (see $report)" >&2
    exit 1
  fi
  rm -f "$report"
}

install_keeping_torch "$TRL_PIN" "transformers>=5,<6" datasets accelerate
install_keeping_torch pydantic pyyaml rich safetensors tokenizers peft jinja2 numpy psutil
"$PY" -m pip install -q -e "$ROOT" --no-deps

TORCH_AFTER="$("$PY" -c 'import torch; print(torch.__version__)')"
if [ "$TORCH_BEFORE" != "$TORCH_AFTER" ]; then
  echo "torch changed from $TORCH_BEFORE to $TORCH_AFTER" >&2
  exit 1
fi
"$PY" - <<'EOF'
import torch, transformers, trl, posttrain
print(f"bench venv ready: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
EOF
