"""Pair building: strategies, the gap and ROUGE-L filters with reasons, strengths and recorded scores."""
import math

import pytest

from posttrain.curate.pairs import PairOptions, build_pairs, prompt_key, reference_answers, strength_of, with_references
from posttrain.data.records import Completion, Conversation, Message, Prompt, Response

PROMPT = Prompt(messages=[Message(role="user", content="What is 2 + 3?")], family="math")
TEXTS = ["The answer is five.", "I think it is seven, maybe.", "Six is my guess here.", "Ninety nine apples."]


def completion(scores, texts=TEXTS, rewards=None, prompt=PROMPT) -> Completion:
    responses = [Response(index=i, messages=[Message(role="assistant", content=t)], score=s,
                          reward=None if rewards is None else rewards[i])
                 for i, (s, t) in enumerate(zip(scores, texts))]
    return Completion(prompt=prompt, responses=responses, meta={"stage": "rs"})


def run(completions, **options):
    drops = []
    pairs = list(build_pairs(completions, PairOptions(**options), lambda r, d, row: drops.append((r, d, row))))
    return pairs, drops


def test_best_vs_worst_records_scores_strength_and_lineage():
    c = completion([0.5, 1.0, 0.0, 0.25])
    (pair,), drops = run([c])
    assert drops == []
    assert pair.chosen[0].content == TEXTS[1] and pair.rejected[0].content == TEXTS[2]
    assert (pair.chosen_score, pair.rejected_score) == (1.0, 0.0)
    assert pair.strength == "significantly_better"
    assert pair.meta.chosen_id == c.responses[1].id and pair.meta.completion == c.id
    assert pair.meta.gap == 1.0 and pair.meta.strategy == "best_vs_worst"


def test_all_ranked_pairs_pairs_every_strict_difference():
    pairs, _ = run([completion([1.0, 0.5, 0.5, 0.0])], strategy="all_ranked_pairs")
    got = {(p.chosen[0].content, p.rejected[0].content) for p in pairs}
    # 1.0 > 0.5, 0.5, 0.0; each 0.5 > 0.0; the two 0.5 do not pair.
    assert got == {(TEXTS[0], TEXTS[1]), (TEXTS[0], TEXTS[2]), (TEXTS[0], TEXTS[3]),
                   (TEXTS[1], TEXTS[3]), (TEXTS[2], TEXTS[3])}


def test_best_vs_random_lower_is_seeded_and_always_lower():
    c = completion([1.0, 0.0, 0.5, 0.0])
    picks = {run([c], strategy="best_vs_random_lower", seed=s)[0][0].rejected[0].content for s in range(30)}
    assert picks == {TEXTS[1], TEXTS[2], TEXTS[3]}
    first = run([c], strategy="best_vs_random_lower", seed=3)[0]
    assert run([c], strategy="best_vs_random_lower", seed=3)[0] == first
    assert run([completion([1.0, 1.0, 1.0, 1.0])], strategy="best_vs_random_lower")[1][0][0] == "no_score_difference"


def test_filters_drop_with_reasons():
    near = ["The answer is five.", "The answer is five!", "the answer is five", "The answer is five"]
    pairs, drops = run([completion([1.0, 0.0, 0.5, 0.5], texts=near)])
    assert pairs == [] and drops[0][0] == "near_identical" and "ROUGE-L F 1.000" in drops[0][1]
    pairs, drops = run([completion([0.6, 0.5, 0.55, 0.52])], min_gap=0.2)
    assert pairs == [] and [d[0] for d in drops] == ["small_gap"]
    pairs, drops = run([completion([0.3, 0.3, 0.3, 0.3])])
    assert [d[0] for d in drops] == ["no_score_difference"]
    pairs, drops = run([completion([1.0, None, math.nan, 0.0])])
    assert len(pairs) == 1 and [d[0] for d in drops] == ["unscored", "unscored"]
    pairs, drops = run([completion([1.0, None, None, None])])
    assert [d[0] for d in drops] == ["unscored"] * 3 + ["too_few_responses"]
    # A looser threshold keeps the near-identical pair.
    pairs, _ = run([completion([1.0, 0.0, 0.5, 0.5], texts=near)], max_similarity=1.0)
    assert len(pairs) == 1


def test_rank_by_reward_records_rewards():
    (pair,), _ = run([completion([1.0, 1.0, 0.0, 0.0], rewards=[0.1, 2.5, -1.0, 0.3])], rank_by="reward",
                     strength_gaps=(3.0, 2.0, 1.0))
    assert pair.chosen[0].content == TEXTS[1] and pair.rejected[0].content == TEXTS[2]
    assert (pair.chosen_reward, pair.rejected_reward) == (2.5, -1.0)
    assert pair.strength == "significantly_better"  # gap 3.5


