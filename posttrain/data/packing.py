"""Packing: several tokenized sequences in one row, so no compute is spent on padding.

A packed row concatenates sequences and restarts `position_ids` at 0 for each one; transformers
reads the restarts to build a per-sequence causal mask (see `posttrain.models.forward`). Labels
stay ALIGNED with `input_ids` (-100 where no loss); the next-token shift happens later, in
`shifted_labels`, and never crosses a sequence boundary.

A padded batch (`collate_padded`) is kept for comparisons and for algorithms that need one row per
sequence.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence

import torch

IGNORE_INDEX = -100


def pack_best_fit_decreasing(lengths: list[int], budget: int) -> list[list[int]]:
    """Best-fit decreasing bin packing of sequence lengths into rows of at most `budget` tokens.

    Longest first (ties by index); each goes into the open row with the least room that still fits it
    (ties: the row opened first), else a new row. Returns the indices in each row, in insertion order.
    A length over `budget` raises: the length policy (truncate or drop) belongs to the caller.
    """
    if budget < 1:
        raise ValueError(f"packing budget must be positive, got {budget}")
    for index, length in enumerate(lengths):
        if length < 1:
            raise ValueError(f"sequence {index} has length {length}; packing needs lengths >= 1")
        if length > budget:
            raise ValueError(
                f"sequence {index} has {length} tokens, over the packing budget of {budget}; "
                "truncate or drop it before packing"
            )
    rows: list[list[int]] = []
    # Sorted (room left, row index): bisect finds the tightest row that fits in O(log rows).
    room: list[tuple[int, int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        slot = bisect.bisect_left(room, (length, -1))
        if slot == len(room):
            rows.append([index])
            bisect.insort(room, (budget - length, len(rows) - 1))
            continue
        left, row = room.pop(slot)
        rows[row].append(index)
        bisect.insort(room, (left - length, row))
    return rows


def shifted_labels(labels: torch.Tensor, seq_ends: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token labels: position t is scored on labels[t+1], never across a sequence boundary.

    labels: (B, T) aligned with input_ids; seq_ends: 1-D positions (in a (1, T) packed row) that end a
    sequence. The last position of every row and every sequence predicts nothing (-100).
    """
    shifted = torch.full_like(labels, IGNORE_INDEX)  # (B, T)
    shifted[:, :-1] = labels[:, 1:]
    if seq_ends is not None:
        shifted[:, seq_ends.long()] = IGNORE_INDEX
    return shifted


@dataclass
class PackedBatch:
    """Sequences concatenated into one (1, T) row; labels aligned with input_ids, -100 = no loss."""

    input_ids: torch.Tensor  # (1, T) long
    position_ids: torch.Tensor  # (1, T) long, restarts at 0 per sequence
    labels: torch.Tensor  # (1, T) long
    seq_lens: list[int]
    cu_seqlens: torch.Tensor  # (n + 1,) int32, sequence boundaries (flash-attention convention)

    @property
    def num_sequences(self) -> int:
        return len(self.seq_lens)

    @property
    def seq_ends(self) -> torch.Tensor:
        """Index of the last token of each sequence, (n,) long."""
        return self.cu_seqlens[1:].long() - 1

    def next_token_labels(self) -> torch.Tensor:
        """(1, T) labels shifted by one inside each sequence (see `shifted_labels`)."""
        return shifted_labels(self.labels, self.seq_ends)

    @property
    def num_loss_tokens(self) -> int:
        """Positions that predict a loss token after the shift (a sequence's first token is never predicted)."""
        return int((self.next_token_labels() != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> "PackedBatch":
        return PackedBatch(
            input_ids=self.input_ids.to(device),
            position_ids=self.position_ids.to(device),
            labels=self.labels.to(device),
            seq_lens=list(self.seq_lens),
            cu_seqlens=self.cu_seqlens.to(device),
        )


@dataclass
class PaddedBatch:
    """One right-padded row per sequence; attention_mask 1 on real tokens, labels -100 on padding."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long
    labels: torch.Tensor  # (B, T) long
    seq_lens: list[int]

    @property
    def num_sequences(self) -> int:
        return len(self.seq_lens)

    def next_token_labels(self) -> torch.Tensor:
        """(B, T) labels shifted by one per row; padding already carries -100."""
        return shifted_labels(self.labels)

    @property
    def num_loss_tokens(self) -> int:
        return int((self.next_token_labels() != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> "PaddedBatch":
        return PaddedBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device),
            seq_lens=list(self.seq_lens),
        )


def _ids_and_labels(example: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L,) input ids and (L,) aligned labels from {'input_ids': [...], 'loss_mask': [bools]}."""
    ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
    loss_mask = torch.as_tensor(example["loss_mask"], dtype=torch.bool)
    if ids.ndim != 1 or ids.shape != loss_mask.shape:
        raise ValueError(
            f"input_ids and loss_mask must be 1-D of equal length, got {tuple(ids.shape)} and {tuple(loss_mask.shape)}"
        )
    if ids.numel() == 0:
        raise ValueError("cannot collate an empty sequence")
    return ids, torch.where(loss_mask, ids, IGNORE_INDEX)


def collate_packed(examples: Sequence[dict[str, Any]]) -> PackedBatch:
    """Concatenate examples (dicts with input_ids and loss_mask) into one packed (1, T) row."""
    if not examples:
        raise ValueError("cannot collate zero examples")
    pairs = [_ids_and_labels(example) for example in examples]
    seq_lens = [ids.numel() for ids, _ in pairs]
    boundaries = [0]
    for length in seq_lens:
        boundaries.append(boundaries[-1] + length)
    return PackedBatch(
        input_ids=torch.cat([ids for ids, _ in pairs]).unsqueeze(0),
        position_ids=torch.cat([torch.arange(length) for length in seq_lens]).unsqueeze(0),
        labels=torch.cat([labels for _, labels in pairs]).unsqueeze(0),
        seq_lens=seq_lens,
        cu_seqlens=torch.tensor(boundaries, dtype=torch.int32),
    )


def collate_padded(examples: Sequence[dict[str, Any]], pad_id: int) -> PaddedBatch:
    """Right-pad examples to the longest one; padding gets pad_id, attention 0 and label -100."""
    if not examples:
        raise ValueError("cannot collate zero examples")
    pairs = [_ids_and_labels(example) for example in examples]
    seq_lens = [ids.numel() for ids, _ in pairs]
    width = max(seq_lens)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)  # (B, T)
    for row, ((ids, row_labels), length) in enumerate(zip(pairs, seq_lens)):
        input_ids[row, :length] = ids
        labels[row, :length] = row_labels
        attention_mask[row, :length] = 1
    return PaddedBatch(input_ids=input_ids, attention_mask=attention_mask, labels=labels, seq_lens=seq_lens)
