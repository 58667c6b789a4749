"""mm pretrain --stage encoder: CLIP, bag-of-words and MAE objectives train a tiny ViT whose dir is a model.encoder value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmbench_cli.config import load_config
from mmbench_cli.rundir import read_jsonl, read_status
from mmbench_cli.train.loop import pretrain

ENCODER_TINY = [
    "train.stage=encoder", "model.image_size=32", "data.num_train_images=48", "data.num_val_images=16",
    "data.num_test_images=8", "train.batch_size=16", "train.warmup_steps=2", "train.log_every=5", "train.lr=1e-3",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_an_encoder_that_did_not_learn_is_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CLIP pre-training that never takes off (here: a learning rate of 1e-9) ends with its held-out retrieval near
    chance; the run says so on stderr and records ``near_chance`` in encoder_eval.json and meta.json (the report's
    encoders table shows it), so a collapsed encoder is not used silently."""
    from mmbench_cli.rundir import retrieval_near_chance as near_chance

    cfg = load_config(None, [*ENCODER_TINY, "train.encoder_objective=clip", "train.steps=2", "train.lr=1e-9",
                             "data.num_val_images=64"])
    run = pretrain(cfg, tmp_path / "enc", progress=False)
    scores = json.loads((run / "encoder_eval.json").read_text())
    assert scores["val_retrieval_top1"] < 4 * scores["val_retrieval_chance"] and scores["near_chance"] is True
    assert json.loads((run / "meta.json").read_text())["near_chance"] is True
    assert "near chance" in capsys.readouterr().err
    assert not near_chance({"val_retrieval_top1": 0.4375, "val_retrieval_chance": 1 / 128})
    assert near_chance({"val_retrieval_top1": 0.015625, "val_retrieval_chance": 1 / 128})  # the collapsed 32 px one
    assert not near_chance({"val_mae_loss": 0.4})  # MAE has no chance level
    assert not near_chance({"val_retrieval_top1": 0.125, "val_retrieval_chance": 1 / 16})  # too few pairs to judge


@pytest.mark.parametrize("objective", ["clip", "negclip", "twinclip", "bow", "attributes", "mae"])
def test_encoder_pretraining_learns_and_saves_a_usable_encoder(tmp_path: Path, objective: str) -> None:
    cfg = load_config(None, [*ENCODER_TINY, f"train.encoder_objective={objective}", "train.steps=30"])
    run = pretrain(cfg, tmp_path / "enc", progress=False)
    assert read_status(run) == "done"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "config.yaml", "encoder_eval.json"):
        assert (run / name).exists(), name
    losses = [row["loss"] for row in read_jsonl(run / "metrics.jsonl")]
    assert losses[-1] < losses[0]
    scores = json.loads((run / "encoder_eval.json").read_text())
    if objective in ("clip", "negclip", "twinclip"):
        assert 0.0 <= scores["val_retrieval_top1"] <= 1.0 and scores["val_pairs"] == 16
    elif objective == "bow":
        assert 0.0 <= scores["val_bow_r_precision"] <= 1.0 and scores["val_images"] == 16
        assert 0.0 < scores["val_bow_r_precision_prior"] < 1.0
    elif objective == "attributes":
        assert scores["val_images"] == 16 and scores["val_attributes_loss"] < losses[0]
        for head in ("cell_color", "cell_shape", "cell_size", "word", "count"):
            assert 0.0 <= scores[f"val_{head}_accuracy"] <= 1.0 and 0.0 < scores[f"val_{head}_majority"] <= 1.0
    else:
        assert scores["val_mae_loss"] < losses[0]

    # The saved dir is a model.encoder value: the MLLM built on it carries exactly the trained ViT weights.
    from safetensors.torch import load_file

    from mmbench_cli.data.synthetic import tokenizer_source
    from mmbench_cli.model import build_model

    mllm_cfg = load_config(None, ["model.lm=pythia-toy-1m", "model.image_size=32", "model.num_image_tokens=4",
                                  "data.seq_len=64", f"model.encoder={run}"])
    model = build_model(mllm_cfg.model, tokenizer_source(mllm_cfg.data))
    def tensors(state: dict[str, torch.Tensor]) -> list[bytes]:  # HF renames keys on save: compare values
        return sorted(t.detach().contiguous().numpy().tobytes() for t in state.values())

    saved = load_file(str(run / "model.safetensors"))
    assert saved and tensors(saved) == tensors(model.encoder.hf_model.state_dict())
    assert model.encode_images(torch.zeros(2, 3, 32, 32)).shape == (2, 4, model.lm.config.hidden_size)


