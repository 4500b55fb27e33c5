"""Headroom: the open-loop schedules it runs, how it picks the best one, the pooled statistics, and
the command end to end (files written, resumed without recomputing)."""
from __future__ import annotations

import json
import math

import numpy as np
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
    again = json.loads((out / f"{name}.json").read_text())
    assert again["runs"] == result["runs"]
    # what the records cost is kept with them, so a resume that only reads them back still reports it
    assert again["worker_seconds"] == result["worker_seconds"] and result["worker_seconds"]["entries_timed"] == 1
    assert result["worker_seconds"]["seconds"] > 0


def test_transfer_headroom_measures_every_static_choice_and_its_summary_follows_from_them(fast_cfg_dict, tmp_path):
    """--transfer on a small set: 2 training instances (both bbc_lm), 2 held-out ones (one bbc_lm,
    one bbc_topic: a family no training instance has). The summary's figures are recomputed here
    from the per-instance table and the saved runs; a rerun reads everything back."""
    from agents.headroom import main

    train = [i for i in fast_cfg_dict["train"] if i["dataset"]["kind"] == "bbc_lm"][:2]
    heldout = [fast_cfg_dict["heldout"][0], next(i for i in fast_cfg_dict["heldout"] if i["dataset"]["kind"] == "bbc_topic")]
    d = dict(fast_cfg_dict, name="fastwide", train=train, heldout=heldout)
    cfg_path = tmp_path / "fastwide.yaml"
    cfg_path.write_text(yaml.safe_dump(d))
    out = tmp_path / "headroom"
    argv = ["--config", str(cfg_path), "--transfer", "--transfer-trials", "2", "--search-budget", "2", "--seeds", "1",
            "--workers", "1", "--out", str(out), "--json"]
    main(argv)
    result = json.loads((out / "fastwide.json").read_text())
    assert (out / "fastwide.md").is_file() and (out / "fastwide.png").is_file()
    s, insts = result["summary"], result["instances"]
    assert (s["n_train_instances"], s["n_heldout_instances"], s["n_heldout_unseen_family"]) == (2, 2, 1)
    assert [insts[i["name"]]["unseen_family"] for i in heldout] == [False, True]
    lrs = [r["best_constant_lr"] for r in insts.values()]
    assert s["best_constant_lr_spread_heldout"] == pytest.approx(max(lrs) / min(lrs))
    assert result["transferred_recipe"]["n_trials"] == 2 and result["transferred_recipe"]["training_instances"] == \
        [i["name"] for i in train]
    for name, r in insts.items():
        saved = json.loads((out / "fastwide" / "per_run" / f"{name}-seed0.json").read_text())["entries"]
        assert set(saved) == {"lr_grid", "warmup_cosine", "default_recipe", "optuna_tpe", "transferred_recipe"}
        assert r["transferred_recipe_test_loss"] == saved["transferred_recipe"]["record"]["1"]["test_loss"]
        assert len(r["lr_grid"]) == 7 and len({round(t, 9) for t in r["lr_grid_test_loss"]}) > 3  # real, distinct runs
        # the best open-loop choice is the grid's or a warmup-cosine around the grid's best, by validation
        assert r["best_open_loop"][0] in {f"{lr:.3g}" for lr in r["lr_grid"]} | \
            {f"warmup-cosine {r['best_constant_lr_grid'] * m:.3g}" for m in (1 / 4, 1, 4)}
        default, search = r["default_recipe_test_loss"], r["optuna_best_of_2_test_loss"]
        assert r["search_gain_over_default"] == pytest.approx((default - search) / default)
        if default - search > 1e-9:
            captured = (default - r["transferred_recipe_test_loss"]) / (default - search)
            assert result["transferred_recipe_gain_captured_per_instance"][name] == pytest.approx(captured)
    g = s["transferred_recipe_gain_captured"]
    no_gain = sorted(n for n, r in insts.items() if r["default_recipe_test_loss"] - r["optuna_best_of_2_test_loss"] <= 1e-9)
    assert result["instances_without_search_gain"] == no_gain  # where the search gains nothing, no ratio is taken
    if len(no_gain) < len(insts):
        assert g["ci95_low"] <= g["iqm"] <= g["ci95_high"]
    else:
        assert math.isnan(g["iqm"]) and result["transferred_recipe_gain_captured_per_instance"] == {}
    assert s["instances_below_separation"] == sorted(n for n, r in insts.items() if r["search_gain_over_default"] < 0.02)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "fastwide" / "per_run").iterdir()}
    main(argv)  # resumes: nothing is run again
    assert {p: p.stat().st_mtime_ns for p in (out / "fastwide" / "per_run").iterdir()} == stamps
    assert json.loads((out / "fastwide.json").read_text())["instances"] == insts


