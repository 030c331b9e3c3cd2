"""Generated tokens/s of posttrain's HF backend against transformers' `model.generate`, on CPU.

Three ways to draw K samples for each of the same prompts from the same model:

  posttrain       HFGenerator: prompts sorted by length into batches, each prompt prefilled once
                  and its KV cache repeated for its K samples, finished rows dropped from the batch
  hf_loop         a plain per-prompt loop: model.generate(one prompt, num_return_sequences=K)
  hf_batched      model.generate on batches of the same number of prompts (input order, left
                  padded), num_return_sequences=K: the same rows per batch as posttrain

Sampling is T=1, top_p=1, no top-k, the same K and max_new_tokens for all; a sample's tokens are
counted up to and including its first end-of-turn token (or max_new_tokens). The model is a
random-init small Llama with the tiny world's byte-level BPE (chatml); the prompts are tiny-world
eval prompts rendered with the chat template (mixed lengths: tool prompts carry tool schemas).
A random model almost never ends its turn, unlike a chat model, so by default a constant bias is
added to the end-of-turn logit (`--eos-bias`, the same for every method) to give samples of
mixed length; `--eos-bias 0` makes every sample run to max_new_tokens.

Each trial of each method runs in its own subprocess, methods alternating, and the median of the
trials is reported with the machine, its load and the versions.

    .venv/bin/python benchmarks/generate.py                  # defaults: K=4, 24 prompts, 3 trials
    .venv/bin/python benchmarks/generate.py --eos-bias 0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared trial mechanics sit beside this script
from _trials import cpu_model, rotated  # noqa: E402

METHODS = ("posttrain", "hf_loop", "hf_batched")
TEMPLATE = "chatml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--per-family", type=int, default=4, help="eval prompts per tiny-world family (6 families)")
    parser.add_argument("--batch-prompts", type=int, default=8, help="prompts per batch (rows = this x K)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--eos-bias", type=float, default=3.5, help="added to the end-of-turn logit (0: none)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- setup (parent process)


def build_workdir(args: argparse.Namespace, workdir: Path) -> dict:
    """Save the tokenizer, the random-init model and the rendered prompts; return their description."""
    import torch

    from posttrain.data.bpe import train_bytelevel_bpe
    from posttrain.data.chat_templates import end_of_turn_ids
    from posttrain.generate.chat import render_prompt
    from posttrain.models.loading import random_init_causal_lm, save_causal_lm
    from posttrain.tinyworld.corpus import world_corpus
    from posttrain.tinyworld.world import eval_prompts

    torch.set_num_threads(args.threads)
    tokenizer = train_bytelevel_bpe(list(world_corpus(args.seed, 2000)), args.vocab, TEMPLATE)
    eos_ids = end_of_turn_ids(tokenizer, TEMPLATE)
    model = random_init_causal_lm(
        "llama", vocab_size=len(tokenizer), hidden_size=args.hidden, num_layers=args.layers,
        num_heads=max(1, args.hidden // 64), num_kv_heads=max(1, args.hidden // 128),
        intermediate_size=args.hidden * 4, max_position_embeddings=2048, seed=args.seed,
        eos_token_id=eos_ids[0], pad_token_id=tokenizer.convert_tokens_to_ids(tokenizer.pad_token))
    save_causal_lm(model, tokenizer, workdir / "model", eos_token_ids=eos_ids)
    prompts = [render_prompt(tokenizer, p.messages, p.tools) for p in eval_prompts(args.per_family, args.seed)]
    (workdir / "prompts.json").write_text(json.dumps(prompts))
    lengths = sorted(len(p) for p in prompts)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer),
            "prompts": len(prompts), "prompt_tokens_min_median_max": [lengths[0], lengths[len(lengths) // 2],
                                                                      lengths[-1]]}


# ---------------------------------------------------------------- one trial (worker process)


def count_until_eos(token_ids: list[int], eos: set[int]) -> int:
    """Tokens up to and including the first end-of-turn token (all of them if there is none)."""
    for position, token in enumerate(token_ids):
        if token in eos:
            return position + 1
    return len(token_ids)


def run_posttrain(model, tokenizer, prompts, args, eos: set[int]) -> list[int]:
    from posttrain.generate.base import SamplingParams
    from posttrain.generate.hf import HFGenerator

    generator = HFGenerator(model, tokenizer, batch_size=args.batch_prompts * args.k, eos_token_ids=sorted(eos))
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, n=args.k, max_new_tokens=args.max_new_tokens,
                            seed=args.seed)
    return [count_until_eos(g.token_ids, eos) for gens in generator.generate(prompts, params) for g in gens]


def _hf_generate(model, batch: list[list[int]], args, eos: set[int], pad_id: int) -> list[int]:
    """model.generate on left-padded `batch` with K samples each; the new tokens counted per sample."""
    import torch

    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                         num_return_sequences=args.k, max_new_tokens=args.max_new_tokens,
                         eos_token_id=sorted(eos), pad_token_id=pad_id)
    return [count_until_eos(row[width:].tolist(), eos) for row in out]


def run_hf_loop(model, tokenizer, prompts, args, eos: set[int]) -> list[int]:
    pad_id = tokenizer.pad_token_id
    return [n for prompt in prompts for n in _hf_generate(model, [prompt], args, eos, pad_id)]


def run_hf_batched(model, tokenizer, prompts, args, eos: set[int]) -> list[int]:
    pad_id, size = tokenizer.pad_token_id, args.batch_prompts
    return [n for start in range(0, len(prompts), size)
            for n in _hf_generate(model, prompts[start:start + size], args, eos, pad_id)]


RUNNERS = {"posttrain": run_posttrain, "hf_loop": run_hf_loop, "hf_batched": run_hf_batched}


def worker(args: argparse.Namespace) -> dict:
    """One timed run of one method (after a short warm-up of the same method)."""
    import torch

    from posttrain.data.chat_templates import end_of_turn_ids
    from posttrain.models.loading import load_causal_lm

    torch.set_num_threads(args.threads)
    model, tokenizer = load_causal_lm(args.workdir / "model")
    model.eval()
    eos = set(end_of_turn_ids(tokenizer, TEMPLATE))
    if args.eos_bias:
        bias = torch.zeros(model.config.vocab_size)
        bias[sorted(eos)] = args.eos_bias
        # Same for every method: a chat model ends its turns; a random one almost never does.
        model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)
    prompts = json.loads((args.workdir / "prompts.json").read_text())
    run = RUNNERS[args.worker]
    torch.manual_seed(args.seed)
    with torch.inference_mode():
        warm = argparse.Namespace(**{**vars(args), "max_new_tokens": 4})
        run(model, tokenizer, prompts[:2], warm, eos)
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        counts = run(model, tokenizer, prompts, args, eos)
        seconds = time.perf_counter() - start
    return {"method": args.worker, "tokens": sum(counts), "samples": len(counts), "seconds": seconds,
            "tokens_per_s": sum(counts) / seconds, "mean_sample_tokens": sum(counts) / len(counts),
            "hit_max": sum(c == args.max_new_tokens for c in counts)}


# ---------------------------------------------------------------- driver


def machine() -> dict:
    import tokenizers
    import torch
    import transformers

    cpu = cpu_model(default=platform.processor() or "unknown")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def trial(args: argparse.Namespace, method: str, workdir: Path, argv: list[str]) -> dict:
    command = [sys.executable, __file__, *argv, "--worker", method, "--workdir", str(workdir)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="posttrain-bench-generate-") as tmp:
        workdir = Path(tmp)
        setup = build_workdir(args, workdir)
        runs: dict[str, list[dict]] = {m: [] for m in METHODS}
        for t in range(args.trials):
            for method in rotated(METHODS, t):
                result = trial(args, method, workdir, argv)
                runs[method].append(result)
                print(f"trial {t + 1} {method:>10}: {result['tokens_per_s']:7.1f} tok/s "
                      f"({result['tokens']} tokens in {result['seconds']:.2f} s)", flush=True)
    report = summarize(args, setup, runs, load_before, os.getloadavg())
    print(render(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


def summarize(args, setup: dict, runs: dict[str, list[dict]], load_before, load_after) -> dict:
    medians = {m: statistics.median(r["tokens_per_s"] for r in rs) for m, rs in runs.items()}
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "workdir", "out")}
    return {"settings": settings, "setup": setup, "machine": machine(),
            "load_average_before": load_before, "load_average_after": load_after, "runs": runs,
            "median_tokens_per_s": medians,
            "posttrain_over_hf_batched": medians["posttrain"] / medians["hf_batched"],
            "posttrain_over_hf_loop": medians["posttrain"] / medians["hf_loop"]}


def render(report: dict) -> str:
    lines = ["| method | median tok/s | trials (tok/s) | tokens | mean tokens/sample | at max |",
             "|---|---:|---|---:|---:|---:|"]
    for method, results in report["runs"].items():
        trials = ", ".join(f"{r['tokens_per_s']:.1f}" for r in results)
        first = results[0]
        lines.append(f"| {method} | {report['median_tokens_per_s'][method]:.1f} | {trials} | {first['tokens']} | "
                     f"{first['mean_sample_tokens']:.1f} | {first['hit_max']}/{first['samples']} |")
    lines.append(f"\nposttrain / hf_batched = {report['posttrain_over_hf_batched']:.2f}x; "
                 f"posttrain / hf_loop = {report['posttrain_over_hf_loop']:.2f}x")
    lines.append(f"machine: {report['machine']}; load average before {report['load_average_before']}, "
                 f"after {report['load_average_after']}")
    lines.append(f"setup: {report['setup']}; settings: {report['settings']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
