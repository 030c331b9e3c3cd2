"""Chunked log-probs equal the plain log_softmax gather, in value and gradient, without its memory."""
import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from posttrain.data.packing import collate_packed, collate_padded
from posttrain.models.forward import lm_head_of
from posttrain.models.loading import random_init_causal_lm
from posttrain.models.logprobs import (
    packed_token_logprobs,
    sequence_logprobs,
    shifted_targets,
    token_entropy,
    token_logprobs,
)

torch.set_num_threads(1)

N, H, V = 37, 16, 50  # chunk 8 does not divide 37: the last chunk has 5 rows

EXAMPLES = [
    {"input_ids": [11, 12, 13], "loss_mask": [False, True, True]},
    {"input_ids": [21, 22], "loss_mask": [True, True]},
    {"input_ids": [31], "loss_mask": [True]},
]


def naive_logprobs(hidden, weight, targets, bias=None, temperature=1.0):
    logits = (hidden @ weight.T + (0 if bias is None else bias)).float() / temperature  # (N, V)
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)


def leaves(seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=generator).to(dtype).requires_grad_()
    weight = torch.randn(V, H, generator=generator).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=generator)
    upstream = torch.randn(N, generator=generator)  # arbitrary d loss / d logprob
    return hidden, weight, targets, upstream


def test_shifted_targets_by_hand():
    targets, mask = shifted_targets(collate_packed(EXAMPLES))
    assert targets.tolist() == [[12, 13, 0, 22, 0, 0]]  # 0 where nothing of the same sequence follows
    assert mask.tolist() == [[True, True, False, True, False, False]]
    targets, mask = shifted_targets(collate_padded(EXAMPLES, pad_id=0))
    assert targets.tolist() == [[12, 13, 0], [22, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[True, True, False], [True, False, False], [False, False, False]]


@pytest.mark.parametrize("chunk_size", [8, 1, 1024])
def test_chunked_values_and_gradients_match_naive(chunk_size):
    hidden, weight, targets, upstream = leaves()
    got = token_logprobs(hidden, weight, targets, chunk_size=chunk_size)
    assert got.dtype == torch.float32 and got.shape == (N,)
    grad_hidden, grad_weight = torch.autograd.grad((got * upstream).sum(), [hidden, weight])
    expected = naive_logprobs(hidden, weight, targets)
    exp_hidden, exp_weight = torch.autograd.grad((expected * upstream).sum(), [hidden, weight])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_hidden, exp_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_weight, exp_weight, atol=1e-5, rtol=0)


def test_linear_head_with_bias_and_temperature():
    hidden, weight, targets, upstream = leaves(seed=1)
    head = nn.Linear(H, V, bias=True)
    with torch.no_grad():
        head.weight.copy_(weight)
    got = token_logprobs(hidden, head, targets, chunk_size=8, temperature=0.7)
    got_grads = torch.autograd.grad((got * upstream).sum(), [hidden, head.weight, head.bias])
    expected = naive_logprobs(hidden, head.weight, targets, bias=head.bias, temperature=0.7)
    exp_grads = torch.autograd.grad((expected * upstream).sum(), [hidden, head.weight, head.bias])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    for g, e in zip(got_grads, exp_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)


def test_frozen_head_gets_no_gradient():
    hidden, weight, targets, _ = leaves(seed=2)
    weight = weight.detach()
    token_logprobs(hidden, weight, targets, chunk_size=8).sum().backward()
    expected = torch.autograd.grad(naive_logprobs(hidden, weight, targets).sum(), hidden)[0]
    torch.testing.assert_close(hidden.grad, expected, atol=1e-5, rtol=0)


def test_bfloat16_inputs_stay_close_to_float32():
    hidden, weight, targets, _ = leaves(seed=3, dtype=torch.bfloat16)
    got = token_logprobs(hidden, weight, targets, chunk_size=8)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, naive_logprobs(hidden.float(), weight.float(), targets), atol=0.15, rtol=0.02)
    got.sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16


