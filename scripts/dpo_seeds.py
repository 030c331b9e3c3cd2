"""Is the quickstart's DPO gain more than one shuffle's luck? Rerun its dpo stage with other seeds.

Adds `dpo_seed<N>` (the recipe's dpo stage, seed N: another pair and replay order) and its evaluation
against SFT to the quickstart recipe, runs it in the demo's run directory (every other stage is
cached; the run's recipe.yaml and report then include the seed stages), and prints the paired
per-family difference from SFT of each seed's DPO model. Run after
`make demo` (about 1.5 minutes per seed on 2 cores):

    .venv/bin/python scripts/dpo_seeds.py [--run-dir runs/quickstart] [--seeds 1 2]
"""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import yaml

from posttrain.cli import main as posttrain
from posttrain.recipe.rundir import MANIFEST, read_json

ROOT = Path(__file__).resolve().parents[1]


def with_seeds(recipe: dict, seeds: list[int]) -> dict:
    """The recipe with a dpo_seed<N> stage and its evaluation against eval_sft per seed."""
    stages = {stage["id"]: stage for stage in recipe["stages"]}
    out = copy.deepcopy(recipe)
    for seed in seeds:
        dpo = copy.deepcopy(stages["dpo"])
        dpo["id"] = f"dpo_seed{seed}"
        dpo["config"] = {**dpo.get("config", {}), "seed": seed}
        evaluation = copy.deepcopy(stages["eval_dpo"])
        evaluation["id"] = f"eval_dpo_seed{seed}"
        evaluation["inputs"] = {**evaluation["inputs"], "model": dpo["id"], "baseline": "eval_sft"}
        out["stages"] += [dpo, evaluation]
    return out


def paired_row(run_dir: Path, stage: str) -> dict[str, float]:
    paired = read_json(run_dir / stage / MANIFEST)["metrics"]["paired"]
    return {family: entry["diff"] for family, entry in paired["families"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "quickstart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    args.recipe, args.run_dir = args.recipe.resolve(), args.run_dir.resolve()
    os.chdir(ROOT)  # the recipe's path: inputs are relative to the repository
    recipe = with_seeds(yaml.safe_load(args.recipe.read_text()), args.seeds)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    seeded = args.run_dir / "dpo_seeds.yaml"
    seeded.write_text(yaml.safe_dump(recipe, sort_keys=False))
    if posttrain(["run", str(seeded), "--run-dir", str(args.run_dir)]) != 0:
        raise SystemExit("the run failed: see the messages above")
    rows = {"dpo (seed 0)": paired_row(args.run_dir, "eval_dpo")}
    rows.update({f"dpo seed {s}": paired_row(args.run_dir, f"eval_dpo_seed{s}") for s in args.seeds})
    families = list(next(iter(rows.values())))
    print("paired difference from SFT, per family (200 held-out prompts each)")
    print(f"{'model':<14}" + "".join(f"{f[:12]:>13}" for f in families))
    for name, row in rows.items():
        print(f"{name:<14}" + "".join(f"{row[f]:>+13.3f}" for f in families))


if __name__ == "__main__":
    main()
