"""Loaders for multiple-choice and hallucination benchmarks in their official local layouts (registry
``DATA_FORMATS``), producing ``MultipleChoiceSample`` / ``YesNoSample``:

==========  =====================================================================================================
format      files
==========  =====================================================================================================
scienceqa   ``problems.json`` (``{pid: {question, choices, answer, hint, image, split}}``) with ``pid_splits.json``
            beside it and images at ``images/<split>/<pid>/image.png`` (``images:`` is the ``images`` folder);
            only questions with an image (ScienceQA-IMG). ``split:`` train / val / test / minival ...
mmbench     the TSV (``index, question, hint, A, B, C, D, answer, category, ..., image``) with base64 images (an
            image field that is another row's index refers to that row's image, as the official files do);
            options are the non-empty A-D; rows without an answer (the test split) are skipped
seed-bench  ``SEED-Bench.json`` (``questions: [{question_id, question, choice_a..choice_d, answer, data_id,
            data_type}]``) with ``images:`` the image folder (``data_id`` is the file name); image questions only
mmmu        a Hugging Face ``datasets`` directory (``save_to_disk``) or parquet file(s) (a folder of them): rows
            ``{id, question, options ("['..', ..]"), answer (letter), image_1..image_7, question_type}``;
            multiple-choice rows only, ``<image N>`` slots put where the question and options place them
pope        POPE's question files (one JSON object per line: ``{question_id, image, text, label}``), the negatives
            (``random`` / ``popular`` / ``adversarial``) read from the file name, with ``images:`` COCO val2014
==========  =====================================================================================================
"""

from __future__ import annotations

import ast
import base64
import csv
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from mmbench_cli.data.formats import (
    LoadContext,
    _images_dir,
    _open_hf,
    _require,
    decode_image_cell,
    read_json,
    read_jsonl,
)
from mmbench_cli.data.templates import IMAGE_TOKEN
from mmbench_cli.data.types import IMAGE_ERRORS, ImageRef, MultipleChoiceSample, Sample, YesNoSample, as_rgb, open_image
from mmbench_cli.errors import MMError
from mmbench_cli.registry import DATA_FORMATS

if TYPE_CHECKING:  # pragma: no cover
    from mmbench_cli.config import DatasetSpec

LETTERS = "ABCDEFGHIJ"
POPE_SPLITS = ("random", "popular", "adversarial")
MMMU_SLOT = re.compile(r"<image (\d+)>")


@dataclass(frozen=True)
class BytesImage:
    """An image held as encoded bytes (a base64 TSV cell, a parquet row), decoded only when loaded."""

    data: bytes
    key: str

    def load(self) -> Image.Image:
        """Decode as RGB (MMError naming the image's key if the bytes are not an image)."""
        try:
            with open_image(io.BytesIO(self.data)) as image:
                return as_rgb(image)
        except IMAGE_ERRORS as error:
            raise MMError(f"{self.key}: cannot decode the image ({error.__class__.__name__})") from None


