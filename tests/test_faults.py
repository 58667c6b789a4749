"""Issue 18, the training/ablation/run-dir side: bad input is one line and exit 2, never a traceback, and a finished
run is never lost or changed by a failed command. Real CLI, real tiny training (a 3-step run built once per module).

The eval side (damaged results files, bad numbers, predictions) is tested in tests/test_eval_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from model_fixtures import MECHANICS
from safetensors.torch import load_file
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.config import load_config
from mmbench_cli.errors import MMError
from mmbench_cli.rundir import RunDir, RunLock, read_jsonl

REPO = Path(__file__).resolve().parents[1]
AXES = str(REPO / "mmbench_cli" / "resources" / "axes.yaml")
# The toy model shrunk for speed (as tests/test_train_loop.py): 3 steps, checkpoints at 0, 1, 2, 3.
TINY = [*MECHANICS,
    "model.lm=pythia-toy-1m", "model.image_size=32", "model.num_image_tokens=4", "data.seq_len=64",
    "train.batch_size=8", "data.num_train_images=64", "data.num_val_images=8", "data.num_test_images=8",
    "train.warmup_steps=3", "train.log_every=1", "train.checkpoint_every=8", "train.steps=3",
]
runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fingerprint(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (hidden ones too), by relative path."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def one_line_exit_2(result) -> str:  # noqa: ANN001
    """The output of a refused command: exit 2, one ``error:`` line, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return " ".join(result.output.split())


def pretrain(out: Path, *extra: str):  # noqa: ANN201
    return runner.invoke(app, ["pretrain", *TINY, *extra, "--out", str(out)])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-step run with its final checkpoint evaluated (synthetic-vqa, 0-shot, 2 samples)."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("faults") / "done"
    result = pretrain(run)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", str(run), "--tasks", "synthetic-vqa", "--shots", "0", "--num-samples", "2"])
    assert result.exit_code == 0, result.output
    assert RunDir(run).read_status() == "done" and RunDir(run).checkpoint_steps() == [0, 1, 2, 3]
    return run


