"""mm report's "VQA accuracy by answer type" table, from per-sample files with hand-known scores."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_fixtures import write_grid
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.report import answer_types, load

runner = CliRunner()
ODD_TYPE = "<i>odd</i>"  # an explicit answer_type outside VQAv2's three: its own column, escaped

# VQA queries: id -> (reference answers, explicit answer_type or None). Types: q1, q2 yes/no; q3, q4, q5 number
# ("2", the word "three", "1,000"); q6, q7 other; q8's references say yes but its row says "other"; q9 is ODD_TYPE.
QUERIES = {
    "q1": (["yes"] * 7 + ["no"] * 3, None),
    "q2": (["no"] * 6 + ["yes"] * 4, None),
    "q3": (["2"] * 8 + ["3", "two"], None),
    "q4": (["three"] * 5 + ["3"] * 4 + ["many"], None),
    "q5": (["1,000"] * 9 + ["lots"], None),
    "q6": (["red"] * 10, None),
    "q7": (["on the table"] * 6 + ["yes"] * 2 + ["table"] * 2, None),
    "q8": (["yes"] * 10, "other"),
    "q9": (["blue"] * 10, ODD_TYPE),
}
# Run -> VQA 0-shot score per query and demo seed (seed 0, seed 1); 8-shot: one score for every query.
ZERO_SHOT = {
    "lr=1,seed=0": {"q1": (100, 0), "q2": (0, 0), "q3": (60, 60), "q4": (30, 30), "q5": (90, 90), "q6": (100, 60),
                    "q7": (40, 40), "q8": (20, 20), "q9": (77, 77)},
    "lr=1,seed=1": {"q1": (100, 100), "q2": (100, 100), "q3": (0, 0), "q4": (0, 0), "q5": (30, 30), "q6": (100, 100),
                    "q7": (100, 100), "q8": (100, 100), "q9": (77, 77)},
    "lr=2,seed=0": {q: (50, 50) for q in QUERIES},
}
EIGHT_SHOT = {"lr=1,seed=0": 70, "lr=1,seed=1": 70, "lr=2,seed=0": 20}
# Hand-computed (demo seeds averaged per query, then the mean over the type's queries, then over training seeds):
#   lr=1,seed=0: yes/no (50 + 0)/2 = 25; number (60 + 30 + 90)/3 = 60; other (80 + 40 + 20)/3 = 46.667; odd 77
#   lr=1,seed=1: yes/no (100 + 100)/2 = 100; number (0 + 0 + 30)/3 = 10; other (100 + 100 + 100)/3 = 100; odd 77
#   cell lr=1 = mean of its two seeds; cell lr=2 scores 50 everywhere
EXPECTED = {
    "lr=1": {"yes/no": (25 + 100) / 2, "number": (60 + 10) / 2, "other": (140 / 3 + 100) / 2, ODD_TYPE: 77.0},
    "lr=2": {"yes/no": 50.0, "number": 50.0, "other": 50.0, ODD_TYPE: 50.0},
}
COUNTS = {"yes/no": 2, "number": 3, "other": 3, ODD_TYPE: 1}


def _write_samples(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_vqa_run(run_dir: Path, cell: str, samples: bool = True) -> None:
    """A run dir evaluated at step 10 on vqav2 (0, 4, 8 shots), a captioning and a text task."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: toy\n")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 2.0}) + "\n")
    tasks: dict = {}

    def add(task: str, family: str, shots: str, per_seed: list[dict[str, float]], refs: dict) -> None:
        paths = []
        for seed, scores in enumerate(per_seed):
            rel = f"eval/samples/step_10/{task}.{shots}shot.seed{seed}.jsonl"
            rows = []
            for query, score in scores.items():
                row = {"id": query, "prediction": "yes", "references": refs[query][0], "score": score,
                       "raw": "yes", "demos": [], "question": f"question {query}?"}
                if refs[query][1] is not None:
                    row["answer_type"] = refs[query][1]
                rows.append(row)
            if samples:
                _write_samples(run_dir / rel, rows)
                paths.append(rel)
        seed_values = [sum(s.values()) / len(s) for s in per_seed]
        entry = {"family": family, "metric": "VQA accuracy", "value": sum(seed_values) / len(seed_values),
                 "n": len(per_seed[0]), "seeds": seed_values}
        if paths:
            entry["samples"] = paths
        tasks.setdefault(task, {})[shots] = entry

    zero = ZERO_SHOT[cell]
    add("vqav2", "vqa", "0", [{q: s[0] for q, s in zero.items()}, {q: s[1] for q, s in zero.items()}], QUERIES)
    add("vqav2", "vqa", "4", [{q: 5.0 for q in QUERIES}], QUERIES)
    add("vqav2", "vqa", "8", [{q: float(EIGHT_SHOT[cell]) for q in QUERIES}], QUERIES)
    # yes/no answers too, but not VQA: no answer-type columns for these
    add("coco-caption", "caption", "0", [{"c1": 30.0, "c2": 90.0}], {"c1": (["yes"], None), "c2": (["4"], None)})
    add("boolq", "text", "0", [{"b1": 100.0, "b2": 0.0}], {"b1": (["yes"], None), "b2": (["no"], None)})
    (run_dir / "eval").mkdir(exist_ok=True)
    (run_dir / "eval" / "step_10.json").write_text(json.dumps({"step": 10, "tasks": tasks}))


