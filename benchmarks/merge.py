"""Model merging: posttrain's streaming merge against mergekit's `mergekit-yaml`, same inputs, same methods.

Build mergekit's interpreter once, then run with the project's:

    bash benchmarks/setup_mergekit_venv.sh
    .venv/bin/python benchmarks/merge.py                      # 6 methods x 2 tools x 3 trials, ~436 MB models
    .venv/bin/python benchmarks/merge.py --trials 1 --methods linear ties --layers 2   # a quick look

The driver writes three random Llama checkpoints once (a base and two 'fine-tuned' variants, base +
0.01 N(0, 1) noise, float32 by default) under benchmarks/out/merge/, then runs every trial in its own
subprocess, alternating the tools and rotating their order each round. For each trial it records the
wall time of the whole process and its peak resident memory (GNU time's maximum resident set size);
a trivial run of each tool that only imports what the merge imports gives the baseline, subtracted
from both. posttrain runs `merge_checkpoints` (the library call behind `posttrain merge`); mergekit
runs its CLI with an equivalent YAML (`dtype: float32`, `--lazy-unpickle`, the same thread count, `-j`).
Both read the inputs from the page cache (every trial after the first), and posttrain fsyncs its
output (an atomic directory), mergekit does not. Medians over trials; the last trial's outputs are
compared tensor by tensor (max |posttrain - mergekit|).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared trial mechanics sit beside this script
from _trials import cpu_model, rotated  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = ROOT / "benchmarks" / "out" / "merge"
MERGEKIT_VENV = ROOT / ".venv-mergekit"
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp", "model_stock")
TOOLS = ("posttrain", "mergekit")
GNU_TIME = "/usr/bin/time"  # Debian's `time` package
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclasses.dataclass
class Settings:
    hidden_size: int = 1024
    num_layers: int = 6
    num_heads: int = 16
    num_kv_heads: int = 8
    intermediate_size: int = 2816
    vocab_size: int = 16000
    dtype: str = "float32"
    density: float = 0.5
    t: float = 0.5
    threads: int = 1  # torch threads of both tools (mergekit's -j); see merge_checkpoints on why 1
    seed: int = 0


# ---------------------------------------------------------------- inputs (driver, once)


def prepare_models(settings: Settings, work_dir: Path) -> dict[str, Path]:
    """base, ft1, ft2 under work_dir/models, rebuilt only when the settings changed."""
    import torch

    from posttrain.data.bpe import train_bytelevel_bpe
    from posttrain.models.loading import random_init_causal_lm, save_state_dict_as_hf

    models_dir = work_dir / "models"
    paths = {name: models_dir / name for name in ("base", "ft1", "ft2")}
    stamp = models_dir / "settings.json"
    wanted = json.dumps({k: v for k, v in dataclasses.asdict(settings).items() if k not in ("density", "t", "threads")})
    if stamp.exists() and stamp.read_text() == wanted and all((p / "config.json").exists() for p in paths.values()):
        return paths
    shutil.rmtree(models_dir, ignore_errors=True)
    tokenizer = train_bytelevel_bpe(["merge models with posttrain and mergekit"] * 20, 300, "chatml")
    dtype = getattr(torch, settings.dtype)
    model = random_init_causal_lm(
        "llama", vocab_size=settings.vocab_size, hidden_size=settings.hidden_size, num_layers=settings.num_layers,
        num_heads=settings.num_heads, num_kv_heads=settings.num_kv_heads, intermediate_size=settings.intermediate_size,
        max_position_embeddings=512, seed=settings.seed, dtype=torch.float32)
    model.config.architectures = [type(model).__name__]  # mergekit (and vLLM) read it; from_config leaves it unset
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    save_state_dict_as_hf(state, model.config, tokenizer, paths["base"], dtype=dtype)
    for index, name in ((1, "ft1"), (2, "ft2")):
        generator = torch.Generator().manual_seed(settings.seed + index)
        noisy = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in state.items()}
        save_state_dict_as_hf(noisy, model.config, tokenizer, paths[name], dtype=dtype)
        del noisy
    stamp.write_text(wanted)
    return paths


# ---------------------------------------------------------------- the two tools' commands

POSTTRAIN_CHILD = r"""
import json, sys
spec = json.loads(sys.argv[1])
import torch
torch.set_num_threads(spec["threads"])
from posttrain.merge.methods import MergeParams
from posttrain.merge.streaming import merge_checkpoints

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

