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

A longer run than the training episodes: the controller was trained on episodes of
``episode.total_steps`` steps with a decision every ``episode.decision_interval`` steps. On a run of
``total_steps`` steps it makes the same number of decisions, evenly spread (the interval is
``ceil(total_steps / decisions)``), and its progress feature is step / total_steps, so it sees a run
of any length the way it saw its training episodes. Pass ``decision_interval`` to choose otherwise.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from agents.learners.agent_folder import Controller
from envs.actions import ActionMap
from envs.features import FEATURE_NAMES, observe
from envs.finetune_env import eval_outcome
from trainers.session import Hparams, StepMetrics, apply_hparams

set_engine_hparams = apply_hparams  # the one helper that sets lr, weight decay and clipping on a DeepSpeed engine


class SteppedController:
    """A learned controller, asked for each step's hyperparameters and told what the step did."""

    def __init__(self, agent: str | Path | Controller, total_steps: int, initial: Hparams,
                 initial_eval_loss: Optional[float] = None, decision_interval: Optional[int] = None) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        self.controller = agent if isinstance(agent, Controller) else Controller(agent)
        if self.controller.controlled:
            from trainers.config import ConfigError

            raise ConfigError(f"{self.controller.folder}: trained under control (residual schedule, schedule actions, "
                              "scale-free observation or paired reward: env_config.yaml's 'control'); a loop of your "
                              "own cannot drive such a controller yet. Use python -m agents.tune, which runs it in the "
                              "environment it was trained in")
        cfg = self.controller.env_config
        self.actions = ActionMap(cfg.action, cfg.bounds)
        self.controller.check_compatible(self.actions)
        self.bounds = cfg.bounds
        self.divergence_factor = cfg.episode.divergence_factor
        self.total_steps = int(total_steps)
        if decision_interval is None:
            decisions = math.ceil(cfg.episode.total_steps / cfg.episode.decision_interval)
            decision_interval = math.ceil(self.total_steps / decisions)
        if decision_interval < 1:
            raise ValueError(f"decision_interval must be at least 1, got {decision_interval}")
        self.decision_interval = int(decision_interval)
        self.initial = self.actions.clip(initial)
        self.current = self.initial
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
            obs = self.observation()
            action = self.controller.act(obs)
            self.current = self.actions.apply(action, self.current)
            self.decisions.append({"step": step, "observation": dict(zip(FEATURE_NAMES, map(float, obs))),
                                   "action": np.asarray(action).tolist(), "hparams": self.current.as_dict()})
            self._interval_steps = []
        self.schedule.append(self.current)
        return self.current

    def observation(self) -> np.ndarray:
        """What the controller sees now: the environment's observation function on this run's state."""
        return observe(self.steps_done / self.total_steps, self.current, self.bounds, self._interval_steps,
                       self.eval_loss, self.initial_eval_loss, self.last_eval_change)

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
            self.initial_eval_loss = self.eval_loss = eval_loss
            self.eval_curve.append((0, eval_loss))
            return
        finite = all(math.isfinite(s.loss) and math.isfinite(s.grad_norm) for s in self._interval_steps)
        diverged, self.last_eval_change, self.eval_loss = eval_outcome(
            self.eval_loss, eval_loss, self.initial_eval_loss, self.divergence_factor, finite)
        self.diverged = self.diverged or diverged
        self.eval_curve.append((self.steps_done, eval_loss))
        self._eval_due = False

    # ------------------------------------------------------------ record
    def record(self) -> dict[str, Any]:
        """The run as schedule.json holds it (the fields agents.tune writes, where they exist)."""
        return {"source": "agents.integrations", "agent": str(self.controller.folder),
                "agent_fingerprint": self.controller.fingerprint(), "total_steps": self.total_steps,
                "decision_interval": self.decision_interval, "initial": self.initial.as_dict(),
                "schedule": [h.as_dict() for h in self.schedule], "train_loss": self.train_loss,
                "grad_norm": self.grad_norm, "eval_curve": self.eval_curve, "decisions": self.decisions,
                "diverged": self.diverged}

    def save(self, path: str | Path) -> Path:
        from trainers.atomic_files import write_json_atomic

        return write_json_atomic(path, self.record(), indent=1)


def read_schedule(path: str | Path) -> list[Hparams]:
    """The per-step hyperparameters of a run recorded by ``SteppedController.save`` or
    ``ControllerCallback`` (controller_schedule.json), or by ``agents.tune`` (schedule.json): to
    replay it in your loop, set ``read_schedule(path)[step]`` before each step. (``agents.tune
    --replay`` re-runs only its own files: a run in your Trainer is no instance it can rebuild.)"""
    from trainers.config import read_structured_file
    from trainers.schedules import schedule_from_json

    rec = read_structured_file(Path(path), "schedule file")
    return schedule_from_json(rec.get("schedule") if isinstance(rec, dict) else None, str(path))
