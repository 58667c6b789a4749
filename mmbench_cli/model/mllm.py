"""The MLLM: image encoder → connector → image tokens the decoder-only LM reads at its ``<image>`` positions.

Reads like MM1's Figure 2: each image becomes ``num_image_tokens`` embeddings that overwrite the
``<image>`` placeholder slots of the text, so any number of images can sit anywhere in a sequence
(interleaved documents, few-shot prompts). Loss is on text tokens only. Generation reuses the HF LM's
own ``generate`` (greedy or beam, KV cache, left padding) on the spliced input embeddings. ``model.fusion``
(fusion.py) says how the LM reads the image tokens: spliced (the default, as above), through Flamingo's gated
cross-attention blocks (the slots then stay marker tokens), or spliced with mPLUG-Owl2's modality-adaptive layers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmbench_cli.errors import MMError
from mmbench_cli.model.connectors import Connector, build_connector, check_connector
from mmbench_cli.model.encoders import (
    VisionEncoder,
    build_encoder,
    hf_encoder_patch_size,
    patch_grid,
    quiet_transformers,
)
from mmbench_cli.model.fusion import Fusion, build_fusion
from mmbench_cli.model.lm import build_lm
from mmbench_cli.model.tokenizer import (
    SPECIAL_ROLES,
    TokenizerSource,
    effective_special_tokens,
    get_tokenizer,
    hf_path,
    resolve_tokenizer_spec,
    special_token_ids,
)
from mmbench_cli.registry import FUSIONS

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from mmbench_cli.config import ModelConfig
    from mmbench_cli.model.feature_store import FeatureFunction

FORMAT = "mmbench-mllm"
FORMAT_VERSION = 2  # 2: mm_config.json names the special tokens (version 1 saves are still read)
WEIGHTS = "model.safetensors"
MM_CONFIG = "mm_config.json"


class MLLM(nn.Module):
    """Encoder + connector + HF causal LM + tokenizer, with splice-in forward, generation and save/load.

    ``special_tokens`` (role → string: image, eoc, eos, pad) say which of the tokenizer's tokens are the
    image slots and the stops; they are saved with the model.
    """

    def __init__(self, config: ModelConfig, encoder: VisionEncoder, connector: Connector, lm: nn.Module,
                 tokenizer: PreTrainedTokenizerBase, special_tokens: Mapping[str, str]) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.connector = connector
        self.lm = lm
        self.fusion: Fusion = build_fusion(config.fusion, lm, config.num_image_tokens, config.xattn_every)
        self.tokenizer = tokenizer
        self.special_tokens = effective_special_tokens(tokenizer, special_tokens)
        self.num_image_tokens: int = config.num_image_tokens
        self.image_size: int = config.image_size
        self.image_mean = encoder.image_mean
        self.image_std = encoder.image_std
        ids = special_token_ids(tokenizer, special_tokens)
        self.image_token_id: int = ids["image"]
        self.eoc_token_id: int = ids["eoc"]
        self.eos_token_id: int = ids["eos"]
        self.pad_token_id: int = ids["pad"]
        self._image_flops: tuple[bool, int] | None = None  # (encoder frozen when counted, FLOPs)
        # set for a frozen encoder only (feature_store.frozen_features): its features then come from the store
        self.frozen_features: FeatureFunction | None = None

    # ---- forward -------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [N, 3, H, W] → LM-space image tokens [N, num_image_tokens, d_lm]."""
        if self.frozen_features is not None:
            return self.connector(self.frozen_features(self.encoder, images))
        return self.connector(self.encoder(images))

    def embed(self, input_ids: torch.Tensor, images: torch.Tensor | None = None,
              image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the image-token slots overwritten by image embeddings (in reading order)."""
        return self._inputs(input_ids, images, image_embeds)[0]

    def _inputs(self, input_ids: torch.Tensor, images: torch.Tensor | None,
                image_embeds: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the LM's input embeddings, the image tokens [N, T, D] or None): spliced into the slots unless the
        fusion reads them another way (xattn leaves the slots as ``<image>`` marker tokens)."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        image_mask = input_ids == self.image_token_id
        num_slots = int(image_mask.sum())
        if num_slots == 0:
            return embeds, None
        if image_embeds is None:
            if images is None:
                raise ValueError(f"input_ids hold {num_slots} image-token slots but no images were given")
            image_embeds = self.encode_images(images)
        if image_embeds.shape[0] * image_embeds.shape[1] != num_slots:
            raise ValueError(
                f"{num_slots} image-token slots (= {num_slots / self.num_image_tokens:g} images × "
                f"{self.num_image_tokens}) but {image_embeds.shape[0]} images were given"
            )
        if not self.fusion.splices:
            return embeds, image_embeds
        return embeds.masked_scatter(image_mask.unsqueeze(-1), image_embeds.to(embeds.dtype)), image_embeds

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                image_embeds: torch.Tensor | None = None) -> CausalLMOutputWithPast:
        """Causal-LM output (logits [B, L, V]; loss over text tokens when ``labels`` is given)."""
        inputs_embeds, image_embeds = self._inputs(input_ids, images, image_embeds)
        position_ids = None
        if attention_mask is not None and bool((attention_mask == 0).any()):
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding
        else:
            attention_mask = None  # all ones: lets SDPA take its is_causal fast path
        if labels is not None:
            labels = labels.masked_fill(input_ids == self.image_token_id, -100)
        with self.fusion.conditioned(input_ids == self.image_token_id, image_embeds):
            return self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                           position_ids=position_ids, labels=labels, use_cache=False)

    # ---- generation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 images: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                 max_new_tokens: int = 16, num_beams: int = 1, use_cache: bool = True,
                 stop_token_ids: list[int] | None = None, **kwargs: Any) -> torch.Tensor:
        """Greedy (or beam) continuation of left-padded prompts → new token ids [B, new] (pad after stop)."""
        from transformers import GenerationConfig

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs_embeds, image_embeds = self._inputs(input_ids, images, image_embeds)
        stops = stop_token_ids if stop_token_ids is not None else [self.eoc_token_id, self.eos_token_id]
        vocab = self.lm.get_output_embeddings().weight.shape[0]
        padding_ids = list(range(len(self.tokenizer), vocab))  # embedding rows past the tokenizer: never emit
        generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False, use_cache=use_cache,
            eos_token_id=stops, pad_token_id=self.pad_token_id, suppress_tokens=padding_ids or None, **kwargs,
        )
        with self.fusion.conditioned(input_ids == self.image_token_id, image_embeds):
            return self.lm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                    generation_config=generation_config)

    # ---- accounting ----------------------------------------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        """Parameters per component: encoder, connector, lm (and its input embedding), fusion (its new blocks,
        when there are any), total."""
        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        counts = {"encoder": count(self.encoder), "connector": count(self.connector), "lm": count(self.lm)}
        counts["lm_embedding"] = self.lm.get_input_embeddings().weight.numel()
        fusion = count(self.fusion)
        if fusion:
            counts["fusion"] = fusion
        counts["total"] = counts["encoder"] + counts["connector"] + counts["lm"] + fusion
        return counts

    def lm_flops_per_token(self, seq_len: int) -> int:
        """LM training FLOPs per token (forward+backward): 6·N_matmul + 12·layers·d·seq_len (PaLM, App. B), plus
        what the fusion's blocks cost per position (xattn's cross-attention and gated feed-forward)."""
        emb_in = self.lm.get_input_embeddings().weight
        emb_out = self.lm.get_output_embeddings().weight
        matmul_params = sum(p.numel() for p in self.lm.parameters()) - emb_in.numel()
        if emb_out is emb_in:  # tied: the unembedding matmul still costs
            matmul_params += emb_out.numel()
        cfg = self.lm.config
        attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
        return 6 * matmul_params + attention + self.fusion.flops_per_token()

    def image_flops(self) -> int:
        """Training FLOPs of encoder + connector per image, counted once: forward + backward (3× forward) for what
        trains, forward only for a frozen encoder (``train.freeze_encoder``: no gradient flows into it); plus what
        the fusion spends per image (xattn's key/value projections, mam's image-position twins)."""
        frozen = not any(parameter.requires_grad for parameter in self.encoder.parameters())
        if self._image_flops is None or self._image_flops[0] != frozen:
            from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

            def cpu_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, out_shape: Any = None,
                         **kwargs: Any) -> int:
                return sdpa_flop_count(query, key, value)  # the CPU SDPA kernel has no formula of its own

            mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
            dummy = torch.zeros(1, 3, self.image_size, self.image_size, device=self.lm.device)
            with FlopCounterMode(display=False, custom_mapping=mapping) as encoder:  # grad on: its module tracker needs it
                features = self.encoder(dummy)
            with FlopCounterMode(display=False, custom_mapping=mapping) as connector:
                self.connector(features)
            encoder_flops = (1 if frozen else 3) * encoder.get_total_flops()
            self._image_flops = (frozen, encoder_flops + 3 * connector.get_total_flops())
        return self._image_flops[1] + self.fusion.flops_per_image()

    def flops_per_sample(self, seq_len: int, num_images: int = 1) -> int:
        """Training FLOPs of one sequence of ``seq_len`` tokens holding ``num_images`` images."""
        return seq_len * self.lm_flops_per_token(seq_len) + num_images * self.image_flops()

    def flops_per_batch(self, num_rows: int, seq_len: int, num_images: int) -> int:
        """Training FLOPs of a batch of ``num_rows`` × ``seq_len`` tokens holding ``num_images`` images in all.

        Use this (with ``batch["images"].shape[0]``) for MFU: packed rows usually hold several images.
        """
        return num_rows * seq_len * self.lm_flops_per_token(seq_len) + num_images * self.image_flops()

    # ---- persistence ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, weights: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write model.safetensors, mm_config.json, encoder/ and lm/ HF configs and the tokenizer files.

        ``weights``: a full state dict to write instead of this module's own (a sharded model's consolidated
        weights, gathered by its training strategy; tied duplicates already dropped)."""
        from safetensors.torch import save_file, save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if weights is None:
            save_model(self, str(directory / WEIGHTS))
        else:
            save_file({name: tensor.contiguous() for name, tensor in weights.items()}, str(directory / WEIGHTS),
                      metadata={"format": "pt"})
        self.encoder.hf_model.config.save_pretrained(str(directory / "encoder"))
        self.lm.config.save_pretrained(str(directory / "lm"))
        self.tokenizer.save_pretrained(str(directory))
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model": self.config.model_dump(mode="json"),
            "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "special_tokens": self.special_tokens, "image_token_id": self.image_token_id,
            "param_counts": self.param_counts(), "tokenizer_hash": tokenizer_hash(self.tokenizer),
        }
        (directory / MM_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        return directory


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of the tokenizer's vocabulary (token → id): saved beside the weights, so a load can tell that the
    tokenizer files were replaced by another tokenizer's (whose ids would index the wrong embedding rows)."""
    import hashlib

    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]


