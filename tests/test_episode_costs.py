"""The generator's cost model: its fit recovers known costs, and its constants are the fit of the
committed measurement (not typed in by hand)."""
import pytest

from trainers.config import REPO_ROOT, read_structured_file


def test_the_fit_recovers_the_costs_that_made_the_times():
    from trainers import instance_family as fam
    from trainers.fit_episode_costs import fit

    true_t = {"full_token_layer": 5e-4, "lora_token_layer": 3e-4, "head_label": 2e-3, "optimizer_layer": 2e-2,
              "micro_step": 4e-2}
    true_e = {"full_token_layer": 1e-4, "lora_token_layer": 1.5e-4, "head_label": 1e-3, "batch": 2e-2}
    instances, episodes = [], {}
    for j, (pool, adapter, steps, gas) in enumerate([
            ("arithmetic", ("full", 1), 60, 1), ("arithmetic", ("lora", 16), 40, 2), ("bbc-topic", ("full", 4), 30, 4),
            ("bbc-sport-lm", ("full", 2), 30, 1), ("bbc-sport-lm", ("lora", 4), 50, 1), ("chitchat-replies", ("full", 8), 40, 2),
            ("math-place-value", ("lora", 64), 100, 1), ("bbc-headline-writing", ("full", 2), 70, 2)]):
        tokens, labels, eval_tokens = fam.POOL_TOKENS[pool]
        kind, x = adapter
        k = fam.LORA_DEPTH if kind == "lora" else x
        name = f"{pool}-x{j}"
        inst = {"name": name, "dataset": {}, "total_steps": steps, "trainable_layers": k,
                "gradient_accumulation_steps": gas, **({"lora": {"rank": x}} if kind == "lora" else {})}
        per_step = gas * (4 * (tokens * k * true_t[f"{kind}_token_layer"] + labels * true_t["head_label"])
                          + true_t["micro_step"]) + (k * true_t["optimizer_layer"] if kind == "full" else 0)
        per_pass = 48 * (eval_tokens * k * true_e[f"{kind}_token_layer"] + labels * true_e["head_label"]) \
            + 6 * true_e["batch"]  # 48 examples in batches of 8
        instances.append(inst)
        episodes[name] = {"train_seconds": steps * per_step, "eval_seconds": steps // 10 * per_pass}
    got = fit({"episode_s": episodes}, {"train": instances, "heldout": []}, 4, 48)
    for k, v in true_t.items():
        assert got["TRAIN_S"][k] == pytest.approx(v, rel=1e-6)
    for k, v in true_e.items():
        assert got["EVAL_S"][k] == pytest.approx(v, rel=1e-6)
    assert got["train_error_max"] < 1e-6


def test_the_generators_costs_are_the_fit_of_the_committed_measurement():
    from trainers import instance_family as fam
    from trainers.fit_episode_costs import fit

    bench = read_structured_file(REPO_ROOT / "results" / "bench_family_smollm2_wide_draw2.json")
    family = read_structured_file(REPO_ROOT / "results" / "bench_family_smollm2_wide_draw2_instances.yaml")
    got = fit(bench, family, micro_batch=2, eval_examples=32)
    for table, name in ((fam.TRAIN_S, "TRAIN_S"), (fam.EVAL_S, "EVAL_S")):
        for k, v in table.items():
            assert v == pytest.approx(got[name][k], rel=0.01), (name, k)
