"""Stages rejection_sampling, generate, pairs and judge through the real CLI, on a tiny random chat model."""
import json
import random
from pathlib import Path

import pytest
import torch

from posttrain.cli import build_parser, main
from posttrain.data.io import write_records
from posttrain.data.records import Completion, Conversation, Message, PreferencePair, Prompt, Response

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_THREADS", "1")  # stages set their own thread count from it


@pytest.fixture(scope="module")
def world_prompts(tmp_path_factory) -> Path:
    from posttrain.tinyworld.world import FAMILIES

    prompts = [p for name in ("math", "safety", "steerability") for p in FAMILIES[name].generate_prompts("train", 3, 0)]
    path = tmp_path_factory.mktemp("world") / "prompts.jsonl"
    write_records(path, prompts)
    return path


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rejection_sampling_with_a_committee_and_system_prompts(tmp_path, chat_model, world_prompts):
    out = tmp_path / "rs"
    args = ["rejection-sampling", "--input", f"model={chat_model}", "--input", f"model={chat_model}",
            "--input", f"prompts={world_prompts}", "--set", "samples=3", "--set", "max_new_tokens=6",
            "--set", "max_prompts_per_family=2", "--set", "min_score=0.0", "--set", "shard_size=4",
            "--set", "top_p=0.99", "--set", "top_k=50",
            "--set", "system_prompts={math: Answer exactly., steerability: ignored}", "--out", str(out)]
    assert main(args) == 0
    m = manifest(out)
    assert m["counts"]["input_rows"] == 6 and m["counts"]["responses"] == 18
    assert m["metrics"]["samples_per_model"] == [2, 1]
    families = m["metrics"]["families"]
    assert set(families) == {"math", "safety", "steerability", "overall"}
    assert families["overall"]["prompts"] == 6 and 0.0 <= families["overall"]["pass_rate"] <= 1.0
    assert sum(families["overall"]["difficulty"].values()) == 6
    completions = rows(out / "completions.jsonl")
    assert [len(c["responses"]) for c in completions] == [3] * 6
    assert all(r["score"] is not None and r["reason"] for c in completions for r in c["responses"])
    stats = completions[0]["meta"]
    assert {"pass_rate", "score_mean", "score_spread", "difficulty"} <= set(stats) and len(stats["models"]) == 3
    by_family = {c["prompt"]["family"]: c for c in completions}
    assert by_family["math"]["meta"]["system_prompt"] == "Answer exactly."
    assert "system_prompt" not in by_family["steerability"]["meta"]  # the prompt's own system message wins
    data = rows(out / "data.jsonl")  # min_score 0: every prompt keeps its best sample
    assert len(data) + m["counts"]["dropped"] == 6
    assert all(d["messages"][0]["role"] != "system" for d in data if d["meta"]["family"] == "math")
    best = max(by_family["math"]["responses"], key=lambda r: r["score"])
    math_row = next(d for d in data if d["meta"]["family"] == "math" and d["meta"]["prompt_id"] == by_family["math"]["prompt"]["id"])
    assert math_row["messages"][-1] == best["messages"][-1] and math_row["meta"]["score"] == best["score"]
    assert not (out / "shards").exists()


def test_rejection_sampling_threshold_drops_with_reasons(tmp_path, chat_model, world_prompts):
    out = tmp_path / "rs"
    assert main(["rejection-sampling", "--input", f"model={chat_model}", "--input", f"prompts={world_prompts}",
                 "--set", "samples=2", "--set", "max_new_tokens=4", "--set", "max_prompts_per_family=1",
                 "--set", "min_score=2.0", "--out", str(out)]) == 0
    m = manifest(out)
    assert m["counts"]["kept"] == 0 and m["counts"]["dropped_by_reason"] == {"below_min_score": 3}
    assert (out / "data.jsonl").read_text() == ""


