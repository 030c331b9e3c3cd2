"""SFT throughput and memory: posttrain's packed engine against TRL's SFTTrainer (padded, packed, padding-free).

Run it with the interpreter that has both (built by benchmarks/setup_bench_venv.sh):

    .venv-bench/bin/python -u benchmarks/sft_vs_trl.py              # 3 trials per mode (~15 min with --threads 1
                                                                    # on a loaded 2-core machine; 2 threads: far longer)
    .venv-bench/bin/python -u benchmarks/sft_vs_trl.py --trials 1 --steps 4 --warmup 1   # a quick look

The driver prepares the data once (a byte-level BPE trained on the tiny world, its SFT conversations
tokenized with the assistant mask), then launches one subprocess per trial, alternating the modes and
rotating their order each round, so peak memory is per trial and drifts in machine load spread over
all modes. Every trial trains the same random-init Llama (same seed) on the same token ids with the same
assistant-only loss mask, learning rate, optimizer, schedule, max sequence length, number of steps,
float32 on CPU and the same thread count, at about the same number of real tokens per optimizer step.

Each child reports: wall time and real (non-padding) input tokens of every optimizer step, from which
tokens/s over the steps after the first `--warmup` ones is taken (model load, data preparation and
warmup excluded); peak resident memory (VmHWM) above the resident memory after imports; and the
float32 matmul FLOP/s measured with torch.mm in the same process right after training, so
MFU_cpu = 6 x parameters x tokens/s / that. The driver prints medians over trials.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared trial mechanics sit beside this script
import _trials as shared  # noqa: E402

MODES = ("posttrain", "trl_padded", "trl_packed", "trl_padding_free")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = ROOT / "benchmarks" / "out" / "sft_vs_trl"


@dataclasses.dataclass
class Settings:
    """What every mode shares. The packed modes' accumulation is derived from the data (see `packed_accumulation`)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 1024
    vocab_size: int = 8192  # BPE target; the tiny world's text runs out of merges earlier
    max_length: int = 512  # longest sequence, and the packed row length (posttrain micro_batch_tokens)
    sequences_per_step: int = 16  # padded / padding-free: 8 per micro-batch x 2 accumulation
    micro_batch_sequences: int = 8
    steps: int = 8
    warmup: int = 2  # first optimizer steps left out of the timing
    lr: float = 1e-4
    threads: int = 2
    n_per_family: int = 150
    seed: int = 0
    packed_accumulation: int = 0  # filled in by prepare_data

    @property
    def accumulation(self) -> int:
        return self.sequences_per_step // self.micro_batch_sequences


# ---------------------------------------------------------------- data (driver, once)


def prepare_data(settings: Settings, work_dir: Path) -> dict[str, Any]:
    """Train the tokenizer, tokenize the conversations, write both under work_dir; returns a summary."""
    from posttrain.data.bpe import train_bytelevel_bpe
    from posttrain.data.tokenize import tokenize_conversation
    from posttrain.stages.tinyworld_pretrain import family_text
    from posttrain.tinyworld import world
    from posttrain.tinyworld.corpus import world_corpus

    docs = list(world_corpus(settings.seed, 4000))
    tokenizer = train_bytelevel_bpe(docs + family_text(settings.seed, 200, "chatml"), settings.vocab_size, "chatml")
    examples = []
    for conversation in world.sft_conversations(settings.n_per_family, settings.seed):
        chat = tokenize_conversation(tokenizer, conversation.messages, conversation.tools)
        if len(chat) <= settings.max_length:  # none is longer at the defaults; same filter for every mode
            examples.append({"input_ids": chat.input_ids, "loss_mask": chat.assistant_mask})
    work_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(work_dir / "tokenizer"))
    with open(work_dir / "examples.jsonl", "w") as f:
        for example in examples:
            f.write(json.dumps(example) + "\n")
    lengths = [len(e["input_ids"]) for e in examples]
    settings.packed_accumulation = packed_accumulation(lengths, settings)
    return {
        "vocab_size": len(tokenizer),
        "examples": len(examples),
        "mean_length": statistics.mean(lengths),
        "max_length_seen": max(lengths),
        "loss_tokens_share": sum(sum(e["loss_mask"]) for e in examples) / sum(lengths),
    }


