"""HFChatBackend: K samples per conversation, seeded per conversation (not per batch), tool loop per sample."""
from __future__ import annotations

import json

import pytest
import torch

from posttrain.data.records import FunctionDef, Message, ToolDef
from posttrain.generate.base import ChatBackend, Generation, SamplingParams
from posttrain.generate.hf import HFGenerator
from posttrain.generate.hf_chat import HFChatBackend
from tiny_generate import chat_tokenizer, tiny_model

torch.set_num_threads(1)

ADD = ToolDef(function=FunctionDef(name="add"))
CONVERSATIONS = [([Message(role="user", content=text)], None)
                 for text in ("add 1 2", "the answer is", "alpha beta alpha beta name", "tool")]
SAMPLED = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=5)


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(seed=0, vocab_size=len(tokenizer))


def ids(samples):
    return [[s.token_ids for s in row] for row in samples]


def test_is_a_chat_backend(model, tokenizer):
    assert isinstance(HFChatBackend(model, tokenizer), ChatBackend)


def test_k_samples_seeded_per_conversation_not_per_batch(model, tokenizer):
    seeds = [11, 12, 13, 14]
    whole = HFChatBackend(model, tokenizer, batch_size=64).chat(CONVERSATIONS, SAMPLED, seeds=seeds)
    small = HFChatBackend(model, tokenizer, batch_size=3).chat(CONVERSATIONS, SAMPLED, seeds=seeds)
    # Conversation 2 alone, or with others in another order, gets the same samples from its seed.
    alone = HFChatBackend(model, tokenizer).chat([CONVERSATIONS[2]], SAMPLED, seeds=[13])
    shuffled = HFChatBackend(model, tokenizer).chat(CONVERSATIONS[::-1], SAMPLED, seeds=seeds[::-1])
    assert ids(whole) == ids(small) == ids(shuffled)[::-1]
    assert ids(alone)[0] == ids(whole)[2]
    assert all(len(row) == 3 for row in whole)
    assert len({tuple(t) for t in ids(whole)[1]}) > 1  # the K samples differ
    other = HFChatBackend(model, tokenizer).chat(CONVERSATIONS, SAMPLED, seeds=[21, 22, 23, 24])
    assert ids(other) != ids(whole)
    sample = whole[0][0]
    assert sample.messages[0].role == "assistant" and sample.logprobs_of == "sampling T=1.0"
    assert len(sample.logprobs) == len(sample.token_ids)


def test_hf_generator_seeds_equal_one_prompt_requests(model, tokenizer):
    gen = HFGenerator(model, tokenizer, eos_token_ids=[])
    prompts = [[5, 6, 7], [8, 9, 10, 11], [3]]
    batched = gen.generate(prompts, SAMPLED, seeds=[40, 41, 42])
    for prompt, seed, got in zip(prompts, [40, 41, 42], batched):
        alone = gen.generate([prompt], SAMPLED.model_copy(update={"seed": seed}))[0]
        assert [g.token_ids for g in got] == [g.token_ids for g in alone]
    with pytest.raises(ValueError, match="seeds"):
        gen.generate(prompts, SAMPLED, seeds=[1])


def test_greedy_samples_are_copies(model, tokenizer):
    out = HFChatBackend(model, tokenizer).chat(CONVERSATIONS[:2], SamplingParams(max_new_tokens=5, n=2))
    assert [row[0].messages for row in out] == [row[1].messages for row in out]


def tool_text(a: int, b: int) -> str:
    return f'<tool_call>\n{json.dumps({"name": "add", "arguments": {"a": a, "b": b}})}\n</tool_call>'


