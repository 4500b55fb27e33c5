"""Short real training of each learner on the real engine, the agent folder, deploy and replay."""
import json
import math

import numpy as np
import pytest
import yaml

from agents import train_agent, tune
from trainers.config import REPO_ROOT
from agents.learners.agent_folder import Controller
from agents.learners.qlearning import QLearningAgent, QLearningConfig



@pytest.fixture(scope="module")
def fast_yaml(tmp_path_factory, fast_cfg_dict):
    d = dict(fast_cfg_dict)
    d["train"] = d["train"][:2]
    d["heldout"] = d["heldout"][:2]
    p = tmp_path_factory.mktemp("cfg") / "fast.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _train(algo, fast_yaml, out, uri, extra=()):
    args = train_agent.parse_args(["--algo", algo, "--config", str(fast_yaml), "--decisions", "8",
                                   "--out", str(out), "--tracking-uri", uri, "--eval-seeds", "1",
                                   "--validate-every", "4", "--checkpoint-every", "4", *extra])
    return train_agent.train(args)


@pytest.mark.parametrize("algo", ["ppo", "dqn", "qlearning"])
def test_learner_trains_saves_and_evaluates(algo, fast_yaml, tmp_path_factory, tracking_uri):
    folder = _train(algo, fast_yaml, tmp_path_factory.mktemp(algo), tracking_uri)
    meta = json.loads((folder / "agent.json").read_text())
    assert meta["algo"] == algo and meta["total_timesteps"] >= 8
    for f in [meta["model_file"], "env_config.yaml", "training_curve.csv", "learning_curve.png", "heldout.md"]:
        assert (folder / f).is_file(), f
    if algo != "qlearning":  # weights and statistics without pickles
        assert meta["model_file"] == "policy.safetensors" and (folder / "obs_normalization.json").is_file()
        assert not list(folder.glob("*.pkl"))
    curve = (folder / "training_curve.csv").read_text().splitlines()
    assert len(curve) - 1 == 8 // 2  # 2 decisions per 8-step episode
    held = json.loads((folder / "heldout.json").read_text())["summary"]
    for method in ("policy", "default_recipe", "held_start"):
        s = held[method]
        assert s["n_runs"] == 2 and math.isfinite(s["test_loss_mean"])
        assert set(s["per_instance"]) == {"bbc-tech-lm", "bbc-sport-lm-small"}
    for key in ("policy_minus_recipe", "policy_minus_held_start"):
        assert held[key]["n_pairs"] == 2
    for baseline in ("default_recipe", "held_start"):  # the instance-level headline
        p = held["paired"][baseline]
        assert (p["n_instances"], p["n_seeds"]) == (2, 1) and p["ci95_low"] <= p["mean"] <= p["ci95_high"]
        assert p["mean"] == pytest.approx(held[{"default_recipe": "policy_minus_recipe"}.get(
            baseline, "policy_minus_held_start")]["test_loss_diff_mean"])  # one seed: the same mean
        assert "bootstrap" in p["method"]
    runs = json.loads((folder / "heldout.json").read_text())["runs"]
    start = np.log([r["schedule"][0]["lr"] for r in runs["held_start"]])  # the drawn start, held
    assert np.allclose(start, np.log([r["initial_hparams"]["lr"] for r in runs["policy"]]))
    final = np.log([r["schedule"][-1]["lr"] for r in runs["policy"]])
    assert held["lr_contraction"] == pytest.approx(final.std() / start.std())
    assert (folder / "lr_final_vs_start.png").is_file()
    # no control really holds the drawn starting point: one distinct hyperparameter set per run
    for run in json.loads((folder / "heldout.json").read_text())["runs"]["held_start"]:
        assert len({tuple(sorted(h.items())) for h in run["schedule"]}) == 1
    assert len(meta["heldout_validation"]) == 2
    # the folder alone is enough to act
    c = Controller(folder)
    a = c.act(np.zeros(14, dtype=np.float32))
    assert c.action_mode == ("box" if algo == "ppo" else "discrete")
    assert np.asarray(a).shape == ((3,) if algo == "ppo" else ())


