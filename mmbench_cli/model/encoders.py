"""Image encoders: images [N, 3, H, W] → patch features [N, P, D] (no CLS token).

Built-in encoders are tiny ViTs made from a transformers ``ViTConfig`` (SDPA attention) at the configured
image and patch size. ``hf:<dir>`` (or a bare directory holding a ``config.json``, as encoder
pre-training saves) loads a local CLIP / SigLIP / ViT vision checkpoint, or the vision tower of a full
CLIPModel / SiglipModel, from safetensors. Every encoder knows the image mean/std it expects.

``hf_encoder_patch_size`` reads a checkpoint's patch size from its ``config.json`` alone, so a bad
resolution is refused before any weights load; ``quiet_transformers`` keeps transformers' loading bars and
load reports off the terminal. ``load_similarity_encoder`` gives RICES a separate CLIP-style image embedding.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmbench_cli.errors import MMError
from mmbench_cli.model.lm import check_hf_dir, hf_load_errors
from mmbench_cli.model.tokenizer import hf_path
from mmbench_cli.registry import ENCODERS

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig

    from mmbench_cli.config import ModelConfig

IMAGENET_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class ViTSpec:
    """Width/depth of a built-in ViT, and whether its weights come pre-trained.

    ``pretrain`` names the objective (``clip``/``mae``/``bow``) of an encoder that training starts from pre-trained: the
    model layer builds the architecture, ``train.pretrained_encoder`` pre-trains it once on the configured data
    (cached by content) and loads the weights, as MM1 starts from a pre-trained CLIP.
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_ratio: int = 4
    pretrain: str | None = None
    base: str | None = None  # the randomly initialised registry entry a pre-trained one starts from


for _name, _spec in {
    "vit-tiny": ViTSpec(hidden_size=128, num_layers=4, num_heads=4),
    "vit-small": ViTSpec(hidden_size=192, num_layers=6, num_heads=6),
    "vit-base-toy": ViTSpec(hidden_size=256, num_layers=8, num_heads=8),
}.items():
    ENCODERS.add(_name, _spec)
    # ``vit-tiny-clip``: the same ViT, CLIP-pre-trained on the run's own image-caption data before training starts;
    # ``vit-tiny-mae``: MAE-pre-trained on the same images (MM1 Table 1 compares the two objectives);
    # ``vit-tiny-bow``: trained to predict its captions' words (CatLIP-style bag-of-words classification)
    # ``vit-tiny-twinclip``: CLIP on batches that pair each synthetic image with its counterfactual twin (one shape or
    # the written word changed), so the encoder must keep shapes and words
    # ``vit-tiny-attributes``: supervised on the synthetic scenes' labels (each cell's contents, the word, the count)
    for _objective in ("clip", "mae", "bow", "twinclip", "attributes"):
        ENCODERS.add(f"{_name}-{_objective}", ViTSpec(_spec.hidden_size, _spec.num_layers, _spec.num_heads,
                                                      _spec.mlp_ratio, pretrain=_objective, base=_name))


