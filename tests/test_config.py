import pytest

from trainers.config import ConfigError, load_config, parse_config


def test_tiny_config_loads_with_train_and_heldout():
    cfg = load_config("tiny")
    assert cfg.session.model == "tiny-gpt"
    assert len(cfg.train) >= 3 and len(cfg.heldout) >= 2
    assert {i.name for i in cfg.train}.isdisjoint({i.name for i in cfg.heldout})


def _write(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


def test_bad_field_value_names_file_and_field(tmp_path):
    p = _write(tmp_path, "name: x\nepisode: {decision_interval: -3}\ntrain: [{name: a, dataset: {kind: arithmetic}}]\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "episode.decision_interval" in msg and "-3" in msg


def test_unknown_field_is_refused(tmp_path):
    p = _write(tmp_path, "name: x\nsesion: {}\ntrain: [{name: a, dataset: {kind: arithmetic}}]\n")
    with pytest.raises(ConfigError, match="sesion"):
        load_config(p)


def test_interval_longer_than_budget_is_refused():
    with pytest.raises(ConfigError, match="decision_interval"):
        parse_config({"name": "x", "episode": {"total_steps": 5, "decision_interval": 10},
                      "train": [{"name": "a", "dataset": {"kind": "arithmetic"}}]})


def test_range_and_dataset_requirements():
    with pytest.raises(ConfigError, match=r"train\.0\.init_lr"):
        parse_config({"name": "x", "train": [{"name": "a", "dataset": {"kind": "arithmetic"}, "init_lr": [1e-2, 1e-4]}]})
    with pytest.raises(ConfigError, match="needs 'topic'"):
        parse_config({"name": "x", "train": [{"name": "a", "dataset": {"kind": "bbc_lm"}}]})


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no config named"):
        load_config("does-not-exist")


def test_duplicate_instance_names_refused():
    inst = {"name": "a", "dataset": {"kind": "arithmetic"}}
    with pytest.raises(ConfigError, match="unique"):
        parse_config({"name": "x", "train": [inst], "heldout": [inst]})


def test_instances_can_come_from_a_shared_file_with_fields_dropped(tmp_path):
    (tmp_path / "instances").mkdir()
    (tmp_path / "instances" / "fam.yaml").write_text(
        "train: [{name: a, dataset: {kind: arithmetic}, trainable_layers: 2}]\n"
        "heldout: [{name: b, dataset: {kind: bbc_lm, topic: tech}}]\n")
    p = tmp_path / "set.yaml"
    p.write_text("name: x\nsession: {trainable_last_layers: 1}\ninstances: {file: instances/fam.yaml}\n")
    cfg = load_config(p)
    assert [i.name for i in cfg.train] == ["a"] and cfg.train[0].trainable_layers == 2 and cfg.heldout[0].name == "b"
    p.write_text("name: x\ninstances: {file: instances/fam.yaml, drop: [trainable_layers]}\n")
    assert load_config(p).train[0].trainable_layers is None
    for text, named in (("instances: {file: instances/nope.yaml}", "nope.yaml"),
                        ("instances: {file: instances/fam.yaml, drop: [colour]}", "colour"),
                        ("instances: instances/fam.yaml", "instances"),
                        ("instances: {file: instances/fam.yaml}\ntrain: []", "one place")):
        p.write_text("name: x\n" + text + "\n")
        with pytest.raises(ConfigError, match=named):
            load_config(p)
