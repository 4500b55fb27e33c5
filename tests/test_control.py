"""Control (envs/control.py, trainers.config.ControlConfig): the residual schedule, schedule actions,
the scale-free observation and the paired reward, on the real tiny engine at test size."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from envs.control import ControlActions, ControlledSchedule, Decoded, cooldown_power
from envs.features import SCALE_FREE_FEATURES, RunContext, UpdateStats, observe_scale_free
from trainers.config import ActionConfig, ControlConfig, HparamBounds, RecipeConfig, load_config, parse_config
from trainers.schedules import recipe_schedule
from trainers.session import Hparams, StepMetrics

FULL = {"residual": True, "schedule_actions": True, "features": "scale_free", "reward": "paired",
        "reference_seeds": 2, "lr_log2_step": 2.0}
BOUNDS = HparamBounds(lr=(1e-5, 1e-1))


@pytest.fixture(scope="module")
def control_cfg(fast_cfg_dict):
    return parse_config({**fast_cfg_dict, "control": FULL})


@pytest.fixture()
def control_env(control_cfg, tiny_session):
    from envs.episode import ReferenceRuns
    from envs.finetune_env import FineTuneEnv

    return FineTuneEnv(control_cfg, split="all", session=tiny_session, references=ReferenceRuns())


def _fresh_mlflow(mlflow, tmp_path) -> None:
    """A store of the test's own, with no run or experiment another test left active."""
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    # with its artifact folder: by default it would be ./mlruns, inside the repository
    mlflow.create_experiment("control", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("control")


def _zero(env):
    return np.zeros(env.action_space.shape, dtype=np.float32)


def _episode(env, act, **reset):
    obs, info = env.reset(**reset)
    rewards, done = [], False
    while not done:
        obs, r, done, _, info = env.step(act(obs))
        rewards.append(r)
    return rewards, info["episode_log"]


# ---------------------------------------------------------------- the schedule, by itself
def test_no_correction_is_the_base_schedule_bit_for_bit():
    base = recipe_schedule(RecipeConfig(lr=3e-4), 40, min_lr=1e-5)
    sched = ControlledSchedule(base, BOUNDS)
    for step in (0, 10, 20):
        sched.act(Decoded(np.zeros(3)), step)
    assert sched.interval(0, 40) == base  # the same objects' values, not approximately


def test_scales_multiply_the_base_and_stop_where_the_peak_leaves_the_bounds():
    base = recipe_schedule(RecipeConfig(lr=1e-3, decay="constant", warmup_fraction=0.0), 20)
    sched = ControlledSchedule(base, BOUNDS)
    sched.act(Decoded(np.array([2.0, 0.0, -1.0])), 0)  # lr x4, clip /2
    h = sched.hparams_at(5)
    assert h.lr == pytest.approx(4e-3) and h.grad_clip == pytest.approx(0.5) and h.weight_decay == base[5].weight_decay
    for _ in range(10):  # far past the upper bound: the scale stops at bound / peak
        sched.act(Decoded(np.array([2.0, 0.0, 0.0])), 5)
    assert sched.scales[0] == pytest.approx(1e-1 / 1e-3)
    sched.act(Decoded(np.array([-2.0, 0.0, 0.0])), 5)  # so one step down is felt at once
    assert sched.hparams_at(6).lr == pytest.approx(1e-1 / 4)


def test_cooldown_starts_once_from_the_current_lr_with_the_shape_asked():
    assert cooldown_power(0.5) is None and cooldown_power(0.75) == 2.0 and cooldown_power(1.0) == 4.0
    assert cooldown_power(0.5001) == pytest.approx(1.0, abs=1e-3)
    base = recipe_schedule(RecipeConfig(lr=1e-3, decay="constant", warmup_fraction=0.0), 40)
    sched = ControlledSchedule(base, BOUNDS)
    sched.act(Decoded(np.zeros(3), cooldown=1.0), 20)  # linear from step 20 toward 0 at step 40
    assert [sched.base_lr(s) for s in (19, 20, 30)] == pytest.approx([1e-3, 1e-3, 5e-4])
    sched.act(Decoded(np.zeros(3), cooldown=2.0), 30)  # a second cooldown changes nothing
    assert sched.cooldown_start == 20 and sched.cooldown_power == 1.0
    square = ControlledSchedule(base, BOUNDS)
    square.act(Decoded(np.zeros(3), cooldown=2.0), 20)
    assert square.base_lr(30) == pytest.approx(1e-3 * 0.25)


def test_on_the_headline_recipe_every_cooldown_the_menu_offers_changes_the_schedule():
    """The transferred recipe warms up, then decays linearly to 0: a linear cooldown from after the
    warmup would retrace it, so the shapes offered start above linear and all lower the lr sooner."""
    from trainers.config import load_config

    recipe = load_config("smollm2_wide_residual").base_recipe
    base = recipe_schedule(recipe, 60, min_lr=1e-6)
    for entry in (0.6, 0.75, 1.0):
        for start in (20, 40):
            sched = ControlledSchedule(base, HparamBounds(lr=(1e-6, 3e-2)))
            sched.act(Decoded(np.zeros(3), cooldown=cooldown_power(entry)), start)
            after = [sched.hparams_at(s).lr for s in range(start + 1, 59)]
            assert all(a <= b.lr for a, b in zip(after, base[start + 1:59]))
            assert sum(after) < 0.97 * sum(b.lr for b in base[start + 1:59]), (entry, start)
    menu = ControlActions(ActionConfig(mode="discrete"), ControlConfig(**FULL))
    assert menu.decode(len(ActionConfig().menu)).cooldown == 2.0


def test_control_actions_decode_box_and_menu():
    ca = ControlActions(ActionConfig(mode="box"), ControlConfig(**FULL))
    assert ca.space.shape == (5,)
    d = ca.decode([0.5, -1.0, 0.0, 0.6, 0.9])
    assert d.log2_scales.tolist() == [1.0, -1.0, 0.0] and d.cooldown == pytest.approx(2 ** 0.4) and d.rollback
    assert ca.decode(np.zeros(5)).cooldown is None and not ca.decode(np.zeros(5)).rollback
    menu = ControlActions(ActionConfig(mode="discrete"), ControlConfig(**FULL))
    assert menu.space.n == len(ActionConfig().menu) + 2
    assert menu.decode(len(ActionConfig().menu)).cooldown == 2.0  # the quadratic cooldown
    assert menu.decode(len(ActionConfig().menu) + 1).rollback
    assert not menu.decode(0).rollback and menu.decode(0).log2_scales.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="5 entries"):
        ca.decode(np.zeros(3))


