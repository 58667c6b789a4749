"""train.trackers: tiny `mm pretrain` + `mm eval` runs logged to TensorBoard, MLflow and W&B (offline), read back
with each tracker's own reader; grid cells grouped; a missing tracker refused; a failing one never loses the run."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from model_fixtures import MECHANICS
from typer.testing import CliRunner

from mmbench_cli import trackers
from mmbench_cli.cli import app
from mmbench_cli.config import load_config
from mmbench_cli.rundir import RunDir, read_jsonl

TINY = [*MECHANICS,
    "model.lm=pythia-toy-1m", "model.image_size=32", "model.num_image_tokens=4", "data.seq_len=64",
    "train.batch_size=8", "data.num_train_images=64", "data.num_val_images=8", "data.num_test_images=8",
    "train.warmup_steps=1", "train.log_every=2", "train.checkpoint_every=4", "train.steps=4",
]
ALL = "train.trackers=[jsonl,tensorboard,mlflow,wandb]"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _set_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _offline_trackers(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_offline(monkeypatch)


# ------------------------------------------------------------------------------- the trackers' readers
def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} read by TensorBoard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_runs(store: Path) -> Any:
    """``mlflow.search_runs`` over every experiment of the file store ``store``."""
    import mlflow

    mlflow.set_tracking_uri(store.resolve().as_uri())
    return mlflow.search_runs(search_all_experiments=True)


def mlflow_history(store: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=store.resolve().as_uri()).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of a W&B offline ``run-<id>.wandb`` file (W&B's LevelDB-log format: a 7-byte
    ``:W&B`` header, 32 KiB blocks of records with a 7-byte header: crc32c, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or last of a fragmented record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (2, 3):
            pending += chunk
        else:
            break


def wandb_runs(run_dir: Path) -> list[dict[str, Any]]:
    """Per offline run file: its run record (id, group, job type), config and history rows."""
    runs = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        found: dict[str, Any] = {"history": [], "config": {}}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                found.update(id=record.run.run_id, group=record.run.run_group, job_type=record.run.job_type,
                             name=record.run.display_name)
                for item in record.run.config.update:
                    found["config"][item.key] = json.loads(item.value_json)
            elif kind == "config":
                for item in record.config.update:
                    found["config"][item.key] = json.loads(item.value_json)
            elif kind == "history":
                found["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                         for item in record.history.item})
        runs.append(found)
    return runs


def _wandb_series(runs: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return sorted((int(row["step"]), row[key]) for run in runs for row in run["history"] if key in row)


# ------------------------------------------------------------------------------------------ the tests
@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step run trained and then evaluated (every checkpoint) with all trackers on."""
    from mmbench_cli.evaluate.request import EvalRequest
    from mmbench_cli.evaluate.runner import evaluate
    from mmbench_cli.train.loop import pretrain

    with pytest.MonkeyPatch.context() as patch:
        _set_offline(patch)
        run = pretrain(load_config(None, [*TINY, ALL]), tmp_path_factory.mktemp("tracked") / "run", progress=False)
        evaluate(EvalRequest(str(run), ["synthetic-vqa"], [0], 1, all_checkpoints=True, num_samples=4,
                             progress=False))
    return run


def test_tensorboard_has_the_training_curve_and_eval_at_training_steps(tracked_run: Path) -> None:
    metrics = read_jsonl(tracked_run / "metrics.jsonl")
    train = tensorboard_scalars(tracked_run / "tensorboard" / "train")
    assert [s for s, _ in train["train/loss"]] == [row["step"] for row in metrics] == [1, 2, 4]
    assert [v for _, v in train["train/loss"]] == pytest.approx([row["loss"] for row in metrics], rel=1e-6)
    for key in ("train/lr", "train/tokens_per_s", "train/loss_caption", "train/train_flops"):
        assert key in train, key
    evals = tensorboard_scalars(tracked_run / "tensorboard" / "eval")
    run = RunDir(tracked_run)
    expected = [(step, run.read_results(step).tasks["synthetic-vqa"]["0"].value) for step in run.result_steps()]
    assert [s for s, _ in evals["eval/synthetic-vqa/0shot"]] == [0, 1, 2, 4]
    assert evals["eval/synthetic-vqa/0shot"] == [(s, pytest.approx(v)) for s, v in expected]


def test_mlflow_run_holds_config_curve_and_eval(tracked_run: Path) -> None:
    store = tracked_run / "mlruns"
    runs = mlflow_runs(store)
    assert len(runs) == 1  # training and the later eval log to one MLflow run (id kept in trackers.json)
    row = runs.iloc[0]
    assert row["tags.mlflow.runName"] == "run" and row["params.train.steps"] == "4"
    assert row["params.model.lm"] == "pythia-toy-1m" and row["status"] == "FINISHED"
    metrics = read_jsonl(tracked_run / "metrics.jsonl")
    loss = mlflow_history(store, row["run_id"], "train/loss")
    assert loss == [(r["step"], pytest.approx(r["loss"])) for r in metrics]
    assert [s for s, _ in mlflow_history(store, row["run_id"], "train/loss_text")] == [1, 2, 4]
    evals = mlflow_history(store, row["run_id"], "eval/synthetic-vqa/0shot")
    assert [s for s, _ in evals] == [0, 1, 2, 4]
    assert evals[-1][1] == pytest.approx(RunDir(tracked_run).read_results(4).tasks["synthetic-vqa"]["0"].value)
    assert row["tags.mmbench.last_checkpoint"].endswith("step_4")


