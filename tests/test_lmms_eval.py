"""The lmms-eval bridge (extra `mmbench[lmms]`): `--model mm` from lmms-eval's own command line, offline, on a task
YAML over local files, scored like our VQA scorer; and `mm lmms-eval`'s handling of lmms-eval's traps (failures that
exit 0, built-in tasks shadowing --include_path ones, text-only few-shot demos, a response cache keyed on model_args,
filelock 4). The tests that run lmms-eval are skipped where it is not installed; the argument handling is not."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from model_fixtures import MECHANICS
from typer.testing import CliRunner

from mmbench_cli.errors import MMError
from mmbench_cli.evaluate.lmms_eval_hook import lmms_eval_argv, pin_checkpoint, shadowed_tasks

needs_lmms_eval = pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None,
                                     reason="lmms-eval not installed (pip install 'mmbench[lmms]')")
# A 3-step run of the shrunk toy model (as tests/test_faults.py): a real run dir with checkpoints 0..3.
TINY = [*MECHANICS, "model.lm=pythia-toy-1m", "model.image_size=32", "model.num_image_tokens=4", "data.seq_len=64",
        "train.batch_size=8", "data.num_train_images=64", "data.num_val_images=8", "data.num_test_images=8",
        "train.warmup_steps=3", "train.checkpoint_every=8", "train.steps=3"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20)}
QUESTION = "what colour is the picture?"
UTILS = '''from PIL import Image
from lmms_eval.tasks.vqav2.utils import vqav2_process_results_val as process_results  # noqa: F401 (its VQA score)


def doc_to_visual(doc):
    return [Image.open(doc["image_path"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return kwargs.get("pre_prompt", "") + doc["question"] + kwargs.get("post_prompt", "")
'''
VQA_YAML = '''task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.{visual}
doc_to_text: !function utils.doc_to_text
doc_to_target: question
generation_kwargs:
  max_new_tokens: 6
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: "\\nAnswer the question using a single word or phrase."
  mm:
    pre_prompt: "Question: "
    post_prompt: " Short answer:"
'''
CHOICE_YAML = '''task: local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: {choices}
doc_to_target: colour_index
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
lmms_eval_specific_kwargs:
  mm:
    pre_prompt: "Question: "
    post_prompt: " Short answer:"
'''


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from mmbench_cli.config import load_config
    from mmbench_cli.train.loop import pretrain

    torch.set_num_threads(1)
    return pretrain(load_config(None, TINY), tmp_path_factory.mktemp("lmms") / "run", progress=False)


def _images(directory: Path) -> list[tuple[str, Path]]:
    """(colour, file) for eight plain pictures, two of each colour."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for index, (name, rgb) in enumerate(list(COLOURS.items()) * 2):
        path = directory / f"picture{index}.png"
        Image.new("RGB", (40, 40), rgb).save(path)
        files.append((name, path))
    return files


def _our_answers(run: Path, files: list[tuple[str, Path]]) -> list[str]:
    """Our own 0-shot answers (`mm eval`'s prompt format and generation) to QUESTION about each picture."""
    from mmbench_cli.data.templates import vqa_prompt
    from mmbench_cli.data.types import FileImage
    from mmbench_cli.evaluate.fewshot import STOP_STRINGS
    from mmbench_cli.evaluate.runner import ImageFeatureCache, generate_batch, resolve_target
    from mmbench_cli.model import load_model

    model = load_model(resolve_target(run).checkpoints[-1].path).eval()
    texts, _ = generate_batch(model, [vqa_prompt(QUESTION)] * len(files), [[FileImage(p)] for _, p in files],
                              ImageFeatureCache(model), max_new_tokens=6)
    answers = []
    for text in texts:
        for stop in STOP_STRINGS:
            text = text.split(stop, 1)[0]
        answers.append(text.strip())
    return answers


def test_default_arguments_and_few_shot_refusal() -> None:
    assert lmms_eval_argv(["--tasks", "x"]) == ["--model", "mm", "--tasks", "x"]
    assert lmms_eval_argv(["eval", "--model", "llava_hf", "--num_fewshot", "4"]) == ["--model", "llava_hf",
                                                                                    "--num_fewshot", "4"]
    assert lmms_eval_argv(["--tasks", "x", "--num_fewshot", "0"])[:2] == ["--model", "mm"]
    assert lmms_eval_argv(["--config", "run.yaml"]) == ["--config", "run.yaml"]  # its model stays the config's
    with pytest.raises(MMError, match=r"text only.*mm eval RUN --shots 2"):
        lmms_eval_argv(["--tasks", "x", "--num_fewshot=2"])


