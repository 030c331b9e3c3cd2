"""Offline preference optimisation (DPO, its variants, RPO) on the engine.

The story of a run:
1. tokenize each pair into a chosen and a rejected sequence (loss on the answer; formatting tokens
   optionally masked out, as Llama 3 does with its header and termination tokens);
2. reference pass: the reference model's sequence log-probs of every answer, once, in a no-grad pass
   over large packed rows, written next to the run (`reference_logps.json`), so no reference model
   sits in memory during training and a resumed run does not recompute them;
3. train: each optimizer step takes `pairs_per_step` pairs, packs chosen and rejected of every pair
   into padding-free rows (one concatenated forward for both), and the loss (a pure function from
   `posttrain.losses.preference`) compares policy and stored reference log-probs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from posttrain.data.lengths import TOO_LONG, LengthPolicy, apply_length_policy
from posttrain.data.packing import PackedBatch, collate_packed, pack_best_fit_decreasing
from posttrain.data.tokenize import tokenize_conversation
from posttrain.losses.preference import PairLogps, preference_metrics
from posttrain.models.attention import varlen_enabled
from posttrain.models.forward import last_hidden_state, lm_head_of, unwrap_model
from posttrain.models.logprobs import sequence_logprobs, shifted_targets, token_logprobs
from posttrain.models.runtime import eval_mode
from posttrain.train.config import TrainConfig
from posttrain.train.distributed import DistContext, barrier, init_distributed, shard_for_rank
from posttrain.train.engine import LossFn, LossOutput, Trainer, plan_total_steps
from posttrain.train.mixture import mixture_rng
from posttrain.train.sft import save_final_model
from posttrain.train.step_log import LogFn

__all__ = [
    "PackedRows", "PairBatch", "PreferencePlan", "collate_pairs", "mask_token_ids", "preference_loss_fn",
    "reference_logps", "cached_reference_logps", "run_preference", "tokenize_pair",
]

REFERENCE_FILE = "reference_logps.json"
# Drop reasons of pairs that cannot train (besides the length policy's TOO_LONG).
NO_LOSS_TOKENS = "no_loss_tokens"
IDENTICAL_ANSWERS = "identical_answers"
NO_REWARD = "no_reward"


# ---- 1. tokenize -------------------------------------------------------------------------------------


def mask_token_ids(example: Mapping[str, Any], token_ids: frozenset[int]) -> dict[str, Any]:
    """A copy of `example` ({"input_ids", "loss_mask"}) with the loss mask False wherever the token is in `token_ids`."""
    mask = [bool(m) and token not in token_ids for token, m in zip(example["input_ids"], example["loss_mask"])]
    return {**example, "loss_mask": mask}


def _split_prompt(ids: list[int], mask: list[bool]) -> int:
    """Where the answer starts: the first loss token (everything before it is the prompt)."""
    return next((i for i, m in enumerate(mask) if m), len(ids))


def _fit_pair(
    chosen: tuple[list[int], list[bool]], rejected: tuple[list[int], list[bool]], policy: LengthPolicy
) -> tuple[dict, dict] | None:
    """Both sequences within `policy.max_tokens`, or None (drop). Truncation cuts the shared prompt from the
    left by what the LONGER sequence needs, so both answers keep the same context, then each answer from the right."""
    cut_c, cut_r = _split_prompt(*chosen), _split_prompt(*rejected)
    excess = max(len(chosen[0]), len(rejected[0])) - policy.max_tokens
    if excess > 0 and policy.on_overflow == "drop":
        return None
    fitted = []
    for (ids, mask), cut in ((chosen, cut_c), (rejected, cut_r)):
        prompt_cut = min(max(excess, 0), cut)
        prompt, answer = ids[prompt_cut:cut], ids[cut:]
        fit = apply_length_policy(prompt, answer, policy)
        if fit is None:
            return None
        new_prompt, new_answer = fit
        answer_mask = mask[cut : cut + len(new_answer)]
        fitted.append({"input_ids": new_prompt + new_answer, "loss_mask": [False] * len(new_prompt) + answer_mask})
    return fitted[0], fitted[1]


def _predicted_loss_tokens(example: Mapping[str, Any]) -> int:
    """Loss positions the model predicts (a sequence's first token never is)."""
    return sum(bool(m) for m in example["loss_mask"][1:])


def tokenize_pair(
    tokenizer: Any,
    pair: Any,
    template: str,
    policy: LengthPolicy,
    masked_ids: frozenset[int] = frozenset(),
    reward_source: str | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """(example, None) for a trainable `records.PreferencePair`, else (None, drop reason).

    example = {"id", "chosen": {input_ids, loss_mask}, "rejected": {...}, "chosen_reward", "rejected_reward"}.
    `reward_source` "reward" reads chosen_reward / rejected_reward (a reward model's), "score" reads
    chosen_score / rejected_score (a grader's); None leaves the rewards at 0 (losses that need none).
    """
    sequences = []
    for answer in (pair.chosen, pair.rejected):
        chat = tokenize_conversation(tokenizer, pair.prompt.messages + answer, pair.prompt.tools, template)
        sequences.append((chat.input_ids, list(chat.assistant_mask)))
    fitted = _fit_pair(sequences[0], sequences[1], policy)
    if fitted is None:
        return None, TOO_LONG
    chosen, rejected = (mask_token_ids(seq, masked_ids) for seq in fitted)
    if not _predicted_loss_tokens(chosen) or not _predicted_loss_tokens(rejected):
        return None, NO_LOSS_TOKENS
    if chosen["input_ids"] == rejected["input_ids"]:
        return None, IDENTICAL_ANSWERS
    rewards = (0.0, 0.0)
    if reward_source is not None:
        rewards = (getattr(pair, f"chosen_{reward_source}"), getattr(pair, f"rejected_{reward_source}"))
        if None in rewards:
            return None, NO_REWARD
    return {"id": pair.id, "chosen": chosen, "rejected": rejected,
            "chosen_reward": float(rewards[0]), "rejected_reward": float(rewards[1])}, None


def pair_tokens(example: Mapping[str, Any]) -> int:
    """Tokens of a pair's chosen + rejected sequences (what it takes in a packed row)."""
    return len(example["chosen"]["input_ids"]) + len(example["rejected"]["input_ids"])


# ---- the forward: packed rows, stacked ------------------------------------------------------------


def _sequences(pairs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """chosen_0, rejected_0, chosen_1, rejected_1, ...: pair i's sequences at 2i and 2i+1."""
    return [seq for pair in pairs for seq in (pair["chosen"], pair["rejected"])]


def longest_sequence(pairs: Sequence[Mapping[str, Any]]) -> int:
    return max(len(seq["input_ids"]) for seq in _sequences(pairs))


@dataclasses.dataclass
class PackedRows:
    """Sequences packed into R rows of at most `row_tokens`, run as ONE (R, T) forward.

    Why rows and not one long row: with sdpa (and eager) attention, transformers masks a packed row
    with a dense (T, T) mask and computes every score, masked or not, so one 2048-token row cost 2.2x
    four rows of 512 on CPU for the same tokens. A row is as long as the longest sequence needs;
    shorter rows are padded at the end with a sequence of their own (positions restart at 0), which
    nothing attends to and which is never scored.
    """

    rows: list[PackedBatch]  # each (1, T_r)
    slots: torch.Tensor  # (n_seq,) long: where each sequence, in row order, goes in the caller's order

    @classmethod
    def pack(cls, sequences: Sequence[Mapping[str, Any]], row_tokens: int) -> "PackedRows":
        packed = pack_best_fit_decreasing([len(s["input_ids"]) for s in sequences], row_tokens)
        rows = [collate_packed([sequences[i] for i in row]) for row in packed]
        return cls(rows, torch.tensor([i for row in packed for i in row], dtype=torch.long))

    @property
    def input_ids(self) -> torch.Tensor:  # the real tokens (what the engine counts as processed)
        return torch.cat([row.input_ids for row in self.rows], dim=1)

    def to(self, device: torch.device | str) -> "PackedRows":
        return PackedRows([row.to(device) for row in self.rows], self.slots.to(device))

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, position_ids, targets, loss_mask), each (R, T), rows padded at the end."""
        width = max(row.input_ids.shape[1] for row in self.rows)
        device = self.rows[0].input_ids.device
        input_ids = torch.zeros(len(self.rows), width, dtype=torch.long, device=device)
        position_ids = torch.arange(width, device=device).repeat(len(self.rows), 1)
        targets, loss_mask = torch.zeros_like(input_ids), torch.zeros_like(input_ids, dtype=torch.bool)
        for r, row in enumerate(self.rows):
            n = row.input_ids.shape[1]
            row_targets, row_mask = shifted_targets(row)  # (1, n) each
            input_ids[r, :n], targets[r, :n], loss_mask[r, :n] = row.input_ids[0], row_targets[0], row_mask[0]
            position_ids[r, :n] = row.position_ids[0]
            position_ids[r, n:] -= n  # the padding is a sequence of its own, starting at position 0
        return input_ids, position_ids, targets, loss_mask

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, position_ids, targets, loss_mask), each (1, T): the rows end to end, no padding."""
        shifted = [shifted_targets(row) for row in self.rows]
        return (torch.cat([row.input_ids for row in self.rows], dim=1), torch.cat([row.position_ids for row in self.rows], dim=1),
                torch.cat([targets for targets, _ in shifted], dim=1), torch.cat([mask for _, mask in shifted], dim=1))

    def sequence_logprobs(self, model: torch.nn.Module, chunk_size: int) -> torch.Tensor:
        """Summed log-probs of every sequence's loss tokens, (n_seq,) float32, in the caller's order.

        With variable-length attention (`models.attention`, CUDA) the rows run end to end as one row, the
        kernel keeping sequences apart; otherwise they are stacked (R, T) and transformers masks each row.
        """
        device = self.rows[0].input_ids.device
        seq_lens = [n for row in self.rows for n in row.seq_lens]  # in row order
        flat = varlen_enabled(unwrap_model(model), device)
        input_ids, position_ids, targets, loss_mask = self.flat() if flat else self.stacked()
        hidden = last_hidden_state(model, device, seq_lens if flat else None, input_ids=input_ids,
                                   position_ids=position_ids)
        picked = token_logprobs(hidden[loss_mask], lm_head_of(model), targets[loss_mask], chunk_size)  # (N,)
        token_lp = torch.zeros(loss_mask.shape, dtype=torch.float32, device=hidden.device).masked_scatter(loss_mask, picked)
        if not flat:  # (R, W) -> (T,): every row without its end padding, end to end as in the flat layout
            widths = [row.input_ids.shape[1] for row in self.rows]
            token_lp = torch.cat([token_lp[r, :n] for r, n in enumerate(widths)])
            loss_mask = torch.cat([loss_mask[r, :n] for r, n in enumerate(widths)])
        cu_seqlens = torch.tensor([0, *seq_lens]).cumsum(0)  # on the CPU: the boundaries need no device sync
        in_row_order = sequence_logprobs(token_lp, loss_mask, cu_seqlens)  # (n_seq,)
        return torch.zeros_like(in_row_order).index_copy(0, self.slots, in_row_order)


# ---- 2. reference pass ------------------------------------------------------------------------------


@torch.inference_mode()
def reference_logps(
    model: torch.nn.Module,
    pairs: Sequence[Mapping[str, Any]],
    batch_tokens: int,
    chunk_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(P, 2) float32 summed log-probs of each pair's (chosen, rejected) answer under `model`, no grad.

    All 2P sequences are packed best-fit decreasing into rows as long as the longest sequence, and
    rows are stacked into forwards of about `batch_tokens` tokens; the result does not depend on the packing.
    """
    sequences = _sequences(pairs)
    row_tokens = longest_sequence(pairs)
    rows = PackedRows.pack(sequences, row_tokens)
    per_forward = max(1, batch_tokens // row_tokens)
    out = torch.zeros(len(sequences), dtype=torch.float32)
    with eval_mode(model):
        for start in range(0, len(rows.rows), per_forward):
            end = start + per_forward
            first = sum(row.num_sequences for row in rows.rows[:start])
            count = sum(row.num_sequences for row in rows.rows[start:end])
            group = PackedRows(rows.rows[start:end], torch.arange(count)).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                scored = group.sequence_logprobs(model, chunk_size)
            out[rows.slots[first : first + count]] = scored.float().cpu()
    return out.view(-1, 2)


def data_fingerprint(pairs: Sequence[Mapping[str, Any]], reference_name: str) -> str:
    """Hash of the tokenized sequences (ids and masks, in order) and the reference's name."""
    digest = hashlib.sha256(reference_name.encode())
    for seq in _sequences(pairs):
        digest.update(json.dumps([seq["input_ids"], [int(bool(m)) for m in seq["loss_mask"]]]).encode())
    return digest.hexdigest()[:32]


def cached_reference_logps(
    path: Path,
    compute: Callable[[], torch.Tensor],
    pairs: Sequence[Mapping[str, Any]],
    reference_name: str,
    ctx: DistContext | None = None,
) -> tuple[torch.Tensor, bool]:
    """The reference log-probs stored at `path` when they are for these pairs and this reference, else
    `compute()` them (on the main process) and store them atomically; returns (logps (P, 2), from_cache).

    Only the main process looks at the cache, and every process passes the barrier either way: a rank
    that found the file its main had just written, and skipped the barrier, would pair the main's
    barrier with the next collective (DDP's) and hang both. Other ranks report from_cache False.
    """
    ctx = ctx or init_distributed()
    fingerprint = data_fingerprint(pairs, reference_name)
    from_cache = False
    if ctx.is_main:
        from_cache = _read_reference(path, fingerprint) is not None
        if not from_cache:
            logps = compute()
            tmp = path.with_suffix(".tmp")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"fingerprint": fingerprint, "reference": reference_name,
                                       "logps": logps.tolist()}), encoding="utf-8")
            os.replace(tmp, path)
    barrier(ctx)
    logps = _read_reference(path, fingerprint)
    assert logps is not None, f"{path}: reference log-probs were not written"
    return logps, from_cache


