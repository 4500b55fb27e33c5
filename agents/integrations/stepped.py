"""Ask-and-tell: a learned controller steering a training loop that someone else wrote.

    ctl = SteppedController("results/agents/<name>", total_steps=2000, initial=Hparams(3e-4, 0.01, 1.0))
    ctl.tell_eval(eval_loss_of_the_model_before_training)   # observations are relative to it
    for step in range(2000):
        hp = ctl.hparams_for(step)          # what to set before this step
        set_engine_hparams(engine, hp)      # lr, weight decay, clipping on a DeepSpeed engine
        ...                                 # the user's forward / engine.backward / engine.step()
        ctl.tell_step(loss, grad_norm)      # grad_norm before clipping
        if ctl.wants_eval(step):
            ctl.tell_eval(eval_loss)

It does what ``FineTuneEnv`` does between two decisions, with the same code: the observation is
``envs.features.observe`` and an action becomes hyperparameters through the agent's
``envs.actions.ActionMap``; the evaluation bookkeeping (last change, divergence) is the
environment's ``eval_outcome``. tests/test_integrations.py checks that a loop
driven this way takes the environment's decisions and schedule exactly.

A controller trained under control (envs/control.py: a residual base recipe, schedule actions,
the scale-free observation) is driven the same way, with what the environment reads from its own
engine handed over: ``model`` (the module that trains, for the weights' movement and the count of
trainable weights), ``context`` (the effective batch and the number of training examples) and, for
rollback, ``snapshots`` (``ModelSnapshots(model, optimizer)``: without it a rollback the controller
asks for is recorded, not done). ``initial`` is the user's guess at the recipe's peak: the base
recipe's schedule, laid over ``total_steps``, starts scaled by ``initial.lr / recipe.lr`` (the
recipe's weight decay and clipping stand, as in training); ``initial=None`` starts from the
recipe's own values.

A longer run than the training episodes: a controller trained on episodes of one length
(``episode.total_steps`` steps, a decision every ``episode.decision_interval``) makes as many
decisions on a run of ``total_steps``, evenly spread (the interval is ``ceil(total_steps /
decisions)``), and its progress feature is step / total_steps, so it sees a run of any length the
way it saw its training episodes. One trained on a family of budgets (training budgets that differ
2x or more, as the wide family's 30 to 200 steps) decided every ``episode.decision_interval`` steps
whatever the budget, and does so here. Pass ``decision_interval`` to choose otherwise.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

import torch

from agents.learners.agent_folder import Controller
from envs.actions import ActionMap
from envs.control import ControlActions, ControlledSchedule
from envs.features import RunContext, UpdateStats, is_scale_free, observe, observe_scale_free, weight_update
from envs.finetune_env import eval_outcome
from trainers.schedules import recipe_schedule
from trainers.session import Hparams, StepMetrics, apply_hparams

set_engine_hparams = apply_hparams  # the one helper that sets lr, weight decay and clipping on a DeepSpeed engine


class SteppedController:
    """A learned controller, asked for each step's hyperparameters and told what the step did."""

    def __init__(self, agent: str | Path | Controller, total_steps: int, initial: Optional[Hparams],
                 initial_eval_loss: Optional[float] = None, decision_interval: Optional[int] = None,
                 model: Optional[torch.nn.Module] = None, context: Optional[dict[str, int]] = None,
                 snapshots: Optional["ModelSnapshots"] = None) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        self.controller = agent if isinstance(agent, Controller) else Controller(agent)
        cfg = self.controller.env_config
        control = cfg.control
        self.actions = ActionMap(cfg.action, cfg.bounds)
        self.control = ControlActions(cfg.action, control) if control.enabled else None
        self.controller.check_compatible(self.control or self.actions)
        if initial is None and not control.residual:
            raise ValueError("initial: give the starting hyperparameters (only a residual controller starts from "
                             "its recipe's own)")
        self.model, self.snapshots = model, snapshots
        if is_scale_free(control.features):
            if model is None or not context or {"effective_batch", "train_examples"} - set(context):
                raise ValueError("this controller observes the run's weights and context: pass model=<the module "
                                 "that trains> and context={'effective_batch': ..., 'train_examples': ...}")
            trainable = [p for p in model.parameters() if p.requires_grad]
            self.context = RunContext(sum(p.numel() for p in trainable), lora_rank(model),
                                      int(context["effective_batch"]), int(total_steps), int(context["train_examples"]))
        self.bounds = cfg.bounds
        self.divergence_factor = cfg.episode.divergence_factor
        self.total_steps = int(total_steps)
        budgets = [cfg.steps_for(i) for i in cfg.train]
        if decision_interval is None and max(budgets) >= 2 * min(budgets):  # a family of budgets
            decision_interval = cfg.episode.decision_interval
        elif decision_interval is None:
            decisions = math.ceil(cfg.episode.total_steps / cfg.episode.decision_interval)
            decision_interval = math.ceil(self.total_steps / decisions)
        if decision_interval < 1:
            raise ValueError(f"decision_interval must be at least 1, got {decision_interval}")
        self.decision_interval = int(decision_interval)
        self.schedule_state: Optional[ControlledSchedule] = None
        if self.control is not None:
            self.schedule_state = controlled_schedule(cfg, int(total_steps), initial)
            initial = self.schedule_state.hparams_at(0)
        self.initial = self.actions.clip(initial)
        self.current = self.initial
        self._update, self._last_delta, self._first_grad_norm = UpdateStats(), None, None
        self._weights_before = self._weights() if is_scale_free(control.features) else None
        self.best_eval = math.inf
        self._snapshot = None
        self.rollbacks: list[dict[str, Any]] = []  # each asked for: done, or not (no snapshots given)
        self.initial_eval_loss: Optional[float] = None
        self.eval_loss = math.nan
        self.last_eval_change = 0.0
        self.steps_done = 0
        self.diverged = False
        self.schedule: list[Hparams] = []  # the hyperparameters of every step asked for
        self.decisions: list[dict[str, Any]] = []  # each observation, the action, what it set
        self.train_loss: list[float] = []
        self.grad_norm: list[float] = []
        self.eval_curve: list[tuple[int, float]] = []
        self._interval_steps: list[StepMetrics] = []
        self._eval_due = False
        if initial_eval_loss is not None:
            self.tell_eval(initial_eval_loss)

    # ------------------------------------------------------------ ask
    def is_decision_step(self, step: int) -> bool:
        return step % self.decision_interval == 0

    def hparams_for(self, step: int) -> Hparams:
        """The hyperparameters to set before training step ``step`` (0-based, asked in order). At a
        decision step the controller acts on the observation of the interval just finished."""
        if step != self.steps_done:
            raise ValueError(f"asked for step {step}, but {self.steps_done} steps have been told: ask for each "
                             "step once, in order, and tell it before asking for the next")
        if step >= self.total_steps:
            raise ValueError(f"asked for step {step} of a run of {self.total_steps} steps")
        if self.initial_eval_loss is None:
            raise RuntimeError("tell_eval() the model's evaluation loss before the first step: observations are "
                               "relative to it")
        if self._eval_due:
            raise RuntimeError(f"step {step - 1} wanted an evaluation (wants_eval): tell_eval() it before asking "
                               "for the next step")
        if self.is_decision_step(step) and not self.diverged:
            if self._weights_before is not None and step > 0:
                self._note_update()
            obs = self.observation()
            action = self.controller.act(obs)
            if self.schedule_state is None:
                self.current = self.actions.apply(action, self.current)
            else:
                decoded = self.control.decode(action)
                self.schedule_state.act(decoded, step)
                if decoded.rollback:
                    self._roll_back(step)
            self.decisions.append({"step": step, "observation": dict(zip(self.controller.feature_names, map(float, obs))),
                                   "action": np.asarray(action).tolist()})
            self._interval_steps = []
            if self._weights_before is not None:
                self._weights_before = self._weights()
        if self.schedule_state is not None and not self.diverged:
            self.current = self.schedule_state.hparams_at(step)
        if self.is_decision_step(step) and self.decisions and self.decisions[-1]["step"] == step:
            self.decisions[-1]["hparams"] = self.current.as_dict()
        self.schedule.append(self.current)
        return self.current

    def observation(self) -> np.ndarray:
        """What the controller sees now: the environment's observation function on this run's state."""
        kind = self.controller.env_config.control.features
        if is_scale_free(kind):
            sched = self.schedule_state
            at = min(self.steps_done, self.total_steps - 1)
            return observe_scale_free(
                self.steps_done / self.total_steps, sched.lr_at_bound(at), sched.log2_corrections(),
                sched.base_lr(at) / max(h.lr for h in sched.base), sched.cooldown_start is not None,
                self._interval_steps, self._update, self._first_grad_norm, self.eval_loss, self.initial_eval_loss,
                self.last_eval_change, self.best_eval, self.context,
                sched.recipe_log2_scales() if kind == "scale_free_anchored" else None)
        return observe(self.steps_done / self.total_steps, self.current, self.bounds, self._interval_steps,
                       self.eval_loss, self.initial_eval_loss, self.last_eval_change)

    # ------------------------------------------------------------ under control: what the environment does
    def _weights(self) -> list[torch.Tensor]:
        return [p.detach().float().clone() for p in self.model.parameters() if p.requires_grad]

    def _note_update(self) -> None:
        """As the environment: the last interval's weight change over the weights, and its cosine
        with the change before."""
        now = [p.detach().float() for p in self.model.parameters() if p.requires_grad]
        self._update, self._last_delta = weight_update(self._weights_before, now, self._last_delta)

    def _roll_back(self, step: int) -> None:
        if self.snapshots is None or self._snapshot is None:
            self.rollbacks.append({"step": step, "done": False, "why": "no snapshots given"})
            return
        self.snapshots.restore(self._snapshot[0])
        self.eval_loss, self.last_eval_change = self._snapshot[1], 0.0
        self.rollbacks.append({"step": step, "done": True, "to_eval_loss": self._snapshot[1]})

    # ------------------------------------------------------------ tell
    def tell_step(self, loss: float, grad_norm: float, skipped: bool = False) -> None:
        """The step just taken: its training loss and its gradient norm before clipping.
        ``skipped``: the optimizer skipped it (an fp16 loss-scale overflow, whose gradient norm is
        infinite by design); it counts as a step but is neither observed nor taken for divergence."""
        if len(self.schedule) != self.steps_done + 1:
            raise RuntimeError(f"tell_step() without hparams_for({self.steps_done}) first")
        try:
            loss, grad_norm = float(loss), float(grad_norm)
        except (TypeError, ValueError):
            raise TypeError(f"tell_step(loss, grad_norm) takes two numbers, got {loss!r}, {grad_norm!r}") from None
        clip = self.schedule[-1].grad_clip
        if not skipped:
            self._interval_steps.append(StepMetrics(self.steps_done + 1, loss, grad_norm, self.schedule[-1].lr, 0, 0.0,
                                                    math.isfinite(grad_norm) and grad_norm > clip))
        self.train_loss.append(loss)
        self.grad_norm.append(grad_norm)
        self.steps_done += 1
        if self._first_grad_norm is None and self.steps_done == min(self.decision_interval, self.total_steps):
            self._first_grad_norm = float(np.mean(self.grad_norm))  # the first interval's, as the environment
        self._eval_due = self.wants_eval(self.steps_done - 1)

    def wants_eval(self, step: int) -> bool:
        """Whether the controller needs an evaluation after ``step``: at the end of each decision
        interval, and after the last step (for the record)."""
        return (step + 1) % self.decision_interval == 0 or step + 1 == self.total_steps

    def tell_eval(self, eval_loss: float) -> None:
        """The validation loss now. The first one, before any step, is the reference that
        losses are measured against. A non-finite loss, a non-finite step in the interval, or a
        loss above divergence_factor x the reference marks the run diverged: the controller then
        holds its hyperparameters (stop the run, as an episode would)."""
        eval_loss = float(eval_loss)
        if self.initial_eval_loss is None:
            if self.steps_done:
                raise RuntimeError("the first tell_eval() must come before any step")
            if not math.isfinite(eval_loss) or eval_loss <= 0:
                raise ValueError(f"the reference evaluation loss must be a positive number, got {eval_loss}")
            self.initial_eval_loss = self.eval_loss = self.best_eval = eval_loss
            self.eval_curve.append((0, eval_loss))
            self._keep_best(eval_loss)
            return
        finite = all(math.isfinite(s.loss) and math.isfinite(s.grad_norm) for s in self._interval_steps)
        diverged, self.last_eval_change, self.eval_loss = eval_outcome(
            self.eval_loss, eval_loss, self.initial_eval_loss, self.divergence_factor, finite)
        self.diverged = self.diverged or diverged
        self.eval_curve.append((self.steps_done, eval_loss))
        self._eval_due = False
        if not diverged and self.eval_loss < self.best_eval:
            self.best_eval = self.eval_loss
            self._keep_best(self.eval_loss)

    def _keep_best(self, eval_loss: float) -> None:
        if self.snapshots is not None and self.control is not None and self.control.control.schedule_actions:
            self._snapshot = (self.snapshots.take(), eval_loss)

    # ------------------------------------------------------------ record
    def record(self) -> dict[str, Any]:
        """The run as schedule.json holds it (the fields agents.tune writes, where they exist)."""
        return {"source": "agents.integrations", "agent": str(self.controller.folder),
                "agent_fingerprint": self.controller.fingerprint(), "total_steps": self.total_steps,
                "decision_interval": self.decision_interval, "initial": self.initial.as_dict(),
                "schedule": [h.as_dict() for h in self.schedule], "train_loss": self.train_loss,
                "grad_norm": self.grad_norm, "eval_curve": self.eval_curve, "decisions": self.decisions,
                "diverged": self.diverged, "rollbacks": self.rollbacks,
                "scales": self.schedule_state.scales.tolist() if self.schedule_state is not None else None}

    def save(self, path: str | Path) -> Path:
        from trainers.atomic_files import write_json_atomic

        return write_json_atomic(path, self.record(), indent=1)


