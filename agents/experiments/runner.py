"""The one experiment runner: a keyed store of results, and work spread over processes or Ray actors.

The comparison, the held-out evaluation, headroom, the lr grid and the transferred recipe's tuning
all run this way:

    store = RecordStore(folder)                           # JSON files of named, keyed entries
    with WorkerPool(context_factory, workers=2) as pool:  # each worker builds its context once
        records = run_tasks(tasks, store, pool)           # saved entries read back, the rest run

A task's result is saved the moment it finishes (written whole: temporary file, then rename), so
a crash or Ctrl-C loses only the tasks in flight, and rerunning the same command carries on. An
entry whose saved key differs from the task's (another agent, data, settings...), or that the
caller's ``stale`` rejects, is run again. Each entry also keeps the seconds its task took in its
worker, so that the cost of a result made over several resumed invocations adds up
(``worker_seconds``), where one invocation's wall time would count only its own share.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from trainers.atomic_files import write_json_atomic
from trainers.config import ConfigError
from trainers.progress import progress

BACKENDS = ("process", "ray")


def as_saved(obj: Any) -> Any:
    """A key as it reads back from a JSON file (tuples become lists, int keys strings)."""
    return json.loads(json.dumps(obj, default=str))


class RecordStore:
    """``<folder>/<file>.json`` = ``{"entries": {name: {"key": ..., "record": ..., "seconds": ...}}}``
    (``seconds``: what the task took where it ran; entries saved before it was kept lack it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, file: str) -> Path:
        return self.folder / f"{file}.json"

    def entries(self, file: str) -> dict[str, dict]:
        p = self.path(file)
        if not p.is_file():
            return {}
        try:
            saved = json.loads(p.read_text())
        except (OSError, ValueError):
            return {}  # unreadable: run again
        entries = saved.get("entries") if isinstance(saved, dict) else None
        return entries if isinstance(entries, dict) else {}

    def get(self, file: str, name: str, key: Any) -> Optional[Any]:
        """The saved record, if its key is this one."""
        entry = self.entries(file).get(name)
        if isinstance(entry, dict) and entry.get("key") == as_saved(key):
            return entry.get("record")
        return None

    def put(self, file: str, name: str, key: Any, record: Any, seconds: Optional[float] = None) -> None:
        entries = self.entries(file)
        entries[name] = {"key": key, "record": record, **({"seconds": seconds} if seconds is not None else {})}
        write_json_atomic(self.path(file), {"entries": entries}, indent=None)

    def worker_seconds(self, files: Iterable[str]) -> dict[str, Any]:
        """What the entries saved in ``files`` (a result's instance x seed files) cost: the sum of
        their tasks' seconds, over every invocation that made them; entries saved before tasks were
        timed are counted apart."""
        entries = [e for f in sorted(set(files)) for e in self.entries(f).values() if isinstance(e, dict)]
        timed = [float(e["seconds"]) for e in entries
                 if isinstance(e.get("seconds"), (int, float)) and not isinstance(e["seconds"], bool)]
        return {"seconds": round(sum(timed), 1), "entries_timed": len(timed), "entries": len(entries),
                "what": "sum over the saved entries of this result's instances and seeds of the seconds each task "
                        "took where it ran, across every invocation; tasks that run in worker processes overlap "
                        "(with W workers the wall time is about their sum / W), PBT's run alone on every core"}


def provenance(command: str, started: float, per_run: Path, names: Sequence[str], seeds: int) -> dict[str, Any]:
    """How a result file was made, as every experiment records it: the command, the machine, when,
    this invocation's wall time (``started``: its time.time()), and what the entries saved in
    ``per_run`` for these instances and seeds cost across invocations."""
    from trainers.provenance import machine_info, utc_now

    return {"command": command, "machine": machine_info(), "measured_at": utc_now(),
            "seconds_this_invocation": round(time.time() - started, 1),
            "worker_seconds": RecordStore(per_run).worker_seconds(pair_file(n, s) for n in names for s in range(seeds))}


def pair_file(instance: str, seed: int) -> str:
    return f"{instance}-seed{seed}"


@dataclass(frozen=True)
class Task:
    """One unit of work: where its result is saved (file, entry name), what decides it (key), and
    ``fn(context, *args)``, run in a worker; fn must be importable (a module-level function or a
    picklable object's method), as worker processes receive it by pickle."""

    file: str
    name: str
    key: Any
    fn: Callable[..., Any]
    args: tuple = ()


def _run_task(context: Any, task: Task) -> tuple[Any, float]:
    """The task's record, and the seconds it took here."""
    started = time.monotonic()
    record = task.fn(context, *task.args)
    return record, round(time.monotonic() - started, 2)


def run_tasks(tasks: Sequence[Task], store: RecordStore, pool: "WorkerPool",
              stale: Optional[Callable[[Task, Any], bool]] = None, desc: str = "tasks") -> dict[tuple[str, str], Any]:
    """Every task's record: read back where saved under its key (and not ``stale``), else run on
    the pool and saved as each finishes."""
    out: dict[tuple[str, str], Any] = {}
    todo = []
    for t in tasks:
        saved = store.get(t.file, t.name, t.key)
        if saved is not None and not (stale and stale(t, saved)):
            out[t.file, t.name] = saved
        else:
            todo.append(t)
    bar = progress(total=len(todo), desc=desc, unit="task", disable=not todo)
    try:
        for t, (record, seconds) in pool.map_unordered(_run_task, todo):
            store.put(t.file, t.name, t.key, record, seconds)
            out[t.file, t.name] = record
            bar.update(1)
    finally:
        bar.close()
    return out


_CONTEXT: Any = None  # a worker process's context, built once by its initializer


def _init_process(make_context: Callable[[], Any]) -> None:
    global _CONTEXT
    _CONTEXT = make_context()


