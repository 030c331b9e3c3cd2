"""run_sft end to end on the tiny model: HF save, resume of a finished run, two stages, LoRA."""
import torch
from safetensors.torch import load_file

from _train_fixtures import tiny_model, tiny_tokenizer, toy_examples, weights_hash
from _train_worker import toy_config, toy_data
from posttrain.models.loading import load_causal_lm
from posttrain.train import checkpoint as ckpt
from posttrain.train.config import LoraSettings
from posttrain.train.sft import run_sft

torch.set_num_threads(1)


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids, use_cache=False).logits


def test_run_sft_trains_saves_hf_and_resumes_a_finished_run(tmp_path):
    rows = []
    model = tiny_model(seed=3)
    data = {**toy_data(), "bad": [{"input_ids": list(range(3, 60)), "loss_mask": [1] * 57},
                                  {"input_ids": [4, 5], "loss_mask": [0, 0]}]}
    summary = run_sft(model, tiny_tokenizer(), data, toy_config(epochs=3), tmp_path, log_fn=rows.append)
    assert summary["steps"] == 12 and summary["dropped"] == {"too_long": 1, "no_loss_tokens": 1}
    assert sum(summary["losses"][-3:]) < sum(summary["losses"][:3]) - 0.3  # it learns the pattern
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "num_loss_tokens"} <= set(rows[0])
    assert rows[0]["lr"] < rows[1]["lr"]  # warmup
    loaded, tokenizer = load_causal_lm(tmp_path / "model")
    ids = torch.tensor([toy_examples(1, seed=5)[0]["input_ids"]])
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=0)
    assert tokenizer.eos_token == "<eos>"
    # Called again on the same out_dir: resumes from the final checkpoint, trains nothing, same weights.
    again = tiny_model(seed=3)
    rerun = run_sft(again, tiny_tokenizer(), data, toy_config(epochs=3), tmp_path)
    assert rerun["steps"] == 12 and rerun["losses"] == []
    assert weights_hash(again) == weights_hash(model)


def test_two_stage_schedule_continues_from_stage_one(tmp_path):
    stage1 = run_sft(
        tiny_model(seed=3), tiny_tokenizer(), toy_data(), toy_config(mixture={"short": 0.0}), tmp_path / "s1"
    )
    assert stage1["steps"] > 0
    stage1_hash = weights_hash(load_file(str(tmp_path / "s1" / "model" / "model.safetensors")))
    model, tokenizer = load_causal_lm(tmp_path / "s1" / "model")
    stage2 = run_sft(
        model, tokenizer, toy_data(), toy_config(mixture={"pattern": 0.5, "short": 2.0}, seed=8, lr=1e-3),
        tmp_path / "s2",
    )
    fresh = run_sft(
        tiny_model(seed=3), tiny_tokenizer(), toy_data(), toy_config(mixture={"pattern": 0.5, "short": 2.0}, seed=8,
                                                                     lr=1e-3), tmp_path / "fresh",
    )
    assert stage2["examples"] == {"pattern": 24, "short": 12}
    assert stage2["losses"][0] < fresh["losses"][0] - 0.1  # stage 2 starts from what stage 1 learned
    assert ckpt.latest_checkpoint(tmp_path / "s2" / "checkpoints") is not None
    assert weights_hash(load_file(str(tmp_path / "s1" / "model" / "model.safetensors"))) == stage1_hash
    reloaded, _ = load_causal_lm(tmp_path / "s2" / "model")
    assert weights_hash(reloaded) != stage1_hash


def test_lora_trains_saves_an_adapter_and_merges(tmp_path):
    from peft import PeftModel

    lora = LoraSettings(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"])
    base_before = tiny_model(seed=3).state_dict()
    summary = run_sft(tiny_model(seed=3), tiny_tokenizer(), toy_data(), toy_config(lr=1e-2, lora=lora), tmp_path)
    assert summary["outputs"] == {"adapter": "adapter", "model": "model"}
    assert summary["losses"][-1] < summary["losses"][0]
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    checkpoint_weights = load_file(str(ckpt.latest_checkpoint(tmp_path / "checkpoints") / ckpt.MODEL_FILE))
    assert checkpoint_weights and all("lora_" in key for key in checkpoint_weights)  # trainable only
    merged, _ = load_causal_lm(tmp_path / "model")
    merged_state = merged.state_dict()
    assert not any("lora" in key for key in merged_state)
    changed = {k for k in base_before if not torch.equal(base_before[k], merged_state[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)
    adapted = PeftModel.from_pretrained(tiny_model(seed=3), str(tmp_path / "adapter"))
    ids = torch.tensor([toy_examples(1, seed=6)[0]["input_ids"]])
    torch.testing.assert_close(_logits(merged, ids), _logits(adapted, ids), rtol=1e-5, atol=1e-5)


def test_tied_embeddings_resume_exactly(tmp_path):
    import shutil

    config = toy_config(epochs=1)
    first = tiny_model(seed=3, tie=True)
    run_sft(first, tiny_tokenizer(), toy_data(), config, tmp_path)
    checkpoints = ckpt.list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in checkpoints] == ["step-00000002", "step-00000004"]
    shutil.rmtree(checkpoints[-1])  # as if cut after step 2's checkpoint
    second = tiny_model(seed=3, tie=True)
    rerun = run_sft(second, tiny_tokenizer(), toy_data(), config, tmp_path)
    assert len(rerun["losses"]) == 2 and second.lm_head.weight is second.model.embed_tokens.weight
    assert weights_hash(second) == weights_hash(first)
    loaded, _ = load_causal_lm(tmp_path / "model")
    assert weights_hash(loaded) == weights_hash(first)
