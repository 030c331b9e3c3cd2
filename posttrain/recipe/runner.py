"""Run a recipe: stages in order, each skipped when its artifact with the same cache key is complete.

A stage reruns when its key changed (its config, seed, code version or an upstream artifact changed;
see `posttrain.recipe.keys`), when it was cut off (it resumes in the kept directory of the cut-off
attempt, from its own checkpoint), or when `from_stage` forces it and everything downstream of it to
rerun from scratch. Only one runner works in a run directory at a time (`RunLock`).

The runner knows no torch: stage modules import it inside `run()`.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import yaml

import posttrain
from posttrain.data.quarantine import RowLog, check_quarantine_share
from posttrain.recipe.console import RunConsole
from posttrain.recipe.keys import plan_keys
from posttrain.recipe.load import load_recipe
from posttrain.recipe.plan import Plan, PlannedStage
from posttrain.recipe.ranks import Processes, RankZeroFailedError, wait_for_stage
from posttrain.recipe.rundir import (
    DONE, MANIFEST, RUN_FILES, RunLock, is_done, prepare_stage_dir, write_atomic, write_json_atomic,
)
from posttrain.recipe.secrets import redact
from posttrain.stages.base import StageContext, StageResult


class StageFailedError(RuntimeError):
    """A stage raised; the message names the stage, `__cause__` holds the original error."""

    def __init__(self, label: str, kind: str, error: BaseException):
        self.label = label
        self.kind = kind
        super().__init__(f"stage {label} ({kind}) failed: {type(error).__name__}: {error}")


@dataclasses.dataclass
class RunSummary:
    """Which stages ran and which were reused from the cache."""

    run_dir: Path
    ran: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)


def _json_default(value: Any) -> Any:
    """Scalars from numpy/torch become plain numbers in metrics; anything else its str()."""
    if hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    return str(value)


class MetricsLog:
    """`<run>/metrics.jsonl`: one JSON line per logged row, flushed at once so a kill loses nothing."""

    def __init__(self, path: Path):
        self._fh = open(path, "a", encoding="utf-8")

    def for_stage(self, stage: PlannedStage, key: str) -> Callable[[dict[str, Any]], None]:
        def log_metrics(row: dict[str, Any]) -> None:
            # `key` tells rows of the current artifact from those of an older attempt with another config.
            entry = {"stage": stage.id, "round": stage.round, "time": time.time(), "key": key[:16], **redact(row)}
            self._fh.write(json.dumps(entry, default=_json_default) + "\n")
            self._fh.flush()

        return log_metrics

    def close(self) -> None:
        self._fh.close()


def run_recipe(
    recipe: Plan | str | Path,
    run_dir: str | Path | None = None,
    from_stage: str | None = None,
    console: RunConsole | None = None,
    after_run: Callable[[Path], Any] | None = None,
) -> RunSummary:
    """Run every stage of `recipe` (a Plan or a recipe file) in `run_dir` (default runs/<name>).

    `after_run(run_dir)` is called at the end, after a failure too (the CLI renders the report there).
    """
    plan = recipe if isinstance(recipe, Plan) else load_recipe(recipe)
    run_dir = Path(run_dir if run_dir is not None else Path("runs") / plan.name).resolve()
    forced = plan.downstream({stage.label for stage in plan.select(from_stage)}) if from_stage else set()
    console = console or RunConsole()
    summary = RunSummary(run_dir=run_dir)
    processes = Processes.from_env()
    if not processes.is_main:  # under torchrun: join rank 0's run (see posttrain.recipe.ranks)
        _follow_stages(plan, run_dir, forced, processes, summary)
        return summary
    with RunLock(run_dir):
        try:
            write_atomic(run_dir / "recipe.yaml", yaml.safe_dump(plan.resolved, sort_keys=False))
            console.run_start(plan.name, str(run_dir), len(plan.stages))
            _run_stages(plan, run_dir, forced, console, summary, processes.launch)
        finally:
            _after(after_run, run_dir, console)
    return summary


def _run_stages(plan: Plan, run_dir: Path, forced: set[str], console: RunConsole, summary: RunSummary,
                launch: str) -> None:
    """Each stage in order: skipped when complete with the same key (and not forced), else run."""
    keys = plan_keys(plan.stages)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    try:
        for stage in plan.stages:
            key, components = keys[stage.label]
            fresh = stage.label in forced
            if not fresh and is_done(plan.stage_dir(run_dir, stage), key):
                console.stage_skip(stage.label, stage.kind)
                summary.skipped.append(stage.label)
                continue
            _run_stage(plan, stage, run_dir, key, components, fresh, metrics, console, launch)
            summary.ran.append(stage.label)
    finally:
        metrics.close()


def _follow_stages(plan: Plan, run_dir: Path, forced: set[str], processes: Processes, summary: RunSummary) -> None:
    """A rank other than 0: wait for each stage rank 0 runs; run the distributed ones beside it, writing nothing."""
    keys = plan_keys(plan.stages)
    for stage in plan.stages:
        key, _ = keys[stage.label]
        stage_dir = plan.stage_dir(run_dir, stage)
        if stage.label not in forced and is_done(stage_dir, key):
            summary.skipped.append(stage.label)
            continue
        distributed = stage.stage_cls.distributed
        try:
            wait_for_stage(stage_dir, key, processes.launch, started_is_enough=distributed)
            if distributed:
                ctx = _stage_context(plan, stage, run_dir, RowLog(os.devnull), RowLog(os.devnull), lambda row: None)
                stage.stage_cls().run(stage.config, ctx)
                wait_for_stage(stage_dir, key, processes.launch, started_is_enough=False)
                summary.ran.append(stage.label)
        except RankZeroFailedError as err:
            raise StageFailedError(stage.label, stage.kind, err) from err


def _after(after_run: Callable[[Path], Any] | None, run_dir: Path, console: RunConsole) -> None:
    """Call the end-of-run hook; its failure is reported, never hides the run's own outcome."""
    if after_run is None:
        return
    try:
        after_run(run_dir)
    except Exception as err:  # noqa: BLE001 - a broken report must not mask a stage's error
        console.info(f"warning: end-of-run step failed: {type(err).__name__}: {err}")


