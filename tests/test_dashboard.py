"""agents.dashboard: a comparison's study files merged into one storage for optuna-dashboard."""
import optuna
import pytest

from agents import dashboard


def _study(path, name, values):
    s = optuna.create_study(study_name=name, storage=f"sqlite:///{path}")
    for v in values:
        s.enqueue_trial({"lr": v})
        s.optimize(lambda t: t.suggest_float("lr", 1e-5, 1.0, log=True) * 2, n_trials=1)


def test_merge_keeps_every_study_and_trial_and_leaves_the_files_alone(tmp_path):
    studies = tmp_path / "cmp" / "studies"
    studies.mkdir(parents=True)
    _study(studies / "inst-seed0-optuna_tpe.db", "hashed-name-a", [1e-3, 1e-2])
    _study(studies / "inst-seed0-random_search.db", "hashed-name-b", [1e-4])
    before = {p.name: p.read_bytes() for p in studies.iterdir()}
    files = dashboard.study_files(tmp_path / "cmp")
    names = dashboard.merge_studies(files, tmp_path / "merged.db")
    assert names == ["inst-seed0-optuna_tpe", "inst-seed0-random_search"]
    merged = f"sqlite:///{tmp_path / 'merged.db'}"
    a = optuna.load_study(study_name="inst-seed0-optuna_tpe", storage=merged)
    assert [t.value for t in a.trials] == pytest.approx([2e-3, 2e-2])
    assert len(optuna.load_study(study_name="inst-seed0-random_search", storage=merged).trials) == 1
    assert {p.name: p.read_bytes() for p in studies.iterdir()} == before


def test_bad_folders_get_one_error_line(tmp_path, capsys):
    for argv, names in (([str(tmp_path / "missing")], "missing"), ([str(tmp_path)], "no Optuna study files")):
        with pytest.raises(SystemExit) as info:
            dashboard.main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and names in err and err.count("\n") == 1
    (tmp_path / "junk.db").write_text("not sqlite")
    with pytest.raises(SystemExit):
        dashboard.main([str(tmp_path)])
    assert "junk.db" in capsys.readouterr().err
    # an SQLite file that is not Optuna's (an MLflow store, say) is refused and left byte-for-byte alone
    import sqlite3

    (tmp_path / "junk.db").unlink()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE runs (id INTEGER)")
    before = other.read_bytes()
    with pytest.raises(SystemExit):
        dashboard.main([str(tmp_path)])
    err = capsys.readouterr().err
    assert "other.db" in err and "not an Optuna study file" in err
    assert other.read_bytes() == before
