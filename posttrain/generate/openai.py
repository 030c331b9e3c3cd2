"""ChatBackend for any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, hosted APIs).

This is the tested way to use vLLM at scale: start `vllm serve` and point this backend at it.

- Requests run on a thread pool of blocking `http.client` calls driven by asyncio, at most
  `concurrency` in flight (no third-party HTTP client is needed).
- Each attempt has a timeout. 429, 408, 409 and 5xx answers, connection errors, timeouts, truncated or
  invalid JSON and answers with too few choices are retried with exponential backoff and jitter,
  waiting at least what `Retry-After` (seconds or an HTTP date) or `retry-after-ms` asks for, up to
  `backoff_max_s`. Other 4xx answers (a prompt too long, say) are not retried.
- A request still unanswered after `max_retries` retries does not fail the batch: its samples come
  back as `ChatFailure` (finish_reason 'error', a reason key and a detail), in their place, so the
  caller can quarantine them; nothing is lost or duplicated. 401, 403 and 404 are configuration
  errors (credentials, base_url, model name) and raise `OpenAIBackendError` for the whole batch.
- Every answered request is stored in a `RequestCache` (when `cache_dir` is set) before it is used:
  a rerun after a crash sends no answered request again, and a finished run sends none.

By default each sample is its own request with seed `seeds[i] + sample_index` (its own cache
entry, reproducible one by one); `samples_per_request='n'` sends one request with `n` instead.
Greedy requests (temperature 0) are sent once and the answer is repeated `n` times.

The API key is read from the environment variable `api_key_env` at each `chat` call and only put
in the Authorization header: it is never stored on the object, hashed into a cache key, written to
the cache, logged, or put in an exception message (details from the server are scrubbed of it).
"""
from __future__ import annotations

import asyncio
import email.utils
import http.client
import json
import logging
import os
import random
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ValidationError

from posttrain.data.records import Message, ToolDef
from posttrain.generate.base import ChatSample, SamplingParams
from posttrain.generate.request_cache import RequestCache, request_key

logger = logging.getLogger(__name__)

FAILED = "error"  # finish_reason of a ChatFailure
RETRY_STATUSES = {408, 409, 429}  # plus every 5xx
CONFIG_STATUSES = {401, 403, 404}  # wrong key, base_url or model: every request would fail alike
DETAIL_CHARS = 300  # how much of a server's error body a failure keeps


@dataclass
class ChatFailure(ChatSample):
    """A sample the server never answered: no messages, finish_reason 'error'.

    `error` is a stable reason key for counting and quarantine ('http_503', 'timeout',
    'invalid_json', 'truncated', 'empty_choices', 'connection_error', 'http_400', ...); `detail`
    says more (the last attempt's status line or body excerpt); `attempts` is how many were made.
    """

    messages: list = field(default_factory=list)
    finish_reason: str = FAILED
    error: str = ""
    detail: str = ""
    attempts: int = 0


def is_failure(sample: ChatSample) -> bool:
    return sample.finish_reason == FAILED


class OpenAIBackendError(RuntimeError):
    """The server refuses every request (401/403/404): a configuration error, not a bad row."""


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