def padded_vocab_size(num_tokens: int) -> int:
    """The embedding rows of a built-in LM for a tokenizer of ``num_tokens``: the next multiple of 64 (nanoGPT:
    it keeps the unembedding matmul fast)."""
    return -(-num_tokens // 64) * 64


def check_saved_tokenizer(directory: Path, meta: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase,
                          embedding_rows: int, built_in_lm: bool) -> None:
    """MMError if a saved model's tokenizer is not the one its embeddings were trained with: more tokens than
    embedding rows (for a built-in LM: other than ``padded_vocab_size`` rows), another image token id, or (saves
    that record it) another vocabulary hash."""
    problem = None
    if len(tokenizer) > embedding_rows or (built_in_lm and padded_vocab_size(len(tokenizer)) != embedding_rows):
        problem = f"has {len(tokenizer)} tokens for {embedding_rows} embedding rows"
    elif tokenizer.convert_tokens_to_ids(meta["special_tokens"]["image"]) != meta["image_token_id"]:
        problem = "gives the image token another id"
    elif meta.get("tokenizer_hash") not in (None, tokenizer_hash(tokenizer)):
        problem = "has another vocabulary than the one saved with the weights"
    if problem:
        raise MMError(f"{directory}: the tokenizer files do not match this model's embeddings (the tokenizer "
                      f"{problem}); restore the tokenizer saved with it or re-save the model")


def check_image_tokens(model_cfg: ModelConfig, patch_size: int | None = None) -> int:
    """The encoder's patch grid side at ``model.image_size``; MMError unless the image is a whole number of
    patches and ``model.connector`` can emit ``model.num_image_tokens`` tokens from that grid.

    ``patch_size`` is the encoder's (default ``model.patch_size``, what built-in encoders use), so a config
    can be checked without building anything.
    """
    grid_size = patch_grid(model_cfg.image_size, patch_size or model_cfg.patch_size)
    check_connector(model_cfg.connector, model_cfg.num_image_tokens, grid_size)
    return grid_size


def check_lm_tokenizer(model_cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse (unless ``model.resize_embeddings``) an hf: LM paired with a tokenizer that is not its own.

    Its own: the tokenizer comes from the LM's dir. Another hf: tokenizer (the same one saved elsewhere, say)
    passes when it fits the LM's embedding table (at most one row more per special token we may add), so that
    no row changes meaning. The synthetic BPE is never a real LM's. Reads only the LM's config.json.
    """
    num_added = len(SPECIAL_ROLES)
    lm_dir = hf_path(model_cfg.lm)
    if lm_dir is None or model_cfg.resize_embeddings or not (lm_dir / "config.json").is_file():
        return  # no hf: LM, asked for, or not a checkpoint at all (which the LM loader reports in its own words)
    spec = resolve_tokenizer_spec(model_cfg)
    tokenizer_dir = hf_path(spec)
    if tokenizer_dir is not None and tokenizer_dir.resolve() == lm_dir.resolve():
        return
    problem = None
    if tokenizer_dir is None:
        problem = "was not trained with it" + (" (auto found no tokenizer in its dir)" if model_cfg.tokenizer == "auto"
                                               else "")
    else:
        from transformers import AutoConfig

        try:
            lm_config = AutoConfig.from_pretrained(str(lm_dir), local_files_only=True)
        except (OSError, ValueError, KeyError):
            return  # the LM loader reports an unreadable config in its own words
        rows = getattr(lm_config, "vocab_size", None)
        if isinstance(rows, int) and len(tokenizer) > rows + num_added:
            problem = f"has {len(tokenizer)} tokens with our special ones, for its {rows} embedding rows"
    if problem:
        raise MMError(f"model.tokenizer: {spec} is not the tokenizer of model.lm {model_cfg.lm} (it {problem}); "
                      f"use its own (model.tokenizer=hf:<dir with its tokenizer files>, or auto when they sit in "
                      f"{lm_dir}), or set model.resize_embeddings=true to resize its embeddings to this one anyway")


def build_model(model_cfg: ModelConfig, tokenizer_source: TokenizerSource) -> MLLM:
    """Assemble the MLLM named by a ModelConfig (random init except for hf: components).

    ``tokenizer_source`` gives the special tokens and the corpus of the synthetic BPE; the usual one is
    ``mmbench_cli.data.synthetic.tokenizer_source(cfg.data)``. Everything that can be checked from configs
    (resolution against the encoder's patch size, connector tokens, an hf: LM against its tokenizer) is checked
    before any weights load, and transformers' loading bars stay off the terminal.
    """
    with quiet_transformers():
        return _build_model(model_cfg, tokenizer_source)


def _build_model(model_cfg: ModelConfig, tokenizer_source: TokenizerSource) -> MLLM:
    FUSIONS.get(model_cfg.fusion)  # an unknown name fails before anything is built
    encoder_dir = hf_path(model_cfg.encoder)
    grid_size = check_image_tokens(model_cfg, hf_encoder_patch_size(encoder_dir) if encoder_dir else None)
    tokenizer = get_tokenizer(model_cfg, tokenizer_source)
    ids = special_token_ids(tokenizer, tokenizer_source.special_tokens)
    check_lm_tokenizer(model_cfg, tokenizer)
    encoder = build_encoder(model_cfg)
    vocab_size = len(tokenizer)
    if hf_path(model_cfg.lm) is None:
        vocab_size = padded_vocab_size(vocab_size)
    lm = build_lm(model_cfg, vocab_size, ids["eos"], ids["pad"])
    lm_dim = lm.get_input_embeddings().embedding_dim
    connector = build_connector(model_cfg.connector, encoder.hidden_size, lm_dim, model_cfg.num_image_tokens, grid_size,
                                model_cfg.connector_pos_emb)
    return MLLM(model_cfg, encoder, connector, lm, tokenizer, tokenizer_source.special_tokens)


def load_model(directory: str | Path, device: str = "cpu") -> MLLM:
    """Rebuild a saved MLLM from its directory alone (safetensors + JSON configs; nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_weights
    from transformers import AutoConfig, AutoTokenizer

    from mmbench_cli.config import HASH_NEUTRAL_FIELDS, ModelConfig
    from mmbench_cli.model.encoders import VisionEncoder, vision_model_from_config
    from mmbench_cli.model.lm import lm_from_config
    from mmbench_cli.model.tokenizer import add_special_tokens, legacy_special_tokens

    directory = Path(directory)
    meta_path = directory / MM_CONFIG
    if not directory.is_dir() or not meta_path.exists() or not (directory / WEIGHTS).exists():
        raise MMError(f"{directory}: not a saved mmbench model (needs {MM_CONFIG} and {WEIGHTS}); "
                      "pass a dir written by `mm build -o` or a checkpoints/step_<N>/ dir")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError("wrong format")
        model_cfg = ModelConfig.model_validate({**HASH_NEUTRAL_FIELDS["model"], **meta["model"]})
        encoder_cfg = AutoConfig.from_pretrained(str(directory / "encoder"), local_files_only=True)
        lm_cfg = AutoConfig.from_pretrained(str(directory / "lm"), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        special_tokens = meta.get("special_tokens") or legacy_special_tokens(tokenizer, meta["image_token_id"])
        tokenizer = add_special_tokens(tokenizer, special_tokens)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        raise MMError(f"{directory}: damaged saved model ({str(error).splitlines()[0][:120]}); re-save it") from None
    encoder = VisionEncoder(vision_model_from_config(encoder_cfg), meta["image_mean"], meta["image_std"])
    lm = lm_from_config(lm_cfg)
    connector = build_connector(model_cfg.connector, encoder.hidden_size, lm.get_input_embeddings().embedding_dim,
                                model_cfg.num_image_tokens, encoder.grid_size(model_cfg.image_size),
                                model_cfg.connector_pos_emb)
    check_saved_tokenizer(directory, {**meta, "special_tokens": special_tokens}, tokenizer,
                          lm.get_input_embeddings().num_embeddings, hf_path(model_cfg.lm) is None)
    model = MLLM(model_cfg, encoder, connector, lm, tokenizer, special_tokens)
    try:
        load_weights(model, str(directory / WEIGHTS), strict=True, device=device)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise MMError(f"{directory / WEIGHTS}: cannot load weights ({str(error).splitlines()[0][:160]})") from None
    return model.to(device).eval()
