"""`mm doctor`: one line per check, exit 0 when the main job can run, exit 2 naming what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmbench_cli import __version__
from mmbench_cli.cli import app

runner = CliRunner()


def test_doctor_reports_every_check_and_passes_here() -> None:
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = {check["name"] for check in report["checks"]}
    assert {"java", "torch", "cache dir", "extra: ray", "extra: slurm", "extra: tracking", "extra: lmms"} <= names
    assert report["main_job_can_run"] is True
    assert all(check["ok"] for check in report["checks"] if check["required"])


def test_doctor_names_an_unwritable_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MMBENCH_CACHE_DIR", str(blocker / "cache"))
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 2
    # every command checks $MMBENCH_CACHE_DIR first (rundir.check_environment); doctor names it the same way
    assert "MMBENCH_CACHE_DIR" in result.stderr and "Traceback" not in result.output
    assert result.stderr.count("error:") == 1


def test_doctor_names_a_missing_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 2
    java = next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "java")
    assert not java["ok"] and "default-jre" in java["detail"]


def test_version_names_the_package() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and f"mm (mmbench) {__version__}" in result.stdout