def test_instance_bootstrap_resamples_instances():
    from agents.reporting.statistics import instance_bootstrap_iqm

    assert instance_bootstrap_iqm({"a": 0.4, "b": 0.4, "c": 0.4}) == pytest.approx((0.4, 0.4, 0.4))
    point, lo, hi = instance_bootstrap_iqm({"a": 0.1, "b": 0.5, "c": 0.9, "d": 0.3, "e": 0.7})
    assert point == pytest.approx(iqm([0.1, 0.5, 0.9, 0.3, 0.7])) and lo < point < hi
    assert 0.1 <= lo and hi <= 0.9  # resamples of the instances' values stay within them
    assert all(math.isnan(x) for x in instance_bootstrap_iqm({}))


def test_transfer_summary_scores_the_transferred_recipe_on_the_search_gain_scale(fast_cfg_dict):
    """summarise on hand-made records: captured = (default - transferred) / (default - search) per
    held-out instance; an instance the search does not improve has no ratio; the best open-loop
    schedule is the lowest validation loss even where another has the lower test loss."""
    from agents.experiments.transfer_headroom import summarise
    from agents.reporting.records import PairResult, RunRecord
    from agents.reporting.statistics import instance_bootstrap_iqm
    from trainers.config import parse_config

    cfg = parse_config(fast_cfg_dict)
    names = [i.name for i in cfg.heldout]
    losses = {names[0]: (2.0, 1.5, 1.0), names[1]: (3.0, 2.9, 2.0), names[2]: (1.0, 0.9, 1.1)}  # default, transferred, search
    records, pairs = {}, []
    for j, n in enumerate(names):
        lr_best = 10.0 ** (-4 + j)  # the instances' best constant lrs: 1e-4, 1e-3, 1e-2
        grid = {f"{lr:.3g}": {"val_loss": 1.0 + abs(math.log10(lr / lr_best)), "test_loss": 5.0, "lr": lr}
                for lr in (1e-5, 1e-4, 1e-3, 1e-2)}
        grid[f"{1e-5:.3g}"]["test_loss"] = 0.1  # best on test, not on validation: must not be chosen
        records[f"{n}-seed0", "lr_grid"] = {"runs": grid}
        records[f"{n}-seed0", "warmup_cosine"] = {"runs": {"warmup-cosine x": {"val_loss": 9.0, "test_loss": 0.0, "lr": 1.0}}}
        d, t, s = losses[n]
        pairs.append(PairResult(n, 0, {"default_recipe": {1: RunRecord(d, None, 10)},
                                       "transferred_recipe": {1: RunRecord(t, None, 10)},
                                       "optuna_tpe": {16: RunRecord(s, None, 160)}}))
    out = summarise(cfg, names, 1, records, pairs, {"recipe": {"lr": 1e-3}}, 16)
    assert out["transferred_recipe_gain_captured_per_instance"] == {names[0]: pytest.approx(0.5),
                                                                    names[1]: pytest.approx(0.1)}
    assert out["instances_without_search_gain"] == [names[2]]
    point, lo, hi = instance_bootstrap_iqm({names[0]: 0.5, names[1]: 0.1})
    assert out["summary"]["transferred_recipe_gain_captured"] == {"iqm": pytest.approx(point), "ci95_low": pytest.approx(lo),
                                                                  "ci95_high": pytest.approx(hi)}
    assert out["summary"]["best_constant_lr_spread_heldout"] == pytest.approx(100.0, rel=0.05)
    for n in names:
        assert out["instances"][n]["best_open_loop_test_loss"] == 5.0  # chosen by validation
    assert out["summary"]["instances_below_separation"] == [names[2]]  # (1.0 - 1.1) / 1.0 < 2%
    assert out["instances"][names[1]]["search_gain_over_default"] == pytest.approx(1 / 3)


