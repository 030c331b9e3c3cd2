# Two commands: `make demo` and `make test`. Both create .venv on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install slow study clean-runs base-model

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Torch first and pinned: on the CPU machines this takes the CPU wheel on disk; where torch
	# (any >= 2.5, e.g. a GPU machine's 2.11) is already importable, it is left alone.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/posttrain run recipes/quickstart.yaml --run-dir runs/quickstart
	@echo "report: runs/quickstart/report.html"

# The later stages' claims at scale (rejection sampling vs references, reward-model accuracy, DPO):
# recipes/tinyworld-study.yaml, about 35 minutes on 2 cores; numbers in the README.
study: $(STAMP)
	$(BIN)/posttrain run recipes/tinyworld-study.yaml --run-dir runs/study
	@echo "report: runs/study/report.html"

test: $(STAMP)
	$(BIN)/python -m pytest

slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

clean-runs:
	rm -rf runs/

# Rebuild the tiny world's tokenizer and base model from its seed (about 30 minutes on 2 cores),
# then ship it. Recommit rarely: every version stays in the history.
base-model: $(STAMP)
	$(BIN)/posttrain tinyworld pretrain --out runs/base-model --set n_docs=30000
	rm -rf posttrain/tinyworld/base_model
	cp -r runs/base-model/model posttrain/tinyworld/base_model