# ---------------------------------------------------------------- the scale-free observation
def _steps(losses, norms):
    return [StepMetrics(i, l, g, 1e-3, 100, 0.1, False) for i, (l, g) in enumerate(zip(losses, norms))]


def test_the_scale_free_observation_does_not_see_the_losss_scale():
    """A run at loss 4 and one at loss 0.4 that improve alike (the same relative curve, the same
    relative gradient norms) look the same; the context and the controller's correction are there."""
    rng = np.random.default_rng(0)
    curve = 1.0 - 0.02 * np.arange(10) + 0.01 * rng.standard_normal(10)
    ctx = RunContext(1_000_000, 16, 8, 120, 64)

    def obs(scale):
        return observe_scale_free(0.5, 0, [1.0, 0.0, 0.0], 0.8, False,
                                  _steps(scale * curve, scale * np.ones(10)), UpdateStats(1e-3, 0.7), scale * 1.0,
                                  scale * 0.9, scale * 1.0, -scale * 0.02, scale * 0.88, ctx)

    a, b = obs(4.0), obs(0.4)
    assert a.shape == (len(SCALE_FREE_FEATURES),)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    named = dict(zip(SCALE_FREE_FEATURES, a))
    assert named["train_loss_slope_t"] < -math.log1p(5)  # a clear downward trend through the noise (t < -5)
    assert named["lr_scale_log2"] == 1.0 and named["ctx_lora"] == 1.0 and named["ctx_log2_lora_rank"] == 4.0
    assert named["update_cosine"] == pytest.approx(0.7) and named["update_ratio_log10"] == pytest.approx(-3)
    assert named["gap_to_best_rel"] == pytest.approx(0.02)


# ---------------------------------------------------------------- the environment under control
def test_a_residual_controller_that_never_acts_runs_the_recipe_exactly(control_env, control_cfg):
    """The same schedule, training losses and validation curve as the recipe run on the same seed,
    bit for bit; the paired reward of every decision is exactly 0."""
    from envs.episode import recipe_plan, run_episode

    name = control_cfg.train[0].name
    rewards, log = _episode(control_env, lambda o: _zero(control_env), seed=5, options={"instance": name})
    recipe = run_episode(control_env, recipe_plan(control_env, control_cfg.base_recipe, name), name, 5)
    assert log["schedule"] == recipe["schedule"]
    assert log["train_loss"] == recipe["train_loss"] and log["eval_curve"] == recipe["eval_curve"]
    assert rewards == [0.0] * len(rewards) and len(rewards) == 2
    assert log["reference_eval_loss"] == recipe["eval_curve"][-1][1]


def test_the_paired_return_is_the_final_advantage_over_the_recipe(control_env, control_cfg):
    name = control_cfg.train[1].name
    up = np.array([1.0, 0, 0, 0, 0], dtype=np.float32)  # lr x4 at every decision
    rewards, log = _episode(control_env, lambda o: up, seed=1, options={"instance": name})
    final, ref = log["eval_curve"][-1][1], log["reference_eval_loss"]
    assert sum(rewards) == pytest.approx((ref - final) / log["initial_eval_loss"], abs=1e-9)
    assert abs(sum(rewards)) > 1e-4  # the controller changed something
    recipe = recipe_schedule(control_cfg.base_recipe, len(log["schedule"]), min_lr=control_cfg.bounds.lr[0])
    assert log["schedule"][0]["lr"] == pytest.approx(4 * recipe[0].lr)  # its first decision, before step 0


def test_a_rollback_keeps_the_paired_return_the_final_advantage(control_env, control_cfg, monkeypatch):
    """What a rollback gives back is credited to the interval after it: the episode's return is
    still its final advantage over the recipe (and, unpaired, its final improvement)."""
    name = control_cfg.train[0].name
    script = iter([[1.0, 0, 0, 0, 0], [1.0, 0, 0, 0, 1.0]])  # raise the lr x4, then x4 again and roll back
    rewards, log = _episode(control_env, lambda o: np.asarray(next(script), dtype=np.float32), seed=1,
                            options={"instance": name})
    assert [e["event"] for e in log["control_events"]] == ["rollback"]
    final, ref = log["eval_curve"][-1][1], log["reference_eval_loss"]
    assert sum(rewards) == pytest.approx((ref - final) / log["initial_eval_loss"], abs=1e-12)