def packed_accumulation(lengths: list[int], settings: Settings) -> int:
    """Packed rows per step carrying about as many real tokens as `sequences_per_step` sequences of mean length."""
    from posttrain.data.packing import pack_best_fit_decreasing

    rows = pack_best_fit_decreasing(lengths, settings.max_length)
    tokens_per_row = sum(lengths) / len(rows)
    return max(1, round(settings.sequences_per_step * statistics.mean(lengths) / tokens_per_row))


# ---------------------------------------------------------------- child: measurements


def matmul_flops(size: int = 2048, repeats: int = 5) -> float:
    """Best float32 torch.mm FLOP/s of this process (threads as set): the CPU's practical peak for MFU."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm up the kernels and thread pool
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def build_model(settings: Settings, tokenizer):
    from posttrain.models.loading import random_init_causal_lm

    return random_init_causal_lm(
        "llama", vocab_size=len(tokenizer), hidden_size=settings.hidden_size, num_layers=settings.num_layers,
        num_heads=settings.num_heads, num_kv_heads=settings.num_kv_heads,
        intermediate_size=settings.intermediate_size, max_position_embeddings=settings.max_length,
        seed=settings.seed, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )


# ---------------------------------------------------------------- child: posttrain


def posttrain_config(settings: Settings):
    from posttrain.train.config import SFTConfig

    return SFTConfig(
        lr=settings.lr, schedule="constant", weight_decay=0.0, betas=(0.9, 0.95), max_grad_norm=1.0,
        micro_batch_tokens=settings.max_length, accumulation=settings.packed_accumulation,
        max_steps=settings.steps, epochs=4, seed=settings.seed, dtype="float32", log_every=1,
    )


def run_posttrain(model, examples: list[dict], settings: Settings) -> dict[str, Any]:
    """run_sft's path (filter, plan, Trainer.fit) without the final save: no checkpoint_dir, no HF write."""
    from posttrain.train.distributed import init_distributed
    from posttrain.train.engine import Trainer, plan_total_steps
    from posttrain.train.sft import SFTData, SFTPlan, sft_loss_fn

    config = posttrain_config(settings)
    ctx = init_distributed()
    plan = SFTPlan(SFTData.filter({"tinyworld": examples}, config.micro_batch_tokens), config, ctx)
    step_tokens, epoch = [], 0  # packed rows hold no padding: every input token is real
    while len(step_tokens) < settings.steps and epoch < config.epochs:
        step_tokens += [sum(batch.input_ids.numel() for batch in step) for step in plan.steps(epoch)]
        epoch += 1
    step_tokens = step_tokens[: settings.steps]
    log = shared.StepLog()
    trainer = Trainer(model, config, sft_loss_fn(config.logprob_chunk_size),
                      total_steps=plan_total_steps(plan, config.max_steps), checkpoint_dir=None, log_fn=log, ctx=ctx)
    start = time.perf_counter()
    trainer.fit(plan)
    return {"start": start, "step_ends": log.ends, "step_real_tokens": step_tokens, "step_computed_tokens": step_tokens,
            "losses": log.losses, "config": config.model_dump(mode="json")}


# ---------------------------------------------------------------- child: TRL


