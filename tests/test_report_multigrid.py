"""mm report over several ablation grids: one section per grid, per-grid CSVs, seed spread, a parent dir of grids."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_fixtures import write_grid, write_run
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.report import load

runner = CliRunner()
DESCRIPTION = 'Resolution <b>sweep</b> & "seeds"'
CONNECTORS = ("mlp", "avgpool")


def write_connector_grid(grid_dir: Path) -> Path:
    """A one-seed grid over a `connector` axis (an axis grid A does not have), as mm ablate lays it out."""
    cells = []
    for resolution, connector in zip((32, 64), CONNECTORS, strict=True):
        labels = {"connector": connector}
        write_run(grid_dir / f"connector={connector}", resolution, 0, eval_steps=(8,), samples=6)
        cells.append({"id": f"connector={connector}", "labels": labels, "values": labels, "config_hash": "abc"})
    axes = [{"name": "connector", "key": "model.connector", "labels": list(CONNECTORS), "values": list(CONNECTORS)}]
    grid = {"name": grid_dir.name, "base_config_hash": "base", "base_config": {}, "axes": axes, "zip": False, "cells": cells}
    (grid_dir / "grid.json").write_text(json.dumps(grid))
    return grid_dir


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/<study>/: grid A (resolution × 2 seeds, with a description), grid B (connector), and non-grid things."""
    root = tmp_path_factory.mktemp("runs") / "study"
    grid_a = write_grid(root / "gridA", eval_steps=(8,), samples=6)
    plan = json.loads((grid_a / "grid.json").read_text())
    (grid_a / "grid.json").write_text(json.dumps({**plan, "description": DESCRIPTION}))
    write_connector_grid(root / "gridB")
    write_run(root / "encoders" / "clip-vit", 32, 0, eval_steps=())  # encoder pretraining: a run dir, no grid.json
    (root / "notes.txt").write_text("not a grid\n")
    return root