def test_a_users_guess_looks_like_the_recipes_own_start_until_the_run_says_otherwise(control_env, control_cfg):
    """The controller is told neither the lr nor how far its start is from the recipe's: at the
    first decision a wrong guess and the recipe's own lr give the same observation."""
    name = control_cfg.heldout[0].name
    own, _ = control_env.reset(seed=4, options={"instance": name})
    guess, info = control_env.reset(seed=4, options={"instance": name, "start": "user_guess"})
    assert info["start_lr_scale"] != 1.0
    np.testing.assert_array_equal(own, guess)


def test_the_anchored_observation_sees_the_guess_and_only_it(control_cfg, tiny_session):
    """features: scale_free_anchored adds where the run stands on its recipe: at the first decision
    a user's guess and the recipe's own lr differ in lr_vs_recipe_log2 alone, by the guess's
    factor; an action moves it by the lr step, as it moves the correction."""
    from envs.features import ANCHOR_FEATURES, SCALE_FREE_ANCHORED_FEATURES
    from envs.finetune_env import FineTuneEnv

    cfg = parse_config({**control_cfg.model_dump(mode="json"), "control": {**FULL, "features": "scale_free_anchored"}})
    env = FineTuneEnv(cfg, split="all", session=tiny_session)
    name = cfg.heldout[0].name
    own, _ = env.reset(seed=4, options={"instance": name})
    guess, info = env.reset(seed=4, options={"instance": name, "start": "user_guess"})
    assert env.feature_names == SCALE_FREE_ANCHORED_FEATURES and own.shape == (len(SCALE_FREE_ANCHORED_FEATURES),)
    at = SCALE_FREE_ANCHORED_FEATURES.index("lr_vs_recipe_log2")
    assert own[at] == 0.0 and guess[at] == pytest.approx(math.log2(info["start_lr_scale"]), abs=1e-6)
    assert abs(guess[at]) > 0.1
    differ = [SCALE_FREE_ANCHORED_FEATURES[i] for i in np.flatnonzero(own != guess)]
    assert differ == ["lr_vs_recipe_log2"]
    np.testing.assert_array_equal(own[: -len(ANCHOR_FEATURES)], guess[: -len(ANCHOR_FEATURES)])
    down = np.array([-0.5, 0, 0, 0, 0], dtype=np.float32)  # lr / 2 (a full entry is 2**2)
    after, *_ = env.step(down)
    named = dict(zip(SCALE_FREE_ANCHORED_FEATURES, after))
    assert named["lr_scale_log2"] == pytest.approx(-1.0)
    assert named["lr_vs_recipe_log2"] == pytest.approx(guess[at] - 1.0, abs=1e-6)
    wd_up = np.array([0, 1.0, 0, 0, 0], dtype=np.float32)  # weight decay x 2**max_log2_step
    after, *_ = env.step(wd_up)
    named = dict(zip(SCALE_FREE_ANCHORED_FEATURES, after))
    assert named["weight_decay_vs_recipe_log2"] == pytest.approx(cfg.action.max_log2_step)
    assert named["grad_clip_vs_recipe_log2"] == 0.0


def test_a_hyperparameter_the_recipe_holds_at_zero_reads_as_the_recipes():
    """No weight decay in the base: scaling it changes nothing, so the anchor does not move."""
    sched = ControlledSchedule(recipe_schedule(RecipeConfig(lr=3e-4, weight_decay=0.0), 20, min_lr=1e-5), BOUNDS)
    sched.start_at(np.array([0.25, 1.0, 1.0]))
    sched.act(Decoded(np.array([1.0, 3.0, -1.0])), 4)
    assert sched.recipe_log2_scales() == pytest.approx([-1.0, 0.0, -1.0])
    assert sched.hparams_at(5).weight_decay == 0.0


def test_the_anchored_observation_needs_a_recipe(fast_cfg_dict):
    from trainers.config import ConfigError

    with pytest.raises(ConfigError, match="scale_free_anchored.*residual"):
        parse_config({**fast_cfg_dict, "control": {**FULL, "residual": False, "features": "scale_free_anchored"}})


def test_reference_runs_are_computed_once_and_keyed_by_the_recipe(control_cfg, tiny_session, tmp_path):
    from envs.episode import ReferenceRuns
    from envs.finetune_env import FineTuneEnv, seeded_session_seed

    env = FineTuneEnv(control_cfg, split="train", session=tiny_session, references=ReferenceRuns(str(tmp_path)))
    env.reset()  # unseeded: a batch seed from the pool of 2, its recipe run computed and stored
    assert env.batch_seed in (0, 1) and env.session_seed == seeded_session_seed(env.batch_seed)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"{env.instance.name}-seed{env.batch_seed}.json"]
    again = ReferenceRuns(str(tmp_path))  # another process reads it back
    assert again.get(control_cfg, env.instance.name, env.batch_seed) == env.reference
    other = parse_config({**control_cfg.model_dump(mode="json"), "control": {**FULL, "recipe": {"lr": 3e-3}}})
    assert again.get(other, env.instance.name, env.batch_seed) is None  # another recipe: computed again
    # --reference-runs-from copies what a new agent folder lacks; each file is still read by its key
    from agents.learners.training_run import seed_reference_runs

    assert seed_reference_runs(tmp_path, tmp_path / "copy") == 1
    assert seed_reference_runs(tmp_path, tmp_path / "copy") == 0  # nothing copied over what is there
    copied = ReferenceRuns(str(tmp_path / "copy"))
    assert copied.get(control_cfg, env.instance.name, env.batch_seed) == env.reference
    assert copied.get(other, env.instance.name, env.batch_seed) is None
    # a run made on another stack (Python, torch, threads, accelerator) is not this one's
    import json

    path = tmp_path / "copy" / f"{env.instance.name}-seed{env.batch_seed}.json"
    saved = json.loads(path.read_text())
    assert saved["stack"]["torch"] == torch.__version__
    path.write_text(json.dumps({**saved, "stack": {**saved["stack"], "cpu_count": 999}}))
    assert ReferenceRuns(str(tmp_path / "copy")).get(control_cfg, env.instance.name, env.batch_seed) is None
    path.write_text(json.dumps([saved]))  # not a mapping at all: computed again, not a crash
    assert ReferenceRuns(str(tmp_path / "copy")).get(control_cfg, env.instance.name, env.batch_seed) is None


