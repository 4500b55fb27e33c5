"""FineTuneSession: one real DeepSpeed engine for the life of the process.

It trains k steps, evaluates, sets hyperparameters mid-run, and snapshots / restores model +
optimizer + RNG in memory, so an environment reset costs milliseconds and never calls
``deepspeed.initialize`` again. The training step is the few lines of ``_train_step``: that is
where the learning rate, weight decay and clipping threshold a controller sets take effect.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Collection, Optional

import torch

from trainers.config import ConfigError, SessionConfig
from trainers.data import IGNORE, TaskData, TokenizedSplit
from trainers.models import check_seq_len


def resolve_device(cfg: SessionConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("session.device is 'cuda' but no CUDA device is visible")
    return cfg.device


def _import_deepspeed(device: str):
    # The accelerator is chosen when deepspeed is first imported; unset, it warns and guesses.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device == "cuda" else "cpu")
    import importlib

    import deepspeed
    from deepspeed.utils import logger as ds_logger

    # (not `import deepspeed.comm.torch as m`: deepspeed.comm's attribute `torch` is torch itself)
    ds_torch_comm = importlib.import_module("deepspeed.comm.torch")

    ds_logger.setLevel(logging.WARNING)
    # Every session is a one-process group, so DeepSpeed's shared-memory collective op (which only
    # speeds up all-reduce between processes on one CPU host) has nothing to do. Building it is a
    # C++ compile of one to twenty minutes on a 2-core machine; skip it.
    ds_torch_comm.build_shm_op = lambda: None
    return deepspeed


def ensure_process_group(device: str) -> None:
    """A single-process group on an in-memory store: no TCP rendezvous, no port to collide on."""
    import torch.distributed as dist

    for key, value in (("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)  # DeepSpeed's sanity check reads these even with a group
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


# cached states cost seq_len x hidden floats per example (147 KB for SmolLM2 at 64 tokens): a cap
# keeps a big user file from filling memory and disk
MAX_CACHED_TRAIN_EXAMPLES = 2000


@dataclass(frozen=True)
class Hparams:
    """The hyperparameters a controller or recipe sets; piecewise constant between decisions."""

    lr: float
    weight_decay: float
    grad_clip: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# one-run self-tuning optimizers, at the defaults their READMEs document, one configuration for
# every instance (the AlgoPerf self-tuning rules); lr and weight decay are theirs, not the controller's
SELF_TUNING = {
    # schedulefree 1.4.1 README: AdamWScheduleFree(lr=0.0025), betas (0.9, 0.999), no weight decay, no warmup
    "schedulefree_adamw": dict(lr=0.0025, betas=(0.9, 0.999), weight_decay=0.0, warmup_steps=0),
    # prodigyopt 1.1.2 README: lr=1.0 (it scales Prodigy's own step-size estimate), d_coef 1, no weight decay
    "prodigy": dict(lr=1.0, betas=(0.9, 0.999), weight_decay=0.0, d_coef=1.0, use_bias_correction=False,
                    safeguard_warmup=False),
}


def make_client_optimizer(cfg: SessionConfig, params: list, initial: Hparams) -> torch.optim.Optimizer:
    """The optimizer handed to ``deepspeed.initialize``. AdamW is torch's fused one: no op to
    compile, and on one CPU core a third of the unfused optimizer's time. The controller owns the
    schedule: no scheduler."""
    if cfg.optimizer == "schedulefree_adamw":
        import schedulefree

        return schedulefree.AdamWScheduleFree(params, **SELF_TUNING["schedulefree_adamw"])
    if cfg.optimizer == "prodigy":
        import prodigyopt

        return prodigyopt.Prodigy(params, **SELF_TUNING["prodigy"])
    return torch.optim.AdamW(params, lr=initial.lr, weight_decay=initial.weight_decay, fused=cfg.precision == "fp32")


def apply_hparams(engine, h: Hparams, no_decay_groups: Collection[int] = ()) -> None:
    """Set lr, weight decay and the clipping threshold on a live DeepSpeed engine, for its next step.
    Param groups whose index is in ``no_decay_groups`` (biases and norms, say) keep weight decay 0.

    lr and weight decay live in the optimizer's param groups (at every ZeRO stage). The clipping
    threshold lives in two places: the engine's config, which ZeRO 0 fp32 reads at each step, and
    ``optimizer.clip_grad``, which ZeRO 1/2 and the bf16 optimizers copy at construction and read
    from then on; both change. Do not give the engine a DeepSpeed ``scheduler``: it would
    overwrite lr every step, and whoever calls this owns the schedule.
    """
    for i, group in enumerate(engine.optimizer.param_groups):
        group["lr"] = float(h.lr)
        group["weight_decay"] = 0.0 if i in no_decay_groups else float(h.weight_decay)
    engine._config.gradient_clipping = float(h.grad_clip)
    if hasattr(engine.optimizer, "clip_grad"):
        engine.optimizer.clip_grad = float(h.grad_clip)


def engine_hparams(engine) -> Hparams:
    """What the optimizer will use on the next step, read back from the engine (not remembered)."""
    g = engine.optimizer.param_groups[0]
    return Hparams(float(g["lr"]), float(g["weight_decay"]), float(engine._config.gradient_clipping))


@dataclass(frozen=True)
class StepMetrics:
    step: int
    loss: float
    grad_norm: float  # before clipping
    lr: float
    tokens: int
    seconds: float
    clipped: bool


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean per-token cross-entropy
    metric: Optional[float]  # e.g. exact-match accuracy
    metric_name: Optional[str]
    seconds: float


@dataclass
class Snapshot:
    module: dict[str, torch.Tensor]
    optimizer: Any
    torch_rng: torch.Tensor
    data_rng: torch.Tensor
    step: int
    data: Optional[TaskData]
    grad_clip: float
    grad_accumulation: int = 1  # a restore brings the batch size back with the rest


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone(v) for v in obj)
    return obj


def _check_depth(k: int, total: int, allow_all: bool = False) -> None:
    """A trainable depth the model has (a frozen prefix needs at least one frozen layer)."""
    top = total if allow_all else total - 1
    if not 1 <= k <= top:
        raise ConfigError(f"session.trainable_last_layers (an instance's trainable_layers): must be between 1 and "
                          f"{top} for this model ({total} layers), got {k}")


def _find_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The transformer blocks of a Llama-, GPT-2- or GPT-NeoX-style model, and where they sit."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        obj: Any = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return path, obj
        except AttributeError:
            continue
    raise ConfigError("session.trainable_last_layers: cannot find the transformer blocks of this model")


def _freeze_all_but_last(model: torch.nn.Module, n: int) -> None:
    """Only the last n transformer blocks (and the final norm) train: big models on small machines."""
    _, blocks = _find_blocks(model)
    _check_depth(n, len(blocks), allow_all=True)
    for p in model.parameters():
        p.requires_grad_(False)
    for block in list(blocks)[-n:]:
        for p in block.parameters():
            p.requires_grad_(True)
    for name in ("model.norm", "transformer.ln_f"):
        obj = model
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
            for p in obj.parameters():
                p.requires_grad_(True)
        except AttributeError:
            pass


def _add_adapters(module: torch.nn.Module, cfg: SessionConfig, is_tail: bool) -> None:
    """LoRA on the layers that would otherwise train: every layer of a tail, the last k blocks of a
    whole model (trainable_last_layers), or all of its blocks."""
    from trainers.adapters import add_lora

    within = None
    if not is_tail and cfg.trainable_last_layers:
        path, blocks = _find_blocks(module)
        _check_depth(cfg.trainable_last_layers, len(blocks), allow_all=True)
        within = [f"{path}.{i}" for i in range(len(blocks) - cfg.trainable_last_layers, len(blocks))]
    add_lora(module, cfg.lora, within)


class FineTuneSession:
    """One DeepSpeed engine; data and hyperparameters change, the engine does not."""

    def __init__(self, cfg: SessionConfig, initial: Hparams = Hparams(1e-3, 0.01, 1.0)) -> None:
        from trainers.models import load_model_and_tokenizer

        self.cfg = cfg
        self.device = resolve_device(cfg)
        torch.set_num_threads(cfg.torch_threads)
        deepspeed = _import_deepspeed(self.device)
        ensure_process_group(self.device)
        model, self.tokenizer = load_model_and_tokenizer(cfg.model)
        check_seq_len(cfg, model.config)
        self._prefix_model: Optional[torch.nn.Module] = None
        if cfg.frozen_prefix:  # train a tail on cached states of the frozen layers (trainers/frozen_prefix.py)
            from trainers.frozen_prefix import CausalLMTail, build_tail, n_layers
            from trainers.models import frozen_model

            if not hasattr(getattr(model, "model", None), "layers"):
                raise ConfigError(f"session.frozen_prefix: needs a Llama-style model (model.layers); "
                                  f"{cfg.model!r} is a {type(model).__name__}")
            k = int(cfg.trainable_last_layers or 0)
            _check_depth(k, n_layers(model))
            self.n_prefix_layers = n_layers(model) - k
            module = CausalLMTail(build_tail(model, k))  # copies: the loaded model stays as it was
            self._prefix_model = frozen_model(cfg.model, loaded=model)  # shared, read-only: caches new data's states
        else:
            if cfg.trainable_last_layers and cfg.lora is None:
                _freeze_all_but_last(model, cfg.trainable_last_layers)
            module = model
        if cfg.lora is not None:  # adapters on the trainable layers; only they train
            _add_adapters(module, cfg, is_tail=cfg.frozen_prefix)
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "gradient_clipping": initial.grad_clip,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": cfg.precision == "bf16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = make_client_optimizer(cfg, params, initial)
        self.self_tuning = cfg.optimizer in SELF_TUNING
        self.engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)
        if cfg.zero_stage == 0 and deepspeed.comm.get_world_size() == 1:
            # one rank: the gradient all-reduce is the identity, but DeepSpeed still flattens and
            # copies every gradient to do it (7% of a CPU step). ZeRO >= 1 reduces inside its optimizer.
            self.engine.enable_backward_allreduce = False
        self._client_optimizer = optimizer
        self._params = params
        # frozen weights never change: snapshots leave them out (an embedding is most of a small model)
        frozen_ptrs = {p.data_ptr() for p in self.engine.module.parameters() if not p.requires_grad}
        state = self.engine.module.state_dict()
        self._frozen_keys = frozenset(k for k, v in state.items() if v.data_ptr() in frozen_ptrs)
        self._snapshot_keys = frozenset(state) - self._frozen_keys
        self._data: Optional[TaskData] = None
        self._data_rng = torch.Generator().manual_seed(0)
        self.step_count = 0
        self.set_hparams(initial)
        self._base = self.snapshot()

    # ------------------------------------------------------------ batch
    @property
    def gradient_accumulation_steps(self) -> int:
        return int(self.engine.gradient_accumulation_steps())

    def set_gradient_accumulation(self, n: int) -> None:
        """Micro-batches per optimizer step from the next step on: DeepSpeed's own way of changing
        the global batch of a live engine, so instances that differ only in it share the engine."""
        if n < 1:
            raise ValueError(f"gradient accumulation steps must be >= 1, got {n}")
        self.engine.set_train_batch_size(self.cfg.micro_batch_size * n)

    # ------------------------------------------------------------ hyperparameters
    def set_hparams(self, h: Hparams) -> None:
        if self.self_tuning:  # it owns lr and weight decay; only the clipping threshold is ours
            current = self.hparams()
            h = Hparams(current.lr, current.weight_decay, h.grad_clip)
        apply_hparams(self.engine, h)

    def _optimizer_mode(self, train: bool) -> None:
        """Schedule-Free evaluates at its averaged weights: ``eval()`` swaps them in, ``train()``
        back. Called on the optimizer object that holds them (at ZeRO 0 fp32, the model's own)."""
        mode = getattr(self._client_optimizer, "train" if train else "eval", None)
        if self.cfg.optimizer == "schedulefree_adamw" and mode is not None:
            mode()

    def hparams(self) -> Hparams:
        return engine_hparams(self.engine)

    # ------------------------------------------------------------ the trainable weights
    def trainable_count(self) -> int:
        """How many weights train (the adapters' alone, under LoRA)."""
        return sum(p.numel() for p in self._params)

    @torch.no_grad()
    def trainable_views(self) -> list[torch.Tensor]:
        """The trainable weights as they are now, in fp32 (read-only use: a view where they are fp32)."""
        return [p.detach().float() for p in self._params]

    @torch.no_grad()
    def trainable_weights(self) -> list[torch.Tensor]:
        """A copy of the trainable weights in fp32: to measure how far a stretch of training moves them."""
        return [p.detach().float().clone() for p in self._params]

    # ------------------------------------------------------------ data
    def prepare(self, data: TaskData, other_depths: Collection[int] = ()) -> TaskData:
        """What this session trains on: the data as tokenised, plus, when only a tail trains, the
        frozen layers' states for every split (computed once, then read from the artifact cache).
        other_depths: trainable depths other sessions will ask of the same data; their states are
        cached in the same pass."""
        if self._prefix_model is None:
            return data
        from trainers.frozen_prefix import cached_prefix_states
        from trainers.models import model_identity

        model_id = model_identity(self.cfg.model)
        splits = {}
        for name in ("train", "validation", "test"):
            split = data.split(name)
            if name == "train" and len(split) > MAX_CACHED_TRAIN_EXAMPLES:
                logging.getLogger(__name__).warning(
                    "%s: caching the frozen layers of the first %d of %d training examples (about %.0f KB each)",
                    data.name, MAX_CACHED_TRAIN_EXAMPLES, len(split),
                    split.input_ids.shape[1] * self._prefix_model.config.hidden_size * 4 / 1024)
                split = split.take(MAX_CACHED_TRAIN_EXAMPLES)
            total = self.n_prefix_layers + int(self.cfg.trainable_last_layers or 0)
            states = cached_prefix_states(self._prefix_model, model_id, split, self.n_prefix_layers,
                                          desc=f"caching frozen layers: {data.name}/{name}",
                                          also_at=[total - k for k in other_depths])
            splits[name] = split.with_prefix_states(states)
        return TaskData(data.name, splits["train"], splits["validation"], splits["test"], data.metric)

    def use_data(self, data: TaskData, seed: int) -> None:
        self._data = data
        self._data_rng.manual_seed(seed)

    @property
    def data(self) -> TaskData:
        if self._data is None:
            raise RuntimeError("no task data: call use_data() first")
        return self._data

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.engine.device, non_blocking=True)

    # ------------------------------------------------------------ training
    def _grad_norm_from_params(self) -> float:
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return float("nan")
        # one fused foreach kernel (what clip_grad_norm_ uses), not two small ops per parameter
        return float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))

    def engine_inputs(self, batch: TokenizedSplit, labels: bool = True) -> dict[str, torch.Tensor]:
        """What ``engine(**inputs)`` takes for a batch: tokens, or the cached states of a tail,
        cut after the batch's last real token (TokenizedSplit.trimmed)."""
        batch = batch.trimmed()
        if self._prefix_model is not None:
            if batch.prefix_states is None:
                raise RuntimeError("this session trains a tail: give it data from session.prepare()")
            return {"prefix_states": self._to_device(batch.prefix_states),
                    "attention_mask": self._to_device(batch.attention_mask), "labels": self._to_device(batch.labels)}
        return {"input_ids": self._to_device(batch.input_ids), "attention_mask": self._to_device(batch.attention_mask),
                **({"labels": self._to_device(batch.labels)} if labels else {})}

    def _forward(self, batch: TokenizedSplit, labels: bool = True):
        return self.engine(**self.engine_inputs(batch, labels))

    def _train_step(self, micro_batches: list[TokenizedSplit]) -> tuple[float, float]:
        """One optimizer step over the micro-batches: DeepSpeed scales each backward by
        1 / accumulation steps and steps the optimizer at the boundary, which is set explicitly
        (not left to its micro-step counter, which a snapshot restore or a change of accumulation
        would put out of phase)."""
        losses = []
        for j, batch in enumerate(micro_batches):
            self.engine.set_gradient_accumulation_boundary(j == len(micro_batches) - 1)
            out = self._forward(batch)
            self.engine.backward(out.loss)
            losses.append(float(out.loss.detach()))
        # fp32 ZeRO 0 clips param.grad in place inside step(): read the norm first. ZeRO and bf16
        # optimizers compute the pre-clip norm themselves and expose it after step().
        norm = self._grad_norm_from_params() if self._reads_param_grads else None
        self.engine.step()  # clipping at the configured threshold, then AdamW with the set lr / wd
        if norm is None:
            g = self.engine.get_global_grad_norm()
            norm = float(g) if g is not None else float("nan")
        return sum(losses) / len(losses), norm

    @property
    def _reads_param_grads(self) -> bool:
        return self.cfg.zero_stage == 0 and self.cfg.precision == "fp32"

    def train(self, k: int) -> list[StepMetrics]:
        """k optimizer steps on random training batches; per-step metrics. A step's batch of
        micro_batch_size x accumulation examples is drawn at once, then cut into micro-batches,
        so accumulating 4 micro-batches of 8 sees exactly the examples one batch of 32 would."""
        data = self.data.train
        self.engine.train()
        self._optimizer_mode(train=True)
        out: list[StepMetrics] = []
        clip = self.engine._config.gradient_clipping
        micro, gas = self.cfg.micro_batch_size, self.gradient_accumulation_steps
        for _ in range(k):
            t0 = time.perf_counter()
            idx = torch.randint(0, len(data), (micro * gas,), generator=self._data_rng)
            batches = [data.select(idx[j * micro:(j + 1) * micro]) for j in range(gas)]
            loss, norm = self._train_step(batches)
            self.step_count += 1
            out.append(
                StepMetrics(
                    step=self.step_count,
                    loss=loss,
                    grad_norm=norm,
                    lr=float(self.engine.optimizer.param_groups[0]["lr"]),
                    tokens=sum(int(b.attention_mask.sum()) for b in batches),
                    seconds=time.perf_counter() - t0,
                    clipped=bool(math.isfinite(norm) and norm > clip),
                )
            )
        return out

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "validation") -> EvalResult:
        """Token-weighted mean loss; exact match = greedy decoding reproduces the whole answer,
        which (teacher-forced) is every answer token being the argmax: one forward pass."""
        t0 = time.perf_counter()
        data = self.data.split(split)
        self.engine.eval()
        self._optimizer_mode(train=False)
        total_loss, total_tokens, hits = 0.0, 0, 0
        bs = self.cfg.micro_batch_size * 2
        for s in range(0, len(data), bs):
            batch = data.select(slice(s, s + bs)).trimmed()
            if self._prefix_model is not None:  # logits only where there are labels
                out = self._forward(batch)
                loss = torch.nn.functional.cross_entropy(out.logits.float(), out.targets, reduction="sum")
                correct = torch.ones_like(out.label_mask)
                correct[out.label_mask] = out.logits.argmax(-1) == out.targets
                valid = out.label_mask
            else:
                logits = self._forward(batch, labels=False).logits[:, :-1].float()
                target = self._to_device(batch.labels)[:, 1:]
                valid = target != IGNORE
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
                )
                correct = (logits.argmax(-1) == target) | ~valid
            total_loss += float(loss)
            total_tokens += int(valid.sum())
            if self.data.metric == "exact_match":
                hits += int(correct.all(dim=1).sum())
        self.engine.train()
        mean = total_loss / max(total_tokens, 1)
        metric = hits / len(data) if self.data.metric == "exact_match" else None
        return EvalResult(mean, metric, self.data.metric, time.perf_counter() - t0)

    # ------------------------------------------------------------ snapshots
    def _module_state(self) -> dict[str, torch.Tensor]:
        """The module's state without its frozen weights (which no step changes)."""
        return {k: v for k, v in self.engine.module.state_dict().items() if k not in self._frozen_keys}

    def snapshot(self) -> Snapshot:
        return Snapshot(
            module=_clone(self._module_state()),
            optimizer=_clone(self.engine.optimizer.state_dict()),
            torch_rng=torch.get_rng_state(),
            data_rng=self._data_rng.get_state(),
            step=self.step_count,
            data=self._data,
            grad_clip=float(self.engine._config.gradient_clipping),
            grad_accumulation=self.gradient_accumulation_steps,
        )

    def restore(self, snap: Snapshot, rng: bool = True) -> None:
        """Clone again on the way in: optimizers keep the tensors they are given and update them
        in place, which would otherwise corrupt the snapshot for the next restore. ``rng`` False
        keeps the random streams (batch order, dropout) where they are: a rollback goes on to new
        batches instead of replaying the ones it saw."""
        # checked before anything is loaded: a refused snapshot leaves the session as it was
        missing = self._snapshot_keys - snap.module.keys()
        unexpected = snap.module.keys() - self._snapshot_keys - self._frozen_keys
        if missing or unexpected:  # only frozen weights may be left out of a snapshot
            raise ValueError(f"snapshot does not fit this session: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        self.engine.module.load_state_dict(snap.module, strict=False)
        opt = self.engine.optimizer
        if "load_from_fp32_weights" in inspect.signature(opt.load_state_dict).parameters:
            # ZeRO 1/2 and BF16_Optimizer: a list of per-rank dicts; restore the fp32 master weights too
            opt.load_state_dict([_clone(snap.optimizer)], load_from_fp32_weights=True)
        else:  # torch optimizers, and DeepSpeed's unfused bf16 wrapper (its dict carries the fp32 masters)
            opt.load_state_dict(_clone(snap.optimizer))
        if rng:
            torch.set_rng_state(snap.torch_rng)
            self._data_rng.set_state(snap.data_rng)
        self.step_count = snap.step
        self._data = snap.data
        if snap.grad_accumulation != self.gradient_accumulation_steps:
            self.set_gradient_accumulation(snap.grad_accumulation)
        h = self.hparams()  # lr and weight decay came back with the optimizer state; clip did not
        self.set_hparams(Hparams(h.lr, h.weight_decay, snap.grad_clip))

    def reset_to_base(self, seed: int) -> None:
        """Back to the model as loaded, with fresh optimizer state; seeds dropout and batch order."""
        data = self._data
        self.restore(self._base)
        self._data = data
        torch.manual_seed(seed)
        self._data_rng.manual_seed(seed)
        self.step_count = 0

    def save_model(self, folder: str) -> None:
        """A Hugging Face folder of the whole fine-tuned model (a trained tail is merged back into a
        copy of the full model: its layers, final norm; the frozen layers as loaded)."""
        import copy

        model = self.engine.module
        if self.cfg.lora is not None:  # adapters folded into a copy of the weights: a plain HF model
            from trainers.adapters import merge_lora

            model = merge_lora(copy.deepcopy(model))
        if self._prefix_model is not None:
            from trainers.frozen_prefix import merge_tail

            model = merge_tail(copy.deepcopy(self._prefix_model), model.tail)
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def close(self) -> None:
        self.engine.destroy()
