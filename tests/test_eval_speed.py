"""Evaluation speed-ups must not change answers: length-bucketed batches, and the peer-loop benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from model_fixtures import MECHANICS

TINY = [*MECHANICS, "data.num_train_images=24", "data.num_val_images=4", "data.num_test_images=8", "model.lm=pythia-toy-2m"]
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def tiny_model():  # noqa: ANN201
    """A randomly initialised tiny MLLM and its config (its greedy answers differ from query to query)."""
    import torch

    from mmbench_cli.config import load_config
    from mmbench_cli.data.synthetic import tokenizer_source
    from mmbench_cli.model import build_model

    torch.manual_seed(0)
    cfg = load_config(None, TINY)
    return build_model(cfg.model, tokenizer_source(cfg.data)).eval(), cfg


def test_length_buckets_group_similar_lengths_and_keep_every_query_once() -> None:
    from mmbench_cli.evaluate.runner import length_buckets

    lengths = [30, 10, 20, 10, 30, 20, 25]
    batches = length_buckets(lengths, 3)
    assert batches == [[1, 3, 2], [5, 6, 0], [4]]  # shortest first; equal lengths keep query order
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert length_buckets([7] * 5, 2) == [[0, 1], [2, 3], [4]]  # equal lengths: query-order batches
    assert length_buckets([], 4) == []


@pytest.mark.parametrize("task", ["synthetic-caption", "synthetic-vqa"])
def test_bucketed_unbucketed_and_one_by_one_cells_give_identical_records(tiny_model, task: str,  # noqa: ANN001
                                                                         tmp_path: Path, one_torch_thread) -> None:  # noqa: ANN001
    from mmbench_cli.data.templates import encode_interleaved
    from mmbench_cli.evaluate import fewshot
    from mmbench_cli.evaluate.request import EvalSettings
    from mmbench_cli.evaluate.runner import ImageFeatureCache, TaskData, length_buckets, run_cell, sample_id
    from mmbench_cli.evaluate.tasks import resolve_task

    model, cfg = tiny_model
    data = TaskData(resolve_task(task), cfg.data, 8, need_demos=True)
    shots = 2

    def cell(batch_size: int, bucket: bool, name: str) -> list[dict]:
        settings = EvalSettings(num_samples=8, demo_selection="random", max_new_tokens=6, num_beams=1,
                                text_only_zero_shot=False, batch_size=batch_size)
        path = tmp_path / f"{name}.jsonl"
        result = run_cell(model, data, shots, 0, settings, ImageFeatureCache(model), path, bucket_by_length=bucket)
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert result.n == len(records) == 8
        return records

    bucketed, query_order, one_by_one = cell(3, True, "bucketed"), cell(3, False, "plain"), cell(1, False, "single")
    assert bucketed == query_order == one_by_one  # predictions, scores, raw generations, demos, in query order
    assert [r["id"] for r in bucketed] == [sample_id(q) for q in data.queries]
    assert len({r["raw"] for r in bucketed}) > 1  # the untrained model does not answer everything alike
    if task == "synthetic-caption":  # captions vary in length: the buckets really reorder and regroup queries
        demos = fewshot.select_random(data.pool(0, False), len(data.queries), shots, 0)
        lengths = [len(encode_interleaved(model.tokenizer, fewshot.build_prompt(d, q)[0], model.num_image_tokens))
                   for d, q in zip(demos, data.queries, strict=True)]
        assert len(set(lengths)) > 1
        assert length_buckets(lengths, 3) != [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_bench_eval_peer_loop_gives_our_answers(tmp_path: Path, one_torch_thread) -> None:  # noqa: ANN001
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_eval
    finally:
        sys.path.remove(str(BENCHMARKS))
    out = tmp_path / "bench_eval.json"
    result = bench_eval.main(["--num-samples", "6", "--shots", "0", "2", "--rounds", "1", "--batch-size", "4",
                              "--naive-samples", "2", "--ceiling-seconds", "0.05", "--out", str(out), *TINY])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [row["shots"] for row in result["rows"]] == [0, 2]
    for row in result["rows"]:
        assert row["n"] == 6 and row["same_answers_vs_peer"] and row["same_raw_generations"] == 6
        assert row["same_demos"] and row["shared_cache_same_answers"] and row["store_same_answers"]
        assert row["speedup_vs_peer"] > 0 and 0 < row["ours_eval_mfu"] and 0 < row["peer_eval_mfu"]
        low, high = row["speedup_median_ci95"]
        assert low <= row["speedup_vs_peer"] <= high
        peer = row["peer_breakdown_fastest_round"]
        assert peer["images_encoded"] == 6 * (row["shots"] + 1)  # the peer encodes every prompt image
        assert peer["prefill_real_tokens"] <= peer["prefill_tokens"] and peer["decode_steps"] >= 0
    assert all(row["same_answers_vs_naive"] == 2 for row in result["naive_rows"])