def test_reference_runs_from_a_folder_without_them_is_refused_before_anything_is_written(capsys, tmp_path):
    from tests.test_commands import _run

    out = tmp_path / "out"
    line = _run(capsys, "agents.train_agent", ["--config", "tiny_residual", "--reference-runs-from",
                                               str(tmp_path / "nowhere"), "--out", str(out), "--no-heldout"])
    assert line.startswith("error: --reference-runs-from") and "nowhere/reference_runs" in line
    line = _run(capsys, "agents.train_agent", ["--config", "tiny", "--reference-runs-from", str(tmp_path),
                                               "--out", str(out), "--no-heldout"])
    assert "no paired reward" in line
    (tmp_path / "empty" / "reference_runs").mkdir(parents=True)
    line = _run(capsys, "agents.train_agent", ["--config", "tiny_residual", "--reference-runs-from",
                                               str(tmp_path / "empty"), "--out", str(out), "--no-heldout"])
    assert "holds no reference runs" in line
    assert not out.exists()


def test_baselines_are_reused_across_observations_but_not_across_instance_sets():
    """agents.evaluate --baselines-from: runs no policy acts in are the same whatever a controller
    observes, and differ when anything they run differs."""
    from agents.experiments.heldout import same_runs_without_a_policy

    residual, anchored = load_config("smollm2_wide_residual"), load_config("smollm2_wide_anchored")
    assert anchored.control.features != residual.control.features and anchored.name != residual.name
    assert same_runs_without_a_policy(residual, anchored)
    other_recipe = parse_config({**residual.model_dump(mode="json"),
                                 "control": {**residual.control.model_dump(mode="json"), "recipe": {"lr": 1e-3}}})
    assert not same_runs_without_a_policy(residual, other_recipe)
    assert not same_runs_without_a_policy(residual, load_config("smollm2_wide"))


def test_a_residual_agents_rescue_rivals_are_reused_and_a_missing_one_is_named(tmp_path, monkeypatch):
    """--baselines-from for a residual controller: the guess held and the range test come from the
    other evaluation too, in this evaluation's (instance, seed) order; a run it lacks stops it."""
    import json
    from types import SimpleNamespace

    from agents.experiments import heldout
    from agents.learners import agent_folder
    from trainers.config import ConfigError
    from trainers.provenance import machine_info

    residual, anchored = load_config("smollm2_wide_residual"), load_config("smollm2_wide_anchored")
    monkeypatch.setattr(agent_folder, "Controller", lambda folder: SimpleNamespace(env_config=residual))
    names = [i.name for i in anchored.heldout]
    methods = ("default_recipe", "held_start", "held_guess", "range_test", "policy", "policy_guess")
    runs = {m: [{"instance": n, "seed": s, "test_loss": float(k), "method": m}
                for k, (s, n) in enumerate((s, n) for s in (1, 0) for n in names)] for m in methods}
    (tmp_path / "heldout.json").write_text(json.dumps({"runs": runs, "summary": {"machine": machine_info()}}))
    reused, source = heldout.reusable_baselines(tmp_path, anchored, seeds=2)
    assert sorted(reused) == sorted(source["methods"]) == ["default_recipe", "held_guess", "held_start", "range_test"]
    for m, got in reused.items():
        assert [(r["instance"], r["seed"]) for r in got] == [(n, s) for n in names for s in range(2)]
        assert {r["method"] for r in got} == {m}
    runs["range_test"] = runs["range_test"][1:]
    (tmp_path / "heldout.json").write_text(json.dumps({"runs": runs, "summary": {"machine": machine_info()}}))
    with pytest.raises(ConfigError, match="no range_test run for instance"):
        heldout.reusable_baselines(tmp_path, anchored, seeds=2)


def test_rollback_returns_to_the_best_snapshot_and_spends_the_budget(fast_cfg_dict, tiny_session, monkeypatch):
    """The interval after a rollback trains from the best validation's weights and optimizer
    state, on new batches (the stream goes on), and the steps spent before it stay spent."""
    from envs.finetune_env import FineTuneEnv

    cfg = parse_config({**fast_cfg_dict, "episode": {**fast_cfg_dict["episode"], "total_steps": 12},
                        "control": {**FULL, "reward": "improvement"}})
    env = FineTuneEnv(cfg, split="all", session=tiny_session)
    env.reset(seed=2, options={"instance": cfg.train[0].name})
    env.step(_zero(env))  # improves on the start: its snapshot is kept
    snap, best_eval = env._best_snapshot, env._snapshot_eval
    assert best_eval == env._best_eval < env.initial_eval.loss and snap.step == 4
    monkeypatch.setattr(env, "_keeps_best", False)  # the second interval leaves the snapshot as it was
    env.step(_zero(env))
    session, seen = env.session, {}
    train = session.train

    def watching(k):
        seen.setdefault("weights", {k2: v.clone() for k2, v in session._module_state().items()})
        seen.setdefault("batches", session._data_rng.get_state().clone())
        return train(k)

    monkeypatch.setattr(session, "train", watching)
    rng_before = session._data_rng.get_state().clone()
    env.step(np.array([1.0, 0, 0, 0, 1.0], dtype=np.float32))  # roll back, then train at lr x4
    assert env.log.control_events == [{"step": 8, "event": "rollback", "to_eval_loss": best_eval}]
    assert all(torch.equal(seen["weights"][k], v) for k, v in snap.module.items())  # from the best weights
    assert torch.equal(seen["batches"], rng_before) and not torch.equal(rng_before, snap.data_rng)  # new batches
    assert env.steps_done == 12 and len(env.log.schedule) == 12  # the budget is not refunded


