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

source "$ROOT/benchmarks/_venv.sh"
venv_with_torch "$VENV"
install_keeping_torch "$TRL_PIN" "transformers>=5,<6" datasets accelerate
install_keeping_torch pydantic pyyaml rich safetensors tokenizers peft jinja2 numpy psutil
"$PY" -m pip install -q -e "$ROOT" --no-deps
torch_unchanged
"$PY" - <<'EOF'
import torch, transformers, trl, posttrain
print(f"bench venv ready: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
EOF
