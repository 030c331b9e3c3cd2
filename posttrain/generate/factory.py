"""Build a ChatBackend from a recipe's backend config: `{type: hf}`, `{type: openai, base_url, model, ...}`, `{type: vllm}`.

Importing this module is cheap (pydantic only): stage configs use `BackendConfig` at load time, and
the backend's own module (torch, transformers, an HTTP client, vLLM) is imported only when built.
API keys never appear here: `api_key_env` names the environment variable that holds one.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class BackendConfig(BaseModel):
    """Which generation backend answers, and how to reach it."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["hf", "openai", "vllm"] = Field("hf", description="hf: local model input; openai: an HTTP server; vllm: in-process")
    base_url: str | None = Field(None, description="openai: the server's URL, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="openai: the served model's name; vllm: a model path (default: the model input)")
    api_key_env: str | None = Field(None, description="openai: environment variable holding the API key (never the key itself)")
    concurrency: int = Field(8, ge=1, description="openai: requests in flight at once")
    batch_size: int = Field(32, ge=1, description="hf: rows decoded together (prompts x samples)")
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the backend's constructor")

    def label(self) -> str:
        """A short name for reports: `hf`, `openai:MODEL`."""
        return self.type if not self.model else f"{self.type}:{self.model}"


def build_chat_backend(config: BackendConfig | dict, *, model_path: Path | str | None = None,
                       cache_dir: Path | str | None = None, tool_hook=None, max_tool_rounds: int = 3):
    """The ChatBackend `config` describes. `model_path` is the model input (hf, vllm); `cache_dir` the
    request cache of HTTP backends (a directory inside the stage's artifact, so a resumed stage reuses it)."""
    config = BackendConfig.model_validate(config)
    if config.type == "hf":
        return _hf_backend(config, model_path, tool_hook, max_tool_rounds)
    if config.type == "openai":
        return _openai_backend(config, cache_dir, tool_hook, max_tool_rounds)
    return _vllm_backend(config, model_path, tool_hook, max_tool_rounds)


def _hf_backend(config: BackendConfig, model_path, tool_hook, max_tool_rounds):
    from posttrain.generate.hf_chat import HFChatBackend
    from posttrain.models.loading import load_causal_lm

    if model_path is None:
        raise ValueError("backend type hf needs a model input (a model directory or a stage that wrote model/)")
    model, tokenizer = load_causal_lm(model_path)
    return HFChatBackend(model, tokenizer, batch_size=config.batch_size, tool_hook=tool_hook,
                         max_tool_rounds=max_tool_rounds, model_name=str(model_path), **config.options)


def _openai_backend(config: BackendConfig, cache_dir, tool_hook, max_tool_rounds):
    from posttrain.generate.openai import OpenAIChatBackend

    if not config.base_url or not config.model:
        raise ValueError("backend type openai needs base_url and model")
    kwargs: dict[str, Any] = {"concurrency": config.concurrency, **config.options}
    if config.api_key_env:
        kwargs["api_key_env"] = config.api_key_env
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    kwargs.update(_tool_kwargs(OpenAIChatBackend, tool_hook, max_tool_rounds))
    return OpenAIChatBackend(config.base_url, config.model, **kwargs)


def _vllm_backend(config: BackendConfig, model_path, tool_hook, max_tool_rounds):
    from posttrain.generate.vllm import VLLMChatBackend

    model = config.model or (str(model_path) if model_path is not None else None)
    if model is None:
        raise ValueError("backend type vllm needs a model input or backend.model")
    kwargs = {**config.options, **_tool_kwargs(VLLMChatBackend, tool_hook, max_tool_rounds)}
    return VLLMChatBackend(model, **kwargs)


def _tool_kwargs(cls, tool_hook, max_tool_rounds) -> dict[str, Any]:
    """tool_hook / max_tool_rounds for backends whose constructor takes them (a server may run no tools)."""
    accepted = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    if tool_hook is not None and "tool_hook" in accepted:
        kwargs["tool_hook"] = tool_hook
    if "max_tool_rounds" in accepted:
        kwargs["max_tool_rounds"] = max_tool_rounds
    return kwargs
