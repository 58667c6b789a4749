"""``mm pretrain --stage encoder``: pre-train the image encoder on image-caption pairs, as MM1 compares.

Objectives (``train.encoder_objective``):

- ``clip``: contrastive image-text pre-training (Radford et al. 2021) with a small text transformer; the
  symmetric InfoNCE loss over the batch with a learned temperature (``negclip``: with hard negatives).
- ``bow``: caption bag-of-words classification (Joulin et al. 2016; CatLIP, Mehta et al. 2024): a linear head on
  the mean-pooled patches predicts which tokens the image's caption uses (multi-label, sigmoid cross-entropy).
  Every word a caption names is a target, so the encoder cannot get by on the features that already tell a
  batch's captions apart, as a contrastive loss can (at toy scale CLIP keeps colours and drops shapes and words).
- ``attributes``: supervised classification of the synthetic world's scene labels (what is in each of the 3x3
  cells, the written word, the count), as a ViT is pre-trained on ImageNet's classes; synthetic data only.
- ``mae``: masked auto-encoding (He et al. 2022): 75% of patches are dropped, the ViT encodes the visible
  ones, a light decoder reconstructs the pixels of the missing ones (per-patch normalised targets).

The ViT is the one ``model.encoder`` names (a registry name such as ``vit-tiny`` at ``model.image_size`` /
``model.patch_size``, or a saved encoder to continue from). The result is written into the run dir with
``save_pretrained`` (``config.json``, ``model.safetensors``, ``preprocessor_config.json``), so the dir is a
value for ``model.encoder`` in any later config or ablation grid.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mmbench_cli.config import Config
from mmbench_cli.errors import MMError
from mmbench_cli.rundir import RunDir, RunLock, atomic_write_json, retrieval_near_chance
from mmbench_cli.train import run_setup
from mmbench_cli.train.schedule import resolve_lr_and_wd
from mmbench_cli.train.step_loop import StepResult, run_steps

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CAPTION_MAX_TOKENS = 40
EVAL_BATCH = 128


class TextTower(nn.Module):
    """A small bidirectional transformer over caption tokens, mean-pooled and projected (CLIP's text side)."""

    def __init__(self, vocab_size: int, width: int, depth: int, heads: int, max_len: int, embed_dim: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.randn(max_len, width) * 0.01)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Caption embeddings ``[B, embed_dim]`` (not normalised)."""
        hidden = self.token_embedding(input_ids) + self.position_embedding[: input_ids.size(1)]
        hidden = self.norm(self.blocks(hidden, src_key_padding_mask=attention_mask == 0))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.proj((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


class CLIPObjective(nn.Module):
    """Image tower (the ViT, mean-pooled patches, projected) + text tower, trained with symmetric InfoNCE."""

    def __init__(self, encoder: nn.Module, vocab_size: int, embed_dim: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        self.image_proj = nn.Linear(encoder.hidden_size, embed_dim, bias=False)
        self.text = TextTower(vocab_size, width=128, depth=2, heads=4, max_len=CAPTION_MAX_TOKENS, embed_dim=embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed(self, images: torch.Tensor, input_ids: torch.Tensor,
              attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised image and text embeddings."""
        image = F.normalize(self.image_proj(self.encoder(images).mean(dim=1)), dim=-1)
        text = F.normalize(self.text(input_ids, attention_mask), dim=-1)
        return image, text

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                negative_ids: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The CLIP loss of a batch of matching (image, caption) pairs; with hard-negative captions (NegCLIP),
        each image is also contrasted with them (image → text over positives + negatives)."""
        image, text = self.embed(images, input_ids, attention_mask)
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * image @ text.t()
        targets = torch.arange(len(images), device=images.device)
        image_to_text = logits
        if negative_ids is not None and negative_mask is not None:
            negatives = F.normalize(self.text(negative_ids, negative_mask), dim=-1)
            image_to_text = torch.cat([logits, scale * image @ negatives.t()], dim=1)
        return 0.5 * (F.cross_entropy(image_to_text, targets) + F.cross_entropy(logits.t(), targets))


class BagOfWordsObjective(nn.Module):
    """CatLIP-style pre-training: the ViT's mean-pooled patches → a linear head over the caption vocabulary,
    trained to predict which tokens the image's caption contains (multi-label sigmoid cross-entropy)."""

    def __init__(self, encoder: nn.Module, vocab_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.hidden_size, vocab_size)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Per-token logits ``[B, vocab]``."""
        return self.head(self.encoder(images).mean(dim=1))

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sigmoid cross-entropy against the multi-hot ``targets`` ``[B, vocab]``, summed over the vocabulary and
        averaged over the batch (so rare words are not drowned by the thousands of absent ones)."""
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(logits)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The bag-of-words loss of a batch of images and their captions' multi-hot targets."""
        return self.loss(self.logits(images), targets)


def bag_of_words(tokenizer: PreTrainedTokenizerBase, captions: list[str], vocab_size: int) -> torch.Tensor:
    """Multi-hot ``[B, vocab]`` targets: the tokens each caption uses (special tokens left out)."""
    special = set(tokenizer.all_special_ids)
    targets = torch.zeros(len(captions), vocab_size)
    for row, ids in enumerate(tokenizer(captions, add_special_tokens=False)["input_ids"]):
        kept = [i for i in set(ids) if i not in special and i < vocab_size]
        targets[row, kept] = 1.0
    return targets


class AttributeObjective(nn.Module):
    """Supervised pre-training on the synthetic world's scene labels (as a ViT is pre-trained on ImageNet classes):
    the patch grid average-pooled to the world's 3x3 cells, a linear head per cell attribute (colour, shape or
    text, size: ``synthetic.scene_attributes``) and, on the mean-pooled patches, heads for the written word and the
    object count; the loss is the sum of the heads' mean cross-entropies. Every attribute is a target, so the
    encoder keeps shapes and words, which a contrastive batch lets it drop."""

    def __init__(self, encoder: nn.Module, classes: dict[str, int], grid: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.grid = grid
        self.heads = nn.ModuleDict({name: nn.Linear(encoder.hidden_size, count) for name, count in classes.items()})

    def logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per head ``[B, positions, classes]`` (positions: the grid's cells for ``cell_*`` heads, else 1)."""
        patches = self.encoder(images)  # [B, N, H]
        side = math.isqrt(patches.size(1))
        spatial = patches.transpose(1, 2).reshape(patches.size(0), -1, side, side)
        cells = F.adaptive_avg_pool2d(spatial, self.grid).flatten(2).transpose(1, 2)  # [B, grid*grid, H]
        pooled = patches.mean(dim=1, keepdim=True)
        return {name: head(cells if name.startswith("cell_") else pooled) for name, head in self.heads.items()}

    @staticmethod
    def loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The sum over heads of the mean cross-entropy over images and positions."""
        return sum(F.cross_entropy(value.flatten(0, 1), targets[name].flatten()) for name, value in logits.items())

    def forward(self, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The attribute loss of a batch of images and their ``attribute_targets``."""
        return self.loss(self.logits(images), targets)


def attribute_targets(samples: list[Any]) -> dict[str, torch.Tensor]:
    """``scene_attributes`` of synthetic caption samples stacked per head: ``{head: long[B, positions]}``."""
    from mmbench_cli.data.synthetic import scene_attributes

    labels = [scene_attributes(sample.image.scene) for sample in samples]
    return {name: torch.tensor([label[name] for label in labels]) for name in labels[0]}


class MAEObjective(nn.Module):
    """Masked auto-encoder around a transformers ViT: encode visible patches, decode all, score the masked."""

    def __init__(self, encoder: nn.Module, image_size: int, mask_ratio: float = 0.75, width: int = 96, depth: int = 2) -> None:
        super().__init__()
        self.encoder = encoder
        self.patch_size = encoder.patch_size
        self.image_size = image_size
        self.num_patches = (image_size // self.patch_size) ** 2
        self.mask_ratio = mask_ratio
        self.decoder_embed = nn.Linear(encoder.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder_pos = nn.Parameter(torch.randn(1, self.num_patches + 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.decoder_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.patch_size**2 * 3)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` → ``[N, P, p·p·3]`` (row-major patches, as the ViT's patch embedding)."""
        p = self.patch_size
        n, c, h, w = images.shape
        patches = images.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return patches.reshape(n, (h // p) * (w // p), p * p * c)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the masked patches (targets normalised per patch, as MAE's norm_pix_loss)."""
        vit = self.encoder.hf_model
        interpolate = images.shape[-1] != self.encoder.native_image_size
        tokens = vit.embeddings(images, interpolate_pos_encoding=interpolate)  # [N, 1+P, D] with positions
        n, num_patches = tokens.size(0), tokens.size(1) - 1
        keep = max(1, int(round(num_patches * (1 - self.mask_ratio))))
        order = torch.rand(n, num_patches, device=images.device).argsort(dim=1)
        restore = order.argsort(dim=1)
        visible = torch.gather(tokens[:, 1:], 1, order[:, :keep, None].expand(-1, -1, tokens.size(-1)))
        hidden = torch.cat([tokens[:, :1], visible], dim=1)
        for layer in vit.layers:
            hidden = layer(hidden, None)
        hidden = self.decoder_embed(vit.layernorm(hidden))
        fill = self.mask_token.expand(n, num_patches - keep, -1)
        patches = torch.cat([hidden[:, 1:], fill], dim=1)
        patches = torch.gather(patches, 1, restore[:, :, None].expand(-1, -1, patches.size(-1)))
        decoded = self.decoder(torch.cat([hidden[:, :1], patches], dim=1) + self.decoder_pos[:, : num_patches + 1])
        prediction = self.head(self.decoder_norm(decoded[:, 1:]))
        target = self.patchify(images)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        masked = torch.ones(n, num_patches, device=images.device)
        masked[:, :keep] = 0
        masked = torch.gather(masked, 1, restore)
        error = ((prediction - target) ** 2).mean(dim=-1)
        return (error * masked).sum() / masked.sum()


class PairData:
    """Image-caption pairs of a split, images resized once and kept as uint8 (normalised per batch)."""

    def __init__(self, samples: list[Any], image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 skip_bad: bool = False) -> None:
        self.samples = samples
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.skip_bad = skip_bad
        self.bad: dict[int, str] = {}  # images that failed to decode (skipped with skip_bad): index -> problem
        self._pixels: dict[int, torch.Tensor] = {}

    def pixels(self, index: int) -> torch.Tensor | None:
        """Image ``index`` as ``uint8[3, S, S]`` (decoded and resized on first use); None for a bad image that
        ``skip_bad`` skips (else its error, with what to do about it)."""
        if index in self.bad:
            return None
        if index not in self._pixels:
            import numpy as np

            from mmbench_cli.data.images import resize_square, to_pil
            from mmbench_cli.data.mixture import BAD_IMAGE_HINT

            try:
                image = resize_square(to_pil(self.samples[index].image), self.image_size)
            except MMError as error:
                if not self.skip_bad:
                    raise MMError(f"{error.message}; {BAD_IMAGE_HINT}") from None
                self.bad[index] = error.message
                return None
            self._pixels[index] = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return self._pixels[index]

    def batch(self, indices: list[int], rng: random.Random) -> tuple[torch.Tensor, list[str]]:
        """Normalised images ``[B, 3, S, S]`` and one randomly chosen caption per image (bad images left out)."""
        kept = [(i, pixels) for i in indices if (pixels := self.pixels(i)) is not None]
        if not kept:
            raise MMError("data: every image of an encoder pre-training batch failed to decode (data.skip_bad=true)")
        images = torch.stack([pixels for _, pixels in kept]).float().div_(255.0)
        captions = [rng.choice(self.samples[i].captions) for i, _ in kept]
        return (images - self.mean) / self.std, captions


def _caption_samples(cfg: Config, split: str) -> list[Any]:
    if cfg.data.source == "synthetic":
        from mmbench_cli.data.synthetic import world_from_config

        return world_from_config(cfg.data).captions(split)
    from mmbench_cli.data.formats import load_dataset_spec
    from mmbench_cli.data.types import CaptionSample

    samples = [sample for spec in cfg.data.datasets if spec.split == split
               for sample in load_dataset_spec(spec, cfg.data.skip_bad) if isinstance(sample, CaptionSample)]
    if not samples and split == "train":
        raise MMError("data.datasets: --stage encoder needs image-caption pairs; list a caption dataset (e.g. coco-captions)")
    return samples


def _attribute_classes(cfg: Config) -> tuple[dict[str, int], int]:
    """The heads of the ``attributes`` objective for the configured world (which alone has scene labels), and the
    side of its grid of cells."""
    if cfg.data.source != "synthetic":
        raise MMError("train.encoder_objective: attributes needs the synthetic world (data.source: synthetic), whose "
                      "scenes label every image; use clip for local data")
    from mmbench_cli.data.synthetic import ATTRIBUTE_GRID, attribute_classes

    return attribute_classes(cfg.data.world_version), ATTRIBUTE_GRID


def _twin_data(cfg: Config, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> PairData:
    """The counterfactual twins of the synthetic world's training images (``twinclip``), in the order of its captions."""
    if cfg.data.source != "synthetic":
        raise MMError("train.encoder_objective: twinclip needs the synthetic world (data.source: synthetic), which can "
                      "draw each image's counterfactual twin; use clip for local data")
    from mmbench_cli.data.synthetic import world_from_config

    return PairData(world_from_config(cfg.data).twins("train"), image_size, mean, std)


def pretrain_encoder(cfg: Config, out_dir: str | Path, resume: bool = False, force: bool = False, progress: bool = True,
                     inside_distributed: bool = False) -> Path:
    """Pre-train ``model.encoder`` with ``train.encoder_objective`` and save it into ``out_dir``.

    Single process (encoder pre-training is short at toy scale); ``resume`` re-runs from the start if the
    run was interrupted (there are no intermediate encoder checkpoints). ``inside_distributed``: called by one
    rank of a torchrun job (which pre-trains the job's cached encoder alone), not launched under torchrun.
    """
    from mmbench_cli.model.device import use_cpu_threads
    from mmbench_cli.model.encoders import build_encoder
    from mmbench_cli.train.distributed import DistContext, resolve_device
    from mmbench_cli.train.strategies import SingleStrategy, seed_everything

    run_setup.check_data_inputs(cfg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not inside_distributed:
        raise MMError("--stage encoder runs in one process; launch it without torchrun")
    run_dir = Path(out_dir)
    tcfg = cfg.train
    with RunLock(run_dir, "run"):
        run_setup.prepare_run_dir(cfg, run_dir, resume, force)
        wrote_run = False
        try:
            device = resolve_device(tcfg.device)
            use_cpu_threads(device, tcfg.cpu_threads)
            strategy = SingleStrategy(DistContext(device=device), tcfg)  # one process: the objective is small
            seed_everything(cfg.seed)
            encoder = build_encoder(cfg.model)
            image_size = cfg.model.image_size
            tokenizer = None
            if tcfg.encoder_objective in ("clip", "negclip", "twinclip", "bow"):  # the captions' tokenizer
                from mmbench_cli.data.synthetic import tokenizer_source
                from mmbench_cli.model.tokenizer import get_tokenizer

                tokenizer = get_tokenizer(cfg.model, tokenizer_source(cfg.data))
            if tcfg.encoder_objective == "mae":
                objective: nn.Module = MAEObjective(encoder, image_size)
            elif tcfg.encoder_objective == "bow":
                objective = BagOfWordsObjective(encoder, len(tokenizer))
            elif tcfg.encoder_objective == "attributes":
                objective = AttributeObjective(encoder, *_attribute_classes(cfg))
            else:
                objective = CLIPObjective(encoder, len(tokenizer))
            num_params = sum(p.numel() for p in encoder.parameters())
            peak_lr, weight_decay = resolve_lr_and_wd(tcfg, num_params)
            strategy.setup(objective, peak_lr, weight_decay)
            optimizer = strategy.optimizer
            params = list(objective.parameters())
            train = PairData(_caption_samples(cfg, "train"), image_size, encoder.image_mean, encoder.image_std,
                             cfg.data.skip_bad)
            if len(train.samples) < 2:
                raise MMError("data: --stage encoder needs at least 2 training images")
            twins = (_twin_data(cfg, image_size, encoder.image_mean, encoder.image_std)
                     if tcfg.encoder_objective == "twinclip" else None)
            val = PairData(_caption_samples(cfg, "val"), image_size, encoder.image_mean, encoder.image_std,
                           cfg.data.skip_bad)
            wrote_run = True
            RunDir(run_dir).truncate_metrics(None)
            run_setup.write_run_files(cfg, run_dir, {"stage": "encoder", "objective": tcfg.encoder_objective,
                                                  "num_params": num_params, "lr": peak_lr, "weight_decay": weight_decay,
                                                  "device": str(device)})
            RunDir(run_dir).write_status("running")
            rng = random.Random(cfg.seed)
            batch_size = min(tcfg.batch_size, len(train.samples))
            order: list[int] = []
            started = time.perf_counter()

            def step(lr: float) -> StepResult:
                nonlocal order
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if len(order) < batch_size:
                    fresh = list(range(len(train.samples)))
                    rng.shuffle(fresh)
                    order += fresh
                take = batch_size if twins is None else max(1, batch_size // 2)  # twins fill the other half
                indices, order = order[:take], order[take:]
                images, captions = train.batch(indices, rng)
                if twins is not None:
                    twin_images, twin_captions = twins.batch(indices, rng)
                    images, captions = torch.cat([images, twin_images]), captions + twin_captions
                negatives = hard_negatives(captions, rng) if tcfg.encoder_objective == "negclip" else None
                with strategy.autocast():
                    loss = _objective_loss(objective, tokenizer, images, captions, device, negatives,
                                           [train.samples[i] for i in indices])
                strategy.backward(loss)
                grad_norm = strategy.optimizer_step(params, tcfg.grad_clip or math.inf)
                return StepResult(loss.item(), grad_norm, images=float(images.size(0)))

            def check(done: int, result: StepResult) -> None:
                if not (math.isfinite(result.loss) and math.isfinite(result.grad_norm)):  # the run fails: nothing saved
                    raise MMError(f"train: non-finite loss {result.loss} or grad norm {result.grad_norm} at step "
                                  f"{done}; training stopped; lower train.lr or raise train.warmup_steps")

            def after(done: int, lr: float, result: StepResult) -> None:
                if done % tcfg.log_every == 0 or done in (1, tcfg.steps):
                    RunDir(run_dir).append_metrics({
                        "step": done, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
                        "images_per_s": done * batch_size / (time.perf_counter() - started),
                        "elapsed_s": time.perf_counter() - started,
                    })

            run_steps(tcfg, peak_lr, 0, step, check, after, label=f"[bold]encoder ({tcfg.encoder_objective})",
                      stats="loss {loss:.4f}  lr {lr:.2e}", show=progress)
            scores = evaluate_objective(objective, tokenizer, val if val.samples else train, device)
            if retrieval_near_chance(scores):
                scores["near_chance"] = True
                run_setup.note(
                    f"the pre-trained encoder's held-out retrieval is near chance ({scores['val_retrieval_top1']:.1%} "
                    f"of {scores['val_pairs']} pairs, chance {scores['val_retrieval_chance']:.1%}): the contrastive "
                    f"training did not take off (a flat loss at ln(batch size)); lower train.lr or change the seed")
            save_encoder(encoder, image_size, run_dir)
            RunDir(run_dir).drop_set_aside()  # the new encoder is saved: the run it replaces can go
            atomic_write_json(RunDir(run_dir).encoder_eval_path, scores)
            bad = len(train.bad) + len(val.bad)
            RunDir(run_dir).update_meta({"wall_time_s": time.perf_counter() - started, **scores,
                                         **({"bad_samples_skipped": bad} if bad else {})})
            RunDir(run_dir).write_status("done")
        except BaseException:
            run_setup.fail_run(run_dir, wrote_run)
            raise
    return run_dir


def _objective_loss(objective: nn.Module, tokenizer: PreTrainedTokenizerBase, images: torch.Tensor, captions: list[str],
                    device: torch.device, negatives: list[str] | None = None,
                    samples: list[Any] | None = None) -> torch.Tensor:
    images = images.to(device)
    if isinstance(objective, AttributeObjective):  # labelled by the batch's scenes (``samples``), not its captions
        return objective(images, {name: value.to(device) for name, value in attribute_targets(samples or []).items()})
    if isinstance(objective, CLIPObjective):
        tokens = tokenizer(captions, padding=True, truncation=True, max_length=CAPTION_MAX_TOKENS, return_tensors="pt")
        if negatives:
            hard = tokenizer(negatives, padding=True, truncation=True, max_length=CAPTION_MAX_TOKENS, return_tensors="pt")
            return objective(images, tokens["input_ids"].to(device), tokens["attention_mask"].to(device),
                             hard["input_ids"].to(device), hard["attention_mask"].to(device))
        return objective(images, tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
    if isinstance(objective, BagOfWordsObjective):
        return objective(images, bag_of_words(tokenizer, captions, objective.head.out_features).to(device))
    return objective(images)


def hard_negatives(captions: list[str], rng: random.Random) -> list[str]:
    """NegCLIP's hard negatives for ``train.encoder_objective: negclip``: each synthetic caption with one shape
    swapped, and with its written word swapped (``synthetic.swap_attributes``); captions naming neither get none."""
    from mmbench_cli.data.synthetic import swap_attributes

    return [negative for caption in captions for negative in swap_attributes(caption, rng)]


@torch.no_grad()
def evaluate_objective(objective: nn.Module, tokenizer: PreTrainedTokenizerBase, data: PairData,
                       device: torch.device) -> dict[str, Any]:
    """Held-out quality: CLIP image→text top-1 retrieval accuracy (and chance), the bag-of-words R-precision (the
    share of a caption's tokens among the image's k top-scored tokens, k = how many the caption has; its prior
    scores every image by token frequency), or the MAE reconstruction loss."""
    objective.eval()
    rng = random.Random(0)
    indices = list(range(min(EVAL_BATCH, len(data.samples))))
    images, captions = data.batch(indices, rng)
    torch.manual_seed(0)
    if isinstance(objective, CLIPObjective):
        tokens = tokenizer(captions, padding=True, truncation=True, max_length=CAPTION_MAX_TOKENS, return_tensors="pt")
        image, text = objective.embed(images.to(device), tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
        pairs = len(captions)  # bad images (skip_bad) are left out of the batch
        hits = ((image @ text.t()).argmax(dim=1).cpu() == torch.arange(pairs)).float().mean().item()
        result = {"val_retrieval_top1": hits, "val_retrieval_chance": 1.0 / pairs, "val_pairs": pairs}
    elif isinstance(objective, BagOfWordsObjective):
        targets = bag_of_words(tokenizer, captions, objective.head.out_features)
        on_device = objective.logits(images.to(device))
        logits = on_device.cpu()
        frequency = targets.sum(0)  # the prior: every image scored by how often the held-out captions use a token
        rows = [row for row in range(len(captions)) if targets[row].sum() > 0]

        def r_precision(scores: torch.Tensor) -> float:
            hits = [float(targets[row, scores[row].topk(int(targets[row].sum())).indices].mean()) for row in rows]
            return sum(hits) / max(1, len(hits))

        result = {"val_bow_r_precision": r_precision(logits),
                  "val_bow_r_precision_prior": r_precision(frequency.expand_as(logits)),
                  "val_images": len(captions), "val_bow_loss": float(objective.loss(on_device, targets.to(device)))}
    elif isinstance(objective, AttributeObjective):
        targets = attribute_targets([data.samples[i] for i in indices])
        logits = {name: value.cpu() for name, value in objective.logits(images.to(device)).items()}
        result = {"val_images": len(images), "val_attributes_loss": float(objective.loss(logits, targets))}
        for name, value in logits.items():  # held-out accuracy per head, and its majority-class baseline
            target = targets[name]
            result[f"val_{name}_accuracy"] = float((value.argmax(-1) == target).float().mean())
            result[f"val_{name}_majority"] = float((target == target.flatten().mode().values).float().mean())
    else:
        result = {"val_mae_loss": objective(images.to(device)).item(), "val_images": len(images)}
    objective.train()
    return result


def save_encoder(encoder: nn.Module, image_size: int, run_dir: Path) -> None:
    """Write the ViT with ``save_pretrained`` (safetensors) plus its image mean/std into ``run_dir``.

    Files are written to a temp dir and renamed in one by one, so a reader never sees a half-written file.
    """
    from transformers.utils import logging as hf_logging

    tmp = Path(tempfile.mkdtemp(prefix=".encoder.", dir=run_dir))
    try:
        hf_logging.disable_progress_bar()  # one progress display: ours
        encoder.hf_model.save_pretrained(str(tmp))
        atomic_write_json(tmp / "preprocessor_config.json", {
            "image_mean": list(encoder.image_mean), "image_std": list(encoder.image_std),
            "size": {"height": image_size, "width": image_size},
        })
        for path in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):  # config.json last
            os.replace(path, run_dir / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