def write_vqa_grid(grid_dir: Path, samples: bool = True) -> Path:
    cells = []
    for cell in ZERO_SHOT:
        write_vqa_run(grid_dir / cell, cell, samples)
        cells.append({"id": cell, "labels": load.parse_cell_id(cell)})
    axes = [{"name": "lr", "labels": ["1", "2"]}, {"name": "seed", "labels": ["0", "1"]}]
    (grid_dir / "grid.json").write_text(json.dumps({"name": grid_dir.name, "axes": axes, "cells": cells}))
    return grid_dir


class _Tables(HTMLParser):
    """Headers and rows (first text of each cell, without its CI span) of every <table> with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, list]] = {}
        self._table: dict[str, list] | None = None
        self._cell: list[str] | None = None
        self._in_ci = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table" and attributes.get("id"):
            self._table = self.tables.setdefault(str(attributes["id"]), {"headers": [], "rows": []})
        elif self._table is not None and tag == "tr":
            self._table["rows"].append([])
        elif self._table is not None and tag in ("th", "td"):
            self._cell = []
        elif tag == "span" and attributes.get("class") == "ci":
            self._in_ci = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._in_ci = False
        elif tag in ("th", "td") and self._table is not None and self._cell is not None:
            text = "".join(self._cell).strip()
            (self._table["headers"] if tag == "th" else self._table["rows"][-1]).append(text)
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None and not self._in_ci:
            self._cell.append(data)


def _table(page: str, table_id: str) -> dict[str, dict[str, str]]:
    """row label -> column header -> shown text of the table ``table-<table_id>``."""
    parser = _Tables()
    parser.feed(page)
    table = parser.tables[f"table-{table_id}"]
    headers = table["headers"]
    return {row[0]: dict(zip(headers[1:], row[1:], strict=True)) for row in table["rows"] if row}


def _value(text: str) -> float:
    return float(text.split()[0])


def _shown(text: str, value: float) -> bool:
    """Whether the table's text shows ``value`` at the precision it is rounded to (what its CI supports)."""
    number = text.split()[0]
    decimals = len(number.partition(".")[2])
    return abs(float(number) - value) <= 0.5 * 10 ** -decimals + 1e-9


