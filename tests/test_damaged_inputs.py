"""Inputs that reach a user damaged (issue 25): an agent folder someone shared, a config from an
issue thread, a JSONL another tool exported. Each gets one ``error:`` line naming the file and the
field, exit status 2, no traceback, and is refused before anything deep (torch, the tokenizer,
PyYAML's recursive composer) sees it."""
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_commands import _run, files  # noqa: F401 (files: the fixture, with its fast config)

SHIPPED_AGENT = Path(__file__).resolve().parents[1] / "results" / "agents" / "ppo-tiny-seed0"


def _copy_agent(tmp_path: Path) -> Path:
    folder = tmp_path / "agent"
    folder.mkdir()
    for f in SHIPPED_AGENT.iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name)
    return folder


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


AGENT_DAMAGE = {
    "agent.json holds a string": (lambda a: (a / "agent.json").write_text('"just a string"'), "expected a JSON object"),
    "model_file is a number": (lambda a: _edit_json(a / "agent.json", lambda m: m.update(model_file=7)), "'model_file'"),
    "model_file leaves the folder": (lambda a: _edit_json(a / "agent.json", lambda m: m.update(
        model_file="../../policy.safetensors")), "inside the agent folder"),
    "model_file is absolute": (lambda a: _edit_json(a / "agent.json", lambda m: m.update(
        model_file=str(SHIPPED_AGENT / "policy.safetensors"))), "inside the agent folder"),
    "observation is a number": (lambda a: _edit_json(a / "agent.json", lambda m: m.update(observation=14)),
                                "'observation' must be a list"),
    "learner_hparams is null": (lambda a: _edit_json(a / "agent.json", lambda m: m.update(learner_hparams=None)),
                                "'learner_hparams' must be an object"),
    "action_map is a list": (lambda a: _edit_json(a / "agent.json", lambda m: m.update(action_map=[1])),
                             "'action_map' must be an object"),
    "statistics too short": (lambda a: _edit_json(a / "obs_normalization.json", lambda s: s.update(
        mean=s["mean"][:3], var=s["var"][:3])), "obs_normalization.json: mean has 3"),
    "statistics hold NaN": (lambda a: _edit_json(a / "obs_normalization.json", lambda s: s["mean"].__setitem__(
        0, float("nan"))), "not finite"),
    "env_config nested 10,000 deep": (lambda a: (a / "env_config.yaml").write_text("a: " + "[" * 10_000 + "]" * 10_000),
                                      "nested more than"),
}


@pytest.mark.parametrize("damage", sorted(AGENT_DAMAGE))
def test_a_damaged_agent_folder_is_refused_naming_the_file_and_field(capsys, tmp_path, damage):
    folder = _copy_agent(tmp_path)
    spoil, says = AGENT_DAMAGE[damage]
    spoil(folder)
    before = sorted(p.name for p in folder.iterdir())
    line = _run(capsys, "agents.evaluate", ["--agent", str(folder)])
    assert says in line and str(folder) in line, line
    assert sorted(p.name for p in folder.iterdir()) == before


QTABLE_AGENT = SHIPPED_AGENT.parent / "qlearning-smollm2_cpu"
QTABLE_DAMAGE = {
    "nested deep": (lambda q: "[" * 10_000 + "]" * 10_000, "nested too deeply"),
    "a NaN value": (lambda q: json.dumps({**q, "q": [[q["q"][0][0], [float("nan")] * q["n_actions"]]]}), "finite values"),
    "a short row": (lambda q: json.dumps({**q, "q": [[q["q"][0][0], [0.0]]]}), "finite values"),
    "another menu": (lambda q: json.dumps({**q, "n_actions": 999}), "n_actions is 999"),
    "no config": (lambda q: json.dumps({k: v for k, v in q.items() if k != "config"}), "not a Q-table"),
}


@pytest.mark.parametrize("damage", sorted(QTABLE_DAMAGE))
def test_a_damaged_q_table_is_refused_naming_the_file(capsys, tmp_path, damage):
    folder = tmp_path / "agent"
    shutil.copytree(QTABLE_AGENT, folder, ignore=shutil.ignore_patterns("checkpoint"))
    make, says = QTABLE_DAMAGE[damage]
    path = folder / json.loads((folder / "agent.json").read_text())["model_file"]
    path.write_text(make(json.loads(path.read_text())))
    line = _run(capsys, "agents.evaluate", ["--agent", str(folder), "--no-mlflow"])
    assert says in line and str(path) in line


