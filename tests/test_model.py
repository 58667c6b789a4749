"""The MLLM: registries build, image tokens splice in, loss skips image slots, save/load, generation."""

from __future__ import annotations

import itertools

import pytest
import torch

from mmbench_cli.config import ModelConfig
from mmbench_cli.data.synthetic import tokenizer_source
from mmbench_cli.data.templates import EOC_TOKEN, IMAGE_TOKEN, encode_interleaved
from mmbench_cli.errors import MMError
from mmbench_cli.model import build_model, load_model
from mmbench_cli.registry import CONNECTORS, ENCODERS, LMS

SOURCE = tokenizer_source()  # the synthetic-world corpus and our special tokens

IMAGE_SIZE = 32  # 4×4 = 16 patches of 8 px


def tiny_cfg(**overrides: object) -> ModelConfig:
    """A fast model config: 32 px images, the 1M-parameter LM."""
    values: dict[str, object] = {"image_size": IMAGE_SIZE, "patch_size": 8, "lm": "pythia-toy-1m",
                                 "connector": "avgpool", "num_image_tokens": 4, "max_seq_len": 128}
    values.update(overrides)
    return ModelConfig(**values)


def tokens_for(connector: str) -> int:
    """A token count every connector can produce at 32 px (one per patch for linear/mlp)."""
    return 16 if connector in ("linear", "mlp") else 4