@pytest.fixture
def copy_of(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run, for tests that damage it."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


# ------------------------------------------------------------------------------------------ --force, --out, config
@pytest.mark.parametrize("bad", ["model.image_size=30", "train.lr=-1"])
def test_force_with_a_bad_config_or_model_leaves_the_finished_run_bit_identical(copy_of: Path, bad: str) -> None:
    before = fingerprint(copy_of)
    out = one_line_exit_2(pretrain(copy_of, bad, "--force"))
    assert bad.split("=")[0] in out
    assert fingerprint(copy_of) == before


def test_force_failing_after_the_dir_is_claimed_restores_the_old_run(copy_of: Path, tmp_path: Path) -> None:
    # A local caption file that exists (so the early checks pass) but is not COCO: loading the data fails after the
    # run dir was claimed and the old run set aside.
    bad = tmp_path / "captions.json"
    bad.write_text('{"a": 1}')
    before = fingerprint(copy_of)
    result = pretrain(copy_of, "data.source=local", f"data.datasets=[{{format: coco-captions, path: {bad}, "
                      f"images: {tmp_path}}}]", "--force")
    out = one_line_exit_2(result)
    assert "captions.json" in out and "previous run is back" in out
    assert fingerprint(copy_of) == before
    assert not (copy_of / ".replaced").exists()


def test_force_that_succeeds_replaces_the_old_run(copy_of: Path) -> None:
    result = pretrain(copy_of, "train.steps=2", "--force")
    assert result.exit_code == 0, result.output
    run = RunDir(copy_of)
    assert run.checkpoint_steps() == [0, 1, 2] and run.read_status() == "done"
    assert not run.eval_dir.exists() and not run.has_set_aside()
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


def test_an_interrupted_force_is_undone_when_the_run_is_next_opened(copy_of: Path) -> None:
    before = fingerprint(copy_of)
    run = RunDir(copy_of)
    run.set_aside()  # what `--force` does under the lock; then it was killed before the new run's first checkpoint
    run.write_config("seed: 7\n")
    run.write_status("running")
    assert run.has_set_aside() and not run.checkpoints_dir.exists()
    result = pretrain(copy_of)  # the same config as the old run: it is found finished, nothing to train
    assert result.exit_code == 0, result.output
    assert "restored the run that an interrupted --force was replacing" in " ".join(result.output.split())
    assert fingerprint(copy_of) == before


def test_running_a_finished_run_again_rewrites_nothing(finished: Path) -> None:
    before = fingerprint(finished)
    result = pretrain(finished)
    assert result.exit_code == 0, result.output
    assert fingerprint(finished) == before


@pytest.mark.parametrize(("override", "field"), [
    ("train.lr=-1", "train.lr"), ("train.lr=.nan", "train.lr"), ("train.lr=nan", "train.lr"),
    ("train.lr=.inf", "train.lr"), ("train.lr=0", "train.lr"), ("train.weight_decay=-1", "train.weight_decay"),
    ("train.weight_decay=.nan", "train.weight_decay"),
])
def test_bad_lr_and_weight_decay_are_refused_at_config_validation(tmp_path: Path, override: str, field: str) -> None:
    out = one_line_exit_2(pretrain(tmp_path / "run", override))
    assert f"{field}:" in out
    assert not (tmp_path / "run").exists()


def test_mm1_rule_and_a_zero_weight_decay_are_still_accepted() -> None:
    cfg = load_config(None, ["train.lr=mm1-rule", "train.weight_decay=0"])
    assert cfg.train.lr == "mm1-rule" and cfg.train.weight_decay == 0
    assert load_config(None, ["train.weight_decay=mm1-rule"]).train.weight_decay == "mm1-rule"


def test_out_pointing_at_a_file_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert "is a file" in one_line_exit_2(pretrain(target))
    assert "is a file" in one_line_exit_2(pretrain(target / "run"))
    assert target.read_text() == "mine"


def test_unsafe_yaml_tag_is_named(tmp_path: Path) -> None:
    config = tmp_path / "evil.yaml"
    config.write_text('train:\n  lr: !!python/object/apply:os.system ["echo pwned"]\n')
    out = one_line_exit_2(runner.invoke(app, ["pretrain", str(config), "--out", str(tmp_path / "run")]))
    assert "unsafe YAML tag" in out and "python/object/apply:os.system" in out and "line 2" in out
    config.write_text("train: !custom {lr: 1}\n")
    assert "unsupported YAML tag '!custom'" in one_line_exit_2(runner.invoke(app, ["build", str(config)]))


# ----------------------------------------------------------------------------------------------- non-finite loss
@pytest.mark.parametrize(("lr", "message", "kept"), [
    ("1e10", "non-finite loss nan and grad norm nan at step 2", [0, 1]),  # the update of step 1 blows up the loss
    ("1e38", "weights became non-finite by step 1", [0]),  # the update of step 1 overflows the weights
])
def test_non_finite_training_stops_with_failed_status(tmp_path: Path, lr: str, message: str, kept: list[int]) -> None:
    run = tmp_path / "run"
    out = one_line_exit_2(pretrain(run, "train.steps=6", "train.warmup_steps=0", f"train.lr={lr}"))
    assert message in out and f"last checkpoint is step_{kept[-1]}" in out
    rundir = RunDir(run)
    assert rundir.read_status() == "failed" and rundir.checkpoint_steps() == kept
    assert not list((run / "checkpoints").glob(".*"))  # no half-written checkpoint either
    for checkpoint in rundir.checkpoints():
        assert all(torch.isfinite(t).all() for t in load_file(str(checkpoint.model_file)).values())
    assert all(math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) for row in rundir.read_metrics())


# ------------------------------------------------------------------------------------------ resume from damage
def _damage_optimizer(checkpoint: Path) -> None:
    (checkpoint / "optimizer.safetensors").write_bytes(b"this is not a safetensors file")


def _damage_trainer_state(checkpoint: Path) -> None:
    (checkpoint / "trainer_state.json").write_text('{"optimizer": {"param_groups": [')


@pytest.mark.parametrize("damage", [_damage_optimizer, _damage_trainer_state])
def test_resume_skips_a_damaged_last_checkpoint(finished: Path, copy_of: Path, damage) -> None:  # noqa: ANN001
    run = RunDir(copy_of)
    run.write_status("running")  # as a kill -9 leaves it
    damage(run.checkpoint_dir(3))
    result = pretrain(copy_of)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "step_3: damaged checkpoint" in out and "resuming from step_2" in out
    assert run.read_status() == "done"
    # exact resume: step 3 is trained again to the same weights, its trainer state whole again
    original = RunDir(finished).checkpoint_dir(3) / "model.safetensors"
    assert (run.checkpoint_dir(3) / "model.safetensors").read_bytes() == original.read_bytes()
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]


def test_resume_with_no_good_checkpoint_is_refused_and_not_left_running(copy_of: Path) -> None:
    run = RunDir(copy_of)
    run.write_status("running")
    for checkpoint in run.checkpoints():
        _damage_optimizer(checkpoint.path)
    out = one_line_exit_2(pretrain(copy_of))
    assert "step_3: damaged checkpoint" in out and "--force" in out
    assert run.read_status() == "failed"


