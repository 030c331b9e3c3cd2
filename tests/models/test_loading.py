"""Saved checkpoints load in plain transformers with identical logits; pickle weights are refused."""
import json
import os

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.data.bpe import train_bytelevel_bpe
from posttrain.models.loading import (
    check_safetensors_only,
    load_causal_lm,
    random_init_causal_lm,
    save_causal_lm,
    write_dir_atomically,
)
from posttrain.models.runtime import default_dtype, set_cpu_threads

torch.set_num_threads(1)

TEXTS = ["the cat sat on the mat", "two plus three is five", "hello world, say hello"] * 10
IDS = torch.tensor([[3, 17, 42, 100, 7, 250]])


@pytest.fixture(scope="module")
def tokenizer():
    return train_bytelevel_bpe(TEXTS, vocab_size=300, template="llama3")


def tiny(arch, tokenizer, seed=0, tie=False):
    return random_init_causal_lm(arch, vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4,
                                 num_kv_heads=2, intermediate_size=64, max_position_embeddings=64, seed=seed,
                                 tie_word_embeddings=tie).eval()


def stop_ids(tokenizer):
    return [tokenizer.convert_tokens_to_ids(tok) for tok in ("<|eot_id|>", "<|end_of_text|>")]


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, use_cache=False).logits


@pytest.mark.parametrize("arch,tie", [("llama", False), ("qwen2", True)])
def test_save_then_plain_transformers_load_gives_identical_logits(tmp_path, tokenizer, arch, tie):
    model = tiny(arch, tokenizer, tie=tie)
    out = save_causal_lm(model, tokenizer, tmp_path / "model", eos_token_ids=stop_ids(tokenizer))
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert torch.equal(logits(reloaded), logits(model))
    names = sorted(os.listdir(out))
    assert "model.safetensors" in names and "chat_template.jinja" in names
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in names)
    assert os.listdir(tmp_path) == ["model"]  # no temporary directory left behind
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert ("lm_head.weight" in weights.keys()) is not tie  # a tied head is stored once


def test_generation_config_stops_on_every_end_of_turn_id(tmp_path, tokenizer):
    eot, end_of_text = stop_ids(tokenizer)
    out = save_causal_lm(tiny("llama", tokenizer), tokenizer, tmp_path / "m", eos_token_ids=[eot, end_of_text])
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [eot, end_of_text]  # tokenizer eos is <|eot_id|> already
    pad = tokenizer.convert_tokens_to_ids("<|finetune_right_pad_id|>")
    assert generation["pad_token_id"] == pad and pad not in generation["eos_token_id"]
    reloaded = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded.pad_token_id == pad


def test_pad_equal_to_eos_is_replaced_by_a_pad_token(tmp_path, tokenizer):
    tokenizer = train_bytelevel_bpe(TEXTS, vocab_size=300, template="llama3")
    tokenizer.pad_token = tokenizer.eos_token  # a common shortcut that makes padding look like a stop
    out = save_causal_lm(tiny("llama", tokenizer), tokenizer, tmp_path / "m", eos_token_ids=stop_ids(tokenizer))
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["pad_token_id"] == tokenizer.convert_tokens_to_ids("<|finetune_right_pad_id|>")
    assert tokenizer.pad_token == tokenizer.eos_token  # the caller's tokenizer is not modified


def test_load_causal_lm_round_trip_and_bfloat16_save(tmp_path, tokenizer):
    model = tiny("qwen2", tokenizer)
    out = save_causal_lm(model, tokenizer, tmp_path / "bf16", eos_token_ids=stop_ids(tokenizer), dtype=torch.bfloat16)
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert all(weights.get_tensor(key).dtype == torch.bfloat16 for key in weights.keys())
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    loaded, loaded_tokenizer = load_causal_lm(out)  # CPU default: float32
    assert next(loaded.parameters()).dtype == torch.float32
    assert loaded_tokenizer.eos_token == "<|eot_id|>"
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.to(torch.bfloat16).float()), name
    assert loaded.model.embed_tokens.padding_idx is None  # the pad id must not freeze an embedding row


def test_pickle_only_directory_is_refused(tmp_path, tokenizer):
    model = tiny("llama", tokenizer)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pickle files \(pytorch_model.bin\).*safetensors only"):
        load_causal_lm(tmp_path)
    with pytest.raises(FileNotFoundError):
        check_safetensors_only(tmp_path / "missing")


def test_peft_adapters_are_merged_on_save(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny("llama", tokenizer), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    out = save_causal_lm(peft_model, tokenizer, tmp_path / "merged", eos_token_ids=stop_ids(tokenizer))
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert not any("lora" in key or "base_layer" in key for key in weights.keys())
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    torch.testing.assert_close(logits(reloaded), logits(peft_model), atol=1e-5, rtol=0)
    with peft_model.disable_adapter():  # the live model keeps its separate adapters
        assert (logits(peft_model) - logits(reloaded)).abs().max() > 1e-3


def test_sharded_save_and_compiled_wrapper(tmp_path, tokenizer):
    model = tiny("llama", tokenizer)
    out = save_causal_lm(torch.compile(model), tokenizer, tmp_path / "sharded", eos_token_ids=stop_ids(tokenizer),
                         max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert torch.equal(logits(reloaded), logits(model))


def test_overwrite_is_atomic(tmp_path):
    target = tmp_path / "ckpt"
    write_dir_atomically(target, lambda tmp: (tmp / "a.txt").write_text("first"))
    write_dir_atomically(target, lambda tmp: (tmp / "a.txt").write_text("second"))
    assert (target / "a.txt").read_text() == "second"

    def fails(tmp):
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_dir_atomically(target, fails)
    assert (target / "a.txt").read_text() == "second"  # the previous checkpoint is untouched
    assert os.listdir(tmp_path) == ["ckpt"]


def test_random_init_is_seeded_and_leaves_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = tiny("llama", tokenizer, seed=5), tiny("llama", tokenizer, seed=5), tiny("llama", tokenizer, seed=6)
    assert torch.equal(torch.rand(1), before)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.config.eos_token_id is None  # no architecture-default ids that mean nothing here
    with pytest.raises(ValueError, match="unknown architecture"):
        random_init_causal_lm("gpt2", vocab_size=10, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                              intermediate_size=8, max_position_embeddings=8, seed=0)


def test_runtime_threads_and_dtype(monkeypatch):
    try:
        monkeypatch.setenv("POSTTRAIN_THREADS", "1")
        assert set_cpu_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("POSTTRAIN_THREADS")
        assert set_cpu_threads() == len(os.sched_getaffinity(0))
        with pytest.raises(ValueError):
            set_cpu_threads(0)
    finally:
        torch.set_num_threads(1)
    assert default_dtype("cpu") == torch.float32 and default_dtype("cuda") == torch.bfloat16
