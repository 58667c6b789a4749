"""A wheel install works anywhere: built from the source, installed outside the repository, run from an unrelated
directory, it carries its package data (default config, axis presets, text-task YAMLs) and runs the main job's plan,
a short pretrain and a text task."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from model_fixtures import MECHANICS

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ("mmbench_cli/resources/base.yaml", "mmbench_cli/resources/axes.yaml",
                "mmbench_cli/resources/evals/textcore.yaml", "mmbench_cli/resources/evals/mm_synthetic.py")
TINY = [*MECHANICS, "train.steps=2", "train.batch_size=2", "train.warmup_steps=1", "train.checkpoint_every=2",
        "train.log_spaced_checkpoints=false", "data.seq_len=64", "data.num_train_images=16", "data.num_val_images=4",
        "data.num_test_images=8", "model.image_size=16", "model.num_image_tokens=4", "model.lm=pythia-toy-1m",
        "eval.tasks=[synthetic-caption]", "eval.shots=[0]", "eval.num_samples=4"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the source (the checkout stays untouched), installed with ``--target``."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "mmbench_cli", source / "mmbench_cli", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (root / "dist").glob("mmbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(PACKAGE_DATA) <= names, sorted(set(PACKAGE_DATA) - names)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return root / "site"


def _mm(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mmbench_cli.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_wheel_runs_from_an_unrelated_directory(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _mm(installed, elsewhere, "--version")
    assert where.returncode == 0 and where.stdout.startswith("mm (mmbench) ") and "commit" not in where.stdout
    env = {**os.environ, "PYTHONPATH": str(installed)}
    imported = subprocess.run([sys.executable, "-c", "import mmbench_cli; print(mmbench_cli.__file__)"], cwd=elsewhere,
                              env=env, capture_output=True, text=True, check=True).stdout
    assert Path(imported).resolve().is_relative_to(installed.resolve())

    plan = _mm(installed, elsewhere, "ablate", "--grid", "resolution,tokens", "--dry-run", "--throughput", "1e9")
    assert plan.returncode == 0, plan.stderr
    assert "4 cells" in plan.stdout or "4 cell" in plan.stdout, plan.stdout

    run = elsewhere / "runs" / "tiny"
    trained = _mm(installed, elsewhere, "pretrain", *TINY, "--out", str(run))
    assert trained.returncode == 0, trained.stderr[-2000:]
    text = _mm(installed, elsewhere, "eval", str(run), "--tasks", "text:mm_synth_facts")
    assert text.returncode == 0, text.stderr[-2000:]
    assert "mm_synth_facts" in (run / "eval" / "step_2.json").read_text()
    listed = _mm(installed, elsewhere, "eval", "--list-tasks", "--json")  # the multimodal task YAMLs travel too
    assert listed.returncode == 0, listed.stderr[-2000:]
    types = {row["task"]: row["type"] for row in json.loads(listed.stdout)["tasks"]}
    assert types["synthetic-caption"] == "caption" and types["mmbench"] == "multiple_choice"
    assert types["pope-adversarial"] == "yes_no"
