"""Every command, given bad input as a new user might type it: one line starting `error:` that names
the file, field or value, exit status 2, no traceback, and nothing deleted. (The same checks run as
subprocesses in ../shared/checks/bad-inputs.sh.)"""
import importlib
import json

import pytest
import yaml

from agents import train_agent

# pytest-xdist (bash test.sh): this file's module fixtures are built once, in one worker
pytestmark = pytest.mark.xdist_group("test_commands")


def _run(capsys, module: str, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).main(argv)
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert info.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, fast_cfg_dict):
    t = tmp_path_factory.mktemp("bad")
    (t / "victim").mkdir()
    (t / "victim" / "important.txt").write_text("keep")
    (t / "out" / "not-an-agent").mkdir(parents=True)
    (t / "out" / "not-an-agent" / "notes.txt").write_text("keep")
    (t / "nonutf8.jsonl").write_bytes(b'{"text": "fine"}\n\xff\xfe{"text": "x"}\n')
    (t / "badjson.jsonl").write_text("".join('{"text": "fine line"}\n' for _ in range(20)) + '{"text": "broken\n')
    (t / "bad.yaml").write_text("name: x\ntrain: [{name: a, dataset: {kind: bbc_lm}}]\n")
    (t / "noheldout.yaml").write_text("name: x\ntrain: [{name: a, dataset: {kind: bbc_lm, topic: tech}}]\n")
    (t / "badreplay.json").write_text('{"not": "a schedule"}')
    (t / "notjson.json").write_text("{nope")
    d = dict(fast_cfg_dict, train=fast_cfg_dict["train"][:1], heldout=fast_cfg_dict["heldout"][:1])
    (t / "fast.yaml").write_text(yaml.safe_dump(d))
    name = d["train"][0]["name"]
    (t / "grid.json").write_text(json.dumps({"instances": {name: {"split": "train", "best_lr_refined": 1e-3}}}))
    (t / "heldout_grid.json").write_text(json.dumps({"instances": {name: {"split": "heldout", "best_lr_refined": 1e-3}}}))
    return t


@pytest.fixture(scope="module")
def agent(files):
    return train_agent.train(train_agent.parse_args(
        ["--algo", "qlearning", "--config", str(files / "fast.yaml"), "--decisions", "2", "--out",
         str(files / "agents"), "--tracking-uri", f"sqlite:///{files / 'mlflow.db'}", "--no-heldout",
         "--validate-every", "0"]))


