"""DPO throughput and memory: posttrain's packed preference loop against TRL's DPOTrainer.

Run it with the interpreter that has both (built by benchmarks/setup_bench_venv.sh):

    .venv-bench/bin/python benchmarks/dpo_vs_trl.py                  # 3 trials per mode, ~15 min on 2 idle cores
    .venv-bench/bin/python benchmarks/dpo_vs_trl.py --trials 1 --steps 3   # a quick look

The driver prepares everything once: a byte-level BPE trained on the tiny world, a random-init Llama
saved as an HF directory (every trial loads the same weights), and preference pairs from the tiny
world's train prompts (chosen = the reference solution, rejected = the family's corruption of it),
tokenized with posttrain's chat template. TRL gets the same pairs as text, split where posttrain's
loss mask starts and ends, so both tokenize to the same ids (checked per trial: tokens compared).

Modes, one subprocess per trial, alternating and rotating their order each round:
- posttrain: reference pass (no grad, packed rows of `reference_batch_tokens`), then training with
  chosen and rejected packed side by side into padding-free rows of `micro_batch_tokens`;
- trl_precompute: DPOTrainer with precompute_ref_log_probs=True (reference pass before training,
  batch `precompute_ref_batch_size`), padded batches of chosen + rejected;
- trl_live: DPOTrainer with a live reference model (one more forward per step).

Same model, pairs, pairs per optimizer step (TRL: per_device_train_batch_size x
gradient_accumulation_steps), steps (one pass over the pairs), sigmoid loss, beta, learning rate,
AdamW settings, float32 on CPU and thread count. Reported per trial: end-to-end pairs/s = pairs /
(reference pass + every training step), training pairs/s and real (non-padding) tokens/s over the
steps after `--warmup`, and peak resident memory (VmHWM) above the resident memory after imports.
The driver prints medians and the ratios against the best TRL mode.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_vs_trl import CHILD_ENV, machine, resident_kib  # noqa: E402  (the SFT benchmark's measurement helpers)

MODES = ("posttrain", "trl_precompute", "trl_live")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = ROOT / "benchmarks" / "out" / "dpo_vs_trl"


@dataclasses.dataclass
class Settings:
    """What every mode shares."""

    hidden_size: int = 192  # the tiny world's base model shape
    num_layers: int = 6
    num_heads: int = 6
    num_kv_heads: int = 2
    intermediate_size: int = 512
    vocab_size: int = 2048
    max_length: int = 1024  # no tiny-world pair is longer; nothing is truncated in either mode
    pairs_per_step: int = 8
    trl_micro_batch_pairs: int = 4  # TRL: per_device_train_batch_size (x gradient accumulation = pairs_per_step)
    micro_batch_tokens: int = 2048  # posttrain: tokens per micro-batch (one forward), whole pairs
    reference_batch_tokens: int = 4096  # posttrain: tokens per forward of the reference pass
    trl_reference_batch_pairs: int = 16  # TRL: precompute_ref_batch_size
    steps: int = 6  # one pass over steps x pairs_per_step pairs
    warmup: int = 1  # first optimizer steps left out of the training-rate timing
    beta: float = 0.1
    lr: float = 1e-5
    threads: int = 2
    seed: int = 0

    @property
    def pairs(self) -> int:
        return self.steps * self.pairs_per_step

    @property
    def trl_accumulation(self) -> int:
        return self.pairs_per_step // self.trl_micro_batch_pairs


# ---------------------------------------------------------------- data and model (driver, once)


def world_pairs(n: int, seed: int) -> list:
    """n PreferencePairs, round-robin over the families: reference solution vs its corruption."""
    from posttrain.data.records import PreferencePair
    from posttrain.tinyworld import world

    families = list(world.FAMILIES.values())
    per_family = -(-n // len(families))
    rng = random.Random(seed)
    prompts = {f.name: f.generate_prompts("train", per_family, seed) for f in families}
    pairs = []
    for i in range(per_family):
        for family in families:
            prompt = prompts[family.name][i]
            chosen = family.reference_solution(prompt)
            pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=family.corrupt(prompt, chosen, rng)))
    return pairs[:n]


def trimmed(example: dict) -> dict:
    """The sequence up to its last loss token (the chat template's newline after the end of turn predicts nothing)."""
    last = max(i for i, m in enumerate(example["loss_mask"]) if m)
    return {"input_ids": example["input_ids"][: last + 1], "loss_mask": example["loss_mask"][: last + 1]}


def prepare(settings: Settings, work_dir: Path) -> dict[str, Any]:
    """Tokenizer, model and tokenized pairs under work_dir; TRL's text view of the same pairs."""
    from posttrain.data.bpe import train_bytelevel_bpe
    from posttrain.data.lengths import LengthPolicy
    from posttrain.models.loading import random_init_causal_lm, save_causal_lm
    from posttrain.stages.tinyworld_pretrain import family_text
    from posttrain.tinyworld.corpus import world_corpus
    from posttrain.train.preference import tokenize_pair

    docs = list(world_corpus(settings.seed, 2000))
    tokenizer = train_bytelevel_bpe(docs + family_text(settings.seed, 100, "chatml"), settings.vocab_size, "chatml")
    model = random_init_causal_lm(
        "llama", vocab_size=len(tokenizer), hidden_size=settings.hidden_size, num_layers=settings.num_layers,
        num_heads=settings.num_heads, num_kv_heads=settings.num_kv_heads, intermediate_size=settings.intermediate_size,
        max_position_embeddings=settings.max_length, seed=settings.seed, tie_word_embeddings=True,
    )
    save_causal_lm(model, tokenizer, work_dir / "model")
    policy = LengthPolicy(max_tokens=settings.max_length)
    rows = []
    for pair in world_pairs(settings.pairs, settings.seed):
        example, reason = tokenize_pair(tokenizer, pair, "chatml", policy)
        if reason:
            raise RuntimeError(f"pair {pair.id} cannot train: {reason}")
        chosen, rejected = trimmed(example["chosen"]), trimmed(example["rejected"])
        start = next(i for i, m in enumerate(chosen["loss_mask"]) if m)
        decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
        rows.append({"chosen": chosen, "rejected": rejected, "chosen_reward": 0.0, "rejected_reward": 0.0,
                     "text": {"prompt": decode(chosen["input_ids"][:start]),
                              "chosen": decode(chosen["input_ids"][start:]),
                              "rejected": decode(rejected["input_ids"][start:])}})
    with open(work_dir / "pairs.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    lengths = [len(r[s]["input_ids"]) for r in rows for s in ("chosen", "rejected")]
    return {"vocab_size": len(tokenizer), "params": sum(p.numel() for p in model.parameters()), "pairs": len(rows),
            "mean_sequence_tokens": statistics.mean(lengths), "max_sequence_tokens": max(lengths),
            "loss_token_share": sum(sum(r[s]["loss_mask"]) for r in rows for s in ("chosen", "rejected")) / sum(lengths)}


# ---------------------------------------------------------------- child: posttrain


def run_posttrain(model_dir: Path, rows: list[dict], settings: Settings) -> dict[str, Any]:
    """The dpo stage's path: reference pass, then PreferencePlan + Trainer.fit (no checkpoint, no HF save)."""
    from posttrain.losses.preference import bind_loss
    from posttrain.models.loading import load_causal_lm
    from posttrain.train.config import TrainConfig
    from posttrain.train.distributed import init_distributed
    from posttrain.train.engine import Trainer, plan_total_steps
    from posttrain.train.preference import PreferencePlan, preference_loss_fn, reference_logps

    config = TrainConfig(lr=settings.lr, schedule="constant", weight_decay=0.0, betas=(0.9, 0.95), max_grad_norm=1.0,
                         micro_batch_tokens=settings.micro_batch_tokens, max_steps=settings.steps, epochs=1,
                         seed=settings.seed, dtype="float32", log_every=1)
    model, _ = load_causal_lm(model_dir)
    ctx = init_distributed()
    start = time.perf_counter()
    reference = reference_logps(model, rows, settings.reference_batch_tokens, config.logprob_chunk_size, ctx.device)
    pairs = [{**row, "reference": tuple(lp)} for row, lp in zip(rows, reference.tolist())]
    reference_seconds = time.perf_counter() - start
    plan = PreferencePlan(pairs, settings.pairs_per_step, config.micro_batch_tokens, 1, config.seed, ctx)
    step_tokens = [sum(batch.input_ids.numel() for batch in step) for step in plan.steps(0)]
    ends, losses = [], []

    def log_fn(row: dict[str, Any]) -> None:
        ends.append(time.perf_counter())
        losses.append(row["loss"])

    loss = bind_loss("dpo", beta=settings.beta)
    trainer = Trainer(model, config, preference_loss_fn(loss, settings.beta, config.logprob_chunk_size),
                      total_steps=plan_total_steps(plan, config.max_steps), checkpoint_dir=None, log_fn=log_fn, ctx=ctx)
    train_start = time.perf_counter()
    trainer.fit(plan)
    return {"reference_seconds": reference_seconds, "train_start": train_start, "step_ends": ends,
            "step_real_tokens": step_tokens, "step_computed_tokens": step_tokens, "losses": losses,
            "config": config.model_dump(mode="json")}


# ---------------------------------------------------------------- child: TRL


def trl_config_kwargs(mode: str, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Every DPOConfig field this benchmark sets; the rest are TRL's defaults (each trial stores the full config)."""
    common = dict(
        output_dir=str(out_dir), use_cpu=True, bf16=False, fp16=False,  # float32, like posttrain on CPU
        gradient_checkpointing=False,  # TRL defaults to True; posttrain does not recompute activations
        learning_rate=settings.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,  # = posttrain's AdamW
        max_steps=settings.steps, seed=settings.seed, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, beta=settings.beta, loss_type=["sigmoid"], max_length=settings.max_length,
        per_device_train_batch_size=settings.trl_micro_batch_pairs,
        gradient_accumulation_steps=settings.trl_accumulation, dataloader_drop_last=False,
    )
    if mode == "trl_precompute":
        return {**common, "precompute_ref_log_probs": True,
                "precompute_ref_batch_size": settings.trl_reference_batch_pairs}
    if mode == "trl_live":
        return common
    raise ValueError(f"unknown TRL mode {mode!r}")


def run_trl(mode: str, model_dir: Path, rows: list[dict], settings: Settings, out_dir: Path) -> dict[str, Any]:
    """TRL's DPOTrainer on the same pairs (as text that tokenizes to the same ids); steps timed by a callback."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    reference_seconds = [0.0]

    class CountingDPOTrainer(DPOTrainer):
        """Times the reference pass and counts real / computed tokens per micro-batch; the math is TRL's own."""

        real_tokens = computed_tokens = 0

        def _precompute_ref_logps(self, *args, **kwargs):
            start = time.perf_counter()
            out = super()._precompute_ref_logps(*args, **kwargs)
            reference_seconds[0] += time.perf_counter() - start
            return out

        def training_step(self, model, inputs, *args, **kwargs):
            self.computed_tokens += inputs["input_ids"].numel()
            self.real_tokens += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *args, **kwargs)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends, self.real, self.computed, self.losses = [], [], [], []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            self.real.append(trainer.real_tokens)
            self.computed.append(trainer.computed_tokens)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype="float32")
    ref_model = None
    if mode == "trl_live":
        ref_model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype="float32")
    dataset = Dataset.from_list([row["text"] for row in rows])
    args = DPOConfig(**trl_config_kwargs(mode, settings, out_dir))
    clock = StepClock()
    trainer = CountingDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                                 processing_class=tokenizer, callbacks=[clock])
    same_ids = _same_ids(trainer.train_dataset, rows)
    train_start = time.perf_counter()
    trainer.train()
    return {"reference_seconds": reference_seconds[0], "train_start": train_start, "step_ends": clock.ends,
            "step_real_tokens": _diffs(clock.real), "step_computed_tokens": _diffs(clock.computed),
            "losses": clock.losses, "config": json.loads(args.to_json_string()), "same_token_ids": same_ids}