def _read_reference(path: Path, fingerprint: str) -> torch.Tensor | None:
    if not path.exists():
        return None
    stored = json.loads(path.read_text(encoding="utf-8"))
    if stored.get("fingerprint") != fingerprint:
        return None
    return torch.tensor(stored["logps"], dtype=torch.float32).view(-1, 2)


# ---- 3. train ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class PairBatch:
    """P pairs in one forward: their 2P sequences in packed rows, and per-pair tensors (P, 2) of (chosen, rejected)."""

    sequences: PackedRows  # slot 2i = pair i's chosen, 2i + 1 = its rejected
    reference: torch.Tensor  # (P, 2) reference log-probs
    tokens: torch.Tensor  # (P, 2) loss tokens
    rewards: torch.Tensor  # (P, 2) reward values
    valid: torch.Tensor  # (P,) 1.0 for a real pair, 0.0 for the filler that evens out processes and for replay
    replay: torch.Tensor | None = None  # (P,) 1.0 for a replayed SFT conversation (its "chosen" is the conversation)

    @property
    def input_ids(self) -> torch.Tensor:  # what the engine counts as tokens processed
        return self.sequences.input_ids

    def to(self, device: torch.device | str) -> "PairBatch":
        return PairBatch(self.sequences.to(device), self.reference.to(device), self.tokens.to(device),
                         self.rewards.to(device), self.valid.to(device),
                         None if self.replay is None else self.replay.to(device))

    def logps(self, policy: torch.Tensor) -> PairLogps:
        """The loss inputs, given the policy's (P, 2) sequence log-probs."""
        return PairLogps(policy[:, 0], policy[:, 1], self.reference[:, 0], self.reference[:, 1],
                         self.tokens[:, 0], self.tokens[:, 1], self.rewards[:, 0], self.rewards[:, 1])


