"""Caption grounding on the synthetic world: do the generated captions name what is in the image?

CIDEr rewards a caption's template as much as its content: at toy scale a model can gain CIDEr by choosing
the wording of the references without looking at the image. This table separates the two. For each query of
a synthetic captioning task it takes the colour words and the shape words the generated caption names and
those in the image (every synthetic reference caption names every object's colour and shape, so a word is
in the image when a reference names it):

- **precision**: the share of the named words that are in the image;
- **chance**: the share of the world's words that are in the image, i.e. the precision of a caption that
  names words at random (over the same queries).

Precision above chance means the captions are grounded in the image. Queries whose caption names no word of
a kind are left out of that kind (n counts the rest). Computed from the per-sample files of each cell's last
evaluated checkpoint at the task's fewest shots; a cell's training seeds are pooled as in the other tables.

The world's words travel in the results, not in this module: ``mm eval`` records them in the cell of each
synthetic captioning task as ``"vocabulary": {"colour": [...], "shape": [...]}`` (singular words; a shape's
plural adds "s"). Tasks whose cells record no vocabulary (COCO, say) get no grounding columns.
"""

from __future__ import annotations

import re
from typing import Any

from mmbench_cli.report.load import Run, Study
from mmbench_cli.report.stats import DEFAULT_RESAMPLES, Estimate, from_scores, mean_of
from mmbench_cli.report.tables import BOLD_NOTE, Column, Table, make_table, seed_note
from mmbench_cli.rundir import ResultCell

VOCABULARY_KEY = "vocabulary"  # the results cell's key (``ResultCell.extra``) holding the world's words per kind
PLURAL_KINDS = ("shape",)  # kinds named by nouns ("stars" names a star); colour words take no plural

Vocabulary = dict[str, str]  # word as written -> the thing it names


def vocabularies(cell: ResultCell | None) -> dict[str, Vocabulary]:
    """Kind -> vocabulary recorded in a results cell ({} when it records none; a malformed kind is left out)."""
    recorded = cell.extra.get(VOCABULARY_KEY) if cell is not None else None
    if not isinstance(recorded, dict):
        return {}
    found: dict[str, Vocabulary] = {}
    for kind, words in recorded.items():
        if not isinstance(words, list) or not words or not all(isinstance(word, str) and word for word in words):
            continue
        vocabulary = {word.lower(): word.lower() for word in words}
        if kind in PLURAL_KINDS:
            vocabulary |= {word.lower() + "s": word.lower() for word in words}
        found[str(kind)] = vocabulary
    return found


def named(text: str, vocabulary: Vocabulary) -> set[str]:
    """The things of one kind (colours, shapes: ``vocabulary``) that ``text`` names."""
    return {vocabulary[word] for word in re.findall(r"[a-z]+", text.lower()) if word in vocabulary}


def query_grounding(record: dict[str, Any], vocabulary: Vocabulary) -> tuple[float, float] | None:
    """(precision, chance) in % of one per-sample row, or None when its caption names no word of ``vocabulary``."""
    said = named(str(record.get("prediction", "")), vocabulary)
    references = record.get("references")
    if not said or not isinstance(references, list):
        return None
    present = named(" ".join(str(r) for r in references), vocabulary)
    size = len(set(vocabulary.values()))
    return 100.0 * len(said & present) / len(said), 100.0 * len(present) / size


def run_vocabularies(run: Run, task: str, shots: str, step: int | None = None) -> dict[str, Vocabulary]:
    """Kind -> vocabulary of ``task``'s cell at ``step`` (default: the run's last evaluated checkpoint; {} if it
    records none)."""
    step = run.final_step if step is None else step
    return vocabularies(run.entry(step, task, shots)) if step is not None else {}


def query_precisions(run: Run, task: str, shots: str, step: int | None = None
                     ) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    """Kind -> (precision, chance) per query id (demo seeds averaged per id; a query whose captions name no word of
    the kind is absent) at ``step`` (default: the last evaluated checkpoint); {} without a vocabulary."""
    step = run.final_step if step is None else step
    if step is None:
        return {}
    return run.memo(("grounding", task, shots, step), lambda: _query_precisions(run, task, shots, step))


