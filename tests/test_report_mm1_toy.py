"""The committed toy-study reports (reports/mm1-toy/ and its second edition reports/mm1-toy-v2/): Findings first,
within their size budget, and every verdict their READMEs quote agrees with the Findings table (the README's numbers
are the report's, as the report rounds them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPORTS = Path(__file__).resolve().parents[1] / "reports"
# report dir -> (at least this many intervals quoted, at least this many of them with a verdict checked)
EDITIONS = {"mm1-toy": (40, 20), "mm1-toy-v2": (15, 8)}
# index.html size budget: the first edition's 8 grids were asked to fit in 2 MB (one or few checkpoints evaluated);
# the second edition evaluates every checkpoint of 5 grids x 3 seeds, so each grid carries three dynamics plots
PAGE_BUDGET = {"mm1-toy": 2_000_000, "mm1-toy-v2": 2_600_000}
INTERVAL = re.compile(r"([+−-]?\d+(?:\.\d+)?)%? \[([−-]?\d+(?:\.\d+)?), ([−-]?\d+(?:\.\d+)?)\]")
VERDICTS = ("**effect**", "direction, not significant", "no detectable effect")


@pytest.fixture(params=sorted(EDITIONS))
def edition(request: pytest.FixtureRequest) -> str:
    """Each committed edition of the study's report."""
    if not (REPORTS / request.param / "report.md").is_file():
        pytest.skip(f"no committed report in reports/{request.param}")
    return request.param


def _findings_rows(markdown: str) -> list[str]:
    part = markdown[markdown.index("## Findings"):markdown.index('<a id="grid-')]
    return [line for line in part.splitlines() if line.startswith("| ")]


def test_findings_come_first_and_the_page_fits_its_budget(edition: str) -> None:
    report = REPORTS / edition
    page = (report / "index.html").read_text(encoding="utf-8")
    assert page.index('<section id="findings">') < page.index('<section id="grid-')
    assert page[page.index("<table"):].startswith('<table class="data findings"')
    assert (report / "index.html").stat().st_size <= PAGE_BUDGET[edition]
    markdown = (report / "report.md").read_text(encoding="utf-8")
    assert markdown.index("## Findings") < markdown.index("## Grid:")


def test_readme_numbers_and_verdicts_agree_with_the_report(edition: str) -> None:
    report = REPORTS / edition
    least_quoted, least_checked = EDITIONS[edition]
    readme = (report / "README.md").read_text(encoding="utf-8")
    markdown = (report / "report.md").read_text(encoding="utf-8")
    plain = markdown.replace("\\[", "[").replace("\\]", "]")
    rows = _findings_rows(markdown)
    quoted = list(INTERVAL.finditer(readme))
    assert len(quoted) > least_quoted
    checked = 0
    for match in quoted:
        value, low, high = match.groups()
        interval = f"{value} [{low}, {high}]"
        assert interval in plain, f"README quotes {interval!r}, which the report does not show"
        said = next((v for v in VERDICTS if readme[match.end():match.end() + 40].lstrip(" ,;)").startswith(
            v if v.startswith("**") else v)), None)
        if said is None:
            continue
        verdict = said.strip("*")
        matching = [row for row in rows if f"| {interval} |" in row]
        assert any(f"| {said} " in row or f"| {verdict} " in row for row in matching), (
            f"README calls {interval} {verdict!r}; the Findings rows with it: {matching}")
        checked += 1
    assert checked > least_checked