_EMPTY = {"input_ids": [0], "loss_mask": [False]}
_FILLER = {"chosen": _EMPTY, "rejected": _EMPTY, "reference": (0.0, 0.0), "chosen_reward": 0.0, "rejected_reward": 0.0,
           "filler": True}


def replay_item(sequence: Mapping[str, Any], item_id: str) -> dict[str, Any]:
    """An SFT conversation ({"input_ids", "loss_mask"}) as an item of the pair stream: trained by NLL only.

    It rides in the same micro-batches as the pairs (its "rejected" is a one-token stub that is never
    scored) and counts as no pair: the DPO loss and the pair metrics leave it out.
    """
    return {"id": item_id, "chosen": dict(sequence), "rejected": _EMPTY, "reference": (0.0, 0.0),
            "chosen_reward": 0.0, "rejected_reward": 0.0, "replay": True}


def collate_pairs(pairs: Sequence[Mapping[str, Any]], row_tokens: int) -> PairBatch:
    """The pairs' sequences packed into rows of at most `row_tokens`; each pair carries "reference": (chosen, rejected)."""
    return PairBatch(
        sequences=PackedRows.pack(_sequences(pairs), row_tokens),
        reference=torch.tensor([p["reference"] for p in pairs], dtype=torch.float32).view(-1, 2),
        tokens=torch.tensor([(_predicted_loss_tokens(p["chosen"]), _predicted_loss_tokens(p["rejected"]))
                             for p in pairs], dtype=torch.float32).view(-1, 2),
        rewards=torch.tensor([(p["chosen_reward"], p["rejected_reward"]) for p in pairs], dtype=torch.float32).view(-1, 2),
        valid=torch.tensor([0.0 if p.get("filler") or p.get("replay") else 1.0 for p in pairs]),
        replay=torch.tensor([1.0 if p.get("replay") else 0.0 for p in pairs]) if any(p.get("replay") for p in pairs)
        else None,
    )