def test_user_guess_starts_scale_the_recipe(control_env, control_cfg):
    name = control_cfg.heldout[0].name
    _, info = control_env.reset(seed=4, options={"instance": name, "start": "user_guess"})
    factor = info["start_lr_scale"]
    assert 0.01 <= factor <= 100 and factor != 1.0
    recipe = recipe_schedule(control_cfg.base_recipe, control_cfg.steps_for(control_cfg.instance(name)), min_lr=1e-5)
    assert control_env.schedule.hparams_at(3).lr == pytest.approx(min(max(recipe[3].lr * factor, 1e-5), 1e-1))
    _, again = control_env.reset(seed=4, options={"instance": name, "start": "user_guess"})
    assert again["start_lr_scale"] == factor  # drawn from the seed: a rival run from the same start
    _, own = control_env.reset(seed=4, options={"instance": name})
    assert own["start_lr_scale"] == 1.0  # a seeded reset starts from the recipe unless asked


def test_the_original_mechanics_are_untouched_without_control(tiny_env):
    assert not tiny_env.controlled and tiny_env.schedule is None
    assert tiny_env.action_space.shape == (3,) and tiny_env.observation_space.shape == (14,)


def test_a_config_extends_another_and_refuses_a_loop(tmp_path):
    from trainers.config import ConfigError, load_config

    cfg = load_config("tiny_residual")
    base = load_config("tiny")
    assert cfg.control.residual and cfg.train == base.train and cfg.name == "tiny_residual"
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "a.yaml")


def test_a_controller_trained_under_control_loads_acts_and_asks_for_what_it_observes(tmp_path, fast_cfg_dict):
    """Trained for a few decisions under full control: its folder loads, it acts on the
    scale-free observation, compare's check knows its action map, and the ask-and-tell loop asks
    for the model and context that observation reads."""
    from agents.integrations import Hparams as H, SteppedController
    from agents.learners.agent_folder import Controller
    from agents.learners.training_run import TrainingOptions, run_training
    from envs.control import action_map_for
    from trainers.config import ConfigError

    import mlflow

    cfg = parse_config({**fast_cfg_dict, "control": FULL})
    _fresh_mlflow(mlflow, tmp_path)
    with mlflow.start_run():
        run_training(cfg, TrainingOptions(algo="ppo", decisions=8, checkpoint_every=0), tmp_path / "agent")
    assert sorted(p.name for p in (tmp_path / "agent" / "reference_runs").iterdir())  # the paired reward's runs
    ctl = Controller(tmp_path / "agent")
    assert ctl.controlled and ctl.feature_names == list(SCALE_FREE_FEATURES)
    action = ctl.act(np.zeros(len(SCALE_FREE_FEATURES), dtype=np.float32))
    assert np.asarray(action).shape == (5,)
    ctl.check_compatible(action_map_for(cfg))
    with pytest.raises(ConfigError, match="action_map.control"):
        ctl.check_compatible(action_map_for(parse_config(fast_cfg_dict)))
    with pytest.raises(ValueError, match="pass model="):  # it observes the run's weights and context
        SteppedController(ctl, total_steps=10, initial=H(1e-3, 0.01, 1.0))


