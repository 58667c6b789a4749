"""`mm lm-eval`: lm-eval's own command line with our model; model_args paths with commas; lm-eval's own models stay
registered after `import mmbench_cli`; parity of our `mm` model with lm-eval's `hf` model on the same weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from model_fixtures import save_tiny_model
from typer.testing import CliRunner

from mmbench_cli.errors import MMError
from mmbench_cli.evaluate.lm_eval_hook import lm_eval_argv, model_path

EVALS = Path(__file__).resolve().parents[1] / "mmbench_cli" / "resources" / "evals"
TASK_METADATA = {"world_seed": 0, "num_train_images": 24, "num_test_images": 8}


@pytest.fixture(scope="module")
def cell_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random MLLM saved like `mm build -o` under a grid-cell name with a comma, its config beside it."""
    return save_tiny_model(tmp_path_factory.mktemp("grid") / "resolution=64,tokens=16",
                           ["data.num_train_images=24", "data.num_val_images=4", "data.num_test_images=8"])


def test_lm_evals_own_models_stay_registered_after_importing_mmbench() -> None:
    code = ("import mmbench_cli\nfrom lm_eval.api.registry import get_model\n"
            "print(get_model('hf').__name__, get_model('mm').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["HFLM", "MMLM"]


def test_model_path_rejoins_a_path_split_at_its_commas(cell_model_dir: Path) -> None:
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(f"path={cell_model_dir},batch_size=4")
    assert "tokens" in args  # lm-eval split the dir name
    assert model_path(args) == (str(cell_model_dir), "path", {"batch_size": 4})
    quoted = simple_parse_args_string(f'pretrained="{cell_model_dir}",device=cpu')
    assert model_path(quoted) == (str(cell_model_dir), "pretrained", {"device": "cpu"})
    missing = {"path": str(cell_model_dir.parent / "resolution=32"), "tokens": 16}
    assert model_path(missing) == (missing["path"], "path", {"tokens": 16})
    assert model_path({"batch_size": 2}) == (None, None, {"batch_size": 2})


def test_mm_model_refuses_leftover_args_naming_the_quoting(cell_model_dir: Path) -> None:
    from lm_eval.api.registry import get_model

    import mmbench_cli  # noqa: F401

    with pytest.raises(MMError, match="quoted"):
        get_model("mm").create_from_arg_string(f"path={cell_model_dir.parent}/resolution=32,tokens=16")


def test_help_shows_our_examples_then_lm_evals_help() -> None:
    from mmbench_cli.cli import app

    result = CliRunner().invoke(app, ["lm-eval", "--help"])
    assert result.exit_code == 0 and "Examples" in result.output and "mm lm-eval --model_args" in result.output
    assert "Language Model Evaluation Harness" in result.output


def test_default_lm_eval_arguments() -> None:
    assert lm_eval_argv(["--tasks", "x"]) == ["--model", "mm", "--include_path", str(EVALS), "--tasks", "x"]
    assert lm_eval_argv(["run", "--model", "hf", "--include_path", "d"]) == ["run", "--model", "hf",
                                                                            "--include_path", "d"]
    assert lm_eval_argv(["ls", "tasks"]) == ["ls", "tasks"]


def test_mm_lm_eval_runs_a_yaml_task_and_writes_lm_evals_files(cell_model_dir: Path, tmp_path: Path) -> None:
    from mmbench_cli.cli import app

    tasks = tmp_path / "mytasks"
    tasks.mkdir()
    (tasks / "my_cloze.yaml").write_text(f"include: {EVALS / 'mm_synth_cloze.yaml'}\ntask: my_cloze\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "lm-eval", "--model", "mm", "--model_args", f'path="{cell_model_dir}"', "--batch_size", "4", "--tasks", "my_cloze",
        "--include_path", str(tasks), "--limit", "3", "--log_samples", "--output_path", str(out),
        "--metadata", json.dumps(TASK_METADATA)])
    assert result.exit_code == 0, result.output
    (results_file,) = out.glob("*/results_*.json")
    results = json.loads(results_file.read_text())
    assert 0.0 <= results["results"]["my_cloze"]["acc,none"] <= 1.0
    assert results["results"]["my_cloze"]["perplexity,none"] > 1.0
    assert results["config"]["limit"] == 3 and results["n-samples"]["my_cloze"]["effective"] == 3
    (samples,) = results_file.parent.glob("samples_my_cloze_*.jsonl")
    assert len(samples.read_text().splitlines()) == 3

    bad = CliRunner().invoke(app, ["lm-eval", "--model_args", f"path={tmp_path / 'nope'}", "--tasks", "my_cloze",
                                   "--include_path", str(tasks), "--limit", "1"])
    assert bad.exit_code == 2 and "no such run dir" in bad.output


@pytest.mark.slow
def test_mm_and_hf_models_agree_on_the_same_gpt_neox_weights(cell_model_dir: Path, tmp_path: Path) -> None:
    """lm-eval's hf model on the LM extracted with save_pretrained gives our numbers: acc, perplexities, logliks."""
    import lm_eval

    import mmbench_cli  # noqa: F401
    from mmbench_cli.evaluate.text import task_manager
    from mmbench_cli.model import load_model

    model = load_model(cell_model_dir)
    hf_dir = tmp_path / "hf"
    model.lm.save_pretrained(hf_dir)
    model.tokenizer.save_pretrained(hf_dir)
    tasks = ["mm_synth_facts", "mm_synth_cloze", "mm_synth_perplexity"]
    runs = {}
    for name, args in (("mm", {"path": str(cell_model_dir)}),
                       ("hf", {"pretrained": str(hf_dir), "dtype": "float32", "device": "cpu"})):
        runs[name] = lm_eval.simple_evaluate(model=name, model_args=args, tasks=tasks, limit=6, log_samples=True,
                                             task_manager=task_manager(metadata=TASK_METADATA), bootstrap_iters=0)
    mm, hf = runs["mm"], runs["hf"]
    assert mm["results"]["mm_synth_facts"]["acc,none"] == hf["results"]["mm_synth_facts"]["acc,none"]
    assert mm["results"]["mm_synth_cloze"]["acc,none"] == hf["results"]["mm_synth_cloze"]["acc,none"]
    for task, metric in (("mm_synth_cloze", "perplexity,none"), ("mm_synth_perplexity", "word_perplexity,none"),
                         ("mm_synth_perplexity", "bits_per_byte,none")):
        assert mm["results"][task][metric] == pytest.approx(hf["results"][task][metric], rel=1e-5), (task, metric)
    for task in tasks:
        ours = [s["resps"] for s in mm["samples"][task]]
        theirs = [s["resps"] for s in hf["samples"][task]]
        flat_ours = [float(r[0][0] if isinstance(r[0], list | tuple) else r[0]) for rs in ours for r in rs]
        flat_theirs = [float(r[0][0] if isinstance(r[0], list | tuple) else r[0]) for rs in theirs for r in rs]
        assert flat_ours == pytest.approx(flat_theirs, abs=1e-4), task
