"""PBT baseline on Ray Tune: a population of fine-tuning runs that copy the better members'
model + optimizer state (exploit) and perturb their hyperparameters (explore).

    python -m agents.pbt_baseline --instance bbc-tech-lm --population 4

The perturbation interval is the controller's decision interval, the space is the controller's
(lr, weight decay, clipping threshold), and each member is a Ray Tune trial with declared
resources ({"cpu": 1}, or {"gpu": 1} on GPU machines). Compute = population x episode steps.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path
from typing import Any, Optional

from trainers.config import REPO_ROOT, InstanceSetConfig, load_config


def pbt_member(config: dict[str, Any]) -> None:
    """One population member (runs inside a Ray Tune trial)."""
    import torch
    from ray import tune

    from envs.finetune_env import FineTuneEnv
    from trainers.config import parse_config
    from trainers.session import Hparams

    cfg = parse_config(config["cfg"])
    env = FineTuneEnv(cfg, split="all", evaluate_test=True)
    h = env.actions.clip(Hparams(config["lr"], config["weight_decay"], config["grad_clip"]))
    env.reset(seed=config["seed"], options={"instance": config["instance"], "initial_hparams": h})
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # exploit: continue from a better member's model and optimizer state
        with ckpt.as_directory() as d:
            env.load_episode_state(torch.load(Path(d) / "member.pt", weights_only=False))
    k = cfg.episode.decision_interval
    done = env.steps_done >= env.total_steps
    while not done:
        _, _, term, trunc, info = env.step_with_schedule([h] * k)
        done = term or trunc
        metrics = {"eval_loss": info["eval_loss"] if not info["diverged"] else 1e9,
                   "steps_done": env.steps_done, "diverged": info["diverged"],
                   "test_loss": info.get("test_loss", float("nan")),
                   "lr": h.lr, "weight_decay": h.weight_decay, "grad_clip": h.grad_clip}
        if done:
            metrics["schedule_lr"] = json.dumps([x["lr"] for x in env.log.schedule])
            metrics["eval_curve"] = json.dumps(env.log.eval_curve)
        with tempfile.TemporaryDirectory() as d:
            torch.save(env.episode_state(), Path(d) / "member.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def run_pbt(cfg: InstanceSetConfig, instance: str, seed: int, population: int, storage: Path,
            resources: Optional[dict] = None) -> dict[str, Any]:
    """Returns the best member by final validation loss, its test loss, and the compute spent."""
    import ray
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    from agents.ray_vec_env import init_ray

    started = init_ray()
    try:
        b = cfg.bounds
        resources = resources or ({"gpu": 1, "cpu": 1} if ray.cluster_resources().get("GPU", 0) >= 1 else {"cpu": 1})
        space = {"lr": tune.loguniform(*b.lr), "weight_decay": tune.loguniform(*b.weight_decay),
                 "grad_clip": tune.loguniform(*b.grad_clip)}
        inst = cfg.instance(instance)
        lo, hi = inst.init_lr
        pbt = PopulationBasedTraining(
            time_attr="steps_done", perturbation_interval=cfg.episode.decision_interval,
            hyperparam_mutations=space, quantile_fraction=0.25, resample_probability=0.25,
        )
        trainable = tune.with_resources(pbt_member, resources)
        experiment = storage.resolve() / f"pbt-{instance}-seed{seed}"
        if tune.Tuner.can_restore(str(experiment)):
            # an earlier run of the same population: finished members are read back, unfinished
            # ones continue from their checkpoints
            results = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True).fit()
            if len(results) != population:
                raise ValueError(f"{experiment}: an earlier PBT run with {len(results)} members, not {population}; "
                                 "remove that folder or choose another storage folder")
            return _best_member(cfg, inst, population, results)
        random.seed(seed)  # PBT's explore/exploit draws come from Python's global RNG
        tuner = tune.Tuner(
            trainable,
            param_space={"cfg": cfg.model_dump(mode="json"), "instance": instance, "seed": seed,
                         "lr": tune.loguniform(lo, hi), "weight_decay": tune.loguniform(*inst.init_weight_decay),
                         "grad_clip": tune.loguniform(*inst.init_grad_clip)},
            tune_config=tune.TuneConfig(scheduler=pbt, num_samples=population, metric="eval_loss", mode="min",
                                        reuse_actors=False),
            run_config=tune.RunConfig(name=experiment.name, storage_path=str(experiment.parent),
                                      verbose=0),
        )
        results = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    return _best_member(cfg, inst, population, results)


def _best_member(cfg: InstanceSetConfig, inst, population: int, results) -> dict[str, Any]:
    """Selection by final validation loss; the test loss is what gets reported."""
    steps = cfg.steps_for(inst)
    finals = [r.metrics for r in results if r.metrics and r.metrics.get("steps_done") == steps]
    if not finals:
        return {"compute_steps": population * steps, "test_loss": float("nan"), "val_loss": float("nan")}
    best = min(finals, key=lambda m: m["eval_loss"])
    return {"compute_steps": population * steps, "test_loss": best["test_loss"], "val_loss": best["eval_loss"],
            "schedule_lr": json.loads(best["schedule_lr"]), "eval_curve": json.loads(best["eval_curve"])}


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m agents.pbt_baseline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="instance set (default: tiny)")
    p.add_argument("--instance", default=None, help="default: the first held-out instance")
    p.add_argument("--population", type=int, default=4, help="members (default: 4)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    inst = args.instance or cfg.heldout[0].name
    res = run_pbt(cfg, inst, args.seed, args.population, REPO_ROOT / "results" / "runs" / "pbt")
    print(json.dumps({k: v for k, v in res.items() if k not in ("schedule_lr", "eval_curve")}, indent=2))


if __name__ == "__main__":
    main()
