"""Stage `dpo` through the real CLI on a tiny chat model: reference cache, special-token masking, RPO chain."""
import json
import typing
from pathlib import Path

import pytest
import torch

from posttrain.cli import main
from posttrain.data.records import Message, PreferencePair, Prompt

torch.set_num_threads(1)


def test_loss_names_match_the_registry():
    from posttrain.losses.preference import PREFERENCE_LOSSES
    from posttrain.stages.dpo import LossName

    assert set(typing.get_args(LossName)) == set(PREFERENCE_LOSSES)


@pytest.fixture(scope="module")
def chat_model(make_chat_model) -> Path:
    # The pairs below are sums of number words: the tokenizer learns those words.
    return make_chat_model("user assistant system what is the sum of two and three answer five four six",
                           seed_words=("answer", "sum"), max_positions=256)


def write_pairs(path: Path, n: int = 24) -> Path:
    words = ["four", "five", "six", "three", "two"]
    rows = []
    for i in range(n):
        prompt = Prompt(messages=[Message(role="user", content=f"what is the sum of {words[i % 5]} and two")])
        rows.append(PreferencePair(
            prompt=prompt,
            chosen=[Message(role="assistant", content=f"answer {words[(i + 1) % 5]}")],
            rejected=[Message(role="assistant", content="answer " + "six " * (1 + i % 3))],
            chosen_score=1.0, rejected_score=0.0,
        ).model_dump(mode="json"))
    rows.append({"prompt": {"messages": []}, "chosen": [], "rejected": []})  # malformed: quarantined
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


TRAIN = ["--set", "max_steps=3", "--set", "pairs_per_step=4", "--set", "micro_batch_tokens=256",
         "--set", "max_tokens=64", "--set", "lr=1e-3"]


def run_stage(out: Path, model: Path, pairs: Path, *extra: str) -> dict:
    """`posttrain dpo ...` without the HTML report (its plots cost more than the tiny stage)."""
    import posttrain.cli

    args = ["dpo", "--input", f"model={model}", "--input", f"pairs={pairs}", "--out", str(out), *extra]
    render, posttrain.cli._render = posttrain.cli._render, lambda run_dir: None
    try:
        assert main(args) == 0
    finally:
        posttrain.cli._render = render
    return json.loads((out / "manifest.json").read_text())


def step_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "step" in r]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, chat_model) -> tuple[Path, Path]:
    """(stage dir, pairs file) of one `dpo_nll` stage run from the random chat model."""
    tmp = tmp_path_factory.mktemp("dpo")
    pairs = write_pairs(tmp / "pairs.jsonl")
    run_stage(tmp / "dpo", chat_model, pairs, *TRAIN, "--set", "loss=dpo_nll", "--set", "nll_weight=0.5")
    return tmp / "dpo", pairs


def test_dpo_stage_trains_caches_the_reference_and_logs_metrics(dpo_run):
    out, _ = dpo_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["pairs"] == 24 and manifest["counts"]["steps"] == 3
    assert manifest["metrics"]["reference"] == "computed"
    assert (out / "model" / "config.json").exists()
    stored = json.loads((out / "reference_logps.json").read_text())
    assert len(stored["logps"]) == 24 and all(c < 0 and r < 0 for c, r in stored["logps"])
    assert (out / "quarantine.jsonl").exists()
    steps = step_rows(out)
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert {"reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_logp",
            "rejected_logp"} <= set(steps[0])
    # The starting model is the reference: the DPO term is log 2, the rest is 0.5 * per-token NLL.
    assert steps[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert steps[0]["loss"] > 0.6931


def test_rpo_stage_chains_from_the_previous_stage_and_resumes_with_the_cached_reference(tmp_path, dpo_run):
    previous, pairs = dpo_run
    out = tmp_path / "rpo"
    rpo = [*TRAIN, "--input", f"reference={previous}", "--set", "loss=rpo_bwd_kl", "--set", "reward_source=score",
           "--set", "eta=2.0"]
    manifest = run_stage(out, previous, pairs, *rpo)
    assert manifest["counts"]["pairs"] == 24 and manifest["metrics"]["reference"] == "computed"
    # Reference = the DPO output = the starting policy: a = 0, b = 2, loss = KL(Bern(s(2)) || Bern(1/2)).
    s = torch.sigmoid(torch.tensor(2.0))
    expected = float(s * torch.log(s / 0.5) + (1 - s) * torch.log((1 - s) / 0.5))
    assert step_rows(out)[0]["loss"] == pytest.approx(expected, abs=1e-4)
    stored = (out / "reference_logps.json").read_text()
    (out / "_DONE").unlink()  # as if cut off after the reference pass: the rerun reuses the stored log-probs
    manifest = run_stage(out, previous, pairs, *rpo)
    assert manifest["metrics"]["reference"] == "cached"
    assert (out / "reference_logps.json").read_text() == stored


def test_masking_special_tokens_removes_the_end_of_turn_from_the_loss(tmp_path, chat_model):
    from posttrain.data.lengths import LengthPolicy
    from posttrain.models.loading import load_causal_lm
    from posttrain.stages.dpo import special_token_ids
    from posttrain.train.preference import tokenize_pair

    _, tokenizer = load_causal_lm(chat_model)
    lines = write_pairs(tmp_path / "p.jsonl").read_text().splitlines()
    record = PreferencePair.model_validate_json(lines[0])
    policy = LengthPolicy(max_tokens=64)
    plain, _ = tokenize_pair(tokenizer, record, "chatml", policy)
    masked, _ = tokenize_pair(tokenizer, record, "chatml", policy, special_token_ids(tokenizer, "chatml"))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for side in ("chosen", "rejected"):
        ids = plain[side]["input_ids"]
        changed = [i for i, (a, b) in enumerate(zip(plain[side]["loss_mask"], masked[side]["loss_mask"])) if a != b]
        assert changed == [i for i, t in enumerate(ids) if t == end and plain[side]["loss_mask"][i]]
        assert len(changed) == 1


def test_config_errors_fail_at_load_time(tmp_path, chat_model):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    base = ["dpo", "--input", f"model={chat_model}", "--input", f"pairs={pairs}", "--out", str(tmp_path / "x")]
    assert main(base + ["--set", "loss=kto"]) == 2
    assert main(base + ["--set", "accumulation=4"]) == 2
    assert main(base + ["--set", "max_tokens=600", "--set", "micro_batch_tokens=1024"]) == 2
