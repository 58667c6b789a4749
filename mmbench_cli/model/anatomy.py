"""``mm build``: assemble the model, print its anatomy, run a shape-check forward, optionally save it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from mmbench_cli.config import Config
    from mmbench_cli.model.mllm import MLLM
    from mmbench_cli.model.tokenizer import TokenizerSource


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _name(spec: str) -> str:
    return spec if len(spec) <= 40 else "…" + spec[-39:]


def shape_check(model: MLLM, images_per_row: int = 2, rows: int = 2) -> dict[str, tuple[int, ...] | float]:
    """Forward a dummy interleaved batch (``images_per_row`` images per row) and check every shape.

    Returns the shapes seen; raises RuntimeError if any disagrees with the declared sizes.
    """
    import torch

    ids: list[int] = []
    for i in range(images_per_row):  # image slots, then a caption-like text chunk closed by the chunk token
        text = model.tokenizer(f"Output: a red circle above {i} blue squares", add_special_tokens=False)["input_ids"]
        ids += [model.image_token_id] * model.num_image_tokens + text + [model.eoc_token_id]
    input_ids = torch.tensor([ids] * rows)
    images = torch.randn(rows * images_per_row, 3, model.image_size, model.image_size)
    model.eval()
    with torch.no_grad():
        image_tokens = model.encode_images(images)
        out = model(input_ids, torch.ones_like(input_ids), images=images, labels=input_ids)
    expected = (rows * images_per_row, model.num_image_tokens, model.lm.get_input_embeddings().embedding_dim)
    if tuple(image_tokens.shape) != expected:
        raise RuntimeError(f"connector emitted {tuple(image_tokens.shape)}, expected {expected}")
    vocab = model.lm.get_output_embeddings().weight.shape[0]
    if tuple(out.logits.shape) != (rows, len(ids), vocab) or not torch.isfinite(out.loss):
        raise RuntimeError(f"LM output {tuple(out.logits.shape)} / loss {out.loss} is wrong")
    return {"input_ids": tuple(input_ids.shape), "images": tuple(images.shape),
            "image_tokens": tuple(image_tokens.shape), "logits": tuple(out.logits.shape), "loss": float(out.loss)}


def check_out(out: Path) -> None:
    """MMError unless ``out`` is free or holds an earlier ``mm build -o`` model (never a run, a checkpoint or a
    user's file): the one overwrite guard, ``rundir.refuse_overwrite``."""
    from mmbench_cli.rundir import refuse_overwrite, what_is_at

    refuse_overwrite(out, "--out", lambda path: what_is_at(path) == "a saved model")


def build_and_report(cfg: Config, tokenizer_source: TokenizerSource, out: Path | None, console: Console,
                     after_build: Callable[[MLLM], None] | None = None) -> MLLM:
    """Build ``cfg.model``, print a component table, FLOPs and a shape check; save to ``out`` if given.

    ``tokenizer_source``: as for ``build_model`` (``data.synthetic.tokenizer_source(cfg.data)``). ``after_build``
    runs on the built model before anything is checked or saved (``mm build`` loads a pre-trained encoder with it).
    """
    import torch

    from mmbench_cli.model import build_model
    from mmbench_cli.rundir import atomic_dir

    if out is not None:
        check_out(out)
    torch.manual_seed(cfg.seed)
    with console.status("assembling the model (training the tokenizer on first use)…"):
        model = build_model(cfg.model, tokenizer_source)
    if after_build is not None:
        after_build(model)
    counts = model.param_counts()
    m = cfg.model
    grid = model.encoder.grid_size(m.image_size)
    lm_dim = model.lm.get_input_embeddings().embedding_dim
    table = Table(title=f"mm build: {cfg.name}", title_justify="left")
    table.add_column("component")
    table.add_column("name", overflow="fold")
    table.add_column("class", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("output shape", no_wrap=True)
    table.add_row("encoder", _name(m.encoder), type(model.encoder.hf_model).__name__, _fmt_params(counts["encoder"]),
                  f"[{grid * grid}, {model.encoder.hidden_size}]")
    table.add_row("connector", m.connector, type(model.connector).__name__, _fmt_params(counts["connector"]),
                  f"[{model.num_image_tokens}, {lm_dim}]")
    table.add_row("language model", _name(m.lm), type(model.lm).__name__, _fmt_params(counts["lm"]),
                  f"[{cfg.data.seq_len}, {model.lm.get_output_embeddings().weight.shape[0]}]")
    if "fusion" in counts:
        table.add_row("fusion", m.fusion, type(model.fusion).__name__, _fmt_params(counts["fusion"]),
                      f"[{cfg.data.seq_len}, {lm_dim}]")
    table.add_row("tokenizer", _name(m.tokenizer), type(model.tokenizer).__name__, "-", f"{len(model.tokenizer)} tokens")
    table.add_row("total", "", "MLLM", _fmt_params(counts["total"]), "", style="bold")
    console.print(table)
    console.print(f"fusion: [bold]{m.fusion}[/]: {model.fusion.anatomy()}")
    flops = model.flops_per_sample(cfg.data.seq_len)
    console.print(f"image tokens per image: [bold]{model.num_image_tokens}[/] ({m.image_size}px, patch "
                  f"{model.encoder.patch_size}: {grid}×{grid} patches → {m.connector})")
    console.print(f"training FLOPs per sample ({cfg.data.seq_len} tokens, 1 image, fwd+bwd): [bold]{flops / 1e9:.3f} GFLOP[/]"
                  f"  (LM {model.lm_flops_per_token(cfg.data.seq_len) * cfg.data.seq_len / 1e9:.3f},"
                  f" image path {model.image_flops() / 1e9:.3f})")
    shapes = shape_check(model)
    console.print(f"shape check ok: input_ids {list(shapes['input_ids'])} + images {list(shapes['images'])} → "
                  f"image tokens {list(shapes['image_tokens'])} → logits {list(shapes['logits'])}, "
                  f"loss {shapes['loss']:.3f} (≈ ln V = {torch.tensor(float(len(model.tokenizer))).log():.3f} at init)")
    if out is not None:
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
        console.print(f"saved to [bold]{out}[/] (model.safetensors, mm_config.json, encoder/, lm/, tokenizer)")
    return model
