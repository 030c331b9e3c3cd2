"""Test-only stage kinds, registered on import (tests import this module directly, or a runner
subprocess names it in POSTTRAIN_PLUGINS with this folder on PYTHONPATH).

Every fake stage appends a line to `<run>/calls.log` when it starts, so tests can see what ran.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from posttrain.stages import registry
from posttrain.stages.base import Stage, StageConfig, StageContext, StageResult

PLUGIN_DIR = Path(__file__).resolve().parent


def label(ctx: StageContext) -> str:
    return f"round-{ctx.round}/{ctx.stage_id}" if ctx.round else ctx.stage_id


def note_call(ctx: StageContext, extra: str = "") -> None:
    with open(ctx.run_dir / "calls.log", "a", encoding="utf-8") as fh:
        fh.write(f"{label(ctx)}{extra}\n")


def calls(run_dir: Path) -> list[str]:
    """Lines of calls.log: which stages ran, in order."""
    path = Path(run_dir) / "calls.log"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def read_inputs(ctx: StageContext, name: str) -> list[str]:
    """Text of each artifact bound to `name`: a stage's out.txt, or an external file."""
    texts = []
    for path in ctx.inputs_of(name, required=False):
        texts.append((path / "out.txt" if path.is_dir() else path).read_text(encoding="utf-8"))
    return texts


class WriteConfig(StageConfig):
    text: str = Field(default="x", description="text this stage writes")
    lr: float = Field(default=1.0, description="a number (validation tests)")
    mode: Literal["a", "b"] = Field(default="a", description="a literal (validation tests)")
    api_key: str | None = Field(default=None, description="a secret (redaction tests)")
    hf_token: str | None = None
    fail: bool = Field(default=False, description="raise inside run()")


class FakeWrite(Stage):
    """Writes out.txt = its id, its text and its inputs' texts."""

    kind = "fake_write"
    Config = WriteConfig
    inputs = {"src": False, "more": False}
    description = "Test stage: writes its text and its inputs' texts to out.txt."

    def run(self, config: WriteConfig, ctx: StageContext) -> StageResult:
        note_call(ctx)
        if config.fail:
            raise RuntimeError("asked to fail")
        parts = read_inputs(ctx, "src") + read_inputs(ctx, "more")
        text = f"{ctx.stage_id}[{config.text}]({','.join(parts)})"
        (ctx.out_dir / "out.txt").write_text(text, encoding="utf-8")
        return StageResult(counts={"output_rows": 1}, metrics={"length": len(text)}, outputs={"out": "out.txt"})


class SlowConfig(StageConfig):
    steps: int = 30
    sleep: float = 0.05


class FakeSlow(Stage):
    """Counts to `steps`, one step per `sleep` seconds, keeping progress.txt so a cut run resumes."""

    kind = "fake_slow"
    Config = SlowConfig
    inputs = {"src": False}
    description = "Test stage: slow, resumable from progress.txt."

    def run(self, config: SlowConfig, ctx: StageContext) -> StageResult:
        progress = ctx.out_dir / "progress.txt"
        start = int(progress.read_text()) if progress.exists() else 0
        note_call(ctx, f" start={start}")
        for step in range(start, config.steps):
            time.sleep(config.sleep)
            ctx.log_metrics({"step": step + 1, "loss": 1.0 / (step + 1)})
            progress.write_text(str(step + 1))
        text = f"slow({config.steps})" + "".join(read_inputs(ctx, "src"))
        (ctx.out_dir / "out.txt").write_text(text, encoding="utf-8")
        return StageResult(counts={"steps": config.steps}, outputs={"out": "out.txt"})


class QuarantineConfig(StageConfig):
    total: int = 100
    bad: int = 10
    too_long: int = 2


class FakeQuarantine(Stage):
    """Quarantines `bad` of `total` input rows and drops `too_long` by policy."""

    kind = "fake_quarantine"
    Config = QuarantineConfig
    description = "Test stage: quarantines and drops rows."

    def run(self, config: QuarantineConfig, ctx: StageContext) -> StageResult:
        note_call(ctx)
        for line in range(config.bad):
            ctx.quarantine.add("bad_json" if line % 2 else "missing_field", file="in.jsonl", line=line + 1)
        for _ in range(config.too_long):
            ctx.dropped.add("too_long")
        (ctx.out_dir / "out.txt").write_text("q", encoding="utf-8")
        return StageResult(counts={"input_rows": config.total, "output_rows": config.total - config.bad})


class ScoresConfig(StageConfig):
    score: float = 0.5


class FakeScores(Stage):
    """Logs a training curve and reports per-family scores with intervals and failure examples."""

    kind = "fake_scores"
    Config = ScoresConfig
    inputs = {"model": True}
    description = "Test stage: reports scores and examples."

    def run(self, config: ScoresConfig, ctx: StageContext) -> StageResult:
        note_call(ctx)
        for step in range(1, 6):
            ctx.log_metrics({"step": step, "loss": 2.0 / step, "lr": 0.001, "note": "text is not plotted"})
        scores = {
            family: {"score": config.score + offset, "low": config.score + offset - 0.1,
                     "high": config.score + offset + 0.1, "n": 50}
            for family, offset in (("math", 0.0), ("safety", 0.2))
        }
        examples = {"math": [{"prompt": "<b>2+2</b>", "response": "5 <script>", "reason": "wrong answer"}]}
        return StageResult(metrics={"scores": scores, "examples": examples, "final_loss": 0.4})


class FakeDistributed(Stage):
    """Under torchrun every rank runs it: sums rank + 1 over a gloo process group, notes and logs its rank."""

    kind = "fake_distributed"
    distributed = True
    inputs = {"src": False}
    description = "Test stage: one all-reduce over every rank."

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:
        import torch

        from posttrain.train.distributed import all_reduce_sum, init_distributed

        dist = init_distributed(torch.device("cpu"))
        total = all_reduce_sum(torch.tensor([float(dist.rank + 1)]), dist).item()
        note_call(ctx, f" rank={dist.rank}")
        ctx.log_metrics({"rank": dist.rank, "sum": total})
        ctx.quarantine.add("fake_reason", file="in.jsonl", line=dist.rank + 1)
        if dist.is_main:
            (ctx.out_dir / "out.txt").write_text(f"sum={total:g}", encoding="utf-8")
        return StageResult(counts={"world_size": dist.world_size}, outputs={"out": "out.txt"})


for _cls in (FakeWrite, FakeSlow, FakeQuarantine, FakeScores, FakeDistributed):
    registry.register(_cls.kind, _cls)
