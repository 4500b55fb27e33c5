"""The experiment runner: the keyed store, resuming, and the same results in one process, in
worker processes and in Ray actors (with a trivial context: the runner, not the engine, is tested)."""
from __future__ import annotations

import functools
import json
import os

import pytest

from agents.experiments.runner import RecordStore, Task, WorkerPool, pair_file, run_tasks


def make_context(offset: int) -> dict:
    return {"offset": offset, "pid": os.getpid()}


def square(ctx: dict, x: int) -> dict:
    return {"value": x * x + ctx["offset"], "pid": ctx["pid"]}


def job_square(ctx: dict, job: int) -> int:
    return job * job + ctx["offset"]


def test_a_saved_entry_is_read_back_only_under_its_key(tmp_path):
    store = RecordStore(tmp_path)
    store.put("a-seed0", "m", {"k": (1, 2)}, {"x": 1})
    assert store.get("a-seed0", "m", {"k": [1, 2]}) == {"x": 1}  # as JSON reads it back
    assert store.get("a-seed0", "m", {"k": [1, 3]}) is None
    assert store.get("a-seed0", "other", {"k": [1, 2]}) is None
    store.put("a-seed0", "other", {}, [3])  # another entry of the same file leaves the first be
    assert store.get("a-seed0", "m", {"k": [1, 2]}) == {"x": 1}
    (tmp_path / "b-seed0.json").write_text("{half a file")
    assert store.get("b-seed0", "m", {}) is None  # unreadable: run again, never trusted


def test_run_tasks_saves_each_result_and_runs_only_what_is_missing_or_stale(tmp_path):
    store = RecordStore(tmp_path)
    calls = []

    def work(ctx, x):
        calls.append(x)
        return {"value": x * 10}

    tasks = [Task(pair_file("i", s), "m", {"v": 1}, work, (s,)) for s in range(3)]
    with WorkerPool(lambda: None) as pool:
        first = run_tasks(tasks, store, pool)
        assert calls == [0, 1, 2] and first[("i-seed1", "m")] == {"value": 10}
        assert json.loads((tmp_path / "i-seed2.json").read_text())["entries"]["m"]["record"] == {"value": 20}
        calls.clear()
        again = run_tasks(tasks, store, pool)
        assert calls == [] and again == first
        changed = [Task(t.file, t.name, {"v": 2}, work, t.args) if t.args == (1,) else t for t in tasks]
        run_tasks(changed, store, pool, stale=lambda t, rec: t.args == (2,))
        assert calls == [1, 2]  # the changed key and the stale record, nothing else


def test_each_entry_keeps_the_seconds_its_task_took_and_they_add_up_over_invocations(tmp_path):
    import time

    store = RecordStore(tmp_path)
    store.put("i-seed0", "m", {}, {"x": 0})  # saved before tasks were timed: counted apart

    def work(ctx, x):
        time.sleep(0.3 * x)
        return x

    with WorkerPool(lambda: None) as pool:
        run_tasks([Task(pair_file("i", 1), "m", {}, work, (1,))], store, pool)
        run_tasks([Task(pair_file("i", s), "m", {}, work, (s,)) for s in (1, 2)], store, pool)  # a resume
        run_tasks([Task(pair_file("other", 0), "m", {}, work, (1,))], store, pool)  # another result's instance
    seconds = {f: store.entries(f)["m"]["seconds"] for f in ("i-seed1", "i-seed2")}
    assert seconds["i-seed1"] >= 0.3 and seconds["i-seed2"] >= 0.6 and seconds["i-seed2"] > seconds["i-seed1"]
    spent = store.worker_seconds(pair_file("i", s) for s in range(3))  # instance i's 3 seeds only
    assert (spent["entries_timed"], spent["entries"]) == (2, 3)
    assert spent["seconds"] == pytest.approx(round(seconds["i-seed1"] + seconds["i-seed2"], 1))


def test_a_task_that_fails_keeps_what_finished_before_it(tmp_path):
    store = RecordStore(tmp_path)

    def work(ctx, x):
        if x == 1:
            raise KeyboardInterrupt
        return x

    with WorkerPool(lambda: None) as pool:
        with pytest.raises(KeyboardInterrupt):
            run_tasks([Task(f"f{x}", "m", {}, work, (x,)) for x in range(3)], store, pool)
    assert store.get("f0", "m", {}) == 0 and store.get("f1", "m", {}) is None


def test_worker_processes_build_their_context_once_and_give_the_same_results():
    jobs = list(range(6))
    with WorkerPool(functools.partial(make_context, 5)) as one:
        here = one.map(job_square, jobs)
    with WorkerPool(functools.partial(make_context, 5), workers=2) as two:
        there = two.map(job_square, jobs)
        pids = {r["pid"] for _, r in two.map_unordered(square, jobs)}
    assert here == there == [j * j + 5 for j in jobs]
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


@pytest.mark.xdist_group("ray")  # starts a Ray node: one at a time (bash test.sh runs pytest-xdist)
def test_ray_actors_give_the_same_results_and_ray_is_stopped_after():
    import operator

    import ray

    # Ray's workers import what they run by name: builtins here (this test module is not on their path)
    with WorkerPool(functools.partial(int, 7), workers=2, backend="ray") as pool:
        assert pool.map(operator.mul, list(range(5))) == [7 * j for j in range(5)]
        assert sorted(r for _, r in pool.map_unordered(operator.add, [1, 2, 3])) == [8, 9, 10]
    assert not ray.is_initialized()


def test_a_saved_comparison_entry_without_a_budget_now_asked_for_runs_again():
    from agents.experiments.matched_compute import record_is_stale
    from agents.methods import RunRecord

    class Method:  # what record_is_stale asks of a method: whether a complete record is stale
        def __init__(self, verdict: bool):
            self.verdict = verdict

        def stale(self, record):
            assert set(record) == {1, 4} and all(isinstance(r, RunRecord) for r in record.values())
            return self.verdict

    rec = RunRecord(test_loss=1.0, test_metric=None, compute_steps=8).to_json()
    saved = {"1": rec, "4": rec}
    task = lambda m, budgets: Task("pair.json", "random_search", {}, None, (m, "inst", 0, budgets))  # noqa: E731
    assert not record_is_stale(task(Method(False), (1, 4)), saved)
    assert record_is_stale(task(Method(False), (1, 4, 8)), saved)  # --budgets grew: run it again
    assert record_is_stale(task(Method(True), (1, 4)), saved)  # the method's own rule (PBT's errored members)
