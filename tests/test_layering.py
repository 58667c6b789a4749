"""The package's layering, enforced on the import graph (every import, module-level or inside a function).

    cli → ablate → {train, evaluate} → {data, model} → base (config, rundir, families, registry, progress, errors)
    report → base only (it reads run directories, never models, training code or datasets)

Plus the contracts that keep the run directory owned by one module and the task families in one table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmbench_cli"
BASE = {"config", "rundir", "families", "registry", "progress", "errors", "trackers", "resources"}
# layer -> the top-level parts of mmbench_cli it must not import
FORBIDDEN = {
    "model": {"data", "train", "evaluate", "ablate", "report", "cli"},
    "data": {"model", "train", "evaluate", "ablate", "report", "cli"},
    "train": {"evaluate", "ablate", "report", "cli"},
    "evaluate": {"train", "ablate", "report", "cli"},
    "report": {"model", "train", "data", "evaluate", "ablate", "cli"},
    "ablate": {"report", "cli"},
    **{base: {"model", "data", "train", "evaluate", "ablate", "report", "cli"} for base in BASE},
    "doctor": {"model", "data", "train", "evaluate", "ablate", "report", "cli"},  # `mm doctor`: checks, no models
}


def _part(path: Path) -> str:
    """The top-level part of mmbench_cli a file belongs to: its sub-package, or its module name."""
    relative = path.relative_to(PACKAGE)
    if relative.parts[:2] == ("resources", "evals"):
        return "evaluate"  # lm-eval's dataset builders for the packaged text tasks: evaluation code shipped as data
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported mmbench_cli part) for every import in a file, function-local ones included."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "mmbench_cli" and len(parts) > 1:
                found.add((node.lineno, parts[1]))
    return sorted(found)


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    violations = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports mmbench_cli.{target}"
        for path in _modules() if _part(path) == layer
        for line, target in _imports(path) if target in FORBIDDEN[layer]
    ]
    assert not violations, "\n".join(violations)


def test_checker_sees_function_local_imports(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from mmbench_cli.data.synthetic import COLORS\n    import mmbench_cli.model\n")
    assert _imports(sample) == [(2, "data"), (3, "model")]


def _lines_matching(pattern: re.Pattern[str], owner: str) -> list[str]:
    """``file:line: text`` of every line matching ``pattern`` in a module other than ``owner``."""
    return [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in _modules() if path.name != owner
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line)
    ]


def test_only_rundir_parses_the_run_dir_layout() -> None:
    """The step_<N> patterns and the run-dir file names are spelled out in rundir.py alone."""
    patterns = re.compile(r"""re\.compile\(r?["']\^?step_|["'](checkpoint\.json|metrics\.jsonl|meta\.json)["']""")
    offenders = _lines_matching(patterns, "rundir.py")
    assert not offenders, "\n".join(offenders)


def test_family_names_and_summary_keys_live_in_the_families_table() -> None:
    """No module but families.py spells out the MM1 summary keys or a family's display label table."""
    spelled = re.compile(r"""["'](caption_avg|vqa_avg)["']|FAMILY_LABELS\s*=|SUMMARY_KEYS\s*=\s*[{(]""")
    offenders = _lines_matching(spelled, "families.py")
    assert not offenders, "\n".join(offenders)


def _compared_names() -> list[str]:
    from mmbench_cli.families import FAMILIES, METRICS
    from mmbench_cli.registry import TASK_TYPES

    return sorted(set(FAMILIES) | set(METRICS) | set(TASK_TYPES.names()), key=len, reverse=True)


# The data layer's sample kinds and mixture types (caption, vqa, interleaved, text) are data types, not task families:
# it produces samples and cannot import the task types, so it is not held to this rule.
NAME_OWNERS = ("evaluate/task_types/", "families.py", "data/")
# A line about the training data mix compares mixture types (caption, interleaved, text), not families.
DATA_MIX = re.compile(r"data_mix|\.mix\b|DATA_TYPES")


def name_comparisons(text: str, names: list[str]) -> list[tuple[int, str]]:
    """(line, text) of each comparison of a family / task-type / metric name spelled as a string literal:
    ``x == "vqa"``, ``"CIDEr" != y``, ``x in ("caption", ...)``, ``FAMILIES["text"]``, ``METRICS["..."]``."""
    quoted = "|".join(re.escape(name) for name in names)
    literal = rf"""["']({quoted})["']"""
    pattern = re.compile(rf"""(==|!=)\s*{literal}|{literal}\s*(==|!=)|\bin\s*[(\[{{]\s*{literal}|"""
                         rf"""(FAMILIES|METRICS|TASK_TYPES)\s*(\[|\.get\()\s*{literal}""")
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)
            if pattern.search(line) and not DATA_MIX.search(line)]


def test_only_task_types_and_families_compare_family_task_type_or_metric_names() -> None:
    """Behaviour that differs by family, task type or metric lives in ``evaluate/task_types/`` (or the families
    table); everything else asks them (a task type's method, a ``Family`` field), never ``family == "vqa"``."""
    names = _compared_names()
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line}"
        for path in _modules() if not str(path.relative_to(PACKAGE)).startswith(NAME_OWNERS)
        for number, line in name_comparisons(path.read_text(encoding="utf-8"), names)
    ]
    assert not offenders, "\n".join(offenders)


def test_name_comparison_checker_sees_the_usual_spellings() -> None:
    names = ["vqa", "caption", "CIDEr"]
    code = ('if spec.family == "vqa": pass\nif "CIDEr" != m: pass\nok = x in ("caption", "y")\n'
            'f = FAMILIES["vqa"]\nlabel = "vqa avg"\nkinds = {"vqa": 1}\n'
            'share = [s for kind, s in cfg.data.data_mix.items() if kind != "caption"]\n')
    assert [line for line, _ in name_comparisons(code, names)] == [1, 2, 3, 4]
