"""Optuna, random search, PBT and `compare` on the real engine with tiny budgets."""
import json
import math

import optuna
import pytest
import yaml

from agents import compare, train_agent
from agents.baselines.optuna_search import compute_steps, finished_trials, run_study, run_trial
from agents.reporting.comparison_summary import summarise_comparison
from envs.finetune_env import FineTuneEnv
from trainers.config import REPO_ROOT, parse_config

INSTANCE = "bbc-tech-lm"


@pytest.fixture()
def fast_env(fast_cfg_dict, tiny_session):
    return FineTuneEnv(parse_config(fast_cfg_dict), split="all", session=tiny_session, evaluate_test=True)


def _finished(study):
    return [t for t in study.trials if t.state.is_finished()]


def test_study_resumes_after_a_kill_without_repeating_trials(fast_env, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = run_study(fast_env, INSTANCE, 0, 2, storage, "s", pruner="none", show_progress=False)
    first = [(t.number, t.params, t.value) for t in _finished(study)]
    assert len(first) == 2 and all(math.isfinite(v) for _, _, v in first)
    # what a process killed mid-trial leaves in the storage: a trial that never finished
    optuna.load_study(study_name="s", storage=storage).ask()
    resumed = run_study(fast_env, INSTANCE, 0, 3, storage, "s", pruner="none", show_progress=False)
    done = _finished(resumed)
    assert len(done) == 3  # one new trial, not three
    assert [(t.number, t.params, t.value) for t in done[:2]] == first  # finished trials untouched
    # a sampler re-created with the study's seed would replay the first draw: the new trial is new
    assert done[2].params not in [p for _, p, _ in first]
    assert all(t.user_attrs["compute_steps"] == 8 for t in done)
    assert compute_steps(finished_trials(resumed)) == 24


def test_pruned_trials_count_the_steps_they_ran(fast_env, tmp_path):
    # prunes every trial at its first report (validation loss is always > 0)
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0),
                                storage=f"sqlite:///{tmp_path / 'p.db'}")
    study.optimize(lambda t: run_trial(t, fast_env, INSTANCE, 0), n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    interval = fast_env.cfg.episode.decision_interval
    assert [t.user_attrs["compute_steps"] for t in study.trials] == [interval, interval]
    assert compute_steps(finished_trials(study)) == 2 * interval


def _typed(runs: list[dict]) -> list:
    """The runs as the report reads them: PairResults of RunRecords."""
    from agents.reporting.records import PairResult, RunRecord

    return [PairResult(r["instance"], r["seed"], {m: {b: RunRecord.from_json(x) for b, x in by_b.items()}
                                                  for m, by_b in r["results"].items()}) for r in runs]


def _summarise(runs: list[dict], budgets: list[int]) -> dict:
    return summarise_comparison(_typed(runs), budgets)


def _run(method_losses: dict, instance: str = "a", seed: int = 0) -> dict:
    method_losses = {"default_recipe": {1: 1.5}, **method_losses}
    return {"instance": instance, "seed": seed,
            "results": {m: {b: {"compute_steps": 8 * b, "test_loss": v} for b, v in by_b.items()}
                        for m, by_b in method_losses.items()}}


def test_budget_to_match_is_computed_from_the_numbers():
    runs = [_run({"policy": {1: 1.0}, "optuna_tpe": {1: 1.3, 4: 0.99, 8: 0.9}}),
            _run({"policy": {1: 1.2}, "optuna_tpe": {1: 1.3, 4: 1.2, 8: 1.0}})]
    s = _summarise(runs, [1, 4, 8])
    assert s["methods"]["policy"]["1"]["test_loss_mean"] == pytest.approx(1.1)
    assert s["methods"]["optuna_tpe"]["4"]["test_loss_mean"] == pytest.approx(1.095)
    assert s["methods"]["optuna_tpe"]["4"]["compute_steps"] == 32
    assert s["optuna_budget_to_match_policy"] == 4
    # paired on instance and seed: policy minus this method, run by run
    assert s["methods"]["optuna_tpe"]["4"]["policy_minus_this_mean"] == pytest.approx(((1.0 - 0.99) + (1.2 - 1.2)) / 2)
    assert s["methods"]["optuna_tpe"]["8"]["policy_minus_this_mean"] == pytest.approx(((1.0 - 0.9) + (1.2 - 1.0)) / 2)
    assert len(s["runs"]) == 2 * 5
    # the paired interval is at the instance level: seeds that share an instance are not independent,
    # so two instances whose seeds agree give the range of the two instances, not a narrow t interval
    two = [_run({"policy": {1: 1.0}, "optuna_tpe": {1: 0.9}}, "a", seed) for seed in range(3)] + \
          [_run({"policy": {1: 1.0}, "optuna_tpe": {1: 0.7}}, "b", seed) for seed in range(3)]
    d = _summarise(two, [1])["methods"]["optuna_tpe"]["1"]
    assert d["policy_minus_this_mean"] == pytest.approx(0.2)
    assert (d["policy_minus_this_ci95_low"], d["policy_minus_this_ci95_high"]) == pytest.approx((0.1, 0.3))
    # and the seeds are resampled within each instance: with seeds that differ, the interval reaches
    # past the instance means (0.1 and 0.3) toward the seeds' own extremes
    spread = [_run({"policy": {1: 1.0}, "optuna_tpe": {1: 1.0 - g}}, i, k)
              for i, gains in (("a", (0.0, 0.1, 0.2)), ("b", (0.2, 0.3, 0.4))) for k, g in enumerate(gains)]
    d = _summarise(spread, [1])["methods"]["optuna_tpe"]["1"]
    assert d["policy_minus_this_ci95_low"] < 0.1 - 1e-9 and d["policy_minus_this_ci95_high"] > 0.3 + 1e-9
    # beside it, the t interval over the two instance means (0.1, 0.3): sd 0.1414, so 0.2 +- t(1) * 0.1414 / sqrt(2)
    half = 12.7062 * 0.1
    assert (d["policy_minus_this_t95_low"], d["policy_minus_this_t95_high"]) == pytest.approx((0.2 - half, 0.2 + half),
                                                                                               rel=1e-3)
    worse = [_run({"policy": {1: 0.5}, "optuna_tpe": {1: 1.3, 4: 1.0}})] * 2
    assert _summarise(worse, [1, 4])["optuna_budget_to_match_policy"] is None
    # matched on the search gain captured, not on the mean loss, which the loss-6 instance decides:
    # Optuna's best of 1 has the lower mean loss (2.95 < 3.2) but captures less of each instance's gain
    mixed = [_run({"default_recipe": {1: 6.0}, "policy": {1: 5.9}, "optuna_tpe": {1: 5.0, 4: 4.0}}, instance="lm"),
             _run({"default_recipe": {1: 1.0}, "policy": {1: 0.5}, "optuna_tpe": {1: 0.9, 4: 0.5}}, instance="cls")]
    s = _summarise(mixed, [1, 4])
    assert s["methods"]["optuna_tpe"]["1"]["test_loss_mean"] < s["methods"]["policy"]["1"]["test_loss_mean"]
    assert s["optuna_budget_to_match_policy"] == 4


def test_a_failed_run_is_scored_as_the_base_model_and_the_table_counts_its_metric_apart():
    runs = [_run({"policy": {1: 1.0}, "optuna_tpe": {1: 1.2, 4: 1.1}, "pbt": {4: float("nan")}}, seed=0),
            _run({"policy": {1: 1.4}, "optuna_tpe": {1: 1.3, 4: 1.2}, "pbt": {4: 1.25}}, seed=1)]
    runs[0]["results"]["pbt"][4]["errored_members"] = 3  # runs[1]'s was saved before the count existed
    for r, metric in zip(runs, (0.5, 0.7)):
        r["results"]["policy"][1]["log"] = {"initial_test_loss": 2.0, "metric_name": "exact_match"}
        for m, by_b in r["results"].items():
            for x in by_b.values():
                x["test_metric"] = None if m == "pbt" and r["seed"] == 0 else metric
    typed = _typed(runs)
    s = summarise_comparison(typed, [1, 4])
    assert s["failed_runs_scored_as_base_model"] == [{"instance": "a", "seed": 0, "method": "pbt", "budget": 4}]
    assert s["pbt_errored_members"] == [{"instance": "a", "seed": 0, "population": 4, "errored": 3},
                                        {"instance": "a", "seed": 1, "population": 4, "errored": None}]
    runs[1]["results"]["pbt"][4]["errored_members"] = 0  # counted: none errored
    assert _summarise(runs, [1, 4])["pbt_errored_members"] == [s["pbt_errored_members"][0]]
    assert s["methods"]["pbt"]["4"]["test_loss_mean"] == pytest.approx((2.0 + 1.25) / 2)  # not nan
    cell = s["per_instance"]["a"]["methods"]["pbt@4"]
    assert (cell["n_seeds"], cell["n_metric"], cell["test_metric"]) == (2, 1, 0.7)
    assert s["per_instance"]["a"]["methods"]["policy@1"]["test_metric"] == pytest.approx(0.6)
    assert s["per_instance"]["a"]["metric_name"] == "exact_match"
    assert math.isnan(typed[0].results["pbt"][4].test_loss)  # the input is untouched


def _entries(path):
    return json.loads(path.read_text())["entries"]


def _record(path, entry, budget=1):
    return _entries(path)[entry]["record"][str(budget)]


def test_compare_end_to_end_writes_every_file(fast_cfg_dict, tmp_path, monkeypatch, capsys):
    d = dict(fast_cfg_dict, train=fast_cfg_dict["train"][:2], heldout=fast_cfg_dict["heldout"][:1])
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(yaml.safe_dump(d))
    folder = train_agent.train(train_agent.parse_args(
        ["--algo", "qlearning", "--config", str(cfg), "--decisions", "4", "--out", str(tmp_path / "agents"),
         "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-heldout", "--validate-every", "0"]))
    uri = ["--out", str(tmp_path / "compare"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    base = ["--agent", str(folder), "--budgets", "1", "2", "--transfer-trials", "2"] + uri
    compare.main(base + ["--seeds", "1", "--pbt-populations"])
    out = tmp_path / "compare" / folder.name
    for f in ["summary.md", "summary.csv", "summary.json", "loss_vs_compute.png", "paired_vs_compute.png", "per_instance.png",
              "gain_vs_compute.png", "performance_profile.png", "trajectories.png", "policy_lr_paths.png"]:
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    # rliable's probability of improvement against every rival at every budget, and the range test among them
    assert set(s["probability_policy_better"]) == set(s["methods"]) - {"policy"} and "range_test" in s["methods"]
    for m, by_b in s["probability_policy_better"].items():
        assert set(by_b) == set(s["methods"][m]) and all(0 <= x["p"] <= 1 for x in by_b.values())
    policy_loss = s["methods"]["policy"]["1"]["test_loss_mean"]
    for m, x in s["probability_policy_better"].items():  # one run each here: 1, 0 or 0.5 by which is lower
        one = s["methods"][m][max(x, key=int)]["test_loss_mean"]
        assert x[max(x, key=int)]["p"] == (1.0 if policy_loss < one else 0.0 if policy_loss > one else 0.5)
    assert s["methods"]["range_test"]["1"]["compute_steps"] > d["episode"]["total_steps"]  # the test's steps count
    # where and from which code the numbers came, in both files
    assert {"platform", "cpu_count", "torch", "git_commit"} <= set(s["machine"]) and "wall_seconds_this_invocation" in s
    assert f"commit {s['machine']['git_commit']};" in (out / "summary.md").read_text()
    spent = s["worker_seconds"]  # every task this comparison ran, timed in its worker, PBT's included
    assert spent["entries_timed"] == spent["entries"] == sum(len(json.loads(f.read_text())["entries"])
                                                            for f in (out / "per_run").glob("*.json"))
    assert 0 < spent["seconds"] and f"{spent['seconds'] / 60:.1f} worker-minutes" in (out / "summary.md").read_text()
    steps = d["episode"]["total_steps"]
    assert s["methods"]["policy"]["1"]["compute_steps"] == steps
    assert s["methods"]["random_search"]["2"]["compute_steps"] == 2 * steps  # no pruner: two full runs
    # the transferred recipe: tuned once on the training instances (2 trials x 2 instances x 8 steps,
    # reported apart), then one run here with exactly the tuned recipe
    tuning = s["transferred_recipe_tuning"]
    assert tuning["n_trials"] == 2 and tuning["compute_steps"] == 2 * 2 * steps
    assert tuning["training_instances"] == [d["train"][0]["name"], d["train"][1]["name"]]
    assert s["methods"]["transferred_recipe"]["1"]["compute_steps"] == steps
    inst = d["heldout"][0]["name"]
    saved = out / "per_run" / f"{inst}-seed0.json"
    assert _record(saved, "transferred_recipe")["log"]["schedule"][-1]["weight_decay"] == pytest.approx(
        tuning["recipe"]["weight_decay"])
    for name, lr in (("schedulefree_adamw", 0.0025), ("prodigy", 1.0)):  # one run each, their own lr throughout
        assert s["methods"][name]["1"]["compute_steps"] == steps
        assert {h["lr"] for h in _record(saved, name)["log"]["schedule"]} == {lr}
    assert s["methods"]["optuna_tpe"]["2"]["compute_steps"] <= 2 * steps
    for m, by_b in s["methods"].items():
        for b, row in by_b.items():
            assert row["n_runs"] == 1 and math.isfinite(row["test_loss_mean"]), (m, b)
    gain = s["search_gain_captured"]
    expected = next((int(b) for b in ("1", "2") if gain["optuna_tpe"][b]["iqm"] >= gain["policy"]["1"]["iqm"]), None)
    assert s["optuna_budget_to_match_policy"] == expected
    if inst not in s["search_gain_instances_left_out"]:  # the reference search's own gain is the unit
        assert gain["optuna_tpe"]["2"]["per_instance"][inst] == pytest.approx(1.0)
        assert gain["default_recipe"]["1"]["per_instance"][inst] == 0.0
    # the per-instance table carries every method's task metric, from its selected run
    row = s["per_instance"][inst]["methods"]
    assert set(row) == {f"{m}@{b}" for m, by_b in s["methods"].items() for b in by_b}
    assert row["optuna_tpe@2"]["test_metric"] == _record(saved, "optuna_tpe", 2)["test_metric"]
    assert row["policy@1"]["test_metric"] == _record(saved, "policy")["log"]["test_metric"]

    # a second run reads every saved record back instead of recomputing it
    first = _entries(saved)
    doctored = json.loads(saved.read_text())
    doctored["entries"]["policy"]["record"]["1"]["test_loss"] = 123.0
    saved.write_text(json.dumps(doctored))
    again = compare.main(base + ["--seeds", "1", "--pbt-populations"])
    assert again["methods"]["policy"]["1"]["test_loss_mean"] == 123.0
    assert again["methods"]["optuna_tpe"]["2"]["test_loss_mean"] == s["methods"]["optuna_tpe"]["2"]["test_loss_mean"]

    # An agent trained further (its weights' hash changes) runs its policy afresh, and only that:
    # the other methods' records do not depend on it. Here on two worker processes, with a second
    # seed and the transferred recipe tuned again: the runs are the same as in one process.
    from agents.learners.agent_folder import Controller

    monkeypatch.setattr(Controller, "fingerprint", lambda self: "trained-further")
    (out / "transferred_recipe.json").unlink()
    for db in (out / "studies").glob("transferred-*.db"):
        db.unlink()
    on_workers = compare.main(base + ["--seeds", "2", "--pbt-populations", "--workers", "2"])
    assert on_workers["transferred_recipe_tuning"] == tuning
    assert on_workers["agent_fingerprint"] == "trained-further"
    now = _entries(saved)
    assert now["policy"]["record"] == first["policy"]["record"]  # recomputed (123.0 is gone), and the same
    assert now["policy"]["key"] != first["policy"]["key"]
    for m in first:
        if m != "policy":
            assert now[m] == first[m], m  # read back, not rerun
    seed1 = _entries(out / "per_run" / f"{inst}-seed1.json")
    assert seed1["policy"]["record"]["1"]["log"]["seed"] == 1 and set(seed1) == set(first)
    # more workers than the machine has cores would only queue: refused in one line, before any run
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        compare.main(base + ["--seeds", "1", "--pbt-populations", "--workers", "999", "--name", "too-many"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --workers 999: this machine has")
    assert "Traceback" not in err
    assert not list((tmp_path / "compare" / "too-many").rglob("*.db"))  # refused before any trial

    # PBT is saved beside the other methods, one entry per population: a new population size runs
    # only that population, under a folder named after the instance's key; a population with an
    # errored member runs again; a comparison without PBT leaves the saved ones be
    from agents.baselines import pbt as pbt_module
    from agents.methods.base import digest, instance_key

    ran = []
    erroring = {(0, 4)}  # this population's first run has a member that errored

    def fake_pbt(cfg, instance, seed, population, storage):
        ran.append((instance, seed, population, storage))
        errored = int((seed, population) in erroring)
        erroring.discard((seed, population))
        return {"compute_steps": population * steps, "test_loss": 1.0 + population, "test_metric": None,
                "errored_members": errored}

    monkeypatch.setattr(pbt_module, "run_pbt", fake_pbt)
    pbt_base = base + ["--seeds", "2"]
    compare.main(pbt_base + ["--pbt-populations", "2"])
    folder_key = (out / "studies" / "pbt" / digest(instance_key(parse_config(d), inst))).resolve()
    assert sorted(ran) == [(inst, 0, 2, folder_key), (inst, 1, 2, folder_key)]
    ran.clear()
    with_4 = compare.main(pbt_base + ["--pbt-populations", "2", "4"])
    assert sorted(ran) == [(inst, 0, 4, folder_key), (inst, 1, 4, folder_key)]
    assert with_4["methods"]["pbt"]["4"]["test_loss_mean"] == 5.0 and with_4["methods"]["pbt"]["2"]["test_loss_mean"] == 3.0
    assert with_4["pbt_errored_members"] == [{"instance": inst, "seed": 0, "population": 4, "errored": 1}]
    ran.clear()
    again = compare.main(pbt_base + ["--pbt-populations", "2", "4"])
    assert ran == [(inst, 0, 4, folder_key)] and again["pbt_errored_members"] == []
    ran.clear()
    without = compare.main(pbt_base + ["--pbt-populations"])
    assert not ran and "pbt" not in without["methods"]
    assert {"pbt@2", "pbt@4"} <= set(_entries(saved))

    # the whole comparison on a user's file (as agents.tune --data): it is the one instance compared
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"prompt": f"{a} plus {b} is", "completion": f" {a + b}"}) + "\n"
                            for a in range(12) for b in range(12)))
    compare.main(["--agent", str(folder), "--data", str(mine), "--steps", "8", "--budgets", "1", "--seeds", "1",
                  "--pbt-populations", "--transfer-trials", "0", "--name", "mine"] + uri)
    on_mine = json.loads((tmp_path / "compare" / "mine" / "summary.json").read_text())
    assert on_mine["instances"] == ["mine"]
    assert all(math.isfinite(row["test_loss_mean"]) for by_b in on_mine["methods"].values() for row in by_b.values())
    assert on_mine["methods"]["policy"]["1"]["compute_steps"] == 8


@pytest.mark.xdist_group("ray")  # starts a Ray node: one at a time (bash test.sh runs pytest-xdist)
def test_pbt_runs_on_ray_tune_and_measures_its_compute(fast_cfg_dict, tmp_path):
    import ray

    from agents.baselines.pbt import experiment_path, run_pbt

    res = run_pbt(parse_config(fast_cfg_dict), INSTANCE, 0, 2, tmp_path / "pbt")
    assert not ray.is_initialized()  # the private Ray it started is stopped again
    steps, interval = fast_cfg_dict["episode"]["total_steps"], fast_cfg_dict["episode"]["decision_interval"]
    # each member trains at least its first interval and at most the episode; exploits may skip steps
    assert 2 * interval <= res["compute_steps"] <= 2 * steps
    assert math.isfinite(res["test_loss"]) and math.isfinite(res["val_loss"])
    assert len(res["schedule_lr"]) == steps and res["errored_members"] == 0

    # every member checkpointed its episode state at every decision (what exploit copies from; the
    # Ctrl-C test below finds them where this looks), and once all had finished they were deleted
    member_folders = list(experiment_path(tmp_path / "pbt", INSTANCE, 0, 2).glob("pbt_member_*"))
    assert len(member_folders) == 2
    assert not [f for m in member_folders for f in m.glob("checkpoint_*/member.pt")]
    # the same call again restores the finished experiment, without its checkpoints, instead of
    # training a new population
    again = run_pbt(parse_config(fast_cfg_dict), INSTANCE, 0, 2, tmp_path / "pbt")
    assert again["test_loss"] == res["test_loss"] and again["schedule_lr"] == res["schedule_lr"]
    assert again["compute_steps"] == res["compute_steps"]


def test_pbt_keeps_checkpoints_until_every_member_has_finished(fast_cfg_dict, tmp_path, monkeypatch, capsys):
    """An errored member is left out of the selection and said so, and the population's checkpoints
    stay so that the next call continues it (Tuner.restore(resume_errored=True)). A population that
    Ray Tune stopped early is not a result at all: Ray catches Ctrl-C, marks the stopped members
    TERMINATED and returns normally, so "finished" is read from each member's last report."""
    from types import SimpleNamespace

    from ray import tune

    from agents.baselines import pbt

    steps = fast_cfg_dict["episode"]["total_steps"]

    def member(test_loss: float, finished: bool = True, error=None):
        metrics = {"steps_done": steps if finished else steps // 2, "eval_loss": test_loss, "test_loss": test_loss,
                   "diverged": False}
        if finished:  # pbt_member's report at its episode's end
            metrics.update(schedule_lr="[]", eval_curve="[]")
        return SimpleNamespace(metrics_dataframe=None, metrics=metrics, error=error)

    oom = RuntimeError("Traceback ...\nRuntimeError: member ran out of memory")
    fits = iter([
        ([member(1.5), member(0.1, finished=False, error=oom)], 1),  # one errored mid-episode
        ([member(1.5), member(0.1, finished=False)], 1),  # an error Ray lost the file of: counted by status
        ([member(1.5), member(0.1, finished=False)], 0),  # stopped early (Ctrl-C): status TERMINATED
        ([member(1.5), member(0.1)], 0),  # every member finished (asked to keep the checkpoints)
        ([member(1.5), member(0.1)], 0),  # every member finished
    ])

    class Tuner:
        def __init__(self, *a, **k):
            pass

        @staticmethod
        def can_restore(path):
            return False

        def fit(self):
            members, errored = next(fits)
            results = type("Results", (list,), {"num_errors": errored})(members)
            results.errors = [m.error for m in members if m.error]
            return results

    monkeypatch.setattr(tune, "Tuner", Tuner)
    monkeypatch.setattr("agents.parallel.ray_cluster.init_ray", lambda *a, **k: False)
    monkeypatch.setattr("agents.parallel.ray_cluster.trial_resources", lambda: {"cpu": 1})
    checkpoint = pbt.experiment_path(tmp_path, INSTANCE, 0, 2) / "pbt_member_0" / "checkpoint_000001"
    checkpoint.mkdir(parents=True)
    cfg = parse_config(fast_cfg_dict)
    res = pbt.run_pbt(cfg, INSTANCE, 0, 2, tmp_path)
    assert res["errored_members"] == 1 and res["test_loss"] == 1.5  # selected among the finished
    assert checkpoint.is_dir()
    err = capsys.readouterr().err
    assert "1 of 2 PBT members errored" in err and "RuntimeError: member ran out of memory" in err
    assert pbt.run_pbt(cfg, INSTANCE, 0, 2, tmp_path)["errored_members"] == 1
    assert "the first error: (no message)" in capsys.readouterr().err and checkpoint.is_dir()
    with pytest.raises(KeyboardInterrupt, match="1 of 2 members unfinished"):
        pbt.run_pbt(cfg, INSTANCE, 0, 2, tmp_path)
    assert checkpoint.is_dir()
    pbt.run_pbt(cfg, INSTANCE, 0, 2, tmp_path, keep_checkpoints=True)
    assert checkpoint.is_dir()
    res = pbt.run_pbt(cfg, INSTANCE, 0, 2, tmp_path)  # once every member has finished, the checkpoints go
    assert res["errored_members"] == 0 and res["test_loss"] == 0.1
    assert not checkpoint.exists() and checkpoint.parent.is_dir()


def test_compare_reruns_a_pbt_population_whose_members_errored():
    from agents.methods import RunRecord
    from agents.methods.pbt import PBTMethod

    pbt = PBTMethod((2, 4))
    assert pbt.tasks() == [("pbt@2", (2,)), ("pbt@4", (4,))]  # each population saved, and rerun, on its own
    assert pbt.stale({4: RunRecord(1.0, None, 8, errored_members=1)})
    assert not pbt.stale({4: RunRecord(1.0, None, 8, errored_members=0)})
    assert not pbt.stale({8: RunRecord(1.0, None, 8)})  # saved before errors were counted: not rerun


def test_pbt_experiments_are_named_by_population_and_seed(tmp_path):
    from agents.baselines.pbt import experiment_path

    assert experiment_path(tmp_path, "a", 0, 2) != experiment_path(tmp_path, "a", 0, 4)
    assert experiment_path(tmp_path, "a", 0, 2) != experiment_path(tmp_path, "a", 1, 2)
    # (compare's folder per instance key: test_compare_end_to_end_writes_every_file)


def test_pbt_seeds_the_rngs_its_initial_population_is_drawn_from(fast_cfg_dict, tmp_path, monkeypatch):
    """Ray Tune draws the initial population from numpy's global RNG and PBT's explore/exploit from
    Python's: run_pbt seeds both before the Tuner exists."""
    import random
    from types import SimpleNamespace

    import numpy as np
    from ray import tune

    from agents.baselines import pbt

    drawn = []

    class Recorder:  # stands in for the Tuner: records what the population would be drawn from
        def __init__(self, *a, **k):
            drawn.append((np.random.random(), random.random()))

        @staticmethod
        def can_restore(path):
            return False

        def fit(self):
            return FinishedPopulation(SimpleNamespace(metrics={"schedule_lr": "[]"}, metrics_dataframe=None, error=None)
                                      for _ in range(2))

    class FinishedPopulation(list):
        errors: list = []
        num_errors = 0

    monkeypatch.setattr(tune, "Tuner", Recorder)
    monkeypatch.setattr("agents.parallel.ray_cluster.init_ray", lambda *a, **k: False)  # no Ray needed
    monkeypatch.setattr("agents.parallel.ray_cluster.trial_resources", lambda: {"cpu": 1})
    cfg = parse_config(fast_cfg_dict)
    for seed in (0, 0, 1):
        np.random.seed(1234 + len(drawn))  # whatever state the caller left behind
        random.seed(99 + len(drawn))
        pbt.run_pbt(cfg, INSTANCE, seed, 2, tmp_path / f"pbt{len(drawn)}")
    assert drawn[0] == drawn[1] != drawn[2]


@pytest.mark.xdist_group("ray")  # starts a Ray node: one at a time (bash test.sh runs pytest-xdist)
def test_pbt_compute_counts_what_members_ran_not_population_times_steps(fast_cfg_dict, tmp_path):
    """Members that diverge at their first interval stop there: the compute is what they ran."""
    from agents.baselines.pbt import run_pbt

    d = dict(fast_cfg_dict, bounds={"lr": [1e-5, 1e4], "weight_decay": [1e-4, 0.5], "grad_clip": [0.05, 10.0]})
    d["heldout"] = [dict(d["heldout"][0], init_lr=[1e3, 1e3], init_grad_clip=[10.0, 10.0])]
    res = run_pbt(parse_config(d), d["heldout"][0]["name"], 0, 2, tmp_path / "pbt")
    interval = d["episode"]["decision_interval"]
    assert res["compute_steps"] == 2 * interval  # not 2 x total_steps
    assert math.isnan(res["test_loss"])  # no member finished: nothing to select


@pytest.mark.xdist_group("ray")  # starts a Ray node: one at a time (bash test.sh runs pytest-xdist)
def test_optuna_search_runs_as_ray_tune_trials_with_asha(fast_cfg_dict, tmp_path):
    import ray

    from agents.baselines.ray_tune_search import run_search

    res = run_search(parse_config(fast_cfg_dict), INSTANCE, 0, 3, tmp_path / "search", scheduler="asha")
    assert not ray.is_initialized()
    steps = fast_cfg_dict["episode"]["total_steps"]
    interval = fast_cfg_dict["episode"]["decision_interval"]
    assert res["trials"] == 3 and res["complete"] >= 1
    # every trial ran at least one decision interval; stopped ones count what they ran
    assert 3 * interval <= res["compute_steps"] <= 3 * steps
    assert res["compute_steps"] == res["complete"] * steps + (3 - res["complete"]) * interval
    assert math.isfinite(res["test_loss"]) and set(res["params"]) == {
        "lr", "weight_decay", "grad_clip", "warmup_fraction", "decay"}


def test_random_search_and_tpe_do_not_share_their_first_trials():
    """With one seed for both, TPE's random start-up trials were random search's first trials, so
    the two tied at budgets up to 4. Each kind now draws from its own stream of the seed."""
    import optuna

    from agents.baselines.optuna_search import make_sampler
    from agents.baselines.search_space import suggest_recipe
    from trainers.config import load_config

    cfg = load_config("tiny")
    inst = cfg.heldout[0]
    drawn = {}
    for kind in ("tpe", "random"):
        study = optuna.create_study(sampler=make_sampler(kind, 0))
        study.optimize(lambda t: suggest_recipe(t, cfg.bounds, inst).lr, n_trials=4)
        drawn[kind] = [t.params for t in study.trials]
    assert all(a != b for a, b in zip(drawn["tpe"], drawn["random"]))
    again = optuna.create_study(sampler=make_sampler("random", 0))  # and each stays reproducible
    again.optimize(lambda t: suggest_recipe(t, cfg.bounds, inst).lr, n_trials=4)
    assert [t.params for t in again.trials] == drawn["random"]


@pytest.mark.parametrize("config", ["tiny", "smollm2_cpu"])
def test_every_search_draws_from_the_instances_starting_ranges(config):
    """The policy and PBT start inside the instance's init ranges; Optuna, random search and Ray
    Tune draw their recipes' knobs from the same ranges, not from the wider hard bounds."""
    from agents.baselines.search_space import recipe_space, tune_space
    from trainers.config import load_config

    cfg = load_config(config)
    for inst in cfg.train + cfg.heldout:
        dims = {d.name: d for d in recipe_space(cfg.bounds, inst)}
        for name in ("lr", "weight_decay", "grad_clip"):
            assert (dims[name].low, dims[name].high) == tuple(getattr(inst, f"init_{name}"))
        lr = tune_space(recipe_space(cfg.bounds, inst))["lr"]
        assert (lr.lower, lr.upper) == tuple(inst.init_lr)


def test_the_plots_error_bars_are_measured_from_where_each_point_is_drawn():
    from agents.reporting.comparison_report import clamped_errors, negated_interval_errors

    # -(policy - this) for policy - this = 0.2 in [0.1, 0.5]: drawn at -0.2, reaching -0.5 below and -0.1 above
    below, above = negated_interval_errors([0.2], [0.1], [0.5])
    assert (below[0], above[0]) == pytest.approx((0.3, 0.1))
    assert negated_interval_errors([0.2], [math.nan], [math.nan]) == [[0.0], [0.0]]
    # a point below the frame is drawn on its edge; its bar's top stays where the interval ends
    shown, err = clamped_errors([-2.5, 0.8], [-10.0, 0.6], [-0.4, 1.0], floor=-0.96)
    assert shown == [-0.96, 0.8]
    assert [s + e for s, e in zip(shown, err[1])] == pytest.approx([-0.4, 1.0])
    assert [s - e for s, e in zip(shown, err[0])] == pytest.approx([-10.0, 0.6])  # the frame cuts it, not the code


def test_search_gain_captured_is_the_share_of_the_largest_searchs_gain():
    runs = [_run({"default_recipe": {1: 2.0}, "policy": {1: 1.5}, "optuna_tpe": {1: 2.5, 8: 1.0}}, "a", 0),
            _run({"default_recipe": {1: 2.2}, "policy": {1: 1.2}, "optuna_tpe": {1: 2.5, 8: 1.2}}, "a", 1),
            _run({"default_recipe": {1: 3.0}, "policy": {1: 3.0}, "optuna_tpe": {1: 3.5, 8: 2.0}}, "b", 0),
            _run({"default_recipe": {1: 3.0}, "policy": {1: 2.25}, "optuna_tpe": {1: 3.5, 8: 2.5}}, "b", 1),
            _run({"default_recipe": {1: 1.0}, "policy": {1: 0.5}, "optuna_tpe": {1: 1.5, 8: 1.0}}, "flat", 0),
            _run({"default_recipe": {1: 1.0}, "policy": {1: 0.5}, "optuna_tpe": {1: 1.5, 8: 1.2}}, "worse", 0)]
    s = _summarise(runs, [1, 8])
    g = s["search_gain_captured"]
    # a: denominator mean(1.0, 1.0) = 1.0, policy 0.5 and 1.0; b: denominator 0.75, policy 0.0 and 1.0
    assert g["policy"]["1"]["per_instance"] == pytest.approx({"a": 0.75, "b": 0.5})
    assert g["policy"]["1"]["iqm"] == pytest.approx(0.75)  # middle half of (0, 0.5, 1, 1)
    assert g["policy"]["1"]["ci95_low"] <= 0.75 <= g["policy"]["1"]["ci95_high"]
    assert g["optuna_tpe"]["8"]["iqm"] == pytest.approx(1.0) and g["default_recipe"]["1"]["iqm"] == pytest.approx(0.0)
    # no gain to capture (the search was no better than the default recipe): left out, not divided by 0 or
    # counted with its sign flipped
    assert set(g["policy"]["1"]["per_instance"]) == {"a", "b"}
    assert s["search_gain_instances_left_out"] == ["flat", "worse"]
    assert s["search_gain_reference"] == "optuna_tpe best of 8"
    # the denominators are reported, so a reader sees where a small loss difference is a large score
    assert s["search_gain_loss"]["a"]["default_recipe_minus_search"] == pytest.approx(1.0)
    assert s["search_gain_loss"]["a"]["relative_to_default_recipe"] == pytest.approx(1.0 / 2.1)  # mean of 2.0, 2.2
    assert s["search_gain_loss"]["worse"]["default_recipe_minus_search"] == pytest.approx(-0.2)


def test_compare_data_refuses_a_bad_file_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken\n')
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--agent", str(REPO_ROOT / "results" / "agents" / "ppo-tiny-seed0"), "--data", str(bad),
                      "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "bad.jsonl:2" in err[0]
    assert not (tmp_path / "out").exists()  # nothing written


def test_compare_on_a_users_file_searches_the_agents_starting_ranges(tmp_path):
    """agents.tune --data starts one run at the default recipe; a comparison on the file gives every
    method the range the agent's instances span instead of a point (a search over a point is none)."""
    from agents.baselines.search_space import recipe_space
    from agents.learners.agent_folder import Controller
    from trainers.retarget import with_set_ranges, with_user_data as user_config

    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"text": "some words to model"}\n' * 30)
    base = Controller(REPO_ROOT / "results" / "agents" / "ppo-tiny-seed0").env_config
    cfg = with_set_ranges(user_config(base, str(mine), None, None))
    inst = cfg.heldout[-1]
    assert inst.name == "mine"
    everyone = base.train + base.heldout
    assert inst.init_lr == (min(i.init_lr[0] for i in everyone), max(i.init_lr[1] for i in everyone))
    lr = next(d for d in recipe_space(cfg.bounds, inst) if d.name == "lr")
    assert lr.low < lr.high


