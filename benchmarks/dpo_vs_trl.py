"""DPO throughput and memory: posttrain's packed preference loop against TRL's DPOTrainer.

Run it with the interpreter that has both (built by benchmarks/setup_bench_venv.sh):

    .venv-bench/bin/python benchmarks/dpo_vs_trl.py                  # 3 trials per mode, ~15 min on 2 idle cores
    .venv-bench/bin/python benchmarks/dpo_vs_trl.py --trials 1 --steps 3   # a quick look
    python3 benchmarks/dpo_vs_trl.py --profile qwen2-0.5b-gpu             # on a CUDA machine (TRL carried as wheels)

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
- trl_live: DPOTrainer with a live reference model (one more forward per step);
- posttrain_sdpa (asked for by --modes): posttrain with `POSTTRAIN_ATTENTION=sdpa`, i.e. packed rows masked
  by transformers instead of variable-length flash attention (`posttrain.models.attention`); the same as
  posttrain off CUDA.

Same model, pairs, pairs per optimizer step (TRL: per_device_train_batch_size x
gradient_accumulation_steps), steps (one pass over the pairs), sigmoid loss, beta, learning rate,
AdamW settings, float32 on CPU and thread count. Reported per trial: end-to-end pairs/s = pairs /
(reference pass + every training step), training pairs/s and real (non-padding) tokens/s over the
steps after `--warmup`, and peak resident memory (VmHWM) above the resident memory after imports.
The driver prints medians and the ratios against the best TRL mode.

Profiles: `tiny-cpu` (the default, above: the tiny world's model shape and pairs, float32) and
`qwen2-0.5b-gpu`: a random-init Qwen2-0.5B shape (hidden 896, 24 layers, 14 heads / 2 KV, MLP 4864, tied
152k vocabulary: the log-prob over that vocabulary is what costs) on CUDA with float32 weights and bf16
autocast on both sides (posttrain's `dtype: auto`, TRL's `bf16=True`), pairs of prompts of 50-300 and
answers of 50-500 tokens cut from the tiny world's corpus, 8 pairs a step. There peak memory is the
GPU's (`torch.cuda.max_memory_allocated`). `--set key=value` overrides any setting (a CPU smoke run of
the GPU profile: `--profile qwen2-0.5b-gpu --set device=cpu hidden_size=64 num_layers=2 ...`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared trial mechanics sit beside this script
import _trials as shared  # noqa: E402

MODES = ("posttrain", "posttrain_sdpa", "trl_precompute", "trl_live")
DEFAULT_MODES = ("posttrain", "trl_precompute", "trl_live")  # posttrain_sdpa differs from posttrain on CUDA only
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = ROOT / "benchmarks" / "out" / "dpo_vs_trl"


@dataclasses.dataclass
class Settings:
    """What every mode shares."""

    arch: str = "llama"
    hidden_size: int = 192  # the tiny world's base model shape
    num_layers: int = 6
    num_heads: int = 6
    num_kv_heads: int = 2
    intermediate_size: int = 512
    vocab_size: int = 2048  # the tokenizer's (trained on the tiny world)
    model_vocab_size: int = 0  # the model's embedding rows; 0 = the tokenizer's size
    prompt_tokens: tuple[int, int] | None = None  # None: tiny-world pairs; else lengths cut from the corpus
    answer_tokens: tuple[int, int] | None = None
    device: str = "cpu"
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


PROFILES: dict[str, dict[str, Any]] = {
    "tiny-cpu": {},
    "qwen2-0.5b-gpu": dict(
        arch="qwen2", hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
        model_vocab_size=151936, max_length=1024, prompt_tokens=(50, 300), answer_tokens=(50, 500),
        pairs_per_step=8, trl_micro_batch_pairs=8, micro_batch_tokens=16384, reference_batch_tokens=32768,
        trl_reference_batch_pairs=32, steps=16, warmup=2, lr=1e-6, device="cuda",
    ),
}


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


def corpus_pairs(tokenizer: Any, n: int, prompt_tokens: tuple[int, int], answer_tokens: tuple[int, int],
                 seed: int) -> list:
    """n PreferencePairs of corpus text: a prompt of about U(prompt_tokens) tokens, two answers of U(answer_tokens).

    Each text is whole words from a random place in the tiny world's corpus, as many as reach the drawn
    length (counted per word, so the templated sequence is within a few tokens of it).
    """
    from posttrain.data.records import Message, PreferencePair, Prompt
    from posttrain.tinyworld.corpus import world_corpus

    words = " ".join(world_corpus(seed, 3000)).split()
    cost = {w: len(tokenizer.encode(" " + w, add_special_tokens=False)) for w in set(words)}
    rng = random.Random(seed)

    def text(bounds: tuple[int, int]) -> str:
        target, i, used, out = rng.randint(*bounds), rng.randrange(len(words) // 2), 0, []
        while used < target:
            out.append(words[i % len(words)])
            used += cost[out[-1]]
            i += 1
        return " ".join(out)

    return [PreferencePair(prompt=Prompt(messages=[Message(role="user", content=text(prompt_tokens))]),
                           chosen=[Message(role="assistant", content=text(answer_tokens))],
                           rejected=[Message(role="assistant", content=text(answer_tokens))]) for _ in range(n)]


def trimmed(example: dict) -> dict:
    """The sequence up to its last loss token (the chat template's newline after the end of turn predicts nothing)."""
    last = max(i for i, m in enumerate(example["loss_mask"]) if m)
    return {"input_ids": example["input_ids"][: last + 1], "loss_mask": example["loss_mask"][: last + 1]}


def prepare(settings: Settings, work_dir: Path) -> dict[str, Any]:
    """Tokenizer, model and tokenized pairs under work_dir; TRL's text view of the same pairs."""
    from posttrain.data.bpe import train_bytelevel_bpe
    from posttrain.data.lengths import LengthPolicy
    from posttrain.models.loading import load_tokenizer, random_init_causal_lm, save_causal_lm
    from posttrain.stages.tinyworld_pretrain import family_text
    from posttrain.tinyworld.corpus import world_corpus
    from posttrain.train.preference import tokenize_pair

    docs = list(world_corpus(settings.seed, 2000))
    tokenizer = train_bytelevel_bpe(docs + family_text(settings.seed, 100, "chatml"), settings.vocab_size, "chatml")
    model = random_init_causal_lm(
        settings.arch, vocab_size=settings.model_vocab_size or len(tokenizer), hidden_size=settings.hidden_size,
        num_layers=settings.num_layers, num_heads=settings.num_heads, num_kv_heads=settings.num_kv_heads,
        intermediate_size=settings.intermediate_size,
        max_position_embeddings=settings.max_length, seed=settings.seed, tie_word_embeddings=True,
    )
    save_causal_lm(model, tokenizer, work_dir / "model")
    # Tokenize with the tokenizer as loaded from the saved directory, as both sides' trials see it:
    # transformers 5 loads it as the architecture's tokenizer class (Qwen2Tokenizer for qwen2), whose
    # own pre-tokenizer splits digits where the one trained here does not.
    tokenizer = load_tokenizer(work_dir / "model")
    policy = LengthPolicy(max_tokens=settings.max_length)
    rows = []
    if settings.prompt_tokens:
        pairs = corpus_pairs(tokenizer, settings.pairs, settings.prompt_tokens, settings.answer_tokens, settings.seed)
    else:
        pairs = world_pairs(settings.pairs, settings.seed)
    for pair in pairs:
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
            "mean_sequence_tokens": statistics.mean(lengths), "min_sequence_tokens": min(lengths),
            "max_sequence_tokens": max(lengths),
            "loss_token_share": sum(sum(r[s]["loss_mask"]) for r in rows for s in ("chosen", "rejected")) / sum(lengths)}


