"""Typed, validated configuration: one YAML file describes an instance set and its environment.

Every error names the file and the field (``configs/tiny.yaml: episode.decision_interval: ...``),
because a traceback from inside pydantic or yaml tells a user nothing about what to fix.
"""
from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


def cache_root() -> Path:
    """Built models and data digests, shared by every clone on the machine (like ~/.cache/huggingface);
    DSRL_CACHE moves it."""
    import os

    d = Path(os.environ.get("DSRL_CACHE", Path.home() / ".cache" / "ds-hparam-rl" / "artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d

HPARAM_NAMES = ("lr", "weight_decay", "grad_clip")


class ConfigError(ValueError):
    """A configuration file (or dict) that does not describe a valid setup."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _bool_is_not_a_number(cls, v: Any, info: Any) -> Any:
        """pydantic reads YAML's ``true`` as 1 where a number belongs; a number is never a boolean here."""
        if isinstance(v, bool) and _number_field(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not a boolean")
        return v


def _number_field(annotation: Any) -> bool:
    """Whether a field holds a plain int or float (bare or Optional), and never a bool."""
    kinds = set(typing.get_args(annotation)) - {type(None)} if typing.get_origin(annotation) in _UNIONS else {annotation}
    return bool(kinds) and kinds <= {int, float}


_UNIONS = (typing.Union, types.UnionType)
Range = tuple[float, float]


def _check_range(name: str, value: Range, positive: bool = True) -> Range:
    lo, hi = value
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and lo <= 0:
        raise ValueError(f"{name} must be > 0 (log scale), got {value}")
    if lo > hi:
        raise ValueError(f"{name} low end {lo} is above its high end {hi}")
    return value


class HparamBounds(_Strict):
    """Hard limits no controller, recipe or search may leave (log scale for all three)."""

    lr: Range = (1e-5, 1e-1)
    weight_decay: Range = (1e-4, 0.5)
    grad_clip: Range = (0.05, 10.0)

    @field_validator("lr", "weight_decay", "grad_clip")
    @classmethod
    def _valid(cls, v: Range, info: Any) -> Range:
        return _check_range(info.field_name, v)


class DatasetSpec(_Strict):
    """Where an instance's examples come from.

    kinds: bbc_lm (one topic's articles as text), bbc_topic (the topic from the headline or the
    first sentence), bbc_headline (write the headline of an article's first sentence), chitchat
    (reply to a message), chitchat_lm (whole conversations as text), arithmetic (two-number sums), math (a mathematics-dataset module at its
    easy setting, e.g. comparison.pair), jsonl (the user's file)."""

    kind: Literal["bbc_lm", "bbc_topic", "bbc_headline", "chitchat", "chitchat_lm", "arithmetic", "math", "jsonl"]
    topic: Optional[str] = None  # bbc_lm: one BBC topic's articles
    source: Literal["headline", "first_sentence"] = "headline"  # bbc_topic: what the topic is read from
    module: Optional[str] = None  # math: "<area>.<module>", e.g. "numbers.place_value"
    path: Optional[str] = None  # jsonl: the user's file
    # wraps every prompt, e.g. a chat model's user turn: "<|im_start|>user\n{prompt}<|im_end|>\n..."
    prompt_template: Optional[str] = None
    # the text placed in a prompt (sentence, headline, message) is cut to this many words, so that the
    # whole prompt fits seq_len (a prompt too long loses its start: the template and the question)
    max_text_words: Optional[int] = Field(default=None, gt=0)
    max_train_examples: Optional[int] = Field(default=None, gt=0)
    # validation and test hold at most this many examples (below the episode's eval_examples and
    # test_examples): a text row predicts seq_len tokens, a short answer a few, so text measures as
    # precisely with fewer rows, and its LM head at every position makes each row dear
    max_validation_examples: Optional[int] = Field(default=None, gt=0)
    max_test_examples: Optional[int] = Field(default=None, gt=0)
    seed: int = 0  # fixes the train/validation/test split (and math's generated problems)

    @model_validator(mode="after")
    def _needs(self) -> "DatasetSpec":
        if self.kind == "bbc_lm" and not self.topic:
            raise ValueError("kind 'bbc_lm' needs 'topic' (business, entertainment, politics, sport, tech)")
        if self.kind == "jsonl" and not self.path:
            raise ValueError("kind 'jsonl' needs 'path'")
        if self.kind == "math" and (not self.module or self.module.count(".") != 1):
            raise ValueError("kind 'math' needs 'module' as '<area>.<module>', e.g. 'comparison.pair'")
        if self.prompt_template is not None and "{prompt}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{prompt}'")
        return self


LLAMA_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraSpec(_Strict):
    """LoRA adapters (``peft``) on the trainable layers, instead of training those layers' weights."""

    rank: int = Field(gt=0)
    alpha: Optional[float] = Field(default=None, gt=0)  # None: 2 x rank, the common choice
    # the linear layers that get an adapter, by their last name (Llama's attention and MLP projections);
    # ["all-linear"]: every linear layer of the trainable blocks, whatever the model calls them
    target_modules: tuple[str, ...] = LLAMA_LINEAR_MODULES
    dropout: float = Field(default=0.0, ge=0, lt=1)

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else 2 * self.rank)

    @field_validator("target_modules")
    @classmethod
    def _some(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("target_modules needs at least one module name")
        return v


class InstanceSpec(_Strict):
    """One fine-tuning problem: data + budget + where initial hyperparameters are drawn from."""

    name: str
    dataset: DatasetSpec
    total_steps: Optional[int] = Field(default=None, gt=0)  # overrides episode.total_steps
    # overrides session.trainable_last_layers: how many final layers this instance fine-tunes
    trainable_layers: Optional[int] = Field(default=None, gt=0)
    # the first n examples of the dataset's training split (a data-size axis over one dataset:
    # instances that share a dataset share its splits and its frozen-prefix cache); None: all
    train_examples: Optional[int] = Field(default=None, gt=0)
    # overrides session.lora: LoRA adapters of this rank on the trainable layers
    lora: Optional[LoraSpec] = None
    # overrides session.gradient_accumulation_steps: micro-batches per optimizer step
    gradient_accumulation_steps: Optional[int] = Field(default=None, gt=0)
    init_lr: Range = (1e-4, 1e-2)
    # labels for reports, e.g. [extrapolation, budget]: a held-out instance outside the training range
    tags: tuple[str, ...] = ()
    init_weight_decay: Range = (1e-3, 0.1)
    init_grad_clip: Range = (0.5, 2.0)

    @field_validator("init_lr", "init_weight_decay", "init_grad_clip")
    @classmethod
    def _valid(cls, v: Range, info: Any) -> Range:
        return _check_range(info.field_name, v)


class SessionConfig(_Strict):
    """How the DeepSpeed engine is built. Defaults: tiny model, CPU, fp32, ZeRO 0."""

    model: str = "tiny-gpt"  # 'tiny-gpt', 'smollm2-135m', or a Hugging Face model folder
    zero_stage: Literal[0, 1, 2] = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    micro_batch_size: int = Field(default=16, gt=0)
    seq_len: int = Field(default=64, gt=7)
    torch_threads: int = Field(default=1, gt=0)
    trainable_last_layers: Optional[int] = Field(default=None, gt=0)  # freeze the rest (big models)
    # train only a tail of trainable_last_layers layers, on cached states of the frozen ones
    # (trainers/frozen_prefix.py; Llama-style models): one CPU core can fine-tune SmolLM2 this way
    frozen_prefix: bool = False
    # the client optimizer: torch's AdamW, which a controller or recipe steers, or a self-tuning one
    # at the defaults its README documents (trainers/session.py SELF_TUNING), which owns its lr and
    # weight decay: set_hparams then changes only the clipping threshold
    optimizer: Literal["adamw", "schedulefree_adamw", "prodigy"] = "adamw"
    # LoRA adapters (peft) on the trainable layers (all layers, or the last trainable_last_layers);
    # None trains those layers' own weights
    lora: Optional[LoraSpec] = None
    # micro-batches per optimizer step (DeepSpeed's gradient_accumulation_steps): the effective batch
    # is micro_batch_size x this. A live engine changes it (set_train_batch_size), so instances that
    # differ only in it share one engine
    gradient_accumulation_steps: int = Field(default=1, gt=0)

    @model_validator(mode="after")
    def _prefix_needs_a_tail(self) -> "SessionConfig":
        if self.frozen_prefix and not self.trainable_last_layers:
            raise ValueError("frozen_prefix needs trainable_last_layers (how many final layers train)")
        if self.optimizer == "schedulefree_adamw" and (self.zero_stage, self.precision) != (0, "fp32"):
            # its train()/eval() swap the parameters it holds; under ZeRO or bf16 those are DeepSpeed's
            # flat master copies, not the model's, so evaluation would not see the averaged weights
            raise ValueError("optimizer schedulefree_adamw needs zero_stage 0 and precision fp32")
        if self.optimizer == "prodigy" and self.zero_stage != 0:  # DeepSpeed's ZeRO refuses untested optimizers
            raise ValueError("optimizer prodigy needs zero_stage 0")
        return self


class EpisodeConfig(_Strict):
    """The budget of one episode and how often the controller decides."""

    total_steps: int = Field(default=60, gt=0)
    decision_interval: int = Field(default=10, gt=0)
    eval_examples: int = Field(default=64, gt=0)
    test_examples: int = Field(default=256, gt=0)
    divergence_factor: float = Field(default=3.0, gt=1.0)  # eval loss above factor x start = diverged
    divergence_penalty: float = Field(default=1.0, ge=0.0)

    @model_validator(mode="after")
    def _fits(self) -> "EpisodeConfig":
        if self.decision_interval > self.total_steps:
            raise ValueError(
                f"decision_interval ({self.decision_interval}) is longer than total_steps ({self.total_steps})"
            )
        return self


class ActionConfig(_Strict):
    """Box: one log-scale delta per hyperparameter. Discrete: a menu of joint deltas."""

    mode: Literal["box", "discrete"] = "box"
    max_log2_step: float = Field(default=1.0, gt=0)  # a full action doubles or halves
    menu: tuple[tuple[float, float, float], ...] = (
        (0, 0, 0),
        (1, 0, 0),
        (-1, 0, 0),
        (0.5, 0, 0),
        (-0.5, 0, 0),
        (0, 1, 0),
        (0, -1, 0),
        (0, 0, 1),
        (0, 0, -1),
    )

    @field_validator("menu")
    @classmethod
    def _menu(cls, v: tuple) -> tuple:
        if not v:
            raise ValueError("menu must have at least one entry")
        for row in v:
            if any(abs(x) > 1 for x in row):
                raise ValueError(f"menu entry {row} leaves [-1, 1]")
        return v


class RecipeConfig(_Strict):
    """A static schedule: what a user would run without tuning."""

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)
    decay: Literal["constant", "linear", "cosine"] = "linear"


class ControlConfig(_Strict):
    """How a controller's actions become hyperparameters, what it observes and what rewards it
    (envs/control.py). The defaults are the original controller: deltas on the current
    hyperparameters from a start drawn from the instance's ranges, the basic observation, and the
    validation improvement as reward. Each part switches on alone, so an ablation is a config."""

    # actions correct a base recipe's schedule: lr(t) = scale x recipe_lr(t) (and wd, clip likewise);
    # a controller that never acts runs the recipe exactly, from the recipe's own start
    residual: bool = False
    recipe: Optional[RecipeConfig] = None  # the base, and the paired reward's rival; None: default_recipe
    # two more action entries: start the cooldown now (its shape from the entry's size), and roll back
    # to the best snapshot so far (the budget spent is not refunded)
    schedule_actions: bool = False
    # envs/features.py; scale_free_anchored adds the run's scales on the recipe (residual only)
    features: Literal["basic", "scale_free", "scale_free_anchored"] = "basic"
    # paired: each decision's reward is its change in advantage over the base recipe's own run on the
    # same instance and batch seed, so an episode's return is its final advantage over the recipe
    reward: Literal["improvement", "paired"] = "improvement"
    # paired: training episodes draw their batch seed from this many, so the recipe's run of each
    # (instance, seed) is computed once and reused
    reference_seeds: int = Field(default=4, gt=0)
    # residual: the share of training episodes that start from a user's guess (the recipe's lr x a
    # factor drawn log-uniformly from 0.01 to 100) instead of the recipe's own lr
    user_guess_fraction: float = Field(default=0.0, ge=0, le=1)
    lr_log2_step: float = Field(default=1.0, gt=0)  # a full lr action multiplies by 2**this

    @model_validator(mode="after")
    def _anchored_needs_a_recipe(self) -> "ControlConfig":
        if self.features == "scale_free_anchored" and not self.residual:
            raise ValueError("features: scale_free_anchored observes the run against its recipe, which needs "
                             "residual: true")
        return self

    @property
    def enabled(self) -> bool:
        """Whether anything differs from the original controller's mechanics."""
        return self.residual or self.schedule_actions or self.features != "basic" or self.reward != "improvement"


class InstanceSetConfig(_Strict):
    """A whole environment setup: session, episode, actions, and train / held-out instances."""

    name: str
    session: SessionConfig = SessionConfig()
    episode: EpisodeConfig = EpisodeConfig()
    bounds: HparamBounds = HparamBounds()
    action: ActionConfig = ActionConfig()
    default_recipe: RecipeConfig = RecipeConfig()
    control: ControlConfig = ControlConfig()
    train: tuple[InstanceSpec, ...]
    heldout: tuple[InstanceSpec, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> "InstanceSetConfig":
        names = [i.name for i in self.train + self.heldout]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"instance names must be unique, repeated: {sorted(dup)}")
        if not self.train:
            raise ValueError("'train' needs at least one instance")
        deep = [i.name for i in self.train + self.heldout if i.trainable_layers is not None]
        if deep and not self.session.trainable_last_layers:
            raise ValueError(f"instances {deep} set trainable_layers, which needs session.trainable_last_layers "
                             "(the whole model trains otherwise)")
        for group, insts in (("train", self.train), ("heldout", self.heldout)):
            for k, inst in enumerate(insts):
                for hp in HPARAM_NAMES:
                    (lo, hi), (b_lo, b_hi) = getattr(inst, f"init_{hp}"), getattr(self.bounds, hp)
                    if hi < b_lo or lo > b_hi:  # every start would be clipped to one edge of the bounds
                        raise ValueError(f"{group}[{k}] ({inst.name}).init_{hp} {[lo, hi]} lies wholly outside "
                                         f"bounds.{hp} {[b_lo, b_hi]}")
        return self

    @property
    def base_recipe(self) -> RecipeConfig:
        """The recipe a residual controller corrects and a paired reward measures against."""
        return self.control.recipe or self.default_recipe

    def instance(self, name: str) -> InstanceSpec:
        for inst in self.train + self.heldout:
            if inst.name == name:
                return inst
        known = [i.name for i in self.train + self.heldout]
        raise ConfigError(f"no instance named {name!r} in instance set {self.name!r}; known: {known}")

    def pick_instance(self, name: Optional[str] = None) -> str:
        """The named instance, or the first held-out one when none is named."""
        if name:
            return self.instance(name).name
        if not self.heldout:
            raise ConfigError(f"instance set {self.name!r} has no held-out instances: name one with --instance")
        return self.heldout[0].name

    def steps_for(self, inst: InstanceSpec) -> int:
        return inst.total_steps or self.episode.total_steps

    def session_for(self, inst: InstanceSpec) -> SessionConfig:
        """The session an instance trains in: the set's, with the instance's trainable depth,
        adapter and gradient accumulation."""
        base = self.session_at_depth(inst.trainable_layers or self.session.trainable_last_layers)
        update: dict[str, Any] = {}
        if inst.lora is not None:
            update["lora"] = inst.lora
        if inst.gradient_accumulation_steps is not None:
            update["gradient_accumulation_steps"] = inst.gradient_accumulation_steps
        return base.model_copy(update=update) if update else base

    def session_at_depth(self, k: Optional[int]) -> SessionConfig:
        """The set's session with k trainable last layers."""
        if k == self.session.trainable_last_layers:
            return self.session
        return self.session.model_copy(update={"trainable_last_layers": k})


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {e['msg']}{got_text}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<dict>") -> InstanceSetConfig:
    """Validate a dict (e.g. loaded YAML plus overrides) into an InstanceSetConfig."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return InstanceSetConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def resolve_config_path(name_or_path: str | Path) -> Path:
    """'tiny' -> configs/tiny.yaml; a path is taken as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"{p}: no such config file")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no config named {name_or_path!r}: not a file, and not one of {known}")
    return candidate