def test_rejection_sampling_rescores_earlier_samples_without_sampling(tmp_path, chat_model, world_prompts, capsys):
    first = tmp_path / "rs"
    assert main(["rejection-sampling", "--input", f"model={chat_model}", "--input", f"prompts={world_prompts}",
                 "--set", "samples=3", "--set", "max_new_tokens=6", "--set", "max_prompts_per_family=2",
                 "--set", "min_score=0.0", "--out", str(first)]) == 0
    again = tmp_path / "rescored"  # no model input: nothing can be sampled
    assert main(["rejection-sampling", "--input", f"completions={first}", "--input", f"prompts={world_prompts}",
                 "--set", "samples=2", "--set", "max_prompts_per_family=1", "--set", "min_score=0.0",
                 "--out", str(again)]) == 0
    m = manifest(again)
    assert m["metrics"]["rescored"] and m["counts"]["input_rows"] == 3 and m["counts"]["responses"] == 6
    source = {c["prompt"]["id"]: c for c in rows(first / "completions.jsonl")}
    for c in rows(again / "completions.jsonl"):
        earlier = source[c["prompt"]["id"]]["responses"][:2]  # the first 2 of 3, same texts, scored again
        assert [r["messages"] for r in c["responses"]] == [r["messages"] for r in earlier]
        assert [r["score"] for r in c["responses"]] == [r["score"] for r in earlier]  # same grader, same scores
    too_many = tmp_path / "too_many"  # 3 prompts per family asked, 2 sampled: an error, not a smaller data set
    assert main(["rejection-sampling", "--input", f"completions={first}", "--input", f"prompts={world_prompts}",
                 "--set", "samples=2", "--set", "max_prompts_per_family=3", "--out", str(too_many)]) != 0
    assert "3 of 9 prompts have no samples in `completions`" in capsys.readouterr().err


def test_generate_writes_unscored_completions(tmp_path, chat_model, world_prompts):
    out = tmp_path / "gen"
    assert main(["generate", "--input", f"model={chat_model}", "--input", f"prompts={world_prompts}",
                 "--set", "samples=2", "--set", "max_new_tokens=4", "--set", "max_prompts_per_family=1",
                 "--out", str(out)]) == 0
    completions = rows(out / "completions.jsonl")
    assert len(completions) == 3 and all(len(c["responses"]) == 2 for c in completions)
    assert all("score" not in r for c in completions for r in c["responses"])
    # The judge stage scores them with the graders, ready for `pairs`.
    judged = tmp_path / "judged"
    assert main(["judge", "--input", f"completions={out}", "--set", "scorer={type: grader}", "--out", str(judged)]) == 0
    scored = rows(judged / "completions.jsonl")
    assert [c["id"] for c in scored] == [c["id"] for c in completions]
    assert all(0.0 <= r["score"] <= 1.0 for c in scored for r in c["responses"])
    assert manifest(judged)["counts"]["scored_responses"] == 6


def scored_completions(path: Path) -> Path:
    texts = ["The answer is 19.", "I think nineteen maybe", "The answer is 19!", "Forty two apples today"]
    completions = []
    for i, scores in enumerate([[1.0, 0.0, 1.0, 0.5], [0.5, 0.5, 0.5, 0.5], [1.0, 0.9, 0.95, 0.92]]):
        prompt = Prompt(messages=[Message(role="user", content=f"question {i}")], family="math")
        completions.append(Completion(prompt=prompt, responses=[
            Response(index=k, messages=[Message(role="assistant", content=t)], score=s)
            for k, (t, s) in enumerate(zip(texts, scores))]))
    write_records(path, completions)
    return path


def test_pairs_stage_filters_and_records_strength(tmp_path):
    source = scored_completions(tmp_path / "completions.jsonl")
    out = tmp_path / "pairs"
    assert main(["pairs", "--input", f"completions={source}", "--set", "strategy=all_ranked_pairs",
                 "--set", "min_gap=0.2", "--out", str(out)]) == 0
    m = manifest(out)
    pairs = rows(out / "pairs.jsonl")
    # Prompt 0: 1.0 > 0.5 > 0.0 twice over; the two 1.0 answers are near-identical to each other but never paired.
    assert len(pairs) == m["counts"]["pairs"] == 5
    assert m["counts"]["dropped_by_reason"] == {"no_score_difference": 1, "small_gap": 6}
    assert m["metrics"]["strengths"] == {"better": 3, "significantly_better": 2}
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert all(PreferencePair.model_validate(p).id == p["id"] for p in pairs)


