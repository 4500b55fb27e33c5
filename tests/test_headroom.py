"""Headroom: the open-loop schedules it runs, how it picks the best one, the pooled statistics, and
the command end to end (files written, resumed without recomputing)."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from agents.experiments.open_loop import aggregate, summarise_instance
from agents.reporting.statistics import iqm, stratified_bootstrap_iqm


def _run(val: float, test: float, lr: float, metric: float | None = None) -> dict:
    return {"val_loss": val, "test_loss": test, "test_metric": metric, "diverged": not math.isfinite(val),
            "lr_first": lr, "lr_last": lr}


def _record(seed: int, start_lr: float, runs: dict) -> dict:
    return {"instance": "x", "seed": seed, "start": {"lr": start_lr}, "base_test_loss": 3.0,
            "base_test_metric": 0.2, "metric_name": "exact_match", "runs": runs}


def test_best_schedule_is_chosen_by_validation_not_test():
    # "constant x4" has the best test loss but not the best validation loss: choosing it would
    # select on the test split
    rec = _record(0, 1e-4, {
        "hold": _run(2.0, 2.0, 1e-4, 0.5), "constant x1": _run(2.0, 2.0, 1e-4, 0.5),
        "constant x4": _run(1.5, 1.0, 4e-4, 0.9), "constant x2": _run(1.2, 1.6, 2e-4, 0.7),
        "warmup-cosine peak x1": _run(float("nan"), float("nan"), 1e-5),
        "default recipe": _run(1.8, 1.9, 1e-5, 0.6)})
    s = summarise_instance([rec])
    assert s["best_open_loop"] == ["constant x2"]
    assert s["best_open_loop_test_loss"] == pytest.approx(1.6)
    assert s["best_test_metric"] == pytest.approx(0.7)
    assert s["best_constant_lr"] == pytest.approx(2e-4)
    assert s["gain_over_hold_per_seed"] == [pytest.approx(0.2)]
    assert s["gain_over_default_recipe_per_seed"] == [pytest.approx((1.9 - 1.6) / 1.9)]


def test_best_constant_lr_is_the_geometric_mean_of_the_lrs_that_ran_and_spread_is_a_ratio():
    # seed 1's x16 would be 1.6e-1 but ran clipped at 3e-2: the lr as run counts
    a = summarise_instance([
        _record(0, 1e-4, {"hold": _run(2, 2, 1e-4), "constant x1": _run(2, 2, 1e-4), "constant x2": _run(1, 1, 2e-4),
                          "default recipe": _run(3, 3, 1e-4)}),
        _record(1, 1e-2, {"hold": _run(2, 2, 1e-2), "constant x1": _run(2, 2, 1e-2), "constant x16": _run(1, 1, 3e-2),
                          "default recipe": _run(3, 3, 1e-4)})])
    assert a["best_constant_lr"] == pytest.approx(math.sqrt(2e-4 * 3e-2))
    b = summarise_instance([_record(0, 1e-3, {"hold": _run(1, 1, 1e-3), "constant x1": _run(1, 1, 1e-3),
                                              "default recipe": _run(float("inf"), float("inf"), 1e-4)})])
    assert b["gain_over_default_recipe_per_seed"] == [1.0]  # a diverged reference: all of it gained
    agg = aggregate({"a": a, "b": b})
    assert agg["best_constant_lr_spread"] == pytest.approx(math.sqrt(2e-4 * 3e-2) / 1e-3)
    assert agg["best_open_loop_gain_over_hold"]["per_instance"] == {"a": [0.5, 0.5], "b": [0.0]}


def test_iqm_is_the_mean_of_the_middle_half_and_ignores_an_outlier():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)
    assert iqm([1, 2, 3, 4, 5, 6, 7, 1000]) == pytest.approx(4.5)


def test_stratified_bootstrap_resamples_within_instances():
    point, lo, hi = stratified_bootstrap_iqm({"a": [0.3, 0.3, 0.3], "b": [0.3, 0.3]})
    assert point == lo == hi == pytest.approx(0.3)
    # spread within instances gives an interval that holds the point and excludes 0 when every run gains
    point, lo, hi = stratified_bootstrap_iqm({"a": [0.1, 0.2, 0.3], "b": [0.05, 0.15, 0.4], "c": [0.2, 0.25, 0.3]})
    assert 0 < lo < point < hi
    # each bootstrap sample keeps every instance's run count: an instance with one run is never dropped,
    # so an instance whose runs all lose pulls every resample's IQM the same way
    _, lo2, hi2 = stratified_bootstrap_iqm({"a": [0.1, 0.2, 0.3], "b": [-0.5], "c": [-0.5], "d": [-0.5]})
    assert hi2 < 0


def test_headroom_command_writes_its_files_and_resumes(fast_cfg_dict, tmp_path):
    from agents.headroom import main

    d = dict(fast_cfg_dict, heldout=fast_cfg_dict["heldout"][:1])
    cfg_path = tmp_path / "fast.yaml"
    cfg_path.write_text(yaml.safe_dump(d))
    out = tmp_path / "headroom"
    argv = ["--config", str(cfg_path), "--seeds", "1", "--workers", "1", "--out", str(out), "--json"]
    main(argv)
    name, inst = d["name"], d["heldout"][0]["name"]
    result = json.loads((out / f"{name}.json").read_text())
    assert (out / f"{name}.md").is_file() and (out / f"{name}.png").is_file()
    rec = result["runs"][0]
    # every schedule of the family ran from the same drawn start
    expected = {"hold", "default recipe"} | {f"constant x{m:g}" for m in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16)} \
        | {f"warmup-cosine peak x{m:g}" for m in (1 / 4, 1, 4)}
    assert set(rec["runs"]) == expected
    lo, hi = d["bounds"]["lr"]
    for m in (1 / 16, 2, 16):
        assert rec["runs"][f"constant x{m:g}"]["lr_first"] == pytest.approx(min(max(rec["start"]["lr"] * m, lo), hi))
    # different learning rates train differently (the runs are real, not copies of one)
    assert len({round(r["test_loss"], 9) for r in rec["runs"].values()}) > 5
    s = result["instances"][inst]
    assert s["hold_test_loss"] == pytest.approx(rec["runs"]["hold"]["test_loss"])
    assert "aggregate" in result and result["aggregate"]["best_constant_lr_spread"] == pytest.approx(1.0)
    per_run = out / name / "per_run" / f"{inst}-seed0.json"
    mtime = per_run.stat().st_mtime_ns
    main(argv)  # resumes: the saved record is reused, not recomputed
    assert per_run.stat().st_mtime_ns == mtime
    assert json.loads((out / f"{name}.json").read_text())["runs"] == result["runs"]
