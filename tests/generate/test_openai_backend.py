"""OpenAIChatBackend against an in-test OpenAI-compatible server that injects faults.

Checks retries within bounds, Retry-After, no lost or duplicated row, failures with reasons, the
request cache (a rerun sends nothing; a SIGKILLed run resumes without repeating cached requests),
and that the API key reaches the Authorization header and nothing else.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from fake_openai_server import FakeOpenAIServer, answer_text, batch_conversations, run_batch
from posttrain.data.records import FunctionCall, Message, ToolCall, ToolDef
from posttrain.generate.base import ChatBackend, SamplingParams
from posttrain.generate.openai import (
    ChatFailure, OpenAIBackendError, OpenAIChatBackend, is_failure, message_from_openai, parse_retry_after,
)
from posttrain.generate.request_cache import CACHE_FILE, RequestCache, canonical_json, request_key

KEY_ENV = "POSTTRAIN_TEST_OPENAI_KEY"
SECRET = "sk-test-0123456789-SECRET"
SAMPLED = SamplingParams(temperature=1.0, top_p=0.9, n=2, max_new_tokens=16)

RECOVERABLE = {  # each sample's request: these attempts, then "ok"
    "rate limited": ["429:0.2"],
    "server error": ["500", "503"],
    "stalls": ["stall"],
    "truncated": ["truncated"],
    "bad json": ["badjson", "empty"],
    "calls a tool": ["tool"],
}
UNANSWERABLE = {"always down": ["503"] * 10, "too long": ["400"], "echoes header": ["echo400"]}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv("FAKE_OPENAI_KEY", SECRET)


def backend(server, cache_dir=None, **kwargs) -> OpenAIChatBackend:
    options = dict(api_key_env=KEY_ENV, concurrency=4, timeout_s=0.3, max_retries=3,
                   backoff_base_s=0.01, backoff_max_s=1.0, cache_dir=cache_dir)
    return OpenAIChatBackend(server.base_url, "fake-model", **{**options, **kwargs})


def conversations(texts) -> list[tuple[list, list | None]]:
    return [([Message(role="user", content=text)], None) for text in texts]


def seeds_for(texts) -> list[int]:
    return [100 * (i + 1) for i in range(len(texts))]


def test_is_a_chat_backend(tmp_path):
    assert isinstance(OpenAIChatBackend("http://127.0.0.1:1/v1", "m"), ChatBackend)


def test_recovers_from_every_transient_fault_each_row_once_in_order(tmp_path, caplog):
    texts = ["plain 0", *RECOVERABLE, "plain 1"]
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(RECOVERABLE, stall_s=2.0) as server:
        client = backend(server, tmp_path / "cache")
        samples = client.chat(conversations(texts), SAMPLED, seeds=seeds_for(texts))
        assert [len(row) for row in samples] == [2] * len(texts)
        for text, seed, row in zip(texts, seeds_for(texts), samples):
            for index, sample in enumerate(row):
                assert not is_failure(sample), (text, sample)
                body = {"messages": [{"role": "user", "content": text}], "seed": seed + index, "temperature": 1.0}
                if text == "calls a tool":
                    assert sample.messages[0].tool_calls[0].function.name == "calculator"
                    assert sample.finish_reason == "tool_calls"
                else:
                    assert sample.messages == [Message(role="assistant", content=answer_text(body))]
        for text, actions in RECOVERABLE.items():  # per sample: the scripted faults + one success
            faults = [a for a in actions if a != "tool"]
            assert len(server.requests_for(text)) == 2 * (len(faults) + 1), text
        assert set(server.answered.values()) == {1}  # every request answered exactly once
        assert len(server.answered) == 2 * len(texts)
        assert set(server.authorizations) == {f"Bearer {SECRET}"}

        sent = len(server.requests)
        again = backend(server, tmp_path / "cache").chat(conversations(texts), SAMPLED, seeds=seeds_for(texts))
        assert len(server.requests) == sent  # the filled cache answers everything
        assert again == samples
    assert SECRET not in caplog.text
    assert "retry" in caplog.text  # retries are logged, without the key


def test_waits_at_least_retry_after(tmp_path):
    with FakeOpenAIServer({"wait": ["429:0.3", "429:0.2"]}) as server:
        [[sample]] = backend(server, backoff_base_s=0.001).chat(
            conversations(["wait"]), SamplingParams(temperature=1.0), seeds=[7])
        assert not is_failure(sample)
        gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:])]
        assert len(gaps) == 2 and gaps[0] >= 0.3 and gaps[1] >= 0.2


def test_unanswerable_rows_come_back_as_failures_in_place(tmp_path, caplog):
    texts = ["plain 0", *UNANSWERABLE, "plain 1"]
    with FakeOpenAIServer(UNANSWERABLE) as server:
        client = backend(server, tmp_path / "cache", max_retries=2)
        samples = client.chat(conversations(texts), SAMPLED, seeds=seeds_for(texts))
        by_text = dict(zip(texts, samples))
        assert all(not is_failure(s) for s in by_text["plain 0"] + by_text["plain 1"])
        down = by_text["always down"]
        assert all(isinstance(s, ChatFailure) and s.error == "http_503" and s.attempts == 3 for s in down)
        assert len(server.requests_for("always down")) == 2 * 3  # 1 try + max_retries, per sample
        too_long = by_text["too long"]
        assert all(s.error == "http_400" and s.attempts == 1 and s.messages == [] for s in too_long)
        echoed = by_text["echoes header"][0]
        assert echoed.error == "http_400" and "Bearer ***" in echoed.detail and SECRET not in echoed.detail
        assert client.stats["failures"] == 6

        # Failures are not cached: a rerun asks again for them only.
        sent = len(server.requests)
        backend(server, tmp_path / "cache", max_retries=0).chat(conversations(texts), SAMPLED, seeds=seeds_for(texts))
        resent = {json.dumps(b["messages"]) for b in server.requests[sent:]}
        assert resent == {json.dumps([{"role": "user", "content": t}]) for t in UNANSWERABLE}
    assert SECRET not in caplog.text


def test_api_key_reaches_only_the_authorization_header(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    script = {**RECOVERABLE, **UNANSWERABLE}
    with FakeOpenAIServer(script) as server:
        client = backend(server, tmp_path / "cache", max_retries=1)
        client.chat(conversations(list(script)), SAMPLED, seeds=seeds_for(script))
        assert set(server.authorizations) == {f"Bearer {SECRET}"}
        assert all(SECRET not in canonical_json(body) for body in server.requests)
        assert SECRET not in repr(client) and SECRET not in repr(vars(client))
    with FakeOpenAIServer({"no": ["401"]}) as server:
        with pytest.raises(OpenAIBackendError) as err:
            backend(server).chat(conversations(["no"]), SAMPLED, seeds=[1])
        assert SECRET not in str(err.value) and SECRET not in repr(err.value)
    files = list((tmp_path / "cache").iterdir())
    assert files and all(SECRET.encode() not in path.read_bytes() for path in files)
    assert SECRET not in caplog.text


def test_concurrency_is_bounded(tmp_path):
    texts = [f"q{i}" for i in range(8)]
    with FakeOpenAIServer(answer_delay_s=0.05) as server:
        backend(server, concurrency=2).chat(conversations(texts), SamplingParams(temperature=1.0), seeds=seeds_for(texts))
        assert server.max_in_flight == 2 and len(server.requests) == 8


def test_request_body_carries_sampling_tools_and_history():
    tool = ToolDef.model_validate({"function": {"name": "calculator", "parameters": {"type": "object"}}})
    history = [Message(role="user", content="2+3?"),
               Message(role="assistant", tool_calls=[ToolCall(id="call_0", function=FunctionCall(
                   name="calculator", arguments='{"expression": "2+3"}'))]),
               Message(role="tool", content="5", tool_call_id="call_0"),
               Message(role="user", content="and then?")]
    params = SamplingParams(temperature=0.7, top_p=0.95, top_k=50, max_new_tokens=9, stop=["END"], n=1)
    with FakeOpenAIServer() as server:
        client = backend(server, extra_body={"repetition_penalty": 1.1}, logprobs=True)
        [[sample]] = client.chat([(history, [tool])], params, seeds=[42])
        [body] = server.requests
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"expression": "2+3"}'
    assert body["messages"][2] == {"role": "tool", "content": "5", "tool_call_id": "call_0"}
    assert body["tools"] == [tool.model_dump(mode="json")]
    assert {k: body[k] for k in ("model", "temperature", "top_p", "top_k", "max_tokens", "stop", "seed")} == {
        "model": "fake-model", "temperature": 0.7, "top_p": 0.95, "top_k": 50, "max_tokens": 9, "stop": ["END"],
        "seed": 42}
    assert body["logprobs"] is True and body["repetition_penalty"] == 1.1 and "n" not in body
    assert sample.logprobs == [-0.5, -1.25] and sample.logprobs_of == "server sampling T=0.7"


def test_n_per_request_and_greedy_send_one_request(tmp_path):
    with FakeOpenAIServer() as server:
        [row] = backend(server, samples_per_request="n").chat(conversations(["x"]), SAMPLED, seeds=[5])
        assert [len(server.requests), server.requests[0]["n"], server.requests[0]["seed"]] == [1, 2, 5]
        assert [s.messages[0].content for s in row] == [f"x | seed=5 T=1.0 #{j}" for j in range(2)]
        [greedy] = backend(server).chat(conversations(["y"]), SamplingParams(n=3), seeds=[5])
        assert len(server.requests) == 2 and len({s.messages[0].content for s in greedy}) == 1
        assert len(greedy) == 3 and greedy[0] is not greedy[1]


def test_unseeded_samples_get_their_own_cache_entries(tmp_path):
    with FakeOpenAIServer() as server:
        client = backend(server, tmp_path / "cache")
        client.chat(conversations(["a"]), SamplingParams(temperature=1.0, n=3))
        assert len(server.requests) == 3 and len(client.cache) == 3
        backend(server, tmp_path / "cache").chat(conversations(["a"]), SamplingParams(temperature=1.0, n=3))
        assert len(server.requests) == 3


def test_achat_and_chat_inside_a_running_loop():
    with FakeOpenAIServer() as server:
        client = backend(server)

        async def main():
            inside = client.chat(conversations(["a"]), SamplingParams(temperature=1.0), seeds=[1])
            awaited = await client.achat(conversations(["a"]), SamplingParams(temperature=1.0), seeds=[1])
            return inside, awaited

        inside, awaited = asyncio.run(main())
    assert inside == awaited and inside[0][0].messages[0].content == "a | seed=1 T=1.0"


def test_parse_retry_after():
    assert parse_retry_after({"Retry-After": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    assert 3 < parse_retry_after({"Retry-After": formatdate(time.time() + 5, usegmt=True)}) <= 5
    assert parse_retry_after({"Retry-After": formatdate(time.time() - 50, usegmt=True)}) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None and parse_retry_after({}) is None


def test_message_from_openai_keeps_malformed_calls_as_text():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
    assert message_from_openai({"content": None, "tool_calls": [call]}).tool_calls[0].function.arguments == '{"a": 1}'
    broken = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    message = message_from_openai({"content": "hi", "tool_calls": [broken]})
    assert message.tool_calls is None and message.content.startswith("hi") and "{not json" in message.content
    assert message_from_openai({"content": None}).content == ""


def test_request_cache_is_persistent_and_thread_safe(tmp_path):
    assert request_key({"a": 1, "b": [1, 2]}) == request_key({"b": [1, 2], "a": 1})
    with RequestCache(tmp_path) as cache:
        threads = [threading.Thread(target=lambda i=i: [cache.put(f"{i}-{j}", {"v": j}) for j in range(50)])
                   for i in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        cache.put("0-0", {"v": "second write loses"})
        assert len(cache) == 200
    with RequestCache(tmp_path) as cache:
        assert cache.get("3-49") == {"v": 49} and cache.get("0-0") == {"v": 0} and cache.get("nope") is None


def test_sigkill_mid_batch_resumes_without_repeating_cached_requests(tmp_path):
    n = 30
    helper = Path(__file__).with_name("fake_openai_server.py")
    with FakeOpenAIServer(answer_delay_s=0.02) as server:
        env = {**os.environ, "FAKE_OPENAI_KEY": SECRET}
        child = subprocess.Popen([sys.executable, str(helper), server.base_url, str(tmp_path / "cut"),
                                  str(tmp_path / "never.json"), str(n)], env=env)
        deadline = time.monotonic() + 30
        while server.answered_count() < 12 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        with sqlite3.connect(tmp_path / "cut" / CACHE_FILE) as db:
            cached = {key for (key,) in db.execute("SELECT key FROM responses")}
        assert 0 < len(cached) < 2 * n and not (tmp_path / "never.json").exists()

        before = len(server.requests)
        resumed = run_batch(server.base_url, str(tmp_path / "cut"), n)
        rerun_keys = [request_key(body) for body in server.requests[before:]]
        assert not cached & set(rerun_keys)  # nothing already cached was asked again
        assert len(rerun_keys) == len(set(rerun_keys)) == 2 * n - len(cached)

        uncut = run_batch(server.base_url, str(tmp_path / "uncut"), n)
    assert resumed == uncut
    assert [row[0]["messages"][0]["content"] for row in uncut] == [
        f"question {i} | seed={1000 + 10 * i} T=1.0" for i in range(n)]
    assert len(batch_conversations(n)) == n