@pytest.mark.parametrize("features", ["scale_free", "scale_free_anchored"])
def test_ask_and_tell_drives_a_controlled_agent_as_the_environment_does(tmp_path, fast_cfg_dict, tiny_session,
                                                                        features):
    """A residual controller with schedule actions and the scale-free observation, in a bare
    DeepSpeed loop on the environment's own engine and batches, from a user's guess: the same
    observations, per-step hyperparameters, rollback and losses as the environment's episode.
    Its actions are scripted (raise the lr, start a cooldown, roll back, lower it) so every part acts."""
    import mlflow

    from agents.integrations import ModelSnapshots, SteppedController
    from tests.test_integrations import bare_loop
    from agents.learners.agent_folder import Controller
    from agents.learners.training_run import TrainingOptions, run_training
    from envs.episode import PolicyPlan, run_episode
    from envs.finetune_env import FineTuneEnv

    cfg = parse_config({**fast_cfg_dict, "episode": {**fast_cfg_dict["episode"], "total_steps": 16},
                        "control": {**FULL, "reward": "improvement", "features": features}})
    _fresh_mlflow(mlflow, tmp_path)
    with mlflow.start_run():
        run_training(cfg, TrainingOptions(algo="ppo", decisions=4, checkpoint_every=0), tmp_path / "agent")
    ctl_agent = Controller(tmp_path / "agent")
    script = [[1.0, 0, 0, 0, 0], [0, 0, 0, 0.9, 0], [0, 0, 0, 0, 1.0], [-1.0, 0, 0, 0, 0]]
    seen: list = []

    def act(obs):
        seen.append(np.asarray(obs))
        return np.asarray(script[(len(seen) - 1) % len(script)], dtype=np.float32)

    ctl_agent.act = act
    env = FineTuneEnv(cfg, split="all", session=tiny_session)
    name = cfg.heldout[0].name
    log = run_episode(env, PolicyPlan(act, "user_guess"), name, 7)
    env_obs, seen[:] = list(seen), []
    assert [e["event"] for e in log["control_events"]] == ["cooldown", "rollback"]

    env.reset(seed=7, options={"instance": name, "start": "user_guess"})
    session, engine = env.session, env.session.engine
    # the user's guess at the recipe's peak lr: the factor the environment drew for this seed
    start = Hparams(cfg.base_recipe.lr * log["start_scales"][0], cfg.base_recipe.weight_decay, cfg.base_recipe.grad_clip)
    ctl = SteppedController(ctl_agent, 16, start, initial_eval_loss=env.initial_eval.loss, decision_interval=4,
                            model=engine.module, context={"effective_batch": session.cfg.micro_batch_size,
                                                          "train_examples": len(session.data.train)},
                            snapshots=ModelSnapshots(engine.module, engine.optimizer))
    bare_loop(env, ctl, 16, env.session_seed)  # the user's own deepspeed loop
    for a, b in zip(seen, env_obs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(seen) == len(env_obs) == 4
    assert [h.as_dict() for h in ctl.schedule] == log["schedule"]
    assert ctl.train_loss == log["train_loss"] and [list(p) for p in ctl.eval_curve] == [list(p) for p in log["eval_curve"]]
    assert [r["done"] for r in ctl.rollbacks] == [True]


# ---------------------------------------------------------------- the evaluation of a residual controller
def test_the_range_test_suggests_the_steepest_descent_and_pays_for_its_steps(fast_cfg_dict, tiny_session):
    from agents.methods.base import MethodContext
    from agents.methods.range_test import RangeTestMethod, suggest

    lrs = np.logspace(-6, -1, 60)
    losses = 5.0 - 2.0 / (1.0 + np.exp(-(np.log10(lrs) + 3.5) * 4))  # falls fastest at lr 10^-3.5
    assert suggest(lrs, losses) == pytest.approx(10 ** -3.5, rel=0.25)
    assert suggest(lrs[:8], losses[:8]) == pytest.approx(lrs[int(np.argmin(losses[:8]))] / 10)  # too few points
    cfg = parse_config(fast_cfg_dict)
    ctx = MethodContext(cfg, sessions={})
    ctx._envs[cfg.session.optimizer] = __import__("envs.finetune_env", fromlist=["FineTuneEnv"]).FineTuneEnv(
        cfg, split="all", evaluate_test=True, session=tiny_session)
    rec = RangeTestMethod(cfg.default_recipe, iterations=30).run(ctx, cfg.heldout[0].name, 0, (1,))[1]
    test = rec.log["range_test"]
    assert 1 <= test["steps"] <= 30 and rec.compute_steps == cfg.episode.total_steps + test["steps"]
    peak = max(h["lr"] for h in rec.log["schedule"])
    assert peak == pytest.approx(test["suggested_lr"])


def test_the_range_test_stops_where_the_smoothed_loss_passes_five_times_its_best():
    from agents.methods.range_test import sweep

    calls = []

    def train_at(lr):  # falls from 4 to 1, then explodes past lr 1e-2
        calls.append(lr)
        return 4.0 - 3.0 * min(len(calls), 30) / 30 + (0 if lr < 1e-2 else 1e3 * (lr / 1e-2))

    out = sweep(train_at, 1e-6, 1e-1, 100)
    assert out["steps"] == len(calls) < 100 and out["lrs"][-1] >= 1e-2  # stopped soon after the blow-up
    assert out["smoothed_loss"][-1] > 5 * min(out["smoothed_loss"])
    assert sweep(lambda lr: float("nan"), 1e-6, 1e-1, 100)["steps"] == 1  # a non-finite loss stops it at once


def test_no_control_from_the_recipes_start_is_the_base_recipe_and_a_guess_is_shared(control_cfg, tiny_session):
    """held_start of a residual controller (its actions replaced by "no change") runs the base recipe
    exactly; held_guess and policy_guess start from the same guess on the same seed."""
    from agents.methods.base import MethodContext
    from agents.methods.policy import PolicyMethod
    from agents.methods.recipes import RecipeMethod
    from envs.finetune_env import FineTuneEnv

    ctx = MethodContext(control_cfg, sessions={})
    ctx._envs[control_cfg.session.optimizer] = FineTuneEnv(control_cfg, split="all", evaluate_test=True,
                                                           session=tiny_session)
    name = control_cfg.heldout[0].name

    class Agent:  # what PolicyMethod asks of a loaded controller
        env_config = control_cfg

        @staticmethod
        def act(obs):
            return np.array([1.0, 0, 0, 0, 0], dtype=np.float32)

        @staticmethod
        def check_compatible(action_map):
            pass

    ctx._controllers["agent"] = Agent
    held = PolicyMethod("agent", "held_start", act=False).run(ctx, name, 3, (1,))[1].log
    recipe = RecipeMethod("r", control_cfg.base_recipe).run(ctx, name, 3, (1,))[1].log
    assert held["schedule"] == recipe["schedule"] and held["test_loss"] == recipe["test_loss"]
    guess = PolicyMethod("agent", "held_guess", "user_guess", act=False).run(ctx, name, 3, (1,))[1].log
    steered = PolicyMethod("agent", "policy_guess", "user_guess").run(ctx, name, 3, (1,))[1].log
    assert guess["start_scales"] == steered["start_scales"] and guess["start_scales"][0] != 1.0
    assert steered["scales"][-1][0] > guess["start_scales"][0] and guess["scales"][-1] == guess["start_scales"]
    assert steered["schedule"] != guess["schedule"]


def _run(instance, seed, loss, **extra):
    return {"instance": instance, "seed": seed, "test_loss": loss, "schedule": [{}] * 10, **extra}


def test_the_rescue_summary_reads_gaps_against_the_recipes_own_run():
    from agents.reporting.rescue_report import rescue_summary

    runs = {"policy": [], "held_start": [], "policy_guess": [], "held_guess": [], "range_test": []}
    for inst, base in (("a", 2.0), ("b", 1.0), ("x", 4.0)):
        for seed in range(3):
            runs["held_start"].append(_run(inst, seed, base))
            runs["policy"].append(_run(inst, seed, base - 0.1, start_scales=[1.0, 1, 1],
                                       scales=[[1.0, 1, 1], [base, 1, 1]]))  # ends at 2x, 1x, 4x the recipe's lr
            runs["policy_guess"].append(_run(inst, seed, base * 1.01, start_scales=[50.0, 1, 1],
                                             scales=[[8.0, 1, 1], [1.5, 1, 1]]))
            runs["held_guess"].append(_run(inst, seed, base + 1.0, start_scales=[50.0, 1, 1]))  # gaps 0.5, 1, 0.25
            runs["range_test"].append(_run(inst, seed, base * 1.1, range_test={"steps": 100}))
    s = rescue_summary(runs, extrapolation={"x"})
    assert s["methods"]["policy_guess"]["median_gap"] == pytest.approx(0.01) and s["goal_met"]
    assert s["methods"]["held_guess"]["median_gap"] == pytest.approx(0.5)
    assert s["methods"]["range_test"]["mean_compute_steps"] == 110
    assert s["policy_minus_base_recipe"]["in_range"]["n_instances"] == 2
    assert s["policy_minus_base_recipe"]["extrapolation"]["n_instances"] == 1
    assert s["policy_minus_base_recipe"]["in_range"]["mean"] == pytest.approx(-0.1)
    assert s["policy_guess_minus"]["held_guess"]["better"]
    assert s["steering_from_guesses"]["median_abs_final_log2_scale"] == pytest.approx(np.log2(1.5))
    assert s["correction_from_recipe"]["median_final_lr_scale"] == 2.0
    assert s["correction_from_recipe"]["per_instance_mean_range"] == [1.0, 4.0]
    # intervals are over instances: more seeds of the same instances do not narrow them
    more = {m: rs + [dict(r, seed=r["seed"] + 3) for r in rs] for m, rs in runs.items()}
    s2 = rescue_summary(more, extrapolation={"x"})
    assert s2["methods"]["held_guess"]["median_gap_ci95"] == s["methods"]["held_guess"]["median_gap_ci95"]
    runs["policy_guess"] = [dict(r, test_loss=r["test_loss"] * 1.2) for r in runs["policy_guess"]]
    assert not rescue_summary(runs)["goal_met"]


def test_imitation_refuses_an_observation_without_the_lr_before_anything_runs(fast_cfg_dict, tmp_path):
    """The expert reads the lr in force from the observation: the plain scale-free kind does not
    hold it, and only the anchored kind says where the run stands on its recipe, so --imitate stops
    with the reason instead of failing mid-run."""
    from agents.learners.imitation import expert_targets
    from trainers.config import ConfigError

    cfg = parse_config({**fast_cfg_dict, "control": FULL})
    with pytest.raises(ConfigError, match="scale-free observation does not hold"):
        expert_targets(tmp_path / "grid.json", cfg)
    with pytest.raises(ConfigError, match="--imitate recipe: .*scale_free_anchored"):
        expert_targets("recipe", cfg)
    with pytest.raises(ConfigError, match="--imitate recipe"):
        expert_targets("recipe", parse_config(fast_cfg_dict))
    anchored = parse_config({**fast_cfg_dict, "control": {**FULL, "features": "scale_free_anchored"}})
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"instances": {i.name: {"split": "train", "best_lr_refined": 1e-3} for i in anchored.train}}))
    with pytest.raises(ConfigError, match="imitate 'recipe' or a residual probe.*not an lr grid"):
        expert_targets(grid, anchored)  # a grid's constant lr is not a peak on the recipe's schedule


