"""Model preparation before training: gradient checkpointing, LoRA adapters, NEFTune.

LoRA: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (via peft).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from posttrain.train.config import LoraSettings, TrainConfig
from posttrain.train.neftune import add_neftune


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Freeze the model and inject LoRA adapters into the target modules; returns the peft model."""
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def prepare_model(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Apply the config's gradient checkpointing, LoRA and NEFTune to `model`; returns the model to train."""
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (LoRA), DDP and FSDP2 alike.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    if config.lora is not None:
        with torch.random.fork_rng(devices=[]):  # adapter init is a function of the seed alone
            torch.manual_seed(config.seed)
            model = apply_lora(model, config.lora)
    if config.neftune_alpha is not None:
        add_neftune(model, config.neftune_alpha)
    return model


def save_adapter(model: nn.Module, out_dir: Path) -> Path:
    """Write the LoRA adapter alone (adapter_config.json + adapter_model.safetensors)."""
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


def merged_model(model: nn.Module) -> nn.Module:
    """The plain transformers model with adapters merged into its weights (W + alpha/r * B A)."""
    return model.merge_and_unload() if is_lora(model) else model
