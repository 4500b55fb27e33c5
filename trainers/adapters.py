"""LoRA adapters from ``peft`` on the layers a session trains, and merging them back for saving.

The adapters are injected into the module DeepSpeed will wrap (``peft.inject_adapter_in_model``),
so the same code serves a whole model and a frozen-prefix tail: on the CPU family the tail's k
layers are the trainable ones and get the adapters, so the frozen prefix's cached states still
serve; on a GPU set where every layer trains, every layer gets them. Only the adapters train.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from trainers.config import ConfigError, LoraSpec


def lora_config(spec: LoraSpec, target_names: Sequence[str]):
    from peft import LoraConfig

    return LoraConfig(r=spec.rank, lora_alpha=spec.scale_alpha, lora_dropout=spec.dropout,
                      target_modules=list(target_names), bias="none")


def target_module_names(module: nn.Module, spec: LoraSpec, within: Optional[Sequence[str]] = None) -> list[str]:
    """Full names of the modules that get an adapter: last name in ``spec.target_modules``, and
    (when given) inside one of the blocks named in ``within``."""
    from transformers.pytorch_utils import Conv1D

    every_linear = "all-linear" in spec.target_modules  # any model: each linear layer but the LM head
    names = []
    for name, m in module.named_modules():
        last = name.rsplit(".", 1)[-1]
        if every_linear:
            if not isinstance(m, (nn.Linear, Conv1D)) or last in ("lm_head", "embed_out"):
                continue
        elif last not in spec.target_modules:
            continue
        if within is not None and not any(name.startswith(block + ".") for block in within):
            continue
        names.append(name)
    if not names:
        raise ConfigError(f"session.lora.target_modules: none of {list(spec.target_modules)} is a layer of "
                          f"this model's trainable blocks")
    return names


def add_lora(module: nn.Module, spec: LoraSpec, within: Optional[Sequence[str]] = None, seed: int = 0) -> list[str]:
    """Inject LoRA adapters in place and freeze everything else. The adapters' initial weights
    come from ``seed`` (every process builds the same starting model). Returns the adapted names."""
    from peft import inject_adapter_in_model

    names = target_module_names(module, spec, within)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        inject_adapter_in_model(lora_config(spec, names), module)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return names


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and put the base layer back where the adapted one
    was: the module's state dict then has the original model's names and shapes."""
    from peft.tuners.lora import LoraLayer

    adapted = [(name, m) for name, m in module.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in adapted:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return module
