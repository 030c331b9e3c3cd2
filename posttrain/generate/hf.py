"""Local generation with a Hugging Face causal LM: our own KV-cached decode loop, not `model.generate`.

Owning the loop lets us decide when each row stops (eos ids, stop strings, token budget), drop
finished rows from the batch instead of computing on them, and prefill a prompt once for its K
samples (the cache is repeated per sample after the prefill). Prompts are sorted by length and
batched so that left padding stays small; results come back in the input order. The KV cache is
preallocated for the whole decode (no per-step concatenation), and each sampled row draws one
uniform per step from its own seeded stream, turned into a token by a vectorised inverse-CDF
lookup: a sample depends on its seed, never on what else is in the batch.
"""
from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from posttrain.generate.base import FinishReason, Generation, SamplingParams
from posttrain.generate.sharded import derive_seed
from posttrain.models.runtime import eval_mode


@dataclass
class _Row:
    """The decode state of one sample: what it produced so far and whether it is done."""

    prompt_index: int
    sample_index: int
    seed: int = 0  # this sample's own sampling seed (see `_row_seed`)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None

    def push(self, token: int, logprob: float, gen: "HFGenerator", params: SamplingParams) -> None:
        """Append one token and decide whether the row is finished (eos > stop string > length)."""
        self.token_ids.append(token)
        self.logprobs.append(logprob)
        if token in gen.eos_token_ids:
            self.finish_reason = "eos"
            return
        if params.stop:
            # A stop string may span tokens, so look at the whole decoded continuation.
            self.text = gen.decode(self.token_ids)
            cut = _first_stop(self.text, params.stop)
            if cut is not None:
                self.text = self.text[:cut]
                self.finish_reason = "stop"
                return
        if len(self.token_ids) >= params.max_new_tokens:
            self.finish_reason = "length"

    def result(self, gen: "HFGenerator", params: SamplingParams) -> Generation:
        if self.finish_reason == "eos":
            text = gen.decode(self.token_ids[:-1])
        elif self.finish_reason == "stop" or params.stop:
            text = self.text  # already decoded (and cut) while checking stop strings
        else:
            text = gen.decode(self.token_ids)
        return Generation(
            token_ids=list(self.token_ids),
            text=text,
            finish_reason=self.finish_reason or "length",
            logprobs=list(self.logprobs),
            logprobs_of=params.logprobs_of(),
            model=gen.model_name,
        )


