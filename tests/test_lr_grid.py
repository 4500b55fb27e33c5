"""The best constant lr on a grid: the grid point with the lowest mean validation loss over seeds,
refined by a parabola in log10(lr) that may not leave the point's neighbours."""
import math

import pytest

from agents.experiments.lr_grid import LR_GRID, best_lr_on_grid


def _records(val_of, seeds=2, noise=0.0):
    return [{"runs": {f"{lr:.3g}": {"lr": lr, "val_loss": val_of(lr) + noise * (s - 0.5), "test_loss": val_of(lr)}
                      for lr in LR_GRID}} for s in range(seeds)]


@pytest.mark.parametrize("config", ["tiny", "smollm2_cpu"])
def test_the_grid_covers_every_instances_starting_range_in_even_steps(config):
    """A best constant lr outside the grid could not be found, and uneven steps would favour some lrs."""
    from trainers.config import load_config

    cfg = load_config(config)
    lows = [i.init_lr[0] for i in cfg.train + cfg.heldout]
    highs = [i.init_lr[1] for i in cfg.train + cfg.heldout]
    assert LR_GRID[0] <= min(lows) * (1 + 1e-9) and LR_GRID[-1] >= max(highs) * (1 - 1e-9)
    ratios = [b / a for a, b in zip(LR_GRID, LR_GRID[1:])]
    assert max(ratios) == pytest.approx(min(ratios))


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
    def val(lr):  # falling towards 1e-2, where the run diverges
        return math.nan if lr > 5e-3 else -math.log10(lr)
    s = best_lr_on_grid(_records(val))
    assert s["best_lr_grid"] == pytest.approx(10 ** -2.5)  # the diverged 1e-2 is not the best
    # the best's right neighbour diverged: no parabola through an infinite loss, the grid point stands
    assert s["best_lr_refined"] == s["best_lr_grid"] and not s["at_grid_edge"]
    finite = best_lr_on_grid(_records(lambda lr: -math.log10(lr) + (math.log10(lr) + 2.5) ** 2 * 2))
    assert finite["best_lr_refined"] != finite["best_lr_grid"]  # with that neighbour finite, it bends


def test_an_instances_key_changes_with_what_decides_its_runs():
    """Saved records are reused only under the same key: another optimizer, data or budget is another key."""
    from agents.methods.base import instance_key
    from trainers.config import load_config, parse_config

    cfg = load_config("tiny")
    name = cfg.heldout[0].name
    key = instance_key(cfg, name)
    assert key == instance_key(load_config("tiny"), name)  # recomputed alike: read back
    for change in ({"session": {"optimizer": "prodigy"}}, {"episode": {"total_steps": 61}},
                   {"heldout": [dict(cfg.heldout[0].model_dump(mode="json"), dataset={"kind": "bbc_lm", "topic": "sport"})]
                    + [i.model_dump(mode="json") for i in cfg.heldout[1:]]}):
        d = cfg.model_dump(mode="json")
        for k, v in change.items():
            d[k] = dict(d[k], **v) if isinstance(v, dict) else v
        assert instance_key(parse_config(d), name) != key, change
