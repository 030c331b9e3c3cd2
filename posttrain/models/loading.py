"""Load and save causal LMs as HF checkpoints: config + *.safetensors + tokenizer + generation config.

Weights come from safetensors only: a pickle (.bin, .pt) can run code when it is loaded, so a
directory that only has those is refused. A saved directory is written into a temporary sibling,
fsynced and renamed into place, so a reader never sees half a checkpoint; it loads in
transformers and vLLM, and its generation_config stops on every end-of-turn id.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import nn

from posttrain.models.forward import unwrap_model
from posttrain.models.runtime import default_dtype

PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
ARCHITECTURES = ("llama", "qwen2")


# ---------------------------------------------------------------- loading


def check_safetensors_only(path: Path | str) -> None:
    """Raise unless `path` is a directory holding *.safetensors weights; name any pickle weights found."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_WEIGHT_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{path} has weights only as pickle files ({', '.join(pickles)}); posttrain loads *.safetensors "
            "only, because unpickling can run arbitrary code. Convert the checkpoint to safetensors once, "
            "in an environment you trust (model.save_pretrained(dir, safe_serialization=True))."
        )
    raise FileNotFoundError(f"{path} has no *.safetensors weights")


def load_tokenizer(path: Path | str):
    """The tokenizer (and its chat template) saved in a local HF directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_causal_lm(
    path: Path | str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a local HF directory; safetensors weights only, never the hub.

    dtype defaults to float32 on CPU and bfloat16 on GPU (`default_dtype`).
    """
    from transformers import AutoModelForCausalLM

    check_safetensors_only(path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=dtype or default_dtype(device),
        attn_implementation=attn_implementation,
        local_files_only=True,
        use_safetensors=True,
    )
    return model.to(device), load_tokenizer(path)


def random_init_causal_lm(
    arch: str,
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    seed: int,
    tie_word_embeddings: bool = False,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    **config_overrides: Any,
) -> nn.Module:
    """A randomly initialised causal LM of a real architecture ('llama' or 'qwen2'), same weights per seed.

    config_overrides go to the config (bos_token_id, eos_token_id, pad_token_id, rope_theta, ...).
    Special token ids default to None, not the architecture's (Llama's eos 2 means nothing to a
    tokenizer trained here). The global RNG is left as it was.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_classes = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    if arch not in config_classes:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    for special in ("bos_token_id", "eos_token_id", "pad_token_id"):
        config_overrides.setdefault(special, None)
    config = config_classes[arch](
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        **config_overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    return model.to(dtype)


# ---------------------------------------------------------------- saving


def save_causal_lm(
    model: nn.Module,
    tokenizer: Any,
    out_dir: Path | str,
    *,
    eos_token_ids: list[int] | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Save a (possibly DDP / torch.compile / PEFT wrapped) causal LM as an HF directory, atomically.

    PEFT LoRA adapters are merged into the saved weights (the live model is not modified), so the
    result loads as a plain model. eos_token_ids: end-of-turn ids generation must stop on, added
    to the tokenizer's and config's eos (Llama 3: <|eot_id|> and <|end_of_text|>).
    FSDP2: gather a full state dict first and call `save_state_dict_as_hf` on rank 0.
    """
    base = unwrap_model(model)
    ensure_architectures(base)
    return save_state_dict_as_hf(
        _state_dict_with_merged_adapters(base),
        base.config,
        tokenizer,
        out_dir,
        eos_token_ids=eos_token_ids,
        dtype=dtype,
        generation_config=getattr(base, "generation_config", None),
        max_shard_bytes=max_shard_bytes,
    )


def ensure_architectures(model: nn.Module) -> None:
    """Name the model class in its config (`architectures`): vLLM and mergekit pick the class by it."""
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]


