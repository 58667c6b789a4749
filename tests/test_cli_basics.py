"""The CLI shell: help, version, fast start-up, user errors as exit 2."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from mmbench_cli import __version__
from mmbench_cli.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_every_command_with_examples() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("build", "pretrain", "ablate", "eval", "report"):
        assert command in result.output
    for command in ("build", "pretrain", "ablate", "eval", "report"):
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0, sub.output
        assert "Examples" in sub.output


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from mmbench_cli.cli import app\n"
        "heavy = [m for m in ('torch', 'transformers', 'lm_eval', 'ray', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_bad_override_is_one_line_exit_2() -> None:
    result = runner.invoke(app, ["build", "model.bogus=1"])
    assert result.exit_code == 2
    assert "model.bogus" in result.output
    assert "Traceback" not in result.output
