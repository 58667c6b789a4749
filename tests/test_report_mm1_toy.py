"""The committed toy-study report (reports/mm1-toy/): Findings first, within its size budget, and every verdict its
README quotes agrees with the Findings table (the README's numbers are the report's, as the report rounds them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[1] / "reports" / "mm1-toy"
INTERVAL = re.compile(r"([+−-]?\d+(?:\.\d+)?)%? \[([−-]?\d+(?:\.\d+)?), ([−-]?\d+(?:\.\d+)?)\]")
VERDICTS = ("**effect**", "direction, not significant", "no detectable effect")

pytestmark = pytest.mark.skipif(not (REPORT / "report.md").is_file(), reason="no committed toy-study report")


def _findings_rows(markdown: str) -> list[str]:
    part = markdown[markdown.index("## Findings"):markdown.index('<a id="grid-')]
    return [line for line in part.splitlines() if line.startswith("| ")]


def test_findings_come_first_and_the_page_fits_its_budget() -> None:
    page = (REPORT / "index.html").read_text(encoding="utf-8")
    assert page.index('<section id="findings">') < page.index('<section id="grid-')
    assert page[page.index("<table"):].startswith('<table class="data findings"')
    assert (REPORT / "index.html").stat().st_size <= 2_000_000
    markdown = (REPORT / "report.md").read_text(encoding="utf-8")
    assert markdown.index("## Findings") < markdown.index("## Grid:")


def test_readme_numbers_and_verdicts_agree_with_the_report() -> None:
    readme = (REPORT / "README.md").read_text(encoding="utf-8")
    markdown = (REPORT / "report.md").read_text(encoding="utf-8")
    plain = markdown.replace("\\[", "[").replace("\\]", "]")
    rows = _findings_rows(markdown)
    quoted = list(INTERVAL.finditer(readme))
    assert len(quoted) > 40
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
    assert checked > 20