def test_a_probe_expert_moves_each_training_instance_to_its_best_correction(fast_cfg_dict, tmp_path, tiny_session):
    """--imitate <residual probe>: per training instance, the recipe's lr x 2**target, the probe's
    smoothed best correction (0: the recipe's own); from the recipe's start the expert asks for
    exactly that correction. A probe of another recipe, one missing a training instance, or a
    target that is not a number is refused."""
    from agents.learners.imitation import expert_action, expert_targets
    from envs.finetune_env import FineTuneEnv
    from trainers.config import ConfigError

    cfg = parse_config({**fast_cfg_dict, "control": {**FULL, "features": "scale_free_anchored"}})
    a, b = (i.name for i in cfg.train[:2])
    per = {i.name: {"target_log2": 0.0} for i in cfg.train}
    per[a] = {"target_log2": 2.0}
    probe = {"config": cfg.name, "base_recipe": cfg.base_recipe.model_dump(mode="json"), "probe_log2": [-1, 0, 1],
             "summary": {"per_instance": per}}
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(probe))
    targets = expert_targets(path, cfg)
    assert targets[a] == pytest.approx(cfg.base_recipe.lr * 4) and targets[b] == pytest.approx(cfg.base_recipe.lr)
    env = FineTuneEnv(cfg, split="all", session=tiny_session)
    obs, _ = env.reset(seed=0, options={"instance": a, "start": "recipe"})
    assert expert_action(obs[None], np.array([targets[a]]), cfg)[0, 0] == pytest.approx(2 / cfg.control.lr_log2_step)
    path.write_text(json.dumps(dict(probe, base_recipe=dict(probe["base_recipe"], lr=1.0))))
    with pytest.raises(ConfigError, match="another recipe"):
        expert_targets(path, cfg)
    path.write_text(json.dumps(dict(probe, summary={"per_instance": {a: per[a]}})))
    with pytest.raises(ConfigError, match=f"no result for training instance '{b}'"):
        expert_targets(path, cfg)
    path.write_text(json.dumps(dict(probe, summary={"per_instance": {**per, b: {"target_log2": "up"}}})))
    with pytest.raises(ConfigError, match=f"per_instance.{b}.target_log2: not a correction"):
        expert_targets(path, cfg)
    path.write_text(json.dumps(dict(probe, summary=[1])))
    with pytest.raises(ConfigError, match="not an lr grid"):
        expert_targets(path, cfg)


