"""The training stream: exact mix proportions, packing, determinism, exact resumption, DDP sharding, workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmbench_cli.config import load_config
from mmbench_cli.data.mixture import TrainStream, weighted_round_robin
from mmbench_cli.data.synthetic import tokenizer_source
from mmbench_cli.data.templates import IMAGE_TOKEN
from mmbench_cli.errors import MMError
from mmbench_cli.model.tokenizer import get_tokenizer

NUM_IMAGE_TOKENS = 4
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def _config(*overrides: str):  # noqa: ANN202
    return load_config(None, ["data.num_train_images=60", "data.num_val_images=4", "data.num_test_images=4",
                              "model.image_size=32", "data.seq_len=96", *overrides])


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    cfg = _config()
    return get_tokenizer(cfg.model, tokenizer_source(cfg.data))


def _stream(tokenizer, *overrides: str) -> TrainStream:  # noqa: ANN001
    return TrainStream(_config(*overrides), tokenizer, NUM_IMAGE_TOKENS, MEAN, STD)


def _same(a: dict, b: dict) -> bool:
    tensors = ("input_ids", "attention_mask", "labels")
    same = all(torch.equal(a[k], b[k]) for k in tensors) and a["data_type"] == b["data_type"]
    same = same and a["sample_ids"] == b["sample_ids"]
    if a["images"] is None or b["images"] is None:
        return same and a["images"] is None and b["images"] is None
    return same and torch.equal(a["images"], b["images"])


def test_round_robin_is_exact_over_10k() -> None:
    mix = {"caption": 0.45, "interleaved": 0.45, "text": 0.10}
    credits: dict[str, float] = {}
    picks = [weighted_round_robin(mix, credits) for _ in range(10_000)]
    for key, share in mix.items():
        assert abs(picks.count(key) / len(picks) - share) < 0.01
        assert abs(picks[:777].count(key) - 777 * share) < 1  # every prefix, not just the long run


def test_stream_types_follow_the_mix_over_10k_rows(tokenizer) -> None:  # noqa: ANN001
    stream = _stream(tokenizer, "data.data_mix={caption: 0.5, interleaved: 0.3, text: 0.2}")
    state = stream.planner.initial_state()
    rows = stream.planner.plan_batch(state, 10_000)  # packing only; no image decoding
    types = [row.data_type for row in rows]
    for key, share in {"caption": 0.5, "interleaved": 0.3, "text": 0.2}.items():
        assert abs(types.count(key) / len(types) - share) < 0.01
    assert state["rows"] == 10_000


def test_packed_rows(tokenizer) -> None:  # noqa: ANN001
    stream = _stream(tokenizer)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    for _ in range(3):
        batch = stream.next_batch(8)
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (8, 96)
        is_image = batch["input_ids"] == image_id
        assert torch.all(batch["labels"][is_image] == -100)
        assert torch.all(batch["labels"][batch["attention_mask"] == 0] == -100)
        text = batch["labels"][(~is_image) & (batch["attention_mask"] == 1)]
        assert torch.all(text >= 0)
        # each image contributes exactly NUM_IMAGE_TOKENS tokens, in order
        num_images = 0 if batch["images"] is None else batch["images"].shape[0]
        assert int(is_image.sum()) == num_images * NUM_IMAGE_TOKENS
        if batch["images"] is not None:
            assert batch["images"].shape[1:] == (3, 32, 32) and batch["images"].dtype == torch.float32
        for row, data_type in enumerate(batch["data_type"]):  # one data type per row
            sources = {sample_id.split("/")[0] for sample_id in batch["sample_ids"][row]}
            assert sources == {f"synthetic-{data_type}"}
            if data_type == "text":
                assert not is_image[row].any()
        # padding only on the right
        mask = batch["attention_mask"]
        assert torch.all(mask[:, :-1] >= mask[:, 1:])


def test_deterministic_and_seed_dependent(tokenizer) -> None:  # noqa: ANN001
    a, b, c = _stream(tokenizer), _stream(tokenizer), _stream(tokenizer, "seed=1")
    batches_a = [a.next_batch(6) for _ in range(3)]
    batches_b = [b.next_batch(6) for _ in range(3)]
    assert all(_same(x, y) for x, y in zip(batches_a, batches_b, strict=True))
    assert not _same(batches_a[0], c.next_batch(6))


def test_resume_continues_with_the_next_samples(tokenizer) -> None:  # noqa: ANN001
    reference = _stream(tokenizer)
    full = [reference.next_batch(5) for _ in range(6)]
    interrupted = _stream(tokenizer)
    for _ in range(4):
        interrupted.next_batch(5)
    saved = json.loads(json.dumps(interrupted.state_dict()))  # the state is plain JSON
    resumed = _stream(tokenizer)
    resumed.load_state_dict(saved)
    assert resumed.rows_seen == 20
    assert _same(resumed.next_batch(5), full[4]) and _same(resumed.next_batch(5), full[5])
    # ...and the samples pick up exactly where they stopped: no repeats, nothing skipped
    seen = [s for batch in full[:4] for row in batch["sample_ids"] for s in row]
    after = [s for batch in full[4:] for row in batch["sample_ids"] for s in row]
    assert len(set(seen)) == len(seen) and not set(seen) & set(after)
    with pytest.raises(MMError, match="seed"):
        _stream(tokenizer, "seed=5").load_state_dict(saved)


def test_ddp_ranks_split_each_global_batch(tokenizer) -> None:  # noqa: ANN001
    whole = _stream(tokenizer).next_batch(6)
    ranks = [_stream(tokenizer).next_batch(6, rank=rank, world_size=2) for rank in range(2)]
    for rank, part in enumerate(ranks):
        assert torch.equal(part["input_ids"], whole["input_ids"][rank::2])
        assert part["data_type"] == whole["data_type"][rank::2]
    images = sum(0 if part["images"] is None else part["images"].shape[0] for part in ranks)
    assert images == (0 if whole["images"] is None else whole["images"].shape[0])


def test_workers_give_the_same_batches_and_resume(tokenizer) -> None:  # noqa: ANN001
    inline = _stream(tokenizer)
    expected = [inline.next_batch(4) for _ in range(5)]
    workers = _stream(tokenizer, "data.num_workers=2")
    got = [workers.next_batch(4) for _ in range(3)]
    state = workers.state_dict()
    workers.close()
    assert all(_same(x, y) for x, y in zip(got, expected[:3], strict=True))
    again = _stream(tokenizer, "data.num_workers=2")
    again.load_state_dict(state)
    assert _same(again.next_batch(4), expected[3])
    again.close()


def test_local_sources_and_missing_type(tmp_path: Path, tokenizer) -> None:  # noqa: ANN001
    from PIL import Image

    Image.new("RGB", (20, 20), "red").save(tmp_path / "a.png")
    (tmp_path / "caps.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [{"image_id": 1, "id": 1, "caption": "a red square."}]}))
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"text": "the apple is red."}) + "\n")
    datasets = (f"data.datasets=[{{format: coco-captions, path: {tmp_path / 'caps.json'}, images: {tmp_path}}}, "
                f"{{format: text, path: {tmp_path / 'corpus.jsonl'}}}]")
    stream = _stream(tokenizer, "data.source=local", datasets, "data.data_mix={caption: 0.75, interleaved: 0, text: 0.25}")
    assert stream.counts() == {"caption": 1, "text": 1} and stream.num_bad == 0
    batch = stream.next_batch(8)
    assert batch["data_type"].count("caption") == 6 and batch["data_type"].count("text") == 2
    assert batch["images"] is not None and batch["images"].shape[0] >= 6
    with pytest.raises(MMError, match="data.data_mix: interleaved"):
        _stream(tokenizer, "data.source=local", datasets)


def test_truncation_report_counts_what_a_short_row_cuts(tokenizer) -> None:  # noqa: ANN001
    """``Planner.truncation``: the share of each type's samples and tokens a row of ``data.seq_len`` cuts off, the
    number checked against encoding the same samples by hand."""
    from mmbench_cli.data.mixture import encode_interleaved, sample_text

    short = _stream(tokenizer, "data.seq_len=64").planner.truncation(per_type=40)
    long = _stream(tokenizer, "data.seq_len=4096", "model.max_seq_len=4096").planner.truncation(per_type=40)
    assert set(short) == {"caption", "interleaved", "text"}
    assert all(cut == {"samples_cut": 0.0, "tokens_cut": 0.0} for cut in long.values())
    planner = _stream(tokenizer, "data.seq_len=64").planner
    (source,) = planner.by_type["interleaved"]
    lengths = [len(encode_interleaved(tokenizer, sample_text(doc, 0)[0], NUM_IMAGE_TOKENS))
               for doc in planner.sources[source].samples[:40]]
    expected = sum(length > 64 for length in lengths) / len(lengths)
    assert short["interleaved"]["samples_cut"] == pytest.approx(expected) and expected > 0.5
    # a cut keeps at most 64 tokens of a sample, so at least this share of tokens is dropped
    floor = sum(max(length - 64, 0) for length in lengths) / sum(lengths)
    assert floor <= short["interleaved"]["tokens_cut"] < floor + 0.05
    assert short["caption"]["tokens_cut"] == 0.0  # a caption sample is far shorter than a row
