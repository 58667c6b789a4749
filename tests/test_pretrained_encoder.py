"""model.encoder: vit-tiny-clip — a pre-trained encoder made once, cached by content, loaded at a fresh start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmbench_cli.ablate.grid import Cell
from mmbench_cli.ablate.run import interleave_by_encoder
from mmbench_cli.config import load_config
from mmbench_cli.rundir import RunDir, file_content_hash
from mmbench_cli.train import pretrained_encoder
from mmbench_cli.train.loop import pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["model.encoder=vit-tiny-clip", "model.image_size=32", "model.lm=pythia-toy-1m", "model.num_image_tokens=4",
        "data.seq_len=64", "data.num_train_images=24", "data.num_val_images=8", "data.num_test_images=8",
        "train.steps=3", "train.batch_size=4", "train.warmup_steps=1", "train.checkpoint_every=3",
        "train.log_every=1", "data.world_version=4", "train.freeze_encoder=true"]


@pytest.fixture
def short_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A 4-step recipe (the real one takes minutes) and a cache of this test's own."""
    monkeypatch.setattr(pretrained_encoder, "ENCODER_RECIPE", {**pretrained_encoder.ENCODER_RECIPE, "steps": 4,
                                                               "batch_size": 8, "warmup_steps": 1})
    monkeypatch.setenv("MMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_key_follows_what_the_weights_depend_on() -> None:
    base = load_config(None, TINY)
    key = pretrained_encoder.encoder_dir(base)
    assert key is not None and key.name.startswith("vit-tiny-clip-32px-")
    assert pretrained_encoder.encoder_dir(load_config(None, ["model.encoder=vit-tiny"])) is None
    # the mixture, the seed, the connector, a registry LM, the training sequence length, the test split (never read
    # by encoder pre-training) and eval do not change it
    for same in ("data.data_mix.caption=1.0", "seed=3", "model.connector=avgpool", "model.lm=pythia-toy-2m",
                 "data.seq_len=192", "eval.num_samples=7", "eval.shots=[0]", "train.steps=5",
                 "train.freeze_encoder=false", "train.freeze_lm=true", "model.connector_pos_emb=true",
                 "data.num_test_images=2400"):
        assert pretrained_encoder.encoder_dir(load_config(None, [*TINY, same])) == key, same
    # the default encoder's key is the one it had before model.connector_pos_emb, train.freeze_lm and the 2400-image test split
    # existed (examples/reports/resolution-tokens/ at 9f6f3b7 names vit-tiny-clip-64px-f8c2b7daec144fea), so
    # encoders cached then are still found
    from mmbench_cli.model.device import resolve_device

    if resolve_device("auto").type == "cpu":  # the device type is part of the key
        assert pretrained_encoder.encoder_dir(load_config(None, [])).name == "vit-tiny-clip-64px-f8c2b7daec144fea"
    # resolution, the world and its size do
    for other in ("model.image_size=64", "data.world_version=1", "data.num_train_images=48"):
        assert pretrained_encoder.encoder_dir(load_config(None, [*TINY, other])) != key, other


def test_mae_entries_pre_train_with_mae_and_have_their_own_cache() -> None:
    clip, mae = (load_config(None, [*TINY, f"model.encoder=vit-small-{o}"]) for o in ("clip", "mae"))
    recipes = [pretrained_encoder.pretrain_config(c) for c in (clip, mae)]
    assert [r.train.encoder_objective for r in recipes] == ["clip", "mae"]
    assert {r.model.encoder for r in recipes} == {"vit-small"}
    assert pretrained_encoder.encoder_dir(mae).name.startswith("vit-small-mae-32px-")
    assert pretrained_encoder.encoder_dir(mae).name.split("-")[-1] != pretrained_encoder.encoder_dir(clip).name.split("-")[-1]


def test_made_once_then_loaded_and_runs_are_the_same_either_way(tmp_path: Path, short_recipe: Path) -> None:
    first = pretrain(load_config(None, TINY), tmp_path / "a", progress=False)
    cached = sorted((short_recipe / "encoders").iterdir())
    assert len(cached) == 1 and RunDir(cached[0]).read_status() == "done"
    meta = json.loads((first / "meta.json").read_text())
    assert meta["pretrained_encoder"]["dir"] == str(cached[0]) and meta["pretrained_encoder"]["pretrain_s"] > 0

    weights = meta["pretrained_encoder"]["weights"]  # the encoder's content hash, as the baseline check reads it
    assert weights == file_content_hash(cached[0] / "model.safetensors")

    second = pretrain(load_config(None, TINY), tmp_path / "b", progress=False)
    meta = json.loads((second / "meta.json").read_text())
    assert meta["pretrained_encoder"] == {"dir": str(cached[0]), "pretrain_s": 0.0, "weights": weights}
    assert sorted((short_recipe / "encoders").iterdir()) == cached  # reused, not made again

    # The cached encoder is what training started from, and (frozen) what it ended with; both runs' weights
    # are bit-identical although only the first one pre-trained (its random state was left as it was).
    from mmbench_cli.model import load_model
    from mmbench_cli.model.encoders import load_hf_encoder

    reference = load_hf_encoder(cached[0]).hf_model.state_dict()
    a, b = (load_model(run / "checkpoints" / "step_3") for run in (first, second))
    for name, tensor in reference.items():
        assert torch.equal(a.encoder.hf_model.state_dict()[name], tensor), name
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_cells_needing_different_encoders_are_interleaved() -> None:
    cells = [Cell(f"r{size}-t{tokens}", {}, {}, load_config(None, [*TINY, f"model.image_size={size}",
                                                                 f"model.num_image_tokens={tokens}"]))
             for size in (32, 64) for tokens in (4, 16)]
    assert [cell.id for cell in interleave_by_encoder(cells)] == ["r32-t4", "r64-t4", "r32-t16", "r64-t16"]
    plain = [Cell(cell.id, {}, {}, load_config(None, ["model.encoder=vit-tiny"])) for cell in cells]
    assert interleave_by_encoder(plain) == plain


def test_dry_run_counts_encoders_that_are_not_cached_yet(short_recipe: Path) -> None:
    from mmbench_cli.ablate.estimate import PRETRAIN_CALIBRATION_S, encoder_pretrain_estimate

    assert encoder_pretrain_estimate(load_config(None, ["model.encoder=vit-tiny"])) is None
    at_64 = load_config(None, [*TINY, "model.image_size=64"])
    directory, seconds = encoder_pretrain_estimate(at_64)
    steps = pretrained_encoder.ENCODER_RECIPE["steps"] * pretrained_encoder.ENCODER_RECIPE["batch_size"]
    assert seconds == pytest.approx(PRETRAIN_CALIBRATION_S * steps / (300 * 64))  # the calibration point, scaled
    assert encoder_pretrain_estimate(load_config(None, TINY))[1] == pytest.approx(seconds / 4)  # 32 px: 1/4 patches
    Path(directory).mkdir(parents=True)
    (Path(directory) / "model.safetensors").write_bytes(b"")
    assert encoder_pretrain_estimate(at_64) is None  # cached: free


def test_mm_build_saves_the_pretrained_encoder(tmp_path: Path, short_recipe: Path) -> None:
    """A model saved by `mm build -o` with a pre-trained registry encoder carries the cached weights, not an init."""
    from typer.testing import CliRunner

    from mmbench_cli.cli import app
    from mmbench_cli.model import load_model

    shown = CliRunner().invoke(app, ["build", *TINY])
    assert shown.exit_code == 0, shown.output
    assert "pre-trained once and cached" in shown.output and not (short_recipe / "encoders").exists()
    result = CliRunner().invoke(app, ["build", *TINY, "-o", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    cached = pretrained_encoder.encoder_dir(load_config(None, TINY))
    assert cached is not None and RunDir(cached).read_status() == "done"
    reference = load_model(tmp_path / "model")  # compare with a fresh model that loads the cache itself
    fresh = load_model(tmp_path / "model")
    torch.manual_seed(123)
    for parameter in fresh.encoder.parameters():
        parameter.data.normal_()
    pretrained_encoder.load_pretrained_encoder(fresh, cached)
    for (name, saved), loaded in zip(reference.encoder.state_dict().items(), fresh.encoder.state_dict().values(),
                                     strict=True):
        assert torch.equal(saved, loaded), name


def test_a_collapsed_pre_training_is_run_again_from_the_next_seed(short_recipe: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """When the held-out retrieval of the built-in recipe's encoder is near chance (the default 32 px encoder's
    seed 0 collapsed), it is pre-trained again from seed 1; the cached encoder is the seed-1 one and says so. An
    encoder that trains at seed 0 is made once (the same as before the retry existed)."""
    calls: list[float] = []

    def collapse_first(scores: dict) -> bool:  # the first attempt "collapses" (a 4-step encoder is at chance anyway)
        calls.append(scores["val_retrieval_top1"])
        return len(calls) == 1

    monkeypatch.setattr(pretrained_encoder, "retrieval_near_chance", collapse_first)
    cached, _ = pretrained_encoder.ensure_pretrained_encoder(load_config(None, TINY), progress=False)
    assert len(calls) == 2
    assert json.loads((cached / "meta.json").read_text())["collapsed_seeds"] == [0]
    assert "seed: 1" in (cached / "config.yaml").read_text()

    calls.clear()
    monkeypatch.setattr(pretrained_encoder, "retrieval_near_chance", lambda scores: calls.append(0.0) or False)
    other, _ = pretrained_encoder.ensure_pretrained_encoder(load_config(None, [*TINY, "model.image_size=64"]),
                                                           progress=False)
    assert len(calls) == 1 and "collapsed_seeds" not in json.loads((other / "meta.json").read_text())
    assert "seed: 0" in (other / "config.yaml").read_text()
