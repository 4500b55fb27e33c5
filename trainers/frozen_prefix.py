"""Fine-tuning only the last k layers of a big model, fast enough for one CPU core.

    layers 0 .. L-k-1 (frozen)  --hidden states, computed once per split and cached-->
    layers L-k .. L-1 + final norm (trainable) + LM head (frozen, tied to the embedding)

The frozen layers see the same tokens on every step, so their output is computed once per dataset
split and kept in the artifact cache, keyed by the model, the exact token tensors and k. The
trainable tail is a real Hugging Face ``LlamaForCausalLM`` with k layers, given the cached states
as ``inputs_embeds`` (positions and the causal mask are rebuilt exactly as in the full model).
Its LM head, a 49,152 x 576 matrix for SmolLM2 and most of a step's cost, is applied only where
there are labels: for prompt/completion data that is a few positions per row.
"""
from __future__ import annotations

import copy
import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from trainers.data import IGNORE, TokenizedSplit

CACHE_FORMAT = 2  # bump when what is cached, or how, changes


def n_layers(model: nn.Module) -> int:
    return len(model.model.layers)


def build_tail(full: nn.Module, k: int) -> nn.Module:
    """A ``LlamaForCausalLM``-style model holding copies of the last k layers, the final norm and
    the (tied, frozen) embedding / LM head of ``full``; only layers and norm train."""
    total = n_layers(full)
    if not 0 < k < total:
        raise ValueError(f"trainable layers must be between 1 and {total - 1}, got {k}")
    cfg = copy.deepcopy(full.config)
    cfg.num_hidden_layers = k
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = list(cfg.layer_types)[total - k:]
    tail = type(full)(cfg)
    tail.loss_type = full.loss_type  # a fresh module forgets what load_model_and_tokenizer named
    state = {}
    for name, tensor in full.state_dict().items():
        if name.startswith("model.layers."):
            idx, rest = name[len("model.layers."):].split(".", 1)
            if int(idx) >= total - k:
                state[f"model.layers.{int(idx) - (total - k)}.{rest}"] = tensor
        else:
            state[name] = tensor
    tail.load_state_dict(state, strict=True)
    for name, p in tail.named_parameters():
        p.requires_grad_(name.startswith("model.layers.") or name.startswith("model.norm."))
    return tail


def merge_tail(full: nn.Module, tail: nn.Module) -> nn.Module:
    """Write a trained tail's layers and final norm back into (a copy of) the full model."""
    total, k = n_layers(full), n_layers(tail)
    state = {}
    for name, tensor in tail.state_dict().items():
        if name.startswith("model.layers."):
            idx, rest = name[len("model.layers."):].split(".", 1)
            state[f"model.layers.{int(idx) + total - k}.{rest}"] = tensor
        elif name.startswith("model.norm."):
            state[name] = tensor
    missing, unexpected = full.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    return full


@dataclass
class TailOutput:
    loss: torch.Tensor  # mean cross-entropy over label positions
    logits: torch.Tensor  # [M, vocab]: only at the M label positions
    label_mask: torch.Tensor  # [B, L-1] bool: where those positions are
    targets: torch.Tensor  # [M]


