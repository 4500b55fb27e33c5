"""The shipped instance sets keep their promises: the held-out rule of configs/smollm2_cpu.yaml, no
held-out instance re-splitting a training one, and every instance and seed drawing its own start."""
import math

import numpy as np
import pytest

from trainers.config import REPO_ROOT, load_config

FAMILY = {"bbc_lm": ("bbc", "language modelling"), "bbc_topic": ("bbc", "classification"),
          "bbc_headline": ("bbc", "generation"), "chitchat": ("chitchat", "reply generation"),
          "chitchat_lm": ("chitchat", "language modelling"),
          "arithmetic": ("arithmetic", "short answer"), "math": ("mathematics-dataset", "short answer")}


def _data_identity(inst):
    d = inst.dataset
    return (d.kind, d.topic, d.source if d.kind == "bbc_topic" else None, d.module, d.path)


def test_smollm2_cpu_heldout_rule():
    cfg = load_config("smollm2_cpu")
    assert len(cfg.heldout) >= 6
    train_data = {_data_identity(i) for i in cfg.train}
    assert not [i.name for i in cfg.heldout if _data_identity(i) in train_data]  # no re-split or re-seed
    train_families = {FAMILY[i.dataset.kind] for i in cfg.train}
    unseen = [i for i in cfg.heldout if FAMILY[i.dataset.kind] not in train_families]
    assert len(unseen) * 2 >= len(cfg.heldout), [i.name for i in unseen]
    assert len({FAMILY[i.dataset.kind] for i in unseen}) >= 3  # not one unseen family repeated
    # the family varies what matters for a good schedule: depth, budget, data size, task kind
    assert len({cfg.session_for(i).trainable_last_layers for i in cfg.train + cfg.heldout}) >= 2
    assert len({cfg.steps_for(i) for i in cfg.train + cfg.heldout}) >= 2
    for inst in cfg.train + cfg.heldout:
        assert inst.init_lr == (1e-5, 1e-2)


SHIPPED = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", SHIPPED)
def test_no_heldout_instance_resplits_a_training_one(config):
    # the data identity leaves the split seed out, so a re-split (tiny's old bbc-topic-classify-long:
    # the training data with seed 7) counts as the training instance's data
    cfg = load_config(config)
    train_data = {_data_identity(i) for i in cfg.train}
    assert not [i.name for i in cfg.heldout if _data_identity(i) in train_data]


@pytest.mark.parametrize("config", ["tiny", "smollm2_cpu"])
def test_every_instance_and_seed_draws_its_own_start(config):
    from envs.finetune_env import FineTuneEnv

    cfg = load_config(config)
    env = FineTuneEnv.__new__(FineTuneEnv)  # the draw alone: no engine needed
    env.np_random = np.random.default_rng(0)
    draws = {(i.name, s): env._draw_initial(i, s).lr for i in cfg.heldout + cfg.train for s in range(3)}
    assert len(set(draws.values())) == len(draws)  # no two runs share a start
    inst = cfg.heldout[0]
    assert env._draw_initial(inst, 1).lr == draws[(inst.name, 1)]  # and the same seed gives the same start
    lo, hi = inst.init_lr
    assert all(lo <= v <= hi for v in draws.values())
    spread = np.log10([draws[(inst.name, s)] for s in range(3)] + [draws[(i.name, 0)] for i in cfg.heldout])
    assert spread.max() - spread.min() > 0.5 or math.log10(hi / lo) < 1


@pytest.mark.parametrize("config", ["tiny", "smollm2_cpu"])
def test_no_validation_or_test_example_is_in_its_instances_training_data(config):
    # the arithmetic generator and BBC News repeat examples: before decontamination 43 of tiny's
    # 256 arithmetic test questions were training questions
    from trainers.data import task_records

    cfg = load_config(config)
    for inst in cfg.train + cfg.heldout:
        train, val, test = task_records(inst.dataset, cfg.episode.eval_examples, cfg.episode.test_examples)
        seen = {r.get("prompt", r.get("text")) for r in train}
        assert val and test
        assert not [r for r in val + test if r.get("prompt", r.get("text")) in seen], inst.name


