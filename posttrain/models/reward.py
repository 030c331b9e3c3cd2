"""Reward models: a causal LM backbone and a linear head read at each sequence's last token.

The in-memory model is transformers' own `*ForSequenceClassification` (backbone `model.*`, head
`score.weight` (K, H), no bias), so a saved reward model loads with `AutoModelForSequenceClassification`
and vLLM's reward runner without conversion. Training and scoring run it packed: the backbone sees
a (1, T) row with position ids restarting per sequence and no mask (see `models.forward`), and the
head reads the hidden state of each sequence's last token. transformers' own forward reads the
rightmost token that is not `config.pad_token_id`: the saved config gets a pad id distinct from
every end-of-turn id, so both read the same token (the one after the end-of-turn token, where the
chat template has one).

What the K outputs mean travels in config.json: `id2label` names them and `posttrain_reward_head`
holds their names and the weights that combine them into one reward (HelpSteer2's attributes, or
AFM's reward column plus single-sided grading columns that weigh 0 at inference).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from posttrain.data.packing import PackedBatch
from posttrain.models.attention import packed_forward
from posttrain.models.forward import unwrap_model
from posttrain.models.loading import check_safetensors_only, choose_pad_token_id, load_tokenizer, save_state_dict_as_hf
from posttrain.models.runtime import default_dtype

HEAD_CONFIG_KEY = "posttrain_reward_head"
# Longest sequence the model was trained on; longer ones are cut from the left when scored, as in training.
MAX_TOKENS_CONFIG_KEY = "posttrain_reward_max_tokens"
# Mean and standard deviation of the combined reward over responses of the training data, written by the
# reward_model stage: scorers can put several reward models on one scale (ensembles, RM + graders).
SCALE_CONFIG_KEY = "posttrain_reward_scale"

# Nemotron-4 340B Reward / HelpSteer2 (Wang et al. 2024): reward = 0.3 helpfulness + 0.74 correctness
# + 0.46 coherence + 0.47 complexity - 0.33 verbosity.
HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
HELPSTEER2_WEIGHTS = (0.3, 0.74, 0.46, 0.47, -0.33)
# AFM's single-sided grading categories (Apple 2024), predicted beside the reward and weighted 0.
AFM_GRADINGS = ("instruction_following", "conciseness", "truthfulness", "harmlessness")


@dataclasses.dataclass(frozen=True)
class RewardHead:
    """What each head output means and how they combine into one reward: sum_k weights[k] * out_k."""

    outputs: tuple[str, ...] = ("reward",)
    weights: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.outputs or len(self.outputs) != len(self.weights):
            raise ValueError(f"a reward head needs one weight per output, got {self.outputs} and {self.weights}")
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"head output names repeat: {self.outputs}")

    @property
    def size(self) -> int:
        return len(self.outputs)

    def combine(self, values: torch.Tensor) -> torch.Tensor:
        """One reward per row: (N, K) outputs -> (N,) weighted sum."""
        weights = torch.tensor(self.weights, dtype=values.dtype, device=values.device)
        return values @ weights

    def with_weights(self, overrides: dict[str, float] | None) -> "RewardHead":
        """The same head with some outputs re-weighted (names not in the head raise)."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(self.outputs))
        if unknown:
            raise ValueError(f"weights name unknown head outputs {unknown}; the head has {list(self.outputs)}")
        return RewardHead(self.outputs, tuple(float(overrides.get(n, w)) for n, w in zip(self.outputs, self.weights)))

    def as_config(self) -> dict[str, Any]:
        return {"outputs": list(self.outputs), "weights": list(self.weights)}

    @classmethod
    def from_config(cls, config: Any) -> "RewardHead":
        """The head described by a model config (a plain scalar head when the config says nothing)."""
        spec = getattr(config, HEAD_CONFIG_KEY, None)
        if spec:
            return cls(tuple(spec["outputs"]), tuple(float(w) for w in spec["weights"]))
        n = int(getattr(config, "num_labels", 1))
        return cls(("reward",), (1.0,)) if n == 1 else cls(tuple(f"output_{i}" for i in range(n)), (1.0,) * n)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the load report that lists `score.weight` as newly initialised (expected here)."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _describe_head(model: nn.Module, head: RewardHead, tokenizer: Any, max_tokens: int | None) -> None:
    """Write the head's meaning, the length limit and a pad id distinct from end-of-turn into the config."""
    config = unwrap_model(model).config
    if max_tokens is not None:
        setattr(config, MAX_TOKENS_CONFIG_KEY, int(max_tokens))
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    eos = [int(i) for i in [*eos, tokenizer.eos_token_id] if i is not None]
    config.pad_token_id = choose_pad_token_id(tokenizer, eos)
    config.num_labels = head.size
    config.id2label = dict(enumerate(head.outputs))
    config.label2id = {name: i for i, name in enumerate(head.outputs)}
    config.problem_type = "regression"
    setattr(config, HEAD_CONFIG_KEY, head.as_config())


