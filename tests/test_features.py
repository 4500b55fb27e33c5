"""The observation: each feature computed from the values it names, scale-free, and bounded."""
import math

import numpy as np
import pytest

from envs.features import FEATURE_NAMES, OBS_HIGH, OBS_LOW, observe
from trainers.config import HparamBounds
from trainers.session import Hparams, StepMetrics

BOUNDS = HparamBounds(lr=(1e-5, 1e-1), weight_decay=(1e-4, 1.0), grad_clip=(0.1, 10.0))


def _steps(losses, norms, clipped=None):
    clipped = clipped or [False] * len(losses)
    return [StepMetrics(i + 1, l, g, 1e-3, 100, 0.01, c) for i, (l, g, c) in enumerate(zip(losses, norms, clipped))]


def f(v, name):
    return float(v[FEATURE_NAMES.index(name)])


def test_each_feature_is_what_its_name_says():
    steps = _steps([4.0, 3.0, 2.0, 1.0], [1.0, 10.0, 100.0, 1000.0], [False, True, True, False])
    v = observe(0.25, Hparams(1e-3, 1e-2, 1.0), BOUNDS, steps, eval_loss=2.0, initial_eval_loss=4.0,
                last_eval_change=-0.5)
    assert v.shape == (len(FEATURE_NAMES),) and v.dtype == np.float32
    assert f(v, "progress") == pytest.approx(0.25)
    assert f(v, "lr_pos") == pytest.approx(0.0)  # 1e-3 is the log midpoint of [1e-5, 1e-1]
    assert f(v, "weight_decay_pos") == pytest.approx(0.0) and f(v, "grad_clip_pos") == pytest.approx(0.0)
    assert f(v, "train_loss_last_rel") == pytest.approx(0.25) and f(v, "train_loss_mean_rel") == pytest.approx(0.625)
    assert f(v, "train_loss_slope") == pytest.approx(-1.0 * 4 / 4.0)  # -1 per step, over the interval, relative
    assert f(v, "train_loss_spread") == pytest.approx(np.std([4, 3, 2, 1]) / 4.0, rel=1e-6)
    assert f(v, "grad_norm_mean_log") == pytest.approx(1.5) and f(v, "grad_norm_max_log") == pytest.approx(3.0)
    assert f(v, "grad_norm_slope") == pytest.approx(4.0)  # one decade per step, over 4 steps
    assert f(v, "fraction_clipped") == pytest.approx(0.5)
    assert f(v, "eval_loss_rel") == pytest.approx(0.5) and f(v, "last_eval_change") == pytest.approx(-0.125)


def test_losses_are_relative_so_a_task_at_loss_6_looks_like_one_at_loss_1():
    a = observe(0.5, Hparams(1e-3, 1e-2, 1.0), BOUNDS, _steps([6.0, 5.4], [1.0, 1.0]), 5.4, 6.0, -0.6)
    b = observe(0.5, Hparams(1e-3, 1e-2, 1.0), BOUNDS, _steps([1.0, 0.9], [1.0, 1.0]), 0.9, 1.0, -0.1)
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_positions_hold_at_the_bounds_and_outside_them():
    lo = observe(0.0, Hparams(1e-5, 1e-4, 0.1), BOUNDS, [], 1.0, 1.0, 0.0)
    out = observe(0.0, Hparams(1.0, 0.0, 100.0), BOUNDS, [], 1.0, 1.0, 0.0)  # a self-tuning optimizer's own values
    assert [f(lo, n) for n in ("lr_pos", "weight_decay_pos", "grad_clip_pos")] == pytest.approx([-1, -1, -1])
    assert [f(out, n) for n in ("lr_pos", "weight_decay_pos", "grad_clip_pos")] == pytest.approx([1, -1, 1])


def test_before_any_step_and_after_a_blow_up_the_observation_stays_finite_and_bounded():
    start = observe(0.0, Hparams(1e-3, 1e-2, 1.0), BOUNDS, [], 3.0, 3.0, 0.0)
    assert f(start, "train_loss_last_rel") == 1.0 and f(start, "eval_loss_rel") == 1.0
    assert f(start, "fraction_clipped") == 0.0
    blown = observe(1.0, Hparams(1e-3, 1e-2, 1.0), BOUNDS, _steps([math.nan, math.inf], [math.inf, 1e30]),
                    math.nan, 3.0, math.inf)
    assert np.isfinite(blown).all() and blown.min() >= OBS_LOW and blown.max() <= OBS_HIGH
