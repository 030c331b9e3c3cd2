"""Chat templates (ChatML, Llama 3.1, Gemma) as Hugging Face Jinja templates, and how to install them.

The Jinja sources live in `templates/*.jinja`. They render what the models' own templates render
(ChatML with Qwen2.5's tool format; Llama 3.1 with its JSON tool calls; Gemma with a system prompt
folded into the first user turn, as Gemma 3 does), with three deliberate differences, documented
in each file: ChatML adds no default system prompt, tool-call arguments may be a JSON string (the
OpenAI format: written as is) or a dict (dumped with `tojson`), and Llama 3 writes a string tool
result as is where Meta's template JSON-quotes it. Each template wraps what the assistant writes
(content, tool calls, end-of-turn token) in `{% generation %}`, the tag transformers and TRL read
for assistant masks; it does not change the rendered text.

`install_template` puts a template on a tokenizer so that `save_pretrained` writes it
(`chat_template.jinja`) and `AutoTokenizer.from_pretrained`, vLLM and SGLang render the same text.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format: its Jinja source and the special tokens it needs.

    `pad_token` is the suggested padding token, always distinct from `eos_token` and `end_of_turn`;
    `pad_aliases` are tokens an older vocabulary holds at the same place (Llama 3's reserved token 2
    is Llama 3.1's pad), used instead of adding a new token when the suggested one is missing.
    """

    name: str
    source: str
    special_tokens: tuple[str, ...]  # every special token the format uses, in vocabulary order
    end_of_turn: str  # what ends an assistant turn: the last token of the assistant mask
    eos_token: str
    bos_token: str | None
    pad_token: str
    pad_aliases: tuple[str, ...] = ()
    marker: str = ""  # a token only this format has: how `detect_template` recognises it
    supports_tools: bool = True
    single_tool_call: bool = False  # one call per assistant turn, rendered alone (content dropped)


def _load(name: str) -> str:
    return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate(
        name="chatml",
        source=_load("chatml"),
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        end_of_turn="<|im_end|>",
        eos_token="<|im_end|>",  # as Qwen2-Instruct: generation stops at the end of the turn
        bos_token=None,
        pad_token="<|endoftext|>",
        marker="<|im_start|>",
    ),
    "llama3": ChatTemplate(
        name="llama3",
        source=_load("llama3"),
        special_tokens=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|finetune_right_pad_id|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ),
        end_of_turn="<|eot_id|>",
        eos_token="<|eot_id|>",  # as Llama 3.1-Instruct
        bos_token="<|begin_of_text|>",
        pad_token="<|finetune_right_pad_id|>",
        pad_aliases=("<|reserved_special_token_2|>",),  # id 128004 in Llama 3, renamed in 3.1
        marker="<|start_header_id|>",
        single_tool_call=True,
    ),
    "gemma": ChatTemplate(
        name="gemma",
        source=_load("gemma"),
        special_tokens=("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
        end_of_turn="<end_of_turn>",
        eos_token="<eos>",
        bos_token="<bos>",
        pad_token="<pad>",
        marker="<start_of_turn>",
        supports_tools=False,
    ),
}


def get_template(name: str) -> ChatTemplate:
    """The template called `name`, or a ValueError listing the known ones."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


def _vocab_has(tokenizer: Any, token: str) -> bool:
    return token in tokenizer.get_vocab()


def _pick_pad(tokenizer: Any, spec: ChatTemplate) -> str:
    """The suggested pad token if present, else an alias the vocabulary holds, else the suggestion (added)."""
    for candidate in (spec.pad_token, *spec.pad_aliases):
        if _vocab_has(tokenizer, candidate):
            return candidate
    return spec.pad_token


def install_template(tokenizer: Any, name: str) -> Any:
    """Add the format's special tokens, set bos/eos/pad and `chat_template`; return the tokenizer.

    Tokens already in the vocabulary keep their ids (on a real Llama 3 or Qwen2 tokenizer nothing
    is added). Only the pad token may be new; resize the model's embeddings if `len(tokenizer)` grew.
    """
    spec = get_template(name)
    pad = _pick_pad(tokenizer, spec)
    wanted = [tok for tok in spec.special_tokens if tok != spec.pad_token] + [pad]
    tokenizer.add_special_tokens({"extra_special_tokens": wanted}, replace_extra_special_tokens=False)
    tokenizer.bos_token = spec.bos_token
    tokenizer.eos_token = spec.eos_token
    tokenizer.pad_token = pad
    tokenizer.chat_template = spec.source
    return tokenizer


def end_of_turn_ids(tokenizer: Any, name: str) -> list[int]:
    """Token ids that end an assistant turn (stop ids for generation): end-of-turn first, then eos."""
    spec = get_template(name)
    tokens = [spec.end_of_turn] + ([spec.eos_token] if spec.eos_token != spec.end_of_turn else [])
    missing = [tok for tok in tokens if not _vocab_has(tokenizer, tok)]
    if missing:
        raise ValueError(f"tokenizer lacks {missing} of template {name!r}; call install_template first")
    return [tokenizer.convert_tokens_to_ids(tok) for tok in tokens]


def detect_template(tokenizer: Any) -> str:
    """Name of the format a tokenizer speaks: its installed template if it is ours, else by marker token."""
    installed = getattr(tokenizer, "chat_template", None)
    for name, spec in TEMPLATES.items():
        if installed == spec.source:
            return name
    for name, spec in TEMPLATES.items():
        if _vocab_has(tokenizer, spec.marker):
            return name
    raise ValueError("cannot tell the chat format: no <|im_start|>, <|start_header_id|> or <start_of_turn> token")
