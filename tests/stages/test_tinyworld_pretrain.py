"""The tiny world's base model: ships loadable, and `pretrain` is deterministic for a seed."""
import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from posttrain.cli import main

BASE = Path(__file__).resolve().parents[2] / "posttrain" / "tinyworld" / "base_model"


def _weights_hash(model_dir: Path) -> str:
    tensors = load_file(str(model_dir / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].float().numpy().tobytes())
    return digest.hexdigest()


def test_shipped_base_model_loads_and_speaks_chatml():
    from posttrain.data.chat_templates import detect_template, end_of_turn_ids
    from posttrain.models.loading import load_causal_lm

    model, tokenizer = load_causal_lm(BASE)
    assert detect_template(tokenizer) == "chatml"
    params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= params <= 5_000_000
    assert sum(f.stat().st_size for f in BASE.iterdir()) <= 20 * 1024 * 1024
    eot = end_of_turn_ids(tokenizer, "chatml")
    assert set(eot) <= set(model.generation_config.eos_token_id)
    # Every byte is representable: no unknown token for text the world never had.
    text = "Zürich ∑ 🙂 \x00"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_pretrain_same_seed_is_deterministic(tmp_path):
    args = ["tinyworld-pretrain", "--set", "n_docs=120", "--set", "tokenizer_docs=120", "--set", "vocab_size=400",
            "--set", "hidden_size=32", "--set", "num_layers=1", "--set", "num_heads=2", "--set", "num_kv_heads=1",
            "--set", "intermediate_size=64", "--set", "context=128", "--set", "train.max_steps=3",
            "--set", "train.accumulation=2", "--seed", "3"]
    torch.set_num_threads(1)
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert _weights_hash(tmp_path / "a" / "model") == _weights_hash(tmp_path / "b" / "model")
    assert (tmp_path / "a" / "model" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "model" / "tokenizer.json").read_bytes()


def test_streamed_rows_run_across_documents_and_fill_the_context():
    from posttrain.stages.tinyworld_pretrain import pretraining_rows

    docs = [[1, 2, 0], [3, 4, 5, 0], [6, 0]]
    streamed = pretraining_rows(docs, context=4, stream=True)
    assert [r["input_ids"] for r in streamed] == [[1, 2, 0, 3], [4, 5, 0, 6]]  # the lone trailing 0 is dropped
    assert all(all(r["loss_mask"]) for r in streamed)
    per_doc = pretraining_rows(docs, context=3, stream=False)
    assert [r["input_ids"] for r in per_doc] == [[1, 2, 0], [3, 4, 5], [6, 0]]  # [0] alone is dropped


def test_shipped_base_model_copies_from_its_context():
    """Pretrained with copying documents, the base model repeats a run of world words it has just read."""
    from posttrain.models.loading import load_causal_lm
    from posttrain.stages.tinyworld_pretrain import copy_accuracy

    torch.set_num_threads(1)
    model, tokenizer = load_causal_lm(BASE)
    assert copy_accuracy(model, tokenizer, n=32) >= 0.6
    # a quoted first word is another token than the one read (" Orlan" vs "\"Orlan"): 0.63 measured on 32
    assert copy_accuracy(model, tokenizer, n=32, quoted=True) >= 0.5