def _query_precisions(run: Run, task: str, shots: str, step: int) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    kinds = run_vocabularies(run, task, shots, step)
    if not kinds:
        return {}
    precision: dict[str, dict[str, list[float]]] = {kind: {} for kind in kinds}
    chance: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    for _, records in run.sample_records(step, task, shots):
        for number, record in enumerate(records, start=1):
            key = str(record.get("id", number))
            for kind, vocabulary in kinds.items():
                found = query_grounding(record, vocabulary)
                if found is not None:
                    precision[kind].setdefault(key, []).append(found[0])
                    chance[kind][key] = found[1]
    return {kind: ({q: sum(v) / len(v) for q, v in precision[kind].items()}, chance[kind])
            for kind in kinds if precision[kind]}


def run_grounding(run: Run, task: str, shots: str, step: int | None = None) -> dict[str, tuple[Estimate, Estimate]]:
    """Kind -> (precision, chance) Estimates of one run's captions at ``step`` (default: its last evaluated
    checkpoint; one pass over the per-sample files; a kind no caption names is absent; {} when the task's cell
    records no vocabulary). A query's precision is averaged over the demo seeds whose captions name the kind."""
    step = run.final_step if step is None else step
    found = query_precisions(run, task, shots, step)
    clusters = run.sample_clusters(step, task, shots) if found and step is not None else {}
    return {
        kind: (from_scores(sum(precision.values()) / len(precision), precision, clusters),
               from_scores(sum(chance.values()) / len(chance), chance, clusters))
        for kind, (precision, chance) in found.items()
    }


def grounding_table(study: Study, resamples: int = DEFAULT_RESAMPLES) -> Table | None:
    """Per cell, colour and shape precision of the synthetic captioning tasks' captions against chance; None
    when no task whose results cells record a vocabulary has per-sample files."""
    groups = study.groups()
    found: dict[tuple[str, str, str], dict[str, tuple[Estimate, Estimate]]] = {}
    families: dict[str, str] = {}
    for task, info in study.tasks().items():
        shots = info.shots[0]
        kinds = dict.fromkeys(kind for run in study.runs for kind in run_vocabularies(run, task, shots))
        if not kinds:
            continue
        by_run = {run.name: run_grounding(run, task, shots) for run in study.runs}
        for kind in kinds:
            per_run = {name: by_kind[kind] for name, by_kind in by_run.items() if kind in by_kind}
            if per_run:
                found[(task, shots, kind)] = per_run
                families[task] = info.family
    if not found:
        return None
    columns: list[Column] = []
    lookups: dict[str, tuple[tuple[str, str, str], int]] = {}
    for task, shots, kind in found:
        for position, what in enumerate(("precision", "chance")):
            column = Column(f"{task}@{shots}@{kind}@{what}", f"{task} {shots}-shot {kind} {what}", families[task],
                            shots, task=task)
            columns.append(column)
            lookups[column.key] = ((task, shots, kind), position)

    def lookup(group: str, column: Column) -> Estimate | None:
        key, position = lookups[column.key]
        per_seed = [found[key][run.name][position] for run in groups[group] if run.name in found[key]]
        return mean_of(per_seed, pool_seeds=True)

    note = (
        "Do the generated captions name what is in the image? precision: % of the colour (shape) words a caption "
        "names that are in the image (named by a reference caption); chance: % of the world's colours (shapes) "
        "that are in the image, the precision of naming at random. Precision above chance = grounded captions; "
        "CIDEr alone also rewards the wording. Last evaluated checkpoint, fewest shots; captions naming no word "
        "of a kind are left out; [95% bootstrap CI over queries]" + seed_note(study) + "; " + BOLD_NOTE
    )
    return make_table("caption-grounding", "Caption grounding (synthetic world)", note, list(groups), columns,
                      lookup, ["cell"], resamples)
