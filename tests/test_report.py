"""results/REPORT.md and the README's generated blocks are written from the committed summaries by
python -m agents.report: the committed files must be what that command writes now."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agents import report
from agents.reporting.project_report import main_job, markers, with_blocks
from trainers.config import REPO_ROOT


def test_committed_report_and_readme_blocks_are_up_to_date():
    # --check writes nothing and exits 1 naming each stale file
    assert report.main(["--check"]) is True


def test_a_changed_summary_makes_the_committed_files_stale(tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(REPO_ROOT / "results", results, ignore=shutil.ignore_patterns("per_run", "checkpoint", "*.png",
                                                                                    "heldout_runs", "*.db"))
    readme = tmp_path / "README.md"
    readme.write_text((REPO_ROOT / "README.md").read_text())
    report.main(["--results", str(results), "--readme", str(readme), "--check"])  # a faithful copy is current
    head = results / "agents" / "ppo-smollm2_cpu" / "heldout.json"
    data = json.loads(head.read_text())
    data["summary"]["lr_contraction"] = 0.123456
    data["summary"]["steering"]["lr_contraction"] = 0.123456
    head.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as stop:
        report.main(["--results", str(results), "--readme", str(readme), "--check"])
    assert stop.value.code == 1
    assert "out of date" in capsys.readouterr().err
    report.main(["--results", str(results), "--readme", str(readme)])
    assert "0.12" in (results / "REPORT.md").read_text()
    report.main(["--results", str(results), "--readme", str(readme), "--check"])  # and now current again


def test_with_blocks_names_a_missing_block():
    with pytest.raises(ValueError, match="'main-job'"):
        begin, end = markers("headline")
        with_blocks(f"intro\n{begin}\nold\n{end}\n", Path(REPO_ROOT / "results"))


def test_main_job_line_says_plainly_when_the_controller_does_not_steer(tmp_path):
    assert "not measured yet" in main_job(tmp_path)
    job = {"command": "bash run.sh", "wall_seconds": 600, "setup_seconds": 120, "measured_at": "now",
           "lr_contraction": 1.2, "policy_minus_default_recipe": 0.03}
    (tmp_path / "main_job.json").write_text(json.dumps(job))
    assert "plumbing run" in main_job(tmp_path)
    job["lr_contraction"] = 0.5
    (tmp_path / "main_job.json").write_text(json.dumps(job))
    line = main_job(tmp_path)
    assert "steers" in line and "plumbing" not in line and "10.0 min" in line
