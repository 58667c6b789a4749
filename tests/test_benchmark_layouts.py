"""Multiple-choice and POPE benchmarks read from small files made in each one's exact official layout."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.config import DataConfig
from mmbench_cli.evaluate.tasks import load_samples, resolve_task

runner = CliRunner()
IMAGE = "<image>"


def _png(path: Path | None = None, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), colour).save(buffer, format="PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _load(task: str, query: dict, fmt: str | None = None):
    entry = {"query": query, **({"format": fmt} if fmt else {})}
    spec = resolve_task(task, {task: entry})
    return spec, load_samples(spec, "query", DataConfig())


def _scienceqa(root: Path) -> Path:
    problems = {
        "1": {"question": "Which is a mammal?", "choices": ["frog", "dog", "trout"], "answer": 1, "hint": "Look.",
              "image": "image.png", "split": "test", "subject": "natural science"},
        "2": {"question": "Which word is a noun?", "choices": ["run", "cat"], "answer": 1, "hint": "",
              "image": None, "split": "test", "subject": "language science"},  # no image: not in ScienceQA-IMG
        "3": {"question": "Which is hot?", "choices": ["ice", "fire"], "answer": 1, "hint": "", "image": "image.png",
              "split": "train", "subject": "natural science"},
    }
    (root / "problems.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"train": ["3"], "val": [], "test": ["1", "2"]}))
    _png(root / "images" / "test" / "1" / "image.png")
    _png(root / "images" / "train" / "3" / "image.png")
    return root / "problems.json"


def test_scienceqa_img_keeps_the_image_questions_of_the_split(tmp_path: Path) -> None:
    problems = _scienceqa(tmp_path / "scienceqa")
    spec, samples = _load("scienceqa-img", {"path": str(problems), "images": str(tmp_path / "scienceqa" / "images"),
                                            "split": "test"})
    assert [s.question_id for s in samples] == ["1"]
    sample = samples[0]
    assert sample.options == ["frog", "dog", "trout"] and sample.answer == 1 and sample.hint == "Look."
    assert sample.images[0].path == tmp_path / "scienceqa" / "images" / "test" / "1" / "image.png"
    text, images = spec.task_type.build_prompt([], sample, spec)
    assert text == "<image>Hint: Look. Question: Which is a mammal? Options: A. frog B. dog C. trout Short answer:"
    assert spec.task_type.choices(sample, spec) == [" frog", " dog", " trout"] and len(images) == 1


def _mmbench(path: Path) -> Path:
    image = base64.b64encode(_png()).decode()
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    rows = [
        ["10", "What colour is it?", "nan", "red", "green", "blue", "yellow", "A", "attribute", "fine", image],
        ["11", "How many?", "", "one", "two", "three", "", "C", "count", "coarse", "10"],  # image: row 10's
        ["12", "Test split row", "", "a", "b", "", "", "", "x", "y", image],  # no answer: skipped
    ]
    path.write_text("\n".join("\t".join(row) for row in [header, *rows]) + "\n")
    return path


def test_mmbench_tsv_options_answers_shared_images_and_circular_rotations(tmp_path: Path) -> None:
    path = _mmbench(tmp_path / "mmbench_dev_en.tsv")
    spec, samples = _load("mmbench-circular", {"path": str(path)})
    assert [s.question_id for s in samples] == ["10", "11"]
    assert samples[1].options == ["one", "two", "three"] and samples[1].answer == 2 and samples[0].hint == ""
    assert samples[1].images[0].load().getpixel((0, 0)) == (200, 30, 30)  # decoded from row 10's base64
    rotations = spec.task_type.expand_queries(samples, spec)
    assert len(rotations) == 4 + 3
    second = [s for s in rotations if s.question_id == "11"]
    assert [s.options for s in second] == [["one", "two", "three"], ["two", "three", "one"], ["three", "one", "two"]]
    assert all(s.options[s.answer] == "three" for s in second)
    assert [spec.task_type.sample_id(s) for s in second] == ["11", "11#r1", "11#r2"]


def test_seed_bench_reads_image_questions_by_data_id(tmp_path: Path) -> None:
    _png(tmp_path / "SEED-Bench-image" / "1454426_2591111986.jpg")
    data = {"questions": [
        {"question_id": "101669", "question": "What is on the plate?", "choice_a": "a", "choice_b": "b",
         "choice_c": "c", "choice_d": "d", "answer": "B", "data_id": "1454426_2591111986.jpg", "data_type": "image",
         "question_type_id": 1},
        {"question_id": "v1", "question": "What happens next?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
         "choice_d": "d", "answer": "A", "data_id": "v1.mp4", "data_type": "video", "question_type_id": 10},
    ], "question_type": {"Scene Understanding": 1}}
    (tmp_path / "SEED-Bench.json").write_text(json.dumps(data))
    _, samples = _load("seed-bench", {"path": str(tmp_path / "SEED-Bench.json"),
                                      "images": str(tmp_path / "SEED-Bench-image")})
    assert [(s.question_id, s.answer, s.options) for s in samples] == [("101669", 1, ["a", "b", "c", "d"])]


def _mmmu_rows() -> dict:
    png = {"bytes": _png(), "path": None}
    return {
        "id": ["validation_Art_1", "validation_Art_2", "validation_Art_3"],
        "question": ["Compare <image 1> with <image 2>. Which is older?", "What is shown?", "Explain."],
        "options": ["['<image 1>', 'the second', 'both']", "['a cat', 'a dog']", "[]"],
        "answer": ["B", "A", "free text"],
        "question_type": ["multiple-choice", "multiple-choice", "open"],
        "subfield": ["art", "art", "art"],
        "image_1": [png, png, png],
        "image_2": [{"bytes": _png(colour=(0, 0, 255)), "path": None}, None, None],
    }


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_mmmu_interleaves_its_image_slots(tmp_path: Path, layout: str) -> None:
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    features = Features({"id": Value("string"), "question": Value("string"), "options": Value("string"),
                         "answer": Value("string"), "question_type": Value("string"), "subfield": Value("string"),
                         "image_1": ImageFeature(), "image_2": ImageFeature()})
    table = Dataset.from_dict(_mmmu_rows(), features=features)
    if layout == "save_to_disk":
        path = tmp_path / "MMMU_validation"
        table.save_to_disk(str(path))
    else:
        (tmp_path / "Art").mkdir()
        path = tmp_path / "Art" / "validation-00000-of-00001.parquet"
        table.to_parquet(str(path))
    spec, samples = _load("mmmu", {"path": str(path), "split": "validation"})
    assert [s.question_id for s in samples] == ["validation_Art_1", "validation_Art_2"]  # the open one skipped
    first, second = samples
    # slots in reading order: the question's <image 1>, <image 2>, then option A's <image 1> again
    assert first.question == "Compare <image> with <image>. Which is older?" and first.options[0] == IMAGE
    assert [image.load().getpixel((0, 0)) for image in first.images] == [(200, 30, 30), (0, 0, 255), (200, 30, 30)]
    text, images = spec.task_type.build_prompt([], first, spec)
    assert text.count(IMAGE) == len(images) == 3 and text.startswith("Question: Compare <image> with <image>.")
    assert spec.task_type.choices(first, spec) == [" A", " B", " C"]  # options with images: letters
    assert second.question.startswith(IMAGE) and len(second.images) == 1  # no slot: the image comes first


def _pope(root: Path) -> Path:
    lines = [{"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
              "label": "yes"},
             {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dog in the image?",
              "label": "no"}]
    path = root / "coco_pope_adversarial.json"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    _png(root / "val2014" / "COCO_val2014_000000310196.jpg")
    return path


def test_pope_question_files_over_coco_images(tmp_path: Path) -> None:
    path = _pope(tmp_path / "pope")
    spec, samples = _load("pope-adversarial", {"path": str(path), "images": str(tmp_path / "pope" / "val2014")})
    assert [(s.question_id, s.label, s.meta["split"]) for s in samples] == [("1", "yes", "adversarial"),
                                                                          ("2", "no", "adversarial")]
    assert spec.task_type.build_prompt([], samples[0], spec)[0] == \
        "<image>Question: Is there a snowboard in the image? Short answer:"


@pytest.mark.slow
def test_local_multiple_choice_and_pope_evaluate_end_to_end(tmp_path: Path) -> None:
    """MMBench with CircularEval and POPE from local files, 0-shot, through the real CLI."""
    from model_fixtures import save_tiny_model
    from test_eval import TINY

    model = save_tiny_model(tmp_path / "model", TINY)
    tsv, pope = _mmbench(tmp_path / "mmbench.tsv"), _pope(tmp_path / "pope")
    task_data = tmp_path / "tasks.yaml"
    task_data.write_text(json.dumps({"mmbench-circular": {"query": {"path": str(tsv)}},
                                     "pope-adversarial": {"query": {"path": str(pope),
                                                                    "images": str(tmp_path / "pope" / "val2014")}}}))
    result = runner.invoke(app, ["eval", str(model), "--tasks", "mmbench-circular", "pope-adversarial", "--shots", "0",
                                 "--task-data", str(task_data), "--json"])
    assert result.exit_code == 0, result.output
    tasks = json.loads(result.stdout)["results"][0]["result"]["tasks"]
    mmbench, pope_cell = tasks["mmbench-circular"]["0"], tasks["pope-adversarial"]["0"]
    records = [json.loads(line) for line in (model / "eval" / mmbench["samples"][0]).read_text().splitlines()]
    assert mmbench["n"] == len(records) == 7 and mmbench["metric"] == "circular_accuracy"
    solved = {q: all(r["chosen"] == r["gold"] for r in records if r["id"].split("#")[0] == q) for q in ("10", "11")}
    assert mmbench["value"] == pytest.approx(100 * sum(solved.values()) / 2)
    assert mmbench["multiple_choice"]["circular"] == pytest.approx(mmbench["value"])
    assert pope_cell["n"] == 2 and set(pope_cell["pope"]) == {"accuracy", "precision", "recall", "f1", "yes_ratio"}


def test_predictions_of_another_system_on_mmbench_and_pope(tmp_path: Path) -> None:
    """`mm eval --predictions` scores letters or option texts (MMBench) and free yes/no answers (POPE)."""
    path = _mmbench(tmp_path / "mmbench.tsv")
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"id": "10", "answer": "(A)"}\n{"id": "11", "answer": "two"}\n')
    result = runner.invoke(app, ["eval", "--predictions", str(answers), "--task", "mmbench", "--annotations", str(path)])
    assert result.exit_code == 0, result.output
    assert "mmbench: mc_accuracy = 50.00 (n=2)" in result.output
    pope = _pope(tmp_path / "pope")
    said = tmp_path / "pope_answers.jsonl"
    said.write_text('{"question_id": 1, "answer": "Yes, there is a snowboard."}\n{"question_id": 2, "answer": "No."}\n')
    result = runner.invoke(app, ["eval", "--predictions", str(said), "--task", "pope-adversarial", "--annotations",
                                 str(pope), "--images", str(tmp_path / "pope" / "val2014")])
    assert result.exit_code == 0, result.output
    assert "pope_accuracy = 100.00" in result.output and "f1 100.00" in result.output


def test_an_mmmu_image_cell_that_points_nowhere_is_one_line(tmp_path: Path) -> None:
    """An image cell holding only a path to a missing file is an MMError naming the table and row (it was an
    uncaught OSError), through the same cell decoder as the `hf` format's."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    from mmbench_cli.errors import MMError

    rows = _mmmu_rows()
    rows["image_1"] = [{"bytes": None, "path": str(tmp_path / "gone.png")}] * 3
    features = Features({"id": Value("string"), "question": Value("string"), "options": Value("string"),
                         "answer": Value("string"), "question_type": Value("string"), "subfield": Value("string"),
                         "image_1": {"bytes": Value("binary"), "path": Value("string")},  # a path, not embedded
                         "image_2": ImageFeature()})
    path = tmp_path / "validation-00000-of-00001.parquet"
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    _, samples = _load("mmmu", {"path": str(path), "split": "validation"})
    with pytest.raises(MMError) as caught:
        samples[1].images[0].load()
    message = str(caught.value)
    assert "gone.png" in message and "\n" not in message
