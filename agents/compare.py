"""The learned controller against searches and fixed recipes, at matched compute.

    python -m agents.compare --agent results/agents/ppo-tiny-seed0 [--budgets 1 4 8 16] [--seeds 3]
    python -m agents.compare --agent <folder> --data mine.jsonl [--model <hf folder>] [--steps N]

For every held-out instance and seed, every method runs; compute is counted in training steps
actually run (pruned trials included). Searches select by validation loss; what is reported is
the test loss of the selected run. Methods:
  policy           the learned controller: one run
  default_recipe   the configs/ recipe: one run
  hand_schedule    warmup then cosine at the recipe's lr: one run
  random_search    random recipes from the Optuna space, best of the first B
  optuna_tpe       TPE + median pruning, best of the first B finished trials
  pbt              Ray Tune Population Based Training, population P (its members' measured steps)
  schedulefree_adamw, prodigy
                   one-run self-tuning optimizers (Schedule-Free AdamW, Prodigy) at their READMEs'
                   defaults, one configuration for every instance: one run
Outputs in results/compare/<name>/: summary.md/csv/json and PNG plots; one MLflow run with
nested runs per method. Each instance x seed is saved as it finishes: rerun the same command
after a crash and it carries on (an agent trained further is compared afresh).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Optional

from trainers.cli import CommandParser, nonnegative_int, plain_name, positive_int, run_command
from trainers.config import REPO_ROOT, ConfigError


def build_parser() -> CommandParser:
    p = CommandParser(prog="python -m agents.compare", description=__doc__)
    p.add_argument("--agent", required=True, help="agent folder (results/agents/<name>)")
    p.add_argument("--instances", nargs="*", default=None, help="instance names (default: the held-out set)")
    p.add_argument("--data", help="compare on your JSONL file of {\"prompt\",\"completion\"} or {\"text\"} records "
                                  "instead (as agents.tune --data)")
    p.add_argument("--model", help="a Hugging Face model folder, or a preset (tiny-gpt, smollm2-135m)")
    p.add_argument("--steps", type=positive_int, help="training steps of each run on --data (default: the episode's)")
    p.add_argument("--budgets", nargs="+", type=positive_int, default=[1, 4, 8, 16], help="search budgets in runs")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per instance (default: 3)")
    p.add_argument("--pbt-populations", nargs="*", type=positive_int, default=[4],
                   help="PBT population sizes to run on Ray Tune (default: 4; none to skip PBT)")
    p.add_argument("--transfer-trials", type=nonnegative_int, default=16,
                   help="Optuna trials tuning the transferred recipe on the training instances (0: leave it out; "
                        "default 16)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="Ray actors running instance x seed pairs (and the transferred recipe's tuning) at once, "
                        "one core each (default: 1, in this process); PBT uses every core on its own")
    p.add_argument("--name", type=plain_name, default=None, help="output folder name (default: the agent's name)")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "compare"), help="parent folder (default: results/compare)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite under results/)")
    return p


def digest(obj) -> str:
    """A short hash of a JSON-able key: names studies and saved files after what decided them."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def with_set_ranges(cfg):
    """The user's instance (the last held-out one) with starting ranges spanning the agent's
    instances': agents.tune starts a single run at the default recipe, but a comparison needs a
    range that every method (the policy's draws, the searches' priors, PBT's population) shares."""
    from trainers.config import parse_config

    d = cfg.model_dump(mode="json")
    others = d["train"] + d["heldout"][:-1]
    for knob in ("init_lr", "init_weight_decay", "init_grad_clip"):
        d["heldout"][-1][knob] = [min(i[knob][0] for i in others), max(i[knob][1] for i in others)]
    return parse_config(d, source="agents.compare --data")