def reward_model_from_causal_lm(
    path: Path | str, head: RewardHead, *, seed: int, max_tokens: int | None = None,
    dtype: torch.dtype | None = None, device: torch.device | str = "cpu", attn_implementation: str = "sdpa",
) -> tuple[nn.Module, Any]:
    """(reward model, tokenizer): the backbone of a causal LM (or a reward model) directory and a new head.

    The head is drawn from N(0, 1 / (H + 1)) with `seed`, so initial rewards are O(1) and the same
    per seed. A directory that already holds a reward model with the same outputs keeps its head.
    `max_tokens`: the training length limit, recorded so scorers cut long inputs the same way.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    check_safetensors_only(path)
    existing = AutoConfig.from_pretrained(str(path), local_files_only=True)
    keep_head = getattr(existing, HEAD_CONFIG_KEY, None) is not None and RewardHead.from_config(existing).outputs == head.outputs
    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=head.size, dtype=dtype or default_dtype(device),
            attn_implementation=attn_implementation, local_files_only=True, use_safetensors=True,
        )
    if not keep_head:
        generator = torch.Generator().manual_seed(seed)
        hidden = model.score.weight.shape[1]
        init = torch.randn(model.score.weight.shape, generator=generator) / math.sqrt(hidden + 1)
        with torch.no_grad():
            model.score.weight.copy_(init.to(model.score.weight.dtype))
    tokenizer = load_tokenizer(path)
    _describe_head(model, head, tokenizer, max_tokens)
    return model.to(device), tokenizer


def load_reward_model(
    path: Path | str, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[nn.Module, Any, RewardHead]:
    """(model, tokenizer, head) of a saved reward model directory (safetensors only)."""
    from transformers import AutoModelForSequenceClassification

    check_safetensors_only(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), dtype=dtype or default_dtype(device), attn_implementation=attn_implementation,
        local_files_only=True, use_safetensors=True,
    )
    return model.to(device), load_tokenizer(path), RewardHead.from_config(model.config)


def save_reward_model(model: nn.Module, tokenizer: Any, out_dir: Path | str, *,
                      state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save a reward model as an HF `*ForSequenceClassification` directory, atomically.

    `state_dict`: full weights gathered elsewhere (FSDP2); by default the unwrapped model's own.
    """
    base = unwrap_model(model)
    config = base.config
    config.architectures = [type(base).__name__]
    state = state_dict if state_dict is not None else base.state_dict()
    return save_state_dict_as_hf(state, config, tokenizer, out_dir)


def reward_scale_of(config: Any) -> tuple[float, float]:
    """(mean, std) of a reward model's combined reward over its training responses, from its config."""
    scale = getattr(config, SCALE_CONFIG_KEY, None)
    if not scale:
        raise ValueError(f"the reward model config has no {SCALE_CONFIG_KEY} (mean and std of its rewards): "
                         "it was trained before posttrain recorded them; retrain it with the reward_model stage")
    return float(scale["mean"]), float(scale["std"])


def reward_scale(rewards: torch.Tensor) -> dict[str, float]:
    """{"mean", "std" (sample std, at least 1e-6), "n"} of rewards, one per response."""
    if rewards.numel() < 2:
        raise ValueError(f"a reward scale needs at least 2 rewards, got {rewards.numel()}")
    return {"mean": float(rewards.mean()), "std": max(float(rewards.std()), 1e-6), "n": int(rewards.numel())}


def record_reward_scale(model_dir: Path | str, scale: dict[str, float]) -> None:
    """Write a scale (from `reward_scale`) into a saved reward model's config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    setattr(config, SCALE_CONFIG_KEY, scale)
    config.save_pretrained(str(model_dir))


def max_tokens_of(model: nn.Module) -> int | None:
    """The length limit a reward model was trained with, else its position limit, else None."""
    config = unwrap_model(model).config
    return getattr(config, MAX_TOKENS_CONFIG_KEY, None) or getattr(config, "max_position_embeddings", None)


def score_head_of(model: nn.Module) -> nn.Linear:
    """The (K, H) linear head of a `*ForSequenceClassification` model, through any wrapper."""
    return unwrap_model(model).score


def packed_hidden(model: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """The backbone's last hidden states (1, T, H) for a packed row.

    The backbone runs with position ids restarting per sequence, `use_cache=False` and no attention
    mask, so no sequence attends to another (see `models.forward`).
    """
    if batch.input_ids.shape[0] != 1:
        raise ValueError(f"a packed batch is one row, got input_ids of shape {tuple(batch.input_ids.shape)}")
    base = unwrap_model(model)
    # No attention_mask on purpose: a mask (even all ones) disables transformers' packed-sequence masking.
    return packed_forward(base.get_decoder(), base, batch.seq_lens, batch.input_ids.device, input_ids=batch.input_ids,
                          position_ids=batch.position_ids, use_cache=False).last_hidden_state


def packed_head_outputs(model: nn.Module, batch: PackedBatch, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Head outputs (n, K) at the last token of each of the n sequences of a packed row.

    `hidden`: the row's `packed_hidden`, when the caller needs it too; only the n last positions are
    projected.
    """
    hidden = packed_hidden(model, batch) if hidden is None else hidden
    last = hidden[0, batch.seq_ends.to(hidden.device)]  # (n, H)
    return score_head_of(model)(last)  # (n, K)


def tied_lm_head_weight(model: nn.Module) -> torch.Tensor:
    """The (V, H) LM head a reward model still has: its input embeddings, when the backbone ties them.

    A `*ForSequenceClassification` drops the causal LM's head; with tied embeddings (the tiny world,
    Qwen2 0.5B-1.5B, Gemma) the input embedding matrix is that head. Untied backbones raise.
    """
    base = unwrap_model(model)
    if not getattr(base.config, "tie_word_embeddings", False):
        raise ValueError("this reward model's backbone does not tie its input and output embeddings, so it has no "
                         "LM head to regularise with; set lm_coef: 0")
    return base.get_input_embeddings().weight