@pytest.mark.slow
def test_model_args_pinned_to_the_checkpoint_for_the_response_cache(trained_run: Path) -> None:
    step_3 = trained_run.resolve() / "checkpoints" / "step_3"
    assert pin_checkpoint(f"path={trained_run},batch_size=2") == f"path={step_3},batch_size=2"
    assert pin_checkpoint(f"pretrained={trained_run / 'checkpoints' / 'step_1'}").endswith("step_1")
    argv = lmms_eval_argv(["--model_args", f"path={trained_run}", "--tasks", "x", "--use_cache", "c"])
    assert argv[argv.index("--model_args") + 1] == f"path={step_3}"
    with pytest.raises(MMError, match="no such run dir"):
        pin_checkpoint(f"path={trained_run}-missing")


def test_include_path_task_with_a_built_in_name_is_refused(tmp_path: Path) -> None:
    builtin, mine = tmp_path / "lmms_eval_tasks" / "vqav2", tmp_path / "mine"
    builtin.mkdir(parents=True)
    mine.mkdir()
    (builtin / "vqav2_val.yaml").write_text("task: vqav2_val\ndoc_to_text: !function utils.doc_to_text\n")
    (mine / "a.yaml").write_text("task: vqav2_val\ndoc_to_visual: !function utils.doc_to_visual\n")
    (mine / "b.yaml").write_text("task: my_vqa\n")
    assert shadowed_tasks(mine, builtin.parent) == [("vqav2_val", mine / "a.yaml", builtin / "vqav2_val.yaml")]
    (mine / "a.yaml").write_text("task: my_vqav2_val\n")
    assert shadowed_tasks(mine, builtin.parent) == []


def test_mm_lmms_eval_without_the_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmbench_cli.cli import app
    from mmbench_cli.evaluate import lmms_eval_hook

    real = importlib.util.find_spec
    monkeypatch.setattr(lmms_eval_hook.importlib.util, "find_spec", lambda name, *a: None if name == "lmms_eval"
                        else real(name, *a))
    result = CliRunner().invoke(app, ["lmms-eval", "--tasks", "x"])
    assert result.exit_code == 2 and "pip install 'mmbench[lmms]'" in result.output and "Traceback" not in result.output


@needs_lmms_eval
def test_help_shows_our_examples_then_lmms_evals_help() -> None:
    from mmbench_cli.cli import app

    result = CliRunner().invoke(app, ["lmms-eval", "--help"])
    assert result.exit_code == 0 and "mm lmms-eval --model_args" in result.output
    assert "usage: lmms-eval" in result.output and "--include_path" in result.output


@needs_lmms_eval
def test_filelock_keeps_lmms_evals_reentrant_locks(tmp_path: Path) -> None:
    """lmms-eval 0.7 patches filelock._api (gone in filelock 4) so nested dataset locks on one file are one lock."""
    import filelock
    from datasets.utils import _filelock as datasets_filelock
    from lmms_eval.evaluator import _enable_reentrant_filelocks

    _enable_reentrant_filelocks()
    path = str(tmp_path / "x.lock")
    outer = filelock.FileLock(path)
    assert datasets_filelock.FileLock(path) is outer
    with outer, filelock.FileLock(path, timeout=1):
        assert outer.is_locked


