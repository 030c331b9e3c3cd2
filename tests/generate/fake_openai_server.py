"""A scripted OpenAI-compatible `/v1/chat/completions` server for tests (127.0.0.1, port 0, one thread per request).

`script` maps a conversation's last user text to the actions of that request's first, second, ...
attempt (after the list: 'ok'). Attempts are counted per distinct request body, so each sample of
a conversation (its own seed) runs the script on its own. Actions:

    ok            answer: "<user text> | seed=<seed> T=<temperature>" (one choice per `n`), or
                  what `responder(body, choice_index)` returns (a judge's verdict, say)
    tool          answer with a calculator tool call
    429:<s>       429 with Retry-After: <s>
    500, 503, 400 that status with a JSON error body
    401           unauthorized
    echo400       400 whose body echoes the request's Authorization header
    stall         wait `stall_s` before answering (the client should have given up)
    truncated     200 whose body stops half way (Content-Length says more)
    badjson       200 with a body that is not JSON
    empty         200 with "choices": []

Run as a script (`python fake_openai_server.py BASE_URL CACHE_DIR OUT N`) it is the client of the
kill test: it samples `batch_conversations(N)` with a cached backend and writes the replies to OUT.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from posttrain.generate.request_cache import canonical_json

TOOL_CALL = {"id": "call_0", "type": "function",
             "function": {"name": "calculator", "arguments": json.dumps({"expression": "2 + 3"})}}


def last_user_text(body: dict) -> str:
    return next(m.get("content") or "" for m in reversed(body["messages"]) if m["role"] == "user")


def answer_text(body: dict, choice: int = 0) -> str:
    """What an 'ok' answer says: enough to check order, seed and sampling reached the server."""
    suffix = f" #{choice}" if body.get("n", 1) > 1 else ""
    return f"{last_user_text(body)} | seed={body.get('seed')} T={body.get('temperature')}{suffix}"


class FakeOpenAIServer:
    def __init__(self, script: dict[str, list[str]] | None = None, *, stall_s: float = 1.0,
                 answer_delay_s: float = 0.0, responder: Callable[[dict, int], str] | None = None):
        self.script = script or {}
        self.responder = responder or answer_text  # (request body, choice index) -> the 'ok' answer's text
        self.stall_s, self.answer_delay_s = stall_s, answer_delay_s
        self.requests: list[dict] = []  # every POST body, in arrival order
        self.arrivals: list[float] = []  # time.monotonic() of each
        self.authorizations: list[str | None] = []
        self.answered: Counter[str] = Counter()  # canonical body -> successful answers
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._attempts: Counter[str] = Counter()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def answered_count(self) -> int:
        with self.lock:
            return sum(self.answered.values())

    def requests_for(self, user_text: str) -> list[dict]:
        with self.lock:
            return [body for body in self.requests if last_user_text(body) == user_text]

    def action_for(self, body: dict) -> str:
        """Record the request and pick this attempt's action."""
        key = canonical_json(body)
        with self.lock:
            self.requests.append(body)
            self.arrivals.append(time.monotonic())
            attempt = self._attempts[key]
            self._attempts[key] += 1
        actions = self.script.get(last_user_text(body), [])
        return actions[attempt] if attempt < len(actions) else "ok"

    def completion(self, body: dict, action: str, delivered: bool = True) -> dict:
        if action == "tool":
            choices = [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                        "finish_reason": "tool_calls"}]
        else:
            choices = [{"index": j, "message": {"role": "assistant", "content": self.responder(body, j)},
                        "finish_reason": "stop"} for j in range(body.get("n", 1))]
        if body.get("logprobs"):
            for choice in choices:
                choice["logprobs"] = {"content": [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []},
                                                  {"token": "b", "logprob": -1.25, "bytes": [98], "top_logprobs": []}]}
        if delivered:
            with self.lock:
                self.answered[canonical_json(body)] += 1
        return {"id": "cmpl-1", "object": "chat.completion", "model": body["model"], "choices": choices,
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def _handler_for(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with server.lock:
                server.authorizations.append(self.headers.get("Authorization"))
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            self._in_flight = True
            try:
                self._act(body, server.action_for(body))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (stall)
            finally:
                self._leave()

        def _leave(self) -> None:
            """Stop counting this request as in flight: before its answer is written, since the client
            may send its next request as soon as it has read the answer, before this thread resumes."""
            if self._in_flight:
                self._in_flight = False
                with server.lock:
                    server.in_flight -= 1

        def _act(self, body: dict, action: str) -> None:
            if action.startswith("429"):
                return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": action.split(":")[1]})
            if action in ("500", "503", "400", "401"):
                return self._send(int(action), {"error": {"message": f"scripted {action}"}})
            if action == "echo400":
                return self._send(400, {"error": {"message": f"bad header {self.headers.get('Authorization')}"}})
            if action == "badjson":
                return self._send_raw(200, b'{"choices": [{"index": 0, "message": ')
            if action == "empty":
                return self._send(200, {"id": "x", "choices": []})
            if action == "stall":
                server.stopping.wait(server.stall_s)
            if server.answer_delay_s:
                time.sleep(server.answer_delay_s)
            # A stalled answer reaches no one (the client timed out); a truncated one is incomplete.
            data = json.dumps(server.completion(body, action, delivered=action not in ("stall", "truncated"))).encode()
            if action == "truncated":
                self._leave()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                return None
            return self._send_raw(200, data)

        def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
            self._send_raw(status, json.dumps(payload).encode(), headers)

        def _send_raw(self, status: int, data: bytes, headers: dict | None = None) -> None:
            self._leave()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


# ---------------------------------------------------------------- the kill test's client


def batch_conversations(n: int) -> list[tuple[list, None]]:
    from posttrain.data.records import Message

    return [([Message(role="user", content=f"question {i}")], None) for i in range(n)]


def run_batch(base_url: str, cache_dir: str, n: int, api_key_env: str = "FAKE_OPENAI_KEY") -> list[list[dict]]:
    """Sample 2 replies for each of n conversations through a cached backend; replies as JSON."""
    from posttrain.generate.base import SamplingParams
    from posttrain.generate.openai import OpenAIChatBackend

    backend = OpenAIChatBackend(base_url, "fake-model", api_key_env=api_key_env, concurrency=2,
                                timeout_s=5, max_retries=2, backoff_base_s=0.01, cache_dir=cache_dir)
    params = SamplingParams(temperature=1.0, n=2, max_new_tokens=8)
    samples = backend.chat(batch_conversations(n), params, seeds=[1000 + 10 * i for i in range(n)])
    return [[{"messages": [m.model_dump(mode="json") for m in s.messages], "finish_reason": s.finish_reason}
             for s in row] for row in samples]


if __name__ == "__main__":
    url, cache, out, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    result = run_batch(url, cache, count)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