def test_qlearning_update_is_the_textbook_rule():
    agent = QLearningAgent(3, QLearningConfig(alpha=0.5, gamma=0.9))
    s, s2 = np.zeros(14), np.full(14, 0.5)
    agent.values(agent.state(s2))[:] = [1.0, 4.0, 2.0]
    agent.values(agent.state(s))[1] = 2.0
    td = agent.update(s, 1, 1.0, s2, done=False)
    assert td == pytest.approx(1.0 + 0.9 * 4.0 - 2.0)
    assert agent.values(agent.state(s))[1] == pytest.approx(2.0 + 0.5 * td)
    agent.update(s, 0, -1.0, s2, done=True)  # terminal: no bootstrap
    assert agent.values(agent.state(s))[0] == pytest.approx(0.5 * -1.0)


def _checkpoint(folder):
    state = json.loads((folder / "checkpoint" / "state.json").read_text())
    return state, {k: folder / "checkpoint" / v for k, v in state["files"].items()}


@pytest.mark.parametrize("algo", ["qlearning", "ppo"])  # DQN: test_dqn_resume_keeps_its_replay_buffer...
def test_resume_continues_from_checkpoint(algo, fast_yaml, tmp_path, tracking_uri, capsys):
    folder = _train(algo, fast_yaml, tmp_path, tracking_uri, ["--no-heldout"])
    state, files = _checkpoint(folder)
    assert state["num_timesteps"] == 8 and all(f.is_file() for f in files.values())
    assert "replay_buffer" not in files
    assert sorted(p.name for p in (folder / "checkpoint").iterdir()) == sorted(["state.json", *state["files"].values()])
    args = train_agent.parse_args(["--algo", algo, "--config", str(fast_yaml), "--decisions", "12",
                                   "--out", str(tmp_path), "--tracking-uri", tracking_uri, "--resume",
                                   "--no-heldout", "--validate-every", "0"])
    folder = train_agent.train(args)
    meta = json.loads((folder / "agent.json").read_text())
    # PPO learns whole rollouts: the first run's 8-step rollouts take it from 8 to 16, and it says so first
    expected = 16 if algo == "ppo" else 12
    note = "resuming at decision 8; PPO learns in whole rollouts of 8 decisions here"
    assert (note in capsys.readouterr().err) == (algo == "ppo")
    assert meta["total_timesteps"] == expected and meta["mlflow_run_id"] == state["mlflow_run_id"]
    assert meta["learner_hparams"] == state["learner_hparams"]
    assert len((folder / "training_curve.csv").read_text().splitlines()) - 1 == expected // 2


