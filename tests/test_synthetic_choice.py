"""The synthetic world's multiple-choice and POPE-style splits, and both task types end to end on a tiny model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.data.synthetic import SyntheticWorld

runner = CliRunner()


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(seed=0, num_train_images=40, num_val_images=4, num_test_images=30, version=4)


def test_multiple_choice_asks_the_shape_of_a_unique_colour_with_shuffled_options(world: SyntheticWorld) -> None:
    samples = world.multiple_choice("test")
    assert samples and samples == world.multiple_choice("test")  # deterministic (and memoised)
    for sample in samples:
        colour = sample.question.split("the ")[1].split(" one")[0]
        owners = [obj for obj in sample.images[0].scene.objects if obj.color == colour]
        assert len(owners) == 1 and sample.options[sample.answer] == owners[0].shape
        assert sorted(sample.options) == ["circle", "square", "triangle"]  # world 4's three shapes
    assert len(Counter(s.answer for s in samples)) == 3  # the right option is not always in one place


def test_pope_negatives_follow_the_worlds_statistics(world: SyntheticWorld) -> None:
    split = {kind: world.pope("test", kind) for kind in ("random", "popular", "adversarial")}
    present = [sorted({f"{o.color} {o.shape}" for o in image.scene.objects}) for image in world.images("test")]
    frequency = Counter(name for names in present for name in names)
    for kind, samples in split.items():
        labels = Counter(s.label for s in samples)
        assert labels["yes"] == labels["no"] > 0, kind  # balanced, as POPE
        for sample in samples:
            name = sample.meta["object"]
            names = present[int(sample.image_id.rsplit(":", 1)[1])]
            assert (name in names) == (sample.label == "yes")
    # the same positives in every split; popular negatives are the most frequent absent objects
    assert [s.question for s in split["random"] if s.label == "yes"] == \
        [s.question for s in split["popular"] if s.label == "yes"]
    first = split["popular"][0].image_id
    negatives = [s.meta["object"] for s in split["popular"] if s.image_id == first and s.label == "no"]
    names = present[int(first.rsplit(":", 1)[1])]
    ranked = sorted((n for n in frequency if n not in names), key=lambda n: (-frequency[n], n))
    assert negatives == ranked[:len(negatives)]
    assert split["adversarial"] != split["popular"] or len(frequency) < 4


def test_choice_loglikelihoods_do_not_depend_on_the_batch(tmp_path: Path) -> None:
    import torch
    from model_fixtures import save_tiny_model
    from test_eval import TINY

    from mmbench_cli.data.templates import encode_interleaved
    from mmbench_cli.evaluate.engine import ImageFeatureCache, choice_loglikelihoods
    from mmbench_cli.model import load_model

    model = load_model(save_tiny_model(tmp_path / "model", TINY))
    world = SyntheticWorld(seed=0, num_train_images=4, num_val_images=2, num_test_images=6, version=4)
    samples = world.multiple_choice("test")[:3]
    prompts = [f"<image>Question: {s.question} Short answer:" for s in samples]
    images = [s.images for s in samples]
    choices = [[f" {o}" for o in s.options] for s in samples]
    cache = ImageFeatureCache(model)
    batched = choice_loglikelihoods(model, prompts, images, choices, cache, batch_size=64)
    single = choice_loglikelihoods(model, prompts, images, choices, cache, batch_size=1)
    assert sum(batched, []) == pytest.approx(sum(single, []), abs=1e-4)
    # the first choice by hand: one unpadded forward, the continuation's token log-probabilities summed
    context = encode_interleaved(model.tokenizer, prompts[0], model.num_image_tokens)
    continuation = model.tokenizer(choices[0][0], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logits = model(ids, image_embeds=cache.stack(images[0])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    by_hand = sum(float(logp[len(context) - 1 + k, token]) for k, token in enumerate(continuation))
    assert batched[0][0] == pytest.approx(by_hand, abs=1e-4)


@pytest.mark.slow
def test_multiple_choice_and_pope_tasks_run_end_to_end(tmp_path: Path) -> None:
    from model_fixtures import save_tiny_model
    from test_eval import TINY

    model = save_tiny_model(tmp_path / "model", [*TINY, "data.num_test_images=12"])
    result = runner.invoke(app, ["eval", str(model), "--tasks", "synthetic-choice", "synthetic-pope-popular",
                                 "--shots", "0", "1", "--num-samples", "8", "--json"])
    assert result.exit_code == 0, result.output
    tasks = json.loads(result.stdout)["results"][0]["result"]["tasks"]
    choice, pope = tasks["synthetic-choice"]["1"], tasks["synthetic-pope-popular"]["0"]
    assert choice["family"] == "multiple_choice" and choice["chance"] == pytest.approx(100 / 3)
    assert 0 <= choice["prior"] <= 100 and set(choice["multiple_choice"]) == {"acc", "acc_norm"}
    assert pope["family"] == "yes_no" and pope["chance"] == 50.0 and set(pope["pope"]) >= {"f1", "yes_ratio"}
    records = [json.loads(line) for line in (model / "eval" / choice["samples"][0]).read_text().splitlines()]
    assert len(records) == 8 and all(len(r["demos"]) == 1 and r["prediction"] == r["options"][r["chosen"]]
                                     for r in records)
    assert choice["value"] == pytest.approx(100 * sum(r["chosen"] == r["gold"] for r in records) / 8)