def read_structured_file(path: str | Path, what: str = "file") -> Any:
    """A JSON (.json) or YAML file a command was pointed at. Missing, unreadable, not UTF-8 or
    malformed: a ConfigError that names the file and says which."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such {what}")
    try:
        size = p.stat().st_size
    except OSError as err:
        raise ConfigError(f"{p}: cannot be read ({err.strerror})") from None
    if size > 4 * MAX_STRUCTURED_CHARS:  # before reading it: a multi-gigabyte "config" is refused unread
        raise ConfigError(f"{p}: {size:,} bytes; a {what} of this project is under {MAX_STRUCTURED_CHARS:,} characters")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{p}: cannot be read ({err.strerror})") from None
    if len(text) > MAX_STRUCTURED_CHARS:
        raise ConfigError(f"{p}: {len(text):,} characters; a {what} of this project is under {MAX_STRUCTURED_CHARS:,}")
    if p.suffix == ".json":
        import json

        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{p}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
        except RecursionError:
            raise ConfigError(f"{p}: nested too deeply to be a {what} of this project") from None
    try:
        check_yaml_shape(text, p, what)
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(err).split())}") from None


MAX_STRUCTURED_CHARS = 8_000_000  # the largest file a command reads as config or JSON record
MAX_YAML_DEPTH = 64  # a config nests a handful of levels
MAX_YAML_NODES = 200_000  # values after aliases are expanded: a config holds a few thousand


def check_yaml_shape(text: str, path: Path, what: str) -> None:
    """Refuse hostile YAML before it is built: nesting deeper than MAX_YAML_DEPTH (PyYAML's
    composer recurses, so 10,000 levels end in RecursionError) and aliases that expand to more than
    MAX_YAML_NODES values (a "billion laughs" of a few hundred bytes). Reads the event stream,
    which is flat, and counts each anchor's expanded size once."""
    stack: list[list[Any]] = []  # open collections: [anchor, expanded size]
    sizes: dict[str, int] = {}
    total = 0

    def add(n: int) -> None:
        nonlocal total
        if stack:
            stack[-1][1] += n
        else:
            total += n
        if total + sum(s for _, s in stack) > MAX_YAML_NODES:
            raise ConfigError(f"{path}: expands to more than {MAX_YAML_NODES:,} values (aliases of aliases?); "
                              f"a {what} of this project holds a few thousand")

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_YAML_DEPTH:
                raise ConfigError(f"{path}: nested more than {MAX_YAML_DEPTH} levels deep (line "
                                  f"{event.start_mark.line + 1}); a {what} of this project nests a few")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, size = stack.pop()
            if anchor:
                sizes[anchor] = size
            add(size)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor:
                sizes[event.anchor] = 1
            add(1)
        elif isinstance(event, yaml.AliasEvent):
            add(sizes.get(event.anchor, 1))


