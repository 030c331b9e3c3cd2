"""Stage `reward_model` through the real CLI on a tiny random chat model, and the evaluation math by hand."""
import json
import random
from pathlib import Path

import pytest
import torch

from posttrain.cli import main
from posttrain.data.io import write_records
from posttrain.data.records import Completion, PreferencePair, Response
from posttrain.evaluate.reward import accuracy_table, best_of_n_gain, best_of_n_table, passing_failing_pairs

torch.set_num_threads(1)
FAMILIES = ("math", "safety", "steerability")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Graded pairs (reference vs corrupted, one an exact copy, one a minimal edit), scored samples and eval
    prompts."""
    from posttrain.data.similarity import rouge_l_f
    from posttrain.synth.perturb import edited_messages
    from posttrain.tinyworld.world import FAMILIES as WORLD

    out = tmp_path_factory.mktemp("world")
    rng = random.Random(0)
    pairs, completions = [], []
    for name in FAMILIES:
        family = WORLD[name]
        for prompt in family.generate_prompts("train", 2, 0):
            ref = family.reference_solution(prompt)
            bad = family.corrupt(prompt, ref, rng)
            pairs.append(PreferencePair(prompt=prompt, chosen=ref, rejected=bad, strength="better",
                                        chosen_score=family.grade(prompt, ref).score,
                                        rejected_score=family.grade(prompt, bad).score))
            completions.append(Completion(prompt=prompt, responses=[
                Response(index=0, messages=ref, score=1.0), Response(index=1, messages=bad, score=0.0)]))
    pairs.append(PreferencePair(prompt=pairs[0].prompt, chosen=pairs[0].chosen, rejected=pairs[0].chosen))
    text = pairs[0].chosen[-1].content
    edit = edited_messages(pairs[0].chosen, text[:-1] + str((int(text[-1]) + 1) % 10))  # the answer's last digit
    assert rouge_l_f(text, edit[-1].content) >= 0.9  # near-identical by the filter's measure
    pairs.append(PreferencePair(prompt=pairs[0].prompt, chosen=pairs[0].chosen, rejected=edit, strength="better",
                                meta={"strategy": "perturbed", "edit": "move_number"}))
    write_records(out / "pairs.jsonl", pairs)
    write_records(out / "completions.jsonl", completions)
    evals = [p for name in FAMILIES for p in WORLD[name].generate_prompts("eval", 2, 0)]
    write_records(out / "eval.jsonl", evals)
    return out


def read_pairs(world: Path) -> list[PreferencePair]:
    return [PreferencePair.model_validate_json(line) for line in (world / "pairs.jsonl").read_text().splitlines()]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_reward_model_stage_trains_filters_and_evaluates(tmp_path, chat_model, world):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "rm"
    args = ["reward-model", "--input", f"model={chat_model}", "--input", f"pairs={world / 'pairs.jsonl'}",
            "--input", f"scored={world / 'completions.jsonl'}", "--input", f"policy={chat_model}",
            "--input", f"prompts={world}", "--set", "loss=margin", "--set", "lr=1e-3", "--set", "pointwise_alpha=0.1",
            "--set", "micro_batch_tokens=768", "--set", "eval.prompts_per_family=1", "--set", "eval.samples=4",
            "--set", "eval.ns=[1, 2, 4]", "--set", "eval.max_new_tokens=4", "--out", str(out)]
    assert main(args) == 0
    m = manifest(out)
    counts = m["counts"]
    assert counts["input_pairs"] == 8 and counts["input_scored"] == 6
    assert counts["dropped_by_reason"]["similar_responses"] >= 1  # the exact copy at least
    dropped = {json.loads(line).get("row", {}).get("id") for line in (out / "dropped.jsonl").read_text().splitlines()}
    perturbed = [p for p in read_pairs(world) if getattr(p.meta, "strategy", None) == "perturbed"]
    assert len(perturbed) == 1 and perturbed[0].id not in dropped  # a minimal edit is kept: its fault is the point
    assert counts["groups"] == counts["kept_pairs"] + 6 and counts["steps"] >= 1
    metrics = m["metrics"]
    assert metrics["loss"] == "margin" and metrics["head"] == {"outputs": ["reward"], "weights": [1.0]}
    assert set(metrics["best_of_n"]) == {*FAMILIES, "overall"}
    assert set(metrics["best_of_n"]["math"]) == {"1", "2", "4"}
    assert metrics["best_of_n"]["overall"]["1"]["gain"] == pytest.approx(0.0)  # best of one is the mean
    assert isinstance(metrics["reward_accuracy"], dict) and metrics["eval_samples_per_prompt"] == 4
    rows = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    gain_rows = [r for r in rows if any(k.startswith("best_of_n_gain/") for k in r)]
    assert [r["step"] for r in gain_rows] == [1, 2, 4]
    samples = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(r["reward"] is not None and r["score"] is not None
                                     for s in samples for r in s["responses"])
    hf = AutoModelForSequenceClassification.from_pretrained(out / "model", local_files_only=True)
    assert hf.config.num_labels == 1
    # The reward's mean and std over the training responses are recorded for normalising scorers.
    scale = hf.config.posttrain_reward_scale
    assert scale == metrics["reward_scale"] and scale["n"] == 2 * counts["kept_pairs"] + 12 and scale["std"] > 0

    # Ensembled with itself, a model ranks exactly as it does alone (the sum of two equal z-scores).
    twin = tmp_path / "twin"
    assert main(args[:-2] + ["--input", f"ensemble={out}", "--out", str(twin)]) == 0
    twin_metrics = manifest(twin)["metrics"]
    assert twin_metrics["reward_scale"] == scale  # same seed, same data: the same model
    ensemble = twin_metrics["ensemble"]
    assert ensemble["members"] == [str(twin / "model"), str(out / "model")]
    assert ensemble["reward_accuracy"] == twin_metrics["reward_accuracy"]
    assert ensemble["best_of_n"] == twin_metrics["best_of_n"]
    html = (twin / "report.html").read_text()  # the report tables both: accuracy per family and best-of-N gain
    assert "reward models: held-out pairwise accuracy" in html
    # Rows of the accuracy tables (per family, per category) and one per N of the gain table, for both.
    assert html.count("<th>reward_model</th>") == 2 + 3 and html.count("<th>reward_model + 1 (ensemble)</th>") == 2 + 3
    assert html.count("+0.000 (1 prompts)") >= 2 * 3  # best of 1 is the mean: gain 0 in every family, both rows


def test_groups_without_a_pair_train_only_under_the_pointwise_term(tmp_path, chat_model, world):
    """A prompt whose samples all tie teaches nothing unless the pointwise term uses its scores."""
    mixed = Completion.model_validate_json((world / "completions.jsonl").read_text().splitlines()[0])
    tied = mixed.model_copy(update={"id": "tied", "responses": [r.model_copy(update={"score": 1.0})
                                                                for r in mixed.responses]})
    write_records(tmp_path / "completions.jsonl", [mixed, tied])
    for alpha, groups in ((0.0, 1), (0.1, 2)):
        out = tmp_path / f"rm-{alpha}"
        assert main(["reward-model", "--input", f"model={chat_model}", "--input",
                     f"scored={tmp_path / 'completions.jsonl'}", "--set", f"pointwise_alpha={alpha}",
                     "--set", "micro_batch_tokens=768", "--out", str(out)]) == 0
        counts = manifest(out)["counts"]
        assert counts["groups"] == groups and counts["input_scored"] == 2
        assert counts["dropped_by_reason"].get("nothing_to_learn", 0) == 2 - groups


def test_reward_model_stage_needs_data(tmp_path, chat_model):
    code = main(["reward-model", "--input", f"model={chat_model}", "--out", str(tmp_path / "rm")])
    assert code != 0 and "no pairs or scored rows" in manifest(tmp_path / "rm")["error"]


def test_config_rejects_unknown_loss_and_mismatched_head():
    from pydantic import ValidationError

    from posttrain.stages.reward_model import RewardModelConfig

    with pytest.raises(ValidationError, match="loss"):
        RewardModelConfig(loss="hinge")
    with pytest.raises(ValidationError, match="2 outputs but 1 weights"):
        RewardModelConfig(head_outputs=["a", "b"], head_weights=[1.0])
    assert RewardModelConfig(head="helpsteer2").head_spec()[1] == [0.3, 0.74, 0.46, 0.47, -0.33]
    assert RewardModelConfig(head="afm", head_outputs=["reward", "grade"]).head_spec() == (["reward", "grade"], [1.0, 1.0])


# ---------------------------------------------------------------- evaluation math, by hand


def test_accuracy_counts_ties_as_wrong():
    table = accuracy_table([True, False, True, False], [["math", "overall"], ["math", "overall"],
                                                       ["safety", "overall"], ["safety", "overall"]])
    assert table["math"]["score"] == 0.5 and table["overall"]["n"] == 4
    assert 0.0 <= table["math"]["low"] < 0.5 < table["math"]["high"] <= 1.0


def test_passing_failing_pairs():
    assert passing_failing_pairs([True, False, False], 4, random.Random(0)) == [(0, 1), (0, 2)]
    assert len(passing_failing_pairs([True, True, False, False], 3, random.Random(0))) == 3
    assert passing_failing_pairs([True, True], 4, random.Random(0)) == []


def test_best_of_n_gain_by_hand():
    rewards = [0.1, 0.9, 0.5, 0.5]
    grades = [0.0, 1.0, 0.0, 1.0]
    # N = 4: pick index 1 (grade 1), mean 0.5 -> gain 0.5.
    assert best_of_n_gain(rewards, grades, 4) == (1.0, 0.5)
    # N = 2: blocks {0, 1} -> pick 1 (1.0, mean 0.5); {2, 3} tie -> first, index 2 (0.0, mean 0.5).
    assert best_of_n_gain(rewards, grades, 2) == (0.5, 0.5)
    # N = 1: the pick is the sample: no gain.
    assert best_of_n_gain(rewards, grades, 1) == (0.5, 0.5)
    table = best_of_n_table([rewards, [1.0, 0.0, 0.0, 0.0]], [grades, [0.0, 1.0, 1.0, 1.0]], ["a", "b"], [4],
                            greedy=[0.0, 1.0])
    assert table["a"]["4"]["gain"] == 0.5 and table["b"]["4"]["gain"] == -0.75
    assert table["overall"]["4"]["gain"] == pytest.approx(-0.125)
    assert table["a"]["4"]["gain_vs_greedy"] == 1.0 and table["b"]["4"]["gain_vs_greedy"] == -1.0
    with pytest.raises(ValueError, match="best-of-8"):
        best_of_n_gain(rewards, grades, 8)
