"""The run report: one self-contained HTML file (plots embedded) from what the run directory holds.

Everything shown comes from manifests, metrics.jsonl and recipe.yaml, which the runner has already
redacted; every string is HTML-escaped (prompts and responses are model text, not markup).
"""
from __future__ import annotations

import datetime
import json
from html import escape
from pathlib import Path
from typing import Any

import yaml

from posttrain.report.plots import scores_png, series_png
from posttrain.report.rundir import StageView, read_metrics, read_stages, stage_series

EXAMPLES_PER_FAMILY = 3
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; font-size: 13px; }
th { background: #f3f3f3; }
.done { color: #17702b; } .failed { color: #b00020; font-weight: bold; } .running { color: #a86400; }
pre { background: #f6f6f6; padding: 6px; white-space: pre-wrap; font-size: 12px; }
section { border-top: 1px solid #ddd; margin-top: 1.5em; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return escape(f"{value:.4g}")
    if isinstance(value, (dict, list)):
        return f"<code>{escape(json.dumps(value, ensure_ascii=False, default=str))}</code>"
    return escape(str(value))


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{escape(name)}</th><td>{value}</td></tr>" for name, value in rows)
    return f"<table>{body}</table>"


def _kv(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{escape(str(k))}: {_cell(v)}" for k, v in mapping.items()) or "-"


def _inputs(manifest: dict[str, Any]) -> str:
    lines = []
    for name, bound in manifest.get("inputs", {}).items():
        targets = [escape(str(item.get("stage") or item.get("path"))) for item in bound]
        lines.append(f"{escape(name)} = {', '.join(targets)}")
    return "<br>".join(lines) or "-"


def _final_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ("scores", "examples")}


def _stage_section(view: StageView, rows: list[dict[str, Any]]) -> str:
    """Table of one stage's facts, its metric plots and its failure examples."""
    m = view.manifest
    counts = dict(m.get("counts", {}))
    quarantined = counts.pop("quarantined_by_reason", {})
    dropped = counts.pop("dropped_by_reason", {})
    facts = [
        ("kind", escape(str(m.get("kind", "?")))),
        ("round", escape(str(m.get("round", 0)))),
        ("status", f'<span class="{view.status}">{view.status}</span>'),
        ("inputs", _inputs(m)),
        ("outputs", _kv(m.get("outputs", {}))),
        ("counts", _kv(counts)),
        ("quarantined by reason", _kv(quarantined)),
        ("dropped by reason", _kv(dropped)),
        ("duration", escape(f"{m['duration_s']:.1f} s") if "duration_s" in m else "-"),
        ("final metrics", _kv(_final_metrics(m.get("metrics", {})))),
        ("cache key", f"<code>{escape(view.key[:16])}</code>"),
    ]
    if m.get("error"):
        facts.append(("error", f"<pre>{escape(str(m['error']))}</pre>"))
    parts = [f'<section id="{escape(view.label)}"><h2>{escape(view.label)}</h2>', _table(facts)]
    series = stage_series(rows, view)
    if series:
        parts.append(f'<img alt="metrics of {escape(view.label)}" src="data:image/png;base64,{series_png(series, view.label)}">')
    parts.append(_examples(m.get("metrics", {}).get("examples")))
    parts.append("</section>")
    return "\n".join(parts)


def _examples(examples: Any) -> str:
    """A few failure examples per task family."""
    if not isinstance(examples, dict) or not examples:
        return ""
    out = ["<h3>failure examples</h3>"]
    for family, items in sorted(examples.items()):
        out.append(f"<h4>{escape(str(family))}</h4>")
        for item in list(items or [])[:EXAMPLES_PER_FAMILY]:
            item = item if isinstance(item, dict) else {"response": item}
            out.append(_table([(name, f"<pre>{escape(str(item.get(name, '')))}</pre>") for name in ("prompt", "response", "reason")]))
    return "\n".join(out)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interval(entry: dict[str, Any] | None) -> str:
    """`0.512 [0.470, 0.555] n=200` for one family's score entry."""
    if entry is None:
        return "-"
    try:
        score = float(entry["score"])
        low, high = float(entry.get("low", score)), float(entry.get("high", score))
    except (TypeError, ValueError):
        return escape(str(entry))
    return escape(f"{score:.3f} [{low:.3f}, {high:.3f}] n={entry.get('n', '?')}")


def _scores_section(views: list[StageView]) -> str:
    """Comparison table and grouped bar chart over every stage that reported `scores`."""
    scores = {}
    for view in views:
        per_family = view.manifest.get("metrics", {}).get("scores")
        if isinstance(per_family, dict) and per_family:
            scores[view.label] = {fam: e for fam, e in per_family.items() if isinstance(e, dict) and _is_num(e.get("score"))}
    scores = {label: fams for label, fams in scores.items() if fams}
    if not scores:
        return ""
    families = sorted({fam for fams in scores.values() for fam in fams})
    head = "".join(f"<th>{escape(f)}</th>" for f in families)
    body = []
    for label, fams in scores.items():
        cells = "".join(f"<td>{_interval(fams.get(family))}</td>" for family in families)
        body.append(f"<tr><th>{escape(label)}</th>{cells}</tr>")
    table = f'<table class="scores"><tr><th>stage</th>{head}</tr>{"".join(body)}</table>'
    chart = f'<img alt="scores" src="data:image/png;base64,{scores_png(scores)}">'
    return f"<section><h2>scores (95% intervals)</h2>{table}{chart}</section>"


def _paired_section(views: list[StageView]) -> str:
    """Per evaluation that named a baseline: the paired per-prompt score difference against it, per family."""
    paired = {view.label: view.manifest["metrics"]["paired"] for view in views
              if isinstance(view.manifest.get("metrics", {}).get("paired"), dict)}
    if not paired:
        return ""
    families = sorted({f for entry in paired.values() for f in entry.get("families", {})})
    head = "".join(f"<th>{escape(f)}</th>" for f in families)

    def cell(d: dict[str, Any] | None) -> str:
        if d is None:
            return "<td>-</td>"
        text = f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {d['better']}+/{d['worse']}-"
        return f"<td>{escape(text)}</td>"

    body = "".join(f"<tr><th>{escape(label)}</th><td>{escape(str(entry.get('baseline', '?')))}</td>"
                   + "".join(cell(entry.get("families", {}).get(f)) for f in families) + "</tr>"
                   for label, entry in paired.items())
    return ("<section><h2>paired differences (same prompts; mean, 95% interval, prompts better+/worse-)</h2>"
            f"<table><tr><th>evaluation</th><th>minus</th>{head}</tr>{body}</table></section>")


def _reward_rows(views: list[StageView]) -> list[tuple[str, dict[str, Any]]]:
    """(label, evaluation) for every reward model stage that was evaluated, then its ensemble if any."""
    rows = []
    for view in views:
        metrics = view.manifest.get("metrics", {})
        if isinstance(metrics.get("reward_accuracy"), dict):
            rows.append((view.label, metrics))
            ensemble = metrics.get("ensemble")
            if isinstance(ensemble, dict) and isinstance(ensemble.get("reward_accuracy"), dict):
                rows.append((f"{view.label} + {len(ensemble.get('members', [])) - 1} (ensemble)", ensemble))
    return rows


def _reward_section(views: list[StageView]) -> str:
    """Reward models: held-out pairwise accuracy per family and per RewardBench category, best-of-N gain."""
    rows = _reward_rows(views)
    if not rows:
        return ""

    def accuracy_table(key: str) -> str:
        columns = sorted({c for _, m in rows for c in m.get(key) or {}})
        head = "".join(f"<th>{escape(c)}</th>" for c in columns)
        body = "".join(f"<tr><th>{escape(label)}</th>" + "".join(
            f"<td>{_interval((m.get(key) or {}).get(c))}</td>" for c in columns) + "</tr>" for label, m in rows)
        return f"<table><tr><th>reward model</th>{head}</tr>{body}</table>"

    families = sorted({f for _, m in rows for f in m.get("best_of_n") or {}})
    gains = []
    for label, m in rows:
        for n in sorted({n for table in (m.get("best_of_n") or {}).values() for n in table}, key=int):
            cells = "".join(f"<td>{_gain((m['best_of_n'].get(f) or {}).get(n))}</td>" for f in families)
            gains.append(f"<tr><th>{escape(label)}</th><td>{escape(n)}</td>{cells}</tr>")
    head = "".join(f"<th>{escape(f)}</th>" for f in families)
    return ("<section><h2>reward models: held-out pairwise accuracy (ties count as wrong; 95% intervals)</h2>"
            f"{accuracy_table('reward_accuracy')}<h3>by RewardBench category</h3>"
            f"{accuracy_table('reward_accuracy_by_category')}"
            "<h3>best-of-N gain (grader score of the reward model's pick minus the mean score)</h3>"
            f"<table><tr><th>reward model</th><th>N</th>{head}</tr>{''.join(gains)}</table></section>")


def _gain(entry: dict[str, Any] | None) -> str:
    if not isinstance(entry, dict) or not _is_num(entry.get("gain")):
        return "-"
    return escape(f"{entry['gain']:+.3f} ({entry.get('n_prompts', '?')} prompts)")


def _model_path(bound: dict[str, Any]) -> str:
    return str(Path(str(bound.get("path", ""))).resolve())


def _merge_sections(views: list[StageView]) -> str:
    """For each merge stage: its evaluated scores beside each evaluated member's, per family."""
    evaluated = {}  # resolved model path -> (eval label, scores)
    for view in views:
        scores = view.manifest.get("metrics", {}).get("scores")
        if isinstance(scores, dict):
            evaluated.update({_model_path(b): (view.label, scores) for b in view.manifest.get("inputs", {}).get("model", [])})
    out = []
    for view in views:
        merged = str(view.path.resolve())
        if view.manifest.get("kind") != "merge" or merged not in evaluated:
            continue
        members = [_model_path(b) for b in view.manifest.get("inputs", {}).get("models", [])]
        rows = [(Path(m).name, *evaluated[m]) for m in members if m in evaluated]
        rows.append((f"{view.label} (merged)", *evaluated[merged]))
        families = sorted({f for _, _, scores in rows for f in scores if isinstance(scores[f], dict)})
        head = "".join(f"<th>{escape(f)}</th>" for f in families)
        body = "".join(
            f"<tr><th>{escape(name)}</th><td>{escape(label)}</td>"
            + "".join(f"<td>{_interval(scores.get(f))}</td>" for f in families) + "</tr>"
            for name, label, scores in rows)
        method = view.manifest.get("metrics", {}).get("method", "?")
        out.append(f"<section><h2>merge {escape(view.label)} ({escape(str(method))}) vs its members</h2>"
                   f"<table><tr><th>model</th><th>evaluated by</th>{head}</tr>{body}</table></section>")
    return "".join(out)


def _overview(views: list[StageView]) -> str:
    rows = "".join(
        f'<tr><td><a href="#{escape(v.label)}">{escape(v.label)}</a></td><td>{escape(str(v.manifest.get("kind", "?")))}</td>'
        f'<td class="{v.status}">{v.status}</td><td>{_cell(v.manifest.get("duration_s", "-"))}</td></tr>'
        for v in views
    )
    return f"<table><tr><th>stage</th><th>kind</th><th>status</th><th>duration (s)</th></tr>{rows}</table>"


def render_report(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.html` for whatever the run directory holds now; returns its path."""
    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.yaml"
    recipe_text = recipe_path.read_text(encoding="utf-8") if recipe_path.exists() else ""
    recipe = yaml.safe_load(recipe_text) if recipe_text else {}
    name = (recipe or {}).get("name", run_dir.name)
    views = read_stages(run_dir)
    rows = read_metrics(run_dir)
    generated = datetime.datetime.now().isoformat(timespec="seconds")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>posttrain: {escape(str(name))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>posttrain run: {escape(str(name))}</h1><p>{escape(str(run_dir.resolve()))} (report written {generated})</p>",
        _overview(views),
        _scores_section(views),
        _paired_section(views),
        _merge_sections(views),
        _reward_section(views),
        *(_stage_section(view, rows) for view in views),
        f"<section><h2>recipe (resolved)</h2><pre>{escape(recipe_text)}</pre></section>",
        "</body></html>",
    ]
    out = run_dir / "report.html"
    tmp = out.with_name(".report.html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(out)
    return out
