"""mm report's Findings: contrasts against the grid's base value and interactions, computed from hand-made
per-sample files, clustered by image; failed cells shown with their error; mixtures ordered by their shares."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from report_fixtures import write_grid
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.report import findings, load, stats

runner = CliRunner()
IMAGES, QUESTIONS = 10, 2
# score = 40 + 10·[64 px] + 5·[4 tokens] + 20·[64 px and 4 tokens] + seed offset + a per-query pattern
SEED_OFFSET = {0: -1.0, 1: 1.0}


def _score(resolution: int, tokens: int, seed: int, image: int, question: int) -> float:
    effect = 10.0 * (resolution == 64) + 5.0 * (tokens == 4) + 20.0 * (resolution == 64 and tokens == 4)
    return 40.0 + effect + SEED_OFFSET[seed] + ((image * 7 + question * 3 + resolution + seed) % 5) - 2.0


def _write_cell(run_dir: Path, resolution: int, tokens: int, seed: int) -> None:
    """A run dir evaluated at step 10: synthetic-vqa (ids <image>:q<k>) and synthetic-caption (ids = images), 0-shot."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"seed: {seed}\nmodel: {{image_size: {resolution}, num_image_tokens: {tokens}}}\n")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 / s}) + "\n" for s in (1, 5, 10)))
    tasks = {}
    for task, family, ids in (
        ("synthetic-vqa", "vqa", [(i, q, f"synthetic:0:test:{i}:q{q}") for i in range(IMAGES) for q in range(QUESTIONS)]),
        ("synthetic-caption", "caption", [(i, 0, f"synthetic:0:test:{i}") for i in range(IMAGES)]),
    ):
        rows = [{"id": ident, "prediction": "x", "references": ["x"], "score": _score(resolution, tokens, seed, i, q)}
                for i, q, ident in ids]
        rel = f"eval/samples/step_10/{task}.0shot.seed0.jsonl"
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).write_text("".join(json.dumps(row) + "\n" for row in rows))
        value = sum(row["score"] for row in rows) / len(rows)
        tasks[task] = {"0": {"family": family, "metric": "CIDEr" if family == "caption" else "vqa_accuracy",
                             "value": value, "n": len(rows), "seeds": [value], "samples": [rel]}}
    (run_dir / "eval" / "step_10.json").write_text(json.dumps({"run": run_dir.name, "step": 10, "tasks": tasks}))
    (run_dir / "ablate.json").write_text(json.dumps({"cell": run_dir.name, "state": "done"}))


def write_two_axis_grid(grid_dir: Path) -> Path:
    """resolution (32, 64) × tokens (4, 16) × seeds (0, 1); the base config has 32 px and 16 tokens."""
    cells = []
    for resolution in (32, 64):
        for tokens in (4, 16):
            for seed in (0, 1):
                labels = {"resolution": str(resolution), "tokens": str(tokens), "seed": str(seed)}
                cell = ",".join(f"{k}={v}" for k, v in labels.items())
                _write_cell(grid_dir / cell, resolution, tokens, seed)
                cells.append({"id": cell, "labels": labels})
    axes = [{"name": "resolution", "key": "model.image_size", "labels": ["32", "64"], "values": [32, 64]},
            {"name": "tokens", "key": "model.num_image_tokens", "labels": ["4", "16"], "values": [4, 16]},
            {"name": "seed", "key": "seed", "labels": ["0", "1"], "values": [0, 1]}]
    base = {"seed": 0, "model": {"image_size": 32, "num_image_tokens": 16}}
    (grid_dir / "grid.json").write_text(json.dumps({"name": grid_dir.name, "axes": axes, "cells": cells,
                                                    "base_config": base}))
    return grid_dir


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_axis_grid(tmp_path_factory.mktemp("runs") / "res_tokens")


def _mean(resolution: int, tokens: int, task: str) -> float:
    queries = [(i, q) for i in range(IMAGES) for q in range(QUESTIONS if task == "vqa" else 1)]
    return sum(_score(resolution, tokens, s, i, q) for s in (0, 1) for i, q in queries) / (2 * len(queries))