def test_pairs_stage_with_references_pairs_all_failing_prompts(tmp_path):
    source = scored_completions(tmp_path / "completions.jsonl")
    references = tmp_path / "references.jsonl"
    answered = [{"messages": [{"role": "user", "content": f"question {i}"},
                              {"role": "assistant", "content": "It is 19."}]}
                for i in range(1, 21)]  # question 1 is sampled; 3-20 are not
    broken = {"messages": [{"role": "user", "content": "question 2"}]}  # no answer: quarantined
    references.write_text("".join(json.dumps(row) + "\n" for row in answered[:1] + [broken] + answered[2:]))
    out = tmp_path / "pairs"
    assert main(["pairs", "--input", f"completions={source}", "--input", f"references={references}",
                 "--set", "reference_score=0.8", "--out", str(out)]) == 0
    m = manifest(out)
    # Prompt 1's four samples all score 0.5: its reference (scored 0.8) now pairs against one of them.
    assert m["counts"]["references"] == 19 and m["counts"]["prompts_with_reference"] == 1
    assert m["counts"]["quarantined"] == 1
    assert m["metrics"]["reference_chosen"] == {"math": 1}
    by_prompt = {p["prompt"]["messages"][0]["content"]: p for p in rows(out / "pairs.jsonl")}
    assert by_prompt["question 1"]["chosen"][0]["content"] == "It is 19."
    assert by_prompt["question 1"]["chosen_score"] == 0.8 and by_prompt["question 1"]["rejected_score"] == 0.5
    assert by_prompt["question 0"]["chosen"][0]["content"] == "The answer is 19."  # no reference: as before


def test_pairs_stage_perturbs_passing_answers_into_failing_ones(tmp_path):
    from posttrain.tinyworld.world import FAMILIES, TinyWorldGrader

    completions = []
    for name in ("instruction_following", "steerability", "tool_use"):
        family = FAMILIES[name]
        for prompt in family.generate_prompts("train", 3, 0):
            good = family.reference_solution(prompt)
            bad = family.corrupt(prompt, good, random.Random(0))
            completions.append(Completion(prompt=prompt, responses=[Response(index=0, messages=good, score=1.0),
                                                                    Response(index=1, messages=bad, score=0.0)]))
    source = tmp_path / "completions.jsonl"
    write_records(source, completions)
    references = tmp_path / "references.jsonl"  # the same answers as references: joined, never perturbed
    write_records(references, [Conversation(messages=[*c.prompt.messages, *c.responses[0].messages])
                               for c in completions])
    out = tmp_path / "pairs"
    assert main(["pairs", "--input", f"completions={source}", "--input", f"references={references}",
                 "--set", "perturb=2", "--set", "perturb_responses=2", "--out", str(out)]) == 0
    m = manifest(out)
    pairs = [PreferencePair.model_validate(p) for p in rows(out / "pairs.jsonl")]
    perturbed = [p for p in pairs if p.meta.strategy == "perturbed"]
    # Best vs worst: one per prompt unless near-identical (the corruptions often are), as without `perturb`.
    assert len(pairs) - len(perturbed) + m["counts"]["dropped_by_reason"]["near_identical"] == 9
    assert len(perturbed) == 18 and sum(m["metrics"]["perturbed"].values()) == 18  # two per prompt
    grader = TinyWorldGrader()
    for pair in perturbed:  # the reference answer against an edit of it that the grader fails
        assert grader.grade(pair.prompt, pair.chosen).passed and not grader.grade(pair.prompt, pair.rejected).passed
        assert pair.rejected[:-1] == pair.chosen[:-1] and pair.meta.rejected_reason


