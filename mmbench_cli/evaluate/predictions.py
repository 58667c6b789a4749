"""``mm eval --predictions``: score another system's outputs with the same metric and references as a task.

Accepted: the official result formats (a JSON list), or the same records as JSONL:

- VQAv2 / OK-VQA / TextVQA: ``[{"question_id": 1, "answer": "2"}]``;
- VizWiz: ``[{"image": "VizWiz_val_00000000.jpg", "answer": "soup"}]`` (an optional ``answerable`` score in
  [0, 1] feeds the answerability metrics; without it, answering "unanswerable" means 0);
- COCO / NoCaps / TextCaps: ``[{"image_id": 9, "caption": "a plate of food"}]``;

and, for any task, ``id`` / ``prediction`` keys. Scoring reads only the annotations (and questions): images
are never opened, so ``--images`` is not needed. As the official ``VQA.loadRes``, the results must answer
every question of the annotations exactly once: a file that misses questions, repeats one or answers one
that is not there is refused with one line naming the count, unless ``allow_subset`` (``--allow-subset``)
lets a subset be scored; the subset's size is then printed and recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError
from mmbench_cli.evaluate.scoring import score_predictions
from mmbench_cli.evaluate.tasks import TaskSpec, load_samples, resolve_task
from mmbench_cli.rundir import atomic_write_json, atomic_write_text, json_object_at, refuse_overwrite

if TYPE_CHECKING:
    from mmbench_cli.config import DataConfig

ID_KEYS = ("question_id", "image_id", "image", "id")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")
TEXT_KEYS = ("answer", "caption", "prediction")


def score_file(predictions_path: str | Path, task: str, task_data: dict[str, dict[str, Any]] | None = None,
               annotations: dict[str, Any] | None = None, data_cfg: DataConfig | None = None,
               out: str | Path | None = None, allow_subset: bool = False,
               vqa_normalize: str = "official") -> dict[str, Any]:
    """Score another system's predictions with the same metric as ``task``; references come from its query data.

    Returns ``{task, metric, value, n, total, subset, vqa_normalize?, <extra metrics>}``; with ``out``, writes
    the per-sample scores there (JSONL) and this summary beside it (``<out>.summary.json``).
    """
    from mmbench_cli.config import DataConfig

    path = Path(predictions_path)
    if out:
        refuse_foreign_out(Path(out))
    if annotations:
        task_data = {**(task_data or {}), task: {**(task_data or {}).get(task, {}), "query": annotations}}
    spec = resolve_task(task, task_data)
    records = _read_predictions(path)
    samples = load_samples(spec, "query", data_cfg or DataConfig(), verify="none")
    kind = spec.task_type
    by_id = _index(samples, spec)
    expected = list(dict.fromkeys(kind.sample_id(s) for s in samples))

    chosen: dict[str, tuple[int, str, float | None]] = {}  # sample id → (record number, text, answerable score)
    repeats: list[tuple[int, Any, int]] = []
    unknown: list[tuple[int, Any]] = []
    for number, record in enumerate(records, start=1):
        key = next((record[k] for k in ID_KEYS if k in record), None)
        text = next((record[k] for k in TEXT_KEYS if k in record), None)
        if key is None or not isinstance(text, str):
            raise MMError(f"{path}: record {number} needs an id ({'/'.join(ID_KEYS)}) and an "
                          f"{'/'.join(TEXT_KEYS)} string")
        if isinstance(key, bool) or not isinstance(key, int | str):  # 10.5 must not match question 10
            raise MMError(f"{path}: record {number}: id {key!r} is {type(key).__name__}; ids are integers or strings "
                          "as in the annotations")
        sample = by_id.get(str(key))
        if sample is None and isinstance(key, str) and Path(key).suffix.lower() in IMAGE_SUFFIXES:
            sample = by_id.get(Path(key).stem)  # an image file name for its image id
        if sample is None:
            unknown.append((number, key))
            continue
        sid = kind.sample_id(sample)
        if sid in chosen:
            repeats.append((number, key, chosen[sid][0]))
            continue
        answerable = record.get("answerable")
        if answerable is not None and (isinstance(answerable, bool) or not isinstance(answerable, int | float)
                                       or not 0 <= answerable <= 1):  # NaN fails the range too
            raise MMError(f"{path}: record {number}: answerable {answerable!r}: expected a probability from 0 to 1")
        chosen[sid] = (number, text, float(answerable) if answerable is not None else None)
    if repeats:
        number, key, first = repeats[0]
        raise MMError(f"{path}: record {number}: id {key!r} repeats record {first} ({len(repeats)} repeated "
                      f"prediction(s) in all); give one prediction per id")
    if unknown:
        number, key = unknown[0]
        raise MMError(f"{path}: record {number}: id {key!r} is not in the {task} annotations ({len(unknown)} "
                      "such prediction(s) in all); check the ids and the annotation file")
    missing = [sid for sid in expected if sid not in chosen]
    what = "questions" if hasattr(samples[0], "question") else "images"
    if missing and not allow_subset:
        raise MMError(f"{path}: results miss {len(missing)} of the {len(expected)} {what} in the {task} annotations "
                      f"(e.g. {missing[0]!r}); the official evaluation refuses that: predict every one, or pass "
                      f"--allow-subset to score only the {len(chosen)} given")

    ids = [sid for sid in expected if sid in chosen]
    preds = [kind.read_answer(by_id[sid], chosen[sid][1], spec) for sid in ids]
    refs = [kind.references(by_id[sid], spec) for sid in ids]
    value, per_sample = score_predictions(spec, ids, preds, refs, vqa_normalize)
    lines = []
    for sid, prediction, references, score in zip(ids, preds, refs, per_sample, strict=True):
        line = {"id": sid, "prediction": prediction, "references": references, "score": score,
                **{k: v for k, v in kind.record_fields(by_id[sid]).items() if k != "question"}}
        if chosen[sid][2] is not None:
            line["predicted_answerable"] = chosen[sid][2]
        lines.append(line)
    result: dict[str, Any] = {"task": task, "metric": spec.metric, "value": value, "n": len(ids),
                              "total": len(expected), "subset": bool(missing)}
    normalize = kind.normalization(spec, vqa_normalize)
    if normalize is not None:
        result["vqa_normalize"] = normalize
    result.update(kind.extra_metrics(spec, lines))
    if out:
        out = Path(out)
        atomic_write_text(out, "".join(json.dumps(line) + "\n" for line in lines))
        atomic_write_json(summary_path(out), {**result, "predictions": str(path)})
    return result


def refuse_foreign_out(out: Path) -> None:
    """MMError unless ``out`` and its summary are absent or an earlier ``--predictions ... -o`` wrote them."""
    def ours(path: Path) -> bool:
        summary = json_object_at(summary_path(out))
        return summary is not None and "predictions" in summary and "metric" in summary

    refuse_overwrite(out, "--out", ours)
    refuse_overwrite(summary_path(out), "--out's summary", ours)


def summary_path(out: Path) -> Path:
    """Where the summary of ``--predictions ... -o OUT`` goes: ``OUT`` with ``.summary.json`` for its suffix."""
    return out.with_name(out.stem + ".summary.json")


def _index(samples: list[Any], spec: TaskSpec) -> dict[str, Any]:
    """Sample by every id a result file may use: its own id, the image id of an image-only sample (a caption)."""
    by_id: dict[str, Any] = {}
    for sample in samples:
        by_id.setdefault(spec.task_type.sample_id(sample), sample)
        if not hasattr(sample, "question"):
            by_id.setdefault(str(sample.image_id), sample)
    return by_id


def _read_predictions(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON list or JSONL file; anything torn, non-UTF-8 or not an object is refused by line."""
    if not path.is_file():
        raise MMError(f"{path}: predictions file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise MMError(f"{path}: not UTF-8 text (byte {error.start}); save the predictions as UTF-8 JSON") from None
    if not text.strip():
        raise MMError(f"{path}: predictions file is empty; expected JSONL lines like "
                      '{"question_id": 1, "answer": "2"}')
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise MMError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
        except RecursionError:
            raise MMError(f"{path}: nested too deeply; expected a list of flat prediction objects") from None
        where = "record"
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                raise MMError(f"{path}: line {number} is not valid JSON (a torn or partial line?); "
                              "fix or remove it") from None
        where = "line"
    if not records or not all(isinstance(r, dict) for r in records):
        bad = next((i for i, r in enumerate(records, start=1) if not isinstance(r, dict)), 1)
        raise MMError(f"{path}: {where} {bad}: expected an object with an id and an answer/caption")
    return records