def preference_loss_fn(loss: Callable[[PairLogps], torch.Tensor], beta: float, chunk_size: int,
                       replay_weight: float = 0.0) -> LossFn:
    """loss_fn(model, PairBatch) for the engine: summed per-pair loss, normalised by the step's pair count.

    Replayed SFT conversations in the batch (`replay_item`) add `replay_weight` x their per-token NLL
    each to that sum (SFT replay, so the step's loss is mean pair loss + replay_weight x replay rows
    per pair x their mean per-token NLL); they count as no pair.
    """

    def loss_fn(model, batch: PairBatch) -> LossOutput:
        policy = batch.sequences.sequence_logprobs(model, chunk_size).view(-1, 2)  # (P, 2), one forward
        logps = batch.logps(policy)
        loss_sum = (loss(logps) * batch.valid).sum()
        if batch.replay is not None and replay_weight:
            nll = -policy[:, 0] / batch.tokens[:, 0].clamp(min=1.0)  # per-token NLL of each replayed conversation
            loss_sum = loss_sum + replay_weight * (nll * batch.replay).sum()
        metrics = {name: (value * batch.valid).sum() for name, value in preference_metrics(logps, beta).items()}
        return LossOutput(loss_sum, batch.valid.sum(), metrics)

    return loss_fn


