"""Tasks are data: the built-in task YAMLs ship in the package, `mm eval --list-tasks` lists them with their type,
and a user's task file in `--include-path` (a new task of an existing type) runs with no code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.errors import MMError

runner = CliRunner()


def test_every_built_in_task_is_a_packaged_yaml_with_a_registered_type() -> None:
    from mmbench_cli.evaluate.tasks import builtin_task_files, task_table
    from mmbench_cli.registry import TASK_TYPES

    files = {path.stem for path in builtin_task_files()}
    specs = {spec.name: spec for spec in task_table()}
    assert {"synthetic-caption", "synthetic-vqa", "synthetic-ocr", "coco", "vqav2", "vizwiz"} <= files
    assert files <= set(specs)
    assert all(spec.family in TASK_TYPES and spec.path for spec in specs.values())


def test_the_existing_tasks_keep_their_fingerprints() -> None:
    """Cells computed before tasks became YAML files stay reusable: the fingerprint dicts are the old ones."""
    from mmbench_cli.evaluate.tasks import resolve_task

    assert resolve_task("synthetic-ocr").fingerprint() == {
        "family": "vqa", "metric": "vqa_accuracy", "source": "synthetic", "synthetic_kind": "ocr", "query": None,
        "demos": None}
    assert resolve_task("vizwiz").fingerprint()["metric"] == "vizwiz_accuracy"


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_list_tasks_shows_built_in_and_included_tasks_with_their_type(tmp_path: Path) -> None:
    _write(tmp_path / "mine", "colours.yaml", "name: my-colours\ntask_type: vqa\nsynthetic: vqa\nsplit: val\n"
           "description: colour questions on the validation images\n")
    _write(tmp_path / "mine", "lm_eval_task.yaml", "task: not_ours\ndataset_path: json\n")  # lm-eval's: skipped
    result = runner.invoke(app, ["eval", "--list-tasks", "--include-path", str(tmp_path / "mine"), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["task"]: row for row in json.loads(result.stdout)["tasks"]}
    assert rows["my-colours"]["type"] == "vqa" and rows["my-colours"]["metric"] == "vqa_accuracy"
    assert rows["synthetic-caption"]["type"] == "caption" and "not_ours" not in rows


@pytest.mark.parametrize(("text", "expected"), [
    ("name: x\ntask_type: essay\nsynthetic: vqa\n", "task_type"),
    ("name: x\ntask_type: vqa\nsynthetic: vqa\nmetric: CIDEr\n", "metric"),
    ("name: x\ntask_type: vqa\nsynthetic: vqa\nprompts: {}\n", "prompts: unknown key"),
    ("name: synthetic-vqa\ntask_type: vqa\nsynthetic: vqa\nsplit: val\n", "already defined"),
    ("name: x\ntask_type: vqa\n", "format:"),
])
def test_a_bad_task_file_is_one_line_naming_it(tmp_path: Path, text: str, expected: str) -> None:
    from mmbench_cli.evaluate.tasks import add_task_dirs

    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(MMError, match=expected) as error:
        add_task_dirs([tmp_path])
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    result = runner.invoke(app, ["eval", "--list-tasks", "--include-path", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.slow
def test_a_user_task_file_runs_with_no_code(tmp_path: Path) -> None:
    """One YAML (an existing type over another split of the world) evaluates end to end and is recorded under
    its family, with the type's answer prior."""
    from model_fixtures import save_tiny_model
    from test_eval import TINY

    model = save_tiny_model(tmp_path / "model", [*TINY, "data.num_val_images=6"])
    tasks = tmp_path / "tasks"
    _write(tasks, "val_vqa.yaml", "name: val-vqa\ntask_type: vqa\nsynthetic: vqa\nsplit: val\ndemo_split: train\n"
           "max_new_tokens: 3\n")
    result = runner.invoke(app, ["eval", str(model), "--tasks", "val-vqa", "--include-path", str(tasks),
                                 "--shots", "0", "1", "--num-samples", "6", "--json"])
    assert result.exit_code == 0, result.output
    cells = json.loads(result.stdout)["results"][0]["result"]["tasks"]["val-vqa"]
    assert cells["1"]["family"] == "vqa" and cells["1"]["n"] == 6 and "prior" in cells["1"]
    lines = (model / "eval" / cells["1"]["samples"][0]).read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["id"].count(":test:") == 0 for line in lines)


def test_prompt_templates_in_a_task_file(tmp_path: Path) -> None:
    """A task file may give its own demo/query templates; they shape the interleaved prompt, images included."""
    from mmbench_cli.data.synthetic import SyntheticWorld
    from mmbench_cli.evaluate.tasks import parse_task

    spec = parse_task({"name": "t", "task_type": "multiple_choice", "synthetic": "shape_choice",
                       "prompt": {"demo": "{image}Q: {question} ({options}) A: {answer}{eoc}",
                                  "query": "{image}Q: {question} ({options}) A:"}}, "t.yaml")
    world = SyntheticWorld(seed=0, num_train_images=4, num_val_images=2, num_test_images=4, version=4)
    demo, query = world.multiple_choice("train")[0], world.multiple_choice("test")[0]
    text, images = spec.task_type.build_prompt([demo], query, spec)
    right = demo.options[demo.answer]
    assert text.startswith(f"<image>Q: {demo.question} (A. {demo.options[0]} B. ") and len(images) == 2
    assert f"A: {right}<|endofchunk|><image>Q: {query.question}" in text and text.endswith(") A:")
    assert spec.fingerprint()["prompt"]["query"] == "{image}Q: {question} ({options}) A:"
    with pytest.raises(MMError, match=r"prompt.query: unknown placeholder \{label\}"):
        parse_task({"name": "u", "task_type": "yes_no", "synthetic": "pope", "prompt": {"query": "{label}"}}, "u.yaml")