def _first_stop(text: str, stops: list[str]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    hits = [pos for pos in (text.find(s) for s in stops if s) if pos >= 0]
    return min(hits) if hits else None


def _row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A seed per (request seed, prompt, sample): the same sample whatever the batching or order."""
    return derive_seed(seed, prompt_index, sample_index)


def _resolve_eos_ids(model, tokenizer) -> list[int]:
    """Eos ids from the generation config (or model config), plus the tokenizer's eos token.

    Chat checkpoints list their end-of-turn token in generation_config; the tokenizer's eos is added
    because some checkpoints only set the end-of-turn token there.
    """
    ids: list[int] = []
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        found = getattr(source, "eos_token_id", None) if source is not None else None
        if found is not None:
            ids = [found] if isinstance(found, int) else list(found)
            break
    tok_eos = getattr(tokenizer, "eos_token_id", None)
    if tok_eos is not None and tok_eos not in ids:
        ids.append(tok_eos)
    return ids


class _PreallocatedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values live in a buffer with room for the whole decode.

    transformers' DynamicLayer concatenates the cache with each new token, copying all of it every
    step (a third of CPU decode time measured on the tiny world); here a step writes one column in
    place and `keys`/`values` are views of the filled part. The buffer doubles if ever outgrown.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.device = key_states.device
            shape = (*key_states.shape[:-2], max(self.capacity, key_states.shape[-2]), key_states.shape[-1])
            self._k = key_states.new_empty(shape)
            self._v = value_states.new_empty(shape)
            self.is_initialized = True
        end = self.length + key_states.shape[-2]
        if end > self._k.shape[-2]:
            self._k, self._v = self._grown(self._k, end), self._grown(self._v, end)
        self._k[..., self.length:end, :] = key_states
        self._v[..., self.length:end, :] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def _grown(self, buffer: torch.Tensor, needed: int) -> torch.Tensor:
        shape = (*buffer.shape[:-2], max(needed, 2 * buffer.shape[-2]), buffer.shape[-1])
        grown = buffer.new_empty(shape)
        grown[..., :self.length, :] = buffer[..., :self.length, :]
        return grown

    def _views(self) -> None:
        self.keys, self.values = self._k[..., :self.length, :], self._v[..., :self.length, :]

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self._k, self._v = self._k.repeat_interleave(repeats, dim=0), self._v.repeat_interleave(repeats, dim=0)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length:
            self._k, self._v = self._k[indices, ...], self._v[indices, ...]
            self._views()


def _decode_cache(config, capacity: int) -> DynamicCache:
    """A DynamicCache whose plain (full-attention) layers are preallocated for `capacity` tokens."""
    cache = DynamicCache(config=config)
    cache.layers = [_PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus. (R, V) -> (R, V)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p; the most likely always stays.
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class HFGenerator:
    """Batched generation with a transformers causal LM (greedy, or sampled with a seed)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 32, eos_token_ids: list[int] | None = None,
                 model_name: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_token_ids = set(eos_token_ids if eos_token_ids is not None else _resolve_eos_ids(model, tokenizer))
        self.model_name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        pad = getattr(tokenizer, "pad_token_id", None)
        # The pad id only fills masked slots, so any valid id works when the tokenizer has none.
        self.pad_token_id = pad if pad is not None else min(self.eos_token_ids, default=0)
        forward_args = inspect.signature(model.forward).parameters
        # transformers renamed `past_key_values` to `cache` (5.x); accept either.
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._keep_last_logits = "logits_to_keep" in forward_args

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 seeds: list[int] | None = None) -> list[list[Generation]]:
        """`params.n` generations per prompt, in the order of `prompts`.

        Sample s of prompt i is seeded from (params.seed, i, s); with `seeds`, from (seeds[i], 0, s)
        instead, so a prompt gets the same samples whichever request, batch or shard it is in: what
        `generate([prompts[i]], params with seed=seeds[i])` gives it.
        """
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        # Greedy samples are all equal: decode once and copy.
        samples = 1 if params.greedy else params.n
        prompts_per_batch = max(1, self.batch_size // samples)
        base_seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()).item())
        seed_keys = [(base_seed, i) for i in range(len(prompts))] if seeds is None else [(s, 0) for s in seeds]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[list[Generation]] = [[] for _ in prompts]
        with torch.inference_mode(), eval_mode(self.model):
            for start in range(0, len(order), prompts_per_batch):
                indices = order[start:start + prompts_per_batch]
                rows = [_Row(i, s, _row_seed(*seed_keys[i], s)) for i in indices for s in range(samples)]
                self._decode_batch([prompts[i] for i in indices], rows, samples, params)
                for row in rows:
                    results[row.prompt_index].append(row.result(self, params))
        if samples < params.n:
            results = [[_copy(gens[0]) for _ in range(params.n)] for gens in results]
        return results

    def _decode_batch(self, prompts: list[list[int]], rows: list[_Row], samples: int,
                      params: SamplingParams) -> list[_Row]:
        """Prefill the prompts once, repeat the cache per sample, then decode until every row is done.

        `rows` holds `samples` rows per prompt, in prompt order.
        """
        input_ids, mask = self._left_pad(prompts)  # (P, T), (P, T)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # pads get 0; they are masked anyway
        cache = _decode_cache(self.model.config, input_ids.shape[1] + params.max_new_tokens)
        logits = self._forward(input_ids, mask, positions, cache)  # (P, V)
        if samples > 1:
            cache.batch_repeat_interleave(samples)
            mask = mask.repeat_interleave(samples, dim=0)  # (R, T)
            logits = logits.repeat_interleave(samples, dim=0)  # (R, V)
        next_pos = mask.sum(-1, keepdim=True)  # (R, 1): the position of the next token per row
        rngs = None if params.greedy else [random.Random(r.seed) for r in rows]
        live = list(range(len(rows)))  # which rows the batch dimension holds, in order
        while True:
            tokens, logps = self._pick(logits, params, None if rngs is None else [rngs[r] for r in live])
            # One device-to-host copy per step, not one per row.
            for r, token, logp in zip(live, tokens.tolist(), logps.tolist()):
                rows[r].push(token, logp, self, params)
            keep = [slot for slot, r in enumerate(live) if rows[r].finish_reason is None]
            if not keep:
                return rows
            if len(keep) < len(live):
                # Drop finished rows so no compute is spent on them.
                select = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(select)
                mask, next_pos, tokens = mask[select], next_pos[select], tokens[select]
                live = [live[slot] for slot in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)  # (R, T + 1)
            logits = self._forward(tokens[:, None], mask, next_pos, cache)
            next_pos = next_pos + 1

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad so every prompt's last token sits in the last column. -> ids (P, T), mask (P, T)."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _forward(self, input_ids, mask, positions, cache) -> torch.Tensor:
        """One forward over new tokens, extending `cache`; returns the last position's logits (R, V)."""
        kwargs = {self._cache_arg: cache, "use_cache": True}
        if self._keep_last_logits:
            kwargs["logits_to_keep"] = 1  # no full-vocabulary logits over the whole prompt
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, **kwargs)
        return out.logits[:, -1, :].float()

    @staticmethod
    def _pick(logits: torch.Tensor, params: SamplingParams,
              rngs: list[random.Random] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose the next token per row and its log-prob under `params.logprobs_of()`. -> (R,), (R,)."""
        if params.greedy:
            tokens = logits.argmax(dim=-1)
            logprobs = torch.log_softmax(logits, dim=-1)
        else:
            scaled = logits / params.temperature
            logprobs = torch.log_softmax(scaled, dim=-1)
            probs = torch.softmax(filter_logits(scaled, params.top_k, params.top_p), dim=-1)  # (R, V)
            # One uniform per row from the row's own stream keeps each sample independent of what else
            # is in the batch, and the draw itself is one vectorised op (no per-row kernel launches).
            uniforms = torch.tensor([rng.random() for rng in rngs], dtype=probs.dtype, device=probs.device)
            tokens = sample_inverse_cdf(probs, uniforms)
        return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Token per row whose cumulative-probability interval holds uniforms[r] (in [0, 1)). (R, V), (R,) -> (R,).

    The uniform is scaled by the row's total mass (rounding), and `right=True` skips zero-probability
    tokens, so a filtered-out token is never drawn.
    """
    cdf = probs.cumsum(dim=-1)  # (R, V)
    target = (uniforms * cdf[:, -1]).unsqueeze(-1)  # (R, 1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def _copy(gen: Generation) -> Generation:
    return Generation(list(gen.token_ids), gen.text, gen.finish_reason,
                      None if gen.logprobs is None else list(gen.logprobs), gen.logprobs_of, gen.model)
