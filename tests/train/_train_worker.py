"""A toy SFT run for the process-level tests: run directly, under torchrun, or imported (uncut reference).

    python tests/train/_train_worker.py OUT [--kill-step N] [--kill-call N] [--kill-checkpoint N] ...

--kill-step N        SIGKILL itself when step N is logged (before its checkpoint)
--kill-call N        SIGKILL itself inside loss call N (after earlier micro-batches' backward: mid-window)
--kill-checkpoint N  SIGKILL itself while writing checkpoint N (model + optimizer written, state not)
Rank 0 writes OUT/result.json: losses, final weight hash, steps.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _train_fixtures import tiny_model, tiny_tokenizer, toy_examples, weights_hash  # noqa: E402

from posttrain.train import checkpoint as ckpt  # noqa: E402
from posttrain.train import sft  # noqa: E402
from posttrain.train.sft import SFTConfig, run_sft  # noqa: E402


def toy_config(**overrides) -> SFTConfig:
    fields = dict(
        lr=3e-3, weight_decay=0.01, warmup_steps=2, micro_batch_tokens=48, accumulation=2, epochs=2,
        checkpoint_every=2, keep_last=2, log_every=1, seed=7,
    )
    fields.update(overrides)
    return SFTConfig(**fields)


def toy_data() -> dict[str, list[dict]]:
    return {"pattern": toy_examples(24, seed=1), "short": toy_examples(12, seed=2, max_len=8)}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_kills(kill_step: int | None, kill_call: int | None, kill_checkpoint: int | None):
    """Patch seams so the process dies at the requested point; returns the log_fn to use."""
    if kill_call is not None:
        calls = {"n": 0}
        real_loss = sft.sft_loss

        def counting_loss(*args):
            calls["n"] += 1
            if calls["n"] == kill_call:
                _die()
            return real_loss(*args)

        sft.sft_loss = counting_loss
    if kill_checkpoint is not None:
        real_write_json = ckpt._write_json

        def dying_write_json(path, payload):
            if path.name == ckpt.STATE_FILE and payload.get("global_step") == kill_checkpoint:
                _die()
            real_write_json(path, payload)

        ckpt._write_json = dying_write_json

    def log_fn(row):
        if kill_step is not None and row["step"] == kill_step:
            _die()

    return log_fn


def train_toy(out_dir: Path, log_fn=None, **overrides) -> dict:
    """One toy SFT run; returns run_sft's summary plus the hash of the saved weights (gathered under FSDP2)."""
    summary = run_sft(tiny_model(seed=3), tiny_tokenizer(), toy_data(), toy_config(**overrides), out_dir, log_fn=log_fn)
    if int(os.environ.get("RANK", "0")) == 0:
        summary["hash"] = weights_hash(load_file(str(Path(out_dir) / "model" / "model.safetensors")))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-step", type=int)
    parser.add_argument("--kill-call", type=int)
    parser.add_argument("--kill-checkpoint", type=int)
    parser.add_argument("--config", default="{}", help="JSON of SFTConfig overrides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    log_fn = install_kills(args.kill_step, args.kill_call, args.kill_checkpoint)
    summary = train_toy(args.out, log_fn=log_fn, **json.loads(args.config))
    if int(os.environ.get("RANK", "0")) == 0:
        keep = ("steps", "skipped_steps", "losses", "outputs")
        payload = {**{k: summary[k] for k in keep}, "hash": summary["hash"]}
        (args.out / "result.json").write_text(json.dumps(payload))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