def test_transfer_refuses_a_training_instance_and_keeps_the_other_modes_file(capsys, tmp_path):
    from agents.headroom import main

    with pytest.raises(SystemExit) as e:
        main(["--config", "tiny", "--transfer", "--instances", "arithmetic", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and "training instance" in err and "\n" == err[-1]
    (tmp_path / "tiny.json").write_text(json.dumps({"instances": {}, "aggregate": {}}))  # a start-relative result
    with pytest.raises(SystemExit) as e:
        main(["--config", "tiny", "--transfer", "--out", str(tmp_path)])
    assert e.value.code == 2 and "start-relative" in capsys.readouterr().err
    assert json.loads((tmp_path / "tiny.json").read_text()) == {"instances": {}, "aggregate": {}}


def _probe_record(inst: str, seed: int, returns: dict[float, float], diverged=()) -> dict:
    return {"instance": inst, "seed": seed, "initial_eval_loss": 3.0,
            "runs": {f"{k:+g}": {"log2": k, "paired_return": r, "diverged": k in diverged} for k, r in returns.items()}}


def test_residual_probe_scores_the_correction_chosen_on_one_seed_on_the_other():
    from agents.experiments.residual_probe import PROBE_LOG2, summarise

    flat = {k: 0.0 for k in PROBE_LOG2}
    # "a": +2 is best on both seeds; "b": the best k flips with the seed (noise), each the other's worst;
    # "c": nothing beats the recipe, so the recipe (k = 0) is the pick
    runs = [_probe_record("a", 0, {**flat, 2.0: 0.10, 1.0: 0.05}), _probe_record("a", 1, {**flat, 2.0: 0.08, 1.0: 0.06}),
            _probe_record("b", 0, {**flat, 2.0: 0.04, -2.0: -0.04}), _probe_record("b", 1, {**flat, 2.0: -0.04, -2.0: 0.04}),
            _probe_record("c", 0, {k: -abs(k) / 10 for k in PROBE_LOG2}),
            _probe_record("c", 1, {k: -abs(k) / 20 for k in PROBE_LOG2})]
    s = summarise(runs)
    a, b, c = (s["per_instance"][n] for n in "abc")
    assert a["best_log2"] == 2.0 and a["oracle_gain"] == pytest.approx(0.09) and a["cross_seed_gain"] == pytest.approx(0.09)
    assert b["best_log2_per_seed"] == [2.0, -2.0]
    assert b["oracle_gain"] == pytest.approx(0.0) and b["best_log2"] == 0.0  # no correction beats the recipe on average
    assert b["cross_seed_gain"] == pytest.approx(-0.04)  # chosen on one seed, it loses on the other
    assert c["best_log2_per_seed"] == [0.0, 0.0] and c["cross_seed_gain"] == 0.0 and c["target_log2"] == 0.0
    assert s["best_direction_agrees_across_seeds"] == pytest.approx(2 / 3)


def test_residual_probe_variance_shares_are_about_zero_on_noise_and_near_one_on_signal():
    """Unbiased variances: returns that are pure seed noise explain about nothing; returns set by
    instance and correction with little noise explain nearly everything, and the seed noise's sd
    is the noise put in."""
    from agents.experiments.residual_probe import PROBE_LOG2, summarise

    rng = np.random.default_rng(0)
    ks = [k for k in PROBE_LOG2 if k != 0.0]

    def runs(effect, sd):
        return [_probe_record(f"i{i}", s, {0.0: 0.0, **{k: effect(i, k) + rng.normal(0, sd) for k in ks}})
                for i in range(60) for s in range(2)]

    noise = summarise(runs(lambda i, k: 0.0, 0.01))
    assert abs(noise["explainable_share"]) < 0.1 and abs(noise["correction_share_within_instance"]) < 0.1
    assert noise["seed_noise_sd"] == pytest.approx(0.01, rel=0.1)
    signal = summarise(runs(lambda i, k: 0.01 * (i % 5) - 0.02 * k * k + 0.01 * k * (i % 3), 0.001))
    assert signal["explainable_share"] > 0.95 and signal["correction_share_within_instance"] > 0.95
    assert signal["seed_noise_sd"] == pytest.approx(0.001, rel=0.1)


def test_the_imitation_target_is_the_peak_of_a_parabola_and_stays_off_diverged_corrections():
    from agents.experiments.residual_probe import smoothed_target

    peak = {k: -0.01 * (k - 0.7) ** 2 + 0.01 * 0.49 for k in (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)}
    assert smoothed_target(peak, set()) == pytest.approx(0.7, abs=0.02)
    rising = {k: 0.01 * k for k in (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)}
    assert smoothed_target(rising, set()) == pytest.approx(2.0)
    assert smoothed_target(rising, {2.0}) == pytest.approx(1.0)  # +2 diverged: no further than +1
    assert smoothed_target({k: -abs(k) for k in rising}, set()) == 0.0  # none beats the recipe


def test_residual_probe_runs_corrections_of_the_recipe_and_their_returns_are_the_final_advantage(
        fast_cfg_dict, tmp_path, monkeypatch, capsys):
    """k = 0 is the recipe run bit for bit (return exactly 0); a correction sets 2**k x the recipe's
    lr; the summed paired rewards equal the final validation advantage over the k = 0 run."""
    from agents.experiments import residual_probe
    from agents.headroom import main
    from trainers.config import parse_config

    monkeypatch.setattr(residual_probe, "PROBE_LOG2", (0.0, 1.0, -1.0))
    d = dict(fast_cfg_dict, train=fast_cfg_dict["train"][:1], heldout=fast_cfg_dict["heldout"][:1],
             control={"residual": True, "schedule_actions": True, "features": "scale_free", "reward": "paired",
                      "reference_seeds": 2, "lr_log2_step": 2.0})
    cfg_path = tmp_path / "fast.yaml"
    cfg_path.write_text(yaml.safe_dump(d))
    out = tmp_path / "headroom"
    main(["--config", str(cfg_path), "--residual-probe", "--seeds", "1", "--workers", "1", "--out", str(out), "--json"])
    result = json.loads((out / f"{d['name']}_residual_probe.json").read_text())
    assert (out / f"{d['name']}_residual_probe.md").is_file() and (out / f"{d['name']}_residual_probe.png").is_file()
    (rec,) = result["runs"]
    assert rec["instance"] == d["train"][0]["name"]  # a training instance: the probe never looks at held-out ones
    runs = {v["log2"]: v for v in rec["runs"].values()}
    assert runs[0.0]["paired_return"] == 0.0
    recipe_lr = runs[0.0]["lr_first"]
    lo, hi = parse_config(d).bounds.lr
    assert runs[1.0]["lr_first"] == pytest.approx(min(2 * recipe_lr, hi))
    assert runs[-1.0]["lr_first"] == pytest.approx(max(recipe_lr / 2, lo))
    for k in (1.0, -1.0):
        assert not runs[k]["diverged"]
        assert runs[k]["paired_return"] == pytest.approx(
            (runs[0.0]["val_loss"] - runs[k]["val_loss"]) / rec["initial_eval_loss"], abs=1e-9)
    assert len({round(v["val_loss"], 9) for v in runs.values()}) == 3  # real, different runs
    # a set without a residual controller and paired reward is refused in one line
    plain = dict(fast_cfg_dict, name="plain")
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(plain))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--config", str(tmp_path / "plain.yaml"), "--residual-probe", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and "control.residual" in err
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg_path), "--residual-probe", "--instances", d["heldout"][0]["name"], "--out", str(out)])
    assert e.value.code == 2 and "not a training instance" in capsys.readouterr().err
