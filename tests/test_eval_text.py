"""Our model through lm-evaluation-harness: the adapter's numbers, the lazy registration, the local tasks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from model_fixtures import save_tiny_model

from mmbench_cli.resources import resource_path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny MLLM saved like `mm build -o`, with its run config beside it."""
    return save_tiny_model(tmp_path_factory.mktemp("textmodel") / "untrained",
                           ["data.num_train_images=24", "data.num_val_images=4", "data.num_test_images=8"])


def test_import_does_not_load_lm_eval_or_torch() -> None:
    code = "import sys, mmbench_cli; print('lm_eval' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_loglikelihood_batched_equals_direct_forward(tiny_model_dir: Path) -> None:
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    import mmbench_cli  # noqa: F401

    lm = get_model("mm")(path=str(tiny_model_dir), batch_size=3)
    # shared contexts (one-token answers of one question run once) and a request whose input is another's
    pairs = [("the red ball lives in the", " garden"), ("a", " blue square"), ("question: what", " color is it"),
             ("the red ball lives in the", " city"), ("the red ball lives in the", " garden blue"),
             ("the red ball lives in the garden", " blue")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    got = lm.loglikelihood(requests, disable_tqdm=True)
    model = lm.model
    for (context, continuation), (logprob, greedy) in zip(pairs, got, strict=True):
        ctx = lm.tok_encode(context)
        whole = lm.tok_encode(context + continuation)
        cont = whole[len(ctx):]
        with torch.no_grad():
            logits = model(torch.tensor([whole[:-1]])).logits[0].log_softmax(-1)
        expected = sum(float(logits[len(ctx) - 1 + j, tok]) for j, tok in enumerate(cont))
        assert logprob == pytest.approx(expected, abs=1e-4)
        assert greedy == all(int(logits[len(ctx) - 1 + j].argmax()) == tok for j, tok in enumerate(cont))

    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("a red ball. a blue box.",), 0)],
                                       disable_tqdm=True)
    assert rolling[0] < 0


def test_simple_evaluate_on_local_tasks_offline(tiny_model_dir: Path) -> None:
    import lm_eval

    import mmbench_cli  # noqa: F401
    from mmbench_cli.evaluate.text import task_manager

    manager = task_manager(metadata={"num_train_images": 24, "num_test_images": 8})
    out = lm_eval.simple_evaluate(model="mm", model_args=f"path={tiny_model_dir}", task_manager=manager,
                                  tasks=["textcore", "mm_synth_perplexity", "mm_synth_cloze_gen"], limit=4,
                                  bootstrap_iters=0)
    results = out["results"]
    assert 0.0 <= results["mm_synth_facts"]["acc,none"] <= 1.0
    assert 0.0 <= results["mm_synth_cloze"]["acc,none"] <= 1.0
    assert results["mm_synth_perplexity"]["word_perplexity,none"] > 1.0
    assert any(key.startswith("exact_match,") for key in results["mm_synth_cloze_gen"])
    mean = (results["mm_synth_facts"]["acc,none"] + results["mm_synth_cloze"]["acc,none"]) / 2
    assert out["groups"]["textcore"]["acc,none"] == pytest.approx(mean)


@pytest.mark.slow
def test_mm_eval_text_tasks_via_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from mmbench_cli.cli import app

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir, ignore=shutil.ignore_patterns("eval"))
    user_tasks = tmp_path / "mytasks"
    user_tasks.mkdir()
    (user_tasks / "my_facts.yaml").write_text(
        "include: " + str(resource_path("evals", "mm_synth_facts.yaml")) + "\n"
        "task: my_facts\n"
    )
    result = CliRunner().invoke(app, ["eval", str(model_dir), "--tasks", "text:textcore", "text:my_facts",
                                      "--include-path", str(user_tasks)])
    assert result.exit_code == 0, result.output
    results = json.loads((model_dir / "eval" / "step_0.json").read_text())
    cell = results["tasks"]["text:textcore"]["0"]
    assert cell["family"] == "text" and cell["metric"] == "acc" and 0 <= cell["value"] <= 100
    assert results["summary"]["0"]["textcore"] == cell["value"]
    assert results["tasks"]["text:my_facts"]["0"]["value"] == results["tasks"]["text:mm_synth_facts"]["0"]["value"]
    samples = model_dir / "eval" / results["tasks"]["text:mm_synth_facts"]["0"]["samples"][0]
    assert samples.is_file() and len(samples.read_text().splitlines()) == results["tasks"]["text:mm_synth_facts"]["0"]["n"]

    # lm-eval runs every document of a text task, so --num-samples is not one of its inputs: no re-run
    before = samples.stat().st_mtime_ns
    again = CliRunner().invoke(app, ["eval", str(model_dir), "--tasks", "text:textcore", "text:my_facts",
                                     "--include-path", str(user_tasks), "--num-samples", "3"])
    assert again.exit_code == 0, again.output
    assert samples.stat().st_mtime_ns == before
    rerun = json.loads((model_dir / "eval" / "step_0.json").read_text())
    assert rerun["tasks"]["text:textcore"] == results["tasks"]["text:textcore"]

    bad = CliRunner().invoke(app, ["eval", str(model_dir), "--tasks", "text:no_such_task"])
    assert bad.exit_code == 2 and "unknown text task" in bad.output