def test_policy_weights_that_are_not_finite_are_refused(capsys, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy_agent(tmp_path)
    weights = load_file(str(folder / "policy.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name].clone().fill_(float("nan"))
    save_file(weights, str(folder / "policy.safetensors"))
    line = _run(capsys, "agents.evaluate", ["--agent", str(folder), "--no-mlflow"])
    assert "not finite" in line and name in line


def test_the_shipped_agent_still_loads():
    from agents.learners.agent_folder import Controller

    c = Controller(SHIPPED_AGENT)
    assert c.algo == "ppo" and c._normalizer is not None


@pytest.mark.parametrize("name", ["agent.json", "env_config.yaml"])
def test_a_symlinked_agent_json_or_env_config_is_not_followed(capsys, tmp_path, name):
    folder = _copy_agent(tmp_path)
    (folder / name).unlink()
    (folder / name).symlink_to(SHIPPED_AGENT / name)
    line = _run(capsys, "agents.evaluate", ["--agent", str(folder), "--no-mlflow"])
    assert "is a symlink" in line and name in line


def test_a_deeply_nested_jsonl_record_is_named_by_line(tmp_path):
    from trainers.data import DataFileError, read_jsonl

    (tmp_path / "deep.jsonl").write_text('{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataFileError, match=r"deep.jsonl:2: nested too deeply"):
        read_jsonl(tmp_path / "deep.jsonl")


def test_a_symlinked_model_file_is_not_followed(capsys, tmp_path):
    folder = _copy_agent(tmp_path)
    (folder / "policy.safetensors").unlink()
    (folder / "policy.safetensors").symlink_to(SHIPPED_AGENT / "policy.safetensors")
    assert "symlink" in _run(capsys, "agents.evaluate", ["--agent", str(folder)])


def _bomb(levels: int = 9) -> str:
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels):
        text += f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n"
    return text


@pytest.mark.parametrize("text,says", [
    ("name: x\n" + "a: " + "[" * 10_000 + "]" * 10_000, "nested more than 64 levels"),
    (_bomb(), "expands to more than"),
])
def test_hostile_yaml_is_refused_in_well_under_a_second(capsys, tmp_path, text, says):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    start = time.perf_counter()
    line = _run(capsys, "agents.train_agent", ["--config", str(path), "--out", str(tmp_path / "out")])
    assert says in line and "hostile.yaml" in line
    assert time.perf_counter() - start < 5.0
    assert not (tmp_path / "out").exists()


def test_yaml_anchors_of_ordinary_size_still_load(tmp_path):
    from trainers.config import read_structured_file

    path = tmp_path / "anchors.yaml"
    path.write_text("base: &b {lr: 0.001, decay: linear}\none: *b\ntwo: *b\n")
    assert read_structured_file(path) == {"base": {"lr": 0.001, "decay": "linear"}, "one": {"lr": 0.001, "decay": "linear"},
                                          "two": {"lr": 0.001, "decay": "linear"}}


def test_a_yaml_true_is_not_read_as_the_number_one(fast_cfg_dict):
    from trainers.config import ConfigError, parse_config

    d = dict(fast_cfg_dict, episode=dict(fast_cfg_dict["episode"], total_steps=True))
    with pytest.raises(ConfigError, match=r"episode\.total_steps: .*not a boolean"):
        parse_config(d)
    d = dict(fast_cfg_dict, session=dict(fast_cfg_dict["session"], frozen_prefix=True, trainable_last_layers=1))
    assert parse_config(d).session.frozen_prefix is True  # a boolean field still takes booleans


def test_a_start_range_wholly_outside_the_bounds_is_refused(fast_cfg_dict):
    from trainers.config import ConfigError, parse_config

    train = [dict(fast_cfg_dict["train"][0], init_lr=[0.5, 0.9])] + list(fast_cfg_dict["train"][1:])
    with pytest.raises(ConfigError, match=r"train\[0\] \(.*\)\.init_lr \[0\.5, 0\.9\] lies wholly outside bounds\.lr"):
        parse_config(dict(fast_cfg_dict, train=train))


def test_a_window_longer_than_the_model_reads_is_a_config_error(fast_cfg_dict):
    from trainers.config import ConfigError, parse_config
    from trainers.models import load_model_and_tokenizer
    from trainers.session import check_seq_len

    model, _ = load_model_and_tokenizer("tiny-gpt")
    limit = model.config.max_position_embeddings if hasattr(model.config, "max_position_embeddings") else model.config.n_positions
    cfg = parse_config(dict(fast_cfg_dict, session=dict(fast_cfg_dict["session"], seq_len=limit + 1)))
    with pytest.raises(ConfigError, match=rf"session\.seq_len: {limit + 1} is longer than .* \({limit} positions"):
        check_seq_len(cfg.session, model.config)
    check_seq_len(parse_config(dict(fast_cfg_dict, session=dict(fast_cfg_dict["session"], seq_len=limit))).session,
                  model.config)


def test_a_window_the_model_cannot_read_stops_the_commands_before_any_folder(capsys, tmp_path, fast_cfg_dict):
    import yaml

    from trainers.models import max_positions

    limit = max_positions("tiny-gpt")
    long = dict(fast_cfg_dict, session=dict(fast_cfg_dict["session"], seq_len=limit + 1))
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(long))
    out, db = tmp_path / "agents", tmp_path / "m.db"
    line = _run(capsys, "agents.train_agent", ["--config", str(tmp_path / "long.yaml"), "--out", str(out),
                                               "--tracking-uri", f"sqlite:///{db}", "--no-heldout"])
    assert f"session.seq_len: {limit + 1} is longer than 'tiny-gpt' can read ({limit} positions" in line
    assert not out.exists() and not db.exists()
    line = _run(capsys, "agents.tune", ["--agent", str(SHIPPED_AGENT), "--config", str(tmp_path / "long.yaml"),
                                        "--out", str(tmp_path / "tuned")])
    assert "session.seq_len" in line and not (tmp_path / "tuned").exists()


def test_a_lone_surrogate_in_jsonl_is_named_by_line(tmp_path):
    from trainers.config import ConfigError
    from trainers.data import read_jsonl

    path = tmp_path / "odd.jsonl"
    path.write_text("".join('{"text": "a fine line of text"}\n' for _ in range(12)) + '{"text": "bad \\ud800 here"}\n')
    with pytest.raises(ConfigError, match=r"odd\.jsonl:13: field 'text' is not valid text \(a lone surrogate"):
        read_jsonl(path)


def test_an_unreachable_tracking_server_is_named_within_seconds(capsys, tmp_path, fast_cfg_dict):
    import socket

    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    line = _run(capsys, "agents.train_agent", ["--tracking-uri", f"http://127.0.0.1:{port}", "--out",
                                               str(tmp_path / "out"), "--decisions", "1"])
    assert f"tracking server http://127.0.0.1:{port} not reachable" in line and "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in line
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "out").exists()


# A folder no one can write, root included: chmod says nothing to root, and a read-only mount needs
# privileges a test lacks; Linux's /proc takes no new files.
UNWRITABLE = Path("/proc")
needs_unwritable = pytest.mark.skipif(not UNWRITABLE.is_dir(), reason="needs Linux's /proc")


@needs_unwritable
def test_a_sqlite_store_in_an_unwritable_folder_is_refused_before_work(capsys, tmp_path):
    line = _run(capsys, "agents.train_agent", ["--tracking-uri", f"sqlite:///{UNWRITABLE}/mlflow.db", "--out",
                                               str(tmp_path / "out"), "--decisions", "1"])
    assert f"{UNWRITABLE} is not writable" in line and "mlflow.db" in line, line
    assert not (tmp_path / "out").exists()


def test_artifacts_follow_a_sqlite_store(tmp_path):
    from agents.reporting.mlflow_tracking import artifact_root, setup

    import mlflow

    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    (tmp_path / "elsewhere").mkdir()
    exp = mlflow.get_experiment(setup(uri, "artifacts-probe"))
    assert exp.artifact_location == (tmp_path / "elsewhere" / "mlartifacts" / "artifacts-probe").as_uri()
    assert artifact_root("http://127.0.0.1:5000") is None


@pytest.mark.parametrize("argv,says", [
    (["--port", "70000"], "--port: must be a port number from 1 to 65535"),
    (["--host", "no-such-host.invalid"], "--host no-such-host.invalid: not an address"),
    (["--merged", "{tmp}/missing/merged.db"], "is not a folder"),
    pytest.param(["--merged", f"{UNWRITABLE}/merged.db"], "is not writable", marks=needs_unwritable),
])
def test_dashboard_names_the_argument_at_fault(capsys, tmp_path, argv, says):
    import optuna

    (tmp_path / "studies").mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its handler would outlive this test's captured stderr
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'studies' / 's.db'}", study_name="s")
    line = _run(capsys, "agents.dashboard", [str(tmp_path)] + [a.format(tmp=tmp_path) for a in argv])
    assert says in line, line


