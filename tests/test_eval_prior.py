"""Answer-prior baselines: per question type, the most common training answer, scored with the task's metric."""

from __future__ import annotations

import pytest

from mmbench_cli.data.types import MemoryImage, VQASample
from mmbench_cli.evaluate.prior import answer_prior, prior_answers, question_type


def _q(qid: str, question: str, answer: str, meta: dict | None = None) -> VQASample:
    from PIL import Image

    return VQASample(qid, qid, MemoryImage(Image.new("RGB", (4, 4)), key=qid), question, [answer] * 10,
                     meta=meta or {})


def _exact(ids, predictions, references):  # noqa: ANN001, ANN202
    values = [100.0 * (p == r[0]) for p, r in zip(predictions, references, strict=True)]
    return sum(values) / len(values), values


def test_question_type_prefers_the_datasets_own_field() -> None:
    assert question_type(_q("1", "How many circles are there?", "2")) == "how many"
    assert question_type(_q("2", "What color is it?", "red", {"question_type": "what color is the"})) == \
        "what color is the"


def test_prior_answers_per_type_with_deterministic_ties() -> None:
    train = [_q("a", "how many cats?", "2"), _q("b", "how many dogs?", "2"), _q("c", "how many owls?", "3"),
             _q("d", "is there a cat?", "yes"), _q("e", "is there a dog?", "no")]  # yes/no tie -> "no" (sorted)
    by_type, overall = prior_answers(train)
    assert by_type == {"how many": "2", "is there": "no"}
    assert overall == "2"


def test_answer_prior_scores_queries_with_their_types_answer() -> None:
    train = [_q("a", "how many cats?", "2"), _q("b", "how many dogs?", "2"), _q("c", "is there a cat?", "yes")]
    queries = [_q("q1", "how many pigs?", "2"), _q("q2", "how many cows?", "4"),
               _q("q3", "is there a pig?", "no"), _q("q4", "where is it?", "2")]  # unseen type -> overall "2"
    assert answer_prior(train, queries, _exact) == pytest.approx(50.0)
    assert answer_prior([], queries, _exact) is None


def test_runner_records_the_prior_in_vqa_cells_only() -> None:
    from mmbench_cli.config import load_config
    from mmbench_cli.evaluate.runner import TaskData
    from mmbench_cli.evaluate.tasks import resolve_task

    cfg = load_config(None, ["data.num_train_images=40", "data.num_val_images=4", "data.num_test_images=12"])
    vqa = TaskData(resolve_task("synthetic-vqa"), cfg.data, 20, need_demos=False)
    caption = TaskData(resolve_task("synthetic-caption"), cfg.data, 5, need_demos=False)
    assert 0.0 < vqa.cell_metadata()["prior"] < 100.0
    assert "prior" not in caption.cell_metadata() and "vocabulary" in caption.cell_metadata()


def test_caption_cells_record_the_shapes_of_their_world_version() -> None:
    """World version 4 draws three shapes: its grounding chance is computed over those three, not all five."""
    from mmbench_cli.data.synthetic import SHAPES, V4_SHAPES
    from mmbench_cli.evaluate.tasks import TASKS, result_metadata

    spec = TASKS.get("synthetic-caption")
    assert result_metadata(spec)["vocabulary"]["shape"] == list(SHAPES)
    assert result_metadata(spec, 4)["vocabulary"]["shape"] == list(V4_SHAPES)
    assert result_metadata(TASKS.get("synthetic-vqa"), 4) == {}
