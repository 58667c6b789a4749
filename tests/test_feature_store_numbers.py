"""Store on, store read back from disk, store off, and the model without the store hook (the encoder called on the
whole batch, as before the store) give bit-identical results on a 64 px cell (training with a frozen encoder + 0- and
4-shot eval of every checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.model import feature_store

REPO = Path(__file__).resolve().parents[1]
AXES = str(REPO / "mmbench_cli" / "resources" / "axes.yaml")
# 16 training images in 12 steps of 4 rows: training sees each image several times (the store's reuse), and eval's
# 4-shot demos come from the same images
CELL = ["model.encoder=vit-tiny", "train.freeze_encoder=true", "model.image_size=64", "model.num_image_tokens=4",
        "model.lm=pythia-toy-1m", "train.steps=12", "train.batch_size=4", "train.warmup_steps=2",
        "train.checkpoint_every=6", "train.log_spaced_checkpoints=false", "train.log_every=1", "data.seq_len=96",
        "data.num_train_images=16", "data.num_val_images=4", "data.num_test_images=8",
        "eval.tasks=[synthetic-vqa,synthetic-caption]", "eval.shots=[0,4]", "eval.num_samples=6", "eval.batch_size=4",
        "eval.all_checkpoints=true"]


def _grid(out: Path) -> pd.DataFrame:
    result = CliRunner().invoke(app, ["ablate", *CELL, "--grid", "seed=0", "--axes", AXES, "--out", str(out),
                                      "--threads", "1", "--jobs", "1"])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out / "summary.csv").drop(columns=["train_s", "eval_s"], errors="ignore")


def _samples(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("eval/samples/**/*.jsonl"))}


@pytest.mark.slow
def test_store_on_and_off_give_identical_summaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(feature_store, "_STORES", {})
    fresh = _grid(tmp_path / "fresh")  # the store fills: training and eval compute each image once
    store = feature_store.open_store()
    assert store is not None and store.stats["computed"] > 0 and store.stats["memory"] > store.stats["computed"]
    store.flush()
    monkeypatch.setattr(feature_store, "_STORES", {})  # as a new process: the features come from disk
    from_disk = _grid(tmp_path / "from_disk")
    reread = feature_store.open_store()
    assert reread is not None and reread.stats["computed"] == 0 and reread.stats["disk"] > 0
    monkeypatch.setenv("MMBENCH_FEATURE_STORE_MB", "0")
    off = _grid(tmp_path / "off")
    assert len(fresh) == 1 and fresh.filter(like="synthetic").notna().all(axis=None)
    pd.testing.assert_frame_equal(fresh, from_disk, check_exact=True)
    pd.testing.assert_frame_equal(fresh, off, check_exact=True)
    assert _samples(tmp_path / "fresh") == _samples(tmp_path / "off") != {}
    monkeypatch.setattr(feature_store, "use_feature_store", lambda model, cfg: model)  # before the store
    before = _grid(tmp_path / "before")
    pd.testing.assert_frame_equal(fresh, before, check_exact=True)
    assert _samples(tmp_path / "fresh") == _samples(tmp_path / "before")