def test_gpu_config_is_the_cpu_family_with_the_whole_model_training():
    """configs/smollm2_gpu.yaml reads the CPU set's instance file and may change only how the model
    trains, not what it trains on."""
    import yaml

    from trainers.config import CONFIG_DIR

    raw = {n: yaml.safe_load((CONFIG_DIR / f"{n}.yaml").read_text()) for n in ("smollm2_cpu", "smollm2_gpu")}
    assert raw["smollm2_cpu"]["instances"]["file"] == raw["smollm2_gpu"]["instances"]["file"]
    cpu, gpu = load_config("smollm2_cpu"), load_config("smollm2_gpu")
    assert [i.name for i in cpu.train + cpu.heldout] == [i.name for i in gpu.train + gpu.heldout]
    assert (cpu.episode, cpu.bounds, cpu.action, cpu.default_recipe) == (gpu.episode, gpu.bounds, gpu.action,
                                                                          gpu.default_recipe)
    assert gpu.session.precision == "bf16" and gpu.session.zero_stage == 2 and not gpu.session.frozen_prefix
    assert all(gpu.session_for(i).trainable_last_layers is None for i in gpu.train + gpu.heldout)
    assert len({cpu.session_for(i).trainable_last_layers for i in cpu.train + cpu.heldout}) >= 2


def test_smollm2_wide_heldout_rule_and_extrapolation_tags():
    cfg = load_config("smollm2_wide")
    assert len(cfg.train) >= 48 and len(cfg.heldout) >= 12
    train_data = {_data_identity(i) for i in cfg.train}
    assert not [i.name for i in cfg.heldout if _data_identity(i) in train_data]  # no re-split or re-seed
    train_families = {FAMILY[i.dataset.kind] for i in cfg.train}
    unseen = [i for i in cfg.heldout if FAMILY[i.dataset.kind] not in train_families]
    assert len(unseen) * 2 >= len(cfg.heldout) and len({FAMILY[i.dataset.kind] for i in unseen}) >= 3

    def axes(i):
        s = cfg.session_for(i)
        return {"budget": cfg.steps_for(i), "lora_rank": s.lora.rank if s.lora else None,
                "accumulation": s.gradient_accumulation_steps, "depth": s.trainable_last_layers}

    seen = {axis: {axes(i)[axis] for i in cfg.train} for axis in ("budget", "lora_rank", "accumulation", "depth")}
    tagged = [i for i in cfg.heldout if "extrapolation" in i.tags]
    assert len(tagged) >= 3 and len({i.tags[1] for i in tagged}) == len(tagged)  # one per axis
    for inst in cfg.heldout:
        a = axes(inst)
        outside = {"budget": a["budget"] > max(seen["budget"]),
                   "lora_rank": a["lora_rank"] is not None and a["lora_rank"] not in seen["lora_rank"],
                   "accumulation": a["accumulation"] > max(seen["accumulation"]),
                   "depth": a["lora_rank"] is None and a["depth"] > max(seen["depth"])}
        expected = {inst.tags[1]} if inst in tagged else set()
        assert {axis for axis, out in outside.items() if out} == expected, inst.name


def test_smollm2_wide_varies_every_axis_a_practitioner_varies():
    cfg = load_config("smollm2_wide")
    sessions = [cfg.session_for(i) for i in cfg.train]
    assert {s.trainable_last_layers for s in sessions if s.lora is None} == {1, 2, 4}  # and 8 held out
    assert {s.lora.rank for s in sessions if s.lora is not None} == {4, 16, 64}
    assert {s.gradient_accumulation_steps for s in sessions} == {1, 2, 4}
    budgets = [cfg.steps_for(i) for i in cfg.train]
    assert min(budgets) <= 40 and max(budgets) >= 140
    assert len({i.train_examples for i in cfg.train}) >= 3
    assert len({i.dataset.kind for i in cfg.train}) >= 4


def test_the_wide_family_file_is_what_its_generator_writes():
    from trainers.instance_family import generate, render

    path = REPO_ROOT / "configs" / "instances" / "smollm2_wide.yaml"
    assert path.read_text() == render(0, path)  # regenerated, not edited by hand
    assert generate(0) == generate(0)  # deterministic
    assert generate(1) != generate(0)
    assert "python -m trainers.instance_family --seed 0" in path.read_text().splitlines()[0]


def test_replacing_a_heldout_draw_changes_only_that_draw(monkeypatch):
    """A held-out draw measured below the separation rule is replaced from its own pool by a stream
    of its own, and a slot whose draws kept falling below it is left empty: the training instances
    and every other held-out instance keep their draws, and no replacement trains, in effect, like a
    draw it replaces (text pools hold 24 articles, so their data sizes above 24 are one size) nor
    like another instance of its pool."""
    from trainers import instance_family as fam

    shipped, empty, replaced = fam.BELOW_SEPARATION, fam.EMPTY_SLOTS, fam.generate(0)
    assert shipped and empty  # else this test checks nothing
    monkeypatch.setattr(fam, "BELOW_SEPARATION", ())
    monkeypatch.setattr(fam, "EMPTY_SLOTS", {})
    original = fam.generate(0)
    assert replaced["train"] == original["train"]
    now = {i["name"] for i in replaced["heldout"]}
    first = {i["name"] for i in original["heldout"]}
    assert first - now and first - now <= set(shipped)  # only draws measured below the rule went
    assert len(replaced["heldout"]) == len(original["heldout"]) - len(empty)
    assert not now & set(shipped)
    kept = [i for i in original["heldout"] if i["name"] in now]
    assert kept == [i for i in replaced["heldout"] if i["name"] in first]  # the others, unchanged and in order
    for inst in replaced["heldout"]:
        pool, draw = fam._parse(inst["name"])
        same = [o["name"] for o in replaced["heldout"] if o is not inst and fam.pool_of(o["name"]) == pool
                and fam._effective(*fam._parse(o["name"])) == fam._effective(pool, draw)]
        assert not same, inst["name"]
        assert fam._effective(pool, draw) not in {fam._effective(*fam._parse(g)) for g in shipped}


