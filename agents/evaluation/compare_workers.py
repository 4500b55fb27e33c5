"""The comparison's work on Ray actors, so that `agents.compare --workers N` uses N cores (or N
GPUs on a cluster that has them).

Each actor builds its engines once (the policy's environment and one per self-tuning optimizer)
and then takes jobs:

- ``recipe_episodes``: one recipe on a list of instances (the transferred recipe's tuning spreads
  each Optuna trial's training instances over the actors);
- ``compare_pair``: every method except PBT on one held-out instance and seed. PBT runs afterwards
  on Ray Tune, which spreads its own population over the cores.

Every episode is fixed by its seed, so a job gives the same result on an actor as in the calling
process (tests/test_baselines.py checks this); only the order in which jobs finish differs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional


class ComparisonWorker:
    """Lives in a Ray actor: the agent's controller and the comparison's environments."""

    def __init__(self, agent: str, cfg_dict: dict) -> None:
        from agents.learners.agent_folder import Controller
        from envs.finetune_env import FineTuneEnv
        from trainers.config import parse_config

        self.controller = Controller(agent)
        self.cfg = parse_config(cfg_dict)
        self.env = FineTuneEnv(self.cfg, split="all", evaluate_test=True)
        self._self_tuning: Optional[dict] = None  # built at the first pair: the tuning phase needs none

    def recipe_episodes(self, recipe: dict, instances: list[str], seed: int) -> list[dict]:
        from agents.baselines.transferred_recipe import run_recipe

        return run_recipe(self.env, recipe, instances, seed)

    def compare_pair(self, instance: str, seed: int, budgets: list[int], storage_dir: str, study_tag: str,
                     transferred: Optional[dict]) -> tuple[str, int, dict]:
        from agents.evaluation.matched_compute import compare_one, self_tuning_envs
        from trainers.config import RecipeConfig

        if self._self_tuning is None:
            self._self_tuning = self_tuning_envs(self.cfg)
        results = compare_one(self.env, self.controller, instance, seed, budgets, Path(storage_dir), (),
                              self._self_tuning, study_tag=study_tag,
                              transferred=RecipeConfig(**transferred) if transferred else None)
        return instance, seed, results


class ComparisonPool:
    """N ComparisonWorker actors on a private loopback Ray (or a Ray already started). ``close``
    frees them (and stops a Ray this pool started), so that PBT afterwards has every core."""

    def __init__(self, agent: str, cfg_dict: dict, workers: int) -> None:
        import ray
        from ray.util import ActorPool

        from agents.parallel.ray_cluster import init_ray, worker_resources
        from trainers.config import ConfigError

        self.actors: list = []
        self.started_ray = init_ray()
        try:
            ask = worker_resources()
            resources = ray.cluster_resources()
            # an actor that never gets what it asks for would leave the pool waiting for ever
            have = int(min(resources.get("GPU", 0) if "num_gpus" in ask else math.inf, resources.get("CPU", 0)))
            if workers > have:
                raise ConfigError(f"--workers {workers}: this Ray cluster can hold {have} workers "
                                  f"({'one GPU and ' if 'num_gpus' in ask else ''}one CPU each); give at most {have}")
            actor = ray.remote(max_restarts=0, **ask)(ComparisonWorker)
            self.actors = [actor.remote(agent, cfg_dict) for _ in range(workers)]
            self.pool = ActorPool(self.actors)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
        if self.started_ray:
            ray.shutdown()

    def run_recipe(self, recipe: dict, instances: list[str], seed: int) -> list[dict]:
        """One recipe on every instance, the instances spread over the actors; logs in the given order."""
        n = len(self.actors)
        chunks = [list(range(len(instances)))[i::n] for i in range(n)]
        chunks = [c for c in chunks if c]
        parts = self.pool.map(lambda a, c: a.recipe_episodes.remote(recipe, [instances[i] for i in c], seed), chunks)
        logs: dict[int, dict] = {}
        for chunk, part in zip(chunks, parts):  # ActorPool.map keeps the submission order
            logs.update(zip(chunk, part))
        return [logs[i] for i in range(len(instances))]

    def compare_pairs(self, pairs: Iterable[tuple[str, int]], budgets: list[int], storage_dir: Path,
                      study_tag: Callable[[str, int], str], transferred: Optional[dict]
                      ) -> Iterator[tuple[str, int, dict[str, Any]]]:
        """(instance, seed, results) as each pair finishes."""
        return self.pool.map_unordered(
            lambda a, p: a.compare_pair.remote(p[0], p[1], budgets, str(storage_dir), study_tag(*p), transferred),
            list(pairs))