def _report(args: list[str]) -> None:
    result = runner.invoke(app, ["report", *args, "--resamples", "200"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def listed(study_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of `mm report <study>/gridA <study>/gridB` (with plots)."""
    out = tmp_path_factory.mktemp("reports") / "listed"
    _report([str(study_dir / "gridA"), str(study_dir / "gridB"), "-o", str(out)])
    return out


def _final(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval" / "step_8.json").read_text())


def _section(page: str, grid: str) -> str:
    """The HTML of one grid's section (up to the next grid's section or the global sections)."""
    starts = [match.start() for match in re.finditer(r'<section id="[^"]+" class="grid">', page)]
    start = page.index(f'<section id="grid-{grid}" class="grid">')
    end = next((i for i in starts if i > start), page.index('<section id="checkpoints"'))
    return page[start:end]


def test_one_section_per_grid_with_stable_anchors(listed: Path) -> None:
    page = (listed / "index.html").read_text()
    assert page.index('id="grid-gridA"') < page.index('id="grid-gridB"')  # in the given order
    for anchor in ("grid-gridA-summary", "grid-gridA-effect-resolution", "grid-gridA-tasks",
                   "grid-gridB-summary", "grid-gridB-effect-connector", "grid-gridB-tasks",
                   "grid-gridA-bars-resolution", "grid-gridB-bars-connector", "grid-gridA-loss"):
        assert page.count(f'id="{anchor}"') == 1, anchor
        assert f'href="#{anchor}"' in page, anchor
    assert 'id="summary"' not in page and 'id="effect-resolution"' not in page  # no merged tables
    section_a, section_b = _section(page, "gridA"), _section(page, "gridB")
    assert len(section_a) > 10_000 and 'id="table-grid-gridA-tasks"' in section_a and "grid-gridB" not in section_a
    assert "Effect of resolution" in section_a and "Effect of connector" not in section_a
    assert "Effect of seed" not in section_a
    assert "Effect of connector" in section_b and "Effect of resolution" not in section_b
    assert "<h2>Grid: gridA</h2>" in section_a and "<h2>Grid: gridB</h2>" in section_b
    # the description is shown, escaped; grid B's grid.json has none
    assert "Resolution &lt;b&gt;sweep&lt;/b&gt; &amp; &#34;seeds&#34;" in section_a and "<b>sweep" not in page
    assert 'class="description"' not in section_b
    markdown = (listed / "report.md").read_text()
    assert markdown.index('<a id="grid-gridA"></a>') < markdown.index('<a id="grid-gridB"></a>')
    assert "Resolution &lt;b&gt;sweep&lt;/b&gt; &amp; \"seeds\"" in markdown and "<b>" not in markdown
    assert "### Effect of connector" in markdown and "](plots/gridB-bars-connector.svg)" in markdown


def test_plots_are_named_per_grid_and_inlined(listed: Path) -> None:
    names = {path.name for path in (listed / "plots").iterdir()}
    assert {"gridA-bars-resolution.svg", "gridB-bars-connector.svg", "gridA-loss.svg", "gridB-loss.svg"} <= names
    assert all(name.startswith(("gridA-", "gridB-")) for name in names)
    page = (listed / "index.html").read_text()
    assert page.count("data:image/svg+xml;charset=utf-8,") == len(names)  # self-contained: every plot inlined
    assert not any("dynamics" in name for name in names)  # one evaluated checkpoint per run: no dynamics plots
    text = re.sub(r'src="data:image/svg\+xml;[^"]*"', "", page)  # the plots name the SVG namespace (w3.org)
    assert "<script" not in text and "http://" not in text and "https://" not in text


def test_per_grid_csvs_and_seed_spread(study_dir: Path, listed: Path) -> None:
    grid_a = pd.read_csv(listed / "summary-gridA.csv", index_col="cell")
    grid_b = pd.read_csv(listed / "summary-gridB.csv", index_col="cell")
    merged = pd.read_csv(listed / "summary.csv", index_col="cell")
    assert list(grid_a.index) == ["resolution=32", "resolution=64"]
    assert list(grid_b.index) == [f"connector={c}" for c in CONNECTORS]
    assert list(merged.index) == [f"gridA/{c}" for c in grid_a.index] + [f"gridB/{c}" for c in grid_b.index]

    seeds = [_final(study_dir / "gridA" / f"resolution=32,seed={s}")["summary"]["4"]["caption_avg"] for s in (0, 1)]
    assert grid_a.at["resolution=32", "Caption 4-shot"] == pytest.approx(np.mean(seeds))
    assert grid_a.at["resolution=32", "Caption 4-shot seed_std"] == pytest.approx(np.std(seeds, ddof=1))
    assert merged.at["gridA/resolution=32", "Caption 4-shot seed_std"] == pytest.approx(np.std(seeds, ddof=1))
    assert not any(column.endswith("seed_std") for column in grid_b.columns)  # one seed per cell: no spread
    vqa = _final(study_dir / "gridB" / "connector=avgpool")["tasks"]["synthetic-vqa"]["0"]["value"]
    assert grid_b.at["connector=avgpool", "VQA 0-shot"] == pytest.approx(vqa)

    page = (listed / "index.html").read_text()
    study = load.load_study([study_dir / "gridA"])
    from mmbench_cli.report import tables

    shown = tables.summary_table(study, 200).text.at["resolution=32", "Caption 4-shot"]  # rounded to its CI
    value, spread = (float(x) for x in shown.split(" ±"))
    assert value == pytest.approx(np.mean(seeds), abs=0.5 * 10 ** -len(shown.split()[0].partition(".")[2]))
    assert spread == pytest.approx(np.std(seeds, ddof=1), abs=0.05)
    assert shown in _section(page, "gridA")
    assert "±: std over training seeds" in _section(page, "gridA") and "±" not in _section(page, "gridB")


def test_parent_dir_means_its_grids_and_skips_the_rest(study_dir: Path, listed: Path, tmp_path: Path) -> None:
    assert load.expand_paths([study_dir]) == [study_dir / "gridA", study_dir / "gridB"]
    out = tmp_path / "parent"
    _report([str(study_dir), "-o", str(out), "--no-plots"])
    for name in ("summary.csv", "summary-gridA.csv", "summary-gridB.csv"):
        assert (out / name).read_text() == (listed / name).read_text(), name
    page = (out / "index.html").read_text()
    assert page.index('id="grid-gridA"') < page.index('id="grid-gridB"')
    assert "encoders" not in page and "clip-vit" not in page and "notes.txt" not in page
    assert "6 run(s) in 4 cell(s)" in page

    # Re-used for one grid: the classic single-grid report, and the other grid's files do not linger.
    _report([str(study_dir / "gridA"), "-o", str(out), "--no-plots"])
    page = (out / "index.html").read_text()
    assert 'id="summary"' in page and 'class="grid"' not in page and 'id="grid-gridA' not in page
    assert not list(out.glob("summary-*.csv"))
    assert "Caption 4-shot seed_std" in pd.read_csv(out / "summary.csv").columns


def test_two_grids_without_prefix_collisions_still_get_grid_names(tmp_path: Path) -> None:
    a = write_grid(tmp_path / "a", resolutions=(32,), seeds=(0,), eval_steps=(8,), samples=5)
    b = write_connector_grid(tmp_path / "b")
    study = load.load_study([a, b])
    assert list(study.groups()) == ["a/resolution=32", "b/connector=mlp", "b/connector=avgpool"]
    parts = study.per_grid()
    assert [list(part.groups()) for part in parts] == [["resolution=32"], ["connector=mlp", "connector=avgpool"]]
    assert [list(part.axes) for part in parts] == [["resolution", "seed"], ["connector"]]
    assert parts[0].runs[0].sample_scores(8, "synthetic-vqa", "0") is not None
    assert study.runs[0].name == "a/resolution=32,seed=0"  # the merged study keeps the prefixed names