def test_a_model_folder_given_relative_reaches_ray_workers_as_an_absolute_path(tmp_path, monkeypatch):
    """Ray Tune runs each PBT member in its own trial folder, and actors need not share the
    driver's directory: a model folder named relative to it is stored absolute, a preset as named."""
    from agents.learners.agent_folder import Controller
    from trainers.retarget import with_model, with_user_data as user_config

    (tmp_path / "my-model").mkdir()
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"text": "some words to model"}\n' * 30)
    monkeypatch.chdir(tmp_path)
    base = Controller(REPO_ROOT / "results" / "agents" / "ppo-tiny-seed0").env_config
    assert user_config(base, "mine.jsonl", "my-model", None).session.model == str(tmp_path / "my-model")
    assert with_model(base, "my-model").session.model == str(tmp_path / "my-model")
    assert with_model(base, "smollm2-135m").session.model == "smollm2-135m"


def test_the_transferred_recipes_objective_weighs_instances_alike():
    from agents.experiments.transferred_recipe import improvement

    assert improvement({"eval_curve": [(0, 6.0), (8, 4.5)], "initial_eval_loss": 6.0, "diverged": False}) == 0.25
    assert improvement({"eval_curve": [(0, 1.0), (8, 0.75)], "initial_eval_loss": 1.0, "diverged": False}) == 0.25
    assert improvement({"eval_curve": [(0, 1.0), (8, float("nan"))], "initial_eval_loss": 1.0, "diverged": True}) == -1.0