@needs_lmms_eval
@pytest.mark.slow
def test_lmms_evals_own_cli_runs_a_local_yaml_offline_and_scores_like_ours(trained_run: Path, tmp_path: Path) -> None:
    """`python -m lmms_eval --model mm` on `dataset_path: json` tasks over local files, HF_HUB_OFFLINE=1: its answers
    are our generation's and its VQA score is our scorer's on them. The answers are the tiny run's (3 steps: the same
    phrase for every picture), so each question's ten human answers repeat ours 0-4 times for scores between 0 and 1.
    A multiple-choice task over the same pictures scores the options by log-likelihood: lmms-eval's acc and acc_norm
    are ours (``multiple_choice_scores``) on its logged log-likelihoods."""
    from mmbench_cli.evaluate.metrics import multiple_choice_scores, vqa_accuracy

    files = _images(tmp_path / "images")
    ours = _our_answers(trained_run, files)
    rows = []
    for index, ((colour, path), answer) in enumerate(zip(files, ours, strict=True)):
        humans = [answer] * (index % 5) + [colour] * (10 - index % 5)
        rows.append({"question_id": index, "question": QUESTION, "image_path": str(path),
                     "colour_index": list(COLOURS).index(colour),
                     "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(humans)]})
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    (tasks / "local_vqa.yaml").write_text(VQA_YAML.format(task="local_vqa", data=data, visual="doc_to_visual"))
    (tasks / "local_choice.yaml").write_text(CHOICE_YAML.format(data=data, choices=json.dumps(list(COLOURS))))
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "mm", "--model_args",
                           f"path={trained_run},batch_size=4", "--tasks", "local_vqa,local_choice", "--include_path", str(tasks),
                           "--log_samples", "--output_path", str(out)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "is a run dir; its last checkpoint" in done.stdout + done.stderr  # the --use_cache warning
    assert list(out.glob("*/*_results.json")), done.stdout[-3000:]  # lmms-eval exits 0 when an evaluation fails
    (results_file,) = out.glob("*/*_results.json")
    results = json.loads(results_file.read_text())["results"]
    score = results["local_vqa"]["exact_match,none"]
    samples = _logged(out, "local_vqa")
    predictions = [s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0]
                   for s in samples]
    assert predictions == ours
    by_us = [vqa_accuracy(p, [a["answer"] for a in row["answers"]]) for p, row in zip(predictions, rows, strict=True)]
    assert len(set(by_us)) > 2 and 0 < score < 1
    assert score == pytest.approx(sum(by_us) / len(by_us), abs=1e-9)

    choices = _logged(out, "local_choice")
    loglikelihoods = [[float(pair[0]) for pair in s["filtered_resps"]] for s in choices]
    assert all(len(lls) == len(COLOURS) and max(lls) < 0 for lls in loglikelihoods)
    ours_mc = multiple_choice_scores(loglikelihoods, [row["colour_index"] for row in rows], list(COLOURS))
    assert 100 * results["local_choice"]["acc,none"] == pytest.approx(ours_mc["acc"])
    assert 100 * results["local_choice"]["acc_norm,none"] == pytest.approx(ours_mc["acc_norm"])


def _logged(out: Path, task: str) -> list[dict]:
    """lmms-eval's logged samples of ``task`` in document order."""
    (samples_file,) = out.glob(f"*/*_samples_{task}.jsonl")
    return sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])


@needs_lmms_eval
@pytest.mark.slow
def test_mm_lmms_eval_exits_non_zero_on_a_broken_task_and_a_shadowed_one(trained_run: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mmbench_cli.cli import app

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    files = _images(tmp_path / "images")
    data = tmp_path / "questions.jsonl"
    data.write_text(json.dumps({"question_id": 0, "question": QUESTION, "image_path": str(files[0][1]),
                                "answers": [{"answer": "red", "answer_id": 1}]}) + "\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    # lmms-eval loads this task, fails on the missing function, logs it and exits 0; mm lmms-eval exits 1
    (tasks / "broken.yaml").write_text(VQA_YAML.format(task="broken_vqa", data=data, visual="no_such_function"))
    runner = CliRunner()
    result = runner.invoke(app, ["lmms-eval", "--model_args", f"path={trained_run}", "--tasks", "broken_vqa",
                                 "--include_path", str(tasks)])
    assert result.exit_code == 1, result.output
    assert "evaluation failed: AttributeError" in result.output and "no_such_function" in result.output
    # a task named like a built-in one would silently be replaced by it: refused before anything runs
    (tasks / "broken.yaml").write_text(VQA_YAML.format(task="vqav2_val", data=data, visual="doc_to_visual"))
    result = runner.invoke(app, ["lmms-eval", "--model_args", f"path={trained_run}", "--tasks", "vqav2_val",
                                 "--include_path", str(tasks)])
    assert result.exit_code == 2 and "built-in task" in result.output and "rename it" in result.output
