"""The ablation table (agents.ablation): read from two agents' held-out runs, paired on (instance,
seed), with the extrapolation instances left out and the verdict taken from both intervals."""
import json
import shutil

import numpy as np
import pytest
import yaml

from tests.test_commands import _run
from trainers.config import REPO_ROOT, load_config

ENV_CONFIG = REPO_ROOT / "results" / "agents" / "ppo-smollm2_wide_residual" / "env_config.yaml"


def _agent(folder, losses: dict[tuple[str, int], float], guess_shift: float = 0.0, config=None, guess_scale=0.1):
    folder.mkdir(parents=True)
    if config is None:
        shutil.copy(ENV_CONFIG, folder / "env_config.yaml")
    else:
        (folder / "env_config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    runs = {"policy": [{"instance": i, "seed": s, "test_loss": v, "start_scales": [1.0, 1.0, 1.0]}
                       for (i, s), v in losses.items()],
            "policy_guess": [{"instance": i, "seed": s, "test_loss": v + guess_shift,
                              "start_scales": [guess_scale, 1.0, 1.0]} for (i, s), v in losses.items()],
            "held_start": [{"instance": i, "seed": s, "test_loss": 2.0} for (i, s) in losses]}
    (folder / "heldout.json").write_text(json.dumps({"runs": runs, "summary": {}}))
    return folder


@pytest.fixture(scope="module")
def instances():
    cfg = load_config(ENV_CONFIG)
    return ([i.name for i in cfg.heldout if "extrapolation" not in i.tags],
            [i.name for i in cfg.heldout if "extrapolation" in i.tags])


def test_a_part_that_lowered_the_loss_everywhere_is_bought_and_extrapolation_is_left_out(tmp_path, instances):
    from agents.ablation import main

    in_range, extrapolation = instances
    rng = np.random.default_rng(0)
    full = {(i, s): 2.0 + rng.normal(0, 0.05) for i in in_range + extrapolation for s in range(3)}
    # without the part: 0.1 worse in range from the recipe's start, 0.1 better from a guess; much
    # better on the extrapolation instances, which the in-range rows must not see
    without = {(i, s): v + (0.1 if i in in_range else -5.0) + rng.normal(0, 0.01) for (i, s), v in full.items()}
    a = _agent(tmp_path / "full", full, guess_shift=0.3)
    b = _agent(tmp_path / "without", without, guess_shift=0.3 - 0.2)
    out = main(["--full", str(a), "--without", f"anchor={b}", "--out", str(tmp_path / "abl")])
    row = out["parts"]["anchor"]
    assert row["policy"]["mean"] == pytest.approx(0.1, abs=0.02) and row["policy"]["verdict"] == "bought"
    assert row["policy"]["n_instances"] == len(in_range) and row["policy"]["n_seeds"] == 3
    assert row["policy_guess"]["mean"] == pytest.approx(-0.1, abs=0.02) and row["policy_guess"]["verdict"] == "cost"
    assert sorted(out["extrapolation_instances"]) == sorted(extrapolation)
    # the rescue gap (over the recipe's own run, 2.0 here) counts the in-range instances alone
    assert out["full_rescue_gap"]["n_instances"] == len(in_range)
    assert out["full_rescue_gap"]["median_gap"] == pytest.approx(0.3 / 2.0, abs=0.02)
    assert row["own_rescue_gap"]["median_gap"] == pytest.approx(0.2 / 2.0, abs=0.02)
    saved = json.loads((tmp_path / "abl" / "full.json").read_text())
    assert saved["parts"]["anchor"]["policy"]["mean"] == row["policy"]["mean"]
    assert "| anchor |" in (tmp_path / "abl" / "full.md").read_text()


