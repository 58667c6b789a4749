"""Pre-trained encoders by name: ``model.encoder: vit-tiny-clip`` starts training from a CLIP-pre-trained ViT.

MM1 starts from a pre-trained CLIP encoder; at toy scale the encoder is pre-trained here, once, on the run's
own image-caption data (``mm pretrain --stage encoder`` with a fixed recipe, ``ENCODER_RECIPE``) and cached by
content like the tokenizer: ``<cache>/encoders/<name>-<key>/``, where the key hashes everything the weights
depend on (the recipe, the ViT and its resolution, the data that feeds it, the device type and CPU threads). A
second run, or a second cell of a grid, that needs the same encoder loads it; a concurrent one waits for it. The
data mixture, the connector, the LM and the training seed do not change the key, so the cells of a grid share
their encoders. The run records which cached encoder it started from (``meta.json``: ``pretrained_encoder``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.config import (
    HASH_NEUTRAL_FIELDS,
    Config,
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_to_dict,
    is_local_path,
)
from mmbench_cli.errors import MMError
from mmbench_cli.registry import ENCODERS
from mmbench_cli.rundir import RunDir, RunLock, cache_root, read_json_file, retrieval_near_chance

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

RECIPE_VERSION = 2  # bump when the recipe or the pre-training code changes what the weights are
# 2: a CLIP pre-training whose held-out retrieval stays near chance (a collapsed start: vit-tiny-clip at 32 px with
#    seed 0 kept its loss at ln 64 for 250 of 300 steps) is run again from the next seed, up to COLLAPSE_RETRIES
#    times; encoders that trained at the first seed are bit-identical to version 1's.
COLLAPSE_RETRIES = 2
# 300 CLIP steps of 64 pairs: 142 s at 64 px on one CPU core; held-out top-1 retrieval among 128 pairs ~44%
# (chance 0.8%), colour/shape/word probes in benchmarks/results/diagnose_world.json.
ENCODER_RECIPE: dict[str, Any] = {"steps": 300, "batch_size": 64, "lr": 0.002, "warmup_steps": 30,
                                  "weight_decay": 0.1, "min_lr_ratio": 0.1, "grad_clip": 1.0}
WAIT_POLL_S = 2.0


def pretrain_config(cfg: Config) -> Config | None:
    """The ``--stage encoder`` config that makes ``cfg``'s pre-trained encoder, or None if it names none."""
    if is_local_path(cfg.model.encoder):
        return None
    spec = ENCODERS.get(cfg.model.encoder)
    if getattr(spec, "pretrain", None) is None:
        return None
    defaults = ModelConfig()
    hf_lm = is_local_path(cfg.model.lm)  # the caption tokenizer: an hf: LM's own, else the synthetic BPE
    model = ModelConfig(encoder=spec.base, image_size=cfg.model.image_size, patch_size=cfg.model.patch_size,
                        tokenizer=cfg.model.tokenizer, vocab_size=cfg.model.vocab_size,
                        lm=cfg.model.lm if hf_lm else defaults.lm)
    # what the encoder's weights do not depend on is normalised, so those settings share one cached encoder
    # (captions are cut at encoder_pretrain.CAPTION_MAX_TOKENS, not data.seq_len)
    # (and the test split, which encoder pre-training never reads: held at 800, the default until the 2400 one, so
    # the default's encoders cached before keep their keys; a config with another test size got a new key once)
    data = cfg.data.model_copy(update={"data_mix": DataConfig().data_mix, "num_workers": 0, "cache_dir": None,
                                       "seq_len": DataConfig().seq_len, "num_test_images": 800})
    train = TrainConfig(stage="encoder", encoder_objective=spec.pretrain, device=cfg.train.device, freeze_encoder=False,
                        precision=cfg.train.precision, cpu_threads=cfg.train.cpu_threads, log_every=10,
                        **ENCODER_RECIPE)
    return Config(name=f"{cfg.model.encoder}-{cfg.model.image_size}px", seed=0, model=model, data=data, train=train)


# fields added to the config after encoders had been cached (each in config.HASH_NEUTRAL_FIELDS)
LATER_FIELDS = {"model": ("fusion", "xattn_every"),
                "train": ("strategy", "fsdp_sharding", "activation_checkpointing", "init_from")}


def cache_key(recipe: Config) -> str:
    """The content key of a pre-trained encoder: its config (the recipe, without the eval section, which the
    weights do not depend on), the recipe version and the device type."""
    from mmbench_cli.model.device import resolve_device

    config = {section: value for section, value in config_to_dict(recipe).items() if section != "eval"}
    # a setting of the MLLM's connector, which an encoder has none of; left out so that the keys of the encoders
    # cached before the field existed stay valid
    config["model"].pop("connector_pos_emb", None)
    config["train"].pop("freeze_lm", None)  # likewise an MLLM-stage setting, added later
    # settings added after that, left out while they hold the value that reproduces earlier runs
    for section, names in LATER_FIELDS.items():
        for name in names:
            if name in config[section] and config[section][name] == HASH_NEUTRAL_FIELDS[section][name]:
                del config[section][name]
    payload = {"recipe_version": RECIPE_VERSION, "config": config,
               "device": resolve_device(recipe.train.device).type}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def encoder_dir(cfg: Config) -> Path | None:
    """Where ``cfg``'s pre-trained encoder is (or will be) cached; None if ``model.encoder`` names none."""
    recipe = pretrain_config(cfg)
    return None if recipe is None else _cache_dir(cfg, recipe)


