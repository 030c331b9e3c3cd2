"""merge_checkpoints on tiny HF directories: exact self-merges, loadable output, side files, validation, atomicity."""
import json
from pathlib import Path

import pytest
import torch
from _merge_fixtures import base_model, bits, read_tensors, save, tokenizer, variant
from safetensors.torch import load_file, save_file

import posttrain.merge.streaming as streaming
from posttrain.merge.methods import MergeParams
from posttrain.merge.streaming import merge_checkpoints
from posttrain.merge.validate import MergeValidationError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    base = base_model(seed=0)
    return {
        "base": save(base, root / "base"),
        "ft1": save(variant(base, seed=1), root / "ft1"),
        "ft2": save(variant(base, seed=2), root / "ft2"),
    }


SELF_MERGES = {
    "linear": MergeParams(weights=(0.3, 0.7)),
    "model_stock": MergeParams(),
    "slerp": MergeParams(t=0.3),
    "ties": MergeParams(density=1.0),
    "dare_ties": MergeParams(density=1.0, seed=3),
    "dare_linear": MergeParams(weights=(0.3, 0.7), density=1.0),
}


@pytest.mark.parametrize("method", sorted(SELF_MERGES))
def test_merging_a_model_with_itself_is_bit_identical(dirs, tmp_path, method):
    base = None if method == "linear" else dirs["base"]
    merge_checkpoints([dirs["ft1"], dirs["ft1"]], tmp_path / "out", method, SELF_MERGES[method], base=base)
    original, merged = read_tensors(dirs["ft1"]), read_tensors(tmp_path / "out")
    assert merged.keys() == original.keys()
    assert all(bits(merged[name]) == bits(original[name]) for name in original)


def test_slerp_of_two_models_without_a_base_is_bit_identical_too(dirs, tmp_path):
    merge_checkpoints([dirs["ft2"], dirs["ft2"]], tmp_path / "out", "slerp", MergeParams(t=0.5))
    original, merged = read_tensors(dirs["ft2"]), read_tensors(tmp_path / "out")
    assert all(bits(merged[name]) == bits(original[name]) for name in original)


def test_output_loads_in_transformers_with_tokenizer_template_and_generation_config(dirs, tmp_path):
    from posttrain.models.loading import load_causal_lm

    summary = merge_checkpoints([dirs["ft1"], dirs["ft2"]], tmp_path / "out", "linear")
    model, tok = load_causal_lm(tmp_path / "out")
    state = {name: t for name, t in model.state_dict().items()}
    one, two = read_tensors(dirs["ft1"]), read_tensors(dirs["ft2"])
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(state[name], (one[name] + two[name]) / 2)
    assert tok.chat_template == tokenizer().chat_template
    for side in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "out" / side).read_bytes() == (dirs["ft1"] / side).read_bytes()
    assert summary.merged_tensors == summary.tensors == len(one) and summary.shards == 1


def test_sharded_bf16_output_equals_the_single_file_result(dirs, tmp_path):
    merge_checkpoints([dirs["ft1"], dirs["ft2"]], tmp_path / "one", "ties", MergeParams(density=0.5),
                      base=dirs["base"], dtype="bfloat16")
    summary = merge_checkpoints([dirs["ft1"], dirs["ft2"]], tmp_path / "many", "ties", MergeParams(density=0.5),
                                base=dirs["base"], dtype="bfloat16", max_shard_bytes=20_000)
    assert summary.shards >= 3 and (tmp_path / "many" / "model.safetensors.index.json").exists()
    one, many = read_tensors(tmp_path / "one"), read_tensors(tmp_path / "many")
    assert all(t.dtype == torch.bfloat16 for t in many.values())
    assert all(torch.equal(one[name], many[name]) for name in one)
    assert json.loads((tmp_path / "many" / "config.json").read_text())["dtype"] == "bfloat16"


def test_tokenizer_and_chat_template_come_from_the_named_source(dirs, tmp_path):
    marked = _copy_with(dirs["ft2"], tmp_path / "marked", lambda t: t)
    template = marked / "chat_template.jinja"
    template.write_text(template.read_text() + "{# the second model's template #}")
    for source, expected in (("first", dirs["ft1"]), (1, marked), ("base", dirs["base"])):
        out = tmp_path / f"out-{source}"
        merge_checkpoints([dirs["ft1"], marked], out, "task_arithmetic", base=dirs["base"], tokenizer_source=source)
        assert (out / "chat_template.jinja").read_bytes() == (expected / "chat_template.jinja").read_bytes()
    with pytest.raises(MergeValidationError, match="tokenizer_source 5"):
        merge_checkpoints([dirs["ft1"], marked], tmp_path / "x", "linear", tokenizer_source=5)