def _report(args: list[str]) -> None:
    result = runner.invoke(app, ["report", *args, "--resamples", "200", "--no-plots"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def grids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_vqa_grid(root / "gridA")
    write_vqa_grid(root / "gridB")
    return root


def _check_numbers(table: dict[str, dict[str, str]]) -> None:
    assert list(table) == ["lr=1", "lr=2"]
    headers = list(table["lr=1"])
    expected_headers = [f"vqav2 {k}-shot {kind} (n={n})" for k in ("0", "8") for kind, n in COUNTS.items()]
    assert headers == expected_headers  # fewest and most shots only, VQA tasks only, types in VQAv2's order
    for cell, by_type in EXPECTED.items():
        for kind, value in by_type.items():
            assert _shown(table[cell][f"vqav2 0-shot {kind} (n={COUNTS[kind]})"], value)
            eight = 70.0 if cell == "lr=1" else 20.0
            assert _value(table[cell][f"vqav2 8-shot {kind} (n={COUNTS[kind]})"]) == pytest.approx(eight)
    # two training seeds in cell lr=1: their spread is shown, as in the other tables (yes/no: 25 and 100), rounded
    # to what the CI supports ([50, 75]: whole numbers)
    assert table["lr=1"]["vqav2 0-shot yes/no (n=2)"] == "62 ±53"
    assert "±" not in table["lr=2"]["vqav2 0-shot number (n=3)"]


def test_single_study_table_matches_hand_computed_means(grids: Path, tmp_path: Path) -> None:
    out = tmp_path / "single"
    _report([str(grids / "gridA"), "-o", str(out)])
    page = (out / "index.html").read_text()
    assert page.count('id="answer-types"') == 1 and 'href="#answer-types"' in page
    assert page.index('id="tasks"') < page.index('id="answer-types"')
    _check_numbers(_table(page, "answer-types"))
    # the interval is over the type's queries: the lr=2 cell scores 50 on every query, so it has no width
    section = page[page.index('id="answer-types"'):page.index('id="checkpoints"')]
    assert "[50, 50]" in section
    # user strings are escaped: the odd answer type is text, not markup
    assert "&lt;i&gt;odd&lt;/i&gt;" in section and "<i>" not in page
    assert "coco-caption" not in section and "boolq" not in section and "vqav2 4-shot" not in section

    markdown = (out / "report.md").read_text()
    part = markdown[markdown.index("## VQA accuracy by answer type"):markdown.index("## Repeated checkpoints")]
    assert "vqav2 0-shot yes/no (n=2)" in part and "62 ±53 \\[50, 75\\]" in part
    assert "&lt;i&gt;odd&lt;/i&gt;" in part and "<i>" not in markdown


def test_each_grid_section_has_its_own_table(grids: Path, tmp_path: Path) -> None:
    out = tmp_path / "multi"
    _report([str(grids / "gridA"), str(grids / "gridB"), "-o", str(out)])
    page = (out / "index.html").read_text()
    assert 'id="answer-types"' not in page  # no merged table across grids
    for grid in ("gridA", "gridB"):
        anchor = f"grid-{grid}-answer-types"
        assert page.count(f'id="{anchor}"') == 1 and f'href="#{anchor}"' in page
        _check_numbers(_table(page, anchor))
    assert page.index('id="grid-gridA-tasks"') < page.index('id="grid-gridA-answer-types"') < page.index('id="grid-gridB"')
    markdown = (out / "report.md").read_text()
    assert markdown.count("### VQA accuracy by answer type") == 2


def test_no_table_without_sample_files(tmp_path: Path) -> None:
    grid = write_vqa_grid(tmp_path / "runs" / "nosamples", samples=False)
    out = tmp_path / "report"
    _report([str(grid), "-o", str(out)])
    page = (out / "index.html").read_text()
    assert 'id="tasks"' in page and "answer-types" not in page and "by answer type" not in page
    assert "by answer type" not in (out / "report.md").read_text()

    # sample files of an earlier checkpoint do not count: the table reads the last evaluated one only
    write_vqa_grid(tmp_path / "runs" / "with", samples=True)
    for cell in ZERO_SHOT:
        shutil.copytree(tmp_path / "runs" / "with" / cell / "eval" / "samples" / "step_10",
                        grid / cell / "eval" / "samples" / "step_5")
    _report([str(grid), "-o", str(out)])
    assert "answer-types" not in (out / "index.html").read_text()


def test_no_table_when_every_query_has_one_answer_type(tmp_path: Path) -> None:
    """The shared fixture's VQA references are all 'other' answers: the split would repeat the per-task table."""
    grid = write_grid(tmp_path / "runs" / "toy", eval_steps=(8,), samples=5)
    out = tmp_path / "report"
    _report([str(grid), "-o", str(out)])
    assert "answer-types" not in (out / "index.html").read_text()


@pytest.mark.parametrize(
    ("references", "expected"),
    [
        (["yes"] * 6 + ["no"] * 4, "yes/no"),
        (["No."] * 3 + ["blue"] * 2, "yes/no"),  # VQA answers are compared lowercased, without a final period
        (["2"] * 3 + ["two"] * 2, "number"),
        (["twenty"] * 2 + ["20"], "number"),
        (["1,000"], "number"),
        (["2.5"], "number"),
        ([" 12 "], "number"),
        (["twenty one"], "other"),
        (["red"] * 5 + ["yes"] * 4, "other"),
        (["dog", "yes"], "other"),  # a tie goes to the answer listed first
        ([], "other"),
        ("yes", "other"),  # not a list of answers
    ],
)
def test_infer_answer_type(references: object, expected: str) -> None:
    assert answer_types.infer_answer_type(references) == expected


def test_explicit_answer_type_wins() -> None:
    assert answer_types.answer_type({"references": ["yes"], "answer_type": "number"}) == "number"
    assert answer_types.answer_type({"references": ["yes"], "answer_type": "Yes_No"}) == "yes/no"
    assert answer_types.answer_type({"references": ["yes"], "answer_type": ""}) == "yes/no"
    assert answer_types.answer_type({"references": ["3"], "answer_type": None}) == "number"