# ---------------------------------------------------------------------------------------------- ScienceQA
@DATA_FORMATS.register("scienceqa")
def load_scienceqa(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """ScienceQA-IMG: the image questions of ``split`` (``pid_splits.json`` beside ``problems.json``)."""
    path = Path(spec.path).expanduser()
    problems = read_json(path)
    if not isinstance(problems, dict):
        raise MMError(f"{path}: expected ScienceQA's {{pid: problem}} mapping")
    splits = read_json(path.with_name("pid_splits.json"))
    pids = _require(splits, spec.split, path.with_name("pid_splits.json"), "ScienceQA pid_splits")
    root = _images_dir(spec, path) if spec.images else path.parent / "images"
    samples: list[Sample] = []
    for pid in pids:
        problem = problems.get(str(pid))
        if not isinstance(problem, dict):
            ctx.bad(f"{path}: pid {pid} of split {spec.split} is not in problems.json")
            continue
        if not problem.get("image"):
            continue  # ScienceQA-IMG: image questions only
        try:
            choices, answer = [str(c) for c in problem["choices"]], int(problem["answer"])
            question = str(problem["question"])
        except (KeyError, TypeError, ValueError) as error:
            ctx.bad(f"{path}: problem {pid} lacks question/choices/answer ({error})")
            continue
        image = ctx.image(root / str(problem.get("split", spec.split)) / str(pid) / str(problem["image"]))
        if image is None:
            continue
        samples.append(MultipleChoiceSample(str(pid), [image], question, choices, answer,
                                            hint=str(problem.get("hint") or ""),
                                            meta={"source": str(path), "subject": problem.get("subject")}))
    return samples


# ----------------------------------------------------------------------------------------------- MMBench
@DATA_FORMATS.register("mmbench")
def load_mmbench(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """MMBench's TSV: options A-D (the non-empty ones), the answer letter, base64 images."""
    path = Path(spec.path).expanduser()
    csv.field_size_limit(sys.maxsize)
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except UnicodeDecodeError:
        raise MMError(f"{path}: not a UTF-8 TSV file") from None
    if not rows or not {"index", "question", "A", "B", "image"} <= set(rows[0]):
        raise MMError(f"{path}: not an MMBench TSV (needs columns index, question, A, B, ..., answer, image)")
    images = {row["index"]: row["image"] for row in rows}
    samples: list[Sample] = []
    for row in rows:
        answer = (row.get("answer") or "").strip()
        options = [row[letter].strip() for letter in LETTERS[:4] if _present(row.get(letter))]
        if not answer:
            continue  # the test split has no answers
        if answer not in LETTERS[:len(options)]:
            ctx.bad(f"{path}: row {row['index']}: answer {answer!r} is not one of its {len(options)} options")
            continue
        encoded = row["image"]
        if len(encoded) <= 64 and encoded in images:  # as the official files: a short field names another row
            encoded = images[encoded]
        try:
            data = base64.b64decode(encoded, validate=False)
        except ValueError:
            ctx.bad(f"{path}: row {row['index']}: the image is not base64")
            continue
        hint = row.get("hint") or ""
        samples.append(MultipleChoiceSample(
            str(row["index"]), [BytesImage(data, f"{path}#{row['index']}")], row["question"].strip(), options,
            LETTERS.index(answer), hint="" if not _present(hint) else hint,
            meta={"source": str(path), "category": row.get("category")}))
    return samples


def _present(value: str | None) -> bool:
    """A TSV cell that holds something (pandas writes a missing option as "nan" or leaves it empty)."""
    return value is not None and value.strip() not in ("", "nan", "NaN", "None")


# -------------------------------------------------------------------------------------------- SEED-Bench
@DATA_FORMATS.register("seed-bench")
def load_seed_bench(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """SEED-Bench's JSON: the image questions, four choices, the answer letter; images by ``data_id``."""
    path = Path(spec.path).expanduser()
    questions = _require(read_json(path), "questions", path, "SEED-Bench")
    root = _images_dir(spec, path)
    samples: list[Sample] = []
    for item in questions:
        if not isinstance(item, dict) or item.get("data_type", "image") != "image":
            continue  # video questions need frames, not an image
        try:
            options = [str(item[f"choice_{letter}"]) for letter in "abcd"]
            answer = "ABCD".index(str(item["answer"]).strip())
            question, data_id = str(item["question"]), str(item["data_id"])
        except (KeyError, ValueError) as error:
            ctx.bad(f"{path}: question {item.get('question_id')} lacks choices/answer/data_id ({error})")
            continue
        image = ctx.image(root / data_id)
        if image is None:
            continue
        samples.append(MultipleChoiceSample(str(item.get("question_id", data_id)), [image], question, options, answer,
                                            meta={"source": str(path),
                                                  "question_type_id": item.get("question_type_id")}))
    return samples


# ------------------------------------------------------------------------------------------------- MMMU
_TABLES: dict[tuple[str, str], Any] = {}


def _open_table(path: Path, split: str) -> Any:
    """A ``datasets`` table of MMMU rows: a ``save_to_disk`` directory (its ``split``), or parquet file(s)."""
    key = (str(path), split)
    if key not in _TABLES:
        from datasets import Dataset

        if path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json")):
            table = _open_hf(str(path), split)  # the `hf` format's reader of save_to_disk directories
        else:
            files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
            chosen = [f for f in files if split in f.name] or files
            if not chosen:
                raise MMError(f"{path}: no parquet files and not a datasets directory")
            try:
                table = Dataset.from_parquet([str(f) for f in chosen])
            except Exception as error:  # pyarrow raises many kinds for a bad file
                raise MMError(f"{path}: cannot read parquet ({error.__class__.__name__}: {str(error)[:100]})") from None
        from datasets import Image as ImageFeature

        for column, feature in table.features.items():
            if isinstance(feature, ImageFeature):  # rows read undecoded: an image is decoded when a prompt needs it
                table = table.cast_column(column, ImageFeature(decode=False))
        _TABLES[key] = table
    return _TABLES[key]


@dataclass(frozen=True)
class TableImage:
    """An image cell of an MMMU row, decoded only when loaded."""

    path: str
    split: str
    row: int
    column: str
    key: str = ""

    def load(self) -> Image.Image:
        """Decode the cell as RGB (MMError naming the row if it cannot be read)."""
        return decode_image_cell(_open_table(Path(self.path), self.split)[self.row][self.column],
                                 f"{self.path}: row {self.row} ({self.column})")


def _slots(text: str, images: dict[int, ImageRef], order: list[ImageRef], where: str) -> str:
    """``text`` with each ``<image N>`` replaced by the image token, its image appended to ``order``."""
    def put(match: re.Match[str]) -> str:
        number = int(match.group(1))
        if number not in images:
            raise KeyError(f"{where} names <image {number}>, which the row does not have")
        order.append(images[number])
        return IMAGE_TOKEN

    return MMMU_SLOT.sub(put, text)


def load_mmmu(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """MMMU's multiple-choice rows, images interleaved where the question and its options place them."""
    path = Path(spec.path).expanduser()
    table = _open_table(path, spec.split)
    columns = [c for c in table.column_names if re.fullmatch(r"image_\d+", c)]
    samples: list[Sample] = []
    for row_number, row in enumerate(table):
        if str(row.get("question_type", "multiple-choice")) != "multiple-choice":
            continue  # open questions are scored by generation, not by choosing
        ident = str(row.get("id", row_number))
        images = {int(c.split("_")[1]): TableImage(str(path), spec.split, row_number, c, key=f"{path}#{ident}/{c}")
                  for c in columns if row[c] is not None}
        try:
            options = ast.literal_eval(str(row["options"]))
            if not isinstance(options, list) or not options:
                raise ValueError("options is not a non-empty list")
            order: list[ImageRef] = []
            question = _slots(str(row["question"]), images, order, f"question {ident}")
            options = [_slots(str(option), images, order, f"question {ident}'s options") for option in options]
            answer = LETTERS.index(str(row["answer"]).strip())
            if answer >= len(options):
                raise ValueError(f"answer {row['answer']!r} beyond its {len(options)} options")
        except (KeyError, ValueError, SyntaxError) as error:
            ctx.bad(f"{path}: row {row_number} ({ident}): {error}")
            continue
        if not order:
            order = [images[n] for n in sorted(images)]
            question = IMAGE_TOKEN * len(order) + question
        samples.append(MultipleChoiceSample(ident, order, question, options, answer,
                                            meta={"source": str(path), "subfield": row.get("subfield")}))
    return samples


DATA_FORMATS.add("mmmu", load_mmmu)
load_mmmu.reads_directories = True  # type: ignore[attr-defined]  # a datasets directory is its own layout


# ------------------------------------------------------------------------------------------------- POPE
@DATA_FORMATS.register("pope")
def load_pope(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """POPE's question file over COCO images; the negatives' kind from the file name (``coco_pope_popular``)."""
    path = Path(spec.path).expanduser()
    negatives = next((kind for kind in POPE_SPLITS if kind in path.name), "")
    root = _images_dir(spec, path)
    samples: list[Sample] = []
    for number, record in read_jsonl(path, ctx):
        try:
            label = str(record["label"]).strip().lower()
            question, image_name = str(record["text"]), str(record["image"])
        except KeyError as error:
            ctx.bad(f"{path}: line {number} lacks {error} (POPE lines: question_id, image, text, label)")
            continue
        if label not in ("yes", "no"):
            ctx.bad(f"{path}: line {number}: label {label!r} is not yes or no")
            continue
        image = ctx.image(root / image_name)
        if image is None:
            continue
        samples.append(YesNoSample(str(record.get("question_id", number)), Path(image_name).stem, image, question,
                                   label, meta={"source": str(path), "split": negatives}))
    return samples