# ------------------------------------------------------------------------------------------------ hf: encoders
def _vit_checkpoint(directory: Path) -> None:
    import transformers as tf

    config = tf.ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          image_size=32, patch_size=8)
    tf.ViTModel(config, add_pooling_layer=False).save_pretrained(str(directory))


@pytest.mark.parametrize("kind", ["pickle-only", "fake-safetensors"])
def test_hf_encoder_without_real_safetensors_is_one_line(tmp_path: Path, kind: str) -> None:
    encoder = tmp_path / "vit"
    _vit_checkpoint(encoder)
    if kind == "pickle-only":
        (encoder / "model.safetensors").rename(encoder / "pytorch_model.bin")
    else:
        (encoder / "model.safetensors").write_bytes(b"\x00" * 64)
    out = one_line_exit_2(pretrain(tmp_path / "run", f"model.encoder=hf:{encoder}"))
    expected = "has no .safetensors weights" if kind == "pickle-only" else "not a loadable vision checkpoint"
    assert "model.encoder:" in out and expected in out
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ run-dir repairs
def test_metrics_jsonl_with_a_bad_line_in_the_middle_is_one_line_in_mm_report(copy_of: Path, tmp_path: Path) -> None:
    metrics = copy_of / "metrics.jsonl"
    good = metrics.read_bytes().splitlines(keepends=True)
    for name, line in (("array", b"[1, 2]\n"), ("non-utf8", b'{"step": 9, "note": "\xff\xfe"}\n')):
        metrics.write_bytes(good[0] + line + b"".join(good[1:]))
        out = one_line_exit_2(runner.invoke(app, ["report", str(copy_of), "-o", str(tmp_path / name), "--no-plots"]))
        assert "metrics.jsonl: line 2" in out
    metrics.write_bytes(b"".join(good) + b'{"step": 4, "loss": "\xe2\x82')  # torn last line: skipped
    assert [r["step"] for r in read_jsonl(metrics)] == [1, 2, 3]


def test_partial_checkpoints_left_by_a_kill_are_cleaned_on_the_next_write(copy_of: Path) -> None:
    checkpoints = copy_of / "checkpoints"
    partial = checkpoints / ".step_4.k2j3h4.tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    (copy_of / ".metrics.jsonl.abc123.tmp").write_text('{"step": 1')
    # killed between atomic_dir's two renames while replacing step_2: the old one is parked as .step_2.old
    os.replace(checkpoints / "step_2", checkpoints / ".step_2.old")
    result = pretrain(copy_of)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "deleted 1 partial checkpoint(s)" in out and ".step_4.k2j3h4.tmp" in out and "step_2: restored" in out
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_0", "step_1", "step_2", "step_3"]
    assert not (copy_of / ".metrics.jsonl.abc123.tmp").exists()


@pytest.mark.parametrize("content", ["", "{not json", '{"pid": "abc", "host": "x"}', "\xff"])
def test_an_empty_or_garbled_lock_is_reclaimed_with_a_warning(tmp_path: Path, capsys, content: str) -> None:  # noqa: ANN001
    lock = tmp_path / ".lock"
    lock.write_text(content, encoding="latin-1")
    os.utime(lock, (1, 1))  # not one being written right now
    with RunLock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "reclaimed it" in capsys.readouterr().err
    assert not lock.exists()


