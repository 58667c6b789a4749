"""mm eval: few-shot prompts, demo selection, batched generation, the runner's results/reuse, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_fixtures import MECHANICS, save_tiny_model
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.data.types import CaptionSample, MemoryImage, VQASample
from mmbench_cli.evaluate import fewshot

TINY = [*MECHANICS, "data.num_train_images=24", "data.num_val_images=4", "data.num_test_images=8", "model.lm=pythia-toy-2m"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny MLLM saved like `mm build -o`, with the run config beside it."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "untrained", TINY)


def _vqa(i: int, color: int = 0) -> VQASample:
    from PIL import Image

    image = MemoryImage(Image.new("RGB", (8, 8), (color, 0, 0)), key=f"img{i}")
    return VQASample(f"q{i}", f"img{i}", image, f"question {i}?", [f"a{i}"] * 10)


# ----------------------------------------------------------------------------------- prompts & demos
def test_four_shot_prompt_has_exactly_four_demos() -> None:
    pool = [_vqa(i) for i in range(20)]
    query = _vqa(99)
    demos = fewshot.select_random(pool, 1, 4, seed=0)[0]
    assert len(demos) == 4 and len({d.question_id for d in demos}) == 4
    text, images = fewshot.build_prompt(demos, query)
    assert text.count("<image>") == 5 and len(images) == 5 and images[-1] is query.image
    assert text.count("<|endofchunk|>") == 4 and text.endswith("Question: question 99? Short answer:")
    assert all(f"Short answer: {d.answers[0]}<|endofchunk|>" in text for d in demos)


def test_seeds_change_demos_and_are_reproducible() -> None:
    pool = [_vqa(i) for i in range(50)]
    seed0 = fewshot.select_random(pool, 10, 4, seed=0)
    seed1 = fewshot.select_random(pool, 10, 4, seed=1)
    ids = lambda sets: [[d.question_id for d in demos] for demos in sets]  # noqa: E731
    assert ids(seed0) == ids(fewshot.select_random(pool, 10, 4, seed=0))
    assert ids(seed0) != ids(seed1)
    assert fewshot.demo_pool(pool, 10, 0) != fewshot.demo_pool(pool, 10, 1)
    assert fewshot.query_set(pool, 5) == fewshot.query_set(pool, 5)  # queries do not depend on the demo seed


def test_rices_picks_most_similar_and_puts_it_last() -> None:
    import torch

    pool = [_vqa(i) for i in range(6)]
    pool_features = torch.eye(6)
    query = torch.tensor([[0.1, 0.0, 0.9, 0.0, 0.5, 0.0]])  # most similar: 2, then 4, then 0
    demos = fewshot.select_rices(pool, pool_features, query, 3)[0]
    assert [d.question_id for d in demos] == ["q0", "q4", "q2"]


def test_flamingo_zero_shot_variant_drops_demo_images() -> None:
    demos = [_vqa(1), _vqa(2)]
    text, images = fewshot.build_prompt(demos, _vqa(3), text_only_demos=True)
    assert text.count("<image>") == 1 and len(images) == 1
    assert text.startswith("Question: question 1? Short answer: a1<|endofchunk|>")


def test_postprocess_cuts_at_stop_words() -> None:
    assert fewshot.postprocess(" red<|endofchunk|><image>Question: x", "vqa") == "red"
    assert fewshot.postprocess(" two, maybe three", "vqa") == "two"
    assert fewshot.postprocess(" yes Question: what", "vqa") == "yes"
    assert fewshot.postprocess(' a "red" circle Output: more', "caption") == "a red circle"
    assert fewshot.postprocess(" a red circle\nnext line", "caption") == "a red circle"


def test_shots_larger_than_pool_is_a_user_error() -> None:
    from mmbench_cli.errors import MMError

    with pytest.raises(MMError, match="at most 3 shots"):
        fewshot.check_pool([_vqa(i) for i in range(3)], 4, "t")


def test_caption_demo_format() -> None:
    from PIL import Image

    sample = CaptionSample("c1", MemoryImage(Image.new("RGB", (4, 4)), "k"), ["a red circle."])
    text, _ = fewshot.build_prompt([sample], sample)
    assert text == "<image>Output: a red circle.<|endofchunk|><image>Output:"


# ------------------------------------------------------------------------------------- generation core
def test_batched_left_padded_generation_equals_one_by_one(tiny_model_dir: Path) -> None:
    from mmbench_cli.data.synthetic import SyntheticWorld
    from mmbench_cli.evaluate.runner import ImageFeatureCache, generate_batch
    from mmbench_cli.model import load_model

    model = load_model(tiny_model_dir)
    world = SyntheticWorld(0, 24, 4, 8)
    samples = world.vqa("test")[:3]
    pool = world.vqa("train")
    prompts = [fewshot.build_prompt(pool[: k], s) for k, s in zip((0, 2, 1), samples, strict=True)]
    cache = ImageFeatureCache(model)
    batched, _ = generate_batch(model, [p[0] for p in prompts], [p[1] for p in prompts], cache, 6)
    single = [generate_batch(model, [p[0]], [p[1]], cache, 6)[0][0] for p in prompts]
    assert batched == single
    assert cache.computed == len({img.key for p in prompts for img in p[1]})  # each image encoded once


def test_rices_with_model_features_finds_the_same_image(tiny_model_dir: Path) -> None:
    from mmbench_cli.data.synthetic import SyntheticWorld
    from mmbench_cli.evaluate.runner import ImageFeatureCache
    from mmbench_cli.model import load_model

    model = load_model(tiny_model_dir)
    world = SyntheticWorld(0, 24, 4, 8)
    queries = world.captions("test")[:3]
    pool = world.captions("train")[:12] + queries  # each query's own image is in the pool
    cache = ImageFeatureCache(model)
    demos = fewshot.select_rices(pool, cache.pooled([p.image for p in pool]), cache.pooled([q.image for q in queries]), 4)
    for query, chosen in zip(queries, demos, strict=True):
        assert len(chosen) == 4 and chosen[-1].image.key == query.image.key


# ------------------------------------------------------------------------------------------- runner
def test_runner_results_schema_samples_and_reuse(tiny_model_dir: Path) -> None:
    from mmbench_cli.evaluate.request import EvalRequest
    from mmbench_cli.evaluate.runner import evaluate

    paths = evaluate(EvalRequest(tiny_model_dir, ["synthetic-vqa"], [0, 2], 2, num_samples=4, progress=False))
    results = json.loads(paths[0].read_text())
    assert results["step"] == 0 and results["checkpoint_hash"] and "summary" in results
    cell = results["tasks"]["synthetic-vqa"]["2"]
    assert cell["family"] == "vqa" and cell["metric"] == "vqa_accuracy" and cell["n"] == 4
    assert len(cell["seeds"]) == 2 and cell["seed_ids"] == [0, 1]
    lines = [json.loads(x) for x in (paths[0].parent / cell["samples"][1]).read_text().splitlines()]
    assert len(lines) == 4 and all(len(x["demos"]) == 2 for x in lines)
    assert {"id", "prediction", "references", "score"} <= set(lines[0])
    assert cell["value"] == pytest.approx(sum(cell["seeds"]) / 2)
    assert results["summary"]["2"]["vqa_avg"] == pytest.approx(cell["value"])
    demos_seed0 = [json.loads(x)["demos"] for x in (paths[0].parent / cell["samples"][0]).read_text().splitlines()]
    assert demos_seed0 != [x["demos"] for x in lines]  # seeds change demos

    sample_file = paths[0].parent / cell["samples"][0]
    before = sample_file.stat().st_mtime_ns
    request = EvalRequest(tiny_model_dir, ["synthetic-vqa"], [2], 3, num_samples=4, progress=False)
    again = json.loads(evaluate(request)[0].read_text())
    cell2 = again["tasks"]["synthetic-vqa"]["2"]
    assert cell2["reused"] == [0, 1] and cell2["seed_ids"] == [0, 1, 2]  # only seed 2 was computed
    assert sample_file.stat().st_mtime_ns == before
    forced = json.loads(evaluate(EvalRequest(tiny_model_dir, ["synthetic-vqa"], [2], 1, num_samples=4, force=True,
                                             progress=False))[0].read_text())
    assert forced["tasks"]["synthetic-vqa"]["2"]["reused"] == []


# ------------------------------------------------------------------------------------------ bad input
runner = CliRunner()


def test_prompts_longer_than_the_training_sequences_are_noted_and_recorded(tmp_path: Path) -> None:
    """Few-shot prompts longer than ``data.seq_len`` put the query where the LM never trained: mm eval says so and
    the results cell records the longest prompt (also when every seed is reused)."""
    model = save_tiny_model(tmp_path / "short", [*TINY, "data.seq_len=24", "model.num_image_tokens=4"])
    args = ["eval", str(model), "--tasks", "synthetic-vqa", "--shots", "0", "2", "--num-samples", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "synthetic-vqa 2-shot prompts reach" in result.output
    assert "longer than the run's training sequences (data.seq_len 24)" in " ".join(result.output.split())
    assert "synthetic-vqa 0-shot prompts reach" not in result.output  # 4 image tokens + a question fit
    path = model / "eval" / "step_0.json"
    cells = json.loads(path.read_text())["tasks"]["synthetic-vqa"]
    assert cells["2"]["max_prompt_tokens"] > 24 >= cells["0"]["max_prompt_tokens"] > 4
    assert runner.invoke(app, args).exit_code == 0  # every seed reused: the longest prompt is kept
    again = json.loads(path.read_text())["tasks"]["synthetic-vqa"]
    assert again["2"]["reused"] == [0] and again["2"]["max_prompt_tokens"] == cells["2"]["max_prompt_tokens"]


def _one_line_exit_2(result) -> str:  # noqa: ANN001
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "error:" in text and len(text.splitlines()) == 1 and "Traceback" not in text
    return text


def test_cli_bad_inputs_exit_2_and_keep_results(tiny_model_dir: Path, tmp_path: Path) -> None:
    from mmbench_cli.evaluate.request import EvalRequest
    from mmbench_cli.evaluate.runner import evaluate

    results = evaluate(EvalRequest(tiny_model_dir, ["synthetic-ocr"], [0], 1, num_samples=2, progress=False))[0]
    before = results.read_bytes()
    assert "unknown task" in _one_line_exit_2(runner.invoke(app, ["eval", str(tiny_model_dir), "--tasks", "nope"]))
    assert "no such run" in _one_line_exit_2(runner.invoke(app, ["eval", str(tmp_path / "missing")]))
    out = _one_line_exit_2(runner.invoke(app, ["eval", str(tiny_model_dir), "--tasks", "synthetic-ocr",
                                               "--shots", "0", "999", "--num-samples", "2"]))
    assert "--shots 999" in out
    assert "--shots" in _one_line_exit_2(runner.invoke(app, ["eval", str(tiny_model_dir), "--shots", "x"]))
    assert results.read_bytes() == before


def _vqav2_files(tmp_path: Path, answer_key: str = "answers") -> tuple[Path, Path, Path]:
    from PIL import Image

    images = tmp_path / "val2014"
    images.mkdir()
    questions, annotations = [], []
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(images / f"COCO_val2014_{i:012d}.jpg")
        questions.append({"question_id": 10 + i, "image_id": i, "question": f"how many {i}?"})
        annotations.append({"question_id": 10 + i, "image_id": i, "answer_type": "number",
                            answer_key: [{"answer": str(i), "answer_id": j + 1} for j in range(10)]})
    q = tmp_path / "questions.json"
    a = tmp_path / "annotations.json"
    q.write_text(json.dumps({"questions": questions}))
    a.write_text(json.dumps({"annotations": annotations, "data_subtype": "val2014"}))
    return q, a, images


def test_score_external_predictions(tmp_path: Path) -> None:
    q, a, images = _vqav2_files(tmp_path)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"question_id": 10 + i, "answer": ans}) + "\n"
                             for i, ans in enumerate(["zero", "1", "three"])))
    result = runner.invoke(app, ["eval", "--predictions", str(preds), "--task", "vqav2", "--annotations", str(a),
                                 "--questions", str(q), "--images", str(images), "-o", str(tmp_path / "s.jsonl")])
    assert result.exit_code == 0, result.output
    # the official metric normalises nothing when the 10 answers agree: "zero" does not match ten "0"s
    assert "vqa_accuracy = 33.33 (n=3, official normalisation)" in result.output
    scores = [json.loads(x)["score"] for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert scores == [0.0, 100.0, 0.0]
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["vqa_normalize"] == "official" and summary["n"] == summary["total"] == 3 and not summary["subset"]
    lenient = runner.invoke(app, ["eval", "--predictions", str(preds), "--task", "vqav2", "--annotations", str(a),
                                  "--questions", str(q), "--vqa-normalize", "always"])
    assert "vqa_accuracy = 66.67 (n=3, always normalisation)" in lenient.output  # "zero" → "0"; "three" ≠ "2"

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = ["--task", "vqav2", "--annotations", str(a), "--questions", str(q), "--images", str(images)]
    assert "empty" in _one_line_exit_2(runner.invoke(app, ["eval", "--predictions", str(empty), *args]))


def test_annotations_with_wrong_keys_exit_2(tmp_path: Path) -> None:
    q, a, images = _vqav2_files(tmp_path, answer_key="labels")
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"question_id": 10, "answer": "0"}) + "\n")
    out = _one_line_exit_2(runner.invoke(app, ["eval", "--predictions", str(preds), "--task", "vqav2",
                                               "--annotations", str(a), "--questions", str(q),
                                               "--images", str(images)]))
    assert "answers" in out


# ------------------------------------------------------------------------------------ trained vs untrained
@pytest.mark.slow
def test_trained_toy_checkpoint_beats_untrained_on_captioning_and_vqa(tmp_path: Path) -> None:
    """A short `pretrain` run must caption and answer clearly better than its own step-0 (untrained) checkpoint.

    Measured with this config (150 steps of 16 rows): CIDEr 0.5 → 37.0 (0-shot) and 0.1 → 29.2 (4-shot);
    VQA accuracy 0 → 37.1 (0-shot) and 0 → 32.9 (4-shot). At 60 steps VQA was still 0 (the model answered
    "Short answer:" with caption text), which is why the run is this long.
    """
    from mmbench_cli.config import load_config
    from mmbench_cli.evaluate.request import EvalRequest
    from mmbench_cli.evaluate.runner import evaluate
    from mmbench_cli.train.loop import pretrain

    # the config these numbers were measured with: world 1, a trainable random vit-tiny (the default's pre-trained
    # encoder is covered by test_pretrained_encoder and, with real metrics, by CI's ci_smoke grid)
    cfg = load_config(None, [*MECHANICS, "data.world_version=1",
                             "train.steps=150", "train.batch_size=16", "train.warmup_steps=10", "train.log_every=20",
                             "train.checkpoint_every=1000", "train.log_spaced_checkpoints=false",
                             "data.num_train_images=200", "data.num_val_images=20", "data.num_test_images=40"])
    run = pretrain(cfg, tmp_path / "run", progress=False)
    paths = evaluate(EvalRequest(run, ["synthetic-caption", "synthetic-vqa"], [0, 4], 1, all_checkpoints=True,
                                 num_samples=24, progress=False))
    by_step = {json.loads(p.read_text())["step"]: json.loads(p.read_text()) for p in paths}
    untrained, trained = by_step[0]["tasks"], by_step[150]["tasks"]
    for shots in ("0", "4"):
        assert trained["synthetic-caption"][shots]["value"] >= untrained["synthetic-caption"][shots]["value"] + 10.0
        assert trained["synthetic-vqa"][shots]["n"] == 24
        assert trained["synthetic-vqa"][shots]["value"] >= untrained["synthetic-vqa"][shots]["value"] + 10.0