def with_instance_file(data: Any, path: Path) -> Any:
    """A config's ``instances: {file: <yaml>, drop: [fields]}``: its train and held-out instances
    read from that file (relative to the config's folder), so that sets which differ only in how
    they train share one list of instances; ``drop`` leaves instance fields out (a GPU set where
    every layer trains drops ``trainable_layers``)."""
    if not isinstance(data, dict) or "instances" not in data:
        return data
    spec = data.pop("instances")
    where = f"{path}: instances"
    if not isinstance(spec, dict) or not isinstance(spec.get("file"), str) or set(spec) - {"file", "drop"}:
        raise ConfigError(f"{where}: expected {{file: <instance file>, drop: [fields]}}, got {spec!r}")
    drop = spec.get("drop") or []
    unknown = [f for f in drop if f not in InstanceSpec.model_fields] if isinstance(drop, list) else [drop]
    if unknown:
        raise ConfigError(f"{where}.drop: {unknown} are not instance fields ({', '.join(InstanceSpec.model_fields)})")
    if "train" in data or "heldout" in data:
        raise ConfigError(f"{where}: the config lists instances itself too; give them in one place")
    inst_path = path.parent / spec["file"]
    found = read_structured_file(inst_path, "instance file")
    if not isinstance(found, dict) or set(found) - {"train", "heldout"}:
        raise ConfigError(f"{inst_path}: expected a mapping with 'train' and 'heldout' lists")
    for group in ("train", "heldout"):
        insts = found.get(group) or []
        if not isinstance(insts, list):
            raise ConfigError(f"{inst_path}: {group}: expected a list of instances")
        data[group] = [{k: v for k, v in i.items() if k not in drop} if isinstance(i, dict) else i for i in insts]
    return data