def _input_paths(plan: Plan, stage: PlannedStage, run_dir: Path) -> dict[str, list[Path]]:
    labels = plan.by_label()
    return {
        name: [plan.stage_dir(run_dir, labels[ref.stage]) if ref.stage else ref.path for ref in refs]
        for name, refs in stage.inputs.items()
    }


def _stage_context(plan: Plan, stage: PlannedStage, run_dir: Path, quarantine: RowLog, dropped: RowLog,
                   log_metrics: Callable[[dict[str, Any]], None]) -> StageContext:
    return StageContext(
        run_dir=run_dir, out_dir=plan.stage_dir(run_dir, stage), stage_id=stage.id, round=stage.round,
        seed=stage.seed, inputs=_input_paths(plan, stage, run_dir), quarantine=quarantine, dropped=dropped,
        log_metrics=log_metrics, max_quarantine_share=plan.max_quarantine_share,
    )


def _run_stage(plan: Plan, stage: PlannedStage, run_dir: Path, key: str, components: dict[str, Any],
               fresh: bool, metrics: MetricsLog, console: RunConsole, launch: str = "") -> None:
    """One attempt at one stage: prepare its directory, run it, then manifest and `_DONE`.

    Under torchrun (`launch` set) the manifest is written with status "running" before the stage starts:
    that is what the other ranks wait for.
    """
    stage_dir = plan.stage_dir(run_dir, stage)
    resuming = prepare_stage_dir(stage_dir, key, fresh, keep=RUN_FILES if plan.flat else frozenset())
    # Rejected-row logs restart with each attempt so their counts match their files.
    for name in ("quarantine.jsonl", "dropped.jsonl"):
        (stage_dir / name).unlink(missing_ok=True)
    ctx = _stage_context(plan, stage, run_dir, RowLog(stage_dir / "quarantine.jsonl"),
                         RowLog(stage_dir / "dropped.jsonl"), metrics.for_stage(stage, key))
    inputs = ctx.inputs
    manifest = _manifest_head(stage, key, components, inputs, resuming)
    if launch:
        manifest["launch"] = launch
        write_json_atomic(stage_dir / MANIFEST, manifest)
    console.stage_start(stage.label, stage.kind, resuming)
    started = time.time()
    try:
        result = stage.stage_cls().run(stage.config, ctx)
        if not isinstance(result, StageResult):
            raise TypeError(f"run() returned {type(result).__name__}, expected StageResult")
        if "input_rows" in result.counts:
            check_quarantine_share(ctx.quarantine.total, result.counts["input_rows"],
                                   plan.max_quarantine_share, where=f"stage {stage.label} ({stage.kind})")
    except BaseException as err:
        _finish_manifest(manifest, ctx, StageResult(), started, status="failed", error=f"{type(err).__name__}: {err}")
        write_json_atomic(stage_dir / MANIFEST, manifest)
        console.stage_failed(stage.label, stage.kind, err)
        if isinstance(err, Exception):
            raise StageFailedError(stage.label, stage.kind, err) from err
        raise
    finally:
        ctx.quarantine.close()
        ctx.dropped.close()
    _finish_manifest(manifest, ctx, result, started, status="done")
    write_json_atomic(stage_dir / MANIFEST, manifest)
    write_atomic(stage_dir / DONE, key + "\n")  # last: the artifact is complete only now
    console.stage_done(stage.label, stage.kind, manifest["duration_s"])


def _manifest_head(stage: PlannedStage, key: str, components: dict[str, Any],
                   inputs: dict[str, list[Path]], resuming: bool) -> dict[str, Any]:
    """The part of manifest.json known before the stage runs."""
    input_keys = dict(components["inputs"])
    bound = {
        name: [
            {"ref": ref.ref, "stage": ref.stage, "path": str(path), "key": input_key}
            for ref, path, input_key in zip(refs, inputs[name], input_keys[name])
        ]
        for name, refs in stage.inputs.items()
    }
    return {
        "id": stage.id, "kind": stage.kind, "round": stage.round, "label": stage.label, "index": stage.index,
        "status": "running", "key": key, "key_components": components,
        "config": redact(stage.config.model_dump(mode="json")), "seed": stage.seed, "inputs": bound,
        "resumed": resuming,
        "code_version": {"posttrain": posttrain.__version__, "stage": stage.stage_cls.version},
    }


def _finish_manifest(manifest: dict[str, Any], ctx: StageContext, result: StageResult, started: float,
                     status: str, error: str | None = None) -> None:
    """Add outcome, counts (with rejected rows by reason), metrics and timings."""
    finished = time.time()
    counts: dict[str, Any] = dict(result.counts)
    counts["quarantined"] = ctx.quarantine.total
    counts["quarantined_by_reason"] = dict(ctx.quarantine.counts_by_reason)
    counts["dropped"] = ctx.dropped.total
    counts["dropped_by_reason"] = dict(ctx.dropped.counts_by_reason)
    manifest.update(
        status=status,
        counts=counts,
        metrics=json.loads(json.dumps(redact(result.metrics), default=_json_default)),
        outputs=dict(result.outputs),
        started=_iso(started),
        finished=_iso(finished),
        duration_s=round(finished - started, 3),
    )
    if error is not None:
        manifest["error"] = error


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc).isoformat(timespec="seconds")