def _in_process(fn: Callable[[Any, Any], Any], job: Any) -> Any:
    return fn(_CONTEXT, job)


class _RayWorker:
    def __init__(self, make_context: Callable[[], Any]) -> None:
        self.context = make_context()

    def call(self, fn: Callable[[Any, Any], Any], job: Any) -> Any:
        return fn(self.context, job)


class WorkerPool:
    """Workers that build their context once (an engine and its data take seconds to minutes) and
    then take jobs. One worker: this process. More: spawned processes (one core each), or Ray
    actors (``backend="ray"``: a private loopback Ray, or the cluster at ``ray_address``; one CPU,
    or one GPU where the cluster has them, each). Nothing starts before the first job, so an
    experiment whose results are all saved reads them back without building an engine."""

    def __init__(self, make_context: Callable[[], Any], workers: int = 1, backend: str = "process",
                 ray_address: Optional[str] = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if workers < 1:
            raise ConfigError(f"--workers {workers}: give at least 1")
        self.make_context, self.workers, self.backend, self.ray_address = make_context, workers, backend, ray_address
        self._context: Any = None
        self._executor = None
        self._actors: list = []
        self._ray_started = False

    # ------------------------------------------------------------ start and stop
    def check(self) -> None:
        """Start the workers now (so that a bad --workers stops before any work is done)."""
        if self.workers > 1 or self.backend == "ray":
            self._start()

    def _start(self) -> None:
        if self._executor is not None or self._actors:
            return
        if self.backend == "ray":
            self._start_ray()
            return
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        cores = os.cpu_count() or 1
        if self.workers > cores:
            raise ConfigError(f"--workers {self.workers}: this machine has {cores} cores (one worker each); "
                              f"give at most {cores}, or use a Ray cluster")
        self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_process, initargs=(self.make_context,))

    def _start_ray(self) -> None:
        import ray
        from ray.util import ActorPool

        from agents.parallel.ray_cluster import init_ray, worker_resources

        self._ray_started = init_ray(self.ray_address)
        try:
            ask = worker_resources()
            have = ray.cluster_resources()
            # an actor that never gets what it asks for would leave the pool waiting for ever
            room = int(min(have.get("GPU", 0) if "num_gpus" in ask else math.inf, have.get("CPU", 0)))
            if self.workers > room:
                raise ConfigError(f"--workers {self.workers}: this Ray cluster can hold {room} workers "
                                  f"({'one GPU and ' if 'num_gpus' in ask else ''}one CPU each); give at most {room}")
            actor = ray.remote(max_restarts=0, **ask)(_RayWorker)
            self._actors = [actor.remote(self.make_context) for _ in range(self.workers)]
            self._actor_pool = ActorPool(self._actors)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._actors or self._ray_started:
            import ray

            for a in self._actors:
                ray.kill(a)
            self._actors = []
            if self._ray_started:
                ray.shutdown()
                self._ray_started = False

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def context(self) -> Any:
        """This process's context (one worker): built at first use."""
        if self._context is None:
            self._context = self.make_context()
        return self._context

    # ------------------------------------------------------------ work
    def map_unordered(self, fn: Callable[[Any, Any], Any], jobs: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """(job, fn(context, job)) as each finishes."""
        jobs = list(jobs)
        if not jobs:
            return
        if self.workers == 1 and self.backend == "process":
            for job in jobs:
                yield job, fn(self.context, job)
            return
        self._start()
        if self.backend == "ray":
            index = {id(j): j for j in jobs}
            tagged = self._actor_pool.map_unordered(lambda a, j: a.call.remote(_tagged(fn), (id(j), j)), jobs)
            for tag, result in tagged:
                yield index[tag], result
            return
        from concurrent.futures import as_completed

        futures = {self._executor.submit(_in_process, fn, job): job for job in jobs}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        except BaseException:
            for f in futures:
                f.cancel()  # what finished is saved; the rest runs again next time
            raise

    def map(self, fn: Callable[[Any, Any], Any], jobs: Sequence[Any]) -> list[Any]:
        """fn(context, job) for every job, in the jobs' order."""
        done = {i: r for (i, _), r in self.map_unordered(_indexed(fn), list(enumerate(jobs)))}
        return [done[i] for i in range(len(jobs))]


class _tagged:
    """fn on a (tag, job) pair, returning (tag, result): Ray's unordered map loses which job was which."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn

    def __call__(self, context: Any, tagged_job: tuple[Any, Any]) -> tuple[Any, Any]:
        tag, job = tagged_job
        return tag, self.fn(context, job)


class _indexed:
    """fn on an (index, job) pair."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        self.fn = fn

    def __call__(self, context: Any, indexed_job: tuple[int, Any]) -> Any:
        return self.fn(context, indexed_job[1])


def add_worker_arguments(parser, default_workers: int = 1) -> None:
    """--workers, --ray and --ray-address, as every experiment command takes them."""
    from trainers.cli import positive_int

    parser.add_argument("--workers", type=positive_int, default=default_workers,
                        help=f"workers, one core each (default: {default_workers}, in this process); the results "
                             "are the same, in less time")
    parser.add_argument("--ray", action="store_true", help="the workers are Ray actors (one CPU or GPU each) on a "
                                                           "private loopback Ray, or on --ray-address")
    parser.add_argument("--ray-address", default=None, help="join this Ray cluster (implies --ray; the RAY_ADDRESS "
                                                            "environment variable is not read: name it here)")


def pool_options(args) -> dict[str, Any]:
    """WorkerPool's keyword arguments from add_worker_arguments' flags."""
    ray = bool(args.ray or args.ray_address)
    return {"workers": args.workers, "backend": "ray" if ray else "process", "ray_address": args.ray_address}