if spec["method"]:
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := current RSS: the peak of the merge alone
    after_imports = status("VmRSS:")
    merge_checkpoints(spec["models"], spec["out"], spec["method"], MergeParams(**spec["params"]), base=spec["base"],
                      threads=spec["threads"])
    print("PEAK_ABOVE_IMPORTS", status("VmHWM:") - after_imports)
"""

MERGEKIT_IMPORTS = r"""
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
import transformers, mergekit.config, mergekit.merge, mergekit.options, mergekit.scripts.run_yaml
transformers.AutoConfig.from_pretrained(sys.argv[2])
"""


def posttrain_params(method: str, settings: Settings) -> tuple[dict[str, Any], bool]:
    """(MergeParams fields, uses base) equivalent to the mergekit YAML below."""
    return {
        "linear": ({"weights": (1.0, 1.0)}, False),
        "task_arithmetic": ({"weights": (1.0, 1.0), "scale": 1.0}, True),
        "ties": ({"density": settings.density}, True),
        "dare_ties": ({"density": settings.density, "seed": settings.seed}, True),
        "slerp": ({"t": settings.t}, False),
        "model_stock": ({}, True),
    }[method]


def posttrain_command(method: str | None, paths: dict[str, Path], out: Path, settings: Settings) -> list[str]:
    params, uses_base = posttrain_params(method, settings) if method else ({}, False)
    spec = {"method": method, "models": [str(paths["ft1"]), str(paths["ft2"])], "out": str(out), "params": params,
            "base": str(paths["base"]) if uses_base else None, "threads": settings.threads}
    return [sys.executable, "-c", POSTTRAIN_CHILD, json.dumps(spec)]


def mergekit_yaml(method: str, paths: dict[str, Path], settings: Settings) -> str:
    """mergekit's config for the same merge: float32 arithmetic, the same weights, density, t."""
    ft1, ft2, base = (str(paths[name]) for name in ("ft1", "ft2", "base"))
    weighted = lambda extra="": (f"  - model: {ft1}\n    parameters: {{weight: 1.0{extra}}}\n"  # noqa: E731
                                 f"  - model: {ft2}\n    parameters: {{weight: 1.0{extra}}}\n")
    body = {
        "linear": "models:\n" + weighted(),
        "task_arithmetic": f"base_model: {base}\nmodels:\n" + weighted() + "parameters: {lambda: 1.0}\n",
        "ties": f"base_model: {base}\nmodels:\n" + weighted(f", density: {settings.density}")
                + "parameters: {normalize: true}\n",
        # normalize: the disjoint mean of TIES (mergekit's dare_ties defaults to a plain sum)
        "dare_ties": f"base_model: {base}\nmodels:\n" + weighted(f", density: {settings.density}")
                     + "parameters: {normalize: true, rescale: true}\n",
        "slerp": f"base_model: {ft1}\nmodels:\n  - model: {ft1}\n  - model: {ft2}\nparameters: {{t: {settings.t}}}\n",
        "model_stock": f"base_model: {base}\nmodels:\n  - model: {ft1}\n  - model: {ft2}\n",
    }[method]
    return f"merge_method: {method}\n{body}dtype: {settings.dtype}\n"


