"""How the LM reads the image: MM1's token splicing, Flamingo's gated cross-attention, mPLUG-Owl2's modality-adaptive
module (``model.fusion``).

``splice``  image tokens overwrite the ``<image>`` slots of the LM's input (MM1, LLaVA); nothing is added.
``xattn``   a GATED XATTN-DENSE block (Flamingo, Fig. 4) runs before every ``model.xattn_every``-th LM layer: the
            text attends to image tokens through a tanh-gated residual, then a tanh-gated feed-forward, both gates 0
            at init so the LM is intact. The ``<image>`` slots stay plain marker tokens; each token attends only to
            the image of the last ``<image>`` run at or before it (Flamingo's media masking; none before the first).
``mam``     splicing as ``splice``, plus, in every LM layer, image positions get their own layer norms and key/value
            projections (mPLUG-Owl2's modality-adaptive module; queries, output projection and MLP stay shared),
            initialised from the text weights so the model starts as the spliced one.

The new weights live in this module (``MLLM.fusion``), never inside the LM's layers: they reach the LM through
forward hooks on its own modules, so an hf: LM's code, weights and layer list are untouched (FSDP can wrap its
layers as usual). Each forward is "conditioned" on the batch's ``<image>`` layout by ``MLLM`` (``conditioned``); a
forward pre-hook on the LM's decoder reads how many positions the KV cache already holds, so cached and uncached
decoding see the same positions. Generated tokens are text and read the prompt's last image.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmbench_cli.errors import MMError
from mmbench_cli.registry import FUSIONS


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The decoder layer list of an HF causal LM (GPT-NeoX ``gpt_neox.layers``, Llama ``model.layers``)."""
    layers = getattr(lm.base_model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise MMError(f"model.fusion: {type(lm).__name__} has no decoder layer list (base_model.layers); "
                      "xattn and mam need a GPT-NeoX or Llama layout LM, or use model.fusion=splice")
    return layers


def media_index(image_mask: torch.Tensor, num_image_tokens: int) -> torch.Tensor:
    """[B, L] image-slot mask → [B, L] index (1-based) of the image whose ``<image>`` run is last at or before each
    position, 0 before the first. A run of slots is one image per ``num_image_tokens`` slots."""
    seen = image_mask.long().cumsum(-1)
    return (seen + num_image_tokens - 1) // num_image_tokens


@dataclass
class FusionState:
    """One conditioning: the prompt's image-slot mask and media index [B, L0] and, for xattn, each block's image
    keys/values (computed once per image). ``current_*`` hold what the LM call in flight sees."""

    image_mask: torch.Tensor | None = None
    media: torch.Tensor | None = None
    keys_values: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    current_mask: torch.Tensor | None = None
    current_media: torch.Tensor | None = None

    def select(self, offset: int, length: int, batch: int) -> None:
        """Point ``current_*`` at positions ``offset .. offset+length`` of ``batch`` rows (beam rows repeat their
        prompt row); positions past the prompt are text that reads the prompt's last image."""
        if self.image_mask is None:
            self.current_mask = self.current_media = None
            return
        rows = self.image_mask.shape[0]
        repeat = batch // rows if batch % rows == 0 else 1
        prompt_len = self.image_mask.shape[1]
        positions = torch.arange(offset, offset + length, device=self.image_mask.device)
        inside = positions.clamp(max=prompt_len - 1)
        mask = self.image_mask[:, inside] & (positions < prompt_len)
        media = self.media[:, inside]
        self.current_mask = mask.repeat_interleave(repeat, 0) if repeat > 1 else mask
        self.current_media = media.repeat_interleave(repeat, 0) if repeat > 1 else media


def _cache_length(kwargs: dict[str, Any]) -> int:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0


class Fusion(nn.Module):
    """Base: how image tokens enter the LM. ``splices``: whether they overwrite the ``<image>`` slots."""

    splices = True

    def __init__(self) -> None:
        super().__init__()
        self.state = FusionState()
        self.num_image_tokens = 1

    def attach(self, lm: nn.Module, num_image_tokens: int) -> None:
        """Hook the LM: its decoder learns which call positions it is at (KV cache aware)."""
        self.num_image_tokens = num_image_tokens
        decoder = lm.base_model

        def where_am_i(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            embeds = kwargs.get("inputs_embeds")
            tokens = embeds if embeds is not None else kwargs.get("input_ids", args[0] if args else None)
            self.state.select(_cache_length(kwargs), tokens.shape[1], tokens.shape[0])

        decoder.register_forward_pre_hook(where_am_i, with_kwargs=True)

    @contextlib.contextmanager
    def conditioned(self, image_mask: torch.Tensor, image_embeds: torch.Tensor | None) -> Iterator[None]:
        """Within the block, LM calls read ``image_mask`` [B, L0] (``<image>`` slots) and ``image_embeds``
        [N, T, D] (the batch's images in reading order); LM calls after it see text only."""
        mask = image_mask.bool()
        self.state = FusionState(image_mask=mask, media=media_index(mask, self.num_image_tokens))
        if image_embeds is not None and image_embeds.shape[0]:
            self.prepare(image_embeds, mask)
        try:
            yield
        finally:
            # Later LM calls read text only, but what this forward's layers saw stays: activation checkpointing
            # re-runs the layers (and these hooks) during the backward pass, after this block has exited.
            self.state.image_mask = self.state.media = None

    def prepare(self, image_embeds: torch.Tensor, image_mask: torch.Tensor) -> None:
        """Per-conditioning work on the images (xattn: keys/values once per image)."""

    def anatomy(self) -> str:
        """One line: where the new blocks sit."""
        return "image tokens overwrite the <image> slots of the LM input; no new blocks"

    def flops_per_token(self) -> int:
        """Training FLOPs (fwd+bwd) the fusion adds per sequence position."""
        return 0

    def flops_per_image(self) -> int:
        """Training FLOPs (fwd+bwd) the fusion adds per image."""
        return 0


@FUSIONS.register("splice")
class SpliceFusion(Fusion):
    """MM1 / LLaVA: image tokens are spliced into the input sequence; the LM is unchanged."""

    def __init__(self, lm: nn.Module, every: int = 1) -> None:
        super().__init__()


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo's GATED XATTN-DENSE (as open_flamingo's ``GatedCrossAttentionBlock``): masked cross-attention to the
    image tokens and a feed-forward, each added through a tanh gate initialised at 0."""

    def __init__(self, dim: int, num_heads: int, ff_mult: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ff_mult * dim, bias=False), nn.GELU(),
                                nn.Linear(ff_mult * dim, dim, bias=False))
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def media_keys_values(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, M·T, D] image tokens → keys, values [B, heads, M·T, D/heads] (once per image)."""
        keys, values = self.to_kv(media).chunk(2, dim=-1)
        return self._heads(keys), self._heads(values)

    def forward(self, x: torch.Tensor, media: torch.Tensor | None,
                keys_values: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """x [B, L, D]; ``media`` [B, L] image index per position (0: none yet); ``keys_values``: keys, values and
        the image index of each key [M·T]."""
        if keys_values is not None and media is not None:
            keys, values, key_media = keys_values
            if keys.shape[0] != x.shape[0]:  # beam rows repeat their prompt row
                repeat = x.shape[0] // keys.shape[0]
                keys, values = keys.repeat_interleave(repeat, 0), values.repeat_interleave(repeat, 0)
            has_image = (media > 0)[:, None, :, None]
            allowed = (media[:, None, :, None] == key_media) | ~has_image  # rows with no image: zeroed below
            query = self._heads(self.to_q(self.norm(x)))
            attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=allowed) * has_image
            x = x + self.attn_gate.tanh() * self.to_out(attended.transpose(1, 2).flatten(2))
        return x + self.ff_gate.tanh() * self.ff(x)


@FUSIONS.register("xattn")
class CrossAttentionFusion(Fusion):
    """Flamingo: GATED XATTN-DENSE blocks before every ``every``-th LM layer; images are not spliced."""

    splices = False

    def __init__(self, lm: nn.Module, every: int = 1) -> None:
        super().__init__()
        layers = decoder_layers(lm)
        dim, heads = lm.config.hidden_size, lm.config.num_attention_heads
        self.positions = list(range(0, len(layers), every))
        self.dim = dim
        self.blocks = nn.ModuleDict({str(i): GatedCrossAttentionBlock(dim, heads) for i in self.positions})

    def attach(self, lm: nn.Module, num_image_tokens: int) -> None:
        """Run each block on the hidden states entering its LM layer."""
        super().attach(lm, num_image_tokens)
        layers = decoder_layers(lm)
        for index in self.positions:
            layer, block = layers[index], self.blocks[str(index)]

            def cross_attend(module: nn.Module, args: tuple, kwargs: dict[str, Any], index: int = index,
                             block: nn.Module = block) -> tuple[tuple, dict[str, Any]]:
                state = self.state
                if args:
                    return (block(args[0], state.current_media, state.keys_values.get(index)), *args[1:]), kwargs
                kwargs["hidden_states"] = block(kwargs["hidden_states"], state.current_media,
                                                state.keys_values.get(index))
                return args, kwargs

            layer.register_forward_pre_hook(cross_attend, with_kwargs=True)

    def prepare(self, image_embeds: torch.Tensor, image_mask: torch.Tensor) -> None:
        """Pack each row's images [B, M·T, D] and compute every block's keys/values once."""
        per_row = (image_mask.sum(-1) // self.num_image_tokens).tolist()
        most = max(per_row)
        tokens = self.num_image_tokens
        media = image_embeds.new_zeros(len(per_row), most * tokens, image_embeds.shape[-1])
        start = 0
        for row, count in enumerate(per_row):
            media[row, :count * tokens] = image_embeds[start:start + count].flatten(0, 1)
            start += count
        key_media = torch.arange(1, most + 1, device=media.device).repeat_interleave(tokens)
        for index in self.positions:
            keys, values = self.blocks[str(index)].media_keys_values(media)
            self.state.keys_values[index] = (keys, values, key_media)

    def anatomy(self) -> str:
        """Where the blocks sit."""
        return (f"GATED XATTN-DENSE before LM layers {', '.join(map(str, self.positions))} (tanh gates at 0); "
                "<image> slots stay marker tokens, each token reads the image of the last <image> run before it")

    def flops_per_token(self) -> int:
        """Per position: q/out/feed-forward matmuls (6·N) and attention to one image's T keys (12·d·T) per block."""
        d = self.dim
        per_block = 6 * (2 * d * d + 8 * d * d) + 12 * d * self.num_image_tokens
        return len(self.positions) * per_block

    def flops_per_image(self) -> int:
        """Per image: each block's key/value projection of its T tokens (6·2d²·T)."""
        return len(self.positions) * 6 * 2 * self.dim * self.dim * self.num_image_tokens


class ImageCopy(nn.Module):
    """An image-position twin of one LM module (a norm or a K/V projection), initialised as a copy of it."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module)

    def merge(self, x: torch.Tensor, text_out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``text_out`` with the image positions (``mask``) recomputed by the twin."""
        return text_out.masked_scatter(mask.unsqueeze(-1), self.module(x[mask]).to(text_out.dtype))

    def matmul_params(self) -> int:
        """Parameters in matrices (what costs FLOPs per token)."""
        return sum(p.numel() for p in self.module.parameters() if p.dim() > 1)


class ImageKeyValue(nn.Module):
    """The image twin of GPT-NeoX's fused query-key-value projection: only its key/value rows (queries are shared),
    laid out per head as GPT-NeoX does ([q, k, v] per head)."""

    def __init__(self, qkv: nn.Linear, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        dim = qkv.in_features
        head = qkv.out_features // (3 * num_heads)
        self.kv = nn.Linear(dim, 2 * num_heads * head, bias=qkv.bias is not None)
        with torch.no_grad():
            self.kv.weight.copy_(qkv.weight.view(num_heads, 3, head, dim)[:, 1:].reshape(-1, dim))
            if qkv.bias is not None:
                self.kv.bias.copy_(qkv.bias.view(num_heads, 3, head)[:, 1:].reshape(-1))

    def merge(self, x: torch.Tensor, text_out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``text_out`` [.., 3·d] with the image positions' keys/values from the twin, queries kept."""
        text_at = text_out[mask].unflatten(-1, (self.num_heads, 3, -1))
        image_kv = self.kv(x[mask]).unflatten(-1, (self.num_heads, 2, -1)).to(text_out.dtype)
        merged = torch.cat([text_at[:, :, :1], image_kv], dim=2).flatten(1)
        return text_out.masked_scatter(mask.unsqueeze(-1), merged)

    def matmul_params(self) -> int:
        """Parameters in matrices (what costs FLOPs per token)."""
        return self.kv.weight.numel()


NORMS = ("input_layernorm", "post_attention_layernorm")
SEPARATE_KV = ("self_attn.k_proj", "self_attn.v_proj")  # Llama layout
FUSED_QKV = "attention.query_key_value"  # GPT-NeoX layout


@FUSIONS.register("mam")
class ModalityAdaptiveFusion(Fusion):
    """mPLUG-Owl2's modality-adaptive module: spliced image positions use their own layer norms and K/V projections
    in every LM layer; queries, output projection and MLP are shared."""

    def __init__(self, lm: nn.Module, every: int = 1) -> None:
        super().__init__()
        self.twins = nn.ModuleList()
        self._targets: list[list[tuple[nn.Module, nn.Module]]] = []
        for layer in decoder_layers(lm):
            twins, targets = nn.ModuleDict(), []
            for name in NORMS + SEPARATE_KV + (FUSED_QKV,):
                try:
                    module = layer.get_submodule(name)
                except AttributeError:
                    continue
                if name == FUSED_QKV:
                    twin: nn.Module = ImageKeyValue(module, lm.config.num_attention_heads)
                else:
                    twin = ImageCopy(module)
                twins[name.replace(".", "_")] = twin
                targets.append((module, twin))
            if len(targets) < 3 or not all(norm in twins for norm in NORMS):
                raise MMError(f"model.fusion=mam: {type(layer).__name__} has not the norms and K/V projections "
                              f"of a GPT-NeoX or Llama layer ({', '.join(NORMS + SEPARATE_KV + (FUSED_QKV,))})")
            self.twins.append(twins)
            self._targets.append(targets)

    def attach(self, lm: nn.Module, num_image_tokens: int) -> None:
        """Hook each norm and K/V projection: image positions take the twin's output."""
        super().attach(lm, num_image_tokens)
        for targets in self._targets:
            for module, twin in targets:
                def to_image(module: nn.Module, args: tuple, output: torch.Tensor,
                             twin: nn.Module = twin) -> torch.Tensor:
                    mask = self.state.current_mask
                    if mask is None or mask.shape != output.shape[:-1] or not bool(mask.any()):
                        return output
                    return twin.merge(args[0], output, mask)

                module.register_forward_hook(to_image)

    def anatomy(self) -> str:
        """Where the twins sit."""
        names = sorted(self.twins[0].keys()) if len(self.twins) else []
        return (f"image tokens spliced; in all {len(self.twins)} LM layers image positions use their own "
                f"{', '.join(names)} (initialised from the text weights); queries, output proj and MLP shared")

    def flops_per_image(self) -> int:
        """Per image: the twins' matmuls on its T positions (the LM's own projection still runs there too)."""
        matmul = sum(twin.matmul_params() for twins in self.twins for twin in twins.values())
        return 6 * matmul * self.num_image_tokens


def build_fusion(name: str, lm: nn.Module, num_image_tokens: int, every: int = 1) -> Fusion:
    """The fusion called ``name`` (``model.fusion``), built for and hooked into ``lm``."""
    fusion = FUSIONS.get(name)(lm, every)
    fusion.attach(lm, num_image_tokens)
    return fusion

