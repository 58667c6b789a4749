"""The MM1-style model: encoders, connectors, LMs, tokenizer and their assembly (``build_model``).

``build_model`` and ``load_model`` are imported lazily so that importing ``mmbench_cli.model.tokenizer``
does not pull in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mmbench_cli.model.mllm import MLLM, build_model, load_model

__all__ = ["build_model", "load_model", "MLLM"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from mmbench_cli.model import mllm

        return getattr(mllm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
