"""The committed reports (reports/mm1-toy/, its second edition reports/mm1-toy-v2/, examples/reports/*): a Summary
first, within their size budget, no machine-local paths or stale seed sentences, no table cell bold unless its Findings
row is an effect, and every verdict the READMEs (the study READMEs and the repository README) quote agrees with the
Findings table, sign included (the README's numbers are the report's, as the report rounds them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPORTS = Path(__file__).resolve().parents[1] / "reports"
# study report dir -> (more than this many intervals quoted, more than this many of them with a verdict checked)
EDITIONS = {"mm1-toy": (40, 20), "mm1-toy-v2": (15, 8), "stages": (5, 4)}
# index.html size budget: the first edition's 8 grids were asked to fit in 2 MB (one or few checkpoints evaluated);
# the second edition evaluates every checkpoint of 5 grids x 3 seeds, so each grid carries three dynamics plots
PAGE_BUDGET = {"mm1-toy": 2_000_000, "mm1-toy-v2": 2_000_000, "stages": 2_000_000}
ROOT = REPORTS.parent
# every committed report: the studies' and the main job's example (the README cites all of them)
COMMITTED = sorted([*REPORTS.glob("*/report.md"), *(ROOT / "examples" / "reports").glob("*/report.md")])
ONE_SEED_SENTENCE = "With one seed per cell the training-seed noise is not measured"
SIGNED = re.compile(r"(?<![\d.])([+−-]\d+(?:\.\d+)?|0(?:\.0+)?) \[([−-]?\d+(?:\.\d+)?), ([−-]?\d+(?:\.\d+)?)\]")
INTERVAL = re.compile(r"([+−-]?\d+(?:\.\d+)?)%? \[([−-]?\d+(?:\.\d+)?), ([−-]?\d+(?:\.\d+)?)\]")
VERDICTS = ("**effect**", "direction, not significant", "no detectable effect")


@pytest.fixture(params=sorted(EDITIONS))
def edition(request: pytest.FixtureRequest) -> str:
    """Each committed edition of the study's report."""
    if not (REPORTS / request.param / "report.md").is_file():
        pytest.skip(f"no committed report in reports/{request.param}")
    return request.param


def _findings_rows(markdown: str) -> list[str]:
    start = markdown.index("## Findings")
    end = markdown.find('<a id="grid-')
    part = markdown[start:end if end > 0 else markdown.index("\n## ", start + 5)]
    return [line for line in part.splitlines() if line.startswith("| ")]