class CausalLMTail(nn.Module):
    """What DeepSpeed wraps: the tail, fed cached states, with the head applied at labels only."""

    def __init__(self, tail: nn.Module) -> None:
        super().__init__()
        self.tail = tail

    def forward(self, prefix_states: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> TailOutput:
        dtype = self.tail.lm_head.weight.dtype  # bf16 engines cast the module, not the cached states
        hidden = self.tail.model(inputs_embeds=prefix_states.to(dtype), attention_mask=attention_mask).last_hidden_state
        targets = labels[:, 1:]
        mask = targets != IGNORE
        logits = self.tail.lm_head(hidden[:, :-1][mask])
        loss = nn.functional.cross_entropy(logits.float(), targets[mask])
        return TailOutput(loss, logits, mask, targets[mask])


@contextmanager
def _first_layers(full: nn.Module, n: int) -> Iterator[nn.Module]:
    """The model's body truncated to its first n layers, without the final norm, for a moment."""
    body = full.model
    layers, norm, n_cfg = body.layers, body.norm, body.config.num_hidden_layers
    body.layers, body.norm, body.config.num_hidden_layers = layers[:n], nn.Identity(), n
    try:
        yield body
    finally:
        body.layers, body.norm, body.config.num_hidden_layers = layers, norm, n_cfg


@torch.no_grad()
def prefix_states(full: nn.Module, split: TokenizedSplit, n_prefix: int | Sequence[int], batch_size: int = 16,
                  desc: str = "frozen layers") -> torch.Tensor | dict[int, torch.Tensor]:
    """Output of the first n_prefix layers for every example: [N, L, hidden], float32. Given
    several cut points, one pass through the deepest gives each of them: {n: states}."""
    from trainers.progress import progress

    cuts = sorted(set(n_prefix)) if not isinstance(n_prefix, int) else [n_prefix]
    was_training = full.training
    full.eval()
    n, width = len(split), split.input_ids.shape[1]
    out = {c: torch.zeros(n, width, full.config.hidden_size) for c in cuts}
    # batches of similar length, each cut after its last real token (TokenizedSplit.trimmed):
    # padding is at the end and attention causal, so real positions come out as they would
    # untrimmed; positions after a batch's cut stay zero (padding: no loss and no real position reads them)
    order = torch.argsort(split.attention_mask.sum(dim=1), stable=True)
    with _first_layers(full, cuts[-1]) as body:
        for s in progress(range(0, n, batch_size), desc=desc, unit="batch", leave=False):
            idx = order[s:s + batch_size]
            batch = split.select(idx).trimmed()
            hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          output_hidden_states=len(cuts) > 1)
            end = batch.input_ids.shape[1]
            for c in cuts:  # hidden_states[c] is the output of c layers (the norm is left out above)
                out[c][idx, :end] = (hidden.hidden_states[c] if len(cuts) > 1 else hidden.last_hidden_state).float()
    full.train(was_training)
    return out[cuts[0]] if isinstance(n_prefix, int) else out


def cache_key(model_id: str, split: TokenizedSplit, n_prefix: int, full: Optional[nn.Module] = None) -> str:
    """The model, the exact tokens (values and shape), the cut point and the code that computes
    them (torch, transformers, attention implementation, dtype) decide the states."""
    import transformers

    impl = getattr(getattr(full, "config", None), "_attn_implementation", None)
    dtype = next(full.parameters()).dtype if full is not None else None
    h = hashlib.sha256()
    h.update(f"{CACHE_FORMAT}|{model_id}|{n_prefix}|{tuple(split.input_ids.shape)}|{torch.__version__}|"
             f"{transformers.__version__}|{impl}|{dtype}|".encode())
    h.update(split.input_ids.numpy().tobytes())
    h.update(split.attention_mask.numpy().tobytes())
    return h.hexdigest()[:24]


def cached_prefix_states(full: nn.Module, model_id: str, split: TokenizedSplit, n_prefix: int,
                         desc: str, cache_dir: Optional[Path] = None, also_at: Sequence[int] = ()) -> torch.Tensor:
    """The states from the artifact cache, or computed once (progress bar) and cached. Safe when
    several processes ask at once: one computes, the others wait for its file. ``also_at``: other
    cut points the caller will ask for (the depths of a family's other instances); those not yet
    cached come out of the same pass, so a family costs one pass per split, not one per depth."""
    import fcntl

    from safetensors.torch import load_file, save

    from trainers.atomic_files import write_bytes_atomic
    from trainers.config import cache_root

    folder = cache_dir or cache_root() / "frozen_prefix"
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(model_id, split, n_prefix, full)
    path = folder / f"{key}.safetensors"
    if not path.is_file():
        with open(folder / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not path.is_file():
                    wanted = {n_prefix} | {n for n in also_at if 0 < n < n_layers(full)
                                           and not (folder / f"{cache_key(model_id, split, n, full)}.safetensors").is_file()}
                    computed = prefix_states(full, split, sorted(wanted), desc=desc)
                    for n, states in sorted(computed.items(), key=lambda kv: kv[0] == n_prefix):  # asked-for one last
                        write_bytes_atomic(folder / f"{cache_key(model_id, split, n, full)}.safetensors",
                                           save({"states": states.contiguous()}))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return load_file(str(path))["states"]
