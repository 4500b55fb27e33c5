"""Population Based Training on Ray Tune: a population of fine-tuning runs that copy the better
members' model + optimizer state (exploit) and perturb their hyperparameters (explore).

The perturbation interval is the controller's decision interval, the mutations are the
controller's knobs (lr, weight decay, clipping threshold; ``search_space.hparam_space``), and each
member is a Ray Tune trial with declared resources. Compute is measured, not assumed: every report
carries the training steps that member ran since its last report, and the total is summed over
every member's reports (a member that exploits another continues from the other's step count, and
a diverged member stops early, so it is not population x episode steps).

Disk: every member checkpoints its whole episode state (model + optimizer) at every decision, and
all are kept while the population runs (Ray Tune warns that keeping 2 or fewer can delete a
checkpoint before another member copies it). Once every member has finished, nothing can exploit
them any more, so ``run_pbt`` deletes them: a finished experiment is restored from its trials'
reported metrics, which stay.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

from trainers.config import InstanceSetConfig


def pbt_member(config: dict[str, Any]) -> None:
    """One population member (runs inside a Ray Tune trial), through the shared episode loop."""
    import torch
    from ray import tune

    from envs.episode import ConstantPlan, decisions
    from envs.finetune_env import FineTuneEnv
    from trainers.config import parse_config
    from trainers.session import Hparams

    cfg = parse_config(config["cfg"])
    env = FineTuneEnv(cfg, split="all", evaluate_test=True)
    h = env.actions.clip(Hparams(config["lr"], config["weight_decay"], config["grad_clip"]))
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # exploit: continue from a better member's model and optimizer state
        with ckpt.as_directory() as d:
            resume = torch.load(Path(d) / "member.pt", weights_only=False)  # written by a member of this run
    for d in decisions(env, ConstantPlan(h), config["instance"], config["seed"], resume=resume):
        info = d.info
        metrics = {"eval_loss": info["eval_loss"] if not info["diverged"] else 1e9,
                   "steps_done": env.steps_done, "trained_steps": len(info["train_loss"]),
                   "diverged": info["diverged"], "test_loss": info.get("test_loss", float("nan")),
                   "test_metric": info.get("test_metric"),
                   "lr": h.lr, "weight_decay": h.weight_decay, "grad_clip": h.grad_clip}
        if d.done:
            metrics["schedule_lr"] = json.dumps([x["lr"] for x in env.log.schedule])
            metrics["eval_curve"] = json.dumps(env.log.eval_curve)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(env.episode_state(), Path(tmp) / "member.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def experiment_path(storage: Path, instance: str, seed: int, population: int) -> Path:
    return storage.resolve() / f"pbt-{instance}-seed{seed}-p{population}"


def run_pbt(cfg: InstanceSetConfig, instance: str, seed: int, population: int, storage: Path,
            resources: Optional[dict] = None, keep_checkpoints: bool = False) -> dict[str, Any]:
    """Returns the best member by final validation loss, its test loss, and the compute spent.

    The members' checkpoints are deleted only once every member has finished its episode (unless
    ``keep_checkpoints``). Members that errored are left out of the selection and counted in
    ``errored_members``; the population's checkpoints then stay, so that calling again continues
    them (``resume_errored``). A population that Ray Tune stopped early (it catches Ctrl-C and
    returns, marking the stopped members TERMINATED) raises KeyboardInterrupt with its checkpoints
    kept: it is not a result."""
    import ray
    from ray import tune

    from agents.parallel.ray_cluster import init_ray, trial_resources

    if population < 1:
        raise ValueError(f"population must be >= 1, got {population}")
    started = init_ray()
    try:
        inst = cfg.instance(instance)
        trainable = tune.with_resources(pbt_member, resources or trial_resources())
        experiment = experiment_path(storage, instance, seed, population)
        if tune.Tuner.can_restore(str(experiment)):
            # an earlier run of the same population: finished members are read back, unfinished
            # and errored ones continue from their checkpoints
            results = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True).fit()
            if len(results) != population:
                raise ValueError(f"{experiment}: an earlier PBT run with {len(results)} members, not {population}; "
                                 "remove that folder or choose another storage folder")
        else:
            results = _fit_new_population(cfg, inst, seed, population, trainable, experiment)
    finally:
        if started:
            ray.shutdown()
    # Errors by trial status (ResultGrid.errors misses an error whose file is missing). "Finished"
    # from each member's own last report: after Ctrl-C, Ray marks the stopped members TERMINATED too
    errored = results.num_errors
    unfinished = population - errored - finished_members(results)
    if unfinished > 0:
        raise KeyboardInterrupt(f"{experiment}: PBT stopped with {unfinished} of {population} members unfinished; "
                                "their checkpoints are kept, and the same command continues them")
    if errored:
        first = next((str(e).strip().splitlines() for e in results.errors if str(e).strip()), ["(no message)"])[-1]
        print(f"warning: {experiment}: {errored} of {population} PBT members errored and are left out of the "
              f"selection; the first error: {first}. The members' checkpoints are kept: run the same command "
              "again to continue them, or remove that folder to start afresh.", file=sys.stderr)
    elif not keep_checkpoints:
        delete_member_checkpoints(experiment)
    return {**_best_member(cfg, inst, results), "errored_members": errored}


def finished_members(results) -> int:
    """Members whose last report is their episode's end (pbt_member adds ``schedule_lr`` only there,
    also when the member diverged and stopped), without an error."""
    return sum(1 for r in results if r.error is None and r.metrics and "schedule_lr" in r.metrics)


def _fit_new_population(cfg: InstanceSetConfig, inst, seed: int, population: int, trainable, experiment: Path):
    import numpy as np
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    from agents.baselines.search_space import hparam_space, tune_space

    # PBT's explore/exploit draws come from Python's RNG, the initial population from numpy's
    random.seed(seed)
    np.random.seed(seed)
    pbt = PopulationBasedTraining(time_attr="steps_done", perturbation_interval=cfg.episode.decision_interval,
                                  hyperparam_mutations=tune_space(hparam_space(cfg.bounds)),
                                  quantile_fraction=0.25, resample_probability=0.25)
    tuner = tune.Tuner(
        trainable,
        param_space={"cfg": cfg.model_dump(mode="json"), "instance": inst.name, "seed": seed,
                     "lr": tune.loguniform(*inst.init_lr), "weight_decay": tune.loguniform(*inst.init_weight_decay),
                     "grad_clip": tune.loguniform(*inst.init_grad_clip)},
        tune_config=tune.TuneConfig(scheduler=pbt, num_samples=population, metric="eval_loss", mode="min",
                                    reuse_actors=False),
        run_config=tune.RunConfig(name=experiment.name, storage_path=str(experiment.parent), verbose=0),
    )
    return tuner.fit()


def delete_member_checkpoints(experiment: Path) -> None:
    """Deletes the members' checkpoint folders of a finished experiment."""
    for folder in experiment.glob("pbt_member_*/checkpoint_*"):
        shutil.rmtree(folder)


def measured_compute(results) -> int:
    """Training steps every member really ran, summed over all of their reports."""
    total = 0
    for r in results:
        df = r.metrics_dataframe
        if df is not None and "trained_steps" in df:
            total += int(df["trained_steps"].fillna(0).sum())
    return total


def _best_member(cfg: InstanceSetConfig, inst, results) -> dict[str, Any]:
    """Selection by final validation loss; the test loss is what gets reported."""
    steps = cfg.steps_for(inst)
    compute = measured_compute(results)
    finals = [r.metrics for r in results if r.metrics and r.metrics.get("steps_done") == steps
              and not r.metrics.get("diverged")]
    if not finals:
        return {"compute_steps": compute, "test_loss": float("nan"), "val_loss": float("nan")}
    best = min(finals, key=lambda m: m["eval_loss"])
    return {"compute_steps": compute, "test_loss": best["test_loss"], "test_metric": best.get("test_metric"),
            "val_loss": best["eval_loss"],
            "schedule_lr": json.loads(best["schedule_lr"]), "eval_curve": json.loads(best["eval_curve"])}