# ---------------------------------------------------------------- validation


def _copy_with(src: Path, dst: Path, edit) -> Path:
    """A copy of an HF dir whose tensors pass through edit(dict) -> dict."""
    dst.mkdir()
    for file in src.iterdir():
        if file.suffix != ".safetensors":
            dst.joinpath(file.name).write_bytes(file.read_bytes())
    save_file(edit(load_file(str(src / "model.safetensors"))), str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_a_differing_shape_is_named_before_anything_is_written(dirs, tmp_path):
    name = "model.layers.1.self_attn.o_proj.weight"
    bad = _copy_with(dirs["ft2"], tmp_path / "bad", lambda t: {**t, name: t[name][:, :-1].contiguous()})
    with pytest.raises(MergeValidationError, match=rf"{name} has shape \[32, 32\].*\[32, 31\]"):
        merge_checkpoints([dirs["ft1"], bad], tmp_path / "out", "linear")
    assert not (tmp_path / "out").exists()


def test_a_missing_tensor_is_named(dirs, tmp_path):
    name = "model.layers.0.input_layernorm.weight"
    bad = _copy_with(dirs["ft2"], tmp_path / "bad", lambda t: {k: v for k, v in t.items() if k != name})
    with pytest.raises(MergeValidationError, match=rf"tensor {name} is in .*ft1 but not in .*bad"):
        merge_checkpoints([dirs["ft1"], bad], tmp_path / "out", "linear")


@pytest.mark.parametrize("overrides,field", [({"tie": True}, "tie_word_embeddings"),
                                             ({"intermediate_size": 48}, "intermediate_size")])
def test_architecture_tying_and_vocabulary_must_agree(dirs, tmp_path, overrides, field):
    other = save(base_model(seed=0, **overrides), tmp_path / "other")
    with pytest.raises(MergeValidationError, match=field):
        merge_checkpoints([dirs["ft1"], other], tmp_path / "out", "linear")


def test_vocabulary_sizes_must_agree(dirs, tmp_path):
    def edit_config(path: Path):
        config = json.loads((path / "config.json").read_text())
        config["vocab_size"] += 8
        (path / "config.json").write_text(json.dumps(config))

    other = _copy_with(dirs["ft2"], tmp_path / "other", lambda t: t)
    edit_config(other)
    with pytest.raises(MergeValidationError, match="vocab_size"):
        merge_checkpoints([dirs["ft1"], other], tmp_path / "out", "linear")


@pytest.mark.parametrize("method,models,base,params,message", [
    ("ties", 2, False, MergeParams(), "needs a base"),
    ("linear", 2, True, MergeParams(), "does not use a base"),
    ("slerp", 3, False, MergeParams(), "merges 2 models; got 3"),
    ("model_stock", 1, True, MergeParams(), "at least 2"),
    ("linear", 2, False, MergeParams(weights=(1.0,)), "1 weights for 2 models"),
    ("nope", 2, False, MergeParams(), "unknown merge method"),
    ("ties", 2, True, MergeParams(density=0.0), "density"),
])
def test_method_requirements_are_checked(dirs, tmp_path, method, models, base, params, message):
    with pytest.raises(MergeValidationError, match=message):
        merge_checkpoints([dirs["ft1"]] * models, tmp_path / "out", method, params,
                          base=dirs["base"] if base else None)


# ---------------------------------------------------------------- atomicity


def test_a_failed_merge_leaves_the_previous_output_untouched(dirs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    merge_checkpoints([dirs["ft1"], dirs["ft2"]], out, "linear")
    before = (out / "model.safetensors").read_bytes()
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return torch.zeros(args[0][0].shape)

    monkeypatch.setitem(streaming.METHODS, "linear", streaming.METHODS["linear"].__class__(failing, "unused"))
    with pytest.raises(RuntimeError, match="disk on fire"):
        merge_checkpoints([dirs["ft1"], dirs["ft2"]], out, "linear")
    assert (out / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind
