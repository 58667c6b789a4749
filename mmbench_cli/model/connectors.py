"""Vision-language connectors: patch features [N, P, D_enc] → exactly ``num_image_tokens`` LM embeddings.

MM1 (§3.2) compares average pooling, attention pooling and the C-Abstractor and finds the number of
image tokens and the resolution matter far more than the connector type. Each class states which token
counts it can produce (``allowed_tokens``); ``build_connector`` checks the config against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmbench_cli.errors import MMError
from mmbench_cli.registry import CONNECTORS


def _square_counts(num_patches: int) -> list[int]:
    side = math.isqrt(num_patches)
    return [k * k for k in range(1, side + 1)]


def _allowed_text(values: list[int], limit: int = 12) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


class Connector(nn.Module):
    """Base class: knows its input grid and output token count; optionally adds a learned position embedding to
    the patch features first (Honeybee's ``pos_emb``), so that every image token can say *where* it looked."""

    def __init__(self, encoder_dim: int, lm_dim: int, num_image_tokens: int, grid_size: int,
                 pos_emb: bool = False) -> None:
        super().__init__()
        self.encoder_dim = encoder_dim
        self.lm_dim = lm_dim
        self.num_image_tokens = num_image_tokens
        self.grid_size = grid_size
        self.pos_emb: nn.Parameter | None = None
        if pos_emb:
            self.pos_emb = nn.Parameter(torch.empty(1, grid_size * grid_size, encoder_dim))
            nn.init.trunc_normal_(self.pos_emb, std=0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[N, P, D_enc] patch features → [N, T, D_lm] image tokens (position embedding added first, if any)."""
        return self.project(features if self.pos_emb is None else features + self.pos_emb)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The connector proper: [N, P, D_enc] → [N, T, D_lm]."""
        raise NotImplementedError

    @staticmethod
    def allowed_tokens(grid_size: int) -> list[int] | None:
        """Token counts this connector can emit for a grid of ``grid_size``² patches (None: any)."""
        return None

    def _to_grid(self, features: torch.Tensor) -> torch.Tensor:
        """[N, P, D] → an [N, D, √P, √P] view in channels-last memory (no copy; fast convs and LayerNorm2d)."""
        n, p, d = features.shape
        side = math.isqrt(p)
        return features.reshape(n, side, side, d).permute(0, 3, 1, 2)


@CONNECTORS.register("linear")
class LinearConnector(Connector):
    """One token per patch, projected by a single linear layer."""

    def __init__(self, encoder_dim: int, lm_dim: int, num_image_tokens: int, grid_size: int,
                 pos_emb: bool = False) -> None:
        super().__init__(encoder_dim, lm_dim, num_image_tokens, grid_size, pos_emb)
        self.proj = nn.Linear(encoder_dim, lm_dim)

    @staticmethod
    def allowed_tokens(grid_size: int) -> list[int] | None:
        """Exactly one token per patch."""
        return [grid_size * grid_size]

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[N, P, D_enc] → [N, P, D_lm]."""
        return self.proj(features)


@CONNECTORS.register("mlp")
class MLPConnector(LinearConnector):
    """One token per patch, projected by a two-layer GELU MLP (LLaVA-1.5)."""

    def __init__(self, encoder_dim: int, lm_dim: int, num_image_tokens: int, grid_size: int,
                 pos_emb: bool = False) -> None:
        Connector.__init__(self, encoder_dim, lm_dim, num_image_tokens, grid_size, pos_emb)
        self.proj = nn.Sequential(nn.Linear(encoder_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))


@CONNECTORS.register("avgpool")
class AvgPoolConnector(Connector):
    """Adaptive average pooling of the patch grid to √T×√T, then a linear projection (MM1's "Avg Pool")."""

    def __init__(self, encoder_dim: int, lm_dim: int, num_image_tokens: int, grid_size: int,
                 pos_emb: bool = False) -> None:
        super().__init__(encoder_dim, lm_dim, num_image_tokens, grid_size, pos_emb)
        self.side = math.isqrt(num_image_tokens)
        self.proj = nn.Linear(encoder_dim, lm_dim)

    @staticmethod
    def allowed_tokens(grid_size: int) -> list[int] | None:
        """Square counts up to the number of patches."""
        return _square_counts(grid_size * grid_size)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[N, P, D_enc] → [N, T, D_lm]."""
        pooled = F.adaptive_avg_pool2d(self._to_grid(features), self.side)
        return self.proj(pooled.permute(0, 2, 3, 1).reshape(pooled.shape[0], -1, pooled.shape[1]))


@CONNECTORS.register("attnpool")
class AttnPoolConnector(Connector):
    """T learnable queries cross-attend to the patches (one perceiver-resampler layer), then project."""

    def __init__(self, encoder_dim: int, lm_dim: int, num_image_tokens: int, grid_size: int,
                 pos_emb: bool = False) -> None:
        super().__init__(encoder_dim, lm_dim, num_image_tokens, grid_size, pos_emb)
        self.num_heads = next(h for h in range(max(1, encoder_dim // 64), 0, -1) if encoder_dim % h == 0)
        self.queries = nn.Parameter(torch.randn(num_image_tokens, encoder_dim) * 0.02)
        self.norm_kv = nn.LayerNorm(encoder_dim)
        self.norm_q = nn.LayerNorm(encoder_dim)
        self.q = nn.Linear(encoder_dim, encoder_dim, bias=False)
        self.kv = nn.Linear(encoder_dim, 2 * encoder_dim, bias=False)
        self.out = nn.Linear(encoder_dim, encoder_dim, bias=False)
        self.norm_ff = nn.LayerNorm(encoder_dim)
        self.ff = nn.Sequential(nn.Linear(encoder_dim, 4 * encoder_dim), nn.GELU(), nn.Linear(4 * encoder_dim, encoder_dim))
        self.proj = nn.Linear(encoder_dim, lm_dim)

    @staticmethod
    def allowed_tokens(grid_size: int) -> list[int] | None:
        """Any count up to the number of patches (more queries than patches adds no information)."""
        return list(range(1, grid_size * grid_size + 1))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[N, P, D_enc] → [N, T, D_lm]."""
        n, p, d = features.shape
        heads = self.num_heads
        latents = self.queries.unsqueeze(0).expand(n, -1, -1)
        kv = self.kv(self.norm_kv(features)).view(n, p, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
        q = self.q(self.norm_q(latents)).view(n, -1, heads, d // heads).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, kv[0], kv[1])
        latents = latents + self.out(attended.transpose(1, 2).reshape(n, -1, d))
        latents = latents + self.ff(self.norm_ff(latents))
        return self.proj(latents)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an [N, C, H, W] map (as in Honeybee's C-Abstractor)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each position's channel vector (a no-copy permute for channels-last input)."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """A bottleneck ResNet block (1×1 → 3×3 → 1×1 convs, LayerNorm2d, SiLU) with a residual path."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        mid = max(out_dim // 2, 8)
        self.body = nn.Sequential(
            nn.Conv2d(in_dim, mid, 1, bias=False), LayerNorm2d(mid), nn.SiLU(),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), LayerNorm2d(mid), nn.SiLU(),
            nn.Conv2d(mid, out_dim, 1, bias=False), LayerNorm2d(out_dim),
        )
        self.shortcut = nn.Identity() if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck."""
        return F.silu(self.shortcut(x) + self.body(x))


@CONNECTORS.register("c-abstractor")
class CAbstractor(Connector):
    """Honeybee/MM1 C-Abstractor: ResNet blocks → adaptive avg pool to √T×√T → ResNet blocks → MLP readout."""

    depth = 2

    def __init__(self, encoder_dim: int, lm_dim: int, num_image_tokens: int, grid_size: int,
                 pos_emb: bool = False) -> None:
        super().__init__(encoder_dim, lm_dim, num_image_tokens, grid_size, pos_emb)
        hidden = encoder_dim
        self.side = math.isqrt(num_image_tokens)
        self.stage1 = nn.Sequential(*[ResBlock(encoder_dim if i == 0 else hidden, hidden) for i in range(self.depth)])
        self.pool = nn.AdaptiveAvgPool2d(self.side)
        self.stage2 = nn.Sequential(*[ResBlock(hidden, hidden) for _ in range(self.depth)])
        self.readout = nn.Sequential(nn.Linear(hidden, lm_dim), nn.SiLU(), nn.Linear(lm_dim, lm_dim))

    @staticmethod
    def allowed_tokens(grid_size: int) -> list[int] | None:
        """Square counts up to the number of patches."""
        return _square_counts(grid_size * grid_size)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[N, P, D_enc] → [N, T, D_lm]."""
        x = self.stage2(self.pool(self.stage1(self._to_grid(features))))
        return self.readout(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1]))


def check_connector(name: str, num_image_tokens: int, grid_size: int) -> type[Connector]:
    """The connector class for ``name``; MMError if it cannot emit ``num_image_tokens`` from this grid."""
    cls = CONNECTORS.get(name)
    if num_image_tokens <= 0:
        raise MMError(f"model.num_image_tokens: {num_image_tokens} must be a positive integer")
    allowed = cls.allowed_tokens(grid_size)
    if allowed is not None and num_image_tokens not in allowed:
        patches = grid_size * grid_size
        if len(allowed) == 1:
            raise MMError(
                f"model.num_image_tokens: connector {name!r} emits one token per patch, so it must be {allowed[0]} "
                f"(= {grid_size}×{grid_size} patches at this image/patch size), not {num_image_tokens}"
            )
        raise MMError(
            f"model.num_image_tokens: connector {name!r} cannot emit {num_image_tokens} tokens from "
            f"{grid_size}×{grid_size}={patches} patches; allowed values: {_allowed_text(allowed)}"
        )
    return cls


def build_connector(name: str, encoder_dim: int, lm_dim: int, num_image_tokens: int, grid_size: int,
                    pos_emb: bool = False) -> Connector:
    """Build connector ``name`` mapping ``encoder_dim`` patch features to ``num_image_tokens`` × ``lm_dim``
    (``pos_emb``: add a learned position embedding to the patch features first)."""
    cls = check_connector(name, num_image_tokens, grid_size)
    return cls(encoder_dim, lm_dim, num_image_tokens, grid_size, pos_emb)
