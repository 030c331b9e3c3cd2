"""The experimental vLLM backend: clear error without vLLM, glue tested against a stand-in `vllm` module.

The real engine test runs only where vLLM is installed (GPU machines); it is skipped here.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from dataclasses import dataclass

import pytest

from posttrain.data.records import Message
from posttrain.generate.base import ChatBackend, SamplingParams
from posttrain.generate.chat import render_prompt
from posttrain.data.bpe import train_bytelevel_bpe

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def chat_tokenizer():
    """A small chatml BPE (no model: importing transformers' Llama would dominate this file's time)."""
    corpus = ["user assistant system tool_call name arguments the answer is hello there", "add 1 2 3"] * 20
    return train_bytelevel_bpe(corpus, 300, "chatml", seed_words=["add"])


def test_import_works_and_construction_says_how_to_install(monkeypatch):
    import posttrain.generate.vllm as backend_module

    if HAS_VLLM:
        pytest.skip("vLLM is installed here")
    with pytest.raises(ImportError, match=r"pip install posttrain\[vllm\]"):
        backend_module.VLLMChatBackend("some/model")


@dataclass
class FakeLogprob:
    logprob: float


@dataclass
class FakeCompletion:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"
    logprobs: list | None = None


@dataclass
class FakeOutput:
    outputs: list


class FakeLLM:
    """Answers each prompt with its seed, so the test can see which request produced which sample."""

    def __init__(self, model: str, **engine_args):
        self.model, self.engine_args, self.calls = model, engine_args, []
        self.tokenizer = chat_tokenizer()

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params, use_tqdm=True):
        self.calls.append((prompts, sampling_params))
        outputs = []
        for prompt, params in zip(prompts, sampling_params):
            if params.temperature == 0 and "add" in self.tokenizer.decode(prompt["prompt_token_ids"]):
                text = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'
            else:
                text = f"len={len(prompt['prompt_token_ids'])} seed={params.seed}"
            logprobs = [{7: FakeLogprob(-0.25)}, {8: FakeLogprob(-1.5)}] if params.logprobs == 0 else None
            outputs.append(FakeOutput([FakeCompletion(text, [7, 8], logprobs=logprobs)]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kwargs: types.SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def conversations():
    return [([Message(role="user", content="hello there")], None),
            ([Message(role="system", content="be brief"), Message(role="user", content="add 1 2 3")], None)]


def test_glue_seeds_order_and_parameters(fake_vllm):
    from posttrain.generate.vllm import VLLMChatBackend

    backend = VLLMChatBackend("tiny", logprobs=True, gpu_memory_utilization=0.5)
    assert isinstance(backend, ChatBackend) and backend.template == "chatml"
    assert backend.llm.engine_args == {"gpu_memory_utilization": 0.5}
    params = SamplingParams(temperature=1.0, top_p=0.9, n=3, max_new_tokens=5, stop=["END"])
    samples = backend.chat(conversations(), params, seeds=[10, 20])
    [(prompts, sampling)] = backend.llm.calls
    expected_ids = [render_prompt(backend.tokenizer, m, t) for m, t in conversations()]
    assert [p["prompt_token_ids"] for p in prompts] == [expected_ids[0]] * 3 + [expected_ids[1]] * 3
    assert [s.seed for s in sampling] == [10, 11, 12, 20, 21, 22]
    first = sampling[0]
    assert (first.n, first.temperature, first.top_p, first.top_k, first.max_tokens, first.stop) == (
        1, 1.0, 0.9, -1, 5, ["END"])
    for row, ids, seed in zip(samples, expected_ids, (10, 20)):
        assert [s.messages[0].content for s in row] == [f"len={len(ids)} seed={seed + k}" for k in range(3)]
        assert all(s.token_ids == [7, 8] and s.logprobs == [-0.25, -1.5] for s in row)
        assert all(s.logprobs_of == "greedy-policy" and s.model == "tiny" for s in row)


def test_greedy_runs_once_and_parses_tool_calls(fake_vllm):
    from posttrain.generate.vllm import VLLMChatBackend

    backend = VLLMChatBackend("tiny")
    samples = backend.chat(conversations(), SamplingParams(n=2))
    [(prompts, sampling)] = backend.llm.calls
    assert len(prompts) == 2 and [len(row) for row in samples] == [2, 2]
    calls = [s.messages[0].tool_calls for row in samples for s in row]
    parsed = [c for c in calls if c]
    assert parsed and all(json.loads(c[0].function.arguments) == {"a": 1} for c in parsed)
    assert samples[0][0] is not samples[0][1] and samples[0][0].logprobs is None


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (pip install posttrain[vllm], GPU only)")
def test_real_vllm_engine(tmp_path):  # pragma: no cover - needs a GPU machine with vLLM
    from posttrain.generate.vllm import VLLMChatBackend

    backend = VLLMChatBackend("Qwen/Qwen2.5-0.5B-Instruct", gpu_memory_utilization=0.3)
    params = SamplingParams(temperature=1.0, n=2, max_new_tokens=16)
    first = backend.chat(conversations(), params, seeds=[1, 2])
    assert [len(row) for row in first] == [2, 2]
    assert backend.chat(conversations(), params, seeds=[1, 2]) == first
