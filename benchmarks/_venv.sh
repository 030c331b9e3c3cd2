# Shared by the setup_*_venv.sh scripts (sourced, not run): a venv whose torch is installed first and
# pinned, and installs that are refused when pip's plan would replace torch or pull CUDA packages (GBs).
# The caller sets PY (the venv's python) and TORCH_PIN before sourcing.

# Create the venv if missing, install the pinned torch if none is importable, remember its version.
venv_with_torch() {
  local venv="$1"
  test -x "$PY" || python3 -m venv "$venv"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "$TORCH_PIN"
  TORCH_BEFORE="$("$PY" -c 'import torch; print(torch.__version__)')"
}

# Install "$@" only if pip's dry-run plan leaves torch alone.
install_keeping_torch() {
  local report
  report="$(mktemp)"
  "$PY" -m pip install -q --dry-run --report "$report" "$@"
  if ! "$PY" - "$report" <<'PYEOF'
import json, sys
names = [item["metadata"]["name"].lower() for item in json.load(open(sys.argv[1]))["install"]]
sys.exit(1 if [n for n in names if n in ("torch", "triton") or n.startswith("nvidia-")] else 0)
PYEOF
  then
    echo "refusing: installing $* would replace torch or pull CUDA packages (see $report)" >&2
    exit 1
  fi
  rm -f "$report"
  "$PY" -m pip install -q "$@"
}

# Fail if anything changed torch after venv_with_torch.
torch_unchanged() {
  local after
  after="$("$PY" -c 'import torch; print(torch.__version__)')"
  if [ "$TORCH_BEFORE" != "$after" ]; then
    echo "torch changed from $TORCH_BEFORE to $after" >&2
    exit 1
  fi
}
