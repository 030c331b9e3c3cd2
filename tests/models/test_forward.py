"""A packed row gives each sequence exactly what it gets alone; the cache / mask pitfall is real."""
import pytest
import torch

from posttrain.data.packing import collate_packed, collate_padded
from posttrain.models.forward import (
    decoder_of,
    lm_head_of,
    packed_hidden_states,
    padded_hidden_states,
    unwrap_model,
)
from posttrain.models.loading import random_init_causal_lm

torch.set_num_threads(1)

TINY = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
            intermediate_size=64, max_position_embeddings=64, seed=0)
LENGTHS = [5, 3, 1, 4]


def tiny_model(arch: str):
    return random_init_causal_lm(arch, **TINY).eval()


def examples():
    generator = torch.Generator().manual_seed(1)
    return [
        {"input_ids": torch.randint(0, 97, (n,), generator=generator).tolist(), "loss_mask": [True] * n}
        for n in LENGTHS
    ]


def alone_hidden(model, ids):
    """(L, H) final hidden states of one sequence run by itself."""
    return decoder_of(model)(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state[0]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@torch.no_grad()
def test_packed_equals_each_sequence_alone(arch):
    model, rows = tiny_model(arch), examples()
    batch = collate_packed(rows)
    hidden = packed_hidden_states(model, batch)  # (1, T, H)
    assert hidden.shape == (1, sum(LENGTHS), 32)
    logits = lm_head_of(model)(hidden)[0]  # (T, V)
    for row, start, end in zip(rows, batch.cu_seqlens[:-1].tolist(), batch.cu_seqlens[1:].tolist()):
        torch.testing.assert_close(hidden[0, start:end], alone_hidden(model, row["input_ids"]), atol=1e-5, rtol=0)
        full = model(input_ids=torch.tensor([row["input_ids"]]), use_cache=False).logits[0]
        torch.testing.assert_close(logits[start:end], full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@torch.no_grad()
def test_padded_equals_each_sequence_alone(arch):
    model, rows = tiny_model(arch), examples()
    hidden = padded_hidden_states(model, collate_padded(rows, pad_id=0))  # (B, T, H)
    for b, row in enumerate(rows):
        n = len(row["input_ids"])
        torch.testing.assert_close(hidden[b, :n], alone_hidden(model, row["input_ids"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@torch.no_grad()
def test_pitfall_cache_or_mask_lets_sequences_attend_across(arch):
    """Still true in transformers 5.24: packing is detected only with no cache and no 2-D mask."""
    model, rows = tiny_model(arch), examples()
    batch = collate_packed(rows)
    second = slice(LENGTHS[0], LENGTHS[0] + LENGTHS[1])
    alone = alone_hidden(model, rows[1]["input_ids"])
    decoder = decoder_of(model)
    with_cache = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids).last_hidden_state
    ones_mask = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                        attention_mask=torch.ones_like(batch.input_ids)).last_hidden_state
    assert (with_cache[0, second] - alone).abs().max() > 1e-2
    assert (ones_mask[0, second] - alone).abs().max() > 1e-2
    # The first sequence has nothing before it, so it is right either way.
    torch.testing.assert_close(with_cache[0, : LENGTHS[0]], alone_hidden(model, rows[0]["input_ids"]),
                               atol=1e-5, rtol=0)


def test_inputs_embeds_path_matches_ids():
    model, batch = tiny_model("llama"), collate_packed(examples())
    with torch.no_grad():
        embeds = model.get_input_embeddings()(batch.input_ids)  # (1, T, H)
        torch.testing.assert_close(packed_hidden_states(model, batch, inputs_embeds=embeds),
                                   packed_hidden_states(model, batch), atol=1e-6, rtol=0)


def test_peft_wrapped_model_runs_its_adapters_packed():
    from peft import LoraConfig, get_peft_model

    base = tiny_model("llama")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # lora_B starts at zero; make the adapter change outputs
    rows = examples()
    batch = collate_packed(rows)
    assert unwrap_model(peft_model) is base and lm_head_of(peft_model) is base.lm_head
    with torch.no_grad():
        hidden = packed_hidden_states(peft_model, batch)
        for row, start in zip(rows, batch.cu_seqlens[:-1].tolist()):
            ids = torch.tensor([row["input_ids"]])
            expected = peft_model(input_ids=ids, use_cache=False).logits[0]
            got = lm_head_of(peft_model)(hidden[0, start : start + ids.shape[1]])
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        with peft_model.disable_adapter():
            assert (packed_hidden_states(peft_model, batch) - hidden).abs().max() > 1e-3


def test_unwrap_sees_through_compile_wrapper():
    model = tiny_model("qwen2")
    compiled = torch.compile(model)  # compiles lazily: unwrapping does not trigger it
    assert unwrap_model(compiled) is model
    assert decoder_of(compiled) is model.model


def test_packed_batch_must_be_one_row():
    model = tiny_model("llama")
    batch = collate_packed(examples())
    batch.input_ids = batch.input_ids.expand(2, -1)
    with pytest.raises(ValueError, match="one row"):
        packed_hidden_states(model, batch)


def test_forward_goes_through_ddp(tmp_path):
    """Through DDP's own forward (its gradient hooks need it), with a 1-process gloo group."""
    from datetime import timedelta

    import torch.distributed as dist

    # A timeout, so that a stuck gloo collective fails the test instead of hanging the suite (it hung
    # once in a full run, in a futex wait; it passed alone and in every other run).
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1,
                            timeout=timedelta(seconds=60))
    try:
        model = tiny_model("llama")
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        batch = collate_packed(examples())
        assert unwrap_model(ddp) is model and lm_head_of(ddp) is model.lm_head
        hidden = packed_hidden_states(ddp, batch)
        torch.testing.assert_close(hidden, packed_hidden_states(model, batch), atol=0, rtol=0)
        lm_head_of(ddp)(hidden).sum().backward()
        assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    finally:
        dist.destroy_process_group()