def test_a_live_lock_still_refuses(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        with pytest.raises(MMError, match=f"being written by pid {holder.pid}"):
            RunLock(tmp_path).acquire()
        assert (tmp_path / ".lock").exists()
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------------------------------- ablate
ABLATE_TINY = [*MECHANICS,
    "train.steps=2", "train.batch_size=2", "train.warmup_steps=1", "train.checkpoint_every=2",
    "train.log_spaced_checkpoints=false", "train.log_every=1",
    "data.seq_len=64", "data.num_train_images=16", "data.num_val_images=4", "data.num_test_images=8",
    "model.image_size=16", "model.num_image_tokens=4", "model.lm=pythia-toy-1m",
    "eval.tasks=[synthetic-vqa]", "eval.shots=[0]", "eval.num_samples=2", "eval.batch_size=2",
]


def test_failed_cells_keep_their_row_state_and_error_in_the_summary(tmp_path: Path) -> None:
    grid = tmp_path / "faults.yaml"
    grid.write_text(
        "name: faults\n"
        "axes:\n"
        "  fault:\n"
        "    values:\n"
        "      none: {}\n"
        "      before-training: {train.grad_accum: 4}\n"  # 2 rows do not split into 4 micro-batches
        "      in-eval: {eval.tasks: [vqav2]}\n"  # trains, then has no vqav2 files to evaluate on
    )
    out = tmp_path / "grid"
    result = runner.invoke(app, ["ablate", str(grid), *ABLATE_TINY, "--axes", AXES, "--out", str(out), "--jobs", "1",
                                 "--threads", "1"])
    assert result.exit_code == 1, result.output
    table = pd.read_csv(out / "summary.csv", keep_default_na=False)
    rows = {row["cell"]: row for _, row in table.iterrows()}
    assert list(rows) == ["fault=none", "fault=before-training", "fault=in-eval"]
    assert rows["fault=none"]["state"] == "done" and rows["fault=none"]["error"] == ""
    assert rows["fault=before-training"]["state"] == "failed"
    assert "grad_accum" in rows["fault=before-training"]["error"]
    assert rows["fault=in-eval"]["state"] == "failed" and "vqav2" in rows["fault=in-eval"]["error"]
    assert rows["fault=in-eval"]["final_loss"] != ""  # it trained: its loss is there, its metrics are not
    assert pd.read_parquet(out / "summary.parquet")["error"].tolist() == table["error"].tolist()


# ------------------------------------------------------------------------------------------------------ fuzz
# Seeded mutations of configs (overrides), results JSON files and prediction files through the CLI: every one ends
# in exit 0 or 2 with no traceback, and the finished run's files are not changed by any of them.
FUZZ_VALUES = [
    "-1", "0", "1", "2", "3", "0.5", "1e-3", "-1e9", "1e400", ".nan", ".inf", "-.inf", "nan", "abc", "", "[]", "{}",
    "[1, 2]", "{a: 1}", "null", "true", "mm1-rule", "caf\u00e9", "'", "[", "{caption: 1}", "0x10", "!!python/object:os.system",
    "!!binary aGk=", "{caption: .5, interleaved: .5, text: 0}", "hf:/no/such/dir", "./no/such/dir", "vit-tiny",
    # issue 38: huge numbers (torch overflow, endless schedules, unbuildable worlds), NaN inside mappings, deep YAML
    "1000000000000000000000000000000", "99999999999", "1.0e+30", "{caption: .nan, interleaved: .5, text: .5}",
    "{caption: .inf, interleaved: 0, text: 0}", "[" * 70 + "]" * 70, "&a [1, *a]", "{a: 1, a: 2}",
]
FUZZ_BROKEN_OVERRIDES = ["=", "train.=1", ".lr=1", "train..lr=1", "justaword", "train=1", "train.lr.x=1", "model=[]",
                         "data.datasets=[{format: coco-captions}]", "nosuchsection.key=1", "train.nosuchkey=1"]


def _config_keys() -> list[str]:
    from pydantic import BaseModel

    from mmbench_cli.config import Config

    keys = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
            else:
                keys.append(f"{prefix}{name}")

    walk(Config, "")
    return keys


def _no_traceback(result, what: str) -> None:  # noqa: ANN001
    assert result.exit_code in (0, 2), f"{what}: exit {result.exit_code}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{what}: {result.exception!r}"
    assert "Traceback" not in result.output, f"{what}:\n{result.output}"
    if result.exit_code == 2:
        assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1, result.output


def _mutate_json(rng, data):  # noqa: ANN001, ANN202
    """One random structural change somewhere in a JSON value: replace, delete, add a key, or change a type."""
    pool = [None, True, -1, 0, 1.5, float("nan"), "x", "", [], {}, [1, "a"], {"k": None}, 10**30, "\u00e9"]
    if not isinstance(data, (dict, list)) or not data or rng.random() < 0.25:
        return rng.choice(pool)
    keys = list(data) if isinstance(data, dict) else list(range(len(data)))
    key = rng.choice(keys)
    roll = rng.random()
    if roll < 0.15:
        if isinstance(data, dict):
            del data[key]
        else:
            data.pop(key)
    elif roll < 0.25 and isinstance(data, dict):
        data[rng.choice(["extra", "tasks", "step", "0", "value"])] = rng.choice(pool)
    else:
        data[key] = _mutate_json(rng, data[key])
    return data


def _mutate_bytes(rng, raw: bytes) -> bytes:  # noqa: ANN001
    """One random byte-level change: truncate, flip a byte, insert invalid UTF-8, duplicate or drop a line."""
    roll = rng.random()
    position = rng.randrange(len(raw) + 1)
    if roll < 0.25:
        return raw[:position]
    if roll < 0.5 and raw:
        index = min(position, len(raw) - 1)
        return raw[:index] + bytes([raw[index] ^ (1 << rng.randrange(8))]) + raw[index + 1:]
    if roll < 0.7:
        return raw[:position] + rng.choice([b"\xff", b"\xc3", b"\x00", b"\n", b"[1]\n", b"{}\n"]) + raw[position:]
    lines = raw.splitlines(keepends=True)
    if not lines:
        return raw + b"\n"
    line = rng.randrange(len(lines))
    return b"".join(lines[:line] + ([lines[line]] * 2 if roll < 0.85 else []) + lines[line + 1:])


def test_fuzz_configs_never_traceback_and_never_touch_the_finished_run(finished: Path, tmp_path: Path) -> None:
    import random

    rng = random.Random(18)
    keys = _config_keys()
    before = fingerprint(finished)
    codes = {0: 0, 2: 0}
    saved_config = (finished / "config.yaml").read_bytes()
    for case in range(250):
        if case % 4 == 3:  # a damaged copy of the run's own config file
            config = tmp_path / f"config{case}.yaml"
            config.write_bytes(_mutate_bytes(rng, saved_config))
            args = ["pretrain", str(config), "--out", str(finished)]
        else:
            overrides = []
            for _ in range(rng.randint(1, 3)):
                if rng.random() < 0.1:
                    overrides.append(rng.choice(FUZZ_BROKEN_OVERRIDES))
                else:
                    overrides.append(f"{rng.choice(keys)}={rng.choice(FUZZ_VALUES)}")
            # into the finished run (a valid config is refused as another run's), or built (it would train elsewhere)
            args = ["pretrain", *TINY, *overrides, "--out", str(finished)] if case % 4 else ["build", *TINY, *overrides]
        result = runner.invoke(app, args)
        _no_traceback(result, f"case {case}: mm {' '.join(args)}")
        codes[result.exit_code] += 1
    assert codes[2] > 150  # most mutations are refused...
    assert fingerprint(finished) == before  # ...and none changed the finished run


def test_fuzz_results_files_never_traceback(finished: Path, tmp_path: Path) -> None:
    import random

    rng = random.Random(1818)
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    results = run / "eval" / "step_3.json"
    original = results.read_bytes()
    before = fingerprint(finished)
    codes = {0: 0, 2: 0}
    for case in range(150):
        if case % 2:
            mutated = _mutate_bytes(rng, original)
        else:
            mutated = json.dumps(_mutate_json(rng, json.loads(original))).encode()
        results.write_bytes(mutated)
        for args in (["report", str(run), "-o", str(tmp_path / "report"), "--no-plots"],
                     ["eval", str(run), "--tasks", "synthetic-vqa", "--shots", "0", "--num-samples", "2"]):
            if args[0] == "eval" and case % 3:
                continue  # a third of the cases through mm eval too (a results file it cannot reuse is recomputed)
            result = runner.invoke(app, args)
            _no_traceback(result, f"case {case}: mm {args[0]} on {mutated[:200]!r}")
            codes[result.exit_code] += 1
    assert codes[0] > 10 and codes[2] > 50
    assert fingerprint(finished) == before


def test_fuzz_prediction_files_never_traceback(tmp_path: Path) -> None:
    import random

    from test_eval import _vqav2_files

    rng = random.Random(181818)
    q, a, images = _vqav2_files(tmp_path)
    preds = tmp_path / "preds.jsonl"
    records = [{"question_id": 10 + i, "answer": answer} for i, answer in enumerate(["0", "1", "two"])]
    original_lines = "".join(json.dumps(r) + "\n" for r in records).encode()
    args = ["eval", "--predictions", str(preds), "--task", "vqav2", "--annotations", str(a), "--questions", str(q),
            "--images", str(images)]
    codes = {0: 0, 2: 0}
    for case in range(150):
        roll = case % 3
        if roll == 0:
            mutated = _mutate_bytes(rng, original_lines)
        elif roll == 1:
            mutated = "".join(json.dumps(_mutate_json(rng, dict(r))) + "\n" for r in records).encode()
        else:
            mutated = json.dumps(_mutate_json(rng, [dict(r) for r in records])).encode()
        preds.write_bytes(mutated)
        result = runner.invoke(app, args)
        _no_traceback(result, f"case {case}: predictions {mutated[:200]!r}")
        codes[result.exit_code] += 1
    assert codes[0] > 5 and codes[2] > 50


# ------------------------------------------------------------------ issue 38: never overwrite what a command did not write
# Every writer's output path, pointed at each kind of finished artefact: one line, exit 2, the run bit-identical.
_ARTEFACTS = {"run dir": "", "checkpoint": "checkpoints/step_3", "results file": "eval/step_3.json",
              "config": "config.yaml", "metrics": "metrics.jsonl"}


def _predictions_args(tmp_path: Path) -> list[str]:
    """``mm eval --predictions`` of one VQAv2 answer (tests/test_eval.py's tiny VQAv2 files), made once per dir."""
    from test_eval import _vqav2_files

    if not (tmp_path / "questions.json").exists():
        _vqav2_files(tmp_path)
        (tmp_path / "predictions.json").write_text('[{"question_id": 10, "answer": "0"}]')
    return ["eval", "--predictions", str(tmp_path / "predictions.json"), "--task", "vqav2", "--annotations",
            str(tmp_path / "annotations.json"), "--questions", str(tmp_path / "questions.json"), "--images",
            str(tmp_path / "val2014"), "--allow-subset"]


def _writers(run: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Each writer's command line, ending with its output option (the target path follows)."""
    return {
        "build -o": ["build", *TINY, "-o"],
        "build --data -o": ["build", "--data", *TINY, "-o"],
        "eval --predictions -o": [*_predictions_args(tmp_path), "-o"],
        "report --save-baseline": ["report", str(run), "--no-plots", "-o", str(tmp_path / "report"), "--save-baseline"],
        "report -o": ["report", str(run), "--no-plots", "-o"],
        "lm-eval --output_path": ["lm-eval", "--model_args", f"path={run}", "--tasks", "mm_synth_perplexity",
                                  "--limit", "2", "--output_path"],
    }


@pytest.mark.parametrize("artefact", sorted(_ARTEFACTS))
def test_no_writer_overwrites_a_finished_artefact(finished: Path, tmp_path: Path, artefact: str) -> None:
    before = fingerprint(finished)
    target = finished / _ARTEFACTS[artefact]
    for name, args in _writers(finished, tmp_path).items():
        if name in ("report -o", "lm-eval --output_path") and target.is_dir():
            continue  # a report into a run dir is refused as an input dir (tests/test_report.py); lm-eval adds a subdir
        out = one_line_exit_2(runner.invoke(app, [*args, str(target)]))
        assert "never overwrites" in out, (name, out)
    if artefact == "checkpoint":  # --force starts a run over in a run dir, never in a checkpoint
        assert "even with --force" in one_line_exit_2(pretrain(target, "--force"))
    assert fingerprint(finished) == before


def test_writers_replace_their_own_earlier_output(finished: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    for _ in range(2):  # the second run replaces the first one's baseline and report
        result = runner.invoke(app, ["report", str(finished), "--no-plots", "-o", str(tmp_path / "r"),
                                     "--save-baseline", str(baseline)])
        assert result.exit_code == 0, result.output
    scores = tmp_path / "scores.jsonl"
    for _ in range(2):
        result = runner.invoke(app, [*_predictions_args(tmp_path), "-o", str(scores)])
        assert result.exit_code == 0, result.output
    scores.with_name("scores.summary.json").unlink()  # without its summary, the scores file is not recognised
    assert "never overwrites" in one_line_exit_2(runner.invoke(app, [*_predictions_args(tmp_path), "-o", str(scores)]))


# ---------------------------------------------------------------------- issue 38: hostile YAML, limits, environment
def _hostile_yaml(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Config files that used to hang or traceback, with the words their error must contain."""
    bomb = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    bomb += [f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 9)}]" for i in range(1, 10)]
    files = {
        "alias bomb": ("\n".join(bomb), "YAML aliases"),
        "deep list": ("seed: " + "[" * 5000 + "]" * 5000, "nested deeper"),
        "deep mapping": ("x: " + "{a: " * 3000 + "1" + "}" * 3000, "nested deeper"),
        "duplicate key": ("seed: 1\ntrain:\n  steps: 3\nseed: 2\n", "duplicate key 'seed' (line 4)"),
    }
    found = {}
    for name, (text, words) in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.yaml"
        path.write_text(text + "\n")
        found[name] = (path, words)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    found["fifo"] = (fifo, "not a regular file")
    return found


def test_hostile_yaml_is_one_line_in_seconds(tmp_path: Path) -> None:
    import time

    for name, (path, words) in _hostile_yaml(tmp_path).items():
        start = time.perf_counter()
        out = one_line_exit_2(runner.invoke(app, ["build", str(path)]))
        assert words in out and time.perf_counter() - start < 10, (name, out)
    deep = "[" * 3000 + "]" * 3000  # the same through an override
    assert "nested deeper" in one_line_exit_2(runner.invoke(app, ["build", f"seed={deep}"]))


def _numeric_keys() -> list[str]:
    from mmbench_cli.config import Config

    def annotation(key: str) -> object:
        model: object = Config
        for part in key.split("."):
            field = model.model_fields[part]  # type: ignore[attr-defined]
            model = field.annotation
        return model

    return [key for key in _config_keys() if annotation(key) in (int, float, dict[str, float], int | float)
            or "float" in str(annotation(key))]


@pytest.mark.parametrize("value", ["1000000000000000000000000000000", "1e30", ".nan", ".inf", "-.inf"])
def test_huge_and_non_finite_numbers_are_refused_in_every_numeric_field(value: str) -> None:
    keys = _numeric_keys()
    assert {"seed", "train.steps", "data.num_train_images", "data.data_mix", "train.lr"} <= set(keys)
    for key in keys:
        if key in ("train.lr", "train.weight_decay") and "n" not in value:
            continue  # a huge finite rate trains until the non-finite-loss guard stops it (test above)
        shown = f"{{caption: {value}, interleaved: 0.5, text: 0.5}}" if key == "data.data_mix" else value
        with pytest.raises(MMError, match=key.replace(".", r"\.")):
            load_config(None, [f"{key}={shown}"])


def test_limits_are_said_in_the_error_and_refused_before_any_work(tmp_path: Path) -> None:
    import time

    for override, limit in [("data.num_train_images=100000000", "50000"), ("train.steps=10000000000", "10000000"),
                            ("seed=123456789012345678901234567890", "9223372036854775807")]:
        start = time.perf_counter()
        out = one_line_exit_2(pretrain(tmp_path / "run", override))
        assert limit in out and "docs/architecture.md" in out and time.perf_counter() - start < 10, out
        assert not (tmp_path / "run").exists()


def test_environment_variables_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmbench_cli.data.images import _ResizedCache
    from mmbench_cli.rundir import cache_root

    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("x")
    monkeypatch.setenv("MMBENCH_CACHE_DIR", str(not_a_dir))
    with pytest.raises(MMError, match=r"\$MMBENCH_CACHE_DIR .*not a directory"):
        cache_root()
    assert "$MMBENCH_CACHE_DIR" in one_line_exit_2(runner.invoke(app, ["build", "--data", *TINY]))
    for raw in ("abc", "nan", "-1", "1e308"):
        monkeypatch.setenv("MMBENCH_IMAGE_CACHE_MB", raw)
        with pytest.raises(MMError, match=r"\$MMBENCH_IMAGE_CACHE_MB"):
            _ResizedCache().budget  # noqa: B018


def test_a_full_disk_is_one_line_and_leaves_finished_files_intact(finished: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    before = fingerprint(finished)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # every atomic write, lock and log line flushes through it
    for args in (["report", str(finished), "-o", str(tmp_path / "report"), "--no-plots"],
                 ["eval", str(finished), "--tasks", "synthetic-vqa", "--shots", "0", "--num-samples", "2", "--force"]):
        assert "No space left on device" in one_line_exit_2(runner.invoke(app, args))
    assert "No space left on device" in one_line_exit_2(pretrain(tmp_path / "new"))
    monkeypatch.undo()
    assert fingerprint(finished) == before
    assert RunDir(tmp_path / "new").read_status() in (None, "failed") and not (tmp_path / "new" / ".lock").exists()


def test_a_deleted_working_directory_is_named(tmp_path: Path) -> None:
    here = Path.cwd()
    gone = tmp_path / "gone"
    gone.mkdir()
    os.chdir(gone)
    try:
        gone.rmdir()
        out = one_line_exit_2(runner.invoke(app, ["build", *TINY]))
    finally:
        os.chdir(here)
    assert "current directory was deleted" in out


@pytest.mark.parametrize(("args", "words"), [
    (["--model", "nosuchmodel", "--tasks", "mm_synth_perplexity"], "no such lm-eval model"),
    (["--limit", "2"], "--tasks"),
    (["--tasks", "mm_synth_perplexity", "--batch_size", "0"], "--batch_size 0"),
])
def test_lm_eval_argument_errors_are_one_line(finished: Path, args: list[str], words: str) -> None:
    assert words in one_line_exit_2(runner.invoke(app, ["lm-eval", "--model_args", f"path={finished}", *args]))


@pytest.mark.slow
def test_sigterm_during_pretrain_marks_the_run_failed_and_releases_its_lock(tmp_path: Path) -> None:
    import signal
    import time

    run = tmp_path / "run"
    args = [arg if arg != "train.steps=3" else "train.steps=5000" for arg in TINY]
    process = subprocess.Popen([sys.executable, "-m", "mmbench_cli.cli", "pretrain", *args, "--out", str(run)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step_1" / "checkpoint.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    assert RunDir(run).read_status() == "failed" and not (run / ".lock").exists()


@pytest.mark.parametrize(("option", "value"), [("--tolerance", "nan"), ("--resamples", "1000000000000")])
def test_report_numbers_are_bounded(finished: Path, tmp_path: Path, option: str, value: str) -> None:
    out = one_line_exit_2(runner.invoke(app, ["report", str(finished), "-o", str(tmp_path / "r"), "--no-plots",
                                              option, value]))
    assert option in out and value in out


@pytest.mark.parametrize(("args", "words"), [
    (["--grid", "seed=0,1", "--grid", "seed=2"], "axis 'seed' is given twice"),
    (["--grid", "seed=0,1", "--throughput", "-5"], "--throughput -5"),
    (["--grid", "seed=0,1", "--throughput", "nan"], "--throughput nan"),
    (["--grid", "seed=0,1", "--throughput", "1e12", "--jobs", "1000000000000"], "--jobs 1000000000000"),
    (["--grid", "seed=0,1", "--throughput", "1e12", "--executor", "ray", "--cpus-per-cell", "nan"], "--cpus-per-cell nan"),
])
def test_repeated_grid_axes_and_bad_throughput_are_refused(tmp_path: Path, args: list[str], words: str) -> None:
    result = runner.invoke(app, ["ablate", *TINY, *args, "--dry-run", "--out", str(tmp_path / "grid")])
    assert words in one_line_exit_2(result)


@pytest.mark.parametrize("name", ["metrics.jsonl", "status", "meta.json"])
def test_a_pipe_in_place_of_a_run_file_is_one_line_not_a_hang(copy_of: Path, tmp_path: Path, name: str) -> None:
    (copy_of / name).unlink()
    os.mkfifo(copy_of / name)  # reading it would block forever
    out = one_line_exit_2(runner.invoke(app, ["report", str(copy_of), "-o", str(tmp_path / "r"), "--no-plots"]))
    assert "not a regular file" in out and name in out


def test_a_read_only_file_system_is_one_line(finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import tempfile

    before = fingerprint(finished)

    def read_only(*args: object, dir: str | None = None, **kwargs: object) -> None:  # noqa: A002
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), dir)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # every atomic write and lock starts with a temp file
    out = one_line_exit_2(runner.invoke(app, ["eval", str(finished), "--tasks", "synthetic-vqa", "--shots", "0",
                                              "--num-samples", "2"]))
    assert "cannot take the evaluation lock (Read-only file system)" in out
    out = one_line_exit_2(runner.invoke(app, ["report", str(finished), "-o", str(tmp_path / "r"), "--no-plots"]))
    assert "Read-only file system" in out and str(tmp_path / "r") in out
    monkeypatch.undo()
    assert fingerprint(finished) == before


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):  # noqa: ANN201
    """A 256 KiB tmpfs (root only; skipped where mounting is not allowed), unmounted afterwards."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount to make a small tmpfs (the injected-error tests cover the rest)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_really_full_disk_is_one_line(finished: Path, tiny_tmpfs: Path) -> None:
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (256 * 1024 - 8192))  # leave less than a report needs
    before = fingerprint(finished)
    out = one_line_exit_2(runner.invoke(app, ["report", str(finished), "-o", str(tiny_tmpfs / "report"), "--no-plots"]))
    assert "No space left on device" in out
    out = one_line_exit_2(pretrain(tiny_tmpfs / "run"))
    assert "No space left on device" in out
    assert RunDir(tiny_tmpfs / "run").read_status() in (None, "failed") and not (tiny_tmpfs / "run" / ".lock").exists()
    assert fingerprint(finished) == before


def test_a_hostile_run_config_or_results_file_is_one_line_in_mm_report(copy_of: Path, tmp_path: Path) -> None:
    for name, content in [("config.yaml", "seed: " + "[" * 3000 + "]" * 3000 + "\n"),
                          ("eval/step_3.json", "[" * 100_000 + "]" * 100_000)]:
        saved = (copy_of / name).read_bytes()
        (copy_of / name).write_text(content)
        out = one_line_exit_2(runner.invoke(app, ["report", str(copy_of), "-o", str(tmp_path / "r"), "--no-plots"]))
        assert name.split("/")[-1] in out
        (copy_of / name).write_bytes(saved)