# ---------------------------------------------------------------- child: posttrain


def run_posttrain(model_dir: Path, rows: list[dict], settings: Settings) -> dict[str, Any]:
    """The dpo stage's path: reference pass, then PreferencePlan + Trainer.fit (no checkpoint, no HF save)."""
    import torch

    from posttrain.losses.preference import bind_loss
    from posttrain.models.loading import load_causal_lm
    from posttrain.train.config import TrainConfig
    from posttrain.train.distributed import init_distributed
    from posttrain.train.engine import Trainer, autocast_dtype, plan_total_steps
    from posttrain.train.preference import PreferencePlan, preference_loss_fn, reference_logps

    config = TrainConfig(lr=settings.lr, schedule="constant", weight_decay=0.0, betas=(0.9, 0.95), max_grad_norm=1.0,
                         micro_batch_tokens=settings.micro_batch_tokens, max_steps=settings.steps, epochs=1,
                         seed=settings.seed, dtype="auto", log_every=1)  # float32 on CPU, bf16 autocast on CUDA
    model, _ = load_causal_lm(model_dir)
    ctx = init_distributed(torch.device(settings.device))
    model.to(ctx.device)
    start = time.perf_counter()
    reference = reference_logps(model, rows, settings.reference_batch_tokens, config.logprob_chunk_size, ctx.device,
                                autocast_dtype(config, ctx.device))
    pairs = [{**row, "reference": tuple(lp)} for row, lp in zip(rows, reference.tolist())]
    reference_seconds = time.perf_counter() - start
    plan = PreferencePlan(pairs, settings.pairs_per_step, config.micro_batch_tokens, 1, config.seed, ctx)
    step_tokens = [sum(batch.input_ids.numel() for batch in step) for step in plan.steps(0)]
    log = shared.StepLog(settings.device)
    loss = bind_loss("dpo", beta=settings.beta)
    trainer = Trainer(model, config, preference_loss_fn(loss, settings.beta, config.logprob_chunk_size),
                      total_steps=plan_total_steps(plan, config.max_steps), checkpoint_dir=None, log_fn=log, ctx=ctx)
    train_start = time.perf_counter()
    trainer.fit(plan)
    return {"reference_seconds": reference_seconds, "train_start": train_start, "step_ends": log.ends,
            "step_real_tokens": step_tokens, "step_computed_tokens": step_tokens, "losses": log.losses,
            "config": config.model_dump(mode="json")}