def test_dqn_resume_keeps_its_replay_buffer_under_another_n_envs(fast_yaml, tmp_path, tracking_uri, monkeypatch,
                                                                 capsys):
    """Each DQN checkpoint holds every transition its decision count claims (SB3 stores a step after
    the callback sees it), a resume with another --n-envs samples from all of them, oldest first,
    and a damaged buffer is refused in one line."""
    from agents.learners import sb3_setup
    from tests.test_commands import _run

    saved, real = [], sb3_setup.save_replay_buffer

    def spy(path, buffer):
        saved.append((path.name, int(buffer.valid.sum())))
        real(path, buffer)

    monkeypatch.setattr(sb3_setup, "save_replay_buffer", spy)
    folder = _train("dqn", fast_yaml, tmp_path, tracking_uri, ["--no-heldout"])
    assert saved[:2] == [("replay_buffer-00000004.npz", 4), ("replay_buffer-00000008.npz", 8)]
    with np.load(_checkpoint(folder)[1]["replay_buffer"]) as b:
        first = {k: b[k] for k in b.files}
    assert first["valid"].shape == (8, 1) and first["valid"].all()
    argv = ["--algo", "dqn", "--config", str(fast_yaml), "--decisions", "12", "--out", str(tmp_path),
            "--tracking-uri", tracking_uri, "--resume", "--no-heldout", "--validate-every", "0", "--n-envs", "2"]
    folder = train_agent.train(train_agent.parse_args(argv))
    meta = json.loads((folder / "agent.json").read_text())
    assert meta["total_timesteps"] == 12 and len((folder / "training_curve.csv").read_text().splitlines()) - 1 == 6
    with np.load(_checkpoint(folder)[1]["replay_buffer"]) as b:
        assert b["valid"].shape == (6, 2) and b["valid"].all() and int(b["pos"]) == 6
        for name in ("observations", "actions", "rewards", "next_observations", "dones", "timeouts"):
            assert np.array_equal(b[name][b["valid"]][:8], first[name][:, 0]), name  # rows in order, then envs
    npz = _checkpoint(folder)[1]["replay_buffer"]
    data = bytearray(npz.read_bytes())
    data[len(data) // 3] ^= 0xFF  # a flipped byte inside the compressed arrays
    npz.write_bytes(bytes(data))
    line = _run(capsys, "agents.train_agent", [*argv[:5], "16", *argv[6:]])
    assert "--resume" in line and npz.name in line and "damaged" in line, line


def test_ppo_resume_starts_from_the_checkpointed_weights_and_statistics(fast_yaml, tmp_path, tracking_uri):
    """Resuming with nothing left to learn must give back exactly what was checkpointed."""
    from safetensors.torch import load_file

    folder = _train("ppo", fast_yaml, tmp_path, tracking_uri, ["--no-heldout"])
    first = load_file(str(folder / "policy.safetensors"))
    first_stats = json.loads((folder / "obs_normalization.json").read_text())
    args = train_agent.parse_args(["--algo", "ppo", "--config", str(fast_yaml), "--decisions", "8",
                                   "--out", str(tmp_path), "--tracking-uri", tracking_uri, "--resume",
                                   "--no-heldout", "--validate-every", "0"])
    folder = train_agent.train(args)
    again = load_file(str(folder / "policy.safetensors"))
    assert first.keys() == again.keys() and all(bool((first[k] == again[k]).all()) for k in first)
    stats = json.loads((folder / "obs_normalization.json").read_text())
    # SB3's learn() resets the envs, and VecNormalize counts that one observation: the checkpointed
    # statistics plus one (a VecNormalize that had not loaded them would count about 1)
    assert first_stats["count"] > 5 and stats["count"] == pytest.approx(first_stats["count"] + 1)


def test_saved_policy_acts_as_the_trained_sb3_model(fast_yaml, tmp_path, tracking_uri):
    """The folder's safetensors weights and JSON statistics give the trained model's actions, with
    SB3's own VecNormalize doing the normalisation on the reference side."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from agents.learners.sb3_setup import ObsNormalization

    folder = _train("ppo", fast_yaml, tmp_path, tracking_uri, ["--no-heldout"])
    _, files = _checkpoint(folder)
    sb3 = PPO.load(files["model"], device="cpu")  # this test's own file
    space = gym.spaces.Box(-10, 10, (14,), np.float32)

    class Shape(gym.Env):
        observation_space, action_space = space, sb3.action_space

    reference = VecNormalize(DummyVecEnv([Shape]), norm_obs=True, norm_reward=False, clip_obs=10.0)
    ObsNormalization.load(files["obs_normalization"]).apply_to(reference)
    reference.training = False
    controller = Controller(folder)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs = rng.normal(0, 1, 14).astype(np.float32)
        expected, _ = sb3.predict(reference.normalize_obs(obs[None]), deterministic=True)
        np.testing.assert_allclose(controller.act(obs), expected[0], rtol=1e-6)


def test_deploy_then_replay_reproduces_losses(fast_yaml, tmp_path, tracking_uri):
    folder = _train("ppo", fast_yaml, tmp_path / "agents", tracking_uri, ["--no-heldout"])
    out = tmp_path / "tuned"
    res = tune.main(["--agent", str(folder), "--instance", "bbc-tech-lm", "--seed", "3", "--out", str(out)])
    sched = json.loads((out / "schedule.json").read_text())
    assert len(sched["schedule"]) == 8 and (out / "model" / "config.json").is_file()
    assert math.isfinite(json.loads((out / "metrics.json").read_text())["test_loss"])
    rep = tune.main(["--replay", str(out / "schedule.json"), "--no-save-model"])
    assert rep["reproduced"] is True
    assert rep["log"]["train_loss"] == res["log"]["train_loss"]


def test_deploy_on_users_jsonl(fast_yaml, tmp_path, tracking_uri, capsys):
    folder = _train("qlearning", fast_yaml, tmp_path / "agents", tracking_uri, ["--no-heldout"])
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Color of item {i}?", "completion": f" {['red', 'blue'][i % 2]}"}) + "\n"
                            for i in range(60)))
    res = tune.main(["--agent", str(folder), "--data", str(data), "--steps", "8", "--out", str(tmp_path / "t"),
                     "--no-save-model"])
    assert res["log"]["instance"] == "mine" and len(res["log"]["schedule"]) == 8
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 1}\n')
    with pytest.raises(SystemExit) as exit_info:
        tune.main(["--agent", str(folder), "--data", str(bad), "--no-save-model"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {bad}:2: ") and "'completion'" in err[-1]


def test_instance_level_interval_weighs_instances_not_seeds():
    from agents.reporting.statistics import hierarchical_bootstrap_mean

    # one instance with many seeds must not outvote the others: the point is the mean of means
    m, lo, hi = hierarchical_bootstrap_mean({"a": [-1.0] * 30, "b": [1.0], "c": [1.0]}, reps=2000)
    assert m == pytest.approx(1.0 / 3.0)
    assert lo == pytest.approx(-1.0) and hi == pytest.approx(1.0)  # resampling instances spans all-a to no-a
    m, lo, hi = hierarchical_bootstrap_mean({"a": [-0.2, -0.2], "b": [-0.2, -0.2]}, reps=500)
    assert (m, lo, hi) == pytest.approx((-0.2, -0.2, -0.2))
    # seeds that disagree within instances widen the interval
    _, lo2, hi2 = hierarchical_bootstrap_mean({"a": [-1.0, 0.6], "b": [-0.8, 0.4]}, reps=2000)
    assert lo2 < -0.5 and hi2 > 0.2


def test_steering_summary_tells_holding_from_steering():
    from agents.reporting.heldout_report import steering

    starts = [1e-5, 1e-4, 1e-3, 1e-2, 3e-5, 3e-3]

    def runs(final):
        return {"held_start": [{"instance": f"i{k % 2}", "seed": k, "schedule": [{"lr": s}] * 3}
                                     for k, s in enumerate(starts)],
                # the policy's first step already carries its first action: not the start
                "policy": [{"instance": f"i{k % 2}", "seed": k, "schedule": [{"lr": 2 * s}, {"lr": final(s)}]}
                           for k, s in enumerate(starts)]}

    hold = steering(runs(lambda s: s))
    assert hold["lr_contraction"] == pytest.approx(1.0) and hold["median_abs_log2_change"] == 0.0
    pull = steering(runs(lambda s: math.sqrt(s * 3e-4)))  # halfway to 3e-4 on a log scale
    assert pull["lr_contraction"] == pytest.approx(0.5)
    assert pull["lowest_third_starts_raised"] == 1.0 and pull["highest_third_starts_lowered"] == 1.0


def test_reused_baselines_are_the_runs_a_fresh_evaluation_makes(fast_yaml, tmp_path, tracking_uri):
    from agents import evaluate

    a = _train("qlearning", fast_yaml, tmp_path / "a", tracking_uri, ["--no-heldout", "--validate-every", "0"])
    b = _train("ppo", fast_yaml, tmp_path / "b", tracking_uri, ["--no-heldout", "--validate-every", "0"])
    evaluate.main(["--agent", str(a), "--seeds", "1", "--no-mlflow"])
    fresh = evaluate.main(["--agent", str(b), "--seeds", "1", "--no-mlflow"])
    fresh_runs = json.loads((b / "heldout.json").read_text())["runs"]
    reused = evaluate.main(["--agent", str(b), "--seeds", "1", "--no-mlflow", "--baselines-from", str(a)])
    assert reused["baselines_from"]["folder"] == str(a)
    reused_runs = json.loads((b / "heldout.json").read_text())["runs"]
    for m in ("default_recipe", "held_start"):
        assert [r["test_loss"] for r in reused_runs[m]] == [r["test_loss"] for r in fresh_runs[m]]
        assert reused[m]["test_loss_mean"] == fresh[m]["test_loss_mean"]
    assert [r["test_loss"] for r in reused_runs["policy"]] == [r["test_loss"] for r in fresh_runs["policy"]]
    # the runs are saved as they finish: an evaluation run again reads them back, recomputing nothing
    saved = sorted((b / "heldout_runs").glob("*.json"))
    stamps = [f.stat().st_mtime_ns for f in saved]
    evaluate.main(["--agent", str(b), "--seeds", "1", "--no-mlflow"])
    assert len(saved) == 2 and [f.stat().st_mtime_ns for f in saved] == stamps
    # two worker processes, each with its own engine, make the same runs in the same order (from scratch)
    import shutil

    shutil.rmtree(b / "heldout_runs")
    evaluate.main(["--agent", str(b), "--seeds", "1", "--no-mlflow", "--workers", "2"])
    parallel_runs = json.loads((b / "heldout.json").read_text())["runs"]
    for m in fresh_runs:
        assert [(r["instance"], r["seed"], r["test_loss"]) for r in parallel_runs[m]] == \
            [(r["instance"], r["seed"], r["test_loss"]) for r in fresh_runs[m]]
    # more seeds than the other evaluation ran: stops, naming what is missing
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--agent", str(b), "--seeds", "2", "--no-mlflow", "--baselines-from", str(a)])
    assert info.value.code == 2
    # runs measured on another stack are not reused
    other = json.loads((a / "heldout.json").read_text())
    other["summary"]["machine"]["torch"] = "0.0.1"
    (a / "heldout.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit) as info:
        evaluate.main(["--agent", str(b), "--seeds", "1", "--no-mlflow", "--baselines-from", str(a)])
    assert info.value.code == 2


def test_tune_runs_lora_adapters_and_replays_them(tmp_path):
    from safetensors.torch import load_file

    agent = REPO_ROOT / "results" / "agents" / "ppo-tiny-seed0"
    out = tmp_path / "lora"
    res = tune.main(["--agent", str(agent), "--instance", "bbc-tech-lm", "--steps", "6", "--lora-rank", "4",
                     "--out", str(out)])
    sched = json.loads((out / "schedule.json").read_text())
    inst = next(i for i in sched["config"]["heldout"] if i["name"] == "bbc-tech-lm")
    assert inst["lora"]["rank"] == 4 and len(sched["schedule"]) == 6
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert weights and not [k for k in weights if "lora" in k]  # a plain model, adapters folded in
    rep = tune.main(["--replay", str(out / "schedule.json"), "--no-save-model"])
    assert rep["reproduced"] is True and rep["log"]["train_loss"] == res["log"]["train_loss"]
    plain = tune.main(["--agent", str(agent), "--instance", "bbc-tech-lm", "--steps", "6", "--no-save-model",
                       "--out", str(tmp_path / "plain")])
    assert plain["log"]["train_loss"] != res["log"]["train_loss"]  # the adapters, not the weights, trained


def test_a_checkpoint_mid_rollout_counts_only_the_rollouts_learned(fast_yaml, tmp_path, tracking_uri, monkeypatch):
    """PPO learns a rollout at its end. A run of one 8-decision rollout is resumed for 16 and stopped
    in the middle of its second rollout (decision 11): its checkpoint says it learned 8, and the
    next resume collects that rollout again and learns the 16 asked for, not 8 more from 11."""
    from agents.learners import training_run

    folder = _train("ppo", fast_yaml, tmp_path, tracking_uri, ["--no-heldout"])  # 8 decisions, rollouts of 8
    real = training_run.TrainingMonitor.on_step

    def stop_at_11(self, n, infos):
        if n == 11:
            raise KeyboardInterrupt
        return real(self, n, infos)

    resume = ["--algo", "ppo", "--config", str(fast_yaml), "--decisions", "16", "--out", str(tmp_path),
              "--tracking-uri", tracking_uri, "--resume", "--no-heldout", "--validate-every", "0"]
    monkeypatch.setattr(training_run.TrainingMonitor, "on_step", stop_at_11)
    with pytest.raises(Exception, match="checkpointed at decision 8"):
        train_agent.train(train_agent.parse_args(resume))
    state = json.loads((folder / "checkpoint" / "state.json").read_text())
    assert state["num_timesteps"] == 8 and state["decisions_not_learned"] == 3
    assert all(r["timesteps"] <= 8 for r in state["curve"])
    monkeypatch.setattr(training_run.TrainingMonitor, "on_step", real)
    meta = json.loads((train_agent.train(train_agent.parse_args(resume)) / "agent.json").read_text())
    assert meta["total_timesteps"] == 16
