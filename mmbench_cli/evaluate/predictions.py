"""``mm eval --predictions``: score another system's outputs with the same metric and references as a task.

Accepted: JSON (a list of records) or JSONL, each record with an id (``question_id``/``image_id``/``id``) and an
``answer``/``caption``/``prediction`` string.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError
from mmbench_cli.evaluate.runner import references_of, sample_id, score_predictions
from mmbench_cli.evaluate.tasks import load_samples, resolve_task
from mmbench_cli.rundir import atomic_write_text

if TYPE_CHECKING:
    from mmbench_cli.config import DataConfig


def score_file(predictions_path: str | Path, task: str, task_data: dict[str, dict[str, Any]] | None = None,
               annotations: dict[str, Any] | None = None, data_cfg: DataConfig | None = None,
               out: str | Path | None = None) -> dict[str, Any]:
    """Score another system's predictions (JSONL/JSON: ``question_id``/``image_id``/``id`` + ``answer``/``caption``)
    with the same metric as ``task``; the references come from the task's query data.
    """
    from mmbench_cli.config import DataConfig

    if annotations:
        task_data = {**(task_data or {}), task: {**(task_data or {}).get(task, {}), "query": annotations}}
    spec = resolve_task(task, task_data)
    records = _read_predictions(Path(predictions_path))
    samples = load_samples(spec, "query", data_cfg or DataConfig())
    by_id = {sample_id(s): s for s in samples}
    if spec.family == "caption":
        by_id.update({str(s.image_id): s for s in samples})
    ids, preds, refs = [], [], []
    seen: dict[str, int] = {}
    for number, record in enumerate(records, start=1):
        key = next((record[k] for k in ("question_id", "image_id", "id") if k in record), None)
        text = next((record[k] for k in ("answer", "caption", "prediction") if k in record), None)
        if key is None or not isinstance(text, str):
            raise MMError(f"{predictions_path}: record {number} needs an id (question_id/image_id/id) and an "
                          "answer/caption/prediction string")
        if str(key) in seen:
            raise MMError(f"{predictions_path}: record {number}: id {key!r} repeats record {seen[str(key)]}; "
                          "give one prediction per id")
        seen[str(key)] = number
        sample = by_id.get(str(key))
        if sample is None:
            raise MMError(f"{predictions_path}: record {number}: id {key!r} is not in the {task} annotations")
        ids.append(str(key))
        preds.append(text)
        refs.append(references_of(sample))
    value, per_sample = score_predictions(spec, ids, preds, refs)
    result = {"task": task, "metric": spec.metric, "value": value, "n": len(ids)}
    if out:
        atomic_write_text(Path(out), "".join(
            json.dumps({"id": i, "prediction": p, "references": r, "score": s}) + "\n"
            for i, p, r, s in zip(ids, preds, refs, per_sample, strict=True)))
    return result


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
        where = "record"
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise MMError(f"{path}: line {number} is not valid JSON (a torn or partial line?); "
                              "fix or remove it") from None
        where = "line"
    if not records or not all(isinstance(r, dict) for r in records):
        bad = next((i for i, r in enumerate(records, start=1) if not isinstance(r, dict)), 1)
        raise MMError(f"{path}: {where} {bad}: expected an object with an id and an answer/caption")
    return records
