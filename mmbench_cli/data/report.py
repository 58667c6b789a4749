"""``mm build --data``: materialise the dataset, check it, and report counts and a contact sheet of samples."""

from __future__ import annotations

import io
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from mmbench_cli.data.types import CaptionSample, ImageRef, InterleavedDoc, Sample, VQASample
from mmbench_cli.rundir import atomic_write_bytes, atomic_write_json, refuse_overwrite

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from mmbench_cli.config import Config

CELL = 176  # thumbnail size in the contact sheet


def default_out_dir(cfg: Config) -> Path:
    """Where the data report goes when ``-o`` is not given."""
    return Path("reports") / f"data-{cfg.name}"


def _first_image(sample: Sample) -> ImageRef | None:
    if isinstance(sample, CaptionSample | VQASample):
        return sample.image
    if isinstance(sample, InterleavedDoc):
        return next((chunk for chunk in sample.chunks if not isinstance(chunk, str)), None)
    return None


def _label(sample: Sample) -> str:
    if isinstance(sample, CaptionSample):
        return sample.captions[0]
    if isinstance(sample, VQASample):
        from mmbench_cli.data.templates import majority_answer

        return f"Q: {sample.question} A: {majority_answer(sample.answers)}"
    if isinstance(sample, InterleavedDoc):
        return " ".join(chunk for chunk in sample.chunks if isinstance(chunk, str))
    return getattr(sample, "text", "")


def contact_sheet(samples: list[Sample], image_size: int, columns: int = 4) -> Image.Image:
    """A grid of sample images, each with the model's-eye view at ``image_size`` px and its text below."""
    samples = [s for s in samples if _first_image(s) is not None]
    rows = max(1, (len(samples) + columns - 1) // columns)
    text_height = 64
    cell_w, cell_h = 2 * CELL + 12, CELL + text_height + 12
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h + 24), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    draw.text((6, 4), f"left: native image; right: what the model sees at {image_size} px", fill=(0, 0, 0), font=font)
    for number, sample in enumerate(samples):
        x, y = (number % columns) * cell_w + 4, (number // columns) * cell_h + 24
        image = _first_image(sample).load()  # type: ignore[union-attr]
        sheet.paste(image.resize((CELL, CELL), Image.Resampling.BICUBIC), (x, y))
        seen = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        sheet.paste(seen.resize((CELL, CELL), Image.Resampling.NEAREST), (x + CELL + 4, y))
        lines = textwrap.wrap(_label(sample), width=58)[:5]
        draw.multiline_text((x, y + CELL + 2), "\n".join(lines), fill=(20, 20, 20), font=font, spacing=1)
    return sheet


def _save_sheet(path: Path, sheet: Image.Image) -> None:
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def build_data(cfg: Config, out: Path | None, console: Console) -> dict[str, Any]:
    """Materialise (render/verify) the configured data, print a table of counts, write a contact sheet.

    Returns the summary that is also written to ``<out>/data_summary.json``.
    """
    from rich.table import Table

    out = Path(out) if out else default_out_dir(cfg)
    refuse_overwrite(out, "--out", lambda path: (path / "data_summary.json").is_file())
    started = time.time()
    if cfg.data.source == "synthetic":
        summary, samples = _build_synthetic(cfg, console)
        table = Table(title=f"synthetic world (seed {cfg.data.world_seed})")
        columns = ("images", "captions", "vqa", "ocr", "interleaved", "text", "cloze", "facts")
        table.add_column("split")
        for column in columns:
            table.add_column(column, justify="right")
        for split, counts in summary["splits"].items():
            table.add_row(split, *(str(counts[c]) for c in columns))
    else:
        summary, samples = _build_local(cfg, console)
        table = Table(title="local datasets")
        for column in ("#", "format", "path", "split", "samples", "types", "bad skipped"):
            table.add_column(column, justify="right" if column in ("samples", "bad skipped") else "left")
        for number, entry in enumerate(summary["datasets"]):
            types = ", ".join(f"{k} {v}" for k, v in entry["types"].items())
            table.add_row(str(number), entry["format"], entry["path"], entry["split"], str(entry["samples"]),
                          types, str(entry["bad"]))
    console.print(table)
    mix = ", ".join(f"{k} {v:.0%}" for k, v in cfg.data.data_mix.items())
    console.print(f"data_mix: {mix}; rows of {cfg.data.seq_len} tokens; images at {cfg.model.image_size} px")
    sheet_path = out / "contact_sheet.png"
    _save_sheet(sheet_path, contact_sheet(samples, cfg.model.image_size))
    summary["contact_sheet"] = str(sheet_path)
    summary["seconds"] = round(time.time() - started, 2)
    atomic_write_json(out / "data_summary.json", summary)
    if summary.get("bad"):
        console.print(f"[yellow]skipped {summary['bad']} bad samples[/] (data.skip_bad=true); first problems:")
        for problem in summary.get("problems", [])[:5]:
            console.print(f"  {problem}", highlight=False, markup=False)
    console.print(f"contact sheet: {sheet_path}\nsummary: {out / 'data_summary.json'}", highlight=False)
    return summary


def _build_synthetic(cfg: Config, console: Console) -> tuple[dict[str, Any], list[Sample]]:
    from mmbench_cli.data.synthetic import world_from_config
    from mmbench_cli.progress import progress_bar

    world = world_from_config(cfg.data)
    total = sum(world.num_images.values())
    with progress_bar("rendering images", total, console=console, transient=True, eta=False) as bar:
        rendered = world.materialize(progress=lambda n: bar.update(advance=n))
    splits = world.counts()
    for split, row in splits.items():
        tasks = world.text_tasks(split)
        row.update(cloze=len(tasks["cloze"]), facts=len(tasks["facts"]))
    console.print(f"rendered {rendered} new images ({total - rendered} cached) in {world.image_dir}", highlight=False)
    captions, ocr, vqa = world.captions("train"), world.vqa("train", "ocr"), world.vqa("train", "vqa")
    samples: list[Sample] = [*captions[::7][:6], *ocr[1::5][:3], *vqa[2::9][:3]]
    summary = {"source": "synthetic", "world_seed": cfg.data.world_seed, "image_dir": str(world.image_dir),
               "rendered": rendered, "splits": splits}
    return summary, samples


def _build_local(cfg: Config, console: Console) -> tuple[dict[str, Any], list[Sample]]:
    from mmbench_cli.data.formats import load_dataset_spec
    from mmbench_cli.data.templates import data_type_of
    from mmbench_cli.errors import MMError

    if not cfg.data.datasets:
        raise MMError("data.datasets: data.source is local but no datasets are listed; add {format, path, images}")
    entries = []
    shown: list[Sample] = []
    bad = 0
    problems: list[str] = []
    for spec in cfg.data.datasets:
        with console.status(f"loading and decoding {spec.path}"):
            samples = load_dataset_spec(spec, skip_bad=cfg.data.skip_bad, verify="decode")
        types: dict[str, int] = {}
        for sample in samples:
            kind = "vqa" if isinstance(sample, VQASample) else data_type_of(sample)
            types[kind] = types.get(kind, 0) + 1
        entries.append({"format": spec.format, "path": spec.path, "split": spec.split, "samples": len(samples),
                        "types": types, "bad": samples.num_bad})
        bad += samples.num_bad
        problems.extend(samples.problems)
        shown.extend([s for s in samples if _first_image(s) is not None][: max(1, 12 // len(cfg.data.datasets))])
    return {"source": "local", "datasets": entries, "bad": bad, "problems": problems[:20]}, shown[:12]