def test_bag_of_words_targets_are_the_caption_tokens() -> None:
    """The bow objective's targets: one multi-hot row per caption over the tokenizer's ids, exactly the tokens the
    caption uses (each once, however often it repeats), special tokens left out."""
    from mmbench_cli.config import Config
    from mmbench_cli.data.synthetic import tokenizer_source
    from mmbench_cli.model.tokenizer import get_tokenizer
    from mmbench_cli.train.encoder_pretrain import bag_of_words

    cfg = Config()
    tokenizer = get_tokenizer(cfg.model, tokenizer_source(cfg.data))
    captions = ["a red circle on the left.", "two shapes: a blue square and the word owl."]
    targets = bag_of_words(tokenizer, captions, len(tokenizer))
    for row, caption in enumerate(captions):
        ids = set(tokenizer(caption, add_special_tokens=False)["input_ids"]) - set(tokenizer.all_special_ids)
        assert set(targets[row].nonzero().flatten().tolist()) == ids and ids
    assert set(targets.unique().tolist()) == {0.0, 1.0}  # "a" and "the" repeat in a caption: still one target each


def test_twinclip_needs_the_synthetic_world() -> None:
    """twinclip draws each training image's counterfactual twin, which only the synthetic world can: with local data
    it is a one-line error naming the field and the alternative, before any training."""
    from mmbench_cli.errors import MMError
    from mmbench_cli.train.encoder_pretrain import _twin_data

    cfg = load_config(None, [*ENCODER_TINY, "train.encoder_objective=twinclip"])
    local = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": "local"})})
    with pytest.raises(MMError, match="twinclip needs the synthetic world"):
        _twin_data(local, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_attribute_labels_describe_the_scene(tmp_path: Path) -> None:
    """The attributes objective's labels: in each of the 3x3 cells the object's colour, shape and size (class 0:
    empty; the text's cell: the "text" shape class), the written word and the object count, read off the scene
    that the renderer draws."""
    from mmbench_cli.data.synthetic import COLORS, V4_SHAPES, V4_WORDS, SyntheticWorld, attribute_classes, scene_attributes
    from mmbench_cli.train.encoder_pretrain import attribute_targets

    world = SyntheticWorld(seed=0, num_train_images=8, num_val_images=2, num_test_images=2, cache_dir=str(tmp_path), version=4)
    classes = attribute_classes(4)
    seen_word = False
    for index in range(8):
        scene = world.scene("train", index)
        labels = scene_attributes(scene)
        assert labels["count"] == [len(scene.objects)]
        assert sum(1 for value in labels["cell_color"] if value) == len(scene.objects)
        for obj in scene.objects:
            cell = obj.cell[0] * 3 + obj.cell[1]
            assert labels["cell_color"][cell] == tuple(COLORS).index(obj.color) + 1
            assert labels["cell_shape"][cell] == V4_SHAPES.index(obj.shape) + 1
        if scene.text:
            seen_word = True
            assert labels["word"] == [V4_WORDS.index(scene.text) + 1]
            assert labels["cell_shape"][scene.text_cell[0] * 3 + scene.text_cell[1]] == classes["cell_shape"] - 1
        else:
            assert labels["word"] == [0]
        for name, values in labels.items():
            assert all(0 <= value < classes[name] for value in values), name
    assert seen_word
    targets = attribute_targets(world.captions("train")[:3])
    assert targets["cell_color"].shape == (3, 9) and targets["word"].shape == (3, 1)


def test_attributes_needs_the_synthetic_world() -> None:
    """Only the synthetic world labels its scenes: with local data the attributes objective is a one-line error."""
    from mmbench_cli.errors import MMError
    from mmbench_cli.train.encoder_pretrain import _attribute_classes

    cfg = load_config(None, [*ENCODER_TINY, "train.encoder_objective=attributes"])
    local = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": "local"})})
    with pytest.raises(MMError, match="attributes needs the synthetic world"):
        _attribute_classes(local)