def test_contrasts_against_the_base_value_and_the_interaction(grid: Path) -> None:
    study = load.load_study([grid])
    assert study.grids[0]["base_values"] == {"resolution": "32", "tokens": "16", "seed": "0"}
    found = findings.study_findings(study, claims={"resolution": "higher is better"})
    rows = {(row.contrast, row.measure.key): row for row in found.rows}
    # arms named in the order of the difference: the larger number first on a numeric axis
    assert {contrast for contrast, _ in rows} == {"resolution 64 − 32", "tokens 16 − 4",
                                                  "(resolution 64 − 32) × (tokens 16 − 4)"}
    for task in ("vqa", "caption"):
        resolution = rows[("resolution 64 − 32", f"{task}@0")]
        by_hand = ((_mean(64, 4, task) - _mean(32, 4, task)) + (_mean(64, 16, task) - _mean(32, 16, task))) / 2
        assert resolution.result.diff == pytest.approx(by_hand) and by_hand == pytest.approx(20.0, abs=1.0)
        assert resolution.base_mean == pytest.approx((_mean(32, 4, task) + _mean(32, 16, task)) / 2)
        interaction = rows[("(resolution 64 − 32) × (tokens 16 − 4)", f"{task}@0")]
        by_hand = (_mean(64, 16, task) - _mean(32, 16, task)) - (_mean(64, 4, task) - _mean(32, 4, task))
        assert interaction.result.diff == pytest.approx(by_hand)
        assert interaction.simple_labels == ("tokens=4", "tokens=16")
        tokens = rows[("tokens 16 − 4", f"{task}@0")]
        assert tokens.arms == ("16", "4") and tokens.result.diff == pytest.approx(tokens.value_mean - tokens.base_mean)
        assert resolution.claim == "higher is better" and interaction.claim is None
        assert resolution.result.seeds == 2 and resolution.result.paired and resolution.clustered
    vqa = rows[("resolution 64 − 32", "vqa@0")].result
    assert vqa.n == IMAGES * QUESTIONS and vqa.clusters == IMAGES  # two questions per image: one cluster
    assert rows[("resolution 64 − 32", "caption@0")].result.clusters == IMAGES
    # Holm over every contrast of the report; a 20-point effect on these queries is an effect
    assert [row.p_adjusted for row in found.rows] == pytest.approx(stats.holm([row.result.p_value for row in found.rows]))
    assert rows[("resolution 64 − 32", "vqa@0")].verdict == stats.EFFECT
    assert all(row.mde > 0 for row in found.rows)


def test_seed_noise_widens_the_interval(grid: Path) -> None:
    """The seeds' offsets (±1) are training noise: the seed-aware contrast is wider than the queries alone."""
    study = load.load_study([grid])
    row = next(r for r in findings.study_findings(study, claims={}).rows if r.measure.key == "caption@0")
    assert row.result.se_seeds is not None and row.result.se_seeds > 0
    assert row.result.se > row.result.se_queries


def test_findings_come_first_in_html_and_markdown(grid: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(grid), "-o", str(out), "--resamples", "200", "--no-plots"])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert page.index('<h2>Summary</h2>') < page.index('<section id="findings">') < page.index('<nav>')
    assert page.index('<nav>') < page.index('id="summary"')
    assert page[page.index("<table"):].startswith('<table class="data findings" id="table-findings-res_tokens"')
    assert "MM1 says" in page and "averaged over tokens" in page
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Summary") < markdown.index("## Findings") < markdown.index("## MM1-style summary")
    assert "## Summary" in "\n".join(markdown.splitlines()[:25]) and "resolution 64 beats 32 by" in markdown
    assert "| resolution 64 − 32 |" in markdown and "**effect**" in markdown
    assert '<a href="summary.csv" download>summary.csv</a>' in page


def test_failed_cells_are_shown_with_their_error(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "runs" / "g", resolutions=(32, 64), seeds=(0,), eval_steps=(8,), samples=8)
    plan = json.loads((grid / "grid.json").read_text())
    failed = grid / "resolution=96,seed=0"
    failed.mkdir()  # failed before it wrote any run file: only mm ablate's record
    (failed / "ablate.json").write_text(json.dumps({"state": "failed", "error": "RuntimeError: <out of memory>"}))
    crashed_eval = grid / "resolution=64,seed=0"  # trained, but the evaluation failed
    (crashed_eval / "ablate.json").write_text(json.dumps({"state": "failed", "error": "eval crashed"}))
    plan["cells"].append({"id": failed.name, "labels": {"resolution": "96", "seed": "0"}})
    (grid / "grid.json").write_text(json.dumps(plan))
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(grid), "-o", str(out), "--resamples", "200", "--no-plots"])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    section = page[page.index('<section id="unfinished">'):page.index("<nav>")]
    assert "resolution=96,seed=0" in section and "RuntimeError: &lt;out of memory&gt;" in section
    assert "resolution=64,seed=0" in section and "eval crashed" in section
    study = load.load_study([grid])
    found = findings.study_findings(study, claims={})
    # only the base cell is left: no axis contrast, and the few-shot gain is over that one cell
    assert [row.kind for row in found.rows] == ["shots", "shots"] and all(row.pairs == 1 for row in found.rows)
    assert "failed cell(s) left out" in found.skipped[0]
    markdown = (out / "report.md").read_text()
    assert "## Cells that did not finish" in markdown and "eval crashed" in markdown