class _NotRetryable(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class _Request:
    """One HTTP request and which samples of which conversation its choices fill."""

    conversation: int
    body: dict[str, Any]
    key: str
    sample_indices: list[int]  # samples this request fills ...
    choice_indices: list[int]  # ... from these choices of the answer


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date; None if absent."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def message_to_openai(message: Message | dict) -> dict[str, Any]:
    """A records.Message as the OpenAI wire format (tool-call arguments stay JSON strings)."""
    return Message.model_validate(message).model_dump(mode="json", exclude_none=True)


def message_from_openai(message: dict[str, Any]) -> Message:
    """The assistant message of a choice. Malformed tool calls stay as text, so a grader sees them."""
    content = message.get("content")
    if content is not None and not isinstance(content, str):  # a list of content parts
        content = json.dumps(content, ensure_ascii=False)
    calls = [_with_string_arguments(call) for call in message.get("tool_calls") or []] or None
    try:
        return Message(role="assistant", content=content if content is not None or calls else "", tool_calls=calls)
    except ValidationError:
        return Message(role="assistant", content=(content or "") + json.dumps(calls, ensure_ascii=False))


def _with_string_arguments(call: Any) -> Any:
    """Some servers send arguments as an object; the record format wants the JSON string."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = call["function"]
    if isinstance(function.get("arguments"), dict):
        function = {**function, "arguments": json.dumps(function["arguments"], ensure_ascii=False)}
    call = {key: value for key, value in call.items() if key != "index"}  # streaming field
    return {**call, "function": function}


class OpenAIChatBackend:
    """Chat samples from an OpenAI-compatible server; see the module docstring for the guarantees."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout_s: float = 60, max_retries: int = 6,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30,
                 cache_dir: Path | str | None = None, extra_body: dict[str, Any] | None = None,
                 samples_per_request: Literal["one", "n"] = "one", logprobs: bool = False):
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0 and timeout_s > 0")
        if samples_per_request not in ("one", "n"):
            raise ValueError(f"samples_per_request must be 'one' or 'n', got {samples_per_request!r}")
        url = urlsplit(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port][/v1], got {base_url!r}")
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.name = f"openai:{model}"
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.extra_body = dict(extra_body or {})
        self.samples_per_request = samples_per_request
        self.logprobs = logprobs
        self.cache = RequestCache(cache_dir) if cache_dir is not None else None
        self._url = url
        path = url.path if url.path.endswith("/v1") else url.path + "/v1"
        self._path = path + "/chat/completions"
        self.stats = {"http_requests": 0, "cache_hits": 0, "retries": 0, "failures": 0}

    def __repr__(self) -> str:
        return (f"OpenAIChatBackend(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, cache={self.cache!r})")

    # ------------------------------------------------------------ public

    def chat(self, conversations: list[tuple[list, list | None]], params: SamplingParams,
             seeds: list[int] | None = None) -> list[list[ChatSample]]:
        """`params.n` samples per conversation, in input order; unanswerable ones are `ChatFailure`."""
        run = lambda: asyncio.run(self.achat(conversations, params, seeds))  # noqa: E731
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return run()
        # Called from inside an event loop (a notebook): run ours on a thread of its own.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(run).result()

    async def achat(self, conversations: list[tuple[list, list | None]], params: SamplingParams,
                    seeds: list[int] | None = None) -> list[list[ChatSample]]:
        """The coroutine behind `chat`, for callers already in an event loop."""
        if seeds is not None and len(seeds) != len(conversations):
            raise ValueError(f"{len(seeds)} seeds for {len(conversations)} conversations")
        requests = [request
                    for index, (messages, tools) in enumerate(conversations)
                    for request in self._plan(index, messages, tools, params,
                                              seeds[index] if seeds is not None else params.seed)]
        answers = await self._answer_all(requests)
        results: list[list[ChatSample | None]] = [[None] * params.n for _ in conversations]
        for request in requests:
            answer = answers[request.key]
            for sample_index, choice_index in zip(request.sample_indices, request.choice_indices):
                sample = (replace(answer) if isinstance(answer, ChatFailure)  # a copy per slot
                          else self._sample(answer, choice_index, params))
                results[request.conversation][sample_index] = sample
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------ requests

    def _plan(self, index: int, messages: list, tools: list | None, params: SamplingParams,
              seed: int | None) -> list[_Request]:
        """The requests that produce conversation `index`'s samples."""
        base = self._body(messages, tools, params)
        n = params.n
        if params.greedy:  # every sample is the same answer: ask once
            return [self._request(index, base, seed, None, list(range(n)), [0] * n)]
        if self.samples_per_request == "n":
            return [self._request(index, {**base, "n": n}, seed, None, list(range(n)), list(range(n)))]
        return [self._request(index, base, None if seed is None else seed + s, s, [s], [0]) for s in range(n)]

    def _request(self, index: int, body: dict, seed: int | None, sample: int | None,
                 sample_indices: list[int], choice_indices: list[int]) -> _Request:
        if seed is not None:
            body = {**body, "seed": seed}
        body = {**body, **self.extra_body}
        # Unseeded samples of one conversation share a body; the sample index keeps their entries apart.
        key_material = body if seed is not None or sample is None else {"body": body, "sample_index": sample}
        return _Request(index, body, request_key(key_material), sample_indices, choice_indices)

    def _body(self, messages: list, tools: list | None, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [message_to_openai(m) for m in messages],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if tools:
            body["tools"] = [ToolDef.model_validate(t).model_dump(mode="json") for t in tools]
        if params.top_k > 0:
            body["top_k"] = params.top_k  # not OpenAI's; vLLM and SGLang read it from the body
        if params.stop:
            body["stop"] = list(params.stop)
        if self.logprobs:
            body["logprobs"] = True
        return body

    async def _answer_all(self, requests: list[_Request]) -> dict[str, dict | ChatFailure]:
        """key -> response (from the cache or the server) or failure, one HTTP exchange per distinct key."""
        unique = {r.key: r for r in requests}
        answers: dict[str, dict | ChatFailure] = {}
        todo = []
        for key, request in unique.items():
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                self.stats["cache_hits"] += 1
                answers[key] = cached
            else:
                todo.append(request)
        if not todo:
            return answers
        api_key = os.environ.get(self.api_key_env) or None
        semaphore = asyncio.Semaphore(self.concurrency)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="openai-backend")
        try:
            done = await asyncio.gather(*(self._answer(r, api_key, semaphore, pool) for r in todo))
        finally:
            # A thread stuck on a stalled socket ends at its own timeout; do not wait for it here.
            pool.shutdown(wait=False, cancel_futures=True)
        answers.update(zip((r.key for r in todo), done))
        return answers

    async def _answer(self, request: _Request, api_key: str | None, semaphore: asyncio.Semaphore,
                      pool: ThreadPoolExecutor) -> dict | ChatFailure:
        """The response to one request, retried within bounds, cached; or a ChatFailure."""
        loop = asyncio.get_running_loop()
        needed = max(request.choice_indices) + 1
        for attempt in range(self.max_retries + 1):
            try:
                async with semaphore:
                    self.stats["http_requests"] += 1
                    call = loop.run_in_executor(pool, self._post, request.body, api_key, needed)
                    response = await asyncio.wait_for(call, self.timeout_s)
                if self.cache is not None:
                    self.cache.put(request.key, response)
                return response
            except asyncio.TimeoutError:
                error = _Retryable("timeout", f"no complete answer within {self.timeout_s} s")
            except _Retryable as err:
                error = err
            except _NotRetryable as err:
                return self._failure(err.reason, err.detail, attempt + 1, request.key)
            if attempt == self.max_retries:
                return self._failure(error.reason, error.detail, attempt + 1, request.key)
            delay = self._backoff(attempt, error.retry_after)
            self.stats["retries"] += 1
            logger.info("request %s: %s (%s); retry %d/%d in %.2f s", request.key[:12], error.reason,
                        _scrub(error.detail, api_key), attempt + 1, self.max_retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, at least the server's Retry-After, at most backoff_max_s."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    def _failure(self, reason: str, detail: str, attempts: int, key: str) -> ChatFailure:
        self.stats["failures"] += 1
        detail = _scrub(detail, os.environ.get(self.api_key_env))
        logger.warning("request %s failed after %d attempt(s): %s (%s)", key[:12], attempts, reason, detail)
        return ChatFailure(model=self.model, error=reason, detail=detail, attempts=attempts)

    # ------------------------------------------------------------ one HTTP exchange (runs on a thread)

    def _post(self, body: dict[str, Any], api_key: str | None, needed_choices: int) -> dict[str, Any]:
        """POST one request; the parsed answer, or _Retryable / _NotRetryable / OpenAIBackendError."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        connection_class = http.client.HTTPSConnection if self._url.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(self._url.hostname, self._url.port, timeout=self.timeout_s)
        try:
            connection.request("POST", self._path, body=json.dumps(body).encode("utf-8"), headers=headers)
            response = connection.getresponse()
            status, reply_headers, data = response.status, response.headers, response.read()
        except (socket.timeout, TimeoutError) as err:
            raise _Retryable("timeout", f"{type(err).__name__} after {self.timeout_s} s") from None
        except http.client.IncompleteRead as err:
            raise _Retryable("truncated", f"got {len(err.partial)} bytes of the answer") from None
        except (OSError, http.client.HTTPException) as err:
            raise _Retryable("connection_error", _scrub(f"{type(err).__name__}: {err}", api_key)) from None
        finally:
            connection.close()
        if status != 200:
            _raise_for_status(status, reply_headers, _scrub(data[:DETAIL_CHARS].decode("utf-8", "replace"), api_key))
        return _checked_answer(data, needed_choices)

    # ------------------------------------------------------------ answers -> samples

    def _sample(self, response: dict[str, Any], choice_index: int, params: SamplingParams) -> ChatSample:
        choice = response["choices"][choice_index]
        logprobs = None
        if self.logprobs and isinstance(choice.get("logprobs"), dict):
            tokens = choice["logprobs"].get("content") or []
            logprobs = [float(token["logprob"]) for token in tokens]
        return ChatSample(
            messages=[message_from_openai(choice["message"])],
            finish_reason=choice.get("finish_reason") or "stop",
            logprobs=logprobs,
            # Which distribution depends on the server (vLLM: --logprobs-mode); this names the request.
            logprobs_of=f"server sampling T={params.temperature}" if logprobs is not None else None,
            model=response.get("model") or self.model,
        )


def _raise_for_status(status: int, headers: Any, detail: str) -> None:
    reason = f"http_{status}"
    if status in CONFIG_STATUSES:
        raise OpenAIBackendError(f"server answered HTTP {status} ({detail}); check base_url, model name "
                                 "and the API key's environment variable")
    if status in RETRY_STATUSES or status >= 500:
        raise _Retryable(reason, detail, parse_retry_after(headers))
    raise _NotRetryable(reason, detail)


def _checked_answer(data: bytes, needed_choices: int) -> dict[str, Any]:
    """The answer when it has `needed_choices` choices with messages, trimmed to what is used."""
    try:
        answer = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _Retryable("invalid_json", f"{type(err).__name__} at byte {getattr(err, 'pos', '?')} "
                                         f"of {len(data)}") from None
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) < needed_choices:
        got = len(choices) if isinstance(choices, list) else 0
        raise _Retryable("empty_choices", f"{got} choice(s), need {needed_choices}")
    choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    if not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices):
        raise _Retryable("invalid_response", "a choice has no message")
    kept = [{k: c[k] for k in ("index", "message", "finish_reason", "logprobs") if k in c} for c in choices]
    return {"model": answer.get("model"), "choices": kept, "usage": answer.get("usage")}


def _scrub(text: str, secret: str | None) -> str:
    """`text` with the secret masked: a server could echo a header back in an error body."""
    return text.replace(secret, "***") if secret else text
