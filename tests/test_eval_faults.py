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
    ("--seeds", "1000000000000000000000000"), ("--num-samples", "10000000000"), ("--max-new-tokens", "99999999"),
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


# ------------------------------------------------------------------------------ issue 38: silent accepts refused
def _vqa_args(tmp_path: Path) -> list[str]:
    from test_eval import _vqav2_files

    q, a, images = _vqav2_files(tmp_path)
    return ["--task", "vqav2", "--annotations", str(a), "--questions", str(q), "--images", str(images), "--allow-subset"]


@pytest.mark.parametrize(("record", "expected"), [
    ({"question_id": 10.5, "answer": "0"}, "id 10.5 is float"),  # once matched to question 10 and scored
    ({"question_id": True, "answer": "0"}, "id True is bool"),
    ({"question_id": 10, "answer": "0", "answerable": 1.5}, "answerable 1.5"),
    ({"question_id": 10, "answer": "0", "answerable": "yes"}, "answerable 'yes'"),
])
def test_prediction_ids_and_answerability_of_the_wrong_kind_are_refused(tmp_path: Path, record: dict,
                                                                         expected: str) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert expected in _one_line_exit_2(runner.invoke(app, ["eval", "--predictions", str(path), *_vqa_args(tmp_path)]))


def test_nan_answerability_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"question_id": 10, "answer": "0", "answerable": NaN}\n')
    assert "answerable nan" in _one_line_exit_2(runner.invoke(app, ["eval", "--predictions", str(path),
                                                                    *_vqa_args(tmp_path)]))


@pytest.mark.parametrize("damage", ["value NaN", "value Infinity", "seeds -Infinity", "per-sample score NaN"])
def test_non_finite_numbers_in_results_files_are_refused_not_rendered(tiny_run: Path, tmp_path: Path,
                                                                      damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    results = run / "eval" / "step_0.json"
    where, token = damage.rsplit(" ", 1)
    if where == "per-sample score":
        samples = next((run / "eval" / "samples").rglob("*.jsonl"))
        lines = samples.read_text().splitlines()
        lines[0] = json.dumps({**json.loads(lines[0]), "score": 0.5}).replace("0.5", token, 1)
        samples.write_text("\n".join(lines) + "\n")
    else:
        data = json.loads(results.read_text())
        cell = data["tasks"]["synthetic-vqa"]["0"]
        cell[where] = 12345.5 if where == "value" else [12345.5]
        results.write_text(json.dumps(data).replace("12345.5", token))
    out = _one_line_exit_2(runner.invoke(app, ["report", str(run), "-o", str(tmp_path / "report"), "--no-plots"]))
    assert "finite" in out


def test_a_checkpoint_whose_tokenizer_was_replaced_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    other = save_tiny_model(tmp_path / "other", [*TINY, "model.vocab_size=300"])  # another vocabulary
    checkpoint = run / "checkpoints" / "step_0"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(other / name, checkpoint / name)
    result = _eval(checkpoint, "--force")
    assert result.exit_code == 2 and "Traceback" not in result.output and "do not match" in result.output
    assert [line for line in result.output.splitlines() if "error:" in line] == [
        line for line in result.output.splitlines() if "tokenizer files do not match" in line], result.output


def test_image_paths_outside_the_images_dir_are_never_read(tmp_path: Path) -> None:
    from PIL import Image

    from mmbench_cli.config import DatasetSpec
    from mmbench_cli.data.formats import load_dataset_spec
    from mmbench_cli.errors import MMError

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "inside.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    turn = [{"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "a square"}]
    for escape in ("../secret.png", str(tmp_path / "secret.png")):
        path = tmp_path / "llava.json"
        path.write_text(json.dumps([{"id": "a", "image": "inside.png", "conversations": turn},
                                    {"id": "b", "image": escape, "conversations": turn}]))
        spec = DatasetSpec(format="llava", path=str(path), images=str(images))
        with pytest.raises(MMError, match="leaves the images dir"):
            load_dataset_spec(spec)
        assert len(load_dataset_spec(spec, skip_bad=True)) == 1


def test_16_bit_and_huge_png_files(tmp_path: Path) -> None:
    import struct
    import warnings
    import zlib

    import numpy as np
    from PIL import Image

    from mmbench_cli.data.formats import check_image
    from mmbench_cli.data.types import FileImage

    ramp = tmp_path / "ramp16.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(ramp)
    pixels = np.asarray(FileImage(ramp).load())
    assert pixels.min() == 0 and pixels.max() == 255 and 100 < pixels.mean() < 155  # scaled, not clipped to white

    header = struct.pack(">IIBBBBB", 9500, 9500, 8, 2, 0, 0, 0)  # a 9500×9500 PNG header and no data

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape (it printed before our line)
        for verify in ("header", "decode"):
            assert "DecompressionBomb" in (check_image(huge, verify) or "")


def test_all_checkpoints_refuses_a_damaged_later_checkpoint_before_writing_anything(tiny_run: Path,
                                                                                   tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "eval")
    later = run / "checkpoints" / "step_8"
    shutil.copytree(run / "checkpoints" / "step_0", later)
    (later / "checkpoint.json").write_text(json.dumps({"step": 8}))
    (later / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    out = _one_line_exit_2(_eval(run, "--all-checkpoints"))
    assert "step_8/model.safetensors" in out
    assert not (run / "eval").exists()  # step_0.json was written before the refusal, once