class VisionEncoder(nn.Module):
    """Wraps a transformers vision model; returns the last hidden states of the patch tokens only."""

    def __init__(self, hf_model: nn.Module, image_mean: tuple[float, ...], image_std: tuple[float, ...]) -> None:
        super().__init__()
        self.hf_model = hf_model
        config = hf_model.config
        self.hidden_size: int = config.hidden_size
        self.patch_size: int = config.patch_size
        self.native_image_size: int = config.image_size
        self.image_mean = tuple(float(x) for x in image_mean)
        self.image_std = tuple(float(x) for x in image_std)

    def grid_size(self, image_size: int) -> int:
        """Patches per side at ``image_size``."""
        return image_size // self.patch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features [N, (H/p)·(W/p), D] of normalised images [N, 3, H, W]."""
        interpolate = images.shape[-1] != self.native_image_size or images.shape[-2] != self.native_image_size
        out = self.hf_model(pixel_values=images, interpolate_pos_encoding=interpolate)
        hidden = out.last_hidden_state
        num_patches = (images.shape[-2] // self.patch_size) * (images.shape[-1] // self.patch_size)
        return hidden[:, hidden.shape[1] - num_patches :]  # drop CLS (ViT, CLIP); SigLIP has none


def patch_grid(image_size: int, patch_size: int) -> int:
    """Patches per side of an ``image_size`` image; MMError if it is not a whole number of patches."""
    if image_size % patch_size:
        nearest = max(patch_size, round(image_size / patch_size) * patch_size)
        raise MMError(
            f"model.image_size: {image_size} is not a multiple of the patch size {patch_size}; use e.g. {nearest}"
        )
    return image_size // patch_size


def build_vit(spec: ViTSpec, image_size: int, patch_size: int) -> VisionEncoder:
    """A randomly initialised ViT of the given shape (transformers ViTModel, SDPA, no pooler)."""
    from transformers import ViTConfig, ViTModel

    patch_grid(image_size, patch_size)
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.mlp_ratio * spec.hidden_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "sdpa"
    model = ViTModel(config, add_pooling_layer=False)
    return VisionEncoder(model, *IMAGENET_HALF)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within the block, transformers shows no progress bars ("Loading weights") and logs errors only (its load
    reports and config warnings would otherwise precede our own one-line messages)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _read_mean_std(directory: Path, model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    processor = directory / "preprocessor_config.json"
    if processor.exists():
        try:
            data = json.loads(processor.read_text())
            if "image_mean" in data and "image_std" in data:
                return tuple(data["image_mean"]), tuple(data["image_std"])
        except (OSError, json.JSONDecodeError):
            pass
    return CLIP_MEAN_STD if model_type.startswith("clip") else IMAGENET_HALF


VISION_CLASSES = {
    "vit": "ViTModel",
    "clip_vision_model": "CLIPVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
    "siglip2_vision_model": "Siglip2VisionModel",
}
FULL_TO_VISION = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}


def vision_model_from_config(config: PretrainedConfig) -> nn.Module:
    """An uninitialised vision model for a saved vision config (used when reloading a saved MLLM)."""
    import transformers

    class_name = VISION_CLASSES.get(config.model_type)
    if class_name is None:
        raise MMError(f"encoder config: unsupported model_type {config.model_type!r}; use a CLIP, SigLIP or ViT vision model")
    cls = getattr(transformers, class_name)
    config._attn_implementation = "sdpa"
    return cls(config, add_pooling_layer=False) if class_name == "ViTModel" else cls(config)


def _hf_vision_config(directory: Path, where: str) -> PretrainedConfig:
    """The config of a local vision checkpoint (checked: config.json, safetensors weights, a supported model type)."""
    from transformers import AutoConfig

    check_hf_dir(where, directory)
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise MMError(f"{where}: unreadable config.json ({str(error).splitlines()[0][:120]})") from None
    if config.model_type not in FULL_TO_VISION and config.model_type not in VISION_CLASSES:
        raise MMError(f"{where}: model_type {config.model_type!r} is not a CLIP, SigLIP or ViT vision model")
    return config


def hf_encoder_patch_size(directory: Path) -> int:
    """The patch size of a local vision checkpoint, from its config.json alone (no weights are read)."""
    config = _hf_vision_config(directory, f"model.encoder: {directory}")
    vision = config.vision_config if config.model_type in FULL_TO_VISION else config
    return int(vision.patch_size)


def load_hf_encoder(directory: Path) -> VisionEncoder:
    """Load a local CLIP / SigLIP / ViT vision checkpoint (or a full CLIP/SigLIP model's vision tower)."""
    with quiet_transformers():
        return _load_hf_encoder(directory)


def _load_hf_encoder(directory: Path) -> VisionEncoder:
    import transformers

    where = f"model.encoder: {directory}"
    config = _hf_vision_config(directory, where)
    model_type = config.model_type
    if model_type in FULL_TO_VISION:
        full_cls = getattr(transformers, model_type.upper().replace("SIGLIP", "Siglip") + "Model")
        with hf_load_errors(where, "vision checkpoint"):
            full = full_cls.from_pretrained(str(directory), use_safetensors=True, attn_implementation="sdpa")
        hf_model = full.vision_model
        public_cls = getattr(transformers, FULL_TO_VISION[model_type])
        if not isinstance(hf_model, public_cls):  # older transformers: a bare *VisionTransformer; wrap it
            wrapper = public_cls(config.vision_config)
            wrapper.vision_model = hf_model
            hf_model = wrapper
    else:
        cls = getattr(transformers, VISION_CLASSES[model_type])
        kwargs = {"add_pooling_layer": False} if model_type == "vit" else {}
        with hf_load_errors(where, "vision checkpoint"):
            hf_model = cls.from_pretrained(str(directory), use_safetensors=True, attn_implementation="sdpa", **kwargs)
    hf_model = hf_model.float()
    mean, std = _read_mean_std(directory, model_type)
    return VisionEncoder(hf_model, mean, std)


class SimilarityEncoder(nn.Module):
    """One embedding per image from a CLIP-style checkpoint: RICES's similarity space (open_flamingo's RICES
    ranks demos by CLIP image embeddings). A full CLIP/SigLIP model gives its projected image features
    (``get_image_features``); a vision tower its pooled output; a ViT its CLS token."""

    def __init__(self, hf_model: nn.Module, full: bool, image_size: int, image_mean: tuple[float, ...],
                 image_std: tuple[float, ...]) -> None:
        super().__init__()
        self.hf_model = hf_model
        self.full = full
        self.image_size = image_size
        self.image_mean = tuple(float(x) for x in image_mean)
        self.image_std = tuple(float(x) for x in image_std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[N, D] embeddings of normalised images [N, 3, S, S] (S = the checkpoint's own image size)."""
        out: Any = (self.hf_model.get_image_features(pixel_values=images) if self.full
                    else self.hf_model(pixel_values=images))
        if isinstance(out, torch.Tensor):  # transformers 4: get_image_features returns the embeddings
            return out
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]


def load_similarity_encoder(spec: str) -> SimilarityEncoder:
    """The ``eval.rices_encoder`` named by ``hf:<dir>``: a local CLIP / SigLIP (full or vision tower) or ViT."""
    import transformers

    directory = hf_path(spec)
    where = f"eval.rices_encoder: {spec}"
    if directory is None:
        raise MMError(f"{where}: pass hf:<local dir of a CLIP/SigLIP checkpoint saved by save_pretrained>")
    config = _hf_vision_config(directory, where)
    full = config.model_type in FULL_TO_VISION
    cls = getattr(transformers, config.model_type.upper().replace("SIGLIP", "Siglip") + "Model" if full
                  else VISION_CLASSES[config.model_type])
    with quiet_transformers(), hf_load_errors(where, "vision checkpoint"):
        hf_model = cls.from_pretrained(str(directory), use_safetensors=True, attn_implementation="sdpa")
    vision = config.vision_config if full else config
    mean, std = _read_mean_std(directory, config.model_type)
    return SimilarityEncoder(hf_model.float().eval(), full, int(vision.image_size), mean, std)


def build_encoder(model_cfg: ModelConfig) -> VisionEncoder:
    """The encoder named by ``model.encoder``: a registry name, ``hf:<dir>`` or a saved encoder dir."""
    path = hf_path(model_cfg.encoder)
    if path is not None:
        return load_hf_encoder(path)
    spec = ENCODERS.get(model_cfg.encoder)
    return build_vit(spec, model_cfg.image_size, model_cfg.patch_size)