def _cache_dir(cfg: Config, recipe: Config) -> Path:
    return cache_root(cfg.data.cache_dir) / "encoders" / f"{cfg.model.encoder}-{cfg.model.image_size}px-{cache_key(recipe)}"


def _ready(directory: Path) -> bool:
    return (directory / "model.safetensors").exists() and RunDir(directory).read_status() == "done"


def ensure_pretrained_encoder(cfg: Config, progress: bool = True, build: bool = True) -> tuple[Path, float] | None:
    """Pre-train ``cfg``'s encoder unless it is cached; return (its dir, seconds spent pre-training or waiting).

    None when ``model.encoder`` is not a pre-trained registry entry. A concurrent process making the same encoder
    holds a lock; this one waits for it (a lock left by a killed process is reclaimed). ``build=False`` only
    waits (the other ranks of a torchrun job, while rank 0 builds). The caller's random state is left as it was,
    so a run is the same whether its encoder was cached or made just now.
    """
    with _preserved_rng():
        return _ensure(cfg, progress, build)


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU and CUDA) random states afterwards."""
    import random

    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _ensure(cfg: Config, progress: bool, build: bool) -> tuple[Path, float] | None:
    recipe = pretrain_config(cfg)
    if recipe is None:
        return None
    final = _cache_dir(cfg, recipe)
    if _ready(final):
        return final, 0.0
    started = time.perf_counter()
    building = final.with_name(final.name + ".building")
    announced = False
    while True:
        lock = RunLock(building, "pre-trained encoder")
        try:
            if not build:
                raise MMError(f"{final}: waiting for the main process to pre-train it")
            lock.acquire()
        except MMError as busy:
            if not announced and progress:
                print(f"waiting: {busy.message}", flush=True)
                announced = True
            time.sleep(WAIT_POLL_S)
            if _ready(final):
                return final, time.perf_counter() - started
            continue
        try:
            if not _ready(final):
                _build(recipe, building, final, progress)
        finally:
            shutil.rmtree(building / "run", ignore_errors=True)  # a failed build's leftovers, still under the lock
            lock.release()
            with contextlib.suppress(OSError):  # left in place if another process has just taken the lock in it
                building.rmdir()
        return final, time.perf_counter() - started


def _build(recipe: Config, building: Path, final: Path, progress: bool) -> None:
    """Pre-train into ``building/run`` and move the finished dir to ``final`` in one rename. A CLIP pre-training
    that did not take off (held-out retrieval near chance) is run again from the next seed, at most
    ``COLLAPSE_RETRIES`` times; meta.json records the seeds tried (``collapsed_seeds``)."""
    from mmbench_cli.train.encoder_pretrain import pretrain_encoder

    out = building / "run"
    if progress:
        print(f"pre-training {recipe.name} once ({recipe.train.encoder_objective}, {recipe.train.steps} steps); "
              f"cached in {final}", flush=True)
    collapsed: list[int] = []
    for attempt in range(COLLAPSE_RETRIES + 1):
        shutil.rmtree(out, ignore_errors=True)
        attempt_recipe = recipe.model_copy(update={"seed": recipe.seed + attempt})
        pretrain_encoder(attempt_recipe, out, force=True, progress=progress, inside_distributed=True)
        if not retrieval_near_chance(read_json_file(RunDir(out).encoder_eval_path)) or attempt == COLLAPSE_RETRIES:
            break
        collapsed.append(attempt_recipe.seed)
        if progress:
            print(f"{recipe.name}: seed {attempt_recipe.seed} did not take off; pre-training again from seed "
                  f"{attempt_recipe.seed + 1}", flush=True)
    if collapsed:
        RunDir(out).update_meta({"collapsed_seeds": collapsed})
    shutil.rmtree(final, ignore_errors=True)  # a damaged entry (never a finished one: _ready said no)
    os.replace(out, final)


def load_pretrained_encoder(model: nn.Module, directory: Path) -> None:
    """Copy the cached encoder's weights (read from safetensors by ``from_pretrained``, which maps the names
    ``save_pretrained`` wrote) into ``model.encoder``; every tensor must fit exactly."""
    from mmbench_cli.model.encoders import load_hf_encoder

    state = load_hf_encoder(directory).hf_model.state_dict()
    try:
        model.encoder.hf_model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise MMError(f"{directory}: cached encoder does not fit model.encoder ({str(error).splitlines()[0][:160]}); "
                      "delete the dir to rebuild it") from None
