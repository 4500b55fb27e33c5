"""The typed results that methods return and reports read: a ``RunRecord`` per method and budget,
gathered per instance and seed in a ``PairResult``. On disk they are plain JSON (``to_json``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional


@dataclass
class RunRecord:
    """What one method produced on one instance and seed at one budget."""

    test_loss: float  # of the selected run, on the test split
    test_metric: Optional[float]  # its task metric (exact match), where the instance has one
    compute_steps: int  # training steps spent, every trial or member included
    val_loss: Optional[float] = None  # what a search or PBT selected by
    schedule_lr: Optional[list[float]] = None  # the selected run's lr per step (one-run methods: in ``log``)
    eval_curve: Optional[list] = None  # its (step, validation loss) points (one-run methods: in ``log``)
    params: Optional[dict] = None  # a search's selected recipe
    log: Optional[dict] = None  # the whole episode log of a one-run method
    errored_members: Optional[int] = None  # PBT: members that errored (None: not recorded)

    @classmethod
    def of_episode(cls, log: dict[str, Any]) -> "RunRecord":
        """A one-run method's record: the episode's cost, test loss and metric, and its log."""
        return cls(log["test_loss"], log["test_metric"], len(log["schedule"]), log=log)

    @property
    def lr_path(self) -> Optional[list[float]]:
        if self.log is not None:
            return [h["lr"] for h in self.log["schedule"]]
        return self.schedule_lr

    @property
    def curve(self) -> Optional[list]:
        return self.log["eval_curve"] if self.log is not None else self.eval_curve

    def to_json(self) -> dict[str, Any]:
        """Fields that are set, and test_metric always (None: the instance has no metric)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k == "test_metric"}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RunRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{"test_metric": None, **{k: v for k, v in d.items() if k in known}})


@dataclass
class PairResult:
    """Every method's records on one instance and seed: method -> budget -> record."""

    instance: str
    seed: int
    results: dict[str, dict[int, RunRecord]] = field(default_factory=dict)

    def one_run(self, method: str) -> RunRecord:
        """A one-run method's record."""
        return self.results[method][1]

    @property
    def base_test_loss(self) -> float:
        """The base model's test loss on this instance (every episode log holds it)."""
        return self.one_run("policy").log["initial_test_loss"]