@pytest.mark.parametrize("gap, level", [(1.0, "significantly_better"), (0.75, "significantly_better"),
                                        (0.6, "better"), (0.3, "slightly_better"), (0.1, "negligibly_better")])
def test_strength_levels(gap, level):
    assert strength_of(gap, (0.75, 0.5, 0.25)) == level


def test_unknown_strategy_is_an_error():
    with pytest.raises(ValueError, match="unknown pair strategy"):
        run([completion([1.0, 0.0, 0.0, 0.0])], strategy="best")


def test_balance_tags_caps_each_tag_at_the_rarest_within_a_family():
    from posttrain.curate.pairs import balance_tags

    def safety(tag, n):
        prompt = Prompt(messages=[Message(role="user", content=f"{tag} question {n}")], family="safety", tags=[tag, "x"])
        return completion([1.0, 0.0], prompt=prompt)

    completions = [safety("safe_lookalike", n) for n in range(5)] + [safety("unsafe", n) for n in range(2)]
    completions.append(completion([1.0, 0.0]))  # math: no balanced tag, untouched
    pairs, _ = run(completions)
    drops = []
    kept = balance_tags(pairs, ["unsafe", "safe_lookalike"], seed=0, on_drop=lambda r, d, row: drops.append((r, d)))
    tags = [p.prompt.tags[0] if p.prompt.family == "safety" else p.prompt.family for p in kept]
    assert sorted(tags) == ["math", "safe_lookalike", "safe_lookalike", "unsafe", "unsafe"]
    assert len(drops) == 3 and all(r == "balanced" and "capped at 2" in d for r, d in drops)
    assert [p.id for p in kept] == [p.id for p in pairs if p in kept]  # input order kept
    again = balance_tags(pairs, ["unsafe", "safe_lookalike"], seed=0, on_drop=lambda *a: None)
    assert [p.id for p in again] == [p.id for p in kept]  # seeded
    # A tag with no pairs caps the others at zero: no one-sided safety data.
    only_lookalikes = [p for p in pairs if p.prompt.tags and p.prompt.tags[0] == "safe_lookalike"]
    assert balance_tags(only_lookalikes, ["unsafe", "safe_lookalike"], seed=0, on_drop=lambda *a: None) == []


def test_references_pair_against_failing_samples_and_yield_to_passing_ones():
    other = Prompt(messages=[Message(role="user", content="What is 4 + 4?")], family="math")
    references = [Conversation(messages=[*p.messages, Message(role="assistant", content=text)])
                  for p, text in ((PROMPT, "It is 5, two plus three."), (other, "It is 8, four plus four."))]
    answers = reference_answers(references)
    all_fail, one_passes = completion([0.0, 0.5, 0.0, 0.25]), completion([0.0, 1.0, 0.0, 0.25], prompt=other)
    unmatched = completion([0.0, 0.0, 0.0, 0.0], prompt=Prompt(messages=[Message(role="user", content="Hi")]))
    joined, reference_ids = with_references([all_fail, one_passes, unmatched], answers, score=1.0)
    assert reference_ids == {joined[0].responses[-1].id, joined[1].responses[-1].id} and joined[2] == unmatched
    assert joined[0].id == all_fail.id and len(joined[0].responses) == 5
    (ref_pair, sample_pair), drops = run(joined)
    # All samples fail: the reference (scored 1.0) against the worst sample (the last 0.0 in order).
    assert ref_pair.chosen[0].content == "It is 5, two plus three." and ref_pair.rejected[0].content == TEXTS[2]
    assert ref_pair.meta.chosen_id in reference_ids and ref_pair.chosen_score == 1.0 and ref_pair.meta.gap == 1.0
    # A passing sample ties with the reference and sorts first: the sample stays the chosen answer.
    assert sample_pair.chosen[0].content == TEXTS[1] and sample_pair.meta.chosen_id not in reference_ids
    assert [d[0] for d in drops] == ["no_score_difference"]  # the unmatched prompt, as before


def test_reference_answers_cut_after_the_last_user_turn():
    turns = [Message(role="user", content="Name a fruit."), Message(role="assistant", content="A pear."),
             Message(role="user", content="Now in upper case."), Message(role="assistant", content="A PEAR.")]
    answers = reference_answers([Conversation(messages=turns)])
    assert answers == {prompt_key(turns[:3]): [turns[3]]}
