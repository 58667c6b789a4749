"""The feature store: same bits as computing, memory then disk reuse, keys by weights and pixels, damaged shards
recomputed with a warning, the size cap's LRU eviction, concurrent writers, off switch and clear."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mmbench_cli.model import feature_store
from mmbench_cli.model.feature_store import FeatureStore, encoder_features, frozen_features, open_store
from mmbench_cli.rundir import feature_store_usage as store_usage


class PatchEncoder(nn.Module):
    """A tiny patch encoder: images [N, 3, 16, 16] → features [N, 16, 8]."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.patches = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.mix = nn.Linear(8, 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.mix(self.patches(images).flatten(2).transpose(1, 2)).tanh()


def _images(count: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_features_do_not_depend_on_the_batch_and_the_store_gives_the_same_bits(tmp_path: Path) -> None:
    encoder, pixels = PatchEncoder(), _images(13)
    full = encoder_features(encoder, pixels)
    assert full.shape == (13, 16, 8) and not full.requires_grad
    assert torch.equal(encoder_features(encoder, pixels[5:7]), full[5:7])
    store = FeatureStore(tmp_path, 2**30)
    assert torch.equal(store.features(encoder, pixels[3:9]), full[3:9])
    repeated = torch.cat([pixels, pixels[:2]])  # an image shown twice in one batch is computed once
    assert torch.equal(store.features(encoder, repeated), torch.cat([full, full[:2]]))
    assert store.stats == {"memory": 6, "disk": 0, "computed": 13}
    store.flush()
    fresh = FeatureStore(tmp_path, 2**30)  # another process: reads the shards
    assert torch.equal(fresh.features(encoder, pixels), full)
    assert fresh.stats == {"memory": 0, "disk": 13, "computed": 0}
    other = PatchEncoder(seed=1)  # other weights: other features, never the stored ones
    assert torch.equal(fresh.features(other, pixels[:2]), encoder_features(other, pixels[:2]))
    assert fresh.stats["computed"] == 2
    assert len({path.parent for path in tmp_path.glob("*/*.safetensors")}) == 1  # other's are still pending


def test_a_damaged_shard_is_recomputed_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    encoder, pixels = PatchEncoder(), _images(4)
    store = FeatureStore(tmp_path, 2**30)
    store.features(encoder, pixels)
    store.flush()
    [shard] = tmp_path.glob("*/*.safetensors")
    shard.write_bytes(shard.read_bytes()[:100])  # torn
    fresh = FeatureStore(tmp_path, 2**30)
    assert torch.equal(fresh.features(encoder, pixels), encoder_features(encoder, pixels))
    assert fresh.stats["computed"] == 4
    err = capsys.readouterr().err
    assert "is damaged" in err and str(shard) in err and len(err.strip().splitlines()) == 1
    assert not shard.exists()


def test_the_cap_evicts_least_recently_used_shards(tmp_path: Path) -> None:
    encoder = PatchEncoder()
    store = FeatureStore(tmp_path, 2**30)
    for seed in range(3):
        store.features(encoder, _images(4, seed))
        store.flush()
    shards = sorted(tmp_path.glob("*/*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    size = shards[0].stat().st_size
    for age, shard in enumerate(shards):  # written in order, oldest first
        os.utime(shard, ns=(time.time_ns() - (10 - age) * 10**9,) * 2)
    reader = FeatureStore(tmp_path, 2 * size + size // 2)
    reader.features(encoder, _images(4, 0))  # reading the oldest shard makes it the most recently used
    reader.features(encoder, _images(4, 3))
    reader.flush()  # a fourth shard: the cap holds two
    left = set(tmp_path.glob("*/*.safetensors"))
    assert shards[0] in left and shards[1] not in left and shards[2] not in left and len(left) == 2
    assert store_usage(tmp_path) == (2 * size, 2)


WORKER = """
import sys
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
from test_feature_store import PatchEncoder, _images
from mmbench_cli.model.feature_store import FeatureStore
torch.set_num_threads({threads})  # the namespace includes the thread count
store, encoder = FeatureStore(Path({root!r}), 2**30), PatchEncoder()
for round_index in range(5):
    store.features(encoder, torch.cat([_images(3, round_index), _images(2, 100 + 10 * {seed} + round_index)]))
    store.flush()
print(store.stats["computed"])
"""


def test_concurrent_writers_share_one_store(tmp_path: Path) -> None:
    import subprocess
    import sys

    tests = str(Path(__file__).resolve().parent)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER.format(tests=tests, root=str(tmp_path), seed=seed,
                                                                     threads=torch.get_num_threads())],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert all(int(out.split()[-1]) >= 10 for out, _ in outputs), outputs  # each computed its own images at least
    encoder = PatchEncoder()
    everything = torch.cat([_images(3, r) for r in range(5)] + [_images(2, 100 + 10 * w + r) for w in range(2) for r in range(5)])
    reader = FeatureStore(tmp_path, 2**30)
    assert torch.equal(reader.features(encoder, everything), encoder_features(encoder, everything))
    assert reader.stats["computed"] == 0 and not list(tmp_path.rglob("*.tmp"))


def test_off_switch_and_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMBENCH_FEATURE_STORE_MB", "0")
    assert frozen_features(str(tmp_path)) is encoder_features and open_store(str(tmp_path)) is None
    monkeypatch.setenv("MMBENCH_FEATURE_STORE_MB", "64")
    store = open_store(str(tmp_path))
    assert store is not None and store.cap_bytes == 64 * 2**20 and open_store(str(tmp_path)) is store
    store.features(PatchEncoder(), _images(2))
    store.flush()
    assert store_usage(store.root)[1] == 1
    assert feature_store.clear_store(store.root) > 0 and store_usage(store.root) == (0, 0)


def test_mm_cache_shows_and_clears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mmbench_cli.cli import app
    from mmbench_cli.doctor import check_feature_store

    monkeypatch.setenv("MMBENCH_CACHE_DIR", str(tmp_path))
    store = open_store()
    assert store is not None
    store.features(PatchEncoder(), _images(3))
    store.flush()
    shown = CliRunner().invoke(app, ["cache"])
    assert shown.exit_code == 0 and str(tmp_path / "features") in shown.output and "1 shards" in shown.output
    assert "in 1 shards" in check_feature_store().detail
    cleared = CliRunner().invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0 and "freed" in cleared.output and store_usage(tmp_path / "features") == (0, 0)
    assert CliRunner().invoke(app, ["cache", "wipe"]).exit_code == 2


def test_the_estimate_counts_what_the_store_saves(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmbench_cli.ablate.estimate import store_savings
    from mmbench_cli.config import load_config

    cfg = load_config(None, ["train.steps=100", "data.num_train_images=500", "eval.num_samples=300",
                             "eval.shots=[0,4]", "eval.tasks=[synthetic-vqa]", "eval.batch_size=100"])
    cost = {"image_s": 0.002, "images_per_step": 50.0, "eval_images": 3 * 100 * (1 + 5)}  # as _measure_eval counts
    stored: dict[str, set[str]] = {}
    first = store_savings(cfg, cost, stored)  # pays for 500 distinct training images and 300 query images
    assert first == pytest.approx(((5000 - 500) * 0.002, (3 * 100 * (1 + 5) - 300) * 0.002))
    again = store_savings(cfg, cost, stored)  # the same encoder and data: nothing to compute
    assert again == pytest.approx((5000 * 0.002, 1800 * 0.002))
    other = load_config(None, ["model.image_size=32", "train.steps=100"])
    assert store_savings(other, cost, stored)[0] == pytest.approx((5000 - 4000) * 0.002)  # another store key
    trains = load_config(None, ["train.freeze_encoder=false"])
    assert store_savings(trains, cost, stored) == (0.0, 0.0)
    monkeypatch.setenv("MMBENCH_FEATURE_STORE_MB", "0")
    assert store_savings(cfg, cost, {}) == (0.0, 0.0)
