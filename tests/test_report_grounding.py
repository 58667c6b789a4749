"""mm report's "Caption grounding" table: colour/shape precision of synthetic captions against chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.report import grounding, load
from mmbench_cli.rundir import ResultCell

runner = CliRunner()
VOCABULARY = {"colour": ["red", "green", "blue", "yellow", "purple", "orange"],  # as mm eval records it
              "shape": ["circle", "square", "triangle", "diamond", "star"]}
REFERENCES = {  # query -> references (an image of a red circle and a blue square; one of a green star)
    "c1": ["a red circle and a blue square.", "there is a blue square and a red circle on a grey background."],
    "c2": ["a large green star.", "a picture of a large green star."],
}
PREDICTIONS = {  # run -> query -> generated caption
    "grounded": {"c1": "a red circle and a blue square.", "c2": "two green stars."},
    # colours: c1 names red (right) and yellow (wrong) = 50%; c2 names none (left out). shapes: c1 star = 0%,
    # c2 star = 100%
    "guessing": {"c1": "a red star and a yellow thing.", "c2": "a star."},
}


def write_caption_run(run_dir: Path, predictions: dict[str, str], vocabulary: dict | None = VOCABULARY) -> None:
    """A run evaluated at step 5 on synthetic-caption 0-shot, with per-sample rows (and the world's words in its
    results cell unless ``vocabulary`` is None)."""
    rows = [{"id": q, "prediction": p, "references": REFERENCES[q], "score": 10.0} for q, p in predictions.items()]
    rel = "eval/samples/step_5/synthetic-caption.0shot.seed0.jsonl"
    (run_dir / rel).parent.mkdir(parents=True)
    (run_dir / rel).write_text("".join(json.dumps(row) + "\n" for row in rows))
    (run_dir / "config.yaml").write_text("name: toy\n")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 2.0}) + "\n")
    entry = {"family": "caption", "metric": "CIDEr", "value": 10.0, "n": len(rows), "seeds": [10.0], "samples": [rel]}
    if vocabulary is not None:
        entry["vocabulary"] = vocabulary
    (run_dir / "eval" / "step_5.json").write_text(json.dumps({"step": 5, "tasks": {"synthetic-caption": {"0": entry}}}))


def test_query_grounding_by_hand() -> None:
    cell = ResultCell(family="caption", metric="CIDEr", value=1.0, extra={"vocabulary": VOCABULARY})
    kinds = grounding.vocabularies(cell)
    assert list(kinds) == ["colour", "shape"]
    assert grounding.named("Two Green STARS and a star, greenish", kinds["shape"]) == {"star"}
    assert grounding.named("Two Green STARS and a star, greenish", kinds["colour"]) == {"green"}
    row = {"prediction": PREDICTIONS["guessing"]["c1"], "references": REFERENCES["c1"]}
    assert grounding.query_grounding(row, kinds["colour"]) == pytest.approx((50.0, 100 * 2 / 6))
    assert grounding.query_grounding(row, kinds["shape"]) == pytest.approx((0.0, 100 * 2 / 5))
    assert grounding.query_grounding({"prediction": "a star.", "references": REFERENCES["c2"]}, kinds["colour"]) is None
    assert grounding.vocabularies(ResultCell(family="caption", metric="CIDEr", value=1.0)) == {}


def test_grounding_table_in_the_report(tmp_path: Path) -> None:
    for name, predictions in PREDICTIONS.items():
        write_caption_run(tmp_path / "runs" / name, predictions)
    study = load.load_study([tmp_path / "runs" / name for name in PREDICTIONS])
    table = grounding.grounding_table(study, resamples=100)
    assert table is not None
    values = table.values
    assert values.loc["grounded", "synthetic-caption 0-shot colour precision"] == pytest.approx(100.0)
    assert values.loc["guessing", "synthetic-caption 0-shot colour precision"] == pytest.approx(50.0)
    assert values.loc["guessing", "synthetic-caption 0-shot colour chance"] == pytest.approx(100 * 2 / 6)
    assert values.loc["guessing", "synthetic-caption 0-shot shape precision"] == pytest.approx(50.0)
    assert values.loc["grounded", "synthetic-caption 0-shot shape chance"] == pytest.approx((40 + 20) / 2)

    out = tmp_path / "report"
    result = runner.invoke(app, ["report", *(str(tmp_path / "runs" / n) for n in PREDICTIONS), "-o", str(out),
                                 "--resamples", "100", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert 'id="caption-grounding"' in (out / "index.html").read_text()
    assert "## Caption grounding (synthetic world)" in (out / "report.md").read_text()


def test_no_grounding_table_without_synthetic_caption_samples(tmp_path: Path) -> None:
    run_dir = tmp_path / "coco"
    write_caption_run(run_dir, PREDICTIONS["grounded"])
    for path in (run_dir / "eval" / "samples" / "step_5").iterdir():
        path.unlink()
    assert grounding.grounding_table(load.load_study([run_dir])) is None


def test_no_grounding_table_without_a_recorded_vocabulary(tmp_path: Path) -> None:
    """The world's words come from the results cell (reports do not import the synthetic world): none, no table."""
    run_dir = tmp_path / "old"
    write_caption_run(run_dir, PREDICTIONS["grounded"], vocabulary=None)
    assert grounding.grounding_table(load.load_study([run_dir])) is None
