"""mm eval on bad input: damaged run-dir files and bad numbers are one line and exit 2, never a traceback,
and leave earlier results untouched; a skipped incomplete checkpoint is said out loud."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from model_fixtures import MECHANICS, save_tiny_model
from typer.testing import CliRunner

from mmbench_cli.cli import app

TINY = [*MECHANICS, "data.num_train_images=24", "data.num_val_images=4", "data.num_test_images=8", "model.lm=pythia-toy-2m"]
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir whose only checkpoint (step 0) is a randomly initialised tiny MLLM, evaluated once."""
    from mmbench_cli.evaluate.request import EvalRequest
    from mmbench_cli.evaluate.runner import evaluate
    from mmbench_cli.rundir import RunDir, atomic_write_json, file_content_hash

    run = RunDir(tmp_path_factory.mktemp("faults") / "run")
    checkpoint = save_tiny_model(run.checkpoint_dir(0), TINY, config_dir=run.path)
    atomic_write_json(checkpoint / "checkpoint.json",
                      {"step": 0, "content_hash": file_content_hash(checkpoint / "model.safetensors")})
    evaluate(EvalRequest(run.path, ["synthetic-vqa"], [0], 1, num_samples=2, progress=False))
    return run.path


def _one_line_exit_2(result) -> str:  # noqa: ANN001
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "error:" in text and len(text.splitlines()) == 1 and "Traceback" not in text, text
    return text


def _eval(run: Path, *extra: str):  # noqa: ANN202
    return runner.invoke(app, ["eval", str(run), "--tasks", "synthetic-vqa", "--shots", "0", "--num-samples", "2",
                               *extra])


@pytest.mark.parametrize(("option", "value"), [
    ("--num-samples", "-5"), ("--num-samples", "0"), ("--max-new-tokens", "-1"), ("--seeds", "-1"),
    ("--seeds", "0"), ("--batch-size", "0"), ("--batch-size", "-1"),
])
def test_bad_numbers_are_refused_not_replaced(tiny_run: Path, option: str, value: str) -> None:
    results = tiny_run / "eval" / "step_0.json"
    before = results.read_bytes()
    out = _one_line_exit_2(runner.invoke(app, ["eval", str(tiny_run), "--tasks", "synthetic-vqa", "--shots", "0",
                                               option, value]))
    assert option in out and value in out
    assert results.read_bytes() == before


@pytest.mark.parametrize(("name", "damage"), [
    ("tasks-list", lambda data: {**data, "tasks": []}),
    ("seed-ids-string", lambda data: {**data, "tasks": {"synthetic-vqa": {"0": {
        **data["tasks"]["synthetic-vqa"]["0"], "seed_ids": "01"}}}}),
    ("entry-string", lambda data: {**data, "tasks": {"synthetic-vqa": {"0": "fine"}}}),
    ("non-utf8", None),
])
def test_damaged_results_file_is_one_line(tiny_run: Path, tmp_path: Path, name: str, damage) -> None:  # noqa: ANN001
    run = tmp_path / name
    shutil.copytree(tiny_run, run)
    results = run / "eval" / "step_0.json"
    if damage is None:
        results.write_bytes(b'{"run": "\xff\xfe"}')
    else:
        results.write_text(json.dumps(damage(json.loads(results.read_text()))))
    before = results.read_bytes()
    out = _one_line_exit_2(_eval(run))
    assert "step_0.json" in out and "--force" in out
    assert results.read_bytes() == before
    forced = _eval(run, "--force")  # --force recomputes instead of reading the damaged file
    assert forced.exit_code == 0, forced.output
    assert json.loads(results.read_text())["tasks"]["synthetic-vqa"]["0"]["n"] == 2


def test_garbled_checkpoint_json_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "checkpoints" / "step_0" / "checkpoint.json").write_text('{"step": 0, "content_')
    assert "checkpoint.json" in _one_line_exit_2(_eval(run))
    assert "checkpoint.json" in _one_line_exit_2(_eval(run / "checkpoints" / "step_0"))


def test_last_checkpoint_without_checkpoint_json_is_named(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.copytree(run / "checkpoints" / "step_0", run / "checkpoints" / "step_8")
    (run / "checkpoints" / "step_8" / "checkpoint.json").unlink()
    result = _eval(run)
    assert result.exit_code == 0, result.output
    assert "step_8 has no checkpoint.json" in " ".join(result.output.split())
    assert not (run / "eval" / "step_8.json").exists()


def test_predictions_refused_by_line(tmp_path: Path) -> None:
    from test_eval import _vqav2_files

    q, a, images = _vqav2_files(tmp_path)
    args = ["--task", "vqav2", "--annotations", str(a), "--questions", str(q), "--images", str(images)]
    cases = {
        "non-utf8.jsonl": (b'{"question_id": 10, "answer": "caf\xe9"}\n', "UTF-8"),
        "torn.jsonl": (b'{"question_id": 10, "answer": "0"}\n{"question_id": 11, "ans', "line 2"),
        "dupes.jsonl": (b'{"question_id": 10, "answer": "0"}\n{"question_id": 10, "answer": "1"}\n', "record 2"),
        "array-line.jsonl": (b'{"question_id": 10, "answer": "0"}\n[1, 2]\n', "line 2"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        out = _one_line_exit_2(runner.invoke(app, ["eval", "--predictions", str(path), *args]))
        assert expected in out, (name, out)