def test_wandb_offline_files_hold_config_curve_and_eval(tracked_run: Path) -> None:
    runs = wandb_runs(tracked_run)
    assert len(runs) == 2 and len({r["id"] for r in runs}) == 1  # train + eval sessions of one W&B run
    assert sorted(r["job_type"] for r in runs) == ["eval", "train"]
    train = next(r for r in runs if r["job_type"] == "train")
    assert train["config"]["train.steps"] == 4 and train["config"]["model.image_size"] == 32
    metrics = read_jsonl(tracked_run / "metrics.jsonl")
    assert _wandb_series(runs, "train/loss") == [(r["step"], pytest.approx(r["loss"])) for r in metrics]
    evals = _wandb_series(runs, "eval/synthetic-vqa/0shot")
    assert [s for s, _ in evals] == [0, 1, 2, 4]
    state = json.loads((tracked_run / "trackers.json").read_text())
    assert state["wandb"]["id"] == runs[0]["id"]


def test_missing_tracker_is_one_line_exit_2_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trackers.TensorBoardTracker, "requires", "no_such_module_for_mmbench_tests")
    result = CliRunner().invoke(app, ["pretrain", *TINY, "train.trackers=[jsonl,tensorboard]",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "tensorboard is not installed" in result.output and 'mmbench[tracking]' in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_a_grid_asking_for_a_missing_tracker_is_refused_before_any_cell(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trackers.TensorBoardTracker, "requires", "no_such_module_for_mmbench_tests")
    axes = str(Path(__file__).resolve().parents[1] / "mmbench_cli" / "resources" / "axes.yaml")
    result = CliRunner().invoke(app, ["ablate", *TINY, "train.trackers=[jsonl,tensorboard]", "--grid", "seed=0,1",
                                      "--axes", axes, "--out", str(tmp_path / "grid"), "--jobs", "1"])
    assert result.exit_code == 2, result.output
    assert "tensorboard is not installed" in result.output and "Traceback" not in result.output
    assert not any((tmp_path / "grid").glob("seed=*"))


def test_a_failing_tracker_never_loses_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from mmbench_cli.train.loop import pretrain

    def broken(self: Any, metrics: Any, step: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(trackers.TensorBoardTracker, "log_metrics", broken)
    run = pretrain(load_config(None, [*TINY, "train.trackers=[jsonl,tensorboard]"]), tmp_path / "run",
                   progress=False)
    err = capsys.readouterr().err
    assert err.count("tracker tensorboard failed") == 1 and "disk full" in err
    assert RunDir(run).read_status() == "done"
    assert [row["step"] for row in read_jsonl(run / "metrics.jsonl")] == [1, 2, 4]
    assert RunDir(run).checkpoint_steps() == [0, 1, 2, 4]


def test_grid_cells_are_grouped(tmp_path: Path) -> None:
    """Cells of a grid dir (one with grid.json): one MLflow parent run, one W&B group, TensorBoard subdirs."""
    grid = tmp_path / "res-grid"
    grid.mkdir()
    (grid / "grid.json").write_text("{}")
    cfg = load_config(None, ["train.trackers=[tensorboard,mlflow,wandb]"])
    for index, cell in enumerate(["resolution=32,tokens=4", "resolution=64,tokens=4"]):
        (grid / cell).mkdir()
        with trackers.open_trackers(cfg, grid / cell) as opened:
            assert set(opened.trackers) == {"tensorboard", "mlflow", "wandb"}
            opened.log_metrics({"train/loss": 2.0 + index}, 1)

    runs = mlflow_runs(grid / "mlruns")
    children = runs[runs["tags.mlflow.runName"] != "res-grid"]
    parent = runs[runs["tags.mlflow.runName"] == "res-grid"]
    assert len(parent) == 1 and len(children) == 2
    assert set(children["tags.mlflow.parentRunId"]) == {parent.iloc[0]["run_id"]}
    assert set(children["tags.mlflow.runName"]) == {"resolution=32,tokens=4", "resolution=64,tokens=4"}
    for index, cell in enumerate(["resolution=32,tokens=4", "resolution=64,tokens=4"]):
        assert [r["group"] for r in wandb_runs(grid / cell)] == ["res-grid"]
        assert tensorboard_scalars(grid / cell / "tensorboard" / "train")["train/loss"] == [(1, 2.0 + index)]
    assert trackers.grid_of(tmp_path / "elsewhere") == (None, None)


def test_default_trackers_write_nothing_extra(tmp_path: Path) -> None:
    cfg = load_config(None, [])
    assert cfg.train.trackers == ["jsonl"]
    with trackers.open_trackers(cfg, tmp_path) as opened:
        opened.log_metrics({"train/loss": 1.0}, 1)
    assert list(tmp_path.iterdir()) == []


def test_metric_keys_are_safe_for_every_tracker() -> None:
    assert trackers.metric_key("eval", "text:textcore", "0shot") == "eval/text_textcore/0shot"
