"""mm report on a real tiny grid made by `mm ablate` (pretrain + eval per cell), then the regression check."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from model_fixtures import MECHANICS
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.resources import resource_path

REPO = Path(__file__).resolve().parents[1]
TINY = [*MECHANICS,
    "train.steps=6", "train.batch_size=2", "train.warmup_steps=2", "train.checkpoint_every=2", "train.log_every=1",
    "data.seq_len=64", "data.num_train_images=32", "data.num_val_images=8", "data.num_test_images=16",
    "model.image_size=16", "model.num_image_tokens=4", "model.lm=pythia-toy-1m",
    "eval.tasks=[synthetic-vqa,synthetic-caption]", "eval.shots=[0,2]", "eval.num_samples=4", "eval.batch_size=4",
]
runner = CliRunner()


@pytest.mark.slow
def test_report_on_real_grid_and_regression_check(tmp_path: Path) -> None:
    grid = tmp_path / "runs" / "res"
    made = runner.invoke(app, ["ablate", *TINY, "--grid", "resolution=16,32", "--axes", str(resource_path("axes.yaml")),
                               "--out", str(grid), "--threads", "1"])
    assert made.exit_code == 0, made.output

    out, baseline = tmp_path / "report", tmp_path / "baseline.json"
    first = runner.invoke(app, ["report", str(grid), "-o", str(out), "--save-baseline", str(baseline), "--resamples", "200"])
    assert first.exit_code == 0, first.output

    # The report's MM1 table agrees with mm ablate's own summary.csv (two independent readers of the files).
    ours = pd.read_csv(out / "summary.csv", index_col="cell")
    theirs = pd.read_csv(grid / "summary.csv", index_col="cell")
    for cell in ("resolution=16", "resolution=32"):
        for shots in ("0", "2"):
            assert ours.at[cell, f"Caption {shots}-shot"] == pytest.approx(theirs.at[cell, f"caption_avg/{shots}shot"])
            assert ours.at[cell, f"VQA {shots}-shot"] == pytest.approx(theirs.at[cell, f"vqa_avg/{shots}shot"])
        assert ours.at[cell, "final loss"] == pytest.approx(theirs.at[cell, "final_loss"])
    page = (out / "index.html").read_text()
    plots = sorted(path.name for path in (out / "plots").iterdir())
    assert page.count("data:image/svg+xml;charset=utf-8,") == len(plots)  # every plot inlined
    assert "bars-resolution.svg" in plots and "loss.svg" in plots
    assert page.index('id="findings"') < page.index('id="summary"')  # the tested contrasts come first
    assert "resolution=32" in page and "pythia-toy-1m" in page  # per-run config in the metadata section

    saved = json.loads(baseline.read_text())
    key = "resolution=32/synthetic-caption/0shot"
    assert len(saved["metrics"]) == 8 and len(saved["metrics"][key]["scores"]) == 4

    same = runner.invoke(app, ["report", str(grid), "-o", str(out), "--baseline", str(baseline), "--no-plots"])
    assert same.exit_code == 0, same.output

    saved["metrics"][key]["value"] += 1.0  # a baseline with a higher number
    baseline.write_text(json.dumps(saved))
    worse = runner.invoke(app, ["report", str(grid), "-o", str(out), "--baseline", str(baseline), "--no-plots"])
    assert worse.exit_code == 1, worse.output
    assert f"regressed: {key}" in worse.output