def test_train_agent_refuses_names_that_leave_out_and_deletes_nothing(capsys, files):
    line = _run(capsys, "agents.train_agent", ["--out", str(files / "out"), "--name", "../victim", "--decisions", "1"])
    assert "../victim" in line and "plain folder name" in line
    assert (files / "victim" / "important.txt").read_text() == "keep"
    line = _run(capsys, "agents.train_agent", ["--config", str(files / "fast.yaml"), "--out", str(files / "out"),
                                               "--name", "not-an-agent", "--decisions", "1", "--no-heldout"])
    assert "not-an-agent" in line and "not an agent folder" in line
    assert (files / "out" / "not-an-agent" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("argv,names", [
    (["--n-envs", "0"], "--n-envs"),
    (["--decisions", "-5"], "--decisions"),
    (["--config", "{files}/fast.yaml", "--decisions", "0"], "--decisions 0"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--config", "{files}/bad.yaml"], "dataset"),
    (["--config", "{files}/missing.yaml"], "missing.yaml"),
    (["--config", "{files}/noheldout.yaml", "--decisions", "1"], "held-out"),
    (["--resume", "--name", "nothing-here"], "nothing to resume"),
    (["--config", "{files}/fast.yaml", "--algo", "dqn", "--imitate", "{files}/grid.json"], "--algo dqn"),
    (["--config", "{files}/fast.yaml", "--imitate", "{files}/notjson.json"], "notjson.json"),
    (["--config", "{files}/fast.yaml", "--imitate", "{files}/heldout_grid.json"], "not 'train'"),
])
def test_train_agent_bad_arguments(capsys, files, argv, names):
    argv = [a.format(files=files) for a in argv] + ["--out", str(files / "out")]
    assert names in _run(capsys, "agents.train_agent", argv)
    assert sorted(p.name for p in (files / "out").iterdir()) == ["not-an-agent"]  # nothing written


def test_train_agent_checks_what_it_would_touch_late(capsys, files, agent):
    line = _run(capsys, "agents.train_agent", ["--config", str(files / "fast.yaml"), "--out", str(files / "out"),
                                               "--tracking-uri", "nonsense-store", "--decisions", "1"])
    assert "nonsense-store" in line
    line = _run(capsys, "agents.train_agent", ["--config", str(files / "fast.yaml"), "--out", str(agent.parent),
                                               "--name", agent.name, "--algo", "ppo", "--resume"])
    assert "--algo qlearning, not ppo" in line
    evil = files / "evil.yaml"
    evil.write_text((files / "fast.yaml").read_text().replace("name: tiny", "name: ../evil", 1))
    line = _run(capsys, "agents.train_agent", ["--config", str(evil), "--out", str(files / "out"), "--decisions", "1"])
    assert "'qlearning-../evil-seed0'" in line or "../evil" in line
    assert sorted(p.name for p in (files / "out").iterdir()) == ["not-an-agent"]
    assert (agent / "agent.json").is_file()  # the agent it refused to resume is untouched


@pytest.mark.parametrize("module,argv,names", [
    ("agents.optuna_baseline", ["--config", "{files}/bad.yaml"], "bad.yaml"),
    ("agents.optuna_baseline", ["--config", "{files}/noheldout.yaml", "--trials", "1"], "--instance"),
    ("agents.optuna_baseline", ["--trials", "0"], "--trials"),
    ("agents.pbt_baseline", ["--config", "{files}/bad.yaml"], "bad.yaml"),
    ("agents.pbt_baseline", ["--population", "0"], "--population"),
    ("agents.compare", ["--agent", "{files}/nope"], "nope"),
    ("agents.compare", ["--agent", "{files}/nope", "--seeds", "0"], "--seeds"),
    ("agents.compare", ["--agent", "{files}/nope", "--budgets", "0"], "--budgets"),
    ("agents.evaluate", ["--agent", "{files}/nope"], "nope"),
    ("agents.tune", ["--replay", "{files}/nope.json"], "nope.json"),
    ("agents.tune", ["--replay", "{files}/badreplay.json"], "'instance'"),
    ("agents.tune", ["--replay", "{files}/notjson.json"], "not valid JSON"),
    ("agents.bench_parallel", ["--n-envs", "0"], "--n-envs"),
    ("trainers.bench_session", ["--config", "{files}/bad.yaml"], "bad.yaml"),
    ("envs.bench_env", ["--rounds", "0"], "--rounds"),
])
def test_other_commands_bad_arguments(capsys, files, module, argv, names):
    assert names in _run(capsys, module, [a.format(files=files) for a in argv])


@pytest.mark.parametrize("argv,names", [
    (["--data", "{files}/nonutf8.jsonl"], "nonutf8.jsonl:2: not UTF-8"),
    (["--data", "{files}/badjson.jsonl"], "badjson.jsonl:21: not valid JSON"),
    (["--data", "{files}/badjson.jsonl", "--model", "{files}"], "not a Hugging Face model folder"),
    (["--instance", "no-such-instance"], "no-such-instance"),
])
def test_tune_bad_data_and_model(capsys, files, agent, argv, names):
    argv = ["--agent", str(agent), "--no-save-model", "--out", str(files / "tuned")] + [
        a.format(files=files) for a in argv]
    assert names in _run(capsys, "agents.tune", argv)
    assert not (files / "tuned").exists()


def test_compare_with_an_agent_and_a_config_without_heldout_instances(capsys, files, agent, tmp_path):
    meta = json.loads((agent / "agent.json").read_text())
    cfg = yaml.safe_load((agent / "env_config.yaml").read_text())
    cfg["heldout"] = []
    bare = tmp_path / "bare-agent"
    bare.mkdir()
    for f in agent.iterdir():
        if f.is_file():
            (bare / f.name).write_bytes(f.read_bytes())
    (bare / "env_config.yaml").write_text(yaml.safe_dump(cfg))
    assert meta["algo"] == "qlearning"
    assert "held-out" in _run(capsys, "agents.compare", ["--agent", str(bare), "--out", str(tmp_path / "c")])
    assert "held-out" in _run(capsys, "agents.evaluate", ["--agent", str(bare)])
    assert not (tmp_path / "c").exists()


def test_a_replaced_agent_survives_a_run_that_fails(capsys, files, fast_cfg_dict, tmp_path):
    out = tmp_path / "agents"
    argv = ["--algo", "qlearning", "--config", str(files / "fast.yaml"), "--decisions", "2", "--out", str(out),
            "--name", "a", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--no-heldout", "--validate-every", "0"]
    train_agent.main(argv)
    (out / "a" / "marker.txt").write_text("the earlier agent")
    d = dict(fast_cfg_dict, train=[{"name": "mine", "dataset": {"kind": "jsonl", "path": str(files / "nonutf8.jsonl")}}],
             heldout=[])
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(d))
    line = _run(capsys, "agents.train_agent", [a if a != str(files / "fast.yaml") else str(broken) for a in argv])
    assert "nonutf8.jsonl:2: not UTF-8" in line
    assert (out / "a" / "marker.txt").read_text() == "the earlier agent"  # put back, not deleted
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    train_agent.main(argv)  # a run that succeeds replaces it
    assert not (out / "a" / "marker.txt").exists() and (out / "a" / "agent.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["a"]