# ---------------------------------------------------------------- child: TRL


def trl_config_kwargs(mode: str, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Every DPOConfig field this benchmark sets; the rest are TRL's defaults (each trial stores the full config)."""
    common = dict(
        **shared.trl_common_kwargs(out_dir, settings.lr, settings.steps, settings.seed, settings.device),
        beta=settings.beta, loss_type=["sigmoid"], max_length=settings.max_length,
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
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    reference_seconds = [0.0]

    class CountingDPOTrainer(shared.token_counting(DPOTrainer)):
        """Also times the reference pass; the math is TRL's own."""

        def _precompute_ref_logps(self, *args, **kwargs):
            start = time.perf_counter()
            out = super()._precompute_ref_logps(*args, **kwargs)
            reference_seconds[0] += time.perf_counter() - start
            return out

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype="float32")
    ref_model = None
    if mode == "trl_live":
        ref_model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype="float32")
    dataset = Dataset.from_list([row["text"] for row in rows])
    args = DPOConfig(**trl_config_kwargs(mode, settings, out_dir))
    clock = shared.step_clock(lambda: (trainer.real_tokens, trainer.computed_tokens), settings.device)
    trainer = CountingDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                                 processing_class=tokenizer, callbacks=[clock])
    same_ids = _same_ids(trainer.train_dataset, rows)
    train_start = time.perf_counter()
    trainer.train()
    return {"reference_seconds": reference_seconds[0], "train_start": train_start, **clock.steps(),
            "config": json.loads(args.to_json_string()), "same_token_ids": same_ids}


def _same_ids(dataset, rows: list[dict]) -> bool:
    """Whether TRL's tokenization of every pair equals posttrain's (prompt + answer ids, both answers)."""
    for example, row in zip(dataset, rows):
        chosen = example["prompt_ids"] + example["chosen_ids"]
        rejected = example["prompt_ids"] + example["rejected_ids"]
        if chosen != row["chosen"]["input_ids"] or rejected != row["rejected"]["input_ids"]:
            return False
    return len(dataset) == len(rows)


