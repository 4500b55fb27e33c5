"""Inputs that reach a user damaged (issue 25): an agent folder someone shared, a config from an
issue thread, a JSONL another tool exported. Each gets one ``error:`` line naming the file and the
field, exit status 2, no traceback, and is refused before anything deep (torch, the tokenizer,
PyYAML's recursive composer) sees it."""
import json
import shutil
import time
from pathlib import Path

import pytest

from tests.test_commands import _run

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


def test_the_shipped_agent_still_loads():
    from agents.learners.agent_folder import Controller

    c = Controller(SHIPPED_AGENT)
    assert c.algo == "ppo" and c._normalizer is not None


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
