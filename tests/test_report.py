"""results/REPORT.md and the README's generated blocks are written from the committed summaries by
python -m agents.report: the committed files must be what that command writes now."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agents import report
from agents.reporting.project_report import HEADLINE_CONTROLLER, controller_headline, main_job, markers, with_blocks
from trainers.config import REPO_ROOT


def test_committed_report_and_readme_blocks_are_up_to_date():
    # --check writes nothing and exits 1 naming each stale file
    assert report.main(["--check"]) is True


def test_a_changed_summary_makes_the_committed_files_stale(tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(REPO_ROOT / "results", results, ignore=shutil.ignore_patterns("per_run", "checkpoint", "*.png",
                                                                                    "heldout_runs", "*.db"))
    readme = tmp_path / "README.md"
    readme.write_text((REPO_ROOT / "README.md").read_text())
    report.main(["--results", str(results), "--readme", str(readme), "--check"])  # a faithful copy is current
    head = results / "agents" / "ppo-smollm2_cpu" / "heldout.json"
    data = json.loads(head.read_text())
    data["summary"]["lr_contraction"] = 0.123456
    data["summary"]["steering"]["lr_contraction"] = 0.123456
    head.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as stop:
        report.main(["--results", str(results), "--readme", str(readme), "--check"])
    assert stop.value.code == 1
    assert "out of date" in capsys.readouterr().err
    report.main(["--results", str(results), "--readme", str(readme)])
    assert "0.12" in (results / "REPORT.md").read_text()
    report.main(["--results", str(results), "--readme", str(readme), "--check"])  # and now current again


def test_with_blocks_names_a_missing_repeated_or_reversed_block():
    cb, ce = markers("controller")
    hb, he = markers("headline")
    mb, me = markers("main-job")
    results = REPO_ROOT / "results"
    for readme in (f"{cb}\n{ce}\nintro\n{hb}\nold\n{he}\n",                          # no main-job block
                   f"{cb}\n{ce}\n{hb}\n{he}\n{mb}\n{me}\n{mb}\n{me}\n",              # the main-job block twice
                   f"{cb}\n{ce}\n{hb}\n{he}\n{me}\n{mb}\n"):                         # its end before its begin
        with pytest.raises(ValueError, match="'main-job'"):
            with_blocks(readme, results)
    with pytest.raises(ValueError, match="'controller'"):
        with_blocks(f"{hb}\n{he}\n{mb}\n{me}\n", results)
    done = with_blocks(f"top\n{cb}\nOLD_BLOCK_TEXT\n{ce}\n{hb}\nOLD_BLOCK_TEXT\n{he}\nmiddle\n{mb}\nOLD_BLOCK_TEXT\n{me}\nend\n",
                       results)
    assert "OLD_BLOCK_TEXT" not in done and done.startswith("top\n") and "\nmiddle\n" in done and done.endswith("end\n")


def test_main_job_line_says_plainly_when_the_controller_does_not_steer(tmp_path):
    assert "not measured yet" in main_job(tmp_path)
    job = {"command": "bash run.sh", "wall_seconds": 600, "setup_seconds": 120, "measured_at": "now",
           "lr_contraction": 1.2, "policy_minus_default_recipe": 0.03, "agent": "results/agents/x"}
    (tmp_path / "main_job.json").write_text(json.dumps(job))
    line = main_job(tmp_path)
    assert "plumbing run" in line and "1.20" in line and "results/agents/x/lr_final_vs_start.png" in line
    assert "not recorded" in line  # no intervals in the record: nothing claimed about them
    job["lr_contraction"] = 0.5
    for boot, t, verdict in (([-0.8, -0.1], [-0.5, -0.01], "better by both"), ([0.1, 0.8], [0.01, 0.5], "worse by both"),
                             ([-0.8, -0.1], [-1.4, 0.6], "not clearly")):
        job.update(policy_minus_default_recipe_ci95=boot, policy_minus_default_recipe_t_ci95=t)
        (tmp_path / "main_job.json").write_text(json.dumps(job))
        line = main_job(tmp_path)
        assert "steers" in line and "plumbing" not in line and "10.0 min" in line and verdict in line, verdict


def _committed_heldout_files() -> list:
    """The committed held-out summaries (git's list, so that a run writing results/agents now does
    not change what two pytest-xdist workers collect); every one on disk outside a git checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "results/agents/*/heldout.json"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return sorted((REPO_ROOT / "results" / "agents").glob("*/heldout.json"))
    return sorted(REPO_ROOT / p for p in out)


