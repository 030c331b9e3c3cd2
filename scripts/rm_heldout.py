"""Rank saved held-out samples with reward models, alone and summed: the README's reward-model numbers.

The samples are a `reward_model` stage's `eval_samples.jsonl` (prompts of held-out families, K sampled
responses each). They are graded again by the tiny world's grader, and each reward model, then their
ensemble (each on its recorded training scale, as the framework's `normalize` option does), is measured
the way the stage measures one: pairwise accuracy of passing over failing responses per family and per
RewardBench category, and the best-of-N gain. One model scores 9,600 samples in about 2.5 minutes on
2 cores:

    .venv/bin/python scripts/rm_heldout.py --samples runs/study/rm/eval_samples.jsonl \\
        runs/A/rm/model runs/B/rm/model [--no-ensemble]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from posttrain.data.io import load_records
from posttrain.data.quarantine import RowLog
from posttrain.data.records import Completion
from posttrain.evaluate.reward import evaluate_reward_model
from posttrain.judge.reward_scorer import RewardModelScorer
from posttrain.judge.scorer import FixedScores
from posttrain.models.runtime import set_cpu_threads
from posttrain.stages.reward_model import REWARDBENCH_CATEGORIES
from posttrain.tinyworld.world import TinyWorldGrader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="reward model directories")
    parser.add_argument("--samples", type=Path, required=True, help="a reward_model stage's eval_samples.jsonl")
    parser.add_argument("--n", type=int, default=16, help="the best-of-N column shown (default 16)")
    parser.add_argument("--no-ensemble", action="store_true", help="only the models one by one")
    args = parser.parse_args()
    set_cpu_threads()
    with tempfile.TemporaryDirectory() as tmp:
        rows = load_records(args.samples, Completion, RowLog(Path(tmp) / "quarantine.jsonl"), 0.0, str(args.samples))
    prompts = [row.prompt for row in rows]
    samples = [[response.messages for response in row.responses] for row in rows]
    flat_prompts = [p for p, responses in zip(prompts, samples) for _ in responses]
    flat_responses = [r for responses in samples for r in responses]
    scorers = []
    for path in args.models:  # each on its recorded training scale, as `normalize: true` does
        values = [s.value for s in RewardModelScorer(path, normalize=True).score(flat_prompts, flat_responses)]
        scorers.append(FixedScores(values, name=str(path)))
    if len(scorers) > 1 and not args.no_ensemble:
        scorers.append(FixedScores([sum(v) for v in zip(*(s.values for s in scorers))], name="ensemble (sum)"))
    grader = TinyWorldGrader()
    for scorer in scorers:
        result = evaluate_reward_model(scorer, grader, prompts, samples, category_of=REWARDBENCH_CATEGORIES)
        overall = result.accuracy["overall"]
        print(f"{scorer.name}: accuracy {overall['score']:.3f} on {overall['n']} pairs")
        for family, entry in sorted(result.accuracy.items()):
            gain = result.best_of_n.get(family, {}).get(str(args.n), {}).get("gain")
            gain_text = f"{gain:+.3f}" if gain is not None else "-"
            print(f"  {family:24s} accuracy {entry['score']:.3f} (n {entry['n']:3d})  "
                  f"best-of-{args.n} gain {gain_text}")
        for category, entry in sorted(result.category_accuracy.items()):
            print(f"  [{category}] accuracy {entry['score']:.3f} (n {entry['n']:3d})")


if __name__ == "__main__":
    main()