# ------------------------------------------------------------------ clashing runs, stopped runs
def _copy_agent_with_checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "agents" / "ppo-tiny-seed0"
    shutil.copytree(SHIPPED_AGENT, folder)
    return folder


RESUME_DAMAGE = {
    "the zip is missing": (lambda c: next(c.glob("model-*.zip")).unlink(), "is missing; the checkpoint is incomplete"),
    "the zip is truncated": (lambda c: next(c.glob("model-*.zip")).write_bytes(next(c.glob("model-*.zip")).read_bytes()[:5000]),
                             "not a whole zip"),
    "files is empty": (lambda c: _edit_json(c / "state.json", lambda s: s.update(files={})), "files.model is missing"),
    "a file outside the checkpoint": (lambda c: _edit_json(c / "state.json", lambda s: s["files"].update(
        model="../policy.safetensors")), "inside the agent folder"),
}


@pytest.mark.parametrize("damage", sorted(RESUME_DAMAGE))
def test_a_damaged_checkpoint_is_refused_on_resume(capsys, tmp_path, damage):
    folder = _copy_agent_with_checkpoint(tmp_path)
    spoil, says = RESUME_DAMAGE[damage]
    spoil(folder / "checkpoint")
    line = _run(capsys, "agents.train_agent", ["--config", "tiny", "--out", str(folder.parent), "--name", folder.name,
                                               "--resume", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert says in line and "--resume" in line, line


def test_a_folder_another_run_is_writing_is_refused(capsys, tmp_path):
    from trainers.atomic_files import exclusive_lock

    folder = tmp_path / "agents" / "qlearning-tiny-seed0"
    folder.mkdir(parents=True)
    with exclusive_lock(folder, "agent folder"):
        line = _run(capsys, "agents.train_agent", ["--algo", "qlearning", "--out", str(folder.parent), "--decisions",
                                                   "1", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
        assert "another training run (pid" in line and str(folder) in line
        with pytest.raises(Exception, match="another run"):
            with exclusive_lock(folder, "agent folder"):
                pass
    with exclusive_lock(folder, "agent folder"):  # released with its holder
        pass


def test_a_run_stopped_before_its_first_checkpoint_does_not_block_the_next(capsys, tmp_path, files):
    """What a kill before the first checkpoint leaves: the run's marker and early files, no
    checkpoint. --resume says why there is nothing to resume; a new run clears it and trains."""
    from agents import train_agent
    from agents.learners.agent_folder import RUN_MARKER

    out = tmp_path / "agents"
    argv = ["--algo", "qlearning", "--config", str(files / "fast.yaml"), "--decisions", "2", "--out", str(out),
            "--name", "a", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--no-heldout", "--validate-every", "0"]
    (out / "a").mkdir(parents=True)
    (out / "a" / RUN_MARKER).write_text("python -m agents.train_agent ...\n")
    (out / "a" / "env_config.yaml").write_text("name: half\n")
    line = _run(capsys, "agents.train_agent", argv + ["--resume"])
    assert "stopped before its first checkpoint" in line and "rerun without --resume" in line
    train_agent.main(argv)
    assert (out / "a" / "agent.json").is_file() and not (out / "a" / RUN_MARKER).exists()
    assert "stopped before its first checkpoint" in capsys.readouterr().err


def test_a_killed_replacement_leaves_the_earlier_agent_to_come_back(tmp_path):
    """A run replacing a finished agent moves it aside; killed before its first checkpoint, it leaves
    the earlier agent aside and its own marker in the folder. The next run clears the marker's folder,
    and the earlier agent comes back if that run too learns nothing, or goes when it finishes."""
    from agents.learners.agent_folder import AGENT_JSON, RUN_MARKER, replacing

    folder, aside = tmp_path / "a", tmp_path / ".a.previous"
    aside.mkdir()
    (aside / AGENT_JSON).write_text('{"the": "earlier agent"}')
    folder.mkdir()
    (folder / RUN_MARKER).write_text("python -m agents.train_agent ...\n")  # what the killed run left
    with pytest.raises(KeyboardInterrupt):
        with replacing(folder, resume=False):
            (folder).mkdir(exist_ok=True)
            (folder / RUN_MARKER).write_text("the next run\n")
            raise KeyboardInterrupt
    assert (folder / AGENT_JSON).read_text() == '{"the": "earlier agent"}' and not aside.exists()
    with replacing(folder, resume=False):  # a run that finishes replaces it
        folder.mkdir(exist_ok=True)
        (folder / AGENT_JSON).write_text('{"the": "new agent"}')
    assert (folder / AGENT_JSON).read_text() == '{"the": "new agent"}' and not aside.exists()


def test_ctrl_c_before_the_first_decision_leaves_nothing_to_refuse_the_next_run(tmp_path, fast_cfg_dict, monkeypatch):
    """Stopped before it learned anything, a run writes no checkpoint: the next run is not told to
    --resume a run that has nothing to resume, and clears the folder."""
    import mlflow

    from agents.learners import training_run
    from agents.learners.agent_folder import RUN_MARKER, STATE_FILE, check_agent_folder
    from trainers.config import parse_config

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    from agents.learners.qlearning import QLearningAgent

    monkeypatch.setattr(QLearningAgent, "learn", interrupted)
    folder = tmp_path / "a"
    cfg = parse_config({**fast_cfg_dict, "action": {"mode": "discrete"}})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")  # (conftest gives MLflow's globals back after the test)
    experiment = mlflow.MlflowClient().create_experiment("ctrl-c")  # another test's active experiment id: not here
    with mlflow.start_run(experiment_id=experiment), pytest.raises(KeyboardInterrupt):
        training_run.run_training(cfg, training_run.TrainingOptions("qlearning", 4), folder)
    assert (folder / RUN_MARKER).is_file() and not (folder / "checkpoint" / STATE_FILE).exists()
    check_agent_folder(folder, resume=False, algo="qlearning")  # not refused


@pytest.mark.xdist_group("timed_processes")  # second processes raced on time: not beside each other
def test_ctrl_c_says_where_the_run_was_checkpointed(tmp_path, files):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "agents"
    cmd = [sys.executable, "-m", "agents.train_agent", "--algo", "qlearning", "--config", str(files / "fast.yaml"),
           "--decisions", "400", "--checkpoint-every", "1", "--out", str(out), "--name", "a", "--no-heldout",
           "--validate-every", "0", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            cwd=Path(__file__).resolve().parents[1], env=dict(os.environ, PYTHONUNBUFFERED="1"))
    state = out / "a" / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while not state.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert state.is_file(), "no checkpoint within the time allowed"
    # a second real process on the same folder, while the first trains: refused, naming the first
    argv = cmd[3:]
    second = subprocess.run([sys.executable, "-m", "agents.train_agent", *argv], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert second.returncode == 2 and f"another training run (pid {proc.pid}" in second.stderr, second.stderr[-2000:]
    assert proc.poll() is None  # the first goes on
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and len(lines) == 1, err[-2000:]
    n = json.loads(state.read_text())["num_timesteps"]
    assert f"interrupted; checkpointed at decision {n} in {out / 'a'}" in lines[0] and "--resume" in lines[0]


def test_learner_progress_continues_from_the_checkpoint_on_resume(tmp_path):
    import csv

    from agents.learners.training_run import continued_csv

    path = tmp_path / "learner_progress.csv"
    shutil.copy(SHIPPED_AGENT / "learner_progress.csv", path)
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 3
    upto = int(rows[1]["time/total_timesteps"])
    out = continued_csv(path, upto)  # resumed from a checkpoint at the second row's decisions
    out.write({k: rows[2][k] for k in rows[2]}, {k: () for k in rows[2]}, 0)
    out.close()
    with path.open() as fh:
        again = list(csv.DictReader(fh))
    assert [r["time/total_timesteps"] for r in again] == [r["time/total_timesteps"] for r in rows[:3]]
    assert again[0] == rows[0]
    fresh = continued_csv(path, None)  # a new run starts the file empty
    fresh.close()
    assert path.read_text() == ""


def test_a_written_file_and_its_folder_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    """A crash after the rename cannot leave an empty file: the data is synced before the rename and
    the folder (which holds the rename) after it."""
    import os

    from trainers.atomic_files import write_json_atomic

    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}"))),
                                                   real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("rename", str(b))), real_replace(a, b))[1])
    write_json_atomic(tmp_path / "x.json", {"a": 1})
    kinds = [k for k, _ in calls]
    assert kinds.index("fsync") < kinds.index("rename") < len(kinds) - 1 - kinds[::-1].index("fsync")
    assert calls[-1] == ("fsync", str(tmp_path))  # the folder, after the rename
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_an_output_on_a_disk_too_full_for_the_model_is_refused_before_work(capsys, tmp_path, monkeypatch):
    import os

    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: type("Full", (), {"f_bavail": 10, "f_frsize": real(p).f_frsize})())
    line = _tune(capsys, tmp_path, "--out", str(tmp_path / "tuned"))  # saves the model: its size is needed
    assert "MiB free on its disk" in line and "needed" in line and not (tmp_path / "tuned").exists()


@needs_unwritable
def test_train_agent_refuses_an_output_it_cannot_write_before_training(capsys, tmp_path):
    line = _run(capsys, "agents.train_agent", ["--out", str(UNWRITABLE / "agents"), "--no-heldout",
                                               "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert "--out" in line and "is not writable" in line


def test_files_keep_the_users_umask(tmp_path):
    import os

    from trainers.atomic_files import write_text_atomic

    old = os.umask(0o022)
    try:
        mode = write_text_atomic(tmp_path / "f.txt", "x").stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert mode == 0o644


# ------------------------------------------------------------------ agents.tune's output folder
def _tune(capsys, tmp_path, *extra: str) -> str:
    return _run(capsys, "agents.tune", ["--agent", str(SHIPPED_AGENT), "--instance", "bbc-tech-lm", *extra])


def test_tune_refuses_an_output_it_cannot_write_before_training(capsys, tmp_path):
    (tmp_path / "a-file").write_text("keep")
    assert "exists and is not a folder" in _tune(capsys, tmp_path, "--out", str(tmp_path / "a-file"))
    assert (tmp_path / "a-file").read_text() == "keep"
    if UNWRITABLE.is_dir():
        assert "is not writable" in _tune(capsys, tmp_path, "--out", str(UNWRITABLE / "tuned"))


def test_tune_refuses_a_folder_another_run_writes(capsys, tmp_path):
    from trainers.atomic_files import exclusive_lock

    with exclusive_lock(tmp_path / "tuned", "--out"):
        assert "another run (pid" in _tune(capsys, tmp_path, "--out", str(tmp_path / "tuned"), "--no-save-model")
    assert not (tmp_path / "tuned").exists()


@pytest.mark.xdist_group("timed_processes")  # real subprocesses with deadlines: not beside each other
def test_two_tune_processes_on_one_output_cannot_both_write(tmp_path):
    """A real second process is refused while the first holds the lock on the same --out; the
    first's results are whole when it ends. The first is paused (SIGSTOP) once its lock note names
    it, so it is still mid-run when the second is tried however fast or slow this machine is. The
    note is read without taking the lock, so the polling never competes with the first for it."""
    import os
    import signal
    import subprocess
    import sys

    from trainers.atomic_files import lock_file_for

    out = tmp_path / "tuned"
    cmd = [sys.executable, "-m", "agents.tune", "--agent", str(SHIPPED_AGENT), "--instance", "bbc-tech-lm",
           "--steps", "16", "--out", str(out), "--no-save-model"]
    root = Path(__file__).resolve().parents[1]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=root,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    note, lock = f"pid {first.pid}", lock_file_for(out)
    deadline = time.time() + 240
    try:
        while first.poll() is None and time.time() < deadline and not (
                lock.is_file() and lock.read_text().startswith(note)):
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # nothing, if it has ended
        assert first.poll() is None and lock.read_text().startswith(note), "the first tune never took its lock"
        second = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=120)
        assert second.returncode == 2 and f"another run ({note}" in second.stderr, second.stderr[-2000:]
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:  # an assertion failed: no paused process is left behind
            first.kill()
            first.communicate()
    assert first.returncode == 0, err[-2000:]
    assert json.loads((out / "metrics.json").read_text())["eval_curve"][-1][0] == 16


def test_a_save_that_fails_leaves_nothing_half_written(capsys, tmp_path, monkeypatch):
    """A full disk while the model is written (injected: the session's save raises as safetensors
    does): one line, no partial folder, and the earlier run's files in --out untouched."""
    from trainers.session import FineTuneSession

    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "metrics.json").write_text('{"earlier": true}')

    def full_disk(self, folder: str) -> None:
        Path(folder).mkdir(parents=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FineTuneSession, "save_model", full_disk)
    line = _tune(capsys, tmp_path, "--out", str(tmp_path / "tuned"), "--steps", "4")
    assert "writing the run's files failed" in line and "No space left on device" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tuned"]  # no partial folder, no lock left
    assert sorted(p.name for p in (tmp_path / "tuned").iterdir()) == ["metrics.json"]
    assert json.loads((tmp_path / "tuned" / "metrics.json").read_text()) == {"earlier": True}


def _replay_buffer(rows: int, n_envs: int = 1, size: int = 16, obs_size: int = 4):
    """A DQN replay buffer of ``size`` transitions whose step i has observation i, action i % 3,
    reward 0.1 i on every env (env e's observation is i + 100 e)."""
    from gymnasium import spaces

    from agents.learners.dropped_episodes import DropAwareReplayBuffer

    buffer = DropAwareReplayBuffer(size, spaces.Box(-1e3, 1e3, (obs_size,), dtype="float32"), spaces.Discrete(3),
                                   n_envs=n_envs)
    for i in range(rows):
        obs = np.array([[i + 100 * e] * obs_size for e in range(n_envs)], "float32")
        buffer.add(obs, obs + 1, np.full((n_envs, 1), i % 3), np.full(n_envs, 0.1 * i), np.zeros(n_envs, bool),
                   [{}] * n_envs)
    return buffer


def _first_obs(buffer) -> list[float]:
    return [float(x) for x in buffer.observations[buffer.valid][:, 0]]


def test_a_replay_buffer_is_laid_out_again_oldest_first_and_a_wrong_one_is_refused(tmp_path):
    """What a resumed DQN samples from: the transitions that may be sampled, oldest first, in a buffer
    of another --n-envs or size (the newest when they do not fit); rows a dropped episode left out stay
    out. A file for another observation size, one with actions outside the space, or not an .npz,
    is refused by name."""
    from agents.learners.sb3_setup import load_replay_buffer, save_replay_buffer
    from trainers.config import ConfigError

    two = _replay_buffer(5, n_envs=2)
    two.drop_episode(1)  # env 1's episode in flight: its 5 rows are never sampled
    save_replay_buffer(tmp_path / "two.npz", two)
    one = _replay_buffer(0)
    assert load_replay_buffer(tmp_path / "two.npz", one) == 5
    assert _first_obs(one) == [0, 1, 2, 3, 4] and (one.pos, one.full) == (5, False)
    assert one.rewards[4, 0] == pytest.approx(0.4) and list(one.actions[:5, 0, 0]) == [0, 1, 2, 0, 1]

    wrapped = _replay_buffer(6, size=4)  # full: rows hold steps 4, 5, 2, 3 and it writes next at row 2
    assert (wrapped.pos, wrapped.full) == (2, True)
    save_replay_buffer(tmp_path / "wrapped.npz", wrapped)
    bigger, smaller = _replay_buffer(0), _replay_buffer(0, size=2)
    load_replay_buffer(tmp_path / "wrapped.npz", bigger)
    load_replay_buffer(tmp_path / "wrapped.npz", smaller)
    assert _first_obs(bigger) == [2, 3, 4, 5] and (bigger.pos, bigger.full) == (4, False)
    assert _first_obs(smaller) == [4, 5] and (smaller.pos, smaller.full) == (0, True)
    spread = _replay_buffer(0, n_envs=2)
    load_replay_buffer(tmp_path / "wrapped.npz", spread)  # two envs: steps 2, 3 in row 0, 4, 5 in row 1
    assert _first_obs(spread) == [2, 3, 4, 5] and (spread.pos, spread.full) == (2, False)

    with pytest.raises(ConfigError, match=r"--resume: .*two\.npz: .*observations is float32 of shape \(5, 2, 4\)"):
        load_replay_buffer(tmp_path / "two.npz", _replay_buffer(0, obs_size=6))
    bad = _replay_buffer(3)
    bad.actions[1] = 7
    save_replay_buffer(tmp_path / "bad.npz", bad)
    with pytest.raises(ConfigError, match=r"bad\.npz: .*actions holds values outside the action space"):
        load_replay_buffer(tmp_path / "bad.npz", _replay_buffer(0))
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"c\.npz: not a replay buffer this learner can continue from"):
        load_replay_buffer(tmp_path / "c.npz", _replay_buffer(0))