@pytest.mark.parametrize("heldout", _committed_heldout_files(), ids=lambda p: p.parent.name)
def test_committed_heldout_summaries_are_what_their_runs_give(heldout):
    # the summaries the README and REPORT quote are recomputed from the committed runs, not trusted
    from agents.reporting.heldout_report import summarise_heldout

    data = json.loads(heldout.read_text())
    fresh = json.loads(json.dumps(summarise_heldout(data["runs"])))  # through JSON, as committed
    committed = {k: v for k, v in data["summary"].items() if k in fresh}
    assert set(fresh) <= set(data["summary"])
    assert _close(committed, fresh)


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a))
    return a == b


def test_train_agents_last_lines_call_a_non_steering_run_a_plumbing_run(tmp_path):
    from agents.reporting.heldout_report import verdict_lines

    head = tmp_path / "headline"
    head.mkdir()
    (head / "agent.json").write_text(json.dumps({"command": "python -m agents.train_agent --config smollm2_cpu"}))
    (tmp_path / "lr_final_vs_start.png").write_bytes(b"png")
    paired = {"default_recipe": {"mean": 0.04, "ci95_low": 0.01, "ci95_high": 0.09, "n_instances": 3, "n_seeds": 3,
                                 "t_ci95_over_instances": [-0.02, 0.1], "policy_better": False}}
    lines = verdict_lines(tmp_path, {"lr_contraction": 1.19, "paired": paired}, headline=head)
    assert lines[0].startswith("this is a plumbing run") and "1.190 >= 1" in lines[0] and "+0.0400" in lines[0]
    assert "[-0.0200, +0.1000]" in lines[0] and "not clearly better" in lines[0]
    assert "--config smollm2_cpu" in lines[1]
    assert lines[-1].startswith("open the plot:") and str(tmp_path / "lr_final_vs_start.png") in lines[-1]
    worse = dict(paired["default_recipe"], t_ci95_over_instances=[0.01, 0.1])
    assert "worse by every interval" in verdict_lines(tmp_path, {"lr_contraction": 1.2, "paired": {"default_recipe": worse}},
                                                      headline=head)[0]
    steering = verdict_lines(tmp_path, {"lr_contraction": 0.4, "paired": paired}, headline=head)
    assert steering[0].startswith("the controller steers") and len(steering) == 2


def test_probability_of_improvement_is_rliables_per_instance_mann_whitney_average():
    from agents.reporting.statistics import probability_of_improvement

    a = {"x": [1.0, 2.0], "y": [5.0]}
    b = {"x": [1.5, 3.0], "y": [5.0], "z": [0.0]}  # z: only one method ran it, left out
    # x: pairs (1<1.5, 1<3, 2>1.5, 2<3) -> 3/4; y: a tie -> 1/2; mean 0.625
    point, lo, hi = probability_of_improvement(a, b, reps=500)
    assert point == 0.625 and lo <= point <= hi
    assert probability_of_improvement(b, a, reps=10)[0] == 1 - 0.625  # the two directions sum to 1
    assert probability_of_improvement({"x": [1.0] * 3}, {"x": [2.0] * 3}, reps=50) == (1.0, 1.0, 1.0)


def test_a_performance_profile_counts_the_runs_above_each_threshold():
    from agents.reporting.statistics import performance_profile

    assert performance_profile([0.0, 0.5, 1.0, 1.5], [-1.0, 0.25, 1.0, 2.0]) == [1.0, 0.75, 0.25, 0.0]


