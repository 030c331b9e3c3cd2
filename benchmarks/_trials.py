"""Trial mechanics the benchmarks share: one subprocess per trial, modes rotated each round, memory and
timing probes, TRL step clocks, the driver's command line, medians and results.json.

Imported by the benchmark scripts as a sibling module (`from _trials import ...`); heavy libraries
(torch, transformers, TRL) are imported inside the functions that need them, so that a driver or a
posttrain-only child does not load what it does not use.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

# ---------------------------------------------------------------- driver: running trials


def rotated(modes: Sequence[str], trial: int) -> list[str]:
    """The modes in round `trial`'s order: rotated by one each round, so drifts in load fall on every mode."""
    shift = trial % len(modes)
    return list(modes[shift:]) + list(modes[:shift])


def child_env(threads: int, **extra: str) -> dict[str, str]:
    """This process's environment for a trial child: offline, no telemetry, `threads` OpenMP threads, plus `extra`."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true", "OMP_NUM_THREADS": str(threads), **extra}


def run_child_trial(script: str, mode: str, trial: int, work_dir: Path, settings: dict[str, Any],
                    env: dict[str, str], timeout: int) -> dict[str, Any]:
    """Run `script --child mode` in its own process; returns the result JSON it wrote, plus `wall_seconds`."""
    result_path = work_dir / f"result_{mode}_{trial}.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, script, "--child", mode, "--work-dir", str(work_dir),
               "--settings", json.dumps(settings), "--result", str(result_path)]
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} trial {trial} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(result_path.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    return result


def run_rounds(modes: Sequence[str], trials: int, run_one: Callable[[str, int], dict[str, Any]],
               describe: Callable[[dict[str, Any]], str], width: int) -> dict[str, list[dict[str, Any]]]:
    """`trials` rounds of every mode (order rotated per round); prints a line per trial; results by mode.

    run_one(mode, trial) runs one trial and returns its result (with `wall_seconds`); describe(result)
    is the middle of the printed line, between the mode (padded to `width`) and the load average.
    """
    by_mode: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for trial in range(trials):
        for mode in rotated(modes, trial):
            result = run_one(mode, trial)
            by_mode[mode].append(result)
            print(f"trial {trial} {mode:<{width}} {describe(result)}  "
                  f"load {os.getloadavg()[0]:.2f}  ({result['wall_seconds']:.0f} s)", flush=True)
    return by_mode


# ---------------------------------------------------------------- driver: machine, command line, results


def cpu_model(default: str = "?") -> str:
    """The CPU's model name from /proc/cpuinfo, or `default` where it does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), default)
    except OSError:
        return default


def machine(packages: Iterable[str]) -> dict[str, Any]:
    """CPU model, cores, load average now, the `__version__` of each of `packages`, and Python's version."""
    cpu = cpu_model()
    versions = {name: importlib.import_module(name).__version__ for name in packages}
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg": os.getloadavg(), **versions,
            "python": sys.version.split()[0]}


