"""Static schedules: warmup, the three decays, the floor, and the one rule for recorded schedules."""
import pytest

from trainers.config import ConfigError, RecipeConfig
from trainers.schedules import recipe_lr, recipe_schedule, schedule_from_json


def test_warmup_rises_linearly_to_the_peak():
    r = RecipeConfig(lr=1e-3, warmup_fraction=0.2, decay="constant")
    assert [recipe_lr(r, s, 10) for s in range(3)] == pytest.approx([5e-4, 1e-3, 1e-3])


@pytest.mark.parametrize("decay,mid,last", [("constant", 1e-3, 1e-3), ("linear", 0.5e-3, 0.1e-3),
                                            ("cosine", 0.5e-3, 1e-3 * 0.5 * (1 + __import__("math").cos(0.9 * 3.141592653589793)))])
def test_each_decay_after_warmup(decay, mid, last):
    r = RecipeConfig(lr=1e-3, warmup_fraction=0.0, decay=decay)
    assert recipe_lr(r, 0, 10) == pytest.approx(1e-3)
    assert recipe_lr(r, 5, 10) == pytest.approx(mid)
    assert recipe_lr(r, 9, 10) == pytest.approx(last)


def test_a_schedule_has_one_step_each_never_below_the_floor():
    r = RecipeConfig(lr=1e-3, weight_decay=0.02, grad_clip=0.7, warmup_fraction=0.1, decay="linear")
    floor = 2e-4  # above the linear decay's last steps, so the floor bites there
    sched = recipe_schedule(r, 20, min_lr=floor)
    assert len(sched) == 20 and min(h.lr for h in sched) == pytest.approx(floor)
    clamped = [s for s in range(20) if recipe_lr(r, s, 20) < floor]
    assert clamped and clamped[-1] == 19 and all(sched[s].lr == pytest.approx(floor) for s in clamped)
    assert all(sched[s].lr == pytest.approx(recipe_lr(r, s, 20)) for s in range(20) if s not in clamped)
    assert {(h.weight_decay, h.grad_clip) for h in sched} == {(0.02, 0.7)}
    assert max(h.lr for h in sched) == pytest.approx(1e-3)


def test_a_recorded_schedule_is_checked_step_by_step():
    ok = schedule_from_json([{"lr": 1e-3, "weight_decay": 0.0, "grad_clip": 1.0}], "s.json")  # wd 0: self-tuning
    assert ok[0].weight_decay == 0.0
    for bad in ([], None, [{"lr": 0.0, "weight_decay": 0.0, "grad_clip": 1.0}],
                [{"lr": 1e-3, "weight_decay": -1.0, "grad_clip": 1.0}], [{"lr": 1e-3, "weight_decay": 0.0}],
                [{"lr": float("nan"), "weight_decay": 0.0, "grad_clip": 1.0}],
                [{"lr": True, "weight_decay": 0.0, "grad_clip": 1.0}]):
        with pytest.raises(ConfigError, match="s.json"):
            schedule_from_json(bad, "s.json")
