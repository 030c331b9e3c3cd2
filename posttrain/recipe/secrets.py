"""Secrets never reach a recipe file, manifest, cache key, log or report.

API keys come from environment variables. A config field whose name looks like a secret
(`api_key`, `*_token`, `*secret*`, `authorization`, `password`) is shown as "***" wherever the run
writes it, and left out of the cache key (rotating a key must not rerun a stage). The tokenizer's
special tokens (`pad_token`, `eos_token`, ...) end in `_token` but are not secrets.
"""
from __future__ import annotations

from typing import Any

REDACTED = "***"
_SPECIAL_TOKENS = {"bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token"}


def is_secret_key(name: str) -> bool:
    """Whether a config key names a secret."""
    key = name.lower().replace("-", "_")
    if key in _SPECIAL_TOKENS:
        return False
    return (
        "api_key" in key
        or "apikey" in key
        or key == "token"
        or key.endswith("_token")
        or "secret" in key
        or "authorization" in key
        or "password" in key
    )


def redact(value: Any) -> Any:
    """A copy of `value` with every secret-looking key's (non-empty) value replaced by "***"."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, str) and is_secret_key(key) and item not in (None, ""):
                out[key] = REDACTED
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    return value


def strip_secrets(value: Any) -> Any:
    """A copy of `value` without secret-looking keys at all (what the cache key hashes)."""
    if isinstance(value, dict):
        return {k: strip_secrets(v) for k, v in value.items() if not (isinstance(k, str) and is_secret_key(k))}
    if isinstance(value, (list, tuple)):
        return [strip_secrets(item) for item in value]
    return value
