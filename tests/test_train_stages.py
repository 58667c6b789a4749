"""Training stages: ``train.init_from`` starts a run from another run's weights with its own optimizer and schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_loop import TINY
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.config import config_hash, load_config
from mmbench_cli.rundir import read_jsonl
from mmbench_cli.train.loop import pretrain

runner = CliRunner()


def test_init_from_starts_at_the_source_weights_and_names_the_source(tmp_path: Path) -> None:
    align = pretrain(load_config(None, [*TINY, "train.steps=3", "train.freeze_lm=true"]), tmp_path / "align",
                     progress=False)
    cfg = load_config(None, [*TINY, "train.steps=2", f"train.init_from={align}", "model.connector_pos_emb=true"])
    assert config_hash(cfg) != config_hash(load_config(None, [*TINY, "train.steps=2", "model.connector_pos_emb=true"]))
    full = pretrain(cfg, tmp_path / "full", progress=False)

    source = load_file(str(align / "checkpoints/step_3/model.safetensors"))
    start = load_file(str(full / "checkpoints/step_0/model.safetensors"))
    assert all(torch.equal(source[name], start[name]) for name in source)  # step 0 = the source's last weights
    meta = json.loads((full / "meta.json").read_text())
    init = meta["init_from"]
    assert init["path"] == str(align) and init["step"] == 3
    assert init["content_hash"] == json.loads((align / "checkpoints/step_3/checkpoint.json").read_text())["content_hash"]
    new = [name for name in start if name not in source]  # the connector's position embedding: fresh, reported
    assert new and sorted(init["missing"]) == sorted(new)
    assert [row["step"] for row in read_jsonl(full / "metrics.jsonl")] == [1, 2]  # its own schedule from step 0
    assert read_jsonl(full / "metrics.jsonl")[0]["lr"] == read_jsonl(align / "metrics.jsonl")[0]["lr"]  # warm-up again


def test_init_from_a_missing_run_or_step_is_one_line_exit_2(tmp_path: Path) -> None:
    for spec, message in ((str(tmp_path / "nothing"), "no run directory with checkpoints"),
                          (f"{tmp_path / 'nothing'}:7", "no run directory with checkpoints")):
        result = runner.invoke(app, ["pretrain", *TINY, "train.steps=1", f"train.init_from={spec}",
                                     "--out", str(tmp_path / "run")])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_grid_stage_starts_from_the_cell_it_names_and_runs_after_it(tmp_path: Path) -> None:
    from mmbench_cli.ablate.grid import build_plan, link_stages, stage_waves

    plan = build_plan(str(Path(__file__).parents[1] / "ablations" / "stages.yaml"), [], [])
    link_stages(plan, tmp_path / "grid")
    cells = {cell.id: cell for cell in plan.cells}
    for seed in (0, 1):
        two = cells[f"recipe=two-stage,seed={seed}"]
        assert two.after == (f"recipe=align,seed={seed}",)  # the align cell of the same seed
        assert two.config.train.init_from == str(tmp_path / "grid" / f"recipe=align,seed={seed}")
        assert cells[f"recipe=one-stage,seed={seed}"].config.train.init_from is None
    waves = [sorted(cell.id for cell in wave) for wave in stage_waves(plan.cells)]
    assert len(waves) == 2 and all(cell.startswith("recipe=two-stage") for cell in waves[1])
    link_stages(plan, tmp_path / "grid")  # idempotent (mm ablate links, run_grid links again)
    assert cells["recipe=two-stage,seed=0"].after == ("recipe=align,seed=0",)
    assert plan.to_json()["cells"][2]["after"] == ["recipe=align,seed=0"]


def test_bad_stage_references_are_one_line_errors(tmp_path: Path) -> None:
    from mmbench_cli.ablate.grid import build_plan, link_stages
    from mmbench_cli.errors import MMError

    def plan_with(values: str) -> None:
        grid = tmp_path / "g.yaml"
        grid.write_text(f"axes:\n  recipe:\n    values:\n{values}")
        link_stages(build_plan(str(grid), [], []), tmp_path / "out")

    with pytest.raises(MMError, match="no axis has the value 'warmup'"):
        plan_with('      a: {train.steps: 2}\n      b: {train.init_from: "${warmup}"}\n')
    with pytest.raises(MMError, match="names the cell itself"):
        plan_with('      a: {train.init_from: "${a}"}\n      b: {train.steps: 2}\n')
    with pytest.raises(MMError, match="a cycle"):
        plan_with('      a: {train.init_from: "${b}"}\n      b: {train.init_from: "${a}", train.steps: 3}\n')


def _answer_only(cfg_overrides: list[str], sources=None) -> tuple[str, str, list]:
    """The first packed row of an sft stream: (all its text, the text its labels train on, its samples)."""
    from mmbench_cli.data.mixture import Planner, sources_from_config, training_mix
    from mmbench_cli.data.synthetic import tokenizer_source
    from mmbench_cli.model.tokenizer import get_tokenizer

    cfg = load_config(None, cfg_overrides)
    tokenizer = get_tokenizer(cfg.model, tokenizer_source(cfg.data))
    planner = Planner(sources if sources is not None else sources_from_config(cfg), training_mix(cfg),
                      cfg.data.seq_len, 0, tokenizer, cfg.model.num_image_tokens)
    row = planner.plan_row(planner.initial_state())
    trained = tokenizer.decode([token for token, label in zip(row.input_ids, row.labels, strict=True) if label != -100])
    return tokenizer.decode(row.input_ids[: row.length]), trained, planner.sources[0].samples


def test_sft_trains_on_the_answers_of_synthetic_dialogues_only(tmp_path: Path) -> None:
    text, trained, dialogues = _answer_only([*TINY, "train.stage=sft", "data.seq_len=128", "model.max_seq_len=128"])
    first = dialogues[0]
    assert len(first.turns) >= 3 and first.image is not None  # multi-turn questions about one scene
    assert text.count("Question:") >= 2 and "Question:" not in trained and "Short answer" not in trained
    answers = {answer for dialogue in dialogues for _, answer in dialogue.turns}
    pieces = [piece.strip() for piece in trained.split("<|endofchunk|>") if piece.strip()]
    assert pieces and all(piece in answers for piece in pieces)  # what is trained: answers, nothing else
    assert trained.count("<|endofchunk|>") == text.count("Short answer:")  # every answer trained, closed by EOC

    run = pretrain(load_config(None, [*TINY, "train.stage=sft", "train.steps=2", "train.log_every=1"]),
                   tmp_path / "sft", progress=False)
    rows = read_jsonl(run / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2] and all("loss/instruction" in row for row in rows)
    assert not any("loss/caption" in row for row in rows)


def test_sft_reads_llava_dialogues_from_local_files(tmp_path: Path) -> None:
    from PIL import Image

    from mmbench_cli.config import DatasetSpec
    from mmbench_cli.data.formats import load_dataset_spec
    from mmbench_cli.data.mixture import Source

    Image.new("RGB", (12, 10), (200, 30, 30)).save(tmp_path / "bus.png")
    (tmp_path / "llava.json").write_text(json.dumps([{"id": "bus", "image": "bus.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the bus?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "Is it moving?"}, {"from": "gpt", "value": "no"}]}]))
    dialogues = load_dataset_spec(DatasetSpec(format="llava", path=str(tmp_path / "llava.json"),
                                              images=str(tmp_path), kind="instruction"))
    assert dialogues[0].turns == [("What colour is the bus?", "red"), ("Is it moving?", "no")]
    text, trained, _ = _answer_only([*TINY, "train.stage=sft"], [Source("llava", "instruction", dialogues)])
    assert "What colour is the bus? Short answer: red<|endofchunk|>Question: Is it moving?" in text
    assert trained.split() == ["red<|endofchunk|>", "no<|endofchunk|>"] or trained.replace(" ", "") == \
        "red<|endofchunk|>no<|endofchunk|>"