class _EpochSteps(Sequence):
    """This process's micro-batches for each step of one epoch; collated when a step is read."""

    def __init__(self, steps: list[list[list[Mapping[str, Any]]]], row_tokens: int):
        self._steps, self._row_tokens = steps, row_tokens  # step -> this rank's micro-batches -> pairs

    def __len__(self) -> int:
        return len(self._steps)

    def __getitem__(self, index: int) -> list[PairBatch]:
        return [collate_pairs(pairs, self._row_tokens) for pairs in self._steps[index]]


class PreferencePlan:
    """The StepPlan of offline preference training, a pure function of (pairs, seed, epoch, rank, world).

    Each epoch shuffles the pairs and takes `pairs_per_step` of them per optimizer step (the last
    step may hold fewer). A step's pairs are split over processes; each process groups its share
    into micro-batches of at most `micro_batch_tokens` tokens (best-fit decreasing on chosen +
    rejected), and a micro-batch's sequences go into rows as long as the longest sequence of the
    data (`PackedRows`): one forward per micro-batch, chosen and rejected side by side.
    """

    def __init__(self, pairs: Sequence[Mapping[str, Any]], pairs_per_step: int, micro_batch_tokens: int,
                 epochs: int, seed: int, ctx: DistContext):
        too_long = [i for i, p in enumerate(pairs) if pair_tokens(p) > micro_batch_tokens]
        if too_long:
            raise ValueError(f"{len(too_long)} pairs exceed micro_batch_tokens={micro_batch_tokens} "
                             f"(chosen + rejected); raise it or lower the length limit")
        self.pairs, self.pairs_per_step, self.budget = list(pairs), pairs_per_step, micro_batch_tokens
        self.row_tokens = longest_sequence(self.pairs)
        self.epochs, self.seed, self.ctx = epochs, seed, ctx
        self._cache: dict[int, _EpochSteps] = {}

    def _micro_batches(self, pairs: list[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
        packed = pack_best_fit_decreasing([pair_tokens(p) for p in pairs], self.budget)
        return [[pairs[i] for i in group] for group in packed]

    def step_micro_batches(self, epoch: int) -> list[list[list[Mapping[str, Any]]]]:
        """For each optimizer step of the epoch, this process's micro-batches (lists of pairs); fillers even out processes."""
        order = mixture_rng(self.seed, epoch, "pairs").permutation(len(self.pairs))
        world, steps = self.ctx.world_size, []
        for start in range(0, len(order), self.pairs_per_step):
            chosen = [self.pairs[i] for i in order[start : start + self.pairs_per_step]]
            per_rank = [self._micro_batches(chosen[rank::world]) if chosen[rank::world] else [] for rank in range(world)]
            width = max(len(groups) for groups in per_rank)
            per_rank = [groups + [[_FILLER]] * (width - len(groups)) for groups in per_rank]
            steps.append(shard_for_rank([per_rank[r][i] for i in range(width) for r in range(world)], self.ctx))
        return steps

    def steps(self, epoch: int) -> _EpochSteps:
        if epoch not in self._cache:
            self._cache = {epoch: _EpochSteps(self.step_micro_batches(epoch), self.row_tokens)}  # one epoch in memory
        return self._cache[epoch]


def run_preference(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[Mapping[str, Any]],
    config: TrainConfig,
    out_dir: Path | str,
    *,
    loss: Callable[[PairLogps], torch.Tensor],
    beta: float,
    pairs_per_step: int,
    log_fn: LogFn | None = None,
    eos_token_ids: list[int] | None = None,
    replay_weight: float = 0.0,
) -> dict[str, Any]:
    """Train `model` on tokenized pairs that carry their "reference" log-probs; save HF to out_dir/model.

    `loss` is a bound loss (`losses.preference.bind_loss`); `beta` scales the reported implicit
    rewards. Items made by `replay_item` among the pairs are trained by NLL x `replay_weight`.
    Checkpoints go to out_dir/checkpoints and a cut-off run resumes from the latest one.
    """
    out_dir = Path(out_dir)
    ctx = init_distributed()
    plan = PreferencePlan(pairs, pairs_per_step, config.micro_batch_tokens, config.epochs, config.seed, ctx)
    trainer = Trainer(
        model, config, preference_loss_fn(loss, beta, config.logprob_chunk_size, replay_weight),
        total_steps=plan_total_steps(plan, config.max_steps), checkpoint_dir=out_dir / "checkpoints",
        log_fn=log_fn, ctx=ctx,
    )
    fit = trainer.fit(plan)
    outputs = save_final_model(trainer, tokenizer, out_dir, eos_token_ids)
    return {**fit, "outputs": outputs}