def trial_parser(description: str, modes: Sequence[str], defaults: Any, work_dir: Path, steps_help: str,
                 warmup_help: str, step_defaults: bool = True) -> argparse.ArgumentParser:
    """The command line of a trial driver; `defaults` (a settings class) gives steps, warmup and threads
    (unless `step_defaults` is False: then they default to None, for a driver whose profile chooses them).

    The hidden --child, --settings and --result are how the driver starts a trial (`run_child_trial`).
    """
    pick = (lambda name: getattr(defaults, name)) if step_defaults else (lambda name: None)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--trials", type=int, default=3, help="trials per mode")
    parser.add_argument("--steps", type=int, default=pick("steps"), help=steps_help)
    parser.add_argument("--warmup", type=int, default=pick("warmup"), help=warmup_help)
    parser.add_argument("--threads", type=int, default=pick("threads"), help="torch threads in every trial")
    parser.add_argument("--modes", nargs="+", default=list(modes), choices=modes)
    parser.add_argument("--work-dir", default=str(work_dir))
    parser.add_argument("--trial-timeout", type=int, default=600, help="seconds before a trial is killed")
    parser.add_argument("--child", choices=modes, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser


def dispatch(args: argparse.Namespace, settings_class: type, child: Callable[..., None],
             drive: Callable[[argparse.Namespace], None]) -> None:
    """Run one trial (`child(mode, work_dir, settings, result_path)`) when started with --child, else the driver."""
    if args.child:
        child(args.child, Path(args.work_dir), settings_class(**json.loads(args.settings)), Path(args.result))
    else:
        drive(args)


def parse_overrides(pairs: Sequence[str], settings_class: type) -> dict[str, Any]:
    """`["key=value", ...]` -> {key: value}, each value read as JSON where it parses (numbers, lists), else text."""
    fields = set(settings_class.__dataclass_fields__)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def gpu_name(device: str) -> dict[str, Any]:
    """{"gpu": the CUDA device's name, "cuda": the CUDA version} when `device` is cuda, else {}."""
    if device != "cuda":
        return {}
    import torch

    return {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}


def synchronize(device: str) -> None:
    """Wait for the queued CUDA work (a host clock then reads the time the device finished); no-op on CPU."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def config_call(name: str, kwargs: dict[str, Any]) -> str:
    """`name(key=value, ...)` for printing a config; output_dir is left out (only the mode's folder)."""
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "output_dir") + ")"


def median_of(results: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def best_rival(summary: dict[str, dict[str, Any]], key: str) -> str | None:
    """The mode other than posttrain's own (`posttrain*`) with the highest `key`; None unless both sides ran."""
    rivals = [mode for mode in summary if not mode.startswith("posttrain")]
    if "posttrain" not in summary or not rivals:
        return None
    return max(rivals, key=lambda mode: summary[mode][key])


def write_results(work_dir: Path, machine_before: dict[str, Any], settings: dict[str, Any], data: dict[str, Any],
                  summary: dict[str, Any], by_mode: dict[str, list[dict[str, Any]]]) -> None:
    """Print the load average before and now, and write work_dir/results.json (trials without step end times)."""
    after = os.getloadavg()
    print(f"load average before {machine_before['loadavg']}, after {after}")
    out = {"machine": machine_before, "loadavg_after": after, "settings": settings, "data": data,
           "summary": summary, "trials": {m: [{k: v for k, v in r.items() if k != "step_ends"} for r in rs]
                                          for m, rs in by_mode.items()}}
    (work_dir / "results.json").write_text(json.dumps(out, indent=1))
    print(f"results: {work_dir / 'results.json'}")


# ---------------------------------------------------------------- child: measurements


def resident_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak so far) of this process, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def start_child(mode: str, threads: int) -> int:
    """Import what a trial of `mode` trains with and set its threads; returns the resident KiB after that.

    That is the memory baseline: every mode's peak is measured above its own imports.
    """
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from posttrain.models.runtime import set_cpu_threads

    if mode != "posttrain":
        import datasets  # noqa: F401  (imported before the baseline, like posttrain's own imports)
        import trl  # noqa: F401
    set_cpu_threads(threads)
    return resident_kib("VmRSS")


def runtime_fields() -> dict[str, Any]:
    """The torch thread count and the torch and transformers versions a trial ran with."""
    import torch
    import transformers

    return {"threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__}


def gpu_fields(device: str) -> dict[str, Any]:
    """{"gpu_peak_mib": the most GPU memory torch allocated in this process} on CUDA, else {}."""
    if device != "cuda":
        return {}
    import torch

    return {"gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20}


def steady_seconds(run: dict[str, Any], steps: int, warmup: int, start_key: str) -> float:
    """Seconds of the steps after the first `warmup` ones (from `run[start_key]` when warmup is 0).

    Checks first that the trial recorded all `steps` optimizer steps.
    """
    ends = run["step_ends"]
    if len(ends) != steps:
        raise RuntimeError(f"{run['mode']}: {len(ends)} optimizer steps recorded, expected {steps}")
    return ends[-1] - ends[warmup - 1] if warmup else ends[-1] - run[start_key]


class StepLog:
    """posttrain Trainer's log_fn (log_every=1): the end time and loss of every optimizer step."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.ends: list[float] = []
        self.losses: list[float] = []

    def __call__(self, row: dict[str, Any]) -> None:
        synchronize(self.device)
        self.ends.append(time.perf_counter())
        self.losses.append(row["loss"])


# ---------------------------------------------------------------- child: TRL


def trl_common_kwargs(out_dir: Path, lr: float, steps: int, seed: int, device: str = "cpu") -> dict[str, Any]:
    """The TRL config fields every TRL mode sets alike, matched to posttrain's optimizer and precision
    (CPU: float32; CUDA: float32 weights with bf16 autocast, posttrain's `dtype: auto` there)."""
    return dict(
        output_dir=str(out_dir), use_cpu=device == "cpu", bf16=device == "cuda", fp16=False,
        gradient_checkpointing=False,  # TRL defaults to True; posttrain does not recompute activations
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,  # = posttrain's AdamW
        max_steps=steps, seed=seed, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
    )


def token_counting(trainer_class: type) -> type:
    """A subclass of the TRL trainer `trainer_class` counting the real (attention mask) and computed input
    tokens of every micro-batch in `real_tokens` / `computed_tokens`; training itself is TRL's own."""

    class Counting(trainer_class):
        real_tokens = computed_tokens = 0

        def training_step(self, model, inputs, *args, **kwargs):
            self.computed_tokens += inputs["input_ids"].numel()
            mask = inputs.get("attention_mask")
            self.real_tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            return super().training_step(model, inputs, *args, **kwargs)

    Counting.__name__ = Counting.__qualname__ = f"Counting{trainer_class.__name__}"
    return Counting


def per_step(cumulative: list[int]) -> list[int]:
    """Per-step amounts from running totals."""
    return [b - a for a, b in zip([0] + cumulative[:-1], cumulative)]


def step_clock(token_totals: Callable[[], tuple[int, int]], device: str = "cpu"):
    """A transformers TrainerCallback recording each optimizer step's end time (after the device's queued
    work) and the running (real, computed) token totals that `token_totals()` returns then, and each logged loss."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends, self.real, self.computed, self.losses = [], [], [], []

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.ends.append(time.perf_counter())
            real, computed = token_totals()
            self.real.append(real)
            self.computed.append(computed)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

        def steps(self) -> dict[str, Any]:
            """step_ends, step_real_tokens, step_computed_tokens and losses, as a trial result holds them."""
            return {"step_ends": self.ends, "step_real_tokens": per_step(self.real),
                    "step_computed_tokens": per_step(self.computed), "losses": self.losses}

    return StepClock()
