"""The best constant lr on a grid: the grid point with the lowest mean validation loss over seeds,
refined by a parabola in log10(lr) that may not leave the point's neighbours."""
import math

import pytest

from agents.evaluation.headroom import LR_GRID, best_lr_on_grid


def _records(val_of, seeds=2, noise=0.0):
    return [{"runs": {f"{lr:.3g}": {"lr": lr, "val_loss": val_of(lr) + noise * (s - 0.5), "test_loss": val_of(lr)}
                      for lr in LR_GRID}} for s in range(seeds)]


def test_grid_is_half_decades_over_the_start_range():
    assert LR_GRID[0] == pytest.approx(1e-5) and LR_GRID[-1] == pytest.approx(1e-2) and len(LR_GRID) == 7


def test_a_parabola_in_log_lr_is_found_between_grid_points():
    true_best = 2e-4  # between the grid points 1e-4 and 3.2e-4
    s = best_lr_on_grid(_records(lambda lr: (math.log10(lr) - math.log10(true_best)) ** 2 + 1.0, noise=0.1))
    assert s["best_lr_grid"] == pytest.approx(10 ** -3.5)
    assert s["best_lr_refined"] == pytest.approx(true_best, rel=1e-6)
    assert not s["at_grid_edge"]


def test_a_best_at_the_grid_edge_is_flagged_and_not_extrapolated():
    s = best_lr_on_grid(_records(lambda lr: -math.log10(lr)))  # higher is always better
    assert s["best_lr_grid"] == pytest.approx(1e-2) and s["best_lr_refined"] == s["best_lr_grid"]
    assert s["at_grid_edge"]


def test_a_diverged_run_is_never_the_best_nor_bends_the_parabola():
    def val(lr):
        return math.nan if lr > 5e-3 else (math.log10(lr) + 3) ** 2
    s = best_lr_on_grid(_records(val))
    assert s["best_lr_grid"] == pytest.approx(1e-3)
    # its right neighbour (3.2e-3) is finite, so the parabola stands; the 1e-2 run diverged
    assert s["best_lr_refined"] == pytest.approx(1e-3, rel=1e-6)


def test_a_record_key_ignores_the_optimizer_only_at_the_value_every_old_record_used():
    from agents.evaluation.headroom import record_key
    from trainers.config import load_config, parse_config

    cfg = load_config("tiny")
    key = record_key(cfg, cfg.heldout[0].name)
    assert "optimizer" not in key["session"]
    d = cfg.model_dump(mode="json")
    d["session"]["optimizer"] = "prodigy"
    other = record_key(parse_config(d), cfg.heldout[0].name)
    assert other["session"]["optimizer"] == "prodigy" and other != key