def test_mixtures_are_ordered_by_their_shares(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "mix", resolutions=(32, 64), seeds=(0,), eval_steps=(8,), samples=5)
    plan = json.loads((grid / "grid.json").read_text())
    mixes = {"int100": {"caption": 0.0, "interleaved": 1.0, "text": 0.0},
             "cap100": {"caption": 1.0, "interleaved": 0.0, "text": 0.0},
             "cap45-int45-txt10": {"caption": 0.45, "interleaved": 0.45, "text": 0.1}}
    plan["axes"].append({"name": "data_mix", "key": "data.data_mix", "labels": list(mixes), "values": list(mixes.values())})
    (grid / "grid.json").write_text(json.dumps(plan))
    loaded = load.load_study([grid]).grids[0]
    assert loaded["value_order"]["data_mix"] == ["cap100", "cap45-int45-txt10", "int100"]


def test_claims_come_from_the_axes_file(tmp_path: Path) -> None:
    repo_axes = findings.axis_claims(Path(__file__).resolve().parents[1] / "mmbench_cli" / "resources" / "axes.yaml")
    assert {"resolution", "tokens", "connector", "encoder", "data_mix", "lm_size"} <= set(repo_axes)
    assert "seed" not in repo_axes
    assert findings.axis_claims(tmp_path / "missing.yaml") == {}


def test_few_shot_gain_is_a_paired_contrast_over_all_cells(tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "runs" / "g", resolutions=(32, 64), seeds=(0, 1), eval_steps=(8,), samples=30)
    study = load.load_study([grid])
    rows = [row for row in findings.study_findings(study, claims={}).rows if row.kind == "shots"]
    assert {row.measure.key for row in rows} == {"caption@8-vs-0", "vqa@8-vs-0"}
    caption = next(row for row in rows if row.measure.family == "caption")
    values = {shots: [json.loads((grid / f"resolution={r},seed={s}" / "eval" / "step_8.json").read_text())
                      ["tasks"]["synthetic-caption"][shots]["value"] for r in (32, 64) for s in (0, 1)]
              for shots in ("0", "8")}
    gain = sum(values["8"]) / 4 - sum(values["0"]) / 4
    assert caption.result.diff == pytest.approx(gain) and caption.result.paired and caption.result.seeds == 2
    assert caption.contrast == "shots 8 − 0" and caption.claim == findings.SHOTS_CLAIM


def test_answer_prior_line_readme_link_and_escaped_claims(tmp_path: Path) -> None:
    """A VQA results cell's extra["prior"] draws a dashed reference line; a README.md of notes beside the report is
    linked; an axis claim with markup shows as text."""
    grid = write_grid(tmp_path / "runs" / "g", resolutions=(32, 64), seeds=(0,), eval_steps=(8,), samples=10)
    for cell in ("resolution=32,seed=0", "resolution=64,seed=0"):
        path = grid / cell / "eval" / "step_8.json"
        result = json.loads(path.read_text())
        for entry in result["tasks"]["synthetic-vqa"].values():
            entry["prior"] = 0.3
        path.write_text(json.dumps(result))
    axes = tmp_path / "axes.yaml"
    axes.write_text('resolution:\n  key: model.image_size\n  claims: "<b>higher</b> & better"\n  values: [32, 64]\n')
    out = tmp_path / "report"
    first = runner.invoke(app, ["report", str(grid), "-o", str(out), "--resamples", "200"], env={"MMBENCH_AXES": str(axes)})
    assert first.exit_code == 0, first.output
    assert "answer prior" in (out / "plots" / "bars-resolution.svg").read_text()
    tasks_note = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("Per task"))
    assert "answer prior" in tasks_note and "synthetic-vqa 0.3" in tasks_note  # named in numbers, not only drawn
    page = (out / "index.html").read_text()
    assert "&lt;b&gt;higher&lt;/b&gt; &amp; better" in page and "<b>higher" not in page
    assert "README.md" not in page
    (out / "README.md").write_text("notes\n")
    again = runner.invoke(app, ["report", str(grid), "-o", str(out), "--resamples", "200", "--no-plots"])
    assert again.exit_code == 0, again.output
    assert '<a href="README.md">' in (out / "index.html").read_text()
    assert "[README.md](README.md)" in (out / "report.md").read_text()