def with_base_config(data: Any, path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """A config's ``extends: <yaml>``: that file (relative to this one's folder), with this one's
    keys merged over it, so a variant (an ablation, a controller's setup) states only what differs."""
    if not isinstance(data, dict) or "extends" not in data:
        return data
    base = data.pop("extends")
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: expected the file name of another config, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in seen + (path.resolve(),) or len(seen) > 8:
        raise ConfigError(f"{path}: extends: {base} extends itself, through {len(seen) + 1} files")
    base_data = read_structured_file(base_path, "config file")
    base_data = with_base_config(with_instance_file(base_data, base_path), base_path, seen + (path.resolve(),))
    if not isinstance(base_data, dict):
        raise ConfigError(f"{base_path}: expected a mapping at the top level (extended by {path})")
    return deep_merge(base_data, data)


def load_config(name_or_path: str | Path = "tiny", overrides: Optional[dict[str, Any]] = None) -> InstanceSetConfig:
    """Load a YAML instance set by name (configs/<name>.yaml) or path, with optional overrides."""
    path = resolve_config_path(name_or_path)
    data = with_base_config(with_instance_file(read_structured_file(path, "config file"), path), path)
    if overrides:
        data = deep_merge(data or {}, overrides)
    return parse_config(data, source=str(path))


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