def test_an_ablation_imitates_its_parents_probe_and_a_config_that_runs_otherwise_cannot(tmp_path):
    """The shipped ablations of the headline's setup (paired reward off, schedule actions off) warm-start
    from the probe made on the config they extend, with the same targets: the probe's runs do not
    depend on those parts. A variant that changes what the probe ran (the episode's budget) is refused."""
    from pathlib import Path

    from agents.learners.imitation import expert_targets
    from trainers.config import ConfigError

    root = Path(__file__).resolve().parents[1]
    probe = root / "results" / "headroom" / "all_training" / "smollm2_wide_anchored_residual_probe.json"
    parent = expert_targets(probe, load_config("smollm2_wide_anchored"))
    for part in ("no_reward", "no_schedule_actions"):
        ablation = load_config(root / "configs" / "ablations" / f"smollm2_wide_anchored-{part}.yaml")
        assert ablation.name != "smollm2_wide_anchored" and expert_targets(probe, ablation) == parent
    other = tmp_path / "longer.yaml"
    steps = load_config("smollm2_wide_anchored").episode.total_steps
    other.write_text(f"extends: {root / 'configs' / 'smollm2_wide_anchored.yaml'}\nname: longer\n"
                     f"episode: {{total_steps: {steps + 10}}}\n")
    with pytest.raises(ConfigError, match="around another recipe than longer's"):
        expert_targets(probe, load_config(other))


def test_the_recipe_expert_returns_any_start_to_the_recipe_and_then_holds(fast_cfg_dict, tiny_session):
    """--imitate recipe on an anchored residual config: from a user's guess the expert's lr entry
    walks the run back to the recipe's lr as fast as a full action allows (2**lr_log2_step a
    decision), and from there (and from the recipe's own start) it changes nothing, so its episode
    from the recipe's start is the recipe's run."""
    from agents.learners.imitation import expert_action, expert_targets
    from envs.features import SCALE_FREE_ANCHORED_FEATURES
    from envs.finetune_env import FineTuneEnv

    cfg = parse_config({**fast_cfg_dict, "episode": {**fast_cfg_dict["episode"], "total_steps": 16},
                        "control": {**FULL, "features": "scale_free_anchored", "reward": "improvement"}})
    targets = expert_targets("recipe", cfg)
    assert set(targets) == {i.name for i in cfg.train} and set(targets.values()) == {cfg.base_recipe.lr}
    env = FineTuneEnv(cfg, split="all", session=tiny_session)
    at = SCALE_FREE_ANCHORED_FEATURES.index("lr_vs_recipe_log2")
    name = cfg.train[0].name
    for seed in range(20):  # a guess more than one full action away, above or below
        obs, info = env.reset(seed=seed, options={"instance": name, "start": "user_guess"})
        if abs(math.log2(info["start_lr_scale"])) > cfg.control.lr_log2_step:
            break
    seen, done = [float(obs[at])], False
    while not done:
        a = expert_action(obs[None], np.array([targets[name]]), cfg)[0]
        assert not a[1:].any()  # weight decay, clipping, cooldown and rollback: held
        obs, _, done, _, info = env.step(a)
        seen.append(float(obs[at]))
    assert abs(seen[0]) > cfg.control.lr_log2_step
    assert abs(seen[1]) == pytest.approx(abs(seen[0]) - cfg.control.lr_log2_step, abs=1e-6)  # a full step back
    assert seen[-1] == pytest.approx(0.0, abs=1e-6)  # at the recipe's lr
    own, _ = env.reset(seed=0, options={"instance": name})
    assert not expert_action(own[None], np.array([targets[name]]), cfg).any()


@pytest.mark.parametrize("algo", ["ppo", "dqn", "qlearning"])
def test_every_learner_is_undiscounted_under_a_paired_reward(control_cfg, algo):
    """The paired return is the final advantage over the recipe only when gamma is 1, so PPO, DQN
    and the tabular learner must all learn that same return; an unpaired reward keeps its discount."""
    from agents.learners.sb3_setup import learner_hparams

    assert learner_hparams(algo, 2, 480, control=control_cfg.control)["gamma"] == 1.0
    unpaired = control_cfg.control.model_copy(update={"reward": "improvement"})
    assert learner_hparams(algo, 2, 480, control=unpaired)["gamma"] < 1.0