def interleaved_batch(model, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, mask and random images for texts with <image> markers (images in reading order)."""
    rows = [encode_interleaved(model.tokenizer, text, model.num_image_tokens) for text in texts]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), model.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    num_images = sum(text.count(IMAGE_TOKEN) for text in texts)
    images = torch.randn(num_images, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(1))
    return ids, mask, images


@pytest.fixture(scope="module")
def model():
    """One tiny model shared by the read-only tests."""
    torch.manual_seed(0)
    return build_model(tiny_cfg(), SOURCE).eval()


def _check_image_tokens(model, cfg: ModelConfig) -> None:
    text = f"{IMAGE_TOKEN}Output: a red circle{EOC_TOKEN}{IMAGE_TOKEN}Output: two squares{EOC_TOKEN}"
    ids, mask, images = interleaved_batch(model, [text, text])
    with torch.no_grad():
        tokens = model.encode_images(images)
        out = model(ids, mask, images=images, labels=ids)
    assert tokens.shape == (4, cfg.num_image_tokens, model.lm.get_input_embeddings().embedding_dim)
    assert int((ids == model.image_token_id).sum()) == 4 * cfg.num_image_tokens
    assert out.logits.shape[:2] == ids.shape and torch.isfinite(out.loss)


@pytest.mark.parametrize(("encoder", "connector"), list(itertools.product(ENCODERS.names(), CONNECTORS.names())))
def test_every_encoder_and_connector_emits_declared_tokens(encoder: str, connector: str) -> None:
    cfg = tiny_cfg(encoder=encoder, connector=connector, num_image_tokens=tokens_for(connector))
    _check_image_tokens(build_model(cfg, SOURCE), cfg)


@pytest.mark.parametrize("lm", LMS.names())
def test_every_lm_builds_and_runs(lm: str) -> None:
    cfg = tiny_cfg(lm=lm)
    model = build_model(cfg, SOURCE)
    _check_image_tokens(model, cfg)
    size = lm.removeprefix("pythia-toy-").removesuffix("m")
    # ladder names state the parameter count at a 2048-token vocabulary (input + output embeddings)
    lm_cfg = model.lm.config
    at_2048 = model.param_counts()["lm"] - 2 * (lm_cfg.vocab_size - 2048) * lm_cfg.hidden_size
    assert 0.75 * float(size) < at_2048 / 1e6 < 1.25 * float(size)


@pytest.mark.slow
@pytest.mark.parametrize(("encoder", "connector", "lm"),
                         list(itertools.product(ENCODERS.names(), CONNECTORS.names(), LMS.names())))
def test_full_registry_product(encoder: str, connector: str, lm: str) -> None:
    cfg = tiny_cfg(encoder=encoder, connector=connector, lm=lm, num_image_tokens=tokens_for(connector))
    _check_image_tokens(build_model(cfg, SOURCE), cfg)


@pytest.mark.parametrize(("connector", "tokens", "expected"), [
    ("mlp", 4, "must be 16"), ("linear", 9, "must be 16"), ("avgpool", 5, "allowed values: 1, 4, 9, 16"),
    ("c-abstractor", 25, "allowed values: 1, 4, 9, 16"), ("attnpool", 17, "allowed values"),
])
def test_impossible_token_counts_name_the_allowed_values(connector: str, tokens: int, expected: str) -> None:
    with pytest.raises(MMError, match="model.num_image_tokens") as error:
        build_model(tiny_cfg(connector=connector, num_image_tokens=tokens), SOURCE)
    assert expected in error.value.message


def test_unknown_components_are_user_errors() -> None:
    with pytest.raises(MMError, match="model.connector 'nope'; choose from: attnpool"):
        build_model(tiny_cfg(connector="nope"), SOURCE)
    with pytest.raises(MMError, match="model.lm"):
        build_model(tiny_cfg(lm="gpt-17"), SOURCE)
    with pytest.raises(MMError, match="model.image_size: 30 is not a multiple"):
        build_model(tiny_cfg(image_size=30), SOURCE)


def test_images_fill_slots_in_reading_order(model) -> None:
    texts = [f"{IMAGE_TOKEN}a{IMAGE_TOKEN}b", f"c{IMAGE_TOKEN}d"]
    ids, mask, images = interleaved_batch(model, texts)
    with torch.no_grad():
        embeds = model.embed(ids, images)
        image_tokens = model.encode_images(images)
    slots = embeds[ids == model.image_token_id].view(3, model.num_image_tokens, -1)
    torch.testing.assert_close(slots, image_tokens)
    # precomputed image embeddings give the same logits as raw images
    with torch.no_grad():
        a = model(ids, mask, images=images).logits
        b = model(ids, mask, image_embeds=image_tokens).logits
    torch.testing.assert_close(a, b)


def test_loss_counts_text_tokens_only(model) -> None:
    ids, mask, images = interleaved_batch(model, [f"{IMAGE_TOKEN}Output: a red circle{EOC_TOKEN}"])
    with torch.no_grad():
        out = model(ids, mask, images=images, labels=ids)
        garbage = ids.masked_fill(ids == model.image_token_id, 7)  # labels at image slots must not matter
        assert torch.equal(model(ids, mask, images=images, labels=garbage).loss, out.loss)
    logits, targets = out.logits[0, :-1], ids[0, 1:]
    keep = targets != model.image_token_id
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, expected)


def test_save_load_gives_identical_logits(tmp_path) -> None:
    torch.manual_seed(3)
    model = build_model(tiny_cfg(connector="c-abstractor"), SOURCE).eval()
    model.save_pretrained(tmp_path / "m")
    assert {"model.safetensors", "mm_config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "m").iterdir()}
    loaded = load_model(tmp_path / "m")
    ids, mask, images = interleaved_batch(model, [f"{IMAGE_TOKEN}Output: x{EOC_TOKEN}{IMAGE_TOKEN}Output: y"])
    with torch.no_grad():
        assert torch.equal(model(ids, mask, images=images).logits, loaded(ids, mask, images=images).logits)
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert loaded.image_mean == model.image_mean and loaded.num_image_tokens == model.num_image_tokens


def test_load_rejects_a_dir_that_is_not_a_model(tmp_path) -> None:
    with pytest.raises(MMError, match="not a saved mmbench model"):
        load_model(tmp_path)
    (tmp_path / "mm_config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(MMError, match="damaged saved model"):
        load_model(tmp_path)


def test_generation_kv_cache_and_batching(model) -> None:
    texts = [f"{IMAGE_TOKEN}Output: a red{EOC_TOKEN}{IMAGE_TOKEN}Output:", f"{IMAGE_TOKEN}Question: what colour? Short answer:"]
    ids, mask, images = interleaved_batch(model, texts)
    cached = model.generate(ids, mask, images=images, max_new_tokens=6, stop_token_ids=[])
    uncached = model.generate(ids, mask, images=images, max_new_tokens=6, use_cache=False, stop_token_ids=[])
    assert cached.shape == (2, 6)
    assert torch.equal(cached, uncached)
    # each row alone (no padding) gives the same tokens as the left-padded batch
    first = model.generate(ids[:1, mask[0].argmax():], None, images=images[:2], max_new_tokens=6, stop_token_ids=[])
    second = model.generate(ids[1:, mask[1].argmax():], None, images=images[2:], max_new_tokens=6, stop_token_ids=[])
    assert torch.equal(cached, torch.cat([first, second]))
    beams = model.generate(ids, mask, images=images, max_new_tokens=4, num_beams=3, stop_token_ids=[])
    assert beams.shape == (2, 4)
    # ids past the tokenizer (the LM vocabulary is padded to a multiple of 64) are never generated
    assert max(int(cached.max()), int(beams.max())) < len(model.tokenizer)


def test_generation_stops_at_end_of_chunk(model) -> None:
    ids, mask, images = interleaved_batch(model, [f"{IMAGE_TOKEN}Output:"])
    first = model.generate(ids, mask, images=images, max_new_tokens=1, stop_token_ids=[])
    out = model.generate(ids, mask, images=images, max_new_tokens=5, stop_token_ids=[int(first[0, 0])])
    assert out.shape[1] == 1  # stopped right after emitting the stop token


def test_param_counts_and_flops(model) -> None:
    counts = model.param_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == counts["encoder"] + counts["connector"] + counts["lm"]
    lm = model.lm.config
    matmul_params = counts["lm"] - counts["lm_embedding"]
    assert model.lm_flops_per_token(64) == 6 * matmul_params + 12 * lm.num_hidden_layers * lm.hidden_size * 64
    one, two = model.flops_per_sample(64, num_images=1), model.flops_per_sample(64, num_images=2)
    assert two - one == model.image_flops() > 0
    # the image path costs at least the encoder's 6·N·patches (ViT matmuls; attention and convs add more)
    patches = (IMAGE_SIZE // 8) ** 2
    assert model.image_flops() >= 6 * (counts["encoder"] - 2 * 10**4) * patches
    # a frozen encoder (train.freeze_encoder) runs forward only: 2 of its 3 forward-equivalents are not spent
    trainable = model.image_flops()
    model.encoder.requires_grad_(False)
    try:
        frozen = model.image_flops()
        assert trainable - frozen >= 4 * (counts["encoder"] - 2 * 10**4) * patches and frozen > trainable / 3
    finally:
        model.encoder.requires_grad_(True)
    assert model.image_flops() == trainable


def test_saved_model_names_its_special_tokens_and_old_saves_still_load(tmp_path) -> None:
    import json

    model = build_model(tiny_cfg(), SOURCE)
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "mm_config.json").read_text())
    assert meta["special_tokens"] == dict(SOURCE.special_tokens)
    del meta["special_tokens"]  # as saved before format version 2: only the image token's id
    meta["format_version"] = 1
    (tmp_path / "m" / "mm_config.json").write_text(json.dumps(meta))
    old = load_model(tmp_path / "m")
    assert (old.image_token_id, old.eoc_token_id, old.eos_token_id, old.pad_token_id) == (
        model.image_token_id, model.eoc_token_id, model.eos_token_id, model.pad_token_id)


class _TinySource:
    """A caller-supplied tokenizer source: the model trains on whatever corpus and special tokens it is given."""

    def __init__(self, cache_dir: str, special_tokens: dict[str, str]) -> None:
        self.cache_dir = cache_dir
        self.special_tokens = special_tokens

    def corpus(self) -> list[str]:
        return ["Output: a red circle above two blue squares", "Question: what colour? Short answer: red"] * 20


def test_tokenizer_trains_on_the_callers_corpus_and_special_tokens(tmp_path) -> None:
    from mmbench_cli.model.tokenizer import SPECIAL_ROLES, get_tokenizer

    ours = _TinySource(str(tmp_path), {"eos": "<e>", "pad": "<p>", "image": "<img>", "eoc": "<c>"})
    tokenizer = get_tokenizer(ModelConfig(vocab_size=300), ours)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == [ours.special_tokens[r] for r in SPECIAL_ROLES]
    assert tokenizer.eos_token == "<e>" and tokenizer.pad_token == "<p>"
    assert tokenizer("<img>Output:<c>", add_special_tokens=False)["input_ids"][0] == 2
    # same corpus (same cache entry), other special tokens: the cached tokenizer is not reused
    other = _TinySource(str(tmp_path), {"eos": "<E>", "pad": "<P>", "image": "<IMG>", "eoc": "<C>"})
    assert get_tokenizer(ModelConfig(vocab_size=300), other).convert_ids_to_tokens([2, 3]) == ["<IMG>", "<C>"]


@pytest.mark.parametrize("connector", sorted(CONNECTORS.names()))
def test_connector_position_embedding_tells_identical_patches_apart(connector: str) -> None:
    """With ``connector_pos_emb`` a uniform image gives image tokens that differ by where they are; without it, a
    per-patch connector gives every token the same vector (nothing says where a token looked)."""
    torch.manual_seed(0)
    tokens = tokens_for(connector)
    with_pos = build_model(tiny_cfg(connector=connector, num_image_tokens=tokens, connector_pos_emb=True),
                           SOURCE).eval()
    without = build_model(tiny_cfg(connector=connector, num_image_tokens=tokens), SOURCE).eval()
    assert with_pos.connector.pos_emb is not None and without.connector.pos_emb is None
    assert not without.config.connector_pos_emb  # the default
    features = torch.ones(1, 16, with_pos.encoder.hidden_size)
    with torch.no_grad():
        out_with, out_without = with_pos.connector(features)[0], without.connector(features)[0]
    assert not torch.allclose(out_with[0], out_with[-1], atol=1e-6)
    if connector in ("linear", "mlp", "avgpool"):
        assert torch.allclose(out_without[0], out_without[-1], atol=1e-6)


def test_a_model_saved_before_connector_position_embeddings_loads_without_one(tmp_path) -> None:
    """A saved model whose mm_config.json predates ``connector_pos_emb`` had none: it loads strictly, as it was."""
    import json

    torch.manual_seed(4)
    model = build_model(tiny_cfg(connector_pos_emb=False), SOURCE).eval()
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "mm_config.json").read_text())
    del meta["model"]["connector_pos_emb"]
    (tmp_path / "m" / "mm_config.json").write_text(json.dumps(meta))
    loaded = load_model(tmp_path / "m")
    assert loaded.connector.pos_emb is None and not loaded.config.connector_pos_emb
    ids, mask, images = interleaved_batch(model, [f"{IMAGE_TOKEN}Output: x{EOC_TOKEN}"])
    with torch.no_grad():
        assert torch.equal(model(ids, mask, images=images).logits, loaded(ids, mask, images=images).logits)
