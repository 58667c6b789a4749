"""hf:<dir> components: tiny random CLIP / SigLIP / ViT vision and GPT-NeoX checkpoints saved in temp dirs."""

from __future__ import annotations

import shutil

import pytest
import torch

from mmbench_cli.config import ModelConfig
from mmbench_cli.data.synthetic import tokenizer_source
from mmbench_cli.data.templates import EOC_TOKEN, IMAGE_TOKEN, encode_interleaved
from mmbench_cli.errors import MMError
from mmbench_cli.model import build_model, load_model

SOURCE = tokenizer_source()  # the synthetic-world corpus and our special tokens

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}


def _vision_checkpoint(kind: str, directory) -> None:
    import transformers as tf

    torch.manual_seed(0)
    if kind == "clip":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**VISION))
    elif kind == "siglip":
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**VISION))
    elif kind == "vit":
        model = tf.ViTModel(tf.ViTConfig(**VISION), add_pooling_layer=False)
    else:  # a full CLIPModel: mm takes its vision tower
        text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                "vocab_size": 99}
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16))
    model.save_pretrained(str(directory))


def _lm_checkpoint(directory) -> None:
    """A tiny GPT-NeoX with its own tokenizer that lacks our image/chunk tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["Output: a red circle", "Question: what colour? Short answer: blue"] * 50, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(str(directory))
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    GPTNeoXForCausalLM(config).save_pretrained(str(directory))


def _forward(model, images: torch.Tensor) -> torch.Tensor:
    text = f"{IMAGE_TOKEN}Output: a red circle{EOC_TOKEN}{IMAGE_TOKEN}Output:"
    ids = torch.tensor([encode_interleaved(model.tokenizer, text, model.num_image_tokens)])
    with torch.no_grad():
        return model(ids, torch.ones_like(ids), images=images).logits


@pytest.mark.parametrize("kind", ["clip", "siglip", "vit", "clip-full"])
def test_hf_vision_checkpoint_loads_and_reloads_from_saved_dir(kind: str, tmp_path) -> None:
    ckpt = tmp_path / kind
    _vision_checkpoint(kind, ckpt)
    cfg = ModelConfig(encoder=f"hf:{ckpt}", image_size=32, connector="attnpool", num_image_tokens=4,
                      lm="pythia-toy-1m", max_seq_len=128)
    model = build_model(cfg, SOURCE).eval()
    assert model.encoder.hidden_size == 32
    images = torch.randn(2, 3, 32, 32)
    assert model.encode_images(images).shape == (2, 4, model.lm.config.hidden_size)
    if kind.startswith("clip"):
        assert model.image_mean[0] == pytest.approx(0.48145466)
    logits = _forward(model, images)
    model.save_pretrained(tmp_path / "saved")
    shutil.rmtree(ckpt)  # the saved model must not need the original checkpoint
    reloaded = load_model(tmp_path / "saved")
    assert torch.equal(_forward(reloaded, images), logits)


def test_hf_encoder_at_another_resolution_interpolates_positions(tmp_path) -> None:
    _vision_checkpoint("siglip", tmp_path / "siglip")
    cfg = ModelConfig(encoder=f"hf:{tmp_path / 'siglip'}", image_size=48, connector="mlp", num_image_tokens=36,
                      lm="pythia-toy-1m", max_seq_len=256)
    model = build_model(cfg, SOURCE)
    assert model.encode_images(torch.randn(1, 3, 48, 48)).shape[1] == 36


def test_hf_lm_and_tokenizer_gain_special_tokens(tmp_path) -> None:
    _lm_checkpoint(tmp_path / "neox")
    cfg = ModelConfig(lm=f"hf:{tmp_path / 'neox'}", tokenizer=f"hf:{tmp_path / 'neox'}", image_size=32,
                      connector="avgpool", num_image_tokens=4, max_seq_len=128)
    model = build_model(cfg, SOURCE).eval()
    vocab = model.tokenizer.get_vocab()
    assert IMAGE_TOKEN in vocab and EOC_TOKEN in vocab and model.tokenizer.pad_token is not None
    assert model.lm.get_input_embeddings().num_embeddings >= len(model.tokenizer)
    assert model.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == model.image_token_id
    images = torch.randn(2, 3, 32, 32)
    logits = _forward(model, images)
    model.save_pretrained(tmp_path / "saved")
    shutil.rmtree(tmp_path / "neox")
    reloaded = load_model(tmp_path / "saved")
    assert torch.equal(_forward(reloaded, images), logits)
    new = reloaded.generate(*_prompt(reloaded), images=images[:1], max_new_tokens=3, stop_token_ids=[])
    assert new.shape == (1, 3)


def _prompt(model) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([encode_interleaved(model.tokenizer, f"{IMAGE_TOKEN}Output:", model.num_image_tokens)])
    return ids, torch.ones_like(ids)


def test_pickle_only_checkpoint_is_refused(tmp_path) -> None:
    _vision_checkpoint("vit", tmp_path / "vit")
    (tmp_path / "vit" / "model.safetensors").rename(tmp_path / "vit" / "pytorch_model.bin")
    with pytest.raises(MMError, match="safetensors"):
        build_model(ModelConfig(encoder=f"hf:{tmp_path / 'vit'}", image_size=32, num_image_tokens=4,
                                lm="pythia-toy-1m"), SOURCE)


def test_bare_encoder_dir_as_encoder_pretraining_saves_it(tmp_path) -> None:
    _vision_checkpoint("vit", tmp_path / "run" / "encoder")
    (tmp_path / "run" / "encoder" / "preprocessor_config.json").write_text(
        '{"image_mean": [0.1, 0.2, 0.3], "image_std": [0.9, 0.8, 0.7]}')
    cfg = ModelConfig(encoder=str(tmp_path / "run" / "encoder"), image_size=32, connector="linear",
                      num_image_tokens=16, lm="pythia-toy-1m", max_seq_len=128)
    model = build_model(cfg, SOURCE)
    assert model.image_mean == (0.1, 0.2, 0.3) and model.image_std == (0.9, 0.8, 0.7)
    assert model.encode_images(torch.randn(1, 3, 32, 32)).shape == (1, 16, model.lm.config.hidden_size)
    with pytest.raises(MMError, match="is not a directory"):
        build_model(cfg.model_copy(update={"encoder": str(tmp_path / "run" / "missing")}), SOURCE)


# ------------------------------------------------------------------------- model.tokenizer: auto (issue 15)
def _lm_dir_without_tokenizer(directory) -> None:
    _lm_checkpoint(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).unlink(missing_ok=True)


def test_auto_tokenizer_is_an_hf_lms_own(tmp_path) -> None:
    _lm_checkpoint(tmp_path / "neox")
    cfg = ModelConfig(lm=f"hf:{tmp_path / 'neox'}", image_size=32, connector="avgpool", num_image_tokens=4,
                      max_seq_len=128)
    assert cfg.tokenizer == "auto"
    model = build_model(cfg, SOURCE)
    vocab = model.tokenizer.get_vocab()
    assert "<eos>" in vocab and model.tokenizer.eos_token == "<eos>"  # the LM's own BPE, with its EOS
    rows = model.lm.get_input_embeddings().num_embeddings
    assert rows == len(model.tokenizer) and rows - 300 <= 3  # grown only by our image/chunk/pad tokens
    assert load_model_roundtrip(model, tmp_path).tokenizer.get_vocab() == vocab


def load_model_roundtrip(model, tmp_path):  # noqa: ANN001, ANN201
    model.save_pretrained(tmp_path / "saved")
    return load_model(tmp_path / "saved")


def test_unrelated_tokenizer_for_an_hf_lm_is_refused_unless_asked_for(tmp_path) -> None:
    _lm_dir_without_tokenizer(tmp_path / "bare")
    base = {"lm": f"hf:{tmp_path / 'bare'}", "image_size": 32, "connector": "avgpool", "num_image_tokens": 4,
            "max_seq_len": 128}
    with pytest.raises(MMError, match=r"auto found no tokenizer.*resize_embeddings=true") as refused:
        build_model(ModelConfig(**base), SOURCE)
    assert "\n" not in str(refused.value)
    with pytest.raises(MMError, match="synthetic-bpe is not the tokenizer of model.lm"):
        build_model(ModelConfig(**base, tokenizer="synthetic-bpe"), SOURCE)
    _lm_checkpoint(tmp_path / "own")
    other = tmp_path / "other-tokenizer"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "own"))
    tokenizer.add_tokens([f"extra{i}" for i in range(50)])  # 350 tokens for the 300 embedding rows
    tokenizer.save_pretrained(str(other))
    with pytest.raises(MMError, match="has 353 tokens with our special ones, for its 300 embedding rows"):
        build_model(ModelConfig(**base, tokenizer=f"hf:{other}"), SOURCE)
    model = build_model(ModelConfig(**base, resize_embeddings=True), SOURCE)  # asked for explicitly
    assert model.lm.get_input_embeddings().num_embeddings == len(model.tokenizer) > 300  # the synthetic BPE
    shared = build_model(ModelConfig(**base, tokenizer=f"hf:{tmp_path / 'own'}"), SOURCE)  # the same BPE elsewhere
    assert shared.lm.get_input_embeddings().num_embeddings == len(shared.tokenizer)


# ------------------------------------------------------------- a clean stderr before one-line errors (issue 15)
def _mm(*args: str):  # noqa: ANN202
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mmbench_cli.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_bad_resolution_and_tokenizer_are_one_line_before_any_weights_load(tmp_path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    tf.CLIPVisionModel(tf.CLIPVisionConfig(**{**VISION, "image_size": 28, "patch_size": 14})).save_pretrained(
        str(tmp_path / "clip14"))
    done = _mm("build", f"model.encoder=hf:{tmp_path / 'clip14'}", "model.image_size=64", "model.lm=pythia-toy-1m")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith("error:"), done.stderr
    assert "patch size 14" in done.stderr and done.stdout == ""
    _lm_dir_without_tokenizer(tmp_path / "bare")
    done = _mm("build", f"model.lm=hf:{tmp_path / 'bare'}", "model.image_size=32")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error:"), done.stderr
    assert "resize_embeddings" in done.stderr
    built = _mm("build", f"model.encoder=hf:{tmp_path / 'clip14'}", "model.image_size=28", "model.connector=mlp",
                "model.num_image_tokens=4", "model.lm=pythia-toy-1m")
    assert built.returncode == 0 and "Loading weights" not in built.stderr + built.stdout, built.stderr