def save_state_dict_as_hf(
    state_dict: dict[str, torch.Tensor],
    config: Any,
    tokenizer: Any,
    out_dir: Path | str,
    *,
    eos_token_ids: list[int] | None = None,
    dtype: torch.dtype | None = None,
    generation_config: Any = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write a full (unsharded, plain-tensor) state dict + config + tokenizer as an HF directory, atomically.

    Tied output embeddings are written once (as transformers does); floating tensors are cast to
    `dtype` when given. The generation config's eos_token_id is a list with every end-of-turn id
    and its pad_token_id differs from all of them.
    """
    config = copy.deepcopy(config)
    tokenizer = copy.deepcopy(tokenizer)
    tensors = _tensors_to_write(state_dict, config, dtype)
    if dtype is not None:
        config.dtype = dtype
    generation = _generation_config(config, tokenizer, eos_token_ids, generation_config)
    if tokenizer.pad_token_id != generation.pad_token_id:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(generation.pad_token_id)
    # The config agrees on eos (Llama 3.1 ships the list in both). Its pad_token_id is left alone:
    # transformers makes it the embedding's padding_idx, whose row then never gets a gradient.
    config.eos_token_id = list(generation.eos_token_id)
    if getattr(config, "bos_token_id", None) is None:
        config.bos_token_id = generation.bos_token_id

    def write(tmp: Path) -> None:
        config.save_pretrained(tmp)
        generation.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_safetensors(tensors, tmp, max_shard_bytes)

    return write_dir_atomically(Path(out_dir), write)


def _state_dict_with_merged_adapters(model: nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() with PEFT LoRA layers merged (W + scale * B @ A) and adapter tensors dropped."""
    state = {}
    for key, tensor in model.state_dict().items():
        parts = key.split(".")
        if any(part.startswith("lora_") for part in parts) or "original_module" in parts:
            continue  # LoRA factors are merged below; original_module is shadowed by modules_to_save
        if "modules_to_save" in parts:  # "x.modules_to_save.<adapter>.weight" -> "x.weight"
            at = parts.index("modules_to_save")
            parts = parts[:at] + parts[at + 2 :]
        state[".".join(part for part in parts if part != "base_layer")] = tensor
    for name, module in model.named_modules():
        if not (hasattr(module, "base_layer") and hasattr(module, "get_delta_weight")):
            continue
        if any(getattr(module, "use_dora", {}).values()):
            raise NotImplementedError(f"{name}: merging DoRA adapters on save is not supported; merge_and_unload() first")
        weight = module.base_layer.weight.detach()
        if not module.merged:  # a merged layer already carries its delta in the base weight
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).detach().to(weight.dtype)
        state[f"{name}.weight"] = weight
    return state


def _tensors_to_write(
    state_dict: dict[str, torch.Tensor], config: Any, dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors, tied lm_head dropped, no two sharing storage (safetensors refuses that)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    out, seen_storage = {}, set()
    for key, tensor in state_dict.items():
        if tied and key == "lm_head.weight":
            continue  # transformers re-ties it to the input embeddings on load
        if type(tensor).__name__ == "DTensor":
            raise TypeError(f"{key} is a DTensor: gather a full state dict (FSDP2) before saving")
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.to("cpu").contiguous()
        if tensor.untyped_storage().data_ptr() in seen_storage:
            tensor = tensor.clone()
        seen_storage.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def _write_safetensors(tensors: dict[str, torch.Tensor], out_dir: Path, max_shard_bytes: int) -> None:
    """model.safetensors, or model-0000i-of-0000n.safetensors + index when over max_shard_bytes."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for key, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][key] = tensor
        shard_bytes += size
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


def _generation_config(config: Any, tokenizer: Any, eos_token_ids: list[int] | None, base: Any):
    """GenerationConfig whose eos_token_id lists every stop id and whose pad_token_id is none of them."""
    from transformers import GenerationConfig

    generation = copy.deepcopy(base) if base is not None else GenerationConfig.from_model_config(config)
    eos: list[int] = []
    for ids in (generation.eos_token_id, getattr(config, "eos_token_id", None), tokenizer.eos_token_id, eos_token_ids):
        for token_id in ids if isinstance(ids, (list, tuple)) else [ids]:
            if token_id is not None and int(token_id) not in eos:
                eos.append(int(token_id))
    if not eos:
        raise ValueError("no end-of-sequence id: the tokenizer has no eos token and no eos_token_ids were given")
    generation.eos_token_id = eos
    generation._from_model_config = False  # else generate() may re-derive the ids from the model config
    generation.pad_token_id = choose_pad_token_id(tokenizer, eos)
    if generation.bos_token_id is None and tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    return generation


def choose_pad_token_id(tokenizer: Any, eos_token_ids: list[int]) -> int:
    """The tokenizer's pad id if it is not a stop id, else an added special token named like 'pad'.

    Padding with an eos id would teach (or let a sampler treat) padding as end of turn.
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in eos_token_ids:
        return int(tokenizer.pad_token_id)
    for token, token_id in sorted(tokenizer.get_added_vocab().items(), key=lambda item: item[1]):
        if "pad" in token.lower() and token_id not in eos_token_ids:
            return int(token_id)
    raise ValueError(
        "the tokenizer has no pad token distinct from the end-of-turn ids "
        f"{eos_token_ids}; add one (e.g. '<|pad|>') to the tokenizer before saving"
    )


# ---------------------------------------------------------------- atomic directory write


def write_dir_atomically(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Run write(tmp) in a temporary sibling of out_dir, fsync it, then rename it to out_dir.

    An existing out_dir is moved aside first and deleted only after the new one is in place.
    """
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    old = None
    try:
        write(tmp)
        _fsync_tree(tmp)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        _fsync_path(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out_dir.exists():
            os.rename(old, out_dir)  # put the previous checkpoint back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        _fsync_path(path)
    _fsync_path(root)


def _fsync_path(path: Path) -> None:
    """fsync a file, or a directory so the renames inside it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