def test_judge_stage_on_pairs_with_a_local_model(tmp_path, chat_model):
    pairs = tmp_path / "pairs.jsonl"
    prompt = Prompt(messages=[Message(role="user", content="what is the sum")])
    write_records(pairs, [PreferencePair(prompt=prompt, chosen=[Message(role="assistant", content="answer 5")],
                                         rejected=[Message(role="assistant", content="answer 7")])])
    out = tmp_path / "judge"
    assert main(["judge", "--input", f"pairs={pairs}", "--input", f"model={chat_model}",
                 "--set", "max_new_tokens=4", "--out", str(out)]) == 0
    m = manifest(out)  # a random model names no verdict: the pair is dropped with the reason
    assert m["metrics"]["agreement_rate"] == 0.0 and m["metrics"]["verdicts"] == {"unparsed": 1}
    assert m["counts"]["dropped_by_reason"] == {"judge_unparsed": 1}


def test_help_lists_inputs_and_fields():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command, needles in {"rejection-sampling": ["prompts", "model (optional)", "system_prompts", "min_score", "scorer"],
                             "generate": ["backend", "samples", "shard_size"],
                             "judge": ["pairs (optional)", "agree"], "pairs": ["strategy", "max_similarity", "min_gap"]}.items():
        text = sub.choices[command].format_help()
        for needle in needles:
            assert needle in text, (command, needle)


def test_rejection_sampling_over_an_openai_server_quarantines_failures_and_keeps_no_key(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generate"))
    from fake_openai_server import FakeOpenAIServer, last_user_text
    from posttrain.tinyworld.world import FAMILIES

    prompts = FAMILIES["math"].generate_prompts("train", 21, 0)
    write_records(tmp_path / "prompts.jsonl", prompts)
    answers = {p.messages[-1].content: p.check["answer"] for p in prompts}

    def responder(body, choice):  # right for even seeds, wrong for odd ones
        return f"Answer: {answers[last_user_text(body)] if body['seed'] % 2 == 0 else -1}"

    secret = "sk-test-do-not-leak-123"
    monkeypatch.setenv("FAKE_KEY_FOR_TEST", secret)
    with FakeOpenAIServer({prompts[1].messages[-1].content: ["400"]}, responder=responder) as server:
        backend = (f"[{{type: openai, base_url: '{server.base_url}', model: fake-model, api_key_env: FAKE_KEY_FOR_TEST, "
                   "options: {max_retries: 1, backoff_base_s: 0.01, timeout_s: 5}}]")
        out = tmp_path / "rs"
        assert main(["rejection-sampling", "--input", f"prompts={tmp_path / 'prompts.jsonl'}", "--set", "samples=2",
                     "--set", f"backends={backend}", "--set", "shard_size=8", "--out", str(out)]) == 0
        assert server.authorizations[0] == f"Bearer {secret}"
    m = manifest(out)
    # The prompt whose requests all failed is quarantined (1 of 21: within the allowed share).
    assert m["counts"]["quarantined_by_reason"] == {"http_400": 1} and m["counts"]["completions"] == 20
    # Sample seeds are consecutive, so exactly one of each prompt's two samples is right.
    assert m["metrics"]["families"]["math"]["pass_rate"] == 0.5 and m["counts"]["kept"] == 20
    kept = rows(out / "data.jsonl")
    assert [row["messages"][-1]["content"] for row in kept] == [f"Answer: {p.check['answer']}" for p in prompts
                                                                if p is not prompts[1]]
    for path in out.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace"), path


def test_prompt_statistics_by_hand():
    from posttrain.stages.rejection_sampling import difficulty_band, prompt_stats

    stats = prompt_stats([1.0, 0.0, 1.0, 0.5], min_score=1.0)
    assert stats["pass_rate"] == 0.5 and stats["difficulty"] == 0.5 and stats["score_mean"] == 0.625
    # deviations from 0.625: .375, -.625, .375, -.125; population std = sqrt(0.6875 / 4)
    assert stats["score_spread"] == pytest.approx((0.6875 / 4) ** 0.5)
    assert [difficulty_band(r) for r in (0.0, 0.125, 0.5, 0.75, 1.0)] == ["unsolved", "hard", "medium", "easy", "easy"]
