"""The dry-run estimate's evaluation part: each task timed with its own queries, answer length and real prompt length,
and every timing prompt shows exactly ``shots + 1`` images per row (its text tokens are words, not image tokens)."""

from __future__ import annotations

from typing import Any

import pytest

from mmbench_cli.ablate import estimate
from mmbench_cli.config import load_config
from mmbench_cli.train.loop import build_trainable_model


@pytest.fixture(scope="module")
def small() -> Any:
    """A config with few queries and a model built from it (random weights: only shapes and timings matter)."""
    cfg = load_config(None, ["eval.num_samples=40", "eval.shots=[0,2]", "eval.batch_size=8",
                             "eval.tasks=[synthetic-caption,synthetic-vqa,synthetic-choice]",
                             "data.num_train_images=200", "data.num_test_images=60", "model.encoder=vit-tiny"])
    return cfg, build_trainable_model(cfg)


def test_task_shapes_come_from_the_tasks_own_data(small: Any) -> None:
    cfg, model = small
    caption = estimate.task_shape(cfg, model, "synthetic-caption")
    vqa = estimate.task_shape(cfg, model, "synthetic-vqa")
    choice = estimate.task_shape(cfg, model, "synthetic-choice")
    assert caption is not None and vqa is not None and choice is not None
    assert (caption.new_tokens, vqa.new_tokens, choice.new_tokens) == (20, 5, 0)  # the runner's lengths
    assert caption.queries == 40 and choice.choices >= 2
    for shape in (caption, vqa):  # image tokens of shots + 1 images, plus the prompt's words
        assert shape.prompt_tokens[0] > model.num_image_tokens
        assert shape.prompt_tokens[2] > 3 * model.num_image_tokens + shape.prompt_tokens[0] - model.num_image_tokens
    assert estimate.task_shape(cfg, model, "text:textcore") is None  # timed as a generic prompt


def test_timing_prompts_show_shots_plus_one_images_per_row(small: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, model = small
    seen: list[tuple[int, int, int]] = []  # (rows, images, new tokens)

    def fake_generate(ids: Any, images: Any = None, max_new_tokens: int = 0, **_: Any) -> None:
        assert int((ids == model.image_token_id).sum()) == images.size(0) * model.num_image_tokens
        seen.append((ids.size(0), images.size(0), max_new_tokens))

    def fake_forward(ids: Any, images: Any = None) -> None:
        assert int((ids == model.image_token_id).sum()) == images.size(0) * model.num_image_tokens
        seen.append((ids.size(0), images.size(0), 0))

    monkeypatch.setattr(model, "generate", fake_generate)
    monkeypatch.setattr(model, "forward", fake_forward)
    seconds, flops, encoded = estimate._measure_eval(model, cfg, "cpu")
    assert seconds >= 0 and flops > 0
    assert {(rows, images // rows) for rows, images, _ in seen} == {(8, 1), (8, 3)}
    assert {new for _, _, new in seen} == {20, 5, 0}
    batches = 5  # ceil(40 / 8) per task and shot count; the choice task once per choice
    choices = estimate.task_shape(cfg, model, "synthetic-choice").choices
    assert encoded == sum(batches * 8 * (shots + 1) * n for shots in (0, 2) for n in (1, 1, choices))