def controlled_schedule(cfg, total_steps: int, initial: Optional[Hparams]) -> ControlledSchedule:
    """The schedule a controller trained under ``cfg.control`` corrects in a run of ``total_steps``:
    its base recipe laid over the run, scaled from the user's guess (``initial``; None: the
    recipe's own values), or, without a residual base, ``initial`` held."""
    bounds = cfg.bounds
    if not cfg.control.residual:
        sched = ControlledSchedule([initial] * total_steps, bounds)
        return sched
    recipe = cfg.base_recipe
    sched = ControlledSchedule(recipe_schedule(recipe, total_steps, min_lr=bounds.lr[0]), bounds)
    # the guess is an lr: the recipe's weight decay and clipping stand, as in training; clamped as the
    # environment clamps every start, the recipe's own too
    sched.start_at(np.array([initial.lr / recipe.lr if initial is not None else 1.0, 1.0, 1.0]))
    return sched


def lora_rank(model: torch.nn.Module) -> int:
    """The LoRA rank of a peft model's adapters (0 without any): what the controller's context reads."""
    for module in model.modules():
        a = getattr(module, "lora_A", None)
        if isinstance(a, torch.nn.ModuleDict) and len(a):
            return int(next(iter(a.values())).out_features)
    return 0


class ModelSnapshots:
    """What a rollback restores in a loop of your own: the trainable weights and the optimizer's
    state, cloned in memory (as FineTuneSession's snapshots). For a torch optimizer, DeepSpeed's
    at ZeRO 0 in fp32 included."""

    def __init__(self, model: torch.nn.Module, optimizer: Any) -> None:
        self.model, self.optimizer = model, optimizer

    def take(self) -> tuple[list[torch.Tensor], dict]:
        from trainers.session import _clone

        return ([p.detach().clone() for p in self.model.parameters() if p.requires_grad],
                _clone(self.optimizer.state_dict()))

    def restore(self, snap: tuple[list[torch.Tensor], dict]) -> None:
        from trainers.session import _clone

        weights, state = snap
        with torch.no_grad():
            for p, w in zip([p for p in self.model.parameters() if p.requires_grad], weights):
                p.copy_(w)
        self.optimizer.load_state_dict(_clone(state))


def read_schedule(path: str | Path) -> list[Hparams]:
    """The per-step hyperparameters of a run recorded by ``SteppedController.save`` or
    ``ControllerCallback`` (controller_schedule.json), or by ``agents.tune`` (schedule.json): to
    replay it in your loop, set ``read_schedule(path)[step]`` before each step. (``agents.tune
    --replay`` re-runs only its own files: a run in your Trainer is no instance it can rebuild.)"""
    from trainers.config import read_structured_file
    from trainers.schedules import schedule_from_json

    rec = read_structured_file(Path(path), "schedule file")
    return schedule_from_json(rec.get("schedule") if isinstance(rec, dict) else None, str(path))