def test_gzip_compressed_sample_files_give_the_same_report(tmp_path: Path) -> None:
    """A published study keeps its per-sample files as ``gzip -n`` copies (``<name>.jsonl.gz``): the report reads
    them as it reads the plain files, so the Findings, summaries and markdown come out the same."""
    import gzip
    import re

    grid_dir = write_two_axis_grid(tmp_path / "runs" / "res_tokens")

    def report(out: Path) -> tuple[str, str]:
        result = runner.invoke(app, ["report", str(grid_dir), "-o", str(out), "--resamples", "200", "--no-plots"])
        assert result.exit_code == 0, result.output
        markdown = re.sub(r"generated [^;.]* UTC", "generated <time>", (out / "report.md").read_text())
        return markdown, (out / "summary.csv").read_text()

    plain = report(tmp_path / "plain")
    files = sorted(grid_dir.glob("*/eval/samples/step_10/*.jsonl"))
    assert len(files) == 16
    for path in files:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes(), mtime=0))
        path.unlink()
    zipped = report(tmp_path / "zipped")
    assert zipped == plain
    assert "| **effect** |" in zipped[0]  # the Findings rows were computed from the compressed files
    bad = grid_dir / "resolution=32,tokens=4,seed=0" / "eval" / "samples" / "step_10" / "synthetic-vqa.0shot.seed0.jsonl.gz"
    bad.write_bytes(b"not gzip")
    result = runner.invoke(app, ["report", str(grid_dir), "-o", str(tmp_path / "bad"), "--no-plots"])
    assert result.exit_code == 2 and "synthetic-vqa.0shot.seed0.jsonl.gz: cannot read" in result.output


def test_what_it_cost_comes_from_the_cells_ablate_records(tmp_path: Path) -> None:
    """Cell time summed, wall time as the union of the cells' spans (a pause between resumed runs not counted),
    the most cells at once; in markdown and HTML."""
    grid_dir = write_two_axis_grid(tmp_path / "runs" / "res_tokens")
    # two cells at a time from t=0; the last pair starts after an hour's pause
    spans = [(0, 100), (0, 120), (100, 200), (120, 260), (3860, 3960), (3860, 3900), (260, 300), (300, 360)]
    for (start, stop), cell in zip(spans, sorted(grid_dir.glob("resolution=*")), strict=True):
        record = {"cell": cell.name, "state": "done", "started": 1e9 + start, "finished": 1e9 + stop,
                  "wall_s": stop - start, "train_s": (stop - start) * 0.75, "eval_s": (stop - start) * 0.25}
        (cell / "ablate.json").write_text(json.dumps(record))
    from mmbench_cli.report import tables

    [row] = tables.cost_rows(load.load_study([grid_dir]))
    cell_time = sum(stop - start for start, stop in spans)
    assert row["cells"] == "8 / 8" and row["at_once"] == "2"
    assert row["cell_time"] == f"{cell_time / 60:.1f}" and row["train"] == f"{cell_time * 0.75 / 60:.1f}"
    assert row["wall"] == f"{(360 + 100) / 60:.1f}"  # 0-360 s and 3860-3960 s: the hour's pause is not counted
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(grid_dir), "-o", str(out), "--resamples", "200", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert f"| res\\_tokens | 8 / 8 | {row['train']} |" in (out / "report.md").read_text()
    page = (out / "index.html").read_text()
    assert 'id="table-cost"' in page and 'href="#cost"' in page


