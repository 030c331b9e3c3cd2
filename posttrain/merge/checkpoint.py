"""Safetensors checkpoints read one tensor at a time and written one tensor at a time.

Reading: the headers of every shard give each tensor's file, dtype and shape without touching the
weights; `read` then opens the shard with safetensors' `safe_open` for that one tensor. The tensor
is a view of the memory-mapped file, so only its own pages become resident and they are released
when the tensor is dropped (a shard kept open for the whole merge would leave every page it ever
touched resident, a multiple of the model).

Writing: a safetensors header holds every tensor's byte offsets, and a merge knows every output
name, dtype and shape before it computes anything, so `ShardedWriter` lays out the shards and
writes each header up front, then appends each tensor's bytes as it arrives, cast to the output
dtype block by block. Shards rotate at `max_shard_bytes`; more than one shard gets an HF
`model.safetensors.index.json`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path
from typing import BinaryIO

import torch

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
WRITE_BLOCK_ELEMENTS = 1 << 20  # cast and written this many elements at a time


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, from a safetensors header."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> dict:
    """The JSON header of a safetensors file (tensor name -> dtype, shape, data_offsets)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def shard_files(model_dir: Path) -> list[Path]:
    """The weight files of an HF directory: the index's shards in order, else model.safetensors, else *.safetensors."""
    model_dir = Path(model_dir)
    if (model_dir / INDEX_FILE).exists():
        weight_map = json.loads((model_dir / INDEX_FILE).read_text())["weight_map"]
        return [model_dir / name for name in dict.fromkeys(weight_map.values())]
    if (model_dir / SINGLE_FILE).exists():
        return [model_dir / SINGLE_FILE]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors weights")
    return files


class Checkpoint:
    """An HF model directory whose tensors are listed from headers and read lazily, one at a time."""

    def __init__(self, model_dir: Path | str):
        self.path = Path(model_dir)
        self.config: dict = json.loads((self.path / "config.json").read_text())
        self.tensors: dict[str, TensorInfo] = {}
        for file in shard_files(self.path):
            header = read_header(file)
            entries = [(name, spec) for name, spec in header.items() if name != "__metadata__"]
            for name, spec in sorted(entries, key=lambda item: item[1]["data_offsets"][0]):
                if spec["dtype"] not in SAFETENSORS_DTYPES:
                    raise ValueError(f"{file}: tensor {name} has dtype {spec['dtype']}, which posttrain cannot merge")
                self.tensors[name] = TensorInfo(file, SAFETENSORS_DTYPES[spec["dtype"]], tuple(spec["shape"]))

    def read(self, name: str) -> torch.Tensor:
        """One tensor, memory-mapped from its shard: its pages load when used and go when it is dropped."""
        from safetensors import safe_open

        with safe_open(str(self.tensors[name].file), framework="pt") as f:
            return f.get_tensor(name)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r})"


# ---------------------------------------------------------------- writing


def plan_shards(specs: list[tuple[str, torch.dtype, tuple[int, ...]]], max_shard_bytes: int) -> list[list[int]]:
    """Indices of `specs` per shard, in order; a shard is closed before it would pass max_shard_bytes."""
    shards: list[list[int]] = [[]]
    size = 0
    for index, (_, dtype, shape) in enumerate(specs):
        nbytes = math.prod(shape) * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(index)
        size += nbytes
    return shards


def _header_bytes(specs: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> bytes:
    """A safetensors header for tensors stored back to back in this order, padded to 8 bytes."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in specs:
        end = offset + math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _write_tensor(f: BinaryIO, tensor: torch.Tensor, dtype: torch.dtype) -> None:
    """Append a tensor's bytes in `dtype`, casting one block at a time (no full-size copy)."""
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), WRITE_BLOCK_ELEMENTS):
        block = flat[start : start + WRITE_BLOCK_ELEMENTS].to(dtype).contiguous()
        f.write(block.view(torch.uint8).numpy().data)


class ShardedWriter:
    """Write tensors, in a fixed order known up front, into safetensors shards as they are computed."""

    def __init__(self, out_dir: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]], max_shard_bytes: int):
        self.out_dir = Path(out_dir)
        self.specs = specs
        self.shards = plan_shards(specs, max_shard_bytes)
        count = len(self.shards)
        self.file_names = [SINGLE_FILE] if count == 1 else [
            f"model-{number:05d}-of-{count:05d}.safetensors" for number in range(1, count + 1)
        ]
        self.shard_of = {index: shard for shard, indices in enumerate(self.shards) for index in indices}
        self._next = 0
        self._file: BinaryIO | None = None
        self._open_shard = -1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor of the plan (its name must match), cast to the planned dtype."""
        expected, dtype, shape = self.specs[self._next]
        if name != expected or tuple(tensor.shape) != shape:
            raise ValueError(f"writer expected {expected} {list(shape)}, got {name} {list(tensor.shape)}")
        shard = self.shard_of[self._next]
        if shard != self._open_shard:
            self._start_shard(shard)
        _write_tensor(self._file, tensor, dtype)
        self._next += 1

    def _start_shard(self, shard: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self.out_dir / self.file_names[shard], "wb")
        self._file.write(_header_bytes([self.specs[i] for i in self.shards[shard]]))
        self._open_shard = shard

    def close(self) -> None:
        """Finish the last shard and, when sharded, write the index; every planned tensor must be written."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._next != len(self.specs):
            raise RuntimeError(f"writer closed after {self._next} of {len(self.specs)} tensors")
        if len(self.shards) > 1:
            weight_map = {self.specs[i][0]: self.file_names[shard]
                          for shard, indices in enumerate(self.shards) for i in indices}
            total = sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in self.specs)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True))

    @property
    def bytes_planned(self) -> int:
        return sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in self.specs)
