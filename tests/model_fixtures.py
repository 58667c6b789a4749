"""Tiny randomly initialised models for tests, saved the way `mm build -o` saves them."""

from __future__ import annotations

from pathlib import Path


def save_tiny_model(out: Path, overrides: list[str], config_dir: Path | None = None) -> Path:
    """Build the default config's MLLM with ``overrides`` (torch seed 0), save it into ``out`` and write its
    resolved ``config.yaml`` into ``config_dir`` (default: beside the model). Returns ``out``."""
    import torch

    from mmbench_cli.config import config_to_yaml, load_config
    from mmbench_cli.data.synthetic import tokenizer_source
    from mmbench_cli.model import build_model

    torch.manual_seed(0)
    cfg = load_config(None, overrides)
    build_model(cfg.model, tokenizer_source(cfg.data)).save_pretrained(out)
    (config_dir or out).mkdir(parents=True, exist_ok=True)
    ((config_dir or out) / "config.yaml").write_text(config_to_yaml(cfg))
    return out


# Tests of mechanics (training loop, faults, grids, reports) train a randomly initialised, trainable ViT: the
# default encoder (vit-tiny-clip, frozen) is CLIP-pre-trained once per data config, a minute or more each.
MECHANICS = ["model.encoder=vit-tiny", "train.freeze_encoder=false"]