# ---------------------------------------------------------------- child: one trial


def child(mode: str, work_dir: Path, settings: Settings, result_path: Path) -> None:
    baseline_kib = shared.start_child(mode, settings.threads)
    with open(work_dir / "pairs.jsonl") as f:
        rows = [json.loads(line) for line in f]
    if mode.startswith("posttrain"):
        if mode == "posttrain_sdpa":
            from posttrain.models.attention import ATTENTION_ENV

            os.environ[ATTENTION_ENV] = "sdpa"
        run = run_posttrain(work_dir / "model", rows, settings)
    else:
        run = run_trl(mode, work_dir / "model", rows, settings, work_dir / f"trl_{mode}")
    result = {**run, "mode": mode, "baseline_kib": baseline_kib, "peak_kib": shared.resident_kib("VmHWM"),
              **shared.runtime_fields(), **shared.gpu_fields(settings.device)}
    result.update(summarise_trial(result, settings))
    result_path.write_text(json.dumps(result))


def summarise_trial(run: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """End-to-end pairs/s (reference pass + all steps), steady training pairs/s and tokens/s after warmup."""
    real, computed = run["step_real_tokens"], run["step_computed_tokens"]
    w = settings.warmup
    steady = shared.steady_seconds(run, settings.steps, w, "train_start")
    end_to_end = run["reference_seconds"] + run["step_ends"][-1] - run["train_start"]
    return {
        "end_to_end_seconds": end_to_end,
        "pairs_per_s": settings.pairs / end_to_end,
        "train_pairs_per_s": settings.pairs_per_step * (settings.steps - w) / steady,
        "tokens_per_s": sum(real[w:]) / steady,
        "computed_tokens_per_s": sum(computed[w:]) / steady,
        "padding_share": 1 - sum(real) / sum(computed),
        "peak_above_baseline_mib": (run["peak_kib"] - run["baseline_kib"]) / 1024,
        # what the memory target compares: the GPU's peak allocation on CUDA, else resident memory above imports
        "memory_mib": run.get("gpu_peak_mib") or (run["peak_kib"] - run["baseline_kib"]) / 1024,
    }


# ---------------------------------------------------------------- driver


def report(by_mode: dict[str, list[dict[str, Any]]], device: str) -> dict[str, Any]:
    """Print the table of medians and the verdict against the target; returns the summary."""
    print(f"{'mode':<16}{'pairs/s e2e':>12}{'(min-max)':>14}{'ref s':>7}{'train p/s':>10}{'tokens/s':>9}"
          f"{'pad%':>6}{'peak+MiB':>9}{'peakMiB':>8}{'loss@end':>9}{'GPU MiB':>9}")
    summary: dict[str, Any] = {}
    for mode, results in by_mode.items():
        med = lambda key: shared.median_of(results, key)  # noqa: E731
        pps = [r["pairs_per_s"] for r in results]
        row = {"pairs_per_s": med("pairs_per_s"), "min": min(pps), "max": max(pps),
               "reference_seconds": med("reference_seconds"), "train_pairs_per_s": med("train_pairs_per_s"),
               "tokens_per_s": med("tokens_per_s"), "padding_share": med("padding_share"),
               "peak_above_baseline_mib": med("peak_above_baseline_mib"), "memory_mib": med("memory_mib"),
               "peak_mib": statistics.median(r["peak_kib"] / 1024 for r in results),
               "final_loss": statistics.median(r["losses"][-1] for r in results), "trials": len(results)}
        if mode.startswith("trl"):
            row["same_token_ids"] = all(r["same_token_ids"] for r in results)
        summary[mode] = row
        print(f"{mode:<16}{row['pairs_per_s']:>12.2f}{'(%.2f-%.2f)' % (row['min'], row['max']):>14}"
              f"{row['reference_seconds']:>7.1f}{row['train_pairs_per_s']:>10.2f}{row['tokens_per_s']:>9.0f}"
              f"{100 * row['padding_share']:>6.1f}{row['peak_above_baseline_mib']:>9.0f}{row['peak_mib']:>8.0f}"
              f"{row['final_loss']:>9.4f}{row['memory_mib'] if device == 'cuda' else float('nan'):>9.0f}")
    memory_kind = "peak GPU memory" if device == "cuda" else "peak memory above baseline"
    best = shared.best_rival(summary, "pairs_per_s")
    if best:
        ours = summary["posttrain"]
        speed = ours["pairs_per_s"] / summary[best]["pairs_per_s"]
        tokens = ours["tokens_per_s"] / summary[best]["tokens_per_s"]
        memory = ours["memory_mib"] / summary[best]["memory_mib"]
        verdict = "MET" if speed >= 2 and memory <= 1 else "NOT MET"
        print(f"posttrain / best TRL ({best}): {speed:.2f}x pairs/s end to end, {tokens:.2f}x real tokens/s, "
              f"{memory:.2f}x {memory_kind} -> target (>= 2x pairs/s at <= 1x memory) {verdict}")
        summary["ratio"] = {"best_trl_mode": best, "pairs_per_s": speed, "tokens_per_s": tokens,
                            "peak_memory": memory, "verdict": verdict}
    return summary


def drive(args: argparse.Namespace) -> None:
    profile = {**PROFILES[args.profile], **{k: v for k, v in (("steps", args.steps), ("warmup", args.warmup),
                                                                 ("threads", args.threads)) if v is not None}}
    settings = Settings(**{**profile, **shared.parse_overrides(args.set, Settings)})
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    before = {**shared.machine(("torch", "transformers", "trl")), **shared.gpu_name(settings.device)}
    print(f"machine: {before}")
    data = prepare(settings, work_dir)
    print(f"profile {args.profile}: {dataclasses.asdict(settings)}")
    print(f"data: {data}")
    print(f"batching: {settings.pairs_per_step} pairs/step x {settings.steps} steps; posttrain rows of "
          f"{settings.micro_batch_tokens} tokens (reference pass {settings.reference_batch_tokens}); TRL "
          f"{settings.trl_micro_batch_pairs} pairs x {settings.trl_accumulation} accumulation")
    for mode in [m for m in args.modes if m.startswith("trl")]:
        kwargs = trl_config_kwargs(mode, settings, work_dir / f"trl_{mode}")
        print(f"TRL {mode}: " + shared.config_call("DPOConfig", kwargs))
    env = shared.child_env(settings.threads, TQDM_DISABLE="1")
    by_mode = shared.run_rounds(
        [m for m in MODES if m in args.modes], args.trials,
        lambda mode, trial: shared.run_child_trial(__file__, mode, trial, work_dir, dataclasses.asdict(settings),
                                                   env, args.trial_timeout),
        lambda result: (f"{result['pairs_per_s']:6.2f} pairs/s e2e  (ref {result['reference_seconds']:.1f} s)  "
                        f"{result['tokens_per_s']:6.0f} tokens/s  peak +{result['peak_above_baseline_mib']:.0f} MiB  "
                        f"{'GPU %.0f MiB  ' % result['memory_mib'] if settings.device == 'cuda' else ''}"
                        f"loss {result['losses'][-1]:.4f}"),
        width=16)
    summary = report(by_mode, settings.device)
    shared.write_results(work_dir, before, dataclasses.asdict(settings), data, summary, by_mode)


def main() -> None:
    parser = shared.trial_parser(__doc__.split("\n")[0], MODES, Settings, DEFAULT_WORK_DIR,
                                 steps_help="optimizer steps per trial (one pass)",
                                 warmup_help="first steps left out of the training rate", step_defaults=False)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="tiny-cpu",
                        help="model shape, data and device (see the module docstring)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override settings of the profile")
    parser.set_defaults(modes=list(DEFAULT_MODES))
    shared.dispatch(parser.parse_args(), Settings, child, drive)


if __name__ == "__main__":
    main()
