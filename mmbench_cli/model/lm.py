"""Language models: GPT-NeoX (the Pythia architecture) in a toy size ladder, or a local HF causal LM.

Ladder names state the parameter count with the default 2048-entry vocabulary (input and output
embeddings untied, as in Pythia). Like Pythia: parallel attention+MLP residual, rotary embeddings on a
quarter of each head, GELU MLP of 4× width.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from mmbench_cli.errors import MMError
from mmbench_cli.model.tokenizer import hf_path
from mmbench_cli.registry import LMS

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig

    from mmbench_cli.config import ModelConfig


@dataclass(frozen=True)
class PythiaSpec:
    """Width/depth of a ladder LM."""

    hidden_size: int
    num_layers: int
    num_heads: int


LMS.add("pythia-toy-1m", PythiaSpec(hidden_size=128, num_layers=2, num_heads=4))
LMS.add("pythia-toy-2m", PythiaSpec(hidden_size=192, num_layers=3, num_heads=6))
LMS.add("pythia-toy-5m", PythiaSpec(hidden_size=256, num_layers=5, num_heads=8))
LMS.add("pythia-toy-10m", PythiaSpec(hidden_size=384, num_layers=5, num_heads=8))
LMS.add("pythia-toy-30m", PythiaSpec(hidden_size=512, num_layers=9, num_heads=8))
LMS.add("pythia-toy-85m", PythiaSpec(hidden_size=768, num_layers=12, num_heads=12))  # Pythia-160M's shape; ablations/scale.yaml


def build_pythia(spec: PythiaSpec, vocab_size: int, max_seq_len: int, eos_id: int = 0, pad_id: int = 1) -> nn.Module:
    """A randomly initialised GPTNeoXForCausalLM of the given shape (SDPA attention, fp32)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=4 * spec.hidden_size,
        rotary_pct=0.25,
        max_position_embeddings=max_seq_len,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    config._attn_implementation = "sdpa"
    return GPTNeoXForCausalLM(config)


def lm_from_config(config: PretrainedConfig) -> nn.Module:
    """An uninitialised causal LM for a saved HF config (used when reloading a saved MLLM)."""
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config)


def check_hf_dir(where: str, directory: Path) -> None:
    """MMError unless ``directory`` is a local Hugging Face checkpoint with safetensors weights (never a pickle).

    Shared by every ``hf:<dir>`` loader (LM, encoder); ``where`` names the config field and the path.
    """
    if not directory.is_dir():
        raise MMError(f"{where} is not a directory; pass hf:<local checkpoint dir>")
    if not (directory / "config.json").exists():
        raise MMError(f"{where} is not a Hugging Face checkpoint (no config.json); pass hf:<dir saved by save_pretrained>")
    if not any(directory.glob("*.safetensors")):
        raise MMError(f"{where} has no .safetensors weights; only safetensors checkpoints are loaded (never pickles)")


@contextlib.contextmanager
def hf_load_errors(where: str, what: str) -> Iterator[None]:
    """Turn a failing ``from_pretrained`` (unreadable config, weights that are not safetensors, wrong shapes) into
    one MMError naming ``where``; MMErrors pass through."""
    try:
        yield
    except MMError:
        raise
    except Exception as error:  # noqa: BLE001 - OSError, ValueError, KeyError, SafetensorError, RuntimeError, ...
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MMError(f"{where}: not a loadable {what} ({first[:160]})") from None


def load_hf_lm(directory: Path) -> nn.Module:
    """Load a local causal-LM checkpoint from safetensors (never a pickle)."""
    from transformers import AutoModelForCausalLM

    where = f"model.lm: {directory}"
    check_hf_dir(where, directory)
    with hf_load_errors(where, "causal LM"):
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), use_safetensors=True, attn_implementation="sdpa", local_files_only=True, dtype="float32"
        )
    return model.float()


def build_lm(model_cfg: ModelConfig, vocab_size: int, eos_id: int = 0, pad_id: int = 1) -> nn.Module:
    """The LM named by ``model.lm``; an hf: LM's embeddings grow when the tokenizer has more tokens."""
    path = hf_path(model_cfg.lm)
    if path is not None:
        lm = load_hf_lm(path)
        if lm.get_input_embeddings().num_embeddings < vocab_size:
            lm.resize_token_embeddings(vocab_size)
        return lm
    return build_pythia(LMS.get(model_cfg.lm), vocab_size, model_cfg.max_seq_len, eos_id, pad_id)