def _same_ids(dataset, rows: list[dict]) -> bool:
    """Whether TRL's tokenization of every pair equals posttrain's (prompt + answer ids, both answers)."""
    for example, row in zip(dataset, rows):
        chosen = example["prompt_ids"] + example["chosen_ids"]
        rejected = example["prompt_ids"] + example["rejected_ids"]
        if chosen != row["chosen"]["input_ids"] or rejected != row["rejected"]["input_ids"]:
            return False
    return len(dataset) == len(rows)


def _diffs(cumulative: list[int]) -> list[int]:
    return [b - a for a, b in zip([0] + cumulative[:-1], cumulative)]


# ---------------------------------------------------------------- child: one trial


def child(mode: str, work_dir: Path, settings: Settings, result_path: Path) -> None:
    import torch
    import transformers

    from posttrain.models.runtime import set_cpu_threads

    if mode != "posttrain":
        import datasets  # noqa: F401  (imported before the baseline, like posttrain's own imports)
        import trl  # noqa: F401
    set_cpu_threads(settings.threads)
    baseline_kib = resident_kib("VmRSS")
    with open(work_dir / "pairs.jsonl") as f:
        rows = [json.loads(line) for line in f]
    if mode == "posttrain":
        run = run_posttrain(work_dir / "model", rows, settings)
    else:
        run = run_trl(mode, work_dir / "model", rows, settings, work_dir / f"trl_{mode}")
    result = {**run, "mode": mode, "baseline_kib": baseline_kib, "peak_kib": resident_kib("VmHWM"),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__}
    result.update(summarise_trial(result, settings))
    result_path.write_text(json.dumps(result))