def _controller_summary(in_range: tuple[float, float, float, float], goal_met: bool) -> dict:
    lo, hi, tlo, thi = in_range
    paired = {"mean": (lo + hi) / 2, "ci95_low": lo, "ci95_high": hi, "t_ci95_over_instances": [tlo, thi],
              "n_instances": 3, "n_seeds": 3, "per_instance_mean": {"a": -0.1, "b": 0.02, "c": -0.01}}
    gap = {"median_gap": 0.01 if goal_met else 0.05, "median_gap_ci95": [0.0, 0.1], "mean_compute_steps": 90}
    return {"summary": {"command": "python -m agents.evaluate --agent A", "machine": None, "rescue": {
        "gap_goal": 0.02, "goal_met": goal_met, "methods": {"policy_guess": gap, "held_guess": gap},
        "policy_minus_base_recipe": {"in_range": paired, "extrapolation": {"mean": 0.01, "n_instances": 1},
                                     "extrapolation_instances": ["x-longer"]},
        "steering_from_guesses": {"scale_contraction": 0.4, "median_abs_start_log2_scale": 3.0,
                                  "median_abs_final_log2_scale": 1.0 if goal_met else 3.5}}}}


@pytest.mark.parametrize("interval, says", [((-0.03, -0.01, -0.04, -0.005), "beats the recipe tuned once"),
                                            ((-0.03, 0.01, -0.04, 0.02), "not shown better than the recipe"),
                                            ((-0.03, -0.01, -0.04, 0.005), "not shown better than the recipe"),
                                            ((0.01, 0.03, 0.005, 0.04), "the recipe tuned once is better")])
def test_the_controller_headline_says_which_way_it_came_out(tmp_path, interval, says):
    assert "not evaluated yet" in controller_headline(tmp_path)
    folder = tmp_path / HEADLINE_CONTROLLER
    folder.mkdir(parents=True)
    (folder / "heldout.json").write_text(json.dumps(_controller_summary(interval, goal_met=interval[1] < 0)))
    text = controller_headline(tmp_path)
    assert says in text and "x-longer" in text and "one instance: no interval" in text
    assert "3 instances x 3 seeds; lower on 2 of 3 instances" in text
    assert ("is met" in text) == (interval[1] < 0) and "0.40x" in text
    # 3.0 -> 1.0 closes two thirds of the distance; 3.0 -> 3.5 moves away
    assert ("closes 67% of the distance" in text) == (interval[1] < 0)
    assert ("does not pull wrong guesses back" in text) == (interval[1] >= 0)
    assert "its training is not recorded" in text
    (folder / "agent.json").write_text(json.dumps({"total_timesteps": 1248, "command": "train", "training_seconds": 90}))
    assert "learned from 1248 decisions (`train`, 1.5 min" in controller_headline(tmp_path)
    imitated = {"total_timesteps": 0, "command": "train", "training_seconds": 60, "algo": "ppo",
                "instance_set": "wide_x",
                "action_map": {"control": {"residual": True, "features": "scale_free_anchored"}},
                "imitation": {"source": "recipe", "decisions": 148}}
    (folder / "agent.json").write_text(json.dumps(imitated))
    text = controller_headline(tmp_path)
    assert "The residual anchored PPO controller (`configs/wide_x.yaml`)" in text
    assert "**imitation only**" in text and "148 demonstrated decisions" in text and "learned from" not in text
    (folder / "agent.json").write_text(json.dumps({**imitated, "total_timesteps": 624}))
    text = controller_headline(tmp_path)
    assert "warm-started by imitating 'recipe' (148 decisions), then learned from 624 decisions" in text
    (folder / "agent.json").write_text(json.dumps({k: v for k, v in imitated.items() if k != "total_timesteps"}))
    assert "from an unrecorded number of decisions" in controller_headline(tmp_path)


def test_the_controller_headline_gives_no_verdict_without_an_interval(tmp_path):
    folder = tmp_path / HEADLINE_CONTROLLER
    folder.mkdir(parents=True)
    data = _controller_summary((-0.03, -0.01, -0.04, -0.005), goal_met=True)
    data["summary"]["rescue"]["policy_minus_base_recipe"]["in_range"] = {"mean": -0.02, "n_instances": 1}
    (folder / "heldout.json").write_text(json.dumps(data))
    text = controller_headline(tmp_path)
    assert "no verdict" in text and "beats" not in text
