"""The one interface every compared method implements, the record it returns, and the context a
worker runs methods in.

A ``Method`` runs on one instance and seed at one or more budgets (runs for a search, members for
PBT, 1 for a one-run method) and returns a ``RunRecord`` per budget. Compute is counted in
training steps actually run. Searches select by validation loss; a record's test loss is the
selected run's.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional, Sequence

from agents.reporting.records import RunRecord
from trainers.config import InstanceSetConfig


def digest(obj: Any) -> str:
    """A short hash of a JSON-able key: names studies and folders after what decided them."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def data_fingerprint(cfg: InstanceSetConfig, instance: str) -> str:
    """A hash of the records an instance trains, validates and tests on (after the split, the cap
    and decontamination): a change in how data is built changes it even when the config does not.
    Building the records is cheap (no model), so this also stops a bad dataset before any work."""
    from trainers.data import task_records

    inst = cfg.instance(instance)
    splits = task_records(inst.dataset, cfg.episode.eval_examples, cfg.episode.test_examples)
    return hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()[:16]


# Fields added after results were first stored: at their defaults they stay out of the key, so
# the records saved before them (which those fields could not have changed) stay valid.
LATER_FIELDS = {"instance": {"train_examples": None, "lora": None, "gradient_accumulation_steps": None, "tags": []},
                "session": {"lora": None, "gradient_accumulation_steps": 1},
                "dataset": {"max_validation_examples": None, "max_test_examples": None}}


def _dump(model: Any, part: str) -> dict[str, Any]:
    d = model.model_dump(mode="json")
    d = {k: v for k, v in d.items() if not (k in LATER_FIELDS[part] and v == LATER_FIELDS[part][k])}
    if part == "instance":
        d["dataset"] = {k: v for k, v in d["dataset"].items()
                        if not (k in LATER_FIELDS["dataset"] and v == LATER_FIELDS["dataset"][k])}
    return d


def instance_key(cfg: InstanceSetConfig, instance: str) -> dict[str, Any]:
    """What decides an episode on an instance, whatever steers it: its data, its spec, the session
    it trains in, the episode and the hard bounds. A saved result with another key is recomputed."""
    inst = cfg.instance(instance)
    return {"data": data_fingerprint(cfg, instance), "instance": _dump(inst, "instance"),
            "session": _dump(cfg.session_for(inst), "session"), "episode": cfg.episode.model_dump(mode="json"),
            "bounds": cfg.bounds.model_dump(mode="json")}


class MethodContext:
    """What a worker holds while it runs methods: the instance set, one environment per session
    variant (each with its own DeepSpeed engine, built on first use and kept), the controllers it
    has loaded, and the folder where searches keep their studies."""

    def __init__(self, cfg: InstanceSetConfig, studies: Optional[Path] = None, sessions: Optional[dict] = None) -> None:
        """sessions: engines to reuse for the set's own session (``FineTuneEnv.sessions`` of an
        environment built on the same set), so a process does not hold two of them."""
        self.cfg = cfg
        self.studies = Path(studies) if studies is not None else None
        self._sessions = sessions
        self._envs: dict[str, Any] = {}
        self._controllers: dict[str, Any] = {}
        self._instance_keys: dict[str, dict] = {}

    def env(self, optimizer: Optional[str] = None, control: Optional[Any] = None):
        """The environment of the set, or of the set with another client optimizer, or with another
        ``control`` (a controller trained under it: its actions decode, and it observes, as in
        training; the engines are shared); it evaluates the test split at every episode's end."""
        from envs.finetune_env import FineTuneEnv

        if control is not None and control != self.cfg.control:
            key = f"control:{digest(control.model_dump(mode='json'))}"
            if key not in self._envs:
                self._envs[key] = FineTuneEnv(self.cfg.model_copy(update={"control": control}), split="all",
                                              evaluate_test=True, session=self.env().sessions)
            return self._envs[key]
        name = optimizer or self.cfg.session.optimizer
        if name not in self._envs:
            if name == self.cfg.session.optimizer:
                self._envs[name] = FineTuneEnv(self.cfg, split="all", evaluate_test=True, session=self._sessions)
            else:
                self._envs[name] = FineTuneEnv(with_optimizer(self.cfg, name), split="all", evaluate_test=True)
        return self._envs[name]

    def controller(self, folder: str):
        from agents.learners.agent_folder import Controller

        if folder not in self._controllers:
            self._controllers[folder] = Controller(folder)
        return self._controllers[folder]

    def instance_key(self, instance: str) -> dict[str, Any]:
        if instance not in self._instance_keys:
            self._instance_keys[instance] = instance_key(self.cfg, instance)
        return self._instance_keys[instance]

    def study_path(self, name: str) -> Path:
        if self.studies is None:
            raise RuntimeError("this context has no studies folder: a search needs one")
        self.studies.mkdir(parents=True, exist_ok=True)
        return self.studies / name


def with_optimizer(cfg: InstanceSetConfig, optimizer: str) -> InstanceSetConfig:
    """The instance set with another client optimizer; a ConfigError where the set's precision or
    ZeRO stage rules it out."""
    from trainers.config import parse_config

    d = cfg.model_dump(mode="json")
    d["session"]["optimizer"] = optimizer
    return parse_config(d, source=f"session.optimizer {optimizer}")


class Method(ABC):
    """One way of fine-tuning an instance (a policy, a recipe, a search, PBT, a self-tuning
    optimizer), run on one instance and seed. Implementations are small picklable objects: a
    worker process or Ray actor receives them as they are."""

    name: str  # its name in records and reports
    budgets: tuple[int, ...] = (1,)  # what the comparison asks of it
    runs_in_worker = True  # False: it schedules its own processes (PBT on Ray Tune); run after the others
    compared = True  # False: not one of agents.compare's rivals (the held start: the held-out table's)

    def key(self) -> dict[str, Any]:
        """What decides its records besides the instance (its settings): a saved record with
        another key is recomputed. Budgets are not part of it: a saved record that lacks a budget
        now asked for runs again (experiments.matched_compute.record_is_stale)."""
        return {}

    def ruled_out(self, cfg: InstanceSetConfig) -> Optional[str]:
        """Why it cannot run on this instance set (None: it can); such a method is left out of a
        comparison and listed, never faked."""
        return None

    def tasks(self) -> list[tuple[str, tuple[int, ...]]]:
        """(entry name, budgets) of each unit of work saved on its own: by default, all budgets
        in one entry named after the method."""
        return [(self.name, tuple(self.budgets))]

    def stale(self, record: dict[int, RunRecord]) -> bool:
        """Whether a saved record must run again even though its key matches (PBT's errored members)."""
        return False

    @abstractmethod
    def run(self, ctx: MethodContext, instance: str, seed: int, budgets: Sequence[int]) -> dict[int, RunRecord]:
        """Its record at each of the given budgets."""
