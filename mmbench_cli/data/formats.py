"""Loaders for the datasets researchers have on disk, producing the same sample types as the synthetic world.

Each loader is registered in ``DATA_FORMATS`` under a format name and turns one ``DatasetSpec``
(``format``, ``path``, ``images``, ``questions``, ``kind``, ``split``) into a list of samples:

=================  ==============================================================================
format             files
=================  ==============================================================================
coco-karpathy      ``dataset_coco.json``: ``images: [{filepath, filename, split, sentences: [{raw}], cocoid}]``
coco-captions      official ``captions_*.json``: ``images: [{id, file_name}]``, ``annotations: [{image_id, caption}]``
nocaps             NoCaps JSON (COCO caption format)
textcaps           COCO format, or TextCaps's own ``data: [{image_id, image_path, caption_str, reference_strs}]``
vqav2, okvqa       ``questions`` file (``questions: [{image_id, question, question_id}]``) + ``path``
                   annotations (``annotations: [{question_id, image_id, answers: [{answer}], answer_type}]``)
textvqa            ``data: [{question, question_id, image_id, answers: [10 strings]}]``
vizwiz             ``[{image, question, answers: [{answer, answer_confidence}], answerable}]``
llava              ``[{id, image, conversations: [{from: human|gpt, value}]}]``
interleaved-jsonl  one document per line: ``{"text": "... <image> ...", "images": [paths]}``; MMC4
                   (``text_list`` + ``image_info``) and OBELICS (``texts`` + ``images`` lists) also work;
                   image URLs (OBELICS, MMC4's ``raw_url``) map to local files through ``url_map`` or
                   img2dataset's ``<key>.json`` sidecars under ``images`` (``UrlResolver``)
text               ``.txt`` (documents separated by blank lines) or ``.jsonl`` with ``{"text": ...}``
=================  ==============================================================================

Any of them may instead be a local Hugging Face ``datasets`` directory (``save_to_disk``): rows are read
with the same field names (``image`` column decoded lazily).

Bad input is reported as ``MMError("<file>: <problem>; <fix>")``. A whole-file problem (not JSON, wrong
top-level key) always fails; a bad *sample* (a record missing a key, a missing or corrupt image) fails
unless ``skip_bad`` is set, in which case it is skipped and counted (``SampleList.num_bad``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from mmbench_cli.data.types import (
    IMAGE_ERRORS,
    CaptionSample,
    Conversation,
    FileImage,
    ImageRef,
    InterleavedDoc,
    Sample,
    TextDoc,
    VQASample,
    as_rgb,
    open_image,
)
from mmbench_cli.errors import MMError
from mmbench_cli.registry import DATA_FORMATS

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset

    from mmbench_cli.config import DatasetSpec

VERIFY_LEVELS = ("none", "exists", "header", "decode")
# The image marker of LLaVA and interleaved-jsonl files: part of those file formats, so it stays "<image>" even
# if our own image token (templates.IMAGE_TOKEN) changes.
FILE_IMAGE_MARKER = "<image>"


class SampleList(list):
    """A list of samples that also says how many bad samples were skipped (and why, for the first few)."""

    def __init__(self, samples: list[Sample] = (), num_bad: int = 0, problems: list[str] | None = None) -> None:
        super().__init__(samples)
        self.num_bad = num_bad
        self.problems = problems or []


@dataclass
class LoadContext:
    """What a loader needs besides the spec: how to treat bad samples and how hard to check images."""

    spec: DatasetSpec
    skip_bad: bool = False
    verify: str = "header"
    num_bad: int = 0
    problems: list[str] = field(default_factory=list)
    _checked: dict[str, str | None] = field(default_factory=dict)
    _urls: UrlResolver | None = None
    images_root: Path | None = None  # annotation-relative image paths must stay under it
    mapped: set[Path] = field(default_factory=set)  # files the url_map names: wherever the user put them

    def urls(self, root: Path) -> UrlResolver:
        """The dataset's URL → local file mapping (built once, on the first URL met)."""
        if self._urls is None:
            self._urls = UrlResolver(Path(self.spec.url_map).expanduser() if self.spec.url_map else None, root)
        return self._urls

    def _outside_root(self, path: Path) -> str | None:
        if self.images_root is None or path in self.mapped:
            return None
        root = os.path.normpath(os.path.abspath(self.images_root))
        if os.path.commonpath([root, os.path.normpath(os.path.abspath(path))]) == root:
            return None
        return f"{path}: image path leaves the images dir {self.images_root}; annotations name images inside it"

    def bad(self, message: str) -> None:
        """A bad sample: raise, or (with skip_bad) count it and keep the first messages."""
        if not self.skip_bad:
            raise MMError(f"{message}; fix it or set data.skip_bad=true to skip bad samples")
        self.num_bad += 1
        if len(self.problems) < 20:
            self.problems.append(message)

    def image(self, path: Path) -> FileImage | None:
        """A checked ``FileImage`` for ``path``, or None (after ``bad``) if it is missing, unreadable or outside the
        images root (``../`` or an absolute path in an annotation: never read)."""
        key = str(path)
        if key not in self._checked:
            self._checked[key] = self._outside_root(path) or check_image(path, self.verify)
        problem = self._checked[key]
        if problem:
            self.bad(problem)
            return None
        return FileImage(path)


