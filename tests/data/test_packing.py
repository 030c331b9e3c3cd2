"""Best-fit-decreasing packing and the packed / padded collators, checked by hand."""
import random

import pytest
import torch

from posttrain.data.packing import (
    IGNORE_INDEX,
    collate_packed,
    collate_padded,
    pack_best_fit_decreasing,
    shifted_labels,
)

torch.set_num_threads(1)

# A: prompt token 11 then answer 12 13; B: all loss; C: a single token (predicts and is predicted by nothing).
EXAMPLES = [
    {"input_ids": [11, 12, 13], "loss_mask": [False, True, True]},
    {"input_ids": [21, 22], "loss_mask": [True, True]},
    {"input_ids": [31], "loss_mask": [True]},
]


def test_best_fit_decreasing_by_hand():
    # Longest first: 7 -> row0 (room 3); 5 -> row1 (room 5); 4 -> row1 (room 1); 3 -> row0 (room 0);
    # 2 fits nowhere -> row2 (room 8); 1 -> tightest fit is row1 (room 1), not row2 (room 8).
    assert pack_best_fit_decreasing([3, 7, 5, 2, 4, 1], budget=10) == [[1, 0], [2, 4, 5], [3]]


def test_best_fit_ties_go_to_lower_index_and_first_row():
    # Two 5s (index order), then 2 opens row2; the 1s see rows 0 and 1 tied at room 1: row0 first.
    assert pack_best_fit_decreasing([5, 5, 2, 1, 1], budget=6) == [[0, 3], [1, 4], [2]]


def test_best_fit_is_a_partition_within_budget():
    rng = random.Random(0)
    lengths = [rng.randint(1, 64) for _ in range(300)]
    rows = pack_best_fit_decreasing(lengths, budget=64)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) >= -(-sum(lengths) // 64)
    assert rows == pack_best_fit_decreasing(lengths, budget=64)  # deterministic


def test_best_fit_refuses_a_sequence_over_budget():
    with pytest.raises(ValueError, match="sequence 1 has 11 tokens, over the packing budget of 10"):
        pack_best_fit_decreasing([3, 11], budget=10)
    with pytest.raises(ValueError):
        pack_best_fit_decreasing([0], budget=10)


def test_collate_packed_by_hand():
    batch = collate_packed(EXAMPLES)
    assert batch.input_ids.tolist() == [[11, 12, 13, 21, 22, 31]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, 12, 13, 21, 22, 31]]  # aligned, not shifted
    assert batch.seq_lens == [3, 2, 1]
    assert batch.cu_seqlens.dtype == torch.int32 and batch.cu_seqlens.tolist() == [0, 3, 5, 6]
    assert batch.seq_ends.tolist() == [2, 4, 5]
    # Position t scores labels[t+1] of its own sequence; each sequence's last position scores nothing.
    assert batch.next_token_labels().tolist() == [[12, 13, IGNORE_INDEX, 22, IGNORE_INDEX, IGNORE_INDEX]]
    # 12, 13 and 22 are predicted; 21 and 31 start their sequences, so nothing predicts them.
    assert batch.num_loss_tokens == 3


def test_collate_padded_by_hand_matches_packed_loss_count():
    batch = collate_padded(EXAMPLES, pad_id=0)
    assert batch.input_ids.tolist() == [[11, 12, 13], [21, 22, 0], [31, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    assert batch.labels.tolist() == [
        [IGNORE_INDEX, 12, 13],
        [21, 22, IGNORE_INDEX],
        [31, IGNORE_INDEX, IGNORE_INDEX],
    ]
    assert batch.next_token_labels().tolist() == [
        [12, 13, IGNORE_INDEX],
        [22, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
    ]
    assert batch.num_loss_tokens == collate_packed(EXAMPLES).num_loss_tokens == 3


def test_shifted_labels_never_cross_a_boundary():
    labels = torch.tensor([[1, 2, 3, 4]])
    assert shifted_labels(labels).tolist() == [[2, 3, 4, IGNORE_INDEX]]
    assert shifted_labels(labels, torch.tensor([1, 3])).tolist() == [[2, IGNORE_INDEX, 4, IGNORE_INDEX]]


def test_collate_rejects_bad_examples():
    with pytest.raises(ValueError, match="equal length"):
        collate_packed([{"input_ids": [1, 2], "loss_mask": [True]}])
    with pytest.raises(ValueError, match="empty"):
        collate_padded([{"input_ids": [], "loss_mask": []}], pad_id=0)
    with pytest.raises(ValueError, match="zero examples"):
        collate_packed([])


def test_batch_to_device_keeps_everything():
    batch = collate_packed(EXAMPLES).to("cpu")
    assert batch.seq_lens == [3, 2, 1] and batch.num_sequences == 3
    assert collate_padded(EXAMPLES, pad_id=0).to("cpu").input_ids.shape == (3, 3)