def test_the_wide_generators_cost_model_uses_the_configs_batch_and_validation_sizes():
    """The cost cap prices episodes at the config's micro-batch and validation size: a change to
    one without the other would cap the wrong cost."""
    from trainers import instance_family as fam

    cfg = load_config("smollm2_wide")
    assert (fam.MICRO_BATCH, fam.EVAL_EXAMPLES, fam.DECISION_INTERVAL) == \
        (cfg.session.micro_batch_size, cfg.episode.eval_examples, cfg.episode.decision_interval)
    for inst in cfg.train:  # every drawn instance is under the cap; only the tagged extrapolations may exceed it
        pool = fam.pool_of(inst.name)
        adapter = ("lora", fam.LORA_DEPTH) if inst.lora else ("full", inst.trainable_layers)
        assert fam.estimated_seconds(pool, adapter, cfg.steps_for(inst), inst.gradient_accumulation_steps or 1) \
            <= fam.MAX_EPISODE_S


def test_the_wide_controllers_recipe_is_the_transferred_recipe_it_was_tuned_as():
    """The residual controller corrects the recipe tuned once on the training instances: the one the
    headroom run stored, not a copy that drifted."""
    import json

    cfg = load_config("smollm2_wide_residual")
    stored = json.loads((REPO_ROOT / "results" / "headroom" / "smollm2_wide" / "transferred_recipe.json").read_text())
    record = stored["entries"]["transferred_recipe"]["record"]
    assert cfg.control.recipe.model_dump(mode="json") == record["recipe"]
    assert record["training_instances"] == [i.name for i in cfg.train] and record["n_trials"] == 16
    assert cfg.train == load_config("smollm2_wide").train and cfg.heldout == load_config("smollm2_wide").heldout
    import yaml

    for path in sorted((REPO_ROOT / "configs" / "ablations").glob("*.yaml")):  # each: one part off its parent
        ablated, parent = load_config(path), load_config(path.parent / yaml.safe_load(path.read_text())["extends"])
        differ = {k for k, v in ablated.control.model_dump().items() if v != parent.control.model_dump()[k]}
        assert len(differ) == 1 and ablated.train == cfg.train and parent.control.recipe == cfg.control.recipe, path.name


def test_every_wide_heldout_instance_lets_methods_be_told_apart_as_measured():
    """results/headroom/smollm2_wide.json, the committed headroom run: it measured exactly the
    family's held-out instances, a 16-run search beats the default recipe by at least 2% of its test
    loss on each (issue 23's separation rule), and its summary follows from its own per-instance
    numbers."""
    import json

    from agents.experiments.transfer_headroom import SEPARATION

    cfg = load_config("smollm2_wide")
    found = json.loads((REPO_ROOT / "results" / "headroom" / "smollm2_wide.json").read_text())
    insts, summary = found["instances"], found["summary"]
    assert list(insts) == [i.name for i in cfg.heldout]
    below = {n: r["search_gain_over_default"] for n, r in insts.items() if r["search_gain_over_default"] < SEPARATION}
    assert not below, f"replace these in trainers/instance_family.py BELOW_SEPARATION: {below}"
    for n, r in insts.items():
        search = r["optuna_best_of_16_test_loss"]
        assert r["search_gain_over_default"] == (r["default_recipe_test_loss"] - search) / r["default_recipe_test_loss"]
    lrs = [r["best_constant_lr"] for r in insts.values()]
    assert summary["best_constant_lr_spread_heldout"] == max(lrs) / min(lrs)
    assert summary["n_heldout_instances"] == len(cfg.heldout) and summary["n_train_instances"] == len(cfg.train)
    assert summary["n_heldout_unseen_family"] == sum(r["unseen_family"] for r in insts.values())
    assert summary["instances_below_separation"] == []
    assert found["transferred_recipe"]["recipe"] == load_config("smollm2_wide_residual").control.recipe.model_dump(mode="json")