def test_agents_evaluated_on_other_seeds_are_refused_by_name(capsys, tmp_path, instances):
    in_range, _ = instances
    a = _agent(tmp_path / "full", {(i, s): 1.0 for i in in_range for s in range(3)})
    b = _agent(tmp_path / "b", {(i, s): 1.0 for i in in_range for s in range(2)})
    line = _run(capsys, "agents.ablation", ["--full", str(a), "--without", f"x={b}", "--out", str(tmp_path / "o")])
    assert "runs.policy covers other (instance, seed) pairs" in line and str(b) in line
    line = _run(capsys, "agents.ablation", ["--full", str(a), "--without", "nothing-here"])
    assert "PART=AGENT_FOLDER" in line
    line = _run(capsys, "agents.ablation", ["--full", str(tmp_path / "none"), "--without", f"x={b}"])
    assert "no held-out evaluation" in line
    assert not (tmp_path / "o").exists()


def test_agents_that_met_other_runs_are_refused(capsys, tmp_path, instances):
    """Another recipe, other extrapolation tags, or other starts: not an ablation of the same runs."""
    in_range, _ = instances
    cfg = load_config(ENV_CONFIG)
    losses = {(i, s): 1.0 for i in in_range for s in range(2)}
    a = _agent(tmp_path / "full", losses)
    other_recipe = cfg.model_copy(update={"control": cfg.control.model_copy(
        update={"recipe": cfg.control.recipe.model_copy(update={"lr": 1e-3})})})
    b = _agent(tmp_path / "recipe", losses, config=other_recipe)
    assert "another base recipe" in _run(capsys, "agents.ablation", ["--full", str(a), "--without", f"x={b}"])
    retagged = cfg.model_copy(update={"heldout": tuple(i.model_copy(update={"tags": ()}) for i in cfg.heldout)})
    c = _agent(tmp_path / "tags", losses, config=retagged)
    assert "another instance set" in _run(capsys, "agents.ablation", ["--full", str(a), "--without", f"x={c}"])
    d = _agent(tmp_path / "starts", losses, guess_scale=10.0)
    line = _run(capsys, "agents.ablation", ["--full", str(a), "--without", f"x={d}"])
    assert "runs.policy_guess" in line and "started elsewhere" in line


def test_a_row_that_switches_off_more_than_its_part_lists_everything_it_changed(tmp_path, instances):
    """An agent without imitation that also learned for longer, or without the anchor that also
    imitated nothing, is not a one-part ablation: the row names every difference."""
    from agents.ablation import main

    in_range, extrapolation = instances
    losses = {(i, s): 2.0 for i in in_range + extrapolation for s in range(3)}
    a = _agent(tmp_path / "full", losses)
    b = _agent(tmp_path / "same", losses)
    c = _agent(tmp_path / "other", losses)
    cfg = load_config(ENV_CONFIG)
    d = _agent(tmp_path / "anchored", losses,  # the shared config has no anchor: this one has
               config=cfg.model_copy(update={"control": cfg.control.model_copy(update={"features": "scale_free_anchored"})}))
    e = _agent(tmp_path / "unrecorded", losses)
    hp = {"learning_rate": 1e-4, "n_epochs": 10}
    full = {"algo": "ppo", "total_timesteps": 624, "seed": 0, "n_envs": 2, "command": "train", "learner_hparams": hp,
            "imitation": {"source": "recipe", "decisions": 148}}
    for folder in (a, b, d):
        (folder / "agent.json").write_text(json.dumps(full))
    (c / "agent.json").write_text(json.dumps({**full, "total_timesteps": 1248, "imitation": None,
                                              "learner_hparams": {**hp, "learning_rate": 3e-4}}))
    out = main(["--full", str(a), "--without", f"same={b}", "--without", f"imitation={c}",
                "--without", f"anchor={d}", "--without", f"unknown={e}", "--out", str(tmp_path / "abl")])
    assert out["parts"]["same"]["differs_in"] == []
    assert out["parts"]["imitation"]["differs_in"] == ["imitation None (full: recipe)",
                                                      "imitated decisions None (full: 148)",
                                                      "learned decisions 1248 (full: 624)",
                                                      "learning_rate 0.0003 (full: 0.0001)"]
    assert out["parts"]["anchor"]["differs_in"] == ["control.features"]
    assert out["parts"]["unknown"]["differs_in"] == ["training not recorded (no agent.json)"]
    table = (tmp_path / "abl" / "full.md").read_text()
    assert "| same | " in table and "| nothing |" in table and "learned decisions 1248 (full: 624)" in table
