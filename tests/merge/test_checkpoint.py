"""Incremental safetensors writing (headers planned up front, shards rotated by size) and lazy reading."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import posttrain.merge.checkpoint as checkpoint
from posttrain.merge.checkpoint import Checkpoint, ShardedWriter, plan_shards

torch.set_num_threads(1)


def specs_of(tensors, dtype=None):
    return [(name, dtype or t.dtype, tuple(t.shape)) for name, t in tensors.items()]


def test_single_shard_round_trips_through_safetensors(tmp_path):
    tensors = {"a.weight": torch.randn(3, 5), "b.bias": torch.arange(4, dtype=torch.int64), "c": torch.tensor(2.5),
               "mask": torch.tensor([True, False, True])}
    writer = ShardedWriter(tmp_path, specs_of(tensors), max_shard_bytes=1 << 30)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    loaded = load_file(str(tmp_path / "model.safetensors"))
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in tensors.items())


def test_shards_rotate_by_size_and_the_index_maps_every_tensor(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "WRITE_BLOCK_ELEMENTS", 7)  # the block-by-block cast path
    tensors = {f"layer.{i}.weight": torch.randn(10, 10) for i in range(5)}  # 400 bytes each
    writer = ShardedWriter(tmp_path, specs_of(tensors, torch.bfloat16), max_shard_bytes=450)  # 200 bytes in bf16
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    writer.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 200
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]
    for name, tensor in tensors.items():
        shard = load_file(str(tmp_path / index["weight_map"][name]))
        assert torch.equal(shard[name], tensor.to(torch.bfloat16))


def test_plan_shards_never_leaves_a_shard_empty():
    specs = [("big", torch.float32, (100,)), ("small", torch.float32, (1,)), ("big2", torch.float32, (100,))]
    assert plan_shards(specs, max_shard_bytes=50) == [[0], [1], [2]]
    assert plan_shards(specs, max_shard_bytes=10_000) == [[0, 1, 2]]


def test_writer_refuses_tensors_out_of_plan_and_an_incomplete_close(tmp_path):
    writer = ShardedWriter(tmp_path, [("a", torch.float32, (2,)), ("b", torch.float32, (2,))], 1 << 20)
    with pytest.raises(ValueError, match="expected a"):
        writer.write("b", torch.zeros(2))
    writer.write("a", torch.zeros(2))
    with pytest.raises(RuntimeError, match="1 of 2"):
        writer.close()


def test_checkpoint_lists_tensors_from_headers_and_reads_them_lazily(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    first, second = {"x": torch.randn(2, 3)}, {"y": torch.ones(4, dtype=torch.bfloat16)}
    save_file(first, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(second, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    ckpt = Checkpoint(tmp_path)
    assert list(ckpt.tensors) == ["x", "y"]
    assert ckpt.tensors["y"].dtype == torch.bfloat16 and ckpt.tensors["y"].shape == (4,)
    assert torch.equal(ckpt.read("x"), first["x"]) and torch.equal(ckpt.read("y"), second["y"])
