"""Variable-length attention gives packed sequences exactly what transformers' masked sdpa gives them.

On CPU `POSTTRAIN_ATTENTION=varlen` runs the same wiring (the switch of attention function, the
boundaries handed to every layer, the rows run end to end) with sdpa per sequence, so the comparison
is exact; the CUDA test checks the flash kernel itself and runs only where a GPU is.
"""
import pytest
import torch

import posttrain.models.attention as attention
from posttrain.data.packing import collate_packed
from posttrain.models.attention import ATTENTION_ENV, VARLEN, varlen_enabled
from posttrain.models.forward import packed_hidden_states
from posttrain.models.loading import random_init_causal_lm
from posttrain.train.preference import PackedRows

torch.set_num_threads(1)

TINY = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
            intermediate_size=64, max_position_embeddings=64, seed=0)
LENGTHS = [7, 12, 5, 9, 3, 11]  # rows of 16: (12, 3), (11, 5), (9, 7)


def sequences():
    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 97, (n,), generator=generator).tolist(),
             "loss_mask": [i >= 2 for i in range(n)]} for n in LENGTHS]


def logprobs_and_grad(model, rows):
    model.zero_grad()
    logps = rows.sequence_logprobs(model, chunk_size=8)
    logps.sum().backward()
    return logps.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()


@pytest.fixture
def calls(monkeypatch):
    """The boundaries each varlen attention call received, one list per layer call."""
    seen = []
    inner = attention._sequence_by_sequence

    def spy(query, key, value, cu_seqlens, scaling):
        seen.append(cu_seqlens.tolist())
        return inner(query, key, value, cu_seqlens, scaling)

    monkeypatch.setattr(attention, "_sequence_by_sequence", spy)
    return seen


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_rows_end_to_end_equal_masked_rows(arch, monkeypatch, calls):
    model = random_init_causal_lm(arch, **TINY)
    rows = PackedRows.pack(sequences(), 16)
    monkeypatch.setenv(ATTENTION_ENV, "sdpa")
    masked = logprobs_and_grad(model, rows)
    assert calls == []
    monkeypatch.setenv(ATTENTION_ENV, "varlen")
    varlen = logprobs_and_grad(model, rows)
    # one call per layer, over the three rows end to end: 12 | 3, 11 | 5, 9 | 7
    assert calls == [[0, 12, 15, 26, 31, 40, 47]] * TINY["num_layers"]
    torch.testing.assert_close(varlen[0], masked[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(varlen[1], masked[1], atol=1e-5, rtol=1e-4)
    assert model.config._attn_implementation == "sdpa"  # switched for the forward only


def test_packed_hidden_states_equal_masked(monkeypatch, calls):
    model = random_init_causal_lm("qwen2", **TINY).eval()
    batch = collate_packed(sequences()[:3])
    monkeypatch.setenv(ATTENTION_ENV, "sdpa")
    with torch.no_grad():
        masked = packed_hidden_states(model, batch)
        monkeypatch.setenv(ATTENTION_ENV, "varlen")
        varlen = packed_hidden_states(model, batch)
    assert calls == [[0, 7, 19, 24]] * TINY["num_layers"]
    torch.testing.assert_close(varlen, masked, atol=1e-5, rtol=1e-5)


def test_reward_model_rows_equal_masked(make_chat_model, monkeypatch, calls):
    from posttrain.models.reward import RewardHead, packed_head_outputs, reward_model_from_causal_lm

    model, _ = reward_model_from_causal_lm(make_chat_model(), RewardHead(), seed=0)
    model.eval()
    batch = collate_packed(sequences()[:3])  # ids < 97, inside the 300-token vocabulary
    monkeypatch.setenv(ATTENTION_ENV, "sdpa")
    with torch.no_grad():
        masked = packed_head_outputs(model, batch)
        monkeypatch.setenv(ATTENTION_ENV, "varlen")
        varlen = packed_head_outputs(model, batch)
    assert len(calls) == model.config.num_hidden_layers and calls[0] == [0, 7, 19, 24]
    torch.testing.assert_close(varlen, masked, atol=1e-5, rtol=1e-5)


def test_when_it_is_used(monkeypatch):
    model = random_init_causal_lm("llama", **TINY)
    monkeypatch.delenv(ATTENTION_ENV, raising=False)
    assert not varlen_enabled(model, torch.device("cpu"))  # auto: CUDA only
    monkeypatch.setenv(ATTENTION_ENV, "flash")
    with pytest.raises(ValueError, match="choose auto, sdpa or varlen"):
        varlen_enabled(model, torch.device("cpu"))


def test_refuses_a_call_without_boundaries():
    model = random_init_causal_lm("llama", **TINY)
    model.config._attn_implementation = VARLEN
    with pytest.raises(ValueError, match="needs cu_seq_lens_q"):
        model(input_ids=torch.tensor([[1, 2, 3]]), use_cache=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash kernel needs a GPU")
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cuda_flash_kernel_matches_masked_sdpa(arch, monkeypatch):
    """bf16 autocast, grouped KV heads: the flash varlen kernel against transformers' masked sdpa."""
    model = random_init_causal_lm(arch, **{**TINY, "hidden_size": 256, "num_heads": 4, "num_kv_heads": 2}).cuda()
    rows = PackedRows.pack(sequences(), 16).to("cuda")
    results = {}
    for choice in ("sdpa", "varlen"):
        monkeypatch.setenv(ATTENTION_ENV, choice)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert varlen_enabled(model, torch.device("cuda")) == (choice == "varlen")
            results[choice] = logprobs_and_grad(model, rows)
    torch.testing.assert_close(results["varlen"][0], results["sdpa"][0], atol=0.05, rtol=0.01)
    cosine = torch.nn.functional.cosine_similarity(results["varlen"][1].flatten(), results["sdpa"][1].flatten(), dim=0)
    assert cosine > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash kernel needs a GPU")
def test_cuda_reward_model_rows_match_masked_sdpa(make_chat_model, monkeypatch):
    from posttrain.models.reward import RewardHead, packed_head_outputs, reward_model_from_causal_lm

    model, _ = reward_model_from_causal_lm(make_chat_model(), RewardHead(), seed=0, device="cuda")
    model = model.float().eval()
    batch = collate_packed(sequences()[:3]).to("cuda")
    results = {}
    for choice in ("sdpa", "varlen"):
        monkeypatch.setenv(ATTENTION_ENV, choice)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            results[choice] = packed_head_outputs(model, batch).float()
    torch.testing.assert_close(results["varlen"], results["sdpa"], atol=0.05, rtol=0.05)
