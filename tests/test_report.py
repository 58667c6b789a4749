"""mm report: tables, bootstrap CIs, escaping, regression check and bad input, on run dirs in the file format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import SCRIPT_CAPTION, write_grid, write_run
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.errors import MMError
from mmbench_cli.report import findings, load, regress, stats, tables
from mmbench_cli.report.build import make_report
from mmbench_cli.report.html import md_escape

runner = CliRunner()


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 resolutions × 2 training seeds grid in the mm ablate layout."""
    return write_grid(tmp_path_factory.mktemp("runs") / "toygrid")


@pytest.fixture(scope="module")
def built(grid: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One report of the grid (built once: plots take a second or two)."""
    out = tmp_path_factory.mktemp("reports") / "toygrid"
    return out, make_report([grid], out, resamples=300)


def _final(grid: Path, cell: str) -> dict:
    return json.loads((grid / cell / "eval" / "step_8.json").read_text())


def test_summary_table_pools_seeds_and_bolds_nothing(grid: Path, built: tuple[Path, object]) -> None:
    _, result = built
    summary = result.summary
    expected = np.mean([_final(grid, f"resolution=32,seed={s}")["summary"]["4"]["caption_avg"] for s in (0, 1)])
    assert summary.at["resolution=32", "Caption 4-shot"] == pytest.approx(expected)
    textcore = np.mean([_final(grid, f"resolution=64,seed={s}")["tasks"]["text-cloze"]["0"]["value"] for s in (0, 1)])
    assert summary.at["resolution=64", "TextCore"] == pytest.approx(textcore)
    study = load.load_study([grid])
    table = tables.summary_table(study, resamples=300)
    columns = tables.summary_columns(study)
    cells = tables.cell_estimates(study, columns)
    # one test everywhere: the per-cell tables describe; significance is the Findings' (and the effect tables')
    assert not table.bold.values.any()
    assert columns and all(cells[group][column.key] is not None for group in cells for column in columns)
    row = table.rows()[0]
    assert len(row["cells"]) == 8 and row["cells"][0]["ci"].startswith("[") and "±" in row["cells"][0]["text"]


def test_values_are_rounded_to_what_their_ci_supports(grid: Path) -> None:
    study = load.load_study([grid])
    table = tables.summary_table(study, resamples=300)
    for label in table.values.index:
        for column in table.values.columns:
            text, ci = table.text.at[label, column], table.ci.at[label, column]
            if not ci:
                continue
            low, high = (float(x) for x in ci.strip("[]").split(", "))
            decimals = len(text.split()[0].partition(".")[2])
            assert decimals == stats.decimals_for((high - low) / 2) or high == low, (label, column, text, ci)
            assert abs(float(text.split()[0]) - table.values.at[label, column]) <= 0.5 * 10 ** -decimals + 1e-9


def test_constant_columns_are_left_out_of_the_display(tmp_path: Path) -> None:
    a = write_run(tmp_path / "run-a", 32, 0, eval_steps=(8,), samples=5)
    b = write_run(tmp_path / "run-b", 64, 0, eval_steps=(8,), samples=5)
    for run in (a, b):  # the same VQA 8-shot score everywhere
        path = run / "eval" / "step_8.json"
        result = json.loads(path.read_text())
        result["tasks"]["synthetic-vqa"]["8"].update(value=0.25, samples=[])
        result["summary"]["8"]["vqa_avg"] = 0.25
        path.write_text(json.dumps(result))
    table = tables.summary_table(load.load_study([a, b]), resamples=100)
    assert table.hidden == ["VQA 8-shot"] and "VQA 8-shot" not in table.shown_columns
    assert "Left out, the same in every row: VQA 8-shot = 0.25" in table.display_note
    assert "VQA 8-shot" in table.values.columns  # the CSV keeps it


def test_every_metric_has_a_ci_containing_it(grid: Path) -> None:
    study = load.load_study([grid])
    columns = tables.task_columns(study) + tables.summary_columns(study)
    for group, by_column in tables.cell_estimates(study, columns).items():
        for key, estimate in by_column.items():
            low, high = estimate.ci(300)
            assert low < estimate.value < high, (group, key)


def test_bootstrap_ci_matches_normal_theory() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(400) < 0.5
    estimate = stats.from_scores(float(scores.mean()), {f"q{i}": float(s) for i, s in enumerate(scores)})
    low, high = estimate.ci(2000)
    half_width = 1.96 * np.sqrt(0.25 / 400)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    # Two tasks (different queries) are resampled independently: their mean has a narrower interval.
    other = stats.from_scores(float(scores.mean()), {f"other{i}": float(s) for i, s in enumerate(scores)})
    pooled = stats.mean_of([estimate, other])
    assert pooled.value == pytest.approx(estimate.value)
    assert (pooled.ci(2000)[1] - pooled.ci(2000)[0]) < (high - low) * 0.8
    # Two cells scored on the same queries are resampled jointly (paired): identical scores, identical interval.
    same_queries = stats.mean_of([estimate, stats.from_scores(estimate.value, dict(zip(
        [f"q{i}" for i in range(400)], map(float, scores), strict=True)))])
    assert same_queries.ci(2000) == pytest.approx((low, high))
    assert stats.from_scores(0.5, None).ci() is None


def test_regression_test_separates_real_drops_from_noise_and_counts_seed_noise() -> None:
    rng = np.random.default_rng(1)
    base = {f"q{i}": float(v) for i, v in enumerate(rng.random(200) < 0.6)}
    same = dict(base)
    assert regress.drop_pvalue(base, same, drop=0.05)[0] == 0.0  # an edited baseline value: a sure drop
    flipped = dict(base)
    for key in list(base)[:6]:  # 6 of 200 answers change, both ways: a 0.01 drop is noise
        flipped[key] = 1.0 - flipped[key]
    drop = np.mean(list(base.values())) - np.mean(list(flipped.values()))
    assert regress.drop_pvalue(base, flipped, drop)[0] > 0.05
    worse = {key: 0.0 for key in base}
    drop = np.mean(list(base.values()))
    assert regress.drop_pvalue(base, worse, drop)[0] < 0.01
    # the same seed-aware model as Findings: a grid whose seeds differ by about the drop makes it noise
    half = {key: (0.0 if i < 40 else value) for i, (key, value) in enumerate(base.items())}
    drop = np.mean(list(base.values())) - np.mean(list(half.values()))
    assert regress.drop_pvalue(base, half, drop)[0] < 0.01
    assert regress.drop_pvalue(base, half, drop, seed_variance=(drop ** 2, 4))[0] > 0.05


def test_repeated_checkpoint_hash_is_flagged(grid: Path, built: tuple[Path, object]) -> None:
    flagged = tables.repeated_checkpoints(load.load_study([grid]))
    assert [row["where"] for row in flagged] == ["resolution=32,seed=1 @ step 1, resolution=32,seed=1 @ step 2"]
    out, _ = built
    assert "resolution=32,seed=1 @ step 2" in (out / "index.html").read_text()


def test_user_strings_are_escaped(built: tuple[Path, object]) -> None:
    out, _ = built
    page = (out / "index.html").read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;document.title=&#34;pwned&#34;" in page
    markdown = (out / "report.md").read_text()
    assert "<script" not in markdown and "&lt;script&gt;" in markdown
    assert md_escape("a|b <i>x</i>\nc") == "a\\|b &lt;i&gt;x&lt;/i&gt; c"


def test_report_is_self_contained(built: tuple[Path, object]) -> None:
    out, result = built
    page = (out / "index.html").read_text()
    # bars, grounding over training, 3 tasks' dynamics, loss; percent-encoded (no quote, & or < > left to escape)
    assert page.count('<img src="data:image/svg+xml;charset=utf-8,') == 6
    assert "http://" not in page.replace("http://www.w3.org", "").replace("http:%2F%2F", "") and "https://" not in page
    for name in ("bars-resolution", "grounding-steps", "dynamics-synthetic-caption", "dynamics-synthetic-vqa",
                 "dynamics-text-cloze", "loss"):
        svg = (out / "plots" / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and f"plots/{name}.svg" in (out / "report.md").read_text()
    assert "0123456789abcdef" in page and "torch 2.13.0" in page and "12.5 s" in page  # metadata


def test_cli_baseline_roundtrip_and_regression(grid: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    result = runner.invoke(app, ["report", str(grid), "-o", str(tmp_path / "r1"), "--save-baseline", str(baseline),
                                 "--resamples", "200", "--no-plots"])
    assert result.exit_code == 0, result.output
    saved = json.loads(baseline.read_text())
    key = "resolution=64,seed=0/synthetic-vqa/4shot"
    assert saved["metrics"][key]["value"] == _final(grid, "resolution=64,seed=0")["tasks"]["synthetic-vqa"]["4"]["value"]
    assert len(saved["metrics"][key]["scores"]) == 20

    same = runner.invoke(app, ["report", str(grid), "-o", str(tmp_path / "r2"), "--baseline", str(baseline),
                               "--resamples", "200", "--no-plots"])
    assert same.exit_code == 0, same.output
    assert "no regression" in same.output

    saved["metrics"][key]["value"] += 0.1  # a baseline with a higher number
    baseline.write_text(json.dumps(saved))
    worse = runner.invoke(app, ["report", str(grid), "-o", str(tmp_path / "r3"), "--baseline", str(baseline),
                                "--tolerance", "0.02", "--resamples", "200", "--no-plots"])
    assert worse.exit_code == 1, worse.output
    assert "regressed" in worse.output and "resolution=64,seed=0/synthetic-vqa/4shot" in worse.output
    page = (tmp_path / "r3" / "index.html").read_text()
    assert "FAIL: 1 of" in page and "data:image/svg+xml" not in page  # --no-plots: tables only
    # The same drop passes when the tolerance covers it.
    loose = runner.invoke(app, ["report", str(grid), "-o", str(tmp_path / "r4"), "--baseline", str(baseline),
                                "--tolerance", "0.2", "--resamples", "200", "--no-plots"])
    assert loose.exit_code == 0, loose.output


def test_compare_rules() -> None:
    base = {"a": {"value": 0.5}, "b": {"value": 0.5, "tolerance": 0.3}, "c": {"value": 0.5}, "gone": {"value": 0.1}}
    current = {"a": {"value": 0.45}, "b": {"value": 0.3}, "c": {"value": 0.51}, "new": {"value": 1.0}}
    status = {c.key: c.status for c in regress.compare(base, current, tolerance=0.02)}
    assert status == {"a": "regressed", "b": "within tolerance", "c": "ok", "gone": "missing", "new": "new"}
    scores = {f"q{i}": float(i % 2) for i in range(40)}
    noisy = dict(scores, q0=1.0, q2=1.0, q1=0.0, q3=0.0, q5=0.0)  # 0.025 lower, from 5 flipped answers
    rows = regress.compare({"x": {"value": 0.5, "scores": scores}}, {"x": {"value": 0.475, "scores": noisy}}, 0.02)
    assert rows[0].status == "not significant" and rows[0].matched == 40 and not rows[0].failed


def test_worse_grid_fails_against_saved_baseline(tmp_path: Path) -> None:
    good = write_grid(tmp_path / "good", resolutions=(64,), seeds=(0,), eval_steps=(8,), samples=60)
    bad = write_grid(tmp_path / "bad", resolutions=(64,), seeds=(0,), eval_steps=(8,), samples=60, quality=-0.3)
    study_good, study_bad = load.load_study([good]), load.load_study([bad])
    rows = regress.compare(regress.collect(study_good), regress.collect(study_bad), 0.02)
    assert all(row.status == "regressed" for row in rows) and len(rows) == 7
    rows = regress.compare(regress.collect(study_good), regress.collect(study_good), 0.02)
    assert all(row.status == "ok" for row in rows)


def test_plain_run_dirs_and_runs_without_eval(tmp_path: Path) -> None:
    a = write_run(tmp_path / "run-a", 32, 0, eval_steps=(8,))
    b = write_run(tmp_path / "run-b", 64, 0, eval_steps=(8,))
    study = load.load_study([a, b])
    assert [r.name for r in study.runs] == ["run-a", "run-b"] and study.axes == {}
    assert list(tables.summary_table(study, 200).values.index) == ["run-a", "run-b"]
    # A run that trained but was not evaluated still gets its loss curves.
    c = write_run(tmp_path / "run-c", 32, 1, eval_steps=())
    out = tmp_path / "report-c"
    result = make_report([c], out, resamples=200)
    assert result.summary is None and (out / "plots" / "loss.svg").exists()


def _assert_exit_2(args: list[str], needle: str) -> str:
    result = runner.invoke(app, ["report", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2
    return result.output


def test_bad_input_exits_2_and_overwrites_nothing(grid: Path, tmp_path: Path) -> None:
    _assert_exit_2([str(tmp_path / "missing")], "no such directory")
    (tmp_path / "file.txt").write_text("x")
    _assert_exit_2([str(tmp_path / "file.txt")], "is a file")
    (tmp_path / "empty").mkdir()
    _assert_exit_2([str(tmp_path / "empty")], "not a run dir")
    bare = tmp_path / "bare"
    (bare / "x").mkdir(parents=True)
    (bare / "x" / "status").write_text("pending\n")
    _assert_exit_2([str(bare / "x")], "nothing to report")

    copy = tmp_path / "copy"
    shutil.copytree(grid, copy)
    out = tmp_path / "out"
    baseline = tmp_path / "baseline.json"
    assert runner.invoke(app, ["report", str(copy), "-o", str(out), "--save-baseline", str(baseline),
                               "--resamples", "200", "--no-plots"]).exit_code == 0
    before = {p: p.read_bytes() for p in [out / "index.html", out / "report.md", baseline]}

    broken = copy / "resolution=64,seed=1" / "eval" / "step_8.json"
    broken.write_text('{"run": "x", "tasks": {"synthetic-vqa": {"0": {"value": "high"}}}}')
    _assert_exit_2([str(copy), "-o", str(out), "--save-baseline", str(baseline)], "step_8.json")
    broken.write_text("{not json")
    _assert_exit_2([str(copy), "-o", str(out)], "not valid JSON")
    shutil.copy(grid / "resolution=64,seed=1" / "eval" / "step_8.json", broken)

    bad_baseline = tmp_path / "bad.json"
    bad_baseline.write_text("[1, 2")
    _assert_exit_2([str(copy), "-o", str(out), "--baseline", str(bad_baseline)], "not valid JSON")
    bad_baseline.write_text(json.dumps({"format": "something-else", "metrics": {}}))
    _assert_exit_2([str(copy), "-o", str(out), "--baseline", str(bad_baseline)], "not an mmbench baseline")
    bad_baseline.write_text(json.dumps({"format": "mmbench-baseline", "version": 1, "metrics": {"k": {"value": "x"}}}))
    _assert_exit_2([str(copy), "-o", str(out), "--baseline", str(bad_baseline)], "metrics.k")
    bad_baseline.write_text(json.dumps({"format": "mmbench-baseline", "version": 1, "metrics": {}, "encoders": {"e": 1}}))
    _assert_exit_2([str(copy), "-o", str(out), "--baseline", str(bad_baseline)], "encoders")
    _assert_exit_2([str(copy), "-o", str(out), "--baseline", str(tmp_path / "nope.json")], "no such baseline")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    _assert_exit_2([str(copy), "-o", str(tmp_path / "notes")], "holds other files")
    assert {p: p.read_bytes() for p in before} == before
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    (tmp_path / "notes" / "mine.txt").unlink()
    (tmp_path / "notes" / "README.md").write_text("my notes")
    _assert_exit_2([str(copy), "-o", str(tmp_path / "notes")], "holds other files")  # README.md alone: not a report


def test_notes_readme_next_to_a_report_is_kept(grid: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert runner.invoke(app, ["report", str(grid), "-o", str(out), "--no-plots"]).exit_code == 0
    (out / "README.md").write_text("what this report shows")
    result = runner.invoke(app, ["report", str(grid), "-o", str(out), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert (out / "README.md").read_text() == "what this report shows"
    assert (out / "report.md").is_file()


def test_cell_ids_and_grid_layouts() -> None:
    assert load.parse_cell_id("resolution=64,tokens=16") == {"resolution": "64", "tokens": "16"}
    assert load.parse_cell_id('data_mix={"caption":0.5,"text":0.5},seed=1') == {
        "data_mix": '{"caption":0.5,"text":0.5}', "seed": "1"}
    assert load.parse_cell_id("plain-run") == {}
    cells = load._grid_cells({"cells": [{"id": "a=1", "labels": {"a": "1"}}, "b=2"]})
    assert cells == {"a=1": {"a": "1"}, "b=2": {"b": "2"}}
    with pytest.raises(MMError, match="no grid or run dirs"):
        load.load_study([])
    assert SCRIPT_CAPTION.startswith("<script>")


def test_group_task_without_samples_keeps_textcore_ci(tmp_path: Path) -> None:
    """lm-eval groups (text:textcore) have a value but no per-sample file: the CI comes from their members."""
    run = write_run(tmp_path / "run", 64, 0, eval_steps=(8,))
    path = run / "eval" / "step_8.json"
    result = json.loads(path.read_text())
    member = result["tasks"]["text-cloze"]["0"]
    result["tasks"]["text:textcore"] = {"0": {"family": "text", "metric": "acc", "value": member["value"], "n": 20,
                                              "seeds": [member["value"]], "samples": []}}
    path.write_text(json.dumps(result))
    study = load.load_study([run])
    column = next(c for c in tables.summary_columns(study) if c.key == "textcore")
    estimate = tables.run_estimate(study.runs[0], column, study.tasks())
    assert estimate.value == pytest.approx(member["value"]) and estimate.ci(200) is not None


def test_two_grids_with_the_same_cells_stay_apart(tmp_path: Path) -> None:
    a = write_grid(tmp_path / "a", resolutions=(32,), seeds=(0, 1), eval_steps=(8,), samples=5)
    b = write_grid(tmp_path / "b", resolutions=(32,), seeds=(0, 1), eval_steps=(8,), samples=5, quality=0.2)
    study = load.load_study([a, b])
    assert list(study.groups()) == ["a/resolution=32", "b/resolution=32"]
    assert len(regress.collect(study)) == 2 * 2 * 7


def test_repeated_hash_is_marked_in_dynamics_plots(tmp_path: Path) -> None:
    from mmbench_cli.report import plots

    run = write_run(tmp_path / "stuck", 32, 0, eval_steps=(0, 1, 2, 8), samples=5, repeat_hash=True)
    study = load.load_study([run])
    assert tables.repeated_points(study) == {("stuck", 1), ("stuck", 2)}
    figure = next(f for f in plots.dynamics(study) if f.id == "dynamics-synthetic-vqa")
    assert "repeated checkpoint hash" in figure.svg
    healthy = load.load_study([write_run(tmp_path / "fine", 32, 0, eval_steps=(0, 1, 2, 8), samples=5)])
    assert all("repeated checkpoint hash" not in f.svg for f in plots.dynamics(healthy))


def test_results_are_read_as_typed_cells_and_checkpoints_as_recorded(tmp_path: Path) -> None:
    """Runs are read through mmbench_cli.rundir: results as EvalResult/ResultCell; a checkpoint.json without a
    content hash stays without one (the report reads no weights: there is no model.safetensors here)."""
    from mmbench_cli.rundir import EvalResult, ResultCell

    run = write_run(tmp_path / "run", 32, 0, steps=(0, 8), eval_steps=(8,), samples=5)
    (run / "checkpoints" / "step_8" / "checkpoint.json").write_text(json.dumps({"step": 8, "train_flops": 7.0}))
    loaded = load.load_study([run]).runs[0]
    assert isinstance(loaded.results[8], EvalResult)
    cell = loaded.entry(8, "synthetic-vqa", "4")
    assert isinstance(cell, ResultCell) and cell.family == "vqa" and cell.n == 5
    assert [(c.step, c.content_hash, c.train_flops) for c in loaded.checkpoints] == [(0, "hash-32-0-0", 0.0),
                                                                                  (8, None, 7.0)]


def test_lower_is_better_metrics_mark_the_lowest(tmp_path: Path) -> None:
    """A task's direction comes from the metric table (mmbench_cli.families): perplexity is best when lowest; a
    value without per-sample scores or seeds has no noise estimate, so nothing is bold."""
    runs = []
    for name, perplexity in (("low", 12.0), ("high", 30.0)):
        run = write_run(tmp_path / name, 32, 0, eval_steps=(8,), samples=5)
        path = run / "eval" / "step_8.json"
        result = json.loads(path.read_text())
        result["tasks"]["text:wikitext"] = {"0": {"family": "text", "metric": "word_perplexity", "value": perplexity}}
        path.write_text(json.dumps(result))
        runs.append(run)
    table = tables.task_table(load.load_study(runs), resamples=100)
    column = "text:wikitext 0-shot (word_perplexity)"
    assert not table.bold[column].any()
    assert [c.lower_is_better for c in tables.task_columns(load.load_study(runs)) if c.task == "text:wikitext"] == [True]
    measure = findings.Measure("text@0", "ppl", "text", "0", ("text:wikitext",), "word_perplexity", lower_is_better=True)
    for diff, better in ((-5.0, "a"), (5.0, "b")):  # a − b: a lower perplexity is the better side
        result = stats.Contrast(diff, 1.0, 1.0, None, None, diff - 2, diff + 2, 0.001, 10, 10, 1, True)
        row = findings.Finding("g", "lm a − b", "main", "lm", "", measure, 0.0, diff, result, 1, False,
                               verdict=stats.EFFECT, arms=("a", "b"))
        assert findings.effect_marks(findings.Findings(rows=[row]), "g") == {("lm", better, "text", "0")}
        assert findings.summary_sentence(row).startswith(f"lm {better} beats")


def test_text_task_examples_are_described_not_dumped() -> None:
    choice = {"id": 0, "prediction": [[-1.9, False], [-1.7, False], [-2.1, False], [-1.4, True]], "references": ["3"],
              "score": 100.0, "choices": ["red", "green", "blue", "yellow"]}
    assert tables.describe_prediction(choice) == (
        "ranks choice 4 of 4 'yellow' first (log-likelihood -1.40)", "answer: choice 4 of 4 'yellow'")
    cloze = {"id": 1, "prediction": [[-2.7, False]], "references": [" river"], "score": 0.0}
    assert tables.describe_prediction(cloze) == (
        "' river' is not the model's greedy continuation (log-likelihood -2.70)", "target ' river'")
    vqa = {"prediction": "left", "references": ["left"] * 9 + ["right"]}
    assert tables.describe_prediction(vqa) == ("left", "left | right")


def test_plots_are_inlined_as_percent_encoded_svg_that_parses() -> None:
    """The data: URI holds nothing an HTML attribute must escape, and decodes to the same well-formed SVG: labels
    with quotes, markup, '#', '%' and non-ASCII text survive."""
    import urllib.parse
    import xml.etree.ElementTree as ET

    from mmbench_cli.report import html, plots

    label = """cell "a" 'b' <i>x</i> & #1 50% é×Δ"""
    plt = plots._pyplot()
    fig, panel = plt.subplots(figsize=(3, 2))
    panel.plot([0, 1], [1, 2], label=label)
    panel.set_title(label)
    uri = str(html.data_uri(plots.Figure("x", "t", "c", plots._to_svg(fig))))
    assert uri.startswith("data:image/svg+xml;charset=utf-8,") and not any(ch in uri for ch in "\"&<>")
    root = ET.fromstring(urllib.parse.unquote(uri.split(",", 1)[1]).encode("utf-8"))
    assert label in ["".join(node.itertext()) for node in root.iter("{http://www.w3.org/2000/svg}text")]


def test_baseline_records_encoder_weights_and_names_a_mismatch(grid: Path, tmp_path: Path) -> None:
    """A baseline keeps each pre-trained encoder's weights hash; compared with runs whose encoder (same cache key) has
    other weights, the check says so, so a cached encoder from other code is not mistaken for a regression's cause."""
    copy = tmp_path / "toygrid"
    shutil.copytree(grid, copy)

    def set_weights(weights: str) -> None:
        for meta_path in copy.glob("*/meta.json"):
            meta = json.loads(meta_path.read_text())
            meta["pretrained_encoder"] = {"dir": "/cache/encoders/vit-tiny-clip-64px-0123", "weights": weights}
            meta_path.write_text(json.dumps(meta))

    set_weights("a" * 64)
    baseline = tmp_path / "baseline.json"
    saved = runner.invoke(app, ["report", str(copy), "-o", str(tmp_path / "r1"), "--save-baseline", str(baseline),
                                "--resamples", "200", "--no-plots"])
    assert saved.exit_code == 0, saved.output
    assert json.loads(baseline.read_text())["encoders"] == {"vit-tiny-clip-64px-0123": "a" * 64}
    same = runner.invoke(app, ["report", str(copy), "-o", str(tmp_path / "r2"), "--baseline", str(baseline),
                               "--resamples", "200", "--no-plots"])
    assert same.exit_code == 0 and "note: encoder" not in same.output
    set_weights("b" * 64)
    other = runner.invoke(app, ["report", str(copy), "-o", str(tmp_path / "r3"), "--baseline", str(baseline),
                                "--resamples", "200", "--no-plots"])
    assert other.exit_code == 0, other.output  # the metrics did not change: a note, not a failure
    assert "note: encoder vit-tiny-clip-64px-0123: the baseline's runs used weights aaaaaaaaaaaa, these runs " \
           "bbbbbbbbbbbb" in " ".join(other.output.split())