@pytest.mark.xdist_group("ray")  # starts a Ray node: one at a time (bash test.sh runs pytest-xdist)
def test_pbt_stopped_by_ctrl_c_is_not_a_result_and_keeps_its_checkpoints(fast_cfg_dict, tmp_path, monkeypatch):
    """Ray Tune catches Ctrl-C, marks the stopped members TERMINATED and returns normally: run_pbt
    must not take that for a finished population, delete its checkpoints, or report a result."""
    import os
    import signal

    from ray import tune

    from agents.baselines.pbt import experiment_path, run_pbt

    class CtrlCAfterFirstReport(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            os.kill(os.getpid(), signal.SIGINT)

    class RunConfig(tune.RunConfig):  # run_pbt's own, with the callback added
        def __init__(self, *args, **kwargs):
            super().__init__(*args, callbacks=[CtrlCAfterFirstReport()], **kwargs)

    monkeypatch.setattr(tune, "RunConfig", RunConfig)
    with pytest.raises(KeyboardInterrupt, match="members unfinished"):
        run_pbt(parse_config(fast_cfg_dict), INSTANCE, 0, 2, tmp_path / "pbt")
    assert list(experiment_path(tmp_path / "pbt", INSTANCE, 0, 2).glob("pbt_member_*/checkpoint_*/member.pt"))
