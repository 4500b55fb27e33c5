"""FineTuneEnv: a Gymnasium environment around one real DeepSpeed fine-tuning episode.

reset: restore the base snapshot, pick an instance, draw initial hyperparameters, evaluate.
step:  apply hyperparameter deltas, train one decision interval, evaluate, reward the improvement.
The return of an episode is its total eval-loss improvement relative to the starting eval loss.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.actions import ActionMap
from envs.control import ControlActions, ControlledSchedule, action_map_for  # noqa: F401 (re-exported)
from envs.features import (OBS_HIGH, OBS_LOW, RunContext, UpdateStats, feature_names, is_scale_free, observe,
                           observe_scale_free, weight_update)
from trainers.config import InstanceSetConfig, InstanceSpec, SessionConfig, load_config, parse_config
from trainers.data import TaskData, build_task_data
from trainers.schedules import recipe_schedule
from trainers.session import EvalResult, FineTuneSession, Hparams, StepMetrics


def eval_outcome(eval_loss: float, new_loss: float, initial_loss: float, divergence_factor: float,
                 steps_finite: bool) -> tuple[bool, float, float]:
    """After a decision interval's evaluation: (diverged, last eval change, eval loss to keep). A
    non-finite step or loss, or a loss above divergence_factor x the start, is divergence: the
    change is 0 and the last good loss is kept. Shared with a controller in a user's loop
    (agents/integrations/stepped.py), so the two observe alike."""
    if not steps_finite or not math.isfinite(new_loss) or new_loss > divergence_factor * initial_loss:
        return True, 0.0, eval_loss
    return False, eval_loss - new_loss, new_loss


@dataclass
class EpisodeLog:
    """Everything that happened in one episode: enough to plot, log and replay it."""

    instance: str
    seed: Optional[int]
    initial_eval_loss: float
    schedule: list[dict[str, float]] = field(default_factory=list)  # one entry per training step
    train_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    eval_curve: list[tuple[int, float]] = field(default_factory=list)  # (steps done, eval loss)
    rewards: list[float] = field(default_factory=list)  # one per decision interval
    diverged: bool = False
    test_loss: Optional[float] = None
    initial_test_loss: Optional[float] = None  # the base model's, for scoring diverged runs
    test_metric: Optional[float] = None
    metric_name: Optional[str] = None
    initial_hparams: Optional[dict[str, float]] = None  # the start set at reset, before any action
    control_events: list[dict[str, Any]] = field(default_factory=list)  # rollbacks, cooldowns (envs/control.py)
    # under control: the scales on the base schedule at the start and after each decision (lr, wd, clip)
    start_scales: Optional[list[float]] = None
    scales: list[list[float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# Engines an environment keeps alive at once. A SmolLM2 tail engine holds a copy of the tied
# embedding and its k layers' weights, gradients and AdamW moments beside one shared frozen model:
# 247 / 375 / 665 MiB for k = 2 / 4 / 8, 123-230 MiB for LoRA on 4 layers, after 1.1 GiB for the
# first (python -m trainers.bench_engines). smollm2_wide's 8 configurations fit; a family with more
# rebuilds the least recently used engine (deepspeed.initialize: about a second) when it comes back.
MAX_ENGINES = 8


def engine_config(cfg: SessionConfig) -> SessionConfig:
    """What decides an engine: everything but gradient accumulation, which a live engine changes."""
    return cfg.model_copy(update={"gradient_accumulation_steps": 1})


def seeded_session_seed(seed: int) -> int:
    """The batch-and-dropout seed a reset seeded with ``seed`` gives its session (its stream's first
    draw), so an unseeded episode can train on the same batches as a seeded run."""
    from gymnasium.utils import seeding

    return int(seeding.np_random(seed)[0].integers(2**31 - 1))


USER_GUESS_FACTOR = (0.01, 100.0)  # a user's guess at the lr is often off by 10-100x either way


def user_guess_start(lr: float, log_uniform) -> float:
    """A "user's guess" start: ``lr`` (e.g. the recipe tuned once on the training instances) times a
    factor drawn log-uniformly from USER_GUESS_FACTOR by ``log_uniform(lo, hi)``; the reset clips
    the result to the hard bounds, as it clips every start."""
    return lr * log_uniform(*USER_GUESS_FACTOR)


class FineTuneEnv(gym.Env):
    """Observe the run, set hyperparameters, get rewarded for validation improvement."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        config: str | InstanceSetConfig | dict = "tiny",
        split: str = "train",
        instance_order: str = "cycle",
        evaluate_test: bool = False,
        session: Optional[FineTuneSession | dict[Optional[int], FineTuneSession]] = None,
        overrides: Optional[dict] = None,
        user_guess_lr: Optional[float] = None,
        references: Optional[Any] = None,
    ) -> None:
        """session: an engine to share (for the set's own session), or a dict of them by engine
        configuration (``env.sessions`` of another environment); missing ones are built on first use.
        user_guess_lr: "user's guess" starts (``user_guess_start``) around this lr on every reset,
        e.g. the transferred recipe's; a reset's ``options={"user_guess_lr": ...}`` sets it per episode.
        references: where the base recipe's own runs are kept for the paired reward (control.reward
        'paired'; an envs.episode.ReferenceRuns); without them the reward is the validation
        improvement, as for every environment that only runs methods (info["reward_kind"] says)."""
        if user_guess_lr is not None and not (math.isfinite(user_guess_lr) and user_guess_lr > 0):
            raise ValueError(f"user_guess_lr must be a positive number, got {user_guess_lr!r}")
        self.user_guess_lr = user_guess_lr
        if isinstance(config, InstanceSetConfig):
            self.cfg = config
        elif isinstance(config, dict):
            self.cfg = parse_config(config)
        else:
            self.cfg = load_config(config, overrides)
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
        self.instances: tuple[InstanceSpec, ...] = {
            "train": self.cfg.train,
            "heldout": self.cfg.heldout,
            "all": self.cfg.train + self.cfg.heldout,
        }[split]
        if not self.instances:
            raise ValueError(f"instance set {self.cfg.name!r} has no {split!r} instances")
        if instance_order not in ("cycle", "sample"):
            raise ValueError(f"instance_order must be 'cycle' or 'sample', got {instance_order!r}")
        self.instance_order = instance_order
        self.evaluate_test = evaluate_test
        # one engine per engine configuration the instances use (depth, adapter; most sets use one)
        self._engine_cfg = engine_config(self.cfg.session)
        self._built: set[SessionConfig] = set()  # the engines this environment built (and may close)
        if isinstance(session, dict):
            self.sessions: dict[SessionConfig, FineTuneSession] = session
        else:
            self.sessions = {self._engine_cfg: session} if session is not None else {}
        self.session  # the set's default engine is built now, as before any reset
        self.actions = ActionMap(self.cfg.action, self.cfg.bounds)
        control = self.cfg.control
        self.controlled = control.enabled  # else the original mechanics, unchanged
        self.action_map: ActionMap | ControlActions = action_map_for(self.cfg)
        self.action_space = self.action_map.space
        self.feature_names = feature_names(control.features)
        self.observation_space = spaces.Box(OBS_LOW, OBS_HIGH, shape=(len(self.feature_names),), dtype=np.float32)
        self.references = references if control.reward == "paired" else None
        self._in_reference = False
        self.schedule: Optional[ControlledSchedule] = None
        self._data: dict[str, TaskData] = {}
        self._pools: dict[tuple[str, Optional[int]], TaskData] = {}  # by (dataset, trainable depth)
        self._initial_eval: dict[str, EvalResult] = {}
        self._initial_test: dict[str, EvalResult] = {}
        self._cycle = self._cycle_start = 0
        self.log: Optional[EpisodeLog] = None

    # ------------------------------------------------------------ helpers
    def first_instance(self, index: int) -> None:
        """Start the cycle at another instance (parallel envs cover different instances)."""
        self._cycle = self._cycle_start = index

    @property
    def session(self) -> FineTuneSession:
        """The engine of the current instance's configuration (its trainable depth and adapter)."""
        if self._engine_cfg not in self.sessions:
            self.sessions[self._engine_cfg] = FineTuneSession(self._engine_cfg)
            self._built.add(self._engine_cfg)
        return self.sessions[self._engine_cfg]

    def _use_engine(self, cfg: SessionConfig) -> None:
        """Switch to the engine for ``cfg``, closing the least recently used ones beyond
        MAX_ENGINES (each holds its trainable weights, their gradients and AdamW state)."""
        self._engine_cfg = engine_config(cfg)
        if self._engine_cfg in self.sessions:  # most recently used goes last
            self.sessions[self._engine_cfg] = self.sessions.pop(self._engine_cfg)
        # only engines this environment built: one passed in, or shared with another environment
        # that may be mid-episode on it, is its owner's to close
        while len(self.sessions) >= MAX_ENGINES and self._engine_cfg not in self.sessions:
            oldest = next((k for k in self.sessions if k in self._built), None)
            if oldest is None:
                break
            self._built.discard(oldest)
            self.sessions.pop(oldest).close()

    @property
    def engine(self):
        """The live deepspeed.DeepSpeedEngine."""
        return self.session.engine

    def task_data(self, inst: InstanceSpec) -> TaskData:
        """The instance's splits, tokenised (and, for a frozen-prefix session, with the frozen
        layers' states); built once per dataset and trainable depth, then cut to the instance's
        train_examples."""
        if inst.name not in self._data:
            ep = self.cfg.episode
            key = (inst.dataset.model_dump_json(), self.cfg.session_for(inst).trainable_last_layers)
            if key not in self._pools:
                data = build_task_data(inst.name, inst.dataset, self.session.tokenizer, self.cfg.session.seq_len,
                                       ep.eval_examples, ep.test_examples)
                self._pools[key] = self.session.prepare(data, self._depths_of(inst.dataset))
            pool = self._pools[key]
            train = pool.train.take(inst.train_examples) if inst.train_examples else pool.train
            self._data[inst.name] = TaskData(inst.name, train, pool.validation, pool.test, pool.metric)
        return self._data[inst.name]

    def _depths_of(self, dataset) -> list[int]:
        """The trainable depths that the set's instances on this dataset use: cached in one pass."""
        return sorted({self.cfg.session_for(i).trainable_last_layers or 0
                       for i in self.cfg.train + self.cfg.heldout if i.dataset == dataset} - {0})

    def _choose(self, options: dict) -> InstanceSpec:
        if options.get("instance"):
            return self.cfg.instance(options["instance"])
        if self.instance_order == "sample":
            return self.instances[int(self.np_random.integers(len(self.instances)))]
        inst = self.instances[self._cycle % len(self.instances)]
        self._cycle += 1
        return inst

    def _draw_initial(self, inst: InstanceSpec, seed: Optional[int], user_guess_lr: Optional[float] = None) -> Hparams:
        """A seeded reset draws from (seed, instance name), so every instance and seed has its own
        start (runs that share a seed are not copies of one draw); an unseeded one continues the
        environment's stream. With ``user_guess_lr`` the lr is that lr times a factor drawn after
        the instance's own three draws (so weight decay and clipping are the same either way)."""
        rng = (np.random.default_rng([seed, zlib.crc32(inst.name.encode())]) if seed is not None
               else self.np_random)

        def log_uniform(lo: float, hi: float) -> float:
            return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

        drawn = Hparams(log_uniform(*inst.init_lr), log_uniform(*inst.init_weight_decay),
                        log_uniform(*inst.init_grad_clip))
        if user_guess_lr is None:
            return drawn
        return Hparams(user_guess_start(user_guess_lr, log_uniform), drawn.weight_decay, drawn.grad_clip)

    def _obs(self, steps: Sequence[StepMetrics]) -> np.ndarray:
        if is_scale_free(self.cfg.control.features):
            sched = self.schedule
            at = min(self.steps_done, self.total_steps - 1)
            peak = max(h.lr for h in sched.base)
            return observe_scale_free(
                self.steps_done / self.total_steps, sched.lr_at_bound(at),
                sched.log2_corrections(), sched.base_lr(at) / peak, sched.cooldown_start is not None,
                steps, self._update, self._first_grad_norm, self.eval_loss, self.initial_eval.loss,
                self.last_eval_change, self._best_eval, self.run_context(), self._recipe_log2_scales())
        return observe(
            self.steps_done / self.total_steps, self.session.hparams(), self.cfg.bounds, steps,
            self.eval_loss, self.initial_eval.loss, self.last_eval_change,
        )

    def _recipe_log2_scales(self) -> Optional[list[float]]:
        """Where the run stands against its recipe (the anchored observation only)."""
        if self.cfg.control.features != "scale_free_anchored":
            return None
        return self.schedule.recipe_log2_scales()

    def run_context(self) -> RunContext:
        """What a practitioner knows about the current run before it starts."""
        s = self.cfg.session_for(self.instance)
        return RunContext(self.session.trainable_count(), s.lora.rank if s.lora else 0,
                          s.micro_batch_size * s.gradient_accumulation_steps, self.total_steps,
                          len(self.task_data(self.instance).train))

    # ------------------------------------------------------------ control (envs/control.py)
    def _controlled_schedule(self, drawn: Hparams, start: Optional[str]) -> ControlledSchedule:
        """Residual: the base recipe over this instance's budget, its lr scaled by the start (1 for
        the recipe's own, the guess's factor for a user's guess). Otherwise the drawn start held."""
        if self.cfg.control.residual:
            recipe = self.cfg.base_recipe
            base = recipe_schedule(recipe, self.total_steps, min_lr=self.cfg.bounds.lr[0])
            scales = np.array([drawn.lr / recipe.lr if start == "user_guess" else 1.0, 1.0, 1.0])
        else:
            base, scales = [self.actions.clip(drawn)] * self.total_steps, np.ones(3)
        sched = ControlledSchedule(base, self.cfg.bounds)
        sched.start_at(scales)
        return sched

    def _run_state_reset(self) -> None:
        """What the control keeps within one episode: the best validation so far (and, with
        schedule actions, its snapshot), and the weights' last change."""
        control = self.cfg.control
        self._rollback_due = False
        self._best_eval = self.eval_loss
        self._keeps_best = self.controlled and control.schedule_actions
        self._best_snapshot = self.session.snapshot() if self._keeps_best else None
        self._snapshot_eval = self.eval_loss  # the validation loss the snapshot was taken at
        self._watch_weights = is_scale_free(control.features)
        self._update, self._last_delta, self._first_grad_norm = UpdateStats(), None, None

    def _roll_back(self) -> None:
        """Back to the best validation's snapshot. The batch stream goes on (new batches, not the
        ones already seen), and the steps spent stay spent."""
        self._rollback_due = False
        self.session.restore(self._best_snapshot, rng=False)
        self.eval_loss, self.last_eval_change = self._snapshot_eval, 0.0
        self.log.control_events.append({"step": self.steps_done, "event": "rollback",
                                        "to_eval_loss": self._snapshot_eval})

    def _note_update(self, before: list) -> None:
        """The interval's weight change relative to the weights, and its cosine with the last one."""
        self._update, self._last_delta = weight_update(before, self.session.trainable_views(), self._last_delta)

    def _reference_curve(self, inst: InstanceSpec, seed: int) -> list[float]:
        """The base recipe's validation losses at each decision on (instance, batch seed), from
        ``references`` (envs.episode.ReferenceRuns: kept, or run once through this environment's
        own episode loop); the episode stream is left as it was."""
        stream, seed_of_stream, cycle = self._np_random, self._np_random_seed, self._cycle
        self._in_reference = True
        try:
            return self.references.curve(self, inst.name, seed)
        finally:
            self._in_reference = False
            self._np_random, self._np_random_seed, self._cycle = stream, seed_of_stream, cycle

    def _reference_at(self, k: int) -> float:
        """The recipe's kept validation loss at decision k (its last, past a run it ended early)."""
        return self.reference[min(k, len(self.reference) - 1)]

    # ------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        if seed is not None:  # a seeded reset restarts the instance cycle: same seed, same episode
            self._cycle = self._cycle_start
        options = options or {}
        t0 = time.perf_counter()
        self.instance = self._choose(options)
        # paired reward: the batch seed (a seed of the reference pool in training) and the base recipe's
        # own run on it, computed first (it runs an episode of its own) and then kept
        self.batch_seed, self.reference = seed, None
        if self.references is not None and not self._in_reference:
            if seed is None:
                self.batch_seed = int(self.np_random.integers(self.cfg.control.reference_seeds))
            self.reference = self._reference_curve(self.instance, self.batch_seed)
            t0 = time.perf_counter()  # the reset's own time, without the recipe's run
        session_cfg = self.cfg.session_for(self.instance)
        self._use_engine(session_cfg)
        self.total_steps = self.cfg.steps_for(self.instance)
        guess = options.get("user_guess_lr", self.user_guess_lr)
        start = options.get("start")
        if start not in (None, "recipe", "user_guess"):
            raise ValueError(f"reset option start must be 'recipe' or 'user_guess', got {start!r}")
        if self.cfg.control.residual:  # the base recipe's lr, or a user's guess at it
            if start is None:
                start = "user_guess" if seed is None and self.np_random.random() < self.cfg.control.user_guess_fraction \
                    else "recipe"
            guess = self.cfg.base_recipe.lr if start == "user_guess" else None
        if guess is not None and not (isinstance(guess, (int, float)) and math.isfinite(guess) and guess > 0):
            raise ValueError(f"reset option user_guess_lr must be a positive number, got {guess!r}")
        # drawn even when given: the seed stream stays the same
        drawn = self._draw_initial(self.instance, seed, float(guess) if guess is not None else None)
        if self.controlled:
            self.schedule = self._controlled_schedule(drawn, start)
            drawn = self.schedule.hparams_at(0)
        initial = options.get("initial_hparams")
        hp = Hparams(**initial) if isinstance(initial, dict) else (initial or drawn)
        hp = self.actions.clip(hp)
        if self.reference is not None:  # the batches and dropout of the recipe's run on this seed
            session_seed = seeded_session_seed(self.batch_seed)
        else:
            session_seed = int(self.np_random.integers(2**31 - 1))
        self.session_seed = session_seed  # seeds dropout and batch order: a loop outside can draw the same batches
        self.session.reset_to_base(session_seed)
        self.session.set_gradient_accumulation(session_cfg.gradient_accumulation_steps)
        self.session.use_data(self.task_data(self.instance), session_seed)
        self.session.set_hparams(hp)
        self.reset_seconds = time.perf_counter() - t0
        # The base model's eval on an instance never changes: compute once, reuse on every reset.
        if self.instance.name not in self._initial_eval:
            self._initial_eval[self.instance.name] = self.session.evaluate("validation")
        self.initial_eval = self._initial_eval[self.instance.name]
        self.eval_loss = self.initial_eval.loss
        self.last_eval_change = 0.0
        self.steps_done = 0
        self._run_state_reset()
        self.log = EpisodeLog(self.instance.name, seed, self.initial_eval.loss, metric_name=self.initial_eval.metric_name,
                              initial_hparams=hp.as_dict(),
                              start_scales=[float(x) for x in self.schedule.scales] if self.schedule else None)
        if self.evaluate_test:
            if self.instance.name not in self._initial_test:
                self._initial_test[self.instance.name] = self.session.evaluate("test")
            self.log.initial_test_loss = self._initial_test[self.instance.name].loss
        self.log.eval_curve.append((0, self.eval_loss))
        info = {"instance": self.instance.name, "hparams": hp.as_dict(), "eval_loss": self.eval_loss,
                "eval_metric": self.initial_eval.metric, "steps_done": 0,
                "reward_kind": "paired" if self.reference is not None else "improvement"}
        if self.schedule is not None:
            info["start_lr_scale"] = float(self.schedule.scales[0])
        return self._obs([]), info

    def step(self, action):
        return self.step_with_schedule(self.interval_for_action(action))

    def interval_steps(self) -> int:
        """Training steps in the next decision interval (the last one may be shorter)."""
        return min(self.cfg.episode.decision_interval, self.total_steps - self.steps_done)

    def interval_for_action(self, action) -> list[Hparams]:
        """The per-step hyperparameters an action asks for: its deltas on the current ones, held
        for one decision interval; under control (envs/control.py), its change of the scales on
        the base schedule, the cooldown, and a rollback before the interval trains."""
        if self.schedule is None:
            return [self.actions.apply(action, self.session.hparams())] * self.interval_steps()
        decoded = self.action_map.decode(action)
        cooling = self.schedule.cooldown_start is not None
        self.schedule.act(decoded, self.steps_done)
        self._rollback_due = decoded.rollback
        self.log.scales.append([float(x) for x in self.schedule.scales])
        if not cooling and self.schedule.cooldown_start is not None:
            self.log.control_events.append({"step": self.steps_done, "event": "cooldown",
                                            "power": self.schedule.cooldown_power})
        return self.schedule.interval(self.steps_done, self.interval_steps())

    def step_with_schedule(self, per_step: Sequence[Hparams]):
        """Train len(per_step) steps, setting each step's hyperparameters; used by env.step,
        static recipes and schedule replay, so all three run exactly the same code."""
        if self.log is None:
            raise RuntimeError("call reset() before step()")
        if self.steps_done >= self.total_steps:
            raise RuntimeError("episode is over: call reset()")
        # rewards count from the loss before a rollback: what it gives back is credited to the interval
        # that follows, so the return still telescopes to the final improvement (or advantage)
        reward_from = self.eval_loss
        if self._rollback_due:
            self._roll_back()
        before_weights = self.session.trainable_weights() if self._watch_weights else None
        steps: list[StepMetrics] = []
        for h in per_step[: self.total_steps - self.steps_done]:
            self.session.set_hparams(h)
            applied = self.session.hparams()  # what the step uses (a self-tuning optimizer keeps its own lr)
            steps.extend(self.session.train(1))
            self.log.schedule.append(applied.as_dict())
        self.steps_done += len(steps)
        self.log.train_loss += [s.loss for s in steps]
        self.log.grad_norm += [s.grad_norm for s in steps]
        # Wall-clock times stay out of info: same seed and actions must give the same info.
        self.timing = {"train_seconds": sum(s.seconds for s in steps)}

        finite = all(math.isfinite(s.loss) and math.isfinite(s.grad_norm) for s in steps)
        if before_weights is not None:
            self._note_update(before_weights)
        if self._first_grad_norm is None and steps:
            self._first_grad_norm = float(np.mean([s.grad_norm for s in steps]))
        ev = self.session.evaluate("validation") if finite else None
        self.timing["eval_seconds"] = ev.seconds if ev else 0.0
        new_loss = ev.loss if ev is not None else float("nan")
        ep = self.cfg.episode
        before = self.eval_loss
        diverged, self.last_eval_change, self.eval_loss = eval_outcome(
            before, new_loss, self.initial_eval.loss, ep.divergence_factor, finite)
        reward = -ep.divergence_penalty if diverged else (reward_from - new_loss) / self.initial_eval.loss
        if self.reference is not None and not diverged:  # the change in advantage over the recipe's own run
            k = len(self.log.eval_curve)
            ref_now, ref_before = self._reference_at(k), self._reference_at(k - 1)
            reward = ((ref_now - new_loss) - (ref_before - reward_from)) / self.initial_eval.loss
        self.log.eval_curve.append((self.steps_done, new_loss))
        if not diverged and self.eval_loss < self._best_eval:
            self._best_eval = self.eval_loss
            if self._keeps_best:
                self._best_snapshot, self._snapshot_eval = self.session.snapshot(), self.eval_loss
        self.log.rewards.append(float(reward))
        self.log.diverged = diverged
        terminated = diverged or self.steps_done >= self.total_steps
        info: dict[str, Any] = {
            "instance": self.instance.name,
            "hparams": self.session.hparams().as_dict(),
            "train_loss": [s.loss for s in steps],
            "grad_norm": [s.grad_norm for s in steps],
            "lr": [s.lr for s in steps],
            "tokens": sum(s.tokens for s in steps),
            "eval_loss": new_loss,
            "eval_metric": ev.metric if ev else None,
            "steps_done": self.steps_done,
            "diverged": diverged,
        }
        if terminated and self.evaluate_test:
            test = self.session.evaluate("test")
            # A run that blew up leaves a broken model; score it as no better than the base model.
            if diverged or not math.isfinite(test.loss):
                finite = test.loss if math.isfinite(test.loss) else -math.inf
                self.log.test_loss = max(finite, self.log.initial_test_loss)
            else:
                self.log.test_loss = test.loss
            self.log.test_metric = test.metric
            info["test_loss"] = self.log.test_loss
            info["test_metric"] = self.log.test_metric
        if terminated:
            info["episode_log"] = self.log.as_dict()
            if self.reference is not None:
                info["episode_log"]["reference_eval_loss"] = self._reference_at(len(self.log.eval_curve) - 1)
        if self.schedule is not None:
            info["lr_scale"] = float(self.schedule.scales[0])
            info["cooldown_start"] = self.schedule.cooldown_start
        return self._obs(steps), float(reward), terminated, False, info

    # ------------------------------------------------------------ checkpoints (PBT)
    def episode_state(self) -> dict[str, Any]:
        """The episode in flight, without the dataset: enough to continue it in another process."""
        snap = self.session.snapshot()
        snap.data = None
        return {"snapshot": snap, "steps_done": self.steps_done, "eval_loss": self.eval_loss,
                "last_eval_change": self.last_eval_change, "log": self.log.as_dict() if self.log else None}

    def load_episode_state(self, state: dict[str, Any]) -> None:
        """Continue an episode saved by episode_state(); reset() to the same instance first."""
        snap = state["snapshot"]
        snap.data = self.session.data
        self.session.restore(snap)
        self.steps_done, self.eval_loss = state["steps_done"], state["eval_loss"]
        self.last_eval_change = state["last_eval_change"]
        self.log = EpisodeLog(**state["log"])

    def close(self) -> None:
        # The engine belongs to the session; a caller that passed a session keeps it alive.
        pass
