"""Plots as base64 PNG strings, so the report is one self-contained HTML file."""
from __future__ import annotations

import base64
import io
import math
from typing import Any


def _pyplot():
    """matplotlib with the file-only Agg backend (no display on servers; imported only when plotting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def series_png(series: dict[str, list[tuple[float, float]]], title: str) -> str:
    """One small panel per logged series (value against step), in one image."""
    plt = _pyplot()
    names = sorted(series)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, names):
        steps, values = zip(*series[name])
        ax.plot(steps, values, marker="." if len(steps) < 50 else None)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def scores_png(scores: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Grouped bars: one group per task family, one bar per stage, with 95% interval whiskers.

    `scores` maps stage label -> family -> {"score", "low", "high", "n"}.
    """
    plt = _pyplot()
    labels = list(scores)
    families = sorted({family for per_stage in scores.values() for family in per_stage})
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(families) * max(1, len(labels)) ** 0.5), 3.5))
    for i, label in enumerate(labels):
        xs, heights, lows, highs = [], [], [], []
        for j, family in enumerate(families):
            entry = scores[label].get(family)
            if entry is None:
                continue
            score = float(entry["score"])
            xs.append(j + (i - (len(labels) - 1) / 2) * width)
            heights.append(score)
            lows.append(max(0.0, score - float(entry.get("low", score))))
            highs.append(max(0.0, float(entry.get("high", score)) - score))
        ax.bar(xs, heights, width=width, yerr=[lows, highs], capsize=3, label=label)
    ax.set_xticks(range(len(families)))
    ax.set_xticklabels(families, rotation=20)
    ax.set_ylabel("score (95% interval)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