def check_image(path: Path, verify: str = "header") -> str | None:
    """None if the image file is usable, else a one-line problem naming it.

    ``none``: nothing is checked (scoring needs no images); ``exists``: the file exists; ``header``: PIL
    recognises it (a non-image or empty file fails); ``decode``: it decodes completely (a truncated file fails).
    """
    if verify == "none":
        return None
    if not path.is_file():
        return f"{path}: image file not found"
    if verify == "exists":
        return None
    try:
        with open_image(path) as image:
            if verify == "decode":
                image.load()
            else:
                image.verify()
    except IMAGE_ERRORS as error:
        return f"{path}: corrupt or truncated image ({error.__class__.__name__}: {str(error)[:120]})"
    return None


def is_url(value: str) -> bool:
    """Whether an image reference is a web URL (OBELICS and MMC4 releases give those, not files)."""
    return value.startswith(("http://", "https://"))


class UrlResolver:
    """Local files of image URLs: a ``url_map`` file, or img2dataset's layout under ``images``.

    ``url_map`` is a JSON object ``{url: path}``, a JSON list or JSONL of ``{"url": ..., "path": ...}`` records,
    or text lines ``url<TAB>path``; relative paths are under ``images``. Without it, the ``images`` dir is read as
    img2dataset output: every ``<key>.json`` sidecar with a ``url`` names the image ``<key>.<jpg|png|webp>``
    beside it (img2dataset's default ``files`` layout: ``00000/000000012.jpg`` + ``00000/000000012.json``).
    """

    IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

    def __init__(self, url_map: Path | None, root: Path) -> None:
        self.url_map = url_map
        self.root = root
        self.paths = self._read_map(url_map) if url_map is not None else self._scan_img2dataset(root)

    def where(self) -> str:
        """Where the mapping came from, for error messages."""
        return f"url_map {self.url_map}" if self.url_map else f"img2dataset .json sidecars under {self.root}"

    def __call__(self, url: str) -> Path | None:
        """The local file of ``url``, or None if the mapping does not list it."""
        return self.paths.get(url)

    def _read_map(self, path: Path) -> dict[str, Path]:
        if not path.is_file():
            raise MMError(f"{path}: url_map file not found; check data.datasets[].url_map")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise MMError(f"{path}: url_map is not UTF-8 text") from None
        pairs: list[tuple[Any, Any]] = []
        stripped = text.lstrip()
        try:
            if stripped.startswith("{") and path.suffix != ".jsonl":
                pairs = list(json.loads(text).items())
            elif stripped.startswith(("{", "[")):
                records = json.loads(text) if stripped.startswith("[") else [
                    json.loads(line) for line in text.splitlines() if line.strip()]
                pairs = [(r.get("url"), r.get("path", r.get("file"))) for r in records if isinstance(r, dict)]
            else:
                pairs = [tuple(line.split("\t", 1)) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise MMError(f"{path}: url_map is not valid JSON/JSONL (line {error.lineno}: {error.msg})") from None
        bad = next((i for i, pair in enumerate(pairs, 1) if len(pair) != 2 or not all(isinstance(v, str) and v
                                                                                     for v in pair)), None)
        if bad is not None:
            raise MMError(f"{path}: url_map entry {bad} is not a (url, path) pair; write {{url: path}} JSON, "
                          "{\"url\": ..., \"path\": ...} lines, or url<TAB>path lines")
        return {url.strip(): self.root / file.strip() for url, file in pairs}

    def _scan_img2dataset(self, root: Path) -> dict[str, Path]:
        paths: dict[str, Path] = {}
        for sidecar in sorted(root.rglob("*.json")) if root.is_dir() else []:
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if not isinstance(meta, dict) or not isinstance(meta.get("url"), str):
                continue
            image = next((sidecar.with_suffix(s) for s in self.IMAGE_SUFFIXES if sidecar.with_suffix(s).is_file()), None)
            if image is not None:
                paths[meta["url"]] = image
        return paths


def read_json(path: Path) -> Any:
    """Parse a JSON file or raise MMError naming it (missing, unreadable, not JSON)."""
    if not path.is_file():
        raise MMError(f"{path}: file not found; check the dataset's path in data.datasets")
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MMError(f"{path}: not a JSON file ({error.__class__.__name__}: {str(error)[:120]})") from None
    except OSError as error:
        raise MMError(f"{path}: cannot read ({error.strerror or error})") from None


def read_jsonl(path: Path, ctx: LoadContext) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each line of a JSONL file; a bad line is a bad sample."""
    if not path.is_file():
        raise MMError(f"{path}: file not found; check the dataset's path in data.datasets")
    with path.open("r", encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    ctx.bad(f"{path}: line {number} is not JSON ({error.msg})")
                    continue
                if not isinstance(record, dict):
                    ctx.bad(f"{path}: line {number} is not a JSON object")
                    continue
                yield number, record
        except UnicodeDecodeError:
            raise MMError(f"{path}: not a UTF-8 text/JSONL file") from None


def _require(data: Any, key: str, path: Path, what: str) -> Any:
    """``data[key]`` or an MMError naming the file and the missing top-level key."""
    if not isinstance(data, dict) or key not in data:
        found = ", ".join(sorted(data)[:8]) if isinstance(data, dict) else type(data).__name__
        raise MMError(f"{path}: no {key!r} key (found: {found}); is this a {what} file?")
    return data[key]


def _list_of_dicts(value: Any, path: Path, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise MMError(f"{path}: {key!r} should be a list, got {type(value).__name__}")
    return value


def _images_dir(spec: DatasetSpec, annotation: Path) -> Path:
    return Path(spec.images).expanduser() if spec.images else annotation.parent


def _first_existing(candidates: list[Path]) -> Path:
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0]


# --------------------------------------------------------------------------------------- captions
@DATA_FORMATS.register("coco-karpathy")
def load_coco_karpathy(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """Karpathy-split ``dataset_coco.json`` (also Flickr ``dataset_flickr30k.json``); split train = train+restval."""
    path = Path(spec.path)
    images = _list_of_dicts(_require(read_json(path), "images", path, "Karpathy dataset_coco.json"), path, "images")
    wanted = {"train": {"train", "restval"}}.get(spec.split, {spec.split})
    root = _images_dir(spec, path)
    samples: list[Sample] = []
    for number, record in enumerate(images):
        try:
            split = record["split"]
            if split not in wanted:
                continue
            filename = record["filename"]
            captions = [sentence["raw"].strip() for sentence in record["sentences"]]
            image_id = str(record.get("cocoid", record.get("imgid", number)))
        except (KeyError, TypeError) as error:
            ctx.bad(f"{path}: images[{number}] lacks key {error}")
            continue
        filepath = record.get("filepath", "")
        image = ctx.image(_first_existing([root / filepath / filename, root / filename]))
        if image is not None:
            samples.append(CaptionSample(image_id, image, captions, {"source": path.name, "split": split}))
    return samples


@DATA_FORMATS.register("coco-captions")
@DATA_FORMATS.register("nocaps")
@DATA_FORMATS.register("textcaps")
def load_coco_captions(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """Official COCO ``captions_*.json`` (and NoCaps / TextCaps in COCO format); TextCaps's own JSON too."""
    path = Path(spec.path)
    data = read_json(path)
    if isinstance(data, dict) and "data" in data and "annotations" not in data:
        return _load_textcaps_native(spec, ctx, path, data)
    images = _list_of_dicts(_require(data, "images", path, "COCO captions"), path, "images")
    annotations = _list_of_dicts(_require(data, "annotations", path, "COCO captions"), path, "annotations")
    captions: dict[Any, list[str]] = {}
    for number, annotation in enumerate(annotations):
        try:
            captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
        except (KeyError, TypeError, AttributeError) as error:
            ctx.bad(f"{path}: annotations[{number}] lacks key {error}")
    root = _images_dir(spec, path)
    samples: list[Sample] = []
    for number, record in enumerate(images):
        try:
            image_id, filename = record["id"], record["file_name"]
        except (KeyError, TypeError) as error:
            ctx.bad(f"{path}: images[{number}] lacks key {error}")
            continue
        if image_id not in captions:
            continue  # e.g. NoCaps test images without public captions
        image = ctx.image(root / filename)
        if image is not None:
            meta = {"source": path.name}
            if isinstance(record.get("domain"), str):
                meta["domain"] = record["domain"]  # NoCaps: in-domain / near-domain / out-domain
            samples.append(CaptionSample(str(image_id), image, captions[image_id], meta))
    return samples


def _load_textcaps_native(spec: DatasetSpec, ctx: LoadContext, path: Path, data: dict[str, Any]) -> list[Sample]:
    records = _list_of_dicts(data["data"], path, "data")
    root = _images_dir(spec, path)
    by_image: dict[str, tuple[Path, list[str]]] = {}
    for number, record in enumerate(records):
        try:
            image_id = str(record["image_id"])
            refs = record.get("reference_strs") or [record["caption_str"]]
        except (KeyError, TypeError) as error:
            ctx.bad(f"{path}: data[{number}] lacks key {error}")
            continue
        if image_id in by_image:
            continue  # every row of an image repeats the same reference_strs
        image_path = record.get("image_path")
        candidates = ([root / image_path] if image_path else []) + [root / f"{image_id}.jpg"]
        by_image[image_id] = (_first_existing(candidates), [ref.strip() for ref in refs])
    samples: list[Sample] = []
    for image_id, (image_path, refs) in by_image.items():
        image = ctx.image(image_path)
        if image is not None:
            samples.append(CaptionSample(image_id, image, refs, {"source": path.name}))
    return samples


# -------------------------------------------------------------------------------------------- VQA
def _answer_strings(answers: Any) -> list[str]:
    if not isinstance(answers, list) or not answers:
        raise KeyError("'answers'")
    return [str(a["answer"] if isinstance(a, dict) else a).strip() for a in answers]


@DATA_FORMATS.register("vqav2")
@DATA_FORMATS.register("okvqa")
def load_vqav2(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """VQAv2 / OK-VQA: ``questions`` JSON + ``path`` annotations JSON; COCO images by id."""
    path = Path(spec.path)
    if not spec.questions:
        raise MMError(f"{path}: vqav2/okvqa needs the questions file too; set `questions:` in the dataset spec")
    questions_path = Path(spec.questions)
    questions = _list_of_dicts(
        _require(read_json(questions_path), "questions", questions_path, "VQAv2 questions"), questions_path, "questions"
    )
    annotation_data = read_json(path)
    annotations = _list_of_dicts(_require(annotation_data, "annotations", path, "VQAv2 annotations"), path, "annotations")
    subtype = annotation_data.get("data_subtype") or ""
    by_id: dict[Any, dict[str, Any]] = {}
    for number, annotation in enumerate(annotations):
        if not isinstance(annotation, dict) or "question_id" not in annotation:
            ctx.bad(f"{path}: annotations[{number}] lacks key 'question_id'")
            continue
        by_id[annotation["question_id"]] = annotation
    root = _images_dir(spec, path)
    samples: list[Sample] = []
    for number, record in enumerate(questions):
        try:
            question_id, image_id, question = record["question_id"], record["image_id"], record["question"]
        except (KeyError, TypeError) as error:
            ctx.bad(f"{questions_path}: questions[{number}] lacks key {error}")
            continue
        annotation = by_id.get(question_id)
        if annotation is None:
            ctx.bad(f"{path}: no annotation for question_id {question_id}")
            continue
        try:
            answers = _answer_strings(annotation["answers"])
        except (KeyError, TypeError) as error:
            ctx.bad(f"{path}: annotation of question_id {question_id} lacks key {error}")
            continue
        candidates = [root / f"COCO_{subtype}_{int(image_id):012d}.jpg", root / f"{int(image_id):012d}.jpg"]
        image = ctx.image(_first_existing(candidates))
        if image is not None:
            samples.append(VQASample(
                str(question_id), str(image_id), image, question.strip(), answers,
                annotation.get("answer_type", "other"), {"source": path.name},
            ))
    return samples


@DATA_FORMATS.register("textvqa")
def load_textvqa(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """TextVQA JSON: ``data: [{question, question_id, image_id, answers}]``; images ``<image_id>.jpg``."""
    path = Path(spec.path)
    records = _list_of_dicts(_require(read_json(path), "data", path, "TextVQA"), path, "data")
    root = _images_dir(spec, path)
    samples: list[Sample] = []
    for number, record in enumerate(records):
        try:
            image_id = str(record["image_id"])
            question = record["question"].strip()
            question_id = str(record.get("question_id", number))
            answers = _answer_strings(record["answers"])
        except (KeyError, TypeError, AttributeError) as error:
            ctx.bad(f"{path}: data[{number}] lacks key {error}")
            continue
        image_path = record.get("image_path")
        candidates = ([root / image_path] if image_path else []) + [root / f"{image_id}.jpg"]
        image = ctx.image(_first_existing(candidates))
        if image is not None:
            samples.append(VQASample(question_id, image_id, image, question, answers, "other",
                                     {"source": path.name, "kind": "ocr"}))
    return samples


def _read_json_list(path: Path, expected: str) -> list[Any]:
    """Read a JSON file whose top level must be a list; otherwise MMError saying what was found."""
    records = read_json(path)
    if not isinstance(records, list):
        found = ", ".join(sorted(records)[:8]) if isinstance(records, dict) else type(records).__name__
        raise MMError(f"{path}: {expected} (found: {found})")
    return records


@DATA_FORMATS.register("vizwiz")
def load_vizwiz(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """VizWiz JSON: a list of ``{image, question, answers: [{answer, answer_confidence}], answerable}``."""
    path = Path(spec.path)
    records = _read_json_list(path, "a VizWiz file is a JSON list of questions")
    root = _images_dir(spec, path)
    samples: list[Sample] = []
    for number, record in enumerate(records):
        try:
            filename = record["image"]
            question = record["question"].strip()
            answers = _answer_strings(record["answers"])
        except (KeyError, TypeError, AttributeError) as error:
            ctx.bad(f"{path}: [{number}] lacks key {error}")
            continue
        image = ctx.image(root / filename)
        if image is not None:
            samples.append(VQASample(
                Path(filename).stem, Path(filename).stem, image, question, answers,
                record.get("answer_type", "other"), {"source": path.name, "answerable": record.get("answerable")},
            ))
    return samples


# -------------------------------------------------------------------------------- LLaVA, documents
def _llava_text(conversations: list[dict[str, Any]]) -> tuple[str, list[tuple[str, str]]]:
    """(whole dialogue as text, [(human, gpt) turns]) with the ``<image>`` marker removed from the text."""
    turns: list[tuple[str, str]] = []
    pending = ""
    for turn in conversations:
        speaker, value = turn["from"], str(turn["value"]).replace(FILE_IMAGE_MARKER, "").strip()
        if speaker in ("human", "user"):
            pending = value
        else:
            turns.append((pending, value))
            pending = ""
    text = " ".join(f"Question: {human} Answer: {gpt}" if human else gpt for human, gpt in turns)
    return text, turns


@DATA_FORMATS.register("llava")
def load_llava(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """LLaVA conversation JSON; a document (image + dialogue) by default, ``kind: caption`` for caption data,
    ``kind: instruction`` for dialogues trained on their answers (``train.stage: sft``)."""
    path = Path(spec.path)
    records = _read_json_list(path, "a LLaVA file is a JSON list of conversations")
    root = _images_dir(spec, path)
    samples: list[Sample] = []
    for number, record in enumerate(records):
        try:
            conversations = record["conversations"]
            text, turns = _llava_text(conversations)
            record_id = str(record.get("id", number))
        except (KeyError, TypeError) as error:
            ctx.bad(f"{path}: [{number}] lacks key {error}")
            continue
        if not turns:
            ctx.bad(f"{path}: [{number}] has no answer turn")
            continue
        image = None
        if record.get("image"):
            image = ctx.image(root / record["image"])
            if image is None:
                continue
        if spec.kind == "instruction":  # a dialogue for train.stage sft: the loss on the answers only
            samples.append(Conversation(record_id, image, turns, {"source": path.name}))
        elif spec.kind == "caption" and image is not None:
            samples.append(CaptionSample(record_id, image, [turns[0][1]], {"source": path.name}))
        elif image is None:
            samples.append(TextDoc(record_id, text, {"source": path.name}))
        else:
            samples.append(InterleavedDoc(record_id, [image, text], {"source": path.name}))
    return samples


class _MissingImage(Exception):
    """An image reference with no local file (its message names it)."""


def _image_file(value: Any, root: Path, ctx: LoadContext, where: str, url: str | None = None) -> Path:
    """The local file of one image reference: a path under ``root``, or a URL through ``ctx.urls``.

    MMC4 gives both a file name and the ``raw_url``: the file when it exists, else the URL's mapping.
    """
    if isinstance(value, str) and value and not is_url(value):
        path = root / value
        if url is None or path.is_file():
            return path
    url = value if isinstance(value, str) and is_url(value) else url
    if not url:
        raise KeyError("'image'")
    resolver = ctx.urls(root)
    found = resolver(url)
    if found is not None:
        ctx.mapped.add(found)
    if found is None:
        raise _MissingImage(f"{where}: image URL {url} has no local file (not in {resolver.where()}); download it "
                            "(e.g. with img2dataset) and list it in the dataset's url_map (docs/data.md)")
    return found


def _interleaved_record(record: dict[str, Any], root: Path, ctx: LoadContext, where: str) -> list[str | ImageRef] | None:
    """Chunks of one interleaved record (our format, MMC4 or OBELICS); None if an image is bad."""
    chunks: list[str | Path] = []
    try:
        if "text" in record and "images" in record:
            pieces = str(record["text"]).split(FILE_IMAGE_MARKER)
            images = record["images"]
            if len(pieces) - 1 != len(images):
                ctx.bad(f"{where}: {len(pieces) - 1} {FILE_IMAGE_MARKER} markers but {len(images)} images")
                return None
            for index, piece in enumerate(pieces):
                chunks.append(piece)
                if index < len(images):
                    chunks.append(_image_file(images[index], root, ctx, where))
        elif "text_list" in record and "image_info" in record:  # MMC4
            before: dict[int, list[Path]] = {}
            for info in record["image_info"]:
                path = _image_file(info.get("image_name"), root, ctx, where, info.get("raw_url"))
                before.setdefault(int(info["matched_text_index"]), []).append(path)
            for index, sentence in enumerate(record["text_list"]):
                chunks.extend(before.get(index, []))
                chunks.append(sentence)
        elif "texts" in record and "images" in record:  # OBELICS: aligned lists, an image URL or a text per slot
            for text, image in zip(record["texts"], record["images"], strict=False):
                chunks.append(_image_file(image, root, ctx, where) if image else text)
        else:
            raise KeyError("'text'/'images'")
    except _MissingImage as missing:
        ctx.bad(str(missing))
        return None
    resolved: list[str | ImageRef] = []
    for chunk in chunks:
        if isinstance(chunk, Path):
            image = ctx.image(chunk)
            if image is None:
                return None
            resolved.append(image)
        elif chunk and str(chunk).strip():
            resolved.append(str(chunk))
    return resolved


@DATA_FORMATS.register("interleaved-jsonl")
def load_interleaved_jsonl(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """Interleaved documents, one JSON object per line (``text`` with ``<image>`` markers + ``images``)."""
    path = Path(spec.path)
    root = _images_dir(spec, path)
    samples: list[Sample] = []
    for number, record in read_jsonl(path, ctx):
        try:
            chunks = _interleaved_record(record, root, ctx, f"{path}: line {number}")
        except (KeyError, TypeError, ValueError) as error:
            ctx.bad(f"{path}: line {number} lacks key {error}")
            continue
        if chunks is not None:
            samples.append(InterleavedDoc(str(record.get("id", f"{path.name}:{number}")), chunks, {"source": path.name}))
    return samples


@DATA_FORMATS.register("text")
def load_text(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """A text corpus: ``.jsonl`` with ``{"text": ...}`` per line, else plain text split at blank lines."""
    path = Path(spec.path)
    samples: list[Sample] = []
    if path.suffix in (".jsonl", ".json"):
        for number, record in read_jsonl(path, ctx):
            if not isinstance(record.get("text"), str):
                ctx.bad(f"{path}: line {number} lacks key 'text'")
                continue
            samples.append(TextDoc(f"{path.name}:{number}", record["text"], {"source": path.name}))
        return samples
    if not path.is_file():
        raise MMError(f"{path}: file not found; check the dataset's path in data.datasets")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MMError(f"{path}: not a UTF-8 text file") from None
    for number, block in enumerate(part.strip() for part in content.split("\n\n")):
        if block:
            samples.append(TextDoc(f"{path.name}:{number}", block, {"source": path.name}))
    return samples


# ------------------------------------------------------------------------- Hugging Face datasets dirs
_HF_CACHE: dict[tuple[str, str], Dataset] = {}


def _open_hf(directory: str, split: str) -> Dataset:
    """A (memory-mapped) split of a ``save_to_disk`` directory, opened once per process."""
    if (directory, split) not in _HF_CACHE:
        from datasets import DatasetDict, load_from_disk

        try:
            dataset = load_from_disk(directory)
        except (FileNotFoundError, ValueError, OSError) as error:
            raise MMError(f"{directory}: not a Hugging Face datasets directory ({str(error)[:120]})") from None
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise MMError(f"{directory}: no split {split!r} (has: {', '.join(dataset)}); set `split:` in the spec")
            dataset = dataset[split]
        _HF_CACHE[(directory, split)] = dataset
    return _HF_CACHE[(directory, split)]


@dataclass(frozen=True)
class HFImage:
    """An image in a row of a local ``datasets`` directory, decoded only when loaded."""

    directory: str
    split: str
    index: int
    column: str
    key: str = ""

    def load(self) -> Image.Image:
        """Decode the row's image as RGB (MMError naming the dataset and row if it cannot be read)."""
        return decode_image_cell(_open_hf(self.directory, self.split)[self.index][self.column],
                                 f"{self.directory}: row {self.index}")


def decode_image_cell(value: object, where: str) -> Image.Image:
    """An image cell of a ``datasets`` / parquet row as RGB, whichever way the table holds it: a decoded PIL image,
    ``{"bytes": ...}``, ``{"path": ...}`` or a path. MMError naming ``where`` (the table and row) if it cannot."""
    try:
        if isinstance(value, Image.Image):
            return as_rgb(value)
        if isinstance(value, dict) and value.get("bytes"):
            import io

            with open_image(io.BytesIO(value["bytes"])) as image:
                return as_rgb(image)
        path = value.get("path") if isinstance(value, dict) else value
        if not isinstance(path, (str, Path)) or not str(path):
            raise MMError(f"{where} has no readable image")
        return FileImage(Path(path)).load()
    except IMAGE_ERRORS as error:
        raise MMError(f"{where} has an unreadable image ({error})") from None


def _hf_captions(row: dict[str, Any]) -> list[str]:
    for key in ("captions", "reference_strs", "sentences", "caption", "caption_str", "text"):
        if key in row and row[key]:
            value = row[key]
            if isinstance(value, str):
                return [value]
            return [str(v["raw"] if isinstance(v, dict) else v) for v in value]
    raise KeyError("'caption'/'captions'")


def load_hf_directory(spec: DatasetSpec, ctx: LoadContext) -> list[Sample]:
    """Rows of a local ``datasets`` directory, read as the spec's format (same field names as its JSON)."""
    directory = str(Path(spec.path).expanduser())
    dataset = _open_hf(directory, spec.split)
    image_column = next((c for c in ("image", "images", "img") if c in dataset.column_names), None)
    readable = dataset.remove_columns([image_column]) if image_column else dataset
    family = FORMAT_FAMILY.get(spec.format, spec.kind or "text")
    samples: list[Sample] = []
    for index, row in enumerate(readable):
        image: ImageRef | None = None
        if image_column:
            image = HFImage(directory, spec.split, index, image_column, key=f"{directory}#{spec.split}/{index}")
        row_id = str(row.get("id", row.get("question_id", row.get("image_id", index))))
        try:
            if family == "caption" and image is not None:
                samples.append(CaptionSample(row_id, image, _hf_captions(row), {"source": directory}))
            elif family == "vqa" and image is not None:
                samples.append(VQASample(
                    str(row.get("question_id", index)), str(row.get("image_id", index)), image,
                    str(row["question"]).strip(), _answer_strings(row["answers"]),
                    str(row.get("answer_type", "other")), {"source": directory},
                ))
            elif family == "llava":
                text, _ = _llava_text(row["conversations"])
                chunks: list[str | ImageRef] = [image, text] if image is not None else [text]
                samples.append(InterleavedDoc(row_id, chunks, {"source": directory}))
            else:
                samples.append(TextDoc(row_id, str(row["text"]), {"source": directory}))
        except (KeyError, TypeError) as error:
            ctx.bad(f"{directory}: row {index} lacks key {error}")
    return samples


FORMAT_FAMILY = {
    "coco-karpathy": "caption", "coco-captions": "caption", "nocaps": "caption", "textcaps": "caption",
    "vqav2": "vqa", "okvqa": "vqa", "textvqa": "vqa", "vizwiz": "vqa",
    "llava": "llava", "interleaved-jsonl": "interleaved", "text": "text",
}

def load_dataset_spec(spec: DatasetSpec, skip_bad: bool = False, verify: str = "header") -> SampleList:
    """Load one ``DatasetSpec`` into samples (``SampleList.num_bad`` counts skipped bad samples).

    ``verify`` says how hard each image is checked: ``exists``, ``header`` (default: PIL recognises the
    file) or ``decode`` (full decode, catches truncated files; used by ``mm build --data``).
    """
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {VERIFY_LEVELS}")
    loader = DATA_FORMATS.get(spec.format)
    ctx = LoadContext(spec=spec, skip_bad=skip_bad, verify=verify, images_root=_images_dir(spec, Path(spec.path)))
    path = Path(spec.path).expanduser()
    if path.is_dir() and not getattr(loader, "reads_directories", False):
        samples = load_hf_directory(spec, ctx)
    elif not path.exists():
        raise MMError(f"{path}: file not found; check data.datasets[].path")
    else:
        samples = loader(spec, ctx)
    if spec.kind == "text":
        samples = [s for s in samples if isinstance(s, TextDoc)]
    return SampleList(samples, ctx.num_bad, ctx.problems)