def summarise_trial(run: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """End-to-end pairs/s (reference pass + all steps), steady training pairs/s and tokens/s after warmup."""
    ends, real, computed = run["step_ends"], run["step_real_tokens"], run["step_computed_tokens"]
    if len(ends) != settings.steps:
        raise RuntimeError(f"{run['mode']}: {len(ends)} optimizer steps recorded, expected {settings.steps}")
    w = settings.warmup
    steady = ends[-1] - ends[w - 1] if w else ends[-1] - run["train_start"]
    end_to_end = run["reference_seconds"] + ends[-1] - run["train_start"]
    return {
        "end_to_end_seconds": end_to_end,
        "pairs_per_s": settings.pairs / end_to_end,
        "train_pairs_per_s": settings.pairs_per_step * (settings.steps - w) / steady,
        "tokens_per_s": sum(real[w:]) / steady,
        "computed_tokens_per_s": sum(computed[w:]) / steady,
        "padding_share": 1 - sum(real) / sum(computed),
        "peak_above_baseline_mib": (run["peak_kib"] - run["baseline_kib"]) / 1024,
    }


# ---------------------------------------------------------------- driver


def run_trial(mode: str, trial: int, work_dir: Path, settings: Settings, timeout: int) -> dict[str, Any]:
    result_path = work_dir / f"result_{mode}_{trial}.json"
    result_path.unlink(missing_ok=True)
    env = {**os.environ, **CHILD_ENV, "OMP_NUM_THREADS": str(settings.threads), "TQDM_DISABLE": "1"}
    command = [sys.executable, __file__, "--child", mode, "--work-dir", str(work_dir),
               "--settings", json.dumps(dataclasses.asdict(settings)), "--result", str(result_path)]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} trial {trial} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(result_path.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    return result


def report(by_mode: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Print the table of medians and the verdict against the target; returns the summary."""
    print(f"{'mode':<16}{'pairs/s e2e':>12}{'(min-max)':>14}{'ref s':>7}{'train p/s':>10}{'tokens/s':>9}"
          f"{'pad%':>6}{'peak+MiB':>9}{'peakMiB':>8}{'loss@end':>9}")
    summary: dict[str, Any] = {}
    for mode, results in by_mode.items():
        med = lambda key: statistics.median(r[key] for r in results)  # noqa: E731
        pps = [r["pairs_per_s"] for r in results]
        row = {"pairs_per_s": med("pairs_per_s"), "min": min(pps), "max": max(pps),
               "reference_seconds": med("reference_seconds"), "train_pairs_per_s": med("train_pairs_per_s"),
               "tokens_per_s": med("tokens_per_s"), "padding_share": med("padding_share"),
               "peak_above_baseline_mib": med("peak_above_baseline_mib"),
               "peak_mib": statistics.median(r["peak_kib"] / 1024 for r in results),
               "final_loss": statistics.median(r["losses"][-1] for r in results), "trials": len(results)}
        if mode != "posttrain":
            row["same_token_ids"] = all(r["same_token_ids"] for r in results)
        summary[mode] = row
        print(f"{mode:<16}{row['pairs_per_s']:>12.2f}{'(%.2f-%.2f)' % (row['min'], row['max']):>14}"
              f"{row['reference_seconds']:>7.1f}{row['train_pairs_per_s']:>10.2f}{row['tokens_per_s']:>9.0f}"
              f"{100 * row['padding_share']:>6.1f}{row['peak_above_baseline_mib']:>9.0f}{row['peak_mib']:>8.0f}"
              f"{row['final_loss']:>9.4f}")
    print(f"{'GPU':<16}not measured (no GPU drawn)")
    trl_modes = [m for m in summary if m != "posttrain"]
    if "posttrain" in summary and trl_modes:
        best = max(trl_modes, key=lambda m: summary[m]["pairs_per_s"])
        ours = summary["posttrain"]
        speed = ours["pairs_per_s"] / summary[best]["pairs_per_s"]
        tokens = ours["tokens_per_s"] / summary[best]["tokens_per_s"]
        memory = ours["peak_above_baseline_mib"] / summary[best]["peak_above_baseline_mib"]
        verdict = "MET" if speed >= 2 and memory <= 1 else "NOT MET"
        print(f"posttrain / best TRL ({best}): {speed:.2f}x pairs/s end to end, {tokens:.2f}x real tokens/s, "
              f"{memory:.2f}x peak memory above baseline -> target (>= 2x pairs/s at <= 1x memory) {verdict}")
        summary["ratio"] = {"best_trl_mode": best, "pairs_per_s": speed, "tokens_per_s": tokens,
                            "peak_memory": memory, "verdict": verdict}
    return summary


def drive(args: argparse.Namespace) -> None:
    settings = Settings(steps=args.steps, warmup=args.warmup, threads=args.threads)
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    before = machine()
    print(f"machine: {before}")
    data = prepare(settings, work_dir)
    print(f"data: {data}")
    print(f"batching: {settings.pairs_per_step} pairs/step x {settings.steps} steps; posttrain rows of "
          f"{settings.micro_batch_tokens} tokens (reference pass {settings.reference_batch_tokens}); TRL "
          f"{settings.trl_micro_batch_pairs} pairs x {settings.trl_accumulation} accumulation")
    for mode in MODES[1:]:
        kwargs = trl_config_kwargs(mode, settings, work_dir / f"trl_{mode}")
        print(f"TRL {mode}: DPOConfig(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "output_dir") + ")")
    modes = [m for m in MODES if m in args.modes]
    by_mode: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for trial in range(args.trials):
        for mode in modes[trial % len(modes):] + modes[: trial % len(modes)]:  # rotate the order each round
            result = run_trial(mode, trial, work_dir, settings, args.trial_timeout)
            by_mode[mode].append(result)
            print(f"trial {trial} {mode:<16} {result['pairs_per_s']:6.2f} pairs/s e2e  "
                  f"(ref {result['reference_seconds']:.1f} s)  {result['tokens_per_s']:6.0f} tokens/s  "
                  f"peak +{result['peak_above_baseline_mib']:.0f} MiB  loss {result['losses'][-1]:.4f}  "
                  f"load {os.getloadavg()[0]:.2f}  ({result['wall_seconds']:.0f} s)", flush=True)
    summary = report(by_mode)
    after = os.getloadavg()
    print(f"load average before {before['loadavg']}, after {after}")
    out = {"machine": before, "loadavg_after": after, "settings": dataclasses.asdict(settings), "data": data,
           "summary": summary, "trials": {m: [{k: v for k, v in r.items() if k != "step_ends"} for r in rs]
                                          for m, rs in by_mode.items()}}
    (work_dir / "results.json").write_text(json.dumps(out, indent=1))
    print(f"results: {work_dir / 'results.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=3, help="trials per mode")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="optimizer steps per trial (one pass)")
    parser.add_argument("--warmup", type=int, default=Settings.warmup, help="first steps left out of the training rate")
    parser.add_argument("--threads", type=int, default=Settings.threads, help="torch threads in every trial")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR))
    parser.add_argument("--trial-timeout", type=int, default=600, help="seconds before a trial is killed")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.work_dir), Settings(**json.loads(args.settings)), Path(args.result))
    else:
        drive(args)


if __name__ == "__main__":
    main()
