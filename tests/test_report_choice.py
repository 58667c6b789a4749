"""Reports show multiple-choice and POPE results like the other families: their own columns, priors and chance
levels, and example outputs with the options and the one chosen (from a real `mm eval` of a tiny model)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmbench_cli.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_report_of_multiple_choice_and_pope_results(tmp_path: Path) -> None:
    from model_fixtures import save_tiny_model
    from test_eval import TINY

    model = save_tiny_model(tmp_path / "model", [*TINY, "data.num_test_images=12"])
    evaluated = runner.invoke(app, ["eval", str(model), "--tasks", "synthetic-choice", "synthetic-pope-random",
                                    "--shots", "0", "--num-samples", "8"])
    assert evaluated.exit_code == 0, evaluated.output
    reported = runner.invoke(app, ["report", str(model), "-o", str(tmp_path / "report")])
    assert reported.exit_code == 0, reported.output
    with (tmp_path / "report" / "summary.csv").open() as handle:
        header = next(csv.reader(handle))
    assert "Multiple choice 0-shot" in header and "POPE 0-shot" in header
    text = (tmp_path / "report" / "report.md").read_text()
    assert "always the option position most often right in the demo split" in text
    assert "always the demo split's most common label" in text
    assert "chance (a uniform random answer): synthetic-choice 33.3, synthetic-pope-random 50.0" in text
    assert "chose " in text and "(options: A. " in text  # example outputs show the options and the choice
    from mmbench_cli.report.findings import measures
    from mmbench_cli.report.load import load_study

    # Findings test contrasts on the new families like the others (a grid of such runs gets them)
    assert {m.key for m in measures(load_study([model]))} >= {"multiple_choice@0", "yes_no@0"}
