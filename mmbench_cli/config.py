"""Configuration: pydantic models loaded from YAML, with ``key.sub=value`` overrides.

Every knob has a default, so ``load_config(None, [])`` is the built-in MM1-shaped toy config (the same as
``ablations/base.yaml``). Names follow MM1 where MM1 has one (``image_size``, ``num_image_tokens``,
``connector``, ``encoder``, ``data_mix``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmbench_cli.errors import MMError
from mmbench_cli.resources import resource_path

DATA_TYPES = ("caption", "interleaved", "text", "instruction")  # instruction: dialogues, train.stage sft

# What a config may ask for (docs/architecture.md, "Limits"). Beyond these a run cannot be built in seconds or
# would overflow torch, so bad input is refused at once with the limit in the error instead of hanging.
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed/unsigned 64-bit integer
MAX_IMAGES = 50_000  # synthetic images per split: their scenes and samples are built up front (~0.5 ms each)
MAX_STEPS = 10_000_000  # optimizer steps (and warm-up, checkpoint and log intervals)
MAX_BATCH = 65_536  # sequences per step, prompts per generation batch
MAX_IMAGE_SIZE = 4096  # pixels per side
MAX_TOKENS = 131_072  # sequence lengths, image tokens, vocabulary entries / 8
MAX_EVAL_SAMPLES = 1_000_000
MAX_SHOTS = 256
MAX_DEMO_SEEDS = 100
MAX_SCALE = 1e6  # gradient clipping, learning-rate scales (a huge train.lr is stopped by the non-finite-loss guard)
# A config file's shape: YAML aliases can make a tiny file expand to billions of values (an "alias bomb").
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64
MAX_YAML_BYTES = 4 * 2**20


class _Strict(BaseModel):
    # allow_inf_nan: NaN and infinity are refused in every float, mappings (data.data_mix) included
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    """The MLLM: image encoder → vision-language connector → decoder-only LM."""

    encoder: str = Field("vit-tiny-clip", description="registry name (vit-tiny-clip: CLIP-pre-trained once, cached), "
                         "hf:<local dir>, or a dir saved by mm pretrain --stage encoder")
    image_size: int = Field(64, gt=0, le=MAX_IMAGE_SIZE, description="input resolution in pixels (square)")
    patch_size: int = Field(8, gt=0, le=MAX_IMAGE_SIZE, description="ViT patch size for built-from-config encoders")
    connector: str = Field("c-abstractor", description="vision-language connector (registry name)")
    num_image_tokens: int = Field(16, gt=0, le=MAX_TOKENS, description="tokens each image becomes in the LM's input")
    connector_pos_emb: bool = Field(False, description="add a learned position embedding to the patch features "
                                    "before the connector (Honeybee's pos_emb), so image tokens carry where they "
                                    "looked (off by default: it made the toy grid's seeds 4-8x further apart)")
    fusion: str = Field("splice", description="how the LM reads the image: splice (image tokens in the input, MM1), "
                        "xattn (Flamingo's gated cross-attention blocks), mam (splice + mPLUG-Owl2's modality-adaptive "
                        "norms and K/V); docs/model.md")
    xattn_every: int = Field(1, gt=0, le=1024, description="xattn: a cross-attention block before every this many LM layers")
    lm: str = Field("pythia-toy-2m", description="language model: size-ladder name or hf:<local dir>")
    tokenizer: str = Field("auto", description="auto (an hf: LM's own tokenizer if its dir has one, else synthetic-bpe), "
                           "synthetic-bpe (trained on the synthetic corpus) or hf:<local dir>")
    vocab_size: int = Field(2048, gt=0, le=8 * MAX_TOKENS, description="vocabulary size of the trained BPE tokenizer")
    max_seq_len: int = Field(256, gt=0, le=MAX_TOKENS, description="longest sequence (text + image tokens) the LM sees")
    resize_embeddings: bool = Field(False, description="let an hf: LM take a tokenizer that is not its own (its "
                                    "embedding table is resized to it); off: refused")

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto_tokenizer(cls, data: Any) -> Any:
        # ``auto`` with a built-in LM can only mean the synthetic BPE: resolved here, so such a config saves (and
        # hashes) exactly as configs written before ``auto`` existed; with an hf: LM it is resolved at build time.
        if isinstance(data, dict) and data.get("tokenizer", "auto") == "auto":
            lm = data.get("lm", cls.model_fields["lm"].default)
            if isinstance(lm, str) and not is_local_path(lm):
                data = {**data, "tokenizer": "synthetic-bpe"}
        return data


class DatasetSpec(_Strict):
    """One real dataset read from local files (see docs/data.md for the formats)."""

    format: str = Field(..., description="a data format name, e.g. coco-captions, vqav2, textvqa, llava, interleaved-jsonl")
    path: str = Field(..., description="annotation file (or HF datasets directory)")
    images: str | None = Field(None, description="directory holding the images referenced by the annotations")
    questions: str | None = Field(None, description="VQAv2/OK-VQA questions file (annotations go in `path`)")
    url_map: str | None = Field(None, description="interleaved-jsonl: file mapping image URLs to local files "
                                "(JSON {url: path}, JSONL, or url<TAB>path lines); see docs/data.md")
    kind: Literal["caption", "vqa", "interleaved", "text", "instruction"] | None = Field(
        None, description="override the sample kind (instruction: LLaVA dialogues for train.stage sft)")
    split: str = "train"
    weight: float = Field(1.0, gt=0)


class DataConfig(_Strict):
    """Pre-training data: the synthetic world by default, or local datasets."""

    source: Literal["synthetic", "local"] = "synthetic"
    world_seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the synthetic world (independent of the training seed)")
    world_version: Literal[1, 2, 3, 4, 5] = Field(4, description="synthetic world version (4: Sort-of-CLEVR-like, "
                                                    "the default; 5: 4 with legible text; 1-3: the first worlds; "
                                                    "docs/data.md)")
    num_train_images: int = Field(4000, gt=0, le=MAX_IMAGES)
    num_val_images: int = Field(200, gt=0, le=MAX_IMAGES)
    num_test_images: int = Field(2400, gt=0, le=MAX_IMAGES)
    data_mix: dict[str, float] = Field(default_factory=lambda: {"caption": 0.45, "interleaved": 0.45, "text": 0.10})
    seq_len: int = Field(128, gt=0, le=MAX_TOKENS, description="packed training sequence length in tokens")
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes")
    cache_dir: str | None = Field(None, description="where rendered images/tokenizers are cached (default ~/.cache/mmbench)")
    datasets: list[DatasetSpec] = Field(default_factory=list, description="local datasets (source: local)")
    skip_bad: bool = Field(False, description="skip and count bad samples instead of failing")

    @field_validator("data_mix")
    @classmethod
    def _check_mix(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(mix) - set(DATA_TYPES))
        if unknown:
            raise ValueError(f"unknown data type {unknown[0]!r}; choose from: {', '.join(DATA_TYPES)}")
        if any(weight < 0 for weight in mix.values()):
            raise ValueError("proportions must be >= 0")
        total = sum(mix.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"proportions must sum to 1 (they sum to {total:g})")
        return mix


class TrainConfig(_Strict):
    """Optimisation and checkpointing (Pythia-style log-spaced checkpoints)."""

    stage: Literal["mllm", "encoder", "sft"] = Field(
        "mllm", description="mllm: pre-training on data.data_mix; encoder: the image encoder alone; sft: instruction "
        "tuning on dialogues (data type instruction only), the loss on the answers")
    steps: int = Field(600, gt=0, le=MAX_STEPS)
    batch_size: int = Field(16, gt=0, le=MAX_BATCH, description="sequences per optimizer step (global, across DDP ranks)")
    grad_accum: int = Field(1, gt=0, le=MAX_BATCH)
    lr: float | Literal["mm1-rule"] = Field(2e-3, description="peak learning rate, or mm1-rule: exp(-0.4214 ln N - 0.5535)")
    weight_decay: float | Literal["mm1-rule"] = Field(0.1, description="AdamW weight decay, or mm1-rule: 0.1 * lr")
    warmup_steps: int = Field(30, ge=0, le=MAX_STEPS)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    grad_clip: float = Field(1.0, ge=0, le=MAX_SCALE)
    freeze_encoder: bool = Field(True, description="keep the (pre-trained) image encoder fixed in the mllm stage")
    freeze_lm: bool = Field(False, description="keep the LM fixed in the mllm stage (LLaVA's stage 1: with a frozen "
                                               "encoder only the connector trains)")
    encoder_lr_scale: float = Field(1.0, gt=0, le=MAX_SCALE, description="the image encoder's learning rate relative to train.lr")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    cpu_threads: int = Field(1, ge=1, le=256, description="torch intra-op threads on CPU (training and eval). "
                             "Part of the run's identity: another count sums floats in another order, so the "
                             "numbers differ in the last bits and then diverge")
    checkpoint_every: int = Field(100, gt=0, le=MAX_STEPS, description="after the log-spaced steps, a checkpoint every K steps")
    log_spaced_checkpoints: bool = True
    log_every: int = Field(10, gt=0, le=MAX_STEPS)
    encoder_objective: Literal["clip", "negclip", "twinclip", "bow", "attributes", "mae"] = Field(
        "clip", description="objective of --stage encoder (negclip: CLIP + hard negatives with swapped shapes/words; "
                            "twinclip: CLIP on batches of synthetic images and their counterfactual twins; "
                            "bow: predict the caption's words, CatLIP-style; attributes: supervised on the synthetic "
                            "scenes' labels, what is in each cell, the word, the count)")
    strategy: Literal["auto", "single", "ddp", "fsdp"] = Field(
        "auto", description="how the model is trained across processes (train/strategies.py): auto (ddp under torchrun, "
        "else single), single, ddp (replicated weights), fsdp (FSDP2 fully_shard: weights, gradients and optimizer "
        "state sharded per LM block; under torchrun)")
    fsdp_sharding: Literal["full", "grad_op"] = Field(
        "full", description="train.strategy=fsdp: full (weights resharded after each block's forward: least memory) or "
        "grad_op (weights kept gathered from forward to backward: less communication, as ZeRO-2)")
    activation_checkpointing: bool = Field(False, description="recompute each LM block's activations in the backward "
                                           "pass instead of keeping them (less memory, ~1/3 more compute)")
    init_from: str | None = Field(
        None, description="start from another run's weights: RUN_DIR (its last checkpoint) or RUN_DIR:STEP, with a "
        "fresh optimizer and schedule (a training stage: e.g. connector alignment, then full training); parameters "
        "the source lacks keep their fresh initialisation and are reported")
    trackers: list[Literal["jsonl", "tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="where training metrics and eval results go: jsonl (the run dir's own files, always written) "
        'plus tensorboard, mlflow, wandb (offline; pip install "mmbench[tracking]")')

    @field_validator("lr")
    @classmethod
    def _check_lr(cls, lr: float | str) -> float | str:
        if isinstance(lr, float) and not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"must be a positive finite number or mm1-rule, got {lr!r}")
        return lr

    @field_validator("weight_decay")
    @classmethod
    def _check_weight_decay(cls, weight_decay: float | str) -> float | str:
        if isinstance(weight_decay, float) and not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"must be a finite number >= 0 or mm1-rule, got {weight_decay!r}")
        return weight_decay


class EvalConfig(_Strict):
    """Few-shot evaluation defaults (overridable by mm eval flags)."""

    tasks: list[str] = Field(default_factory=lambda: ["synthetic-caption", "synthetic-vqa", "synthetic-ocr"])
    shots: list[int] = Field(default_factory=lambda: [0, 4])
    seeds: int = Field(1, gt=0, le=MAX_DEMO_SEEDS, description="demo-sampling seeds (random selection); mean ± std reported")
    demo_selection: Literal["random", "rices"] = "random"
    num_samples: int = Field(2400, gt=0, le=MAX_EVAL_SAMPLES, description="query samples per task (from the test split)")
    batch_size: int = Field(64, gt=0, le=MAX_BATCH)
    max_new_tokens: int = Field(16, gt=0, le=MAX_TOKENS, description="not what mm eval generates: each task sets its "
                                "own answer length (caption 20, VQA 5, POPE 3; mm eval --max-new-tokens overrides "
                                "them); the dry-run estimate uses it for tasks it cannot read")
    num_beams: int = Field(1, gt=0, le=64)
    zero_shot_text_demos: bool = Field(False, description="Flamingo's 0-shot variant: two text-only demos")
    all_checkpoints: bool = Field(False, description="mm ablate: evaluate every checkpoint (dynamics), not only the last")
    vqa_normalize: Literal["official", "always"] = Field(
        "official", description="VQA accuracy: official (GT-Vision-Lab's current script: normalise prediction and "
        "answers only when the 10 answers differ) or always (normalise both always, as LLaVA/lmms-eval)")
    rices_encoder: str | None = Field(None, description="RICES similarity from this CLIP-style encoder (hf:<dir>) "
                                      "instead of the model's own image features")

    @field_validator("shots")
    @classmethod
    def _check_shots(cls, shots: list[int]) -> list[int]:
        if any(k < 0 or k > MAX_SHOTS for k in shots):
            raise ValueError(f"shot counts must be between 0 and {MAX_SHOTS}")
        return shots


class Config(_Strict):
    """A whole run: model, data, training and evaluation."""

    name: str = "mm1-toy"
    seed: int = Field(0, ge=0, le=MAX_SEED, description="training seed (init, data order)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _check_lengths(self) -> Config:
        if self.data.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})"
            )
        return self


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value), parsing the value as YAML (so 3, 1e-3, [0,4], true work)."""
    if "=" not in text:
        raise MMError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise MMError(f"override {text!r} has an empty key")
    try:
        value = load_yaml_text(raw, f"override {text!r}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if not is_plain_data(value):  # a date, !!binary, !!set...: keep what the user typed
        value = raw
    return key.split("."), value


def is_plain_data(value: Any) -> bool:
    """Whether ``value`` is JSON-like data (mappings with scalar keys, lists, strings, numbers, booleans, null)."""
    if isinstance(value, dict):
        return all((key is None or isinstance(key, (str, int, float, bool))) and is_plain_data(item)
                   for key, item in value.items())
    if isinstance(value, list):
        return all(is_plain_data(item) for item in value)
    return value is None or isinstance(value, (str, int, float, bool))


def set_dotted(data: dict[str, Any], keys: list[str], value: Any, where: str) -> None:
    """Set ``data[k1][k2]...[kn] = value`` in place (a copy of ``value``), making missing sections.

    ``where`` names the setting in errors (e.g. ``override 'a.b=1'``); a key path through a non-section
    value is an MMError.
    """
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise MMError(f"{where}: {'.'.join(keys[: depth + 1])} is not a config section")
        node = child
    node[keys[-1]] = json.loads(json.dumps(value))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the config dict ``data`` with each ``a.b=value`` override set."""
    result = json.loads(json.dumps(data))
    for text in overrides:
        keys, value = parse_override(text)
        set_dotted(result, keys, value, f"override {text!r}")
    return result


_UNION_MEMBER = re.compile(r"^(float|int|str|bool|literal\[.*\]|function-.*)$")


def _format_validation_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    # a union's member (``train.lr``: float | "mm1-rule") shows in the location as its type: not a key
    parts = [str(part) for part in first["loc"] if not _UNION_MEMBER.match(str(part))]
    location = ".".join(parts) or "config"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        section = _section_for(first["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else ""
        message = f"unknown key; allowed keys here: {allowed}"
    elif first["type"] == "literal_error":
        message = f"invalid value {first.get('input')!r}; {message}"
    elif first["type"] in ("less_than_equal", "finite_number"):
        message = f"{message} (a limit of mmbench: docs/architecture.md)"
    return f"{source}: {location}: {message}"


def _section_for(location: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in location:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict into a Config; errors become one-line MMErrors naming the key."""
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        raise MMError(_format_validation_error(error, source)) from None


_UNKNOWN_TAG = re.compile(r"constructor for the tag '([^']*)'")


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping that names one key twice (plain YAML keeps the last silently; a config refuses it)."""


class _ConfigLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (merge keys ``<<`` may still be overridden, as YAML means them)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeConstructor names it
                continue
            if duplicate:
                raise DuplicateKeyError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _check_shape(data: Any, where: str) -> None:
    """MMError if ``data`` nests deeper than MAX_YAML_DEPTH or holds more than MAX_YAML_VALUES values, counting
    each use of a YAML alias (the walk stops at the limit, so an alias bomb is refused at once)."""
    count, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise MMError(f"{where}: more than {MAX_YAML_VALUES:,} values (YAML aliases count each time they are "
                          "used); a config is small: remove the repeated aliases")
        if depth > MAX_YAML_DEPTH:
            raise MMError(f"{where}: nested deeper than {MAX_YAML_DEPTH} levels; a config is a few sections deep")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in (*value.keys(), *value.values()))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def load_yaml_text(text: str, where: str) -> Any:
    """Parse YAML text the way every config is read: safe_load, no duplicate keys, bounded in depth and size
    (MMError naming ``where``); other YAML errors propagate as ``yaml.YAMLError`` for the caller to word."""
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise MMError(f"{where}: nested deeper than {MAX_YAML_DEPTH} levels; a config is a few sections deep") from None
    except DuplicateKeyError as error:
        mark = error.problem_mark
        raise MMError(f"{where}: {error.problem}" + (f" (line {mark.line + 1})" if mark else "")
                      + "; give each key once") from None
    _check_shape(data, where)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with safe_load; missing, unreadable or garbled files are MMErrors."""
    path = Path(path)
    if not path.exists():
        raise MMError(f"{path}: no such config file")
    if path.is_dir():
        raise MMError(f"{path}: is a directory, expected a YAML config file")
    if not path.is_file():  # a FIFO would block the read forever, a device never end
        raise MMError(f"{path}: not a regular file (a pipe, socket or device); pass a YAML config file")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise MMError(f"{path}: {path.stat().st_size:,} bytes; a config file is at most {MAX_YAML_BYTES:,}")
        data = load_yaml_text(path.read_text(encoding="utf-8"), str(path))
    except OSError as error:
        raise MMError(f"{path}: cannot read ({error.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        tag = _UNKNOWN_TAG.search(str(getattr(error, "problem", "") or ""))
        if isinstance(error, yaml.constructor.ConstructorError) and tag:
            kind = "unsafe" if "python/" in tag.group(1) else "unsupported"
            raise MMError(f"{path}: {kind} YAML tag {tag.group(1)!r}{where}; configs are plain YAML "
                          "(mappings, lists, numbers, strings): remove the tag") from None
        raise MMError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MMError(f"{path}: expected a YAML mapping of config sections, got {type(data).__name__}")
    if not is_plain_data(data):
        raise MMError(f"{path}: holds a value that is not plain data (a date, binary data or a set); "
                      "quote it as a string")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config: built-in defaults ← YAML file (optional) ← ``a.b=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    if overrides:
        data = apply_overrides(data, overrides)
        source = f"{source} (with overrides)"
    return config_from_dict(data, source)


def load_saved_config(path: str | Path) -> Config:
    """Load a config that a run wrote (``<run>/config.yaml``): a field it lacks was added after the run was made,
    so it takes the value that reproduces the run (``HASH_NEUTRAL_FIELDS``), not today's default."""
    data = read_yaml(path)
    for section, fields in HASH_NEUTRAL_FIELDS.items():
        saved = data.get(section)
        if isinstance(saved, dict):
            data[section] = {**fields, **saved}
    return config_from_dict(data, str(path))


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """The config as plain JSON-able data (every field, defaults included)."""
    return cfg.model_dump(mode="json")


def config_to_yaml(cfg: BaseModel) -> str:
    """The resolved config as YAML, in field order."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# Fields added after runs had been saved, by section, with the value that reproduces those runs. While a field
# holds that value it is left out of config_hash, so the hashes of earlier runs and grid dirs (which resume checks)
# stay valid.
HASH_NEUTRAL_FIELDS: dict[str, dict[str, object]] = {
    "data": {"world_version": 1},
    "train": {"cpu_threads": 1, "trackers": ["jsonl"], "encoder_lr_scale": 1.0, "freeze_lm": False,
              "strategy": "auto", "fsdp_sharding": "full", "activation_checkpointing": False, "init_from": None},
    "model": {"resize_embeddings": False, "connector_pos_emb": False, "fusion": "splice", "xattn_every": 1},
    "eval": {"vqa_normalize": "official", "rices_encoder": None},
}


def is_local_path(spec: str) -> bool:
    """Whether a model/encoder/tokenizer name means a local directory: ``hf:<dir>`` or anything path-like
    (registry names never contain ``/``)."""
    return spec.startswith(("hf:", ".", "~")) or "/" in spec


def config_hash(cfg: BaseModel) -> str:
    """A short stable hash of the resolved config (used to detect a run dir made by another config)."""
    data = config_to_dict(cfg)
    kinds = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}
    for name, neutral in HASH_NEUTRAL_FIELDS.items():
        section = data if isinstance(cfg, kinds[name]) else data.get(name) if isinstance(cfg, Config) else None
        for key, value in neutral.items():
            if isinstance(section, dict) and key in section and section[key] == value:
                del section[key]
    canonical = json.dumps(data, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _is_file(arg: str) -> bool:
    """Whether ``arg`` names an existing file (False for a name the OS cannot even look up: too long...)."""
    try:
        return Path(arg).is_file()
    except OSError:
        return False


def split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """Split CLI arguments into (config path or None, overrides): anything with ``=`` is an override, except an
    existing file (grid cells' dirs have ``=`` in their names: ``runs/g/tokens=16/config.yaml``)."""
    paths = [arg for arg in args if "=" not in arg or _is_file(arg)]
    overrides = [arg for arg in args if arg not in paths]
    for arg in overrides:
        if arg.endswith((".yaml", ".yml")) and "/" in arg.split("=", 1)[0]:
            raise MMError(f"{arg}: no such config file")
    if len(paths) > 1:
        raise MMError(f"expected at most one config file, got {len(paths)}: {', '.join(paths)}")
    return (paths[0] if paths else None), overrides


AXES_ENV = "MMBENCH_AXES"


def default_axes_path() -> Path:
    """Where the axis presets (and the MM1 claims they test) live: ``$MMBENCH_AXES``, else a user's own
    ``./ablations/axes.yaml``, else the package's. Read by ``mm ablate`` (presets) and ``mm report`` (claims)."""
    if os.environ.get(AXES_ENV):
        return Path(os.environ[AXES_ENV])
    local = Path("ablations/axes.yaml")
    if local.exists():
        return local
    return resource_path("axes.yaml")
