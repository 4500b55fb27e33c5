"""The one episode loop. Every way of running a fine-tuning episode goes through it: the learned
policy, a static recipe, the drawn start held (held_start), a replayed schedule, an Optuna or Ray Tune
trial, a PBT member, and held-out validation during training. So differences in their results
come from the hyperparameters alone, never from how the loop was written.

    for d in decisions(env, plan, instance, seed): ...    # one item per decision interval
    log = run_episode(env, plan, instance, seed)           # the finished episode's log

A plan says which hyperparameters each training step of the next decision interval uses:

    PolicyPlan(act)        a controller, obs -> action, its deltas applied exactly as env.step does
    SchedulePlan(steps)    per-step hyperparameters fixed in advance (recipes, replays, trials)
    ConstantPlan(h)        one set held for the whole episode; ConstantPlan() holds the drawn start
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from envs.finetune_env import FineTuneEnv, eval_outcome
from trainers.config import InstanceSetConfig, RecipeConfig
from trainers.schedules import recipe_schedule
from trainers.session import Hparams


class Plan:
    """Chooses the hyperparameters of each decision interval. ``initial`` (None: the environment
    draws the start from the instance's ranges) is applied at reset; ``start_from`` (None: the
    environment's default) asks a controlled environment for the recipe's own start or a user's
    guess (envs/control.py)."""

    initial: Optional[Hparams] = None
    start_from: Optional[str] = None

    def start(self, env: FineTuneEnv) -> None:
        """Called after every reset: a plan may be reused across episodes."""

    def interval(self, env: FineTuneEnv, obs: np.ndarray) -> Sequence[Hparams]:
        raise NotImplementedError


class PolicyPlan(Plan):
    def __init__(self, act: Callable[[np.ndarray], Any], start_from: Optional[str] = None) -> None:
        self.act, self.start_from = act, start_from

    def interval(self, env: FineTuneEnv, obs: np.ndarray) -> Sequence[Hparams]:
        return env.interval_for_action(self.act(obs))


class SchedulePlan(Plan):
    def __init__(self, steps: Sequence[Hparams | dict]) -> None:
        self.steps = [s if isinstance(s, Hparams) else Hparams(**s) for s in steps]
        if not self.steps:
            raise ValueError("a schedule needs at least one step")
        self.initial = self.steps[0]

    def start(self, env: FineTuneEnv) -> None:
        if len(self.steps) < env.total_steps:
            raise ValueError(f"schedule has {len(self.steps)} steps; instance {env.instance.name!r} "
                             f"needs {env.total_steps}")

    def interval(self, env: FineTuneEnv, obs: np.ndarray) -> Sequence[Hparams]:
        return self.steps[env.steps_done : env.steps_done + env.interval_steps()]


class ConstantPlan(Plan):
    def __init__(self, hparams: Optional[Hparams] = None) -> None:
        self.initial = hparams
        self._held: Optional[Hparams] = None

    def start(self, env: FineTuneEnv) -> None:
        # the given set (clipped to bounds), even when a resumed episode brought other values back
        # with its optimizer state; else the drawn start
        self._held = env.actions.clip(self.initial) if self.initial is not None else env.session.hparams()

    def interval(self, env: FineTuneEnv, obs: np.ndarray) -> Sequence[Hparams]:
        assert self._held is not None
        return [self._held] * env.interval_steps()


def recipe_plan(env: FineTuneEnv, recipe: RecipeConfig, instance: str) -> SchedulePlan:
    """A static recipe on one instance: warmup and decay laid out over the instance's budget."""
    total = env.cfg.steps_for(env.cfg.instance(instance))
    return SchedulePlan(recipe_schedule(recipe, total, min_lr=env.cfg.bounds.lr[0]))


@dataclass
class Decision:
    """What one decision interval produced."""

    obs: np.ndarray
    reward: float
    info: dict[str, Any]
    done: bool


def decisions(env: FineTuneEnv, plan: Plan, instance: str, seed: Optional[int],
              resume: Optional[dict[str, Any]] = None) -> Iterator[Decision]:
    """Reset to the instance, then train one decision interval per item. ``resume`` continues an
    episode saved by ``env.episode_state()`` (PBT's exploit); plans that read the observation
    should not resume. Stop iterating to stop the episode early (a pruned trial)."""
    options: dict[str, Any] = {"instance": instance}
    if plan.initial is not None:
        options["initial_hparams"] = plan.initial
    if plan.start_from is not None:
        options["start"] = plan.start_from
    obs, _ = env.reset(seed=seed, options=options)
    if resume is not None:
        env.load_episode_state(resume)
    plan.start(env)
    while env.steps_done < env.total_steps:
        obs, reward, term, trunc, info = env.step_with_schedule(plan.interval(env, obs))
        done = term or trunc
        yield Decision(obs, reward, info, done)
        if done:
            return


def run_episode(env: FineTuneEnv, plan: Plan, instance: str, seed: Optional[int]) -> dict[str, Any]:
    """A whole episode; returns its log (schedule, losses, rewards, eval curve, test loss if asked)."""
    last: Optional[Decision] = None
    for last in decisions(env, plan, instance, seed):
        pass
    assert last is not None and "episode_log" in last.info
    return last.info["episode_log"]


class ReferenceRuns:
    """The base recipe's validation curves by (instance, batch seed), for the paired reward:
    kept in memory, and in ``folder`` (one JSON file each) when given, so that each is computed
    once across processes and sessions. A file whose key (instance, session, episode, bounds,
    recipe) differs, or that was made on another stack (``trainers.provenance.stack_info``; files
    from before it was recorded say nothing and are read), is computed again."""

    def __init__(self, folder: Optional[str] = None) -> None:
        from pathlib import Path

        self.folder = Path(folder) if folder else None
        self._mem: dict[tuple[str, int], tuple[dict, list[float]]] = {}

    @staticmethod
    def key(cfg: InstanceSetConfig, instance: str, seed: int) -> dict[str, Any]:
        inst = cfg.instance(instance)
        return {"instance": inst.model_dump(mode="json"), "session": cfg.session_for(inst).model_dump(mode="json"),
                "episode": cfg.episode.model_dump(mode="json"), "bounds": cfg.bounds.model_dump(mode="json"),
                "recipe": cfg.base_recipe.model_dump(mode="json"), "seed": seed}

    def _path(self, instance: str, seed: int):
        return self.folder / f"{instance}-seed{seed}.json" if self.folder else None

    def get(self, cfg: InstanceSetConfig, instance: str, seed: int) -> Optional[list[float]]:
        import json

        from trainers.provenance import stack_info

        key = self.key(cfg, instance, seed)
        held = self._mem.get((instance, seed))
        if held is not None and held[0] == key:
            return held[1]
        path = self._path(instance, seed)
        if path is not None and path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError, RecursionError):
                return None  # unreadable: computed again
            curve = saved.get("curve") if isinstance(saved, dict) else None
            whole = (isinstance(curve, list) and curve
                     and all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in curve))
            # a run made on another stack (when the file says) is not this stack's run: computed again
            same_stack = not isinstance(saved, dict) or saved.get("stack") in (None, stack_info())
            if isinstance(saved, dict) and saved.get("key") == key and whole and same_stack:  # anything else (damaged, another key) is computed again
                self._mem[(instance, seed)] = (key, curve)
                return curve
        return None

    def curve(self, env: FineTuneEnv, instance: str, seed: int) -> list[float]:
        """The curve of (instance, seed): kept, or the recipe run now through ``env`` (the one episode
        loop, so its batches and evaluations are the controller's own), as the environment keeps
        losses (a diverged point holds the last good one)."""
        saved = self.get(env.cfg, instance, seed)
        if saved is not None:
            return saved
        cfg = env.cfg
        steps = recipe_schedule(cfg.base_recipe, cfg.steps_for(cfg.instance(instance)), min_lr=cfg.bounds.lr[0])
        log = run_episode(env, SchedulePlan(steps), instance, seed)
        curve, kept = [], log["initial_eval_loss"]
        for _, loss in log["eval_curve"]:
            _, _, kept = eval_outcome(kept, loss, log["initial_eval_loss"], cfg.episode.divergence_factor,
                                      math.isfinite(loss))
            curve.append(kept)
        self.put(cfg, instance, seed, curve)
        return curve

    def put(self, cfg: InstanceSetConfig, instance: str, seed: int, curve: list[float]) -> None:
        key = self.key(cfg, instance, seed)
        self._mem[(instance, seed)] = (key, curve)
        path = self._path(instance, seed)
        if path is not None:
            from trainers.atomic_files import write_json_atomic
            from trainers.provenance import stack_info

            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"key": key, "curve": curve, "stack": stack_info()})
