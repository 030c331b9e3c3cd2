"""The one entry point.

    posttrain run RECIPE [--run-dir DIR] [--from-stage ID]   run a recipe (cached, resumable)
    posttrain report RUN_DIR                                 (re)write RUN_DIR/report.html
    posttrain kinds                                          list the stage kinds
    posttrain KIND --input NAME=PATH ... --out DIR           run one stage standalone, e.g. `posttrain reward-model`

Modules named in $POSTTRAIN_PLUGINS (comma-separated) are imported first; they may register stage kinds.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

import yaml

from posttrain.data.quarantine import QuarantineThresholdError
from posttrain.recipe import RecipeError, RunDirError, StageFailedError, plan_recipe, run_recipe
from posttrain.stages import registry

_RESERVED = {"run", "report", "kinds"}


def _render(run_dir: Path) -> None:
    from posttrain.report import render_report  # matplotlib loads only when a report is written

    print(f"report: {render_report(run_dir)}", flush=True)


def _cmd_run(args: argparse.Namespace) -> int:
    run_recipe(args.recipe, run_dir=args.run_dir, from_stage=args.from_stage, after_run=_render)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():
        print(f"error: {args.run_dir} is not a directory", file=sys.stderr)
        return 2
    _render(Path(args.run_dir))
    return 0


def _cmd_kinds(args: argparse.Namespace) -> int:
    if not registry.kinds():
        print("no stage kinds registered")
    for kind in registry.kinds():
        summary, _ = _describe(kind)
        print(f"{kind.replace('_', '-'):24s} {summary.splitlines()[0] if summary else ''}")
    return 0


def _set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise RecipeError(flag, [f"{flag} {item!r}: expected NAME=VALUE"])
        out.append((name.strip(), value))
    return out


def _cmd_stage(args: argparse.Namespace) -> int:
    """One stage as a one-stage recipe whose stage directory is --out itself."""
    kind = args.kind
    config: dict[str, Any] = {}
    if args.config:
        config = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
    for key, raw in _pairs(args.set, "--set"):
        _set_dotted(config, key, yaml.safe_load(raw) if raw.strip() else raw)  # YAML: numbers, bools, lists
    inputs: dict[str, list[str]] = {}
    for name, path in _pairs(args.input, "--input"):
        inputs.setdefault(name, []).append(f"path:{Path(path).expanduser().resolve()}")
    stage = {"id": kind, "kind": kind, "config": config,
             "inputs": {name: refs[0] if len(refs) == 1 else refs for name, refs in inputs.items()}}
    data = {"name": kind, "seed": args.seed, "stages": [stage]}
    command = f"posttrain {kind.replace('_', '-')}"
    try:
        plan = plan_recipe(data, source=command, base_dir=Path.cwd(), flat=True)
    except RecipeError as err:  # the one-stage recipe is implicit: name fields as the user wrote them
        raise RecipeError(command, [e.replace("stages[0].", "", 1) for e in err.errors]) from None
    run_recipe(plan, run_dir=args.out, after_run=_render)
    return 0


def _describe(kind: str) -> tuple[str, str]:
    """(description, epilog listing inputs and config fields) of a kind, for --help."""
    try:
        cls = registry.get_stage(kind)
    except Exception as err:  # noqa: BLE001 - a broken stage module must not break the whole CLI
        return f"(cannot load: {type(err).__name__}: {err})", ""
    lines = ["inputs (--input NAME=PATH):"]
    lines += [f"  {name}{'' if required else ' (optional)'}" for name, required in cls.inputs.items()] or ["  none"]
    lines.append("config fields (--set NAME=VALUE, or --config FILE.yaml):")
    for name, field in cls.Config.model_fields.items():
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        annotation = field.annotation
        type_name = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
        lines.append(f"  {name} ({type_name}, {default}){': ' + field.description if field.description else ''}")
    return cls.description or cls.__doc__ or "", "\n".join(lines)


def _add_stage_commands(sub: argparse._SubParsersAction) -> None:
    for kind in registry.kinds():
        command = kind.replace("_", "-")
        if command in _RESERVED:
            continue
        description, epilog = _describe(kind)
        parser = sub.add_parser(command, help=(description.splitlines() or [""])[0], description=description,
                                epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--config", help="YAML file with the stage's config")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="set one config field (dots for nested keys); repeatable")
        parser.add_argument("--input", action="append", default=[], metavar="NAME=PATH",
                            help="bind an input to a file or directory; repeat a name to bind several")
        parser.add_argument("--out", required=True, help="the stage's artifact directory")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.set_defaults(handler=_cmd_stage, kind=kind)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subcommand per registered stage kind."""
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = sub.add_parser("run", help="run a recipe", description=(
        "Run a recipe's stages in order. A stage whose artifact with the same cache key is complete is "
        "skipped; a cut-off stage resumes. Writes runs/<name>/ (or --run-dir): recipe.yaml, metrics.jsonl, "
        "report.html and one directory per stage."))
    run.add_argument("recipe", help="recipe YAML file")
    run.add_argument("--run-dir", help="run directory (default runs/<recipe name>)")
    run.add_argument("--from-stage", metavar="ID",
                     help="rerun this stage and everything downstream of it from scratch: a top-level ID, "
                          "round-N/ID, or a round stage's bare ID for every round of it")
    run.set_defaults(handler=_cmd_run)
    report = sub.add_parser("report", help="write RUN_DIR/report.html", description="(Re)write a run's HTML report.")
    report.add_argument("run_dir")
    report.set_defaults(handler=_cmd_report)
    kinds = sub.add_parser("kinds", help="list stage kinds", description="List the registered stage kinds.")
    kinds.set_defaults(handler=_cmd_kinds)
    _add_stage_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the command; returns the process exit status."""
    registry.load_plugins()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["tinyworld", "pretrain"]:  # the documented spelling of `tinyworld-pretrain`
        argv = ["tinyworld-pretrain", *argv[2:]]
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (RecipeError, RunDirError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StageFailedError as err:
        cause = err.__cause__
        if cause is not None and not isinstance(cause, QuarantineThresholdError):
            traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
