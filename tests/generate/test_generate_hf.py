"""HFGenerator: cached, batched, left-padded decoding must equal a naive full-recompute loop."""
from __future__ import annotations

import pytest
import torch

from posttrain.generate.base import Generation, Generator, SamplingParams
from posttrain.generate.hf import HFGenerator, filter_logits
from tiny_generate import tiny_model, word_tokenizer

torch.set_num_threads(1)

# Different lengths on purpose: batching them needs left padding.
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16], [3], [40, 41, 42, 43, 44, 45], [7, 7]]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def naive_greedy(model, prompt: list[int], max_new_tokens: int, eos: set[int]) -> list[int]:
    """Argmax over a full forward of the whole sequence at every step: no cache, no padding."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1]
            ids.append(int(logits.argmax()))
            if ids[-1] in eos:
                break
    return ids[len(prompt):]


def test_is_a_generator(model, tokenizer):
    assert isinstance(HFGenerator(model, tokenizer), Generator)


def test_batched_equals_one_by_one_equals_naive(model, tokenizer):
    params = SamplingParams(max_new_tokens=10)
    gen = HFGenerator(model, tokenizer, batch_size=32, eos_token_ids=[])
    batched = gen.generate(PROMPTS, params)
    one_by_one = [gen.generate([p], params)[0] for p in PROMPTS]
    for prompt, b, o in zip(PROMPTS, batched, one_by_one):
        expected = naive_greedy(model, prompt, 10, set())
        assert b[0].token_ids == expected
        assert o[0].token_ids == expected
        assert b[0].finish_reason == "length"
        assert b[0].text == tokenizer.decode(expected)
        assert b[0].logprobs_of == "greedy-policy"


def test_bucketing_restores_input_order(model, tokenizer):
    params = SamplingParams(max_new_tokens=6)
    whole = HFGenerator(model, tokenizer, batch_size=32, eos_token_ids=[]).generate(PROMPTS, params)
    # batch_size 2 sorts by length into three batches; results must still follow PROMPTS.
    bucketed = HFGenerator(model, tokenizer, batch_size=2, eos_token_ids=[]).generate(PROMPTS, params)
    assert [g[0].token_ids for g in bucketed] == [g[0].token_ids for g in whole]
    for prompt, g in zip(PROMPTS, bucketed):
        assert g[0].token_ids == naive_greedy(model, prompt, 6, set())


def test_logprobs_match_full_forward(model, tokenizer):
    gens = HFGenerator(model, tokenizer, eos_token_ids=[]).generate(PROMPTS, SamplingParams(max_new_tokens=8))
    for prompt, g in zip(PROMPTS, gens):
        out = g[0].token_ids
        with torch.no_grad():
            logits = model(torch.tensor([prompt + out]), use_cache=False).logits[0]  # (T, V)
        logp = torch.log_softmax(logits.float(), dim=-1)
        # Token out[i] is predicted at position len(prompt) - 1 + i.
        expected = logp[len(prompt) - 1 + torch.arange(len(out)), torch.tensor(out)]
        torch.testing.assert_close(torch.tensor(g[0].logprobs), expected, atol=1e-5, rtol=0)


def test_eos_stops_one_row_while_others_continue(model, tokenizer):
    plain = HFGenerator(model, tokenizer, eos_token_ids=[]).generate(PROMPTS[:2], SamplingParams(max_new_tokens=10))
    first, second = plain[0][0].token_ids, plain[1][0].token_ids
    # An eos id the first row emits early and the second row never emits.
    at, eos = next((i, t) for i, t in enumerate(first[:8]) if t not in second)
    gens = HFGenerator(model, tokenizer, eos_token_ids=[eos]).generate(PROMPTS[:2], SamplingParams(max_new_tokens=10))
    a, b = gens[0][0], gens[1][0]
    assert a.finish_reason == "eos"
    assert a.token_ids == first[:at + 1]  # the eos token is kept in the ids ...
    assert a.text == tokenizer.decode(first[:at])  # ... but not in the text
    assert len(a.logprobs) == len(a.token_ids)
    assert b.finish_reason == "length" and b.token_ids == second


def test_eos_ids_come_from_generation_config(tokenizer):
    model = tiny_model(seed=0, eos_token_id=[297, 298])
    gen = HFGenerator(model, tokenizer)
    assert gen.eos_token_ids == {297, 298}
    assert HFGenerator(model, tokenizer, eos_token_ids=[5]).eos_token_ids == {5}


def test_stop_string_cuts_text_and_tokens(model, tokenizer):
    gen = HFGenerator(model, tokenizer, eos_token_ids=[])
    full = gen.generate([PROMPTS[0]], SamplingParams(max_new_tokens=10))[0][0]
    words = full.text.split(" ")
    stop = f"{words[3]} {words[4]}"  # spans two tokens
    cut = full.text.index(stop)
    got = gen.generate([PROMPTS[0]], SamplingParams(max_new_tokens=10, stop=["zzz", stop]))[0][0]
    assert got.finish_reason == "stop"
    assert got.text == full.text[:cut]
    # Ids run up to the token that completed the stop string, the 5th one here.
    assert got.token_ids == full.token_ids[:5]
    assert len(got.logprobs) == 5


def test_max_new_tokens_and_greedy_n_copies(model, tokenizer):
    gens = HFGenerator(model, tokenizer, eos_token_ids=[]).generate(PROMPTS, SamplingParams(max_new_tokens=3, n=2))
    for per_prompt in gens:
        assert len(per_prompt) == 2
        assert all(len(g.token_ids) == 3 and g.finish_reason == "length" for g in per_prompt)
        assert per_prompt[0].token_ids == per_prompt[1].token_ids
        assert per_prompt[0].token_ids is not per_prompt[1].token_ids


def test_sampling_is_seeded_per_row_not_per_batch(model, tokenizer):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=7)
    big = HFGenerator(model, tokenizer, batch_size=32, eos_token_ids=[]).generate(PROMPTS, params)
    small = HFGenerator(model, tokenizer, batch_size=3, eos_token_ids=[]).generate(PROMPTS, params)
    # The seed follows the prompt's index in the request, so the first prompt alone gets the same samples.
    alone = HFGenerator(model, tokenizer, eos_token_ids=[]).generate([PROMPTS[0]], params)[0]
    assert [[g.token_ids for g in p] for p in big] == [[g.token_ids for g in p] for p in small]
    assert [g.token_ids for g in alone] == [g.token_ids for g in big[0]]
    assert len({tuple(g.token_ids) for g in big[1]}) > 1  # the K samples differ
    other = HFGenerator(model, tokenizer, eos_token_ids=[]).generate(PROMPTS, params.model_copy(update={"seed": 8}))
    assert [g.token_ids for g in other[0]] != [g.token_ids for g in big[0]]
    assert big[0][0].logprobs_of == "sampling T=1.0"


def test_sampling_logprobs_are_tempered_policy(model, tokenizer):
    params = SamplingParams(max_new_tokens=5, temperature=0.7, seed=1)
    g = HFGenerator(model, tokenizer, eos_token_ids=[]).generate([PROMPTS[1]], params)[0][0]
    prompt = PROMPTS[1]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + g.token_ids]), use_cache=False).logits[0]
    logp = torch.log_softmax(logits / 0.7, dim=-1)
    expected = logp[len(prompt) - 1 + torch.arange(5), torch.tensor(g.token_ids)]
    torch.testing.assert_close(torch.tensor(g.logprobs), expected, atol=1e-5, rtol=0)


def test_top_k_one_is_greedy(model, tokenizer):
    gen = HFGenerator(model, tokenizer, eos_token_ids=[])
    sampled = gen.generate(PROMPTS, SamplingParams(max_new_tokens=6, temperature=1.0, top_k=1, seed=3))
    greedy = gen.generate(PROMPTS, SamplingParams(max_new_tokens=6))
    assert [g[0].token_ids for g in sampled] == [g[0].token_ids for g in greedy]


def test_filter_logits_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    inf = float("-inf")
    assert filter_logits(logits, top_k=2, top_p=1.0).tolist() == [[inf, inf, 3.0, 4.0]]
    # softmax([1,2,3,4]) = [0.032, 0.087, 0.237, 0.644]: top_p 0.8 keeps 4 and 3 (0.644 < 0.8).
    assert filter_logits(logits, top_k=0, top_p=0.8).tolist() == [[inf, inf, 3.0, 4.0]]
    # top_p 0.5: the top token alone already covers it.
    assert filter_logits(logits, top_k=0, top_p=0.5).tolist() == [[inf, inf, inf, 4.0]]
    assert filter_logits(logits, top_k=0, top_p=1.0).tolist() == logits.tolist()


def test_model_train_state_is_restored(tokenizer):
    model = tiny_model(seed=1).train()
    HFGenerator(model, tokenizer).generate([[1, 2]], SamplingParams(max_new_tokens=2))
    assert model.training


def test_empty_prompt_is_rejected(model, tokenizer):
    with pytest.raises(ValueError, match="at least one token"):
        HFGenerator(model, tokenizer).generate([[1], []], SamplingParams())


def test_generation_is_a_plain_record():
    g = Generation(token_ids=[1], text="a", finish_reason="eos")
    assert g.logprobs is None and g.model == ""
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1.0)