class ScriptedGenerator:
    """Replies by (conversation marker, how many tool results the prompt already holds); records seeds."""

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies, self.calls = tokenizer, replies, []
        self.model_name = "scripted"

    def generate(self, prompts, params, seeds=None):
        self.calls.append((len(prompts), params.n, list(seeds)))
        out = []
        for prompt in prompts:
            text = self.tokenizer.decode(prompt)
            marker = next(m for m in self.replies if m in text)
            reply = self.replies[marker][text.count("<tool_response>")]
            out.append([Generation(token_ids=[1, 2], text=reply, finish_reason="eos", logprobs=[-0.5, -0.25])
                        for _ in range(params.n)])
        return out


def test_tool_loop_runs_per_sample(model, tokenizer):
    backend = HFChatBackend(model, tokenizer, tool_hook=lambda call, tools: "3", max_tool_rounds=2)
    backend.generator = ScriptedGenerator(tokenizer, {
        "alpha": [tool_text(1, 2), "The answer is 3."],
        "beta": ["No tools."],
        "gamma": [tool_text(1, 1), tool_text(2, 2), tool_text(3, 3)],  # never stops calling
    })
    conversations = [([Message(role="user", content=f"{m} question")], [ADD]) for m in ("alpha", "beta", "gamma")]
    out = backend.chat(conversations, SamplingParams(max_new_tokens=4, temperature=1.0, n=2), seeds=[1, 2, 3])
    alpha, beta, gamma = out
    assert [m.role for m in alpha[1].messages] == ["assistant", "tool", "assistant"]
    assert alpha[1].messages[1] == Message(role="tool", content="3", tool_call_id="call_0")
    assert alpha[1].token_ids == [1, 2, 1, 2] and alpha[1].logprobs == [-0.5, -0.25, -0.5, -0.25]
    assert [m.role for m in beta[0].messages] == ["assistant"]
    # After max_tool_rounds the last call stays unanswered.
    assert [m.role for m in gamma[0].messages] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert gamma[0].messages[-1].tool_calls[0].id == "call_2"
    # Round 1: one prompt per conversation with n = 2; later rounds: one row per sample still calling,
    # each with its own seed.
    assert backend.generator.calls[0] == (3, 2, [1, 2, 3])
    rows, n, seeds = backend.generator.calls[1]
    assert (rows, n) == (4, 1) and len(set(seeds)) == 4
    assert backend.generator.calls[2][:2] == (2, 1)


def test_inverse_cdf_sampling_by_hand():
    from posttrain.generate.hf import sample_inverse_cdf

    probs = torch.tensor([[0.125, 0.0, 0.5, 0.375]] * 6)  # exact in binary: no rounding at the edges
    uniforms = torch.tensor([0.0, 0.1, 0.125, 0.6, 0.625, 0.999])
    # cdf = [0.125, 0.125, 0.625, 1]: [0, .125) -> 0, [.125, .625) -> 2 (never the zero-mass 1), [.625, 1) -> 3.
    assert sample_inverse_cdf(probs, uniforms).tolist() == [0, 0, 2, 2, 3, 3]
    unnormalised = torch.tensor([[0.0, 0.5, 0.0, 0.4999]])  # rounding: the mass is scaled, never overshoots
    assert sample_inverse_cdf(unnormalised, torch.tensor([0.99999])).tolist() == [3]


def test_preallocated_cache_grows_and_selects_rows():
    from posttrain.generate.hf import _PreallocatedLayer

    layer = _PreallocatedLayer(capacity=2)
    first = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3)  # (R, H, T, D)
    keys, _ = layer.update(first, -first)
    assert torch.equal(keys, first) and layer.get_seq_length() == 2
    step = torch.full((2, 1, 1, 3), 9.0)
    keys, values = layer.update(step, -step)  # past capacity: the buffer grows, the content stays
    assert torch.equal(keys, torch.cat([first, step], dim=-2)) and torch.equal(values, -keys)
    layer.batch_select_indices(torch.tensor([1]))
    assert torch.equal(layer.keys, torch.cat([first, step], dim=-2)[1:])
    layer.batch_repeat_interleave(2)
    assert layer.keys.shape == (2, 1, 3, 3) and torch.equal(layer.keys[0], layer.keys[1])