def test_pretrained_encoders_are_listed_with_their_own_held_out_quality(tmp_path: Path) -> None:
    """Runs that started from a pre-trained encoder name its cache dir in meta.json; the report lists each encoder
    once with its encoder_eval.json (CLIP retrieval or MAE loss), read from a copy in encoders/ next to the grid
    (the recorded cache dir is gone), and escapes the names in HTML."""
    grid_dir = write_two_axis_grid(tmp_path / "study" / "res_tokens")
    cells = sorted(grid_dir.glob("resolution=*"))
    for index, cell in enumerate(cells):
        name = "vit-tiny-clip-64px-abc" if index < 6 else "vit-tiny-mae-64px-<b>"
        (cell / "meta.json").write_text(json.dumps({"pretrained_encoder": {"dir": f"/gone/cache/{name}"}}))
    copies = tmp_path / "study" / "encoders"
    for name, objective, scores in (
        ("vit-tiny-clip-64px-abc", "clip", {"val_retrieval_top1": 0.4375, "val_retrieval_chance": 1 / 128,
                                            "val_pairs": 128}),
        ("vit-tiny-mae-64px-<b>", "mae", {"val_mae_loss": 0.01234, "val_images": 128}),
    ):
        (copies / name).mkdir(parents=True)
        (copies / name / "encoder_eval.json").write_text(json.dumps(scores))
        (copies / name / "meta.json").write_text(json.dumps({"objective": objective}))
        (copies / name / "config.yaml").write_text("model: {encoder: vit-tiny, image_size: 64}\ntrain: {steps: 300}\n")
    from mmbench_cli.report import tables

    clip, mae = tables.encoder_rows(load.load_study([grid_dir]))
    assert clip["quality"] == "image→text retrieval top-1 43.8% (chance 0.8%, 128 held-out pairs)"
    assert clip["objective"] == "clip" and clip["resolution"] == "64 px" and clip["steps"] == "300"
    assert clip["used_by"] == "6 run(s): res_tokens"
    assert mae["quality"] == "masked-patch reconstruction loss 0.0123 (128 held-out images)"
    assert mae["used_by"] == "2 run(s): res_tokens"
    flagged = {"val_retrieval_top1": 0.015625, "val_retrieval_chance": 1 / 128, "val_pairs": 128}  # the collapsed 32 px one
    (copies / "vit-tiny-clip-64px-abc" / "encoder_eval.json").write_text(json.dumps(flagged))
    [collapsed, _] = tables.encoder_rows(load.load_study([grid_dir]))
    assert collapsed["quality"].endswith("(chance 0.8%, 128 held-out pairs) — near chance: the encoder did not learn")
    bow = {"val_bow_r_precision": 0.78, "val_bow_r_precision_prior": 0.612, "val_images": 128, "val_bow_loss": 17.7}
    (copies / "vit-tiny-clip-64px-abc" / "encoder_eval.json").write_text(json.dumps(bow))
    [words, _] = tables.encoder_rows(load.load_study([grid_dir]))
    assert words["quality"] == "caption-word R-precision 78.0% (word-frequency prior 61.2%, 128 held-out images)"
    shutil.rmtree(copies / "vit-tiny-clip-64px-abc")
    [missing, _] = tables.encoder_rows(load.load_study([grid_dir]))
    assert missing["quality"].startswith("encoder_eval.json not found")
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(grid_dir), "-o", str(out), "--resamples", "200", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "## Pre-trained encoders" in (out / "report.md").read_text()
    page = (out / "index.html").read_text()
    assert 'id="table-encoders"' in page and "vit-tiny-mae-64px-&lt;b&gt;" in page and "vit-tiny-mae-64px-<b>" not in page
    (copies / "vit-tiny-mae-64px-<b>" / "config.yaml").write_text("model: [unclosed\n")
    result = runner.invoke(app, ["report", str(grid_dir), "-o", str(tmp_path / "bad"), "--no-plots"])
    assert result.exit_code == 2 and "config.yaml: not valid YAML" in result.output


def test_rows_flag_cells_still_improving_and_the_summary_says_it(tmp_path: Path) -> None:
    """A cell whose metric rose by more than its CI over its last two checkpoints is "not converged": the flag is in
    the row and in the Summary sentence; a grid evaluated at one checkpoint has no such flag. The sentence names the
    better arm first with a positive difference, its CI turned with it."""
    grid = write_grid(tmp_path / "rising", resolutions=(32, 64), seeds=(0, 1), eval_steps=(0, 4, 8), samples=300)
    found = findings.study_findings(load.load_study([grid]), claims={})
    caption = next(row for row in found.rows if row.measure.key == "caption@0" and row.kind == "main")
    assert caption.contrast == "resolution 64 − 32" and caption.result.diff > 0
    assert any(flag.startswith("not converged in 2 of 2 cells") for flag in caption.flags)
    sentence = findings.summary_sentence(caption)
    assert sentence.startswith("resolution 64 beats 32 by ") and "not converged" in sentence
    flat = write_grid(tmp_path / "once", resolutions=(32, 64), seeds=(0, 1), eval_steps=(8,), samples=300)
    assert not any(row.flags for row in findings.study_findings(load.load_study([flat]), claims={}).rows)
    flipped = findings.Finding(caption.grid, "resolution 32 − 64", "main", "resolution", "", caption.measure,
                               caption.value_mean, caption.base_mean,
                               stats.Contrast(-caption.result.diff, caption.result.se, caption.result.se_queries,
                                              caption.result.se_seeds, caption.result.df, -caption.result.ci_high,
                                              -caption.result.ci_low, caption.result.p_value, caption.result.n,
                                              caption.result.clusters, caption.result.seeds, True),
                               1, True, verdict=caption.verdict, arms=("32", "64"))
    assert findings.summary_sentence(flipped).split(" — ")[0] == sentence.split(" — ")[0]