class MatmulDtypes(TorchDispatchMode):
    """Records the input dtypes of every matrix multiply run while active."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
        return func(*args, **(kwargs or {}))


def test_backward_runs_in_the_forward_autocast_dtype():
    """Float32 weights under bf16 autocast (the GPU default): backward's head matmuls are bf16 too, the
    gradients come back float32 and stay close to the float32 ones."""
    hidden, weight, targets, upstream = leaves(seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = token_logprobs(hidden, weight, targets, chunk_size=8)
    recorder = MatmulDtypes()
    with recorder:
        (got * upstream).sum().backward()
    assert len(recorder.seen) == 3 * math.ceil(N / 8)  # logits, d hidden, d weight per chunk
    assert all(set(dtypes) == {torch.bfloat16} for dtypes in recorder.seen)
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
    expected = torch.autograd.grad((naive_logprobs(hidden, weight, targets) * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(hidden.grad, expected[0], atol=0.05, rtol=0.05)
    torch.testing.assert_close(weight.grad, expected[1], atol=0.05, rtol=0.05)


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for backward while running fn()."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return total


def test_memory_saved_for_backward_has_no_n_by_v_tensor():
    """Naive keeps the (N, V) float32 log-softmax (4NV bytes); chunked keeps hidden, W, targets, lse."""
    n, h, v = 512, 16, 2000
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    naive = saved_bytes(lambda: naive_logprobs(hidden, weight, targets))
    chunked = saved_bytes(lambda: token_logprobs(hidden, weight, targets, chunk_size=64))
    assert naive >= 4 * n * v  # 4.1 MB: the log-softmax output
    assert chunked == 4 * n * h + 4 * v * h + 8 * n + 4 * n  # 0.17 MB, independent of n * v
    assert chunked * 20 < naive


def test_sequence_logprobs_by_hand():
    token_lp = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]])
    mask = torch.tensor([[True, True, False, True, False, False]])
    cu_seqlens = torch.tensor([0, 3, 5, 6], dtype=torch.int32)
    assert sequence_logprobs(token_lp, mask, cu_seqlens).tolist() == [-3.0, -4.0, 0.0]
    assert sequence_logprobs(torch.ones(1, 6), mask, cu_seqlens).tolist() == [2.0, 1.0, 0.0]  # token counts
    padded = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    assert sequence_logprobs(padded, torch.tensor([[True, False], [True, True]])).tolist() == [-1.0, -7.0]
    with pytest.raises(ValueError, match="cover 5 tokens"):
        sequence_logprobs(token_lp, mask, torch.tensor([0, 5], dtype=torch.int32))


def test_token_entropy():
    # A zero head gives uniform logits: entropy log V exactly.
    uniform = token_entropy(torch.randn(5, H), torch.zeros(V, H), chunk_size=2)
    torch.testing.assert_close(uniform, torch.full((5,), math.log(V)), atol=1e-6, rtol=0)
    hidden, weight, _, _ = leaves(seed=4)
    log_p = torch.log_softmax((hidden @ weight.T).double(), dim=-1)  # float64 reference
    expected = (-(log_p.exp() * log_p).sum(-1)).float()
    got = token_entropy(hidden, weight, chunk_size=8)
    assert not got.requires_grad
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("all_positions", [False, True])
def test_packed_token_logprobs_match_each_sequence_alone(all_positions):
    model = random_init_causal_lm("qwen2", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4,
                                  num_kv_heads=2, intermediate_size=64, max_position_embeddings=64, seed=0)
    examples = [
        {"input_ids": [5, 6, 7, 8, 9], "loss_mask": [False, False, True, True, True]},
        {"input_ids": [40, 41, 42], "loss_mask": [False, True, True]},
    ]
    batch = collate_packed(examples)
    token_lp, mask = packed_token_logprobs(model, batch, chunk_size=3, all_positions=all_positions)
    scored = mask if not all_positions else torch.tensor([[True] * 4 + [False] + [True] * 2 + [False]])
    assert (token_lp[~scored] == 0).all()
    got_seq = sequence_logprobs(token_lp, mask, batch.cu_seqlens)
    got_seq.sum().backward()
    got_grad = lm_head_of(model).weight.grad.clone()
    model.zero_grad()

    expected_seq = []
    for example in examples:
        ids = torch.tensor([example["input_ids"]])
        log_p = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1], dim=-1)  # (L-1, V)
        picked = log_p.gather(1, ids[0, 1:, None]).squeeze(1)
        expected_seq.append((picked * torch.tensor(example["loss_mask"][1:])).sum())
    expected_seq = torch.stack(expected_seq)
    expected_seq.sum().backward()
    torch.testing.assert_close(got_seq, expected_seq.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got_grad, lm_head_of(model).weight.grad, atol=1e-5, rtol=0)