def trl_config_kwargs(mode: str, settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Every SFTConfig field this benchmark sets; the rest are TRL 1.16's defaults (printed in full per trial)."""
    common = {**shared.trl_common_kwargs(out_dir, settings.lr, settings.steps, settings.seed),
              "assistant_only_loss": False}  # the dataset brings the same assistant mask as `assistant_masks`
    if mode == "trl_padded":
        return {**common, "max_length": settings.max_length, "per_device_train_batch_size": settings.micro_batch_sequences,
                "gradient_accumulation_steps": settings.accumulation}
    if mode == "trl_packed":  # bfd packing into rows of max_length; one row per micro-batch, like posttrain
        return {**common, "packing": True, "packing_strategy": "bfd", "max_length": settings.max_length,
                "per_device_train_batch_size": 1, "gradient_accumulation_steps": settings.packed_accumulation}
    if mode == "trl_padding_free":  # TRL refuses max_length without packing here; no sequence is longer anyway
        return {**common, "padding_free": True, "max_length": None,
                "per_device_train_batch_size": settings.micro_batch_sequences,
                "gradient_accumulation_steps": settings.accumulation}
    raise ValueError(f"unknown TRL mode {mode!r}")


def run_trl(mode: str, model, tokenizer, examples: list[dict], settings: Settings, out_dir: Path) -> dict[str, Any]:
    """TRL's SFTTrainer on the same token ids and assistant mask; steps timed by a callback."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_dict({
        "input_ids": [e["input_ids"] for e in examples],
        "assistant_masks": [[int(bit) for bit in e["loss_mask"]] for e in examples],
    })
    args = SFTConfig(**trl_config_kwargs(mode, settings, out_dir))
    clock = shared.step_clock(lambda: (trainer.real_tokens, trainer.computed_tokens))
    trainer = shared.token_counting(SFTTrainer)(model=model, args=args, train_dataset=dataset,
                                                processing_class=tokenizer, callbacks=[clock])
    start = time.perf_counter()
    trainer.train()
    return {"start": start, **clock.steps(), "config": json.loads(args.to_json_string()),
            "padding_free_effective": trainer.padding_free}


# ---------------------------------------------------------------- child: one trial


def child(mode: str, work_dir: Path, settings: Settings, result_path: Path) -> None:
    import transformers

    baseline_kib = shared.start_child(mode, settings.threads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(work_dir / "tokenizer"), local_files_only=True)
    with open(work_dir / "examples.jsonl") as f:
        examples = [json.loads(line) for line in f]
    model = build_model(settings, tokenizer)
    params = sum(p.numel() for p in model.parameters())
    if mode == "posttrain":
        run = run_posttrain(model, examples, settings)
    else:
        run = run_trl(mode, model, tokenizer, examples, settings, work_dir / f"trl_{mode}")
    peak_kib = shared.resident_kib("VmHWM")
    flops = matmul_flops()
    result = {**run, "mode": mode, "params": params, "baseline_kib": baseline_kib, "peak_kib": peak_kib,
              "matmul_flops": flops, **shared.runtime_fields()}
    result.update(summarise_trial(result, settings))
    result_path.write_text(json.dumps(result))


def summarise_trial(run: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """tokens/s over the steps after warmup, real and computed (padding included), and MFU_cpu."""
    real, computed = run["step_real_tokens"], run["step_computed_tokens"]
    w = settings.warmup
    seconds = shared.steady_seconds(run, settings.steps, w, "start")
    real_tps = sum(real[w:]) / seconds
    return {
        "timed_seconds": seconds,
        "tokens_per_s": real_tps,
        "computed_tokens_per_s": sum(computed[w:]) / seconds,
        "real_tokens_per_step": statistics.mean(real),
        "padding_share": 1 - sum(real) / sum(computed),
        "mfu_cpu": 6 * run["params"] * real_tps / run["matmul_flops"],
        "peak_above_baseline_mib": (run["peak_kib"] - run["baseline_kib"]) / 1024,
    }


# ---------------------------------------------------------------- driver


def print_trl_configs(work_dir: Path, settings: Settings) -> None:
    """The SFTConfig kwargs of each TRL mode (the full resolved config is in each trial's result JSON)."""
    for mode in MODES[1:]:
        kwargs = trl_config_kwargs(mode, settings, work_dir / f"trl_{mode}")
        print(f"TRL {mode}: " + shared.config_call("SFTConfig", kwargs))


def report(by_mode: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Print the table of medians and the verdict against the target; returns the summary."""
    header = (f"{'mode':<18}{'tokens/s':>10}{'(min-max)':>16}{'tok/step':>10}{'pad%':>6}"
              f"{'peak+MiB':>10}{'peakMiB':>9}{'MFU_cpu':>9}{'GFLOP/s':>9}{'loss@end':>10}")
    print(header)
    summary = {}
    for mode, results in by_mode.items():
        tps = [r["tokens_per_s"] for r in results]
        row = {
            "tokens_per_s": statistics.median(tps), "min": min(tps), "max": max(tps),
            "real_tokens_per_step": shared.median_of(results, "real_tokens_per_step"),
            "padding_share": shared.median_of(results, "padding_share"),
            "peak_above_baseline_mib": shared.median_of(results, "peak_above_baseline_mib"),
            "peak_mib": statistics.median(r["peak_kib"] / 1024 for r in results),
            "mfu_cpu": shared.median_of(results, "mfu_cpu"),
            "matmul_gflops": shared.median_of(results, "matmul_flops") / 1e9,
            "final_loss": statistics.median(r["losses"][-1] for r in results), "trials": len(results),
        }
        summary[mode] = row
        spread = f"({row['min']:.0f}-{row['max']:.0f})"
        print(f"{mode:<18}{row['tokens_per_s']:>10.0f}{spread:>16}"
              f"{row['real_tokens_per_step']:>10.0f}{100 * row['padding_share']:>6.1f}"
              f"{row['peak_above_baseline_mib']:>10.0f}{row['peak_mib']:>9.0f}{100 * row['mfu_cpu']:>8.1f}%"
              f"{row['matmul_gflops']:>9.1f}{row['final_loss']:>10.3f}")
    print(f"{'GPU':<18}not measured (no GPU drawn)")
    best = shared.best_rival(summary, "tokens_per_s")
    if best:
        speed = summary["posttrain"]["tokens_per_s"] / summary[best]["tokens_per_s"]
        memory = summary["posttrain"]["peak_above_baseline_mib"] / summary[best]["peak_above_baseline_mib"]
        # Trials of one round ran back to back, so their ratio is less exposed to load drift than the medians'.
        paired = [p["tokens_per_s"] / t["tokens_per_s"] for p, t in zip(by_mode["posttrain"], by_mode[best])]
        verdict = "MET" if speed >= 2 and memory <= 1 else "NOT MET"
        print(f"posttrain / best TRL ({best}): {speed:.2f}x tokens/s, {memory:.2f}x peak memory above baseline "
              f"-> target (>= 2x tokens/s at <= 1x memory) {verdict}")
        print(f"per-round posttrain / {best}: " + ", ".join(f"{r:.2f}x" for r in paired)
              + f" (median {statistics.median(paired):.2f}x)")
        summary["ratio"] = {"best_trl_mode": best, "tokens_per_s": speed, "peak_memory": memory, "verdict": verdict,
                            "per_round_tokens_per_s": paired}
    return summary


def drive(args: argparse.Namespace) -> None:
    settings = Settings(steps=args.steps, warmup=args.warmup, threads=args.threads)
    work_dir = Path(args.work_dir)
    before = shared.machine(("torch", "transformers", "trl"))
    print(f"machine: {before}")
    data = prepare_data(settings, work_dir)
    print(f"data: {data}; packed rows per step: {settings.packed_accumulation} x {settings.max_length} tokens; "
          f"padded/padding-free: {settings.micro_batch_sequences} x {settings.accumulation} sequences")
    print_trl_configs(work_dir, settings)
    env = shared.child_env(settings.threads)
    by_mode = shared.run_rounds(
        [m for m in MODES if m in args.modes], args.trials,
        lambda mode, trial: shared.run_child_trial(__file__, mode, trial, work_dir, dataclasses.asdict(settings),
                                                   env, args.trial_timeout),
        lambda result: (f"{result['tokens_per_s']:8.0f} tokens/s  peak +{result['peak_above_baseline_mib']:.0f} MiB  "
                        f"loss {result['losses'][-1]:.3f}"),
        width=18)
    summary = report(by_mode)
    shared.write_results(work_dir, before, dataclasses.asdict(settings), data, summary, by_mode)


def main() -> None:
    parser = shared.trial_parser(__doc__.split("\n")[0], MODES, Settings, DEFAULT_WORK_DIR,
                                 steps_help="optimizer steps per trial",
                                 warmup_help="first steps left out of the timing")
    shared.dispatch(parser.parse_args(), Settings, child, drive)


if __name__ == "__main__":
    main()