def mergekit_command(method: str | None, paths: dict[str, Path], out: Path, settings: Settings,
                     work_dir: Path) -> list[str]:
    venv = Path(os.environ.get("MERGEKIT_VENV", MERGEKIT_VENV))
    if method is None:
        return [str(venv / "bin" / "python"), "-c", MERGEKIT_IMPORTS, str(settings.threads), str(paths["base"])]
    config = work_dir / f"mergekit-{method}.yaml"
    config.write_text(mergekit_yaml(method, paths, settings))
    return [str(venv / "bin" / "mergekit-yaml"), str(config), str(out), "--lazy-unpickle", "--no-write-model-card",
            "--quiet", "-j", str(settings.threads), "--random-seed", str(settings.seed)]


# ---------------------------------------------------------------- measuring one subprocess


def run_measured(argv: list[str], log: Path) -> dict[str, Any]:
    """Wall time and peak RSS of one command, with the posttrain child's own peak above its after-import
    RSS (VmHWM after clear_refs) when it prints one.

    The peak comes from GNU time (wait4's ru_maxrss of its one child). Not from this driver's own
    wait4: Linux carries the forking process's high-water RSS across exec into the child's maxrss,
    so a child of this driver (which holds torch and the models) would report at least the driver's RSS.
    """
    env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(ROOT)}
    load_before = os.getloadavg()[0]
    peak_file = log.with_suffix(".maxrss")
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.run([GNU_TIME, "-o", str(peak_file), "-f", "%M", *argv], stdout=out,
                              stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    measured = {"wall_s": wall, "peak_rss": int(peak_file.read_text().split()[-1]) * 1024, "load": load_before}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("PEAK_ABOVE_IMPORTS "):
            measured["peak_above_imports"] = int(line.split()[1])
    return measured


def compare_outputs(first: Path, second: Path) -> tuple[float, float]:
    """(max |a - b|, share of elements with |a - b| > 1e-6) over two HF directories, one tensor at a time."""
    from posttrain.merge.checkpoint import Checkpoint

    a, b = Checkpoint(first), Checkpoint(second)
    worst, differing, total = 0.0, 0, 0
    for name in a.tensors:
        if name in b.tensors:
            diff = (a.read(name).float() - b.read(name).float()).abs()
            worst = max(worst, diff.max().item())
            differing += int((diff > 1e-6).sum())
            total += diff.numel()
    return worst, differing / max(total, 1)


# ---------------------------------------------------------------- the run


def machine() -> dict[str, Any]:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    venv_python = Path(os.environ.get("MERGEKIT_VENV", MERGEKIT_VENV)) / "bin" / "python"
    probe = "import importlib.metadata as m; print(m.version('mergekit'), m.version('torch'), m.version('transformers'))"
    mergekit, mk_torch, mk_transformers = subprocess.run([str(venv_python), "-c", probe], capture_output=True,
                                                         text=True, check=True).stdout.split()
    return {"torch": metadata.version("torch"), "safetensors": metadata.version("safetensors"),
            "mergekit": mergekit, "mergekit_torch": mk_torch, "mergekit_transformers": mk_transformers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    for field in dataclasses.fields(Settings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    work_dir = args.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    paths = prepare_models(settings, work_dir)
    model_bytes = sum(f.stat().st_size for f in paths["ft1"].glob("*.safetensors"))
    print(f"inputs: 3 x {model_bytes / 1e6:.0f} MB ({settings.dtype}) in {paths['base'].parent}", flush=True)

    commands = {
        "posttrain": lambda method, out: posttrain_command(method, paths, out, settings),
        "mergekit": lambda method, out: mergekit_command(method, paths, out, settings, work_dir),
    }
    baselines = {tool: [] for tool in TOOLS}
    results: dict[str, dict[str, list]] = {m: {tool: [] for tool in TOOLS} for m in args.methods}
    for trial in range(args.trials):
        order = rotated(TOOLS, trial)  # two tools: each goes first every other round
        for tool in order:
            baselines[tool].append(run_measured(commands[tool](None, None), work_dir / f"{tool}-baseline.log"))
        for method in args.methods:
            for tool in order:
                out = work_dir / f"out-{tool}-{method}"
                shutil.rmtree(out, ignore_errors=True)
                measured = run_measured(commands[tool](method, out), work_dir / f"{tool}-{method}.log")
                results[method][tool].append(measured)
                print(f"trial {trial + 1} {method:16s} {tool:9s} {measured['wall_s']:7.2f} s "
                      f"peak {measured['peak_rss'] / 2**20:8.1f} MiB (load {measured['load']:.2f})", flush=True)

    base_rss = {tool: statistics.median(b["peak_rss"] for b in baselines[tool]) for tool in TOOLS}
    base_wall = {tool: statistics.median(b["wall_s"] for b in baselines[tool]) for tool in TOOLS}
    rows = []
    for method in args.methods:
        row: dict[str, Any] = {"method": method}
        for tool in TOOLS:
            trials = results[method][tool]
            row[f"{tool}_wall_s"] = statistics.median(t["wall_s"] for t in trials)
            row[f"{tool}_merge_s"] = row[f"{tool}_wall_s"] - base_wall[tool]
            row[f"{tool}_peak_mib"] = (statistics.median(t["peak_rss"] for t in trials) - base_rss[tool]) / 2**20
        own = [t["peak_above_imports"] for t in results[method]["posttrain"] if "peak_above_imports" in t]
        row["posttrain_peak_above_imports_mib"] = statistics.median(own) / 2**20 if own else None
        row["max_abs_diff"], row["share_differing"] = compare_outputs(work_dir / f"out-posttrain-{method}",
                                                                      work_dir / f"out-mergekit-{method}")
        rows.append(row)

    largest = _largest_tensor_bytes(paths["ft1"])
    report = {"settings": dataclasses.asdict(settings), "model_bytes": model_bytes, "largest_tensor_bytes": largest,
              "machine": machine(), "versions": versions(), "trials": args.trials,
              "baseline_peak_mib": {t: v / 2**20 for t, v in base_rss.items()}, "baseline_wall_s": base_wall,
              "load_average_range": _load_range(results), "rows": rows, "raw": results}
    (work_dir / "results.json").write_text(json.dumps(report, indent=2))
    print(markdown_table(rows, largest))
    print(json.dumps({k: report[k] for k in ("machine", "versions", "baseline_peak_mib", "baseline_wall_s",
                                             "load_average_range")}, indent=2))
    return 0


def _largest_tensor_bytes(model_dir: Path) -> int:
    from posttrain.merge.checkpoint import Checkpoint

    return max(info.numel * info.dtype.itemsize for info in Checkpoint(model_dir).tensors.values())


def _load_range(results) -> list[float]:
    loads = [t["load"] for tools in results.values() for trials in tools.values() for t in trials]
    return [min(loads), statistics.median(loads), max(loads)]


def markdown_table(rows: list[dict[str, Any]], largest: int) -> str:
    lines = ["| method | posttrain wall s | mergekit wall s | time ratio | posttrain merge s | mergekit merge s "
             "| posttrain peak MiB | mergekit peak MiB | memory ratio | posttrain peak after imports MiB "
             "| max abs diff | elements differing |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['posttrain_wall_s']:.2f} | {r['mergekit_wall_s']:.2f} "
            f"| {r['posttrain_wall_s'] / r['mergekit_wall_s']:.2f} | {r['posttrain_merge_s']:.2f} "
            f"| {r['mergekit_merge_s']:.2f} | {r['posttrain_peak_mib']:.0f} | {r['mergekit_peak_mib']:.0f} "
            f"| {r['posttrain_peak_mib'] / max(r['mergekit_peak_mib'], 1e-9):.2f} "
            f"| {r['posttrain_peak_above_imports_mib'] or 0:.0f} | {r['max_abs_diff']:.1e} | {r['share_differing']:.1%} |")
    lines.append(f"\nlargest tensor: {largest / 2**20:.1f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
