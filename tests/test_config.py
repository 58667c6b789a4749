"""Config loading, overrides and their error messages."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from mmbench_cli.config import (
    Config,
    DataConfig,
    apply_overrides,
    config_hash,
    config_to_dict,
    load_config,
    load_saved_config,
    split_config_args,
)
from mmbench_cli.errors import MMError

REPO = Path(__file__).resolve().parents[1]


def test_base_yaml_equals_builtin_defaults() -> None:
    assert load_config(REPO / "mmbench_cli" / "resources" / "base.yaml") == Config()


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(None, ["model.connector=avgpool", "model.num_image_tokens=64", "eval.shots=[0,4]",
                             "train.lr=mm1-rule", "train.freeze_encoder=true"])
    assert cfg.model.connector == "avgpool"
    assert cfg.model.num_image_tokens == 64
    assert cfg.eval.shots == [0, 4]
    assert cfg.train.lr == "mm1-rule"
    assert cfg.train.freeze_encoder is True


def test_overrides_apply_on_top_of_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  image_size: 96\ntrain:\n  steps: 5\n")
    cfg = load_config(path, ["train.steps=7"])
    assert (cfg.model.image_size, cfg.train.steps) == (96, 7)


def test_data_mix_override_replaces_whole_mapping() -> None:
    data = apply_overrides({}, ["data.data_mix={caption: 1.0}"])
    assert data == {"data": {"data_mix": {"caption": 1.0}}}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.bogus=1"], "model.bogus: unknown key; allowed keys here: encoder"),
        (["model.num_image_tokens=-4"], "model.num_image_tokens"),
        (["data.data_mix={caption: 0.5, audio: 0.5}"], "unknown data type 'audio'"),
        (["data.data_mix={caption: 0.5, text: 0.3}"], "sum to 1"),
        (["train.precision=fp8"], "train.precision: invalid value 'fp8'"),
        (["data.seq_len=9999"], "exceeds model.max_seq_len"),
        (["nonsense"], "not of the form key.sub=value"),
        (["model=3"], "model"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(MMError) as info:
        load_config(None, overrides)
    assert expected in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("model: [unclosed", "not valid YAML"), ("- a\n- b\n", "expected a YAML mapping")],
)
def test_garbled_yaml(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MMError, match=expected):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(MMError, match="no such config file"):
        load_config("does/not/exist.yaml")


def test_split_config_args() -> None:
    assert split_config_args(["a.yaml", "x.y=1"]) == ("a.yaml", ["x.y=1"])
    assert split_config_args(["x.y=1"]) == (None, ["x.y=1"])
    with pytest.raises(MMError, match="at most one config file"):
        split_config_args(["a.yaml", "b.yaml"])


def test_grid_cell_config_path_with_equals_is_a_path(tmp_path: Path) -> None:
    cell = tmp_path / "resolution=64,tokens=16" / "config.yaml"
    cell.parent.mkdir()
    cell.write_text("seed: 3\n")
    assert split_config_args([str(cell), "train.steps=5"]) == (str(cell), ["train.steps=5"])
    assert load_config(str(cell), ["train.steps=5"]).seed == 3
    with pytest.raises(MMError, match="no such config file"):
        split_config_args([str(tmp_path / "tokens=4" / "config.yaml")])


def test_config_hash_tracks_content() -> None:
    assert config_hash(Config()) == config_hash(load_config(None, []))
    assert config_hash(Config()) != config_hash(load_config(None, ["seed=1"]))


# The built-in defaults before world version 4 became the default (issue 13).
FIRST_DEFAULTS = ["model.encoder=vit-tiny", "data.world_version=1", "train.steps=300", "train.freeze_encoder=false",
                  "eval.shots=[0,4,8]", "eval.num_samples=100", "data.num_test_images=400", "eval.batch_size=16",
                  "model.connector_pos_emb=false"]


def test_a_saved_config_takes_the_values_of_its_time_for_fields_added_later(tmp_path: Path) -> None:
    """A run's config.yaml written before data.world_version existed was made with world 1, not today's default."""
    first = config_to_dict(load_config(None, FIRST_DEFAULTS))
    del first["data"]["world_version"], first["train"]["cpu_threads"], first["model"]["connector_pos_emb"]
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(first))
    loaded = load_saved_config(saved)
    assert loaded.data.world_version == 1 and loaded.train.cpu_threads == 1 and not loaded.model.connector_pos_emb
    assert config_hash(loaded) == config_hash(load_config(None, FIRST_DEFAULTS))
    assert load_config(saved).data.world_version == Config().data.world_version == 4  # a user's file: defaults


def test_world_version_1_keeps_the_hashes_of_configs_saved_before_the_field() -> None:
    """A config saved before data.world_version existed hashes as it did then (grid resume checks hashes)."""
    cfg = load_config(None, FIRST_DEFAULTS)
    later = {"data": ("world_version",), "model": ("resize_embeddings", "connector_pos_emb", "fusion", "xattn_every"),
             "train": ("cpu_threads", "trackers", "encoder_lr_scale", "freeze_lm", "strategy", "fsdp_sharding",
                       "activation_checkpointing", "init_from"), "eval": ("vqa_normalize", "rices_encoder")}
    saved = {name: {k: v for k, v in section.items() if k not in later.get(name, ())} if isinstance(section, dict)
             else section for name, section in config_to_dict(cfg).items()}
    old = hashlib.sha256(json.dumps(saved, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(cfg) == old == "2f9325b5312d3847"  # the first default config's hash, before those fields
    assert config_hash(load_config(None, [*FIRST_DEFAULTS, "data.world_version=2"])) != old
    assert config_hash(DataConfig()) != config_hash(DataConfig(world_version=2))