def _findings_by_grid(markdown: str) -> dict[str, list[list[str]]]:
    """grid -> its Findings rows as cells, each row's contrast carried down from the row that names it."""
    grids: dict[str, list[list[str]]] = {}
    grid, contrast = "", ""
    start = markdown.index("## Findings")
    end = markdown.find('<a id="grid-')
    for line in markdown[start:end if end > 0 else markdown.index("\n## ", start + 5)].splitlines():
        if line.startswith("### Findings: "):
            grid = line.removeprefix("### Findings: ").replace("\\_", "_")
        elif line.startswith("| ") and not line.startswith("| contrast"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            contrast = cells[0] or contrast
            grids.setdefault(grid, []).append([contrast.replace("\\_", "_"), *cells[1:]])
    return grids


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_every_committed_report_opens_with_its_summary_and_says_nothing_stale(path: Path) -> None:
    markdown = path.read_text(encoding="utf-8")
    page = (path.parent / "index.html").read_text(encoding="utf-8")
    assert "## Summary" in "\n".join(markdown.splitlines()[:25])
    assert page.index("<h2>Summary</h2>") < page.index('<section id="findings">')
    for text in (markdown, page):
        assert "/tmp/" not in text and "mm report: grid\n" not in text and "mm report: g\n" not in text
    several = any(row[5].split()[0].isdigit() and int(row[5].split()[0]) > 1
                  for rows in _findings_by_grid(markdown).values() for row in rows)
    if several:
        assert ONE_SEED_SENTENCE not in markdown and ONE_SEED_SENTENCE not in page


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_no_cell_is_bold_unless_its_findings_row_is_an_effect(path: Path) -> None:
    """One test everywhere: a bold number in a table is the better side of a Findings row with the verdict effect."""
    markdown = path.read_text(encoding="utf-8")
    findings = _findings_by_grid(markdown)
    grid = next(iter(findings), "")
    checked = 0
    for block in re.split(r"\n(?=#{2,3} )", markdown):
        heading = block.splitlines()[0]
        if heading.startswith("## Grid: "):
            grid = heading.removeprefix("## Grid: ").replace("\\_", "_")
        if "## Findings" in heading or "## Summary" in heading:
            continue
        lines = [line for line in block.splitlines() if line.startswith("| ")]
        if not lines:
            continue
        header = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
        for line in lines[1:]:
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            for column, cell in zip(header[1:], cells[1:], strict=False):
                if "**" not in cell:
                    continue
                assert heading.lstrip("# ").startswith("Effect of "), f"{path}: bold outside an effect table: {line}"
                axis = heading.lstrip("# ").removeprefix("Effect of ").replace("\\_", "_")
                value = cells[0].replace("\\_", "_")
                rows = [row for row in findings.get(grid, []) if row[0].startswith(f"{axis} ")
                        and value in row[0].removeprefix(f"{axis} ").split(" − ") and row[1].startswith(column + " (")]
                assert any(row[7] == "**effect**" for row in rows), f"{path}: {grid} {axis}={value} {column} is bold"
                checked += 1
    effects = [row for rows in findings.values() for row in rows if row[7] == "**effect**" and " × " not in row[0]
               and not row[0].startswith("shots ") and not row[1].startswith("Colour grounding")]
    assert checked >= 1 if effects else checked == 0  # an effect against the base shows in its effect table


def test_findings_come_first_and_the_page_fits_its_budget(edition: str) -> None:
    report = REPORTS / edition
    page = (report / "index.html").read_text(encoding="utf-8")
    first_grid = page.find('<section id="grid-')  # a one-grid study has no per-grid sections
    assert page.index('<section id="findings">') < (first_grid if first_grid >= 0 else len(page))
    assert page[page.index("<table"):].startswith('<table class="data findings"')
    assert (report / "index.html").stat().st_size <= PAGE_BUDGET[edition]
    markdown = (report / "report.md").read_text(encoding="utf-8")
    assert markdown.index("## Findings") < (markdown.index("## Grid:") if "## Grid:" in markdown else len(markdown))


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


def test_main_readme_quotes_findings_rows_with_their_sign_and_verdict() -> None:
    """The repository README's finding sentences quote Findings rows as ``+37 [34, 40]`` (signed, in the row's
    orientation); each is in a cited report's Findings with that sign, and a verdict named after it is the row's."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [row for path in COMMITTED for rows in _findings_by_grid(path.read_text(encoding="utf-8")).values()
            for row in rows]
    prose = "\n".join(line for line in readme.splitlines() if not line.lstrip().startswith("|"))
    quoted = list(SIGNED.finditer(prose))
    assert len(quoted) >= 4
    for match in quoted:
        effect = f"{match.group(1)} [{match.group(2)}, {match.group(3)}]".replace("-", "−")
        matching = [row for row in rows if row[3].replace("\\[", "[").replace("\\]", "]") == effect]
        assert matching, f"README quotes {effect!r}, which no committed Findings row shows (sign included)"
        after = prose[match.end():match.end() + 40].lstrip(" ,;)")
        said = next((v.strip("*") for v in VERDICTS if after.startswith(v) or after.startswith(v.strip("*"))), None)
        if said is not None:
            assert any(row[7].strip("*").startswith(said) for row in matching), (effect, said, matching)
    unsigned = re.findall(r"(?<![+−\d.-])\b(?!0(?:\.0+)? )\d+(?:\.\d+)? (?:CIDEr |VQA points |points )?\[[−-]?\d",
                          prose)
    assert not unsigned, f"README quotes intervals without a sign: {unsigned}"