def transferred_recipe(env, n_trials: int, out: Path, runner=None) -> dict:
    """Tune the transferred recipe once (or read it back when the instance set and trial count are
    the same as last time); its cost is reported apart from the per-instance compute."""
    from agents.baselines.transferred_recipe import tune_transferred_recipe
    from trainers.atomic_files import write_json_atomic

    d = env.cfg.model_dump(mode="json")  # what the tuning sees: not the held-out instances
    key = {k: d[k] for k in ("session", "episode", "bounds", "action", "train")} | {"n_trials": n_trials, "seed": 0}
    tag = digest(key)
    path = out / "transferred_recipe.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("tag") == tag:
            return saved["result"]
    result = tune_transferred_recipe(env, n_trials, 0, out / "studies" / f"transferred-{tag}.db", f"transferred-{tag}",
                                     runner)
    write_json_atomic(path, {"tag": tag, "result": result})
    return result


def compare(args: argparse.Namespace, argv: Optional[list[str]] = None) -> dict:
    import mlflow
    from tqdm.auto import tqdm

    from agents.evaluation.headroom import record_key
    from agents.evaluation.matched_compute import (compare_one, load_saved_results, save_results, self_tuning_envs,
                                                   self_tuning_envs_left_out)
    from agents.tune import user_config, with_model
    from trainers.config import RecipeConfig
    from trainers.models import model_path
    from trainers.session import SELF_TUNING
    from agents.learners.agent_folder import Controller
    from agents.reporting import mlflow_tracking
    from agents.reporting.comparison_report import summarise_comparison, write_outputs
    from envs.finetune_env import FineTuneEnv
    from trainers.provenance import machine_info, utc_now

    started = time.monotonic()
    command = "python -m agents.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    mlflow_tracking.check_tracking_uri(None if getattr(args, 'no_mlflow', False) else args.tracking_uri)
    controller = Controller(args.agent)
    cfg = controller.env_config
    if args.model:
        model_path(args.model)  # a folder that is not a model stops here, before any data or engine
    if args.data:  # the user's file becomes the one held-out instance, as in agents.tune --data
        cfg = with_set_ranges(user_config(cfg, args.data, args.model, args.steps))
        args.instances = args.instances or [cfg.heldout[-1].name]
    elif args.model:
        cfg = with_model(cfg, args.model)
    names = list(dict.fromkeys(args.instances or [i.name for i in cfg.heldout]))  # a name given twice runs once
    if not names:
        raise ConfigError(f"{Path(args.agent) / 'env_config.yaml'}: no held-out instances to compare on; "
                          "name some with --instances")
    for n in names:
        cfg.instance(n)
    default_name = Path(args.agent).name + (f"-on-{Path(args.data).stem}" if args.data else "")
    out = Path(args.out) / (args.name or default_name)
    storage_dir = out / "studies"
    storage_dir.mkdir(parents=True, exist_ok=True)
    env = FineTuneEnv(cfg, split="all", evaluate_test=True)
    controller.check_compatible(env.actions)
    transferred, results = None, {}
    pool = None  # Ray actors, started at the first work for them (a finished comparison reads back without)

    def workers():
        nonlocal pool
        if pool is None:
            from agents.evaluation.compare_workers import ComparisonPool

            pool = ComparisonPool(str(Path(args.agent).resolve()), cfg.model_dump(mode="json"), args.workers)
        return pool

    try:
        if args.workers > 1:  # started here, so that a bad --workers or a failed Ray start stops before any run
            workers()
        if args.transfer_trials:
            transferred = transferred_recipe(env, args.transfer_trials, out,
                                             (lambda *a: workers().run_recipe(*a)) if args.workers > 1 else None)
        # what decides a saved instance x seed: the agent's weights, the budgets, and the instance's
        # session, episode and data (a changed file or model is compared afresh)
        # (PBT is saved beside the other methods but keyed apart: it does not depend on the agent, and
        # a changed --pbt-populations runs only the populations missing)
        key = {"agent": controller.fingerprint(), "budgets": sorted(args.budgets), "self_tuning": SELF_TUNING,
               "transferred_recipe": transferred["recipe"] if transferred else None}
        instance_keys = {n: record_key(cfg, n) for n in names}
        pairs = [(i, s) for i in names for s in range(args.seeds)]

        def run_key(inst: str) -> dict:
            return json.loads(json.dumps(dict(key, instance=instance_keys[inst])))  # as it reads back from disk

        def saved_path(inst: str, seed: int) -> Path:
            return out / "per_run" / f"{inst}-seed{seed}.json"

        for inst, seed in pairs:
            got = load_saved_results(saved_path(inst, seed), run_key(inst))
            if got is not None:
                results[inst, seed] = got
        # every method but PBT, pair by pair; saved at once (PBT still to come), so a crash loses one pair
        todo = [p for p in pairs if p not in results]
        transferred_recipe_cfg = RecipeConfig(**transferred["recipe"]) if transferred else None
        if args.workers > 1 and todo:
            done = workers().compare_pairs(todo, args.budgets, storage_dir.resolve(), lambda i, s: digest(run_key(i)),
                                      transferred["recipe"] if transferred else None)
        else:
            st_envs = self_tuning_envs(cfg) if todo else {}
            done = ((i, s, compare_one(env, controller, i, s, args.budgets, storage_dir, (), st_envs,
                                       study_tag=digest(run_key(i)), transferred=transferred_recipe_cfg))
                    for i, s in todo)
        for inst, seed, res in tqdm(done, total=len(todo), desc="compare", unit="instance x seed"):
            results[inst, seed] = res
            save_results(saved_path(inst, seed), run_key(inst), res)
    finally:
        if pool is not None:
            pool.close()
    # PBT last, pair by pair: Ray Tune spreads each population over the cores. Its experiment
    # folders are named after the instance's key, so a changed model, file or episode starts afresh.
    from agents.baselines.pbt import populations_to_run, run_pbt

    pops = sorted(set(args.pbt_populations))
    todo = [p for p in pairs if populations_to_run(results[p].get("pbt", {}), pops)]
    for inst, seed in tqdm(todo, desc="PBT", unit="instance x seed", disable=not todo):
        saved = results[inst, seed].setdefault("pbt", {})
        for n in populations_to_run(saved, pops):
            saved[n] = run_pbt(cfg, inst, seed, n, storage_dir / "pbt" / digest(instance_keys[inst]))
            save_results(saved_path(inst, seed), run_key(inst), results[inst, seed])
    for r in results.values():  # what this invocation asked for (other populations stay saved)
        if pops:
            r["pbt"] = {n: r["pbt"][n] for n in pops}
        else:
            r.pop("pbt", None)
    per_run = [{"instance": i, "seed": s, "results": results[i, s]} for i, s in pairs]
    summary = summarise_comparison(per_run, args.budgets)
    summary.update({"command": command, "seeds": list(range(args.seeds)), "instances": names,
                    "agent_fingerprint": key["agent"], "measured_at": utc_now(), "machine": machine_info(),
                    # this invocation only: a resumed comparison's earlier invocations are not counted
                    "wall_seconds_this_invocation": round(time.monotonic() - started, 1),
                    "left_out": self_tuning_envs_left_out(cfg),
                    "transferred_recipe_tuning": transferred})
    plots = write_outputs(out, summary, per_run, command, args.budgets)
    mlflow_tracking.setup(args.tracking_uri, "compare")
    with mlflow.start_run(run_name=f"compare/{out.name}"):
        mlflow.log_params({"agent": args.agent, "budgets": args.budgets, "seeds": args.seeds, "instances": ",".join(names)})
        for m, by_b in summary["methods"].items():
            with mlflow.start_run(run_name=m, nested=True):
                for b, s in by_b.items():
                    mlflow.log_metric("test_loss_mean", s["test_loss_mean"], step=int(b))
                    mlflow.log_metric("compute_steps", s["compute_steps"], step=int(b))
                    gain = summary["search_gain_captured"][m][b]["iqm"]
                    if gain == gain:  # nan where no instance had a gain to capture
                        mlflow.log_metric("search_gain_captured_iqm", gain, step=int(b))
        for f in plots + [out / "summary.md", out / "summary.json", out / "summary.csv"]:
            mlflow.log_artifact(str(f))
    print((out / "summary.md").read_text())
    print(f"written to {out}")
    return summary


def main(argv: Optional[list[str]] = None) -> dict:
    return run_command(build_parser(), lambda args: compare(args, argv), argv)


if __name__ == "__main__":
    main()
