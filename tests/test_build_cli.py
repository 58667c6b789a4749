"""`mm build`: the anatomy table, shape check and save; bad input is one line and exit code 2."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import MECHANICS
from typer.testing import CliRunner

from mmbench_cli.cli import app

runner = CliRunner()
TINY = [*MECHANICS, "model.image_size=32", "model.lm=pythia-toy-1m", "model.num_image_tokens=4", "data.seq_len=64"]


def _one_line_error(args: list[str], *needles: str) -> None:
    result = runner.invoke(app, ["build", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_build_prints_anatomy_and_saves_a_loadable_model(tmp_path) -> None:
    out = tmp_path / "model"
    result = runner.invoke(app, ["build", *TINY, "model.connector=c-abstractor", "-o", str(out)])
    assert result.exit_code == 0, result.output
    for needle in ("vit-tiny", "CAbstractor", "GPTNeoXForCausalLM", "image tokens per image: 4", "GFLOP",
                   "shape check ok", "saved to"):
        assert needle in result.output.replace("\n", " ") or needle in result.output, needle
    from mmbench_cli.model import load_model

    model = load_model(out)
    assert model.num_image_tokens == 4 and model.config.connector == "c-abstractor"
    assert torch.isfinite(next(model.parameters())).all()


@pytest.mark.parametrize(("args", "needles"), [
    (["model.connector=pixelshuffle"], ("model.connector", "choose from", "c-abstractor")),
    (["model.num_image_tokens=-4"], ("model.num_image_tokens", "greater than 0")),
    (["model.num_image_tokens=10"], ("model.num_image_tokens", "allowed values: 1, 4, 9, 16")),
    (["model.connector=mlp"], ("model.num_image_tokens", "must be 16")),
    (["model.lm=pythia-toy-7b"], ("model.lm", "pythia-toy-2m")),
])
def test_bad_model_settings_exit_2(args: list[str], needles: tuple[str, ...]) -> None:
    _one_line_error([*TINY, *args], *needles)


def test_missing_and_garbled_yaml_exit_2(tmp_path) -> None:
    _one_line_error([str(tmp_path / "absent.yaml")], "absent.yaml", "no such config file")
    garbled = tmp_path / "garbled.yaml"
    garbled.write_text("model: {connector: [avgpool\n  lm: : :\n")
    _one_line_error([str(garbled)], "garbled.yaml", "not valid YAML")


def test_hf_path_that_is_not_a_checkpoint_exits_2(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error([*TINY, f"model.encoder=hf:{empty}"], "model.encoder", "no config.json")
    _one_line_error([*TINY, f"model.lm=hf:{tmp_path / 'nowhere'}"], "model.lm", "not a directory")
    (empty / "config.json").write_text('{"model_type": "vit"}')
    _one_line_error([*TINY, f"model.encoder=hf:{empty}"], "model.encoder", "safetensors")


def test_out_path_that_is_a_file_exits_2(tmp_path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    _one_line_error([*TINY, "-o", str(target)], "--out", "already holds a file")
