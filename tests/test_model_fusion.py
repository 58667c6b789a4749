"""model.fusion (issue 39): splice vs Flamingo's gated cross-attention (xattn) vs mPLUG-Owl2's modality-adaptive module
(mam): the LM intact at init, media masking, cached = uncached greedy, save/load, hf: LM layouts, 1-step training and
a 4-shot eval through the CLI, FLOP accounting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_fixtures import MECHANICS
from test_model import SOURCE, interleaved_batch, tiny_cfg
from typer.testing import CliRunner

from mmbench_cli.cli import app
from mmbench_cli.config import Config, ModelConfig, config_hash, load_config
from mmbench_cli.data.templates import EOC_TOKEN, IMAGE_TOKEN
from mmbench_cli.errors import MMError
from mmbench_cli.model import build_model, load_model
from mmbench_cli.model.fusion import media_index

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()
FUSIONS = ["splice", "xattn", "mam"]
PROMPTS = [f"{IMAGE_TOKEN}Output: a red circle{EOC_TOKEN}{IMAGE_TOKEN}Output:",
           f"Question: what? {IMAGE_TOKEN}Output: two{EOC_TOKEN}{IMAGE_TOKEN}Output: a"]


def _model(fusion: str, seed: int = 0, **overrides: object):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(fusion=fusion, **overrides), SOURCE).eval()


def _awaken(model) -> None:
    """Move the fusion off its identity init (open gates, twins unlike the text weights), as training would."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.fusion.named_parameters():
            scale = 1.0 if name.endswith("gate") else 0.05
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def test_default_fusion_is_splice_and_hash_neutral() -> None:
    assert ModelConfig().fusion == "splice" and ModelConfig().xattn_every == 1
    assert config_hash(Config()) == config_hash(load_config(None, ["model.fusion=splice", "model.xattn_every=1"]))
    assert config_hash(Config()) != config_hash(load_config(None, ["model.fusion=xattn"]))
    with pytest.raises(MMError, match="unknown model.fusion 'perceiver'; choose from: mam, splice, xattn"):
        build_model(tiny_cfg(fusion="perceiver"), SOURCE)


def test_splice_model_is_unchanged_by_the_fusion_option() -> None:
    """splice adds no parameters and no state-dict keys: earlier checkpoints load as before."""
    model = _model("splice")
    assert not list(model.fusion.parameters()) and "fusion" not in model.param_counts()
    assert not any(key.startswith("fusion.") for key in model.state_dict())


def test_xattn_with_closed_gates_reads_text_as_the_bare_lm() -> None:
    model = _model("xattn")
    ids, mask, images = interleaved_batch(model, PROMPTS)
    with torch.no_grad():
        fused = model(ids, mask, images=images).logits
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        bare = model.lm(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        assert torch.equal(fused, bare)  # tanh(0) = 0: the LM intact at init, to the bit
        _awaken(model)
        assert not torch.allclose(model(ids, mask, images=images).logits, bare)


def test_xattn_media_masking_changes_only_the_logits_after_the_changed_image() -> None:
    model = _model("xattn")
    _awaken(model)
    text = f"Question: what? {IMAGE_TOKEN}Output: a red circle{EOC_TOKEN}{IMAGE_TOKEN}Output: two squares"
    ids, mask, images = interleaved_batch(model, [text])
    slots = (ids[0] == model.image_token_id).nonzero().flatten().tolist()
    first, second = slots[0], slots[model.num_image_tokens]
    with torch.no_grad():
        base = model(ids, mask, images=images).logits[0]
        for changed, start in ((1, second), (0, first)):
            other = images.clone()
            other[changed] = torch.randn_like(other[changed])
            logits = model(ids, mask, images=other).logits[0]
            assert torch.equal(logits[:start], base[:start])  # nothing before the image's <image> run sees it
            assert not torch.allclose(logits[start:], base[start:])
    assert media_index(ids == model.image_token_id, model.num_image_tokens)[0, [0, first, second - 1, second, -1]].tolist() \
        == [0, 1, 1, 2, 2]


def _greedy_without_cache(model, ids, mask, images, steps: int) -> torch.Tensor:
    tokens = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids, mask, images=images).logits[:, -1]
            logits[:, len(model.tokenizer):] = float("-inf")
            token = logits.argmax(-1, keepdim=True)
            tokens.append(token)
            ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    return torch.cat(tokens, 1)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_cached_batched_generation_equals_uncached_greedy(fusion: str) -> None:
    model = _model(fusion)
    _awaken(model)
    ids, mask, images = interleaved_batch(model, PROMPTS)
    assert bool((mask == 0).any())  # left padding is exercised
    cached = model.generate(ids, mask, images=images, max_new_tokens=6, stop_token_ids=[])
    assert torch.equal(cached, _greedy_without_cache(model, ids, mask, images, 6))
    one_by_one = [model.generate(ids[i:i + 1, int((mask[i] == 0).sum()):], images=images[2 * i:2 * i + 2],
                                 max_new_tokens=6, stop_token_ids=[]) for i in range(2)]
    assert torch.equal(cached, torch.cat(one_by_one))


def test_xattn_keys_values_are_computed_once_per_image_while_decoding() -> None:
    model = _model("xattn")
    ids, mask, images = interleaved_batch(model, PROMPTS)
    calls = []
    block = next(iter(model.fusion.blocks.values()))
    block.to_kv.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    model.generate(ids, mask, images=images, max_new_tokens=5, stop_token_ids=[])
    assert calls == [torch.Size([2, 2 * model.num_image_tokens, model.lm.config.hidden_size])]


@pytest.mark.parametrize("fusion", ["xattn", "mam"])
def test_save_load_round_trips_bit_for_bit(fusion: str, tmp_path: Path) -> None:
    model = _model(fusion, xattn_every=2)
    _awaken(model)
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.fusion == fusion and loaded.config.xattn_every == 2
    state, reloaded = model.state_dict(), loaded.state_dict()
    assert state.keys() == reloaded.keys() and all(torch.equal(state[key], reloaded[key]) for key in state)
    ids, mask, images = interleaved_batch(model, PROMPTS)
    with torch.no_grad():
        assert torch.equal(model(ids, mask, images=images).logits, loaded(ids, mask, images=images).logits)


def test_xattn_every_places_blocks_and_mam_twins_start_as_the_text_weights() -> None:
    xattn = _model("xattn", lm="pythia-toy-2m", xattn_every=2)  # 3 layers: blocks before layers 0 and 2
    assert xattn.fusion.positions == [0, 2] and "LM layers 0, 2" in xattn.fusion.anatomy()
    splice, mam = _model("splice"), _model("mam")
    ids, mask, images = interleaved_batch(splice, PROMPTS)
    with torch.no_grad():
        assert torch.equal(splice(ids, mask, images=images).logits, mam(ids, mask, images=images).logits)
        _awaken(mam)
        changed = mam(ids, mask, images=images).logits
        text_only = ids.masked_fill(ids == mam.image_token_id, mam.pad_token_id)  # no image positions: twins unused
        assert torch.equal(splice(text_only, mask).logits, mam(text_only, mask).logits)
    assert not torch.allclose(changed, splice(ids, mask, images=images).logits)


@pytest.mark.parametrize("fusion", ["xattn", "mam"])
def test_activation_checkpointing_gives_the_same_gradients(fusion: str) -> None:
    """The backward pass re-runs checkpointed LM layers (and the fusion's hooks) after the forward returned."""
    model = _model(fusion)
    _awaken(model)
    model.train()
    ids, mask, images = interleaved_batch(model, PROMPTS)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        model(ids, mask, images=images, labels=ids).loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][name], grads[1][name], atol=1e-6) for name in grads[0])


def _llama_checkpoint(directory: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=2048, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(str(directory))


@pytest.mark.parametrize("layout", ["gpt-neox", "llama"])
@pytest.mark.parametrize("fusion", ["xattn", "mam"])
def test_hf_lms_take_xattn_and_mam(layout: str, fusion: str, tmp_path: Path) -> None:
    from test_model_hf import _lm_checkpoint

    lm_dir = tmp_path / layout
    if layout == "gpt-neox":
        _lm_checkpoint(lm_dir)
    else:
        _llama_checkpoint(lm_dir)
    tokenizer: dict[str, object] = {} if layout == "gpt-neox" else {"tokenizer": "synthetic-bpe",
                                                                    "resize_embeddings": True}
    cfg = ModelConfig(image_size=32, connector="avgpool", num_image_tokens=4, max_seq_len=128, lm=f"hf:{lm_dir}",
                      fusion=fusion, **tokenizer)
    torch.manual_seed(0)
    model = build_model(cfg, SOURCE).eval()
    _awaken(model)
    twins = {name.split(".")[2] for name, _ in model.fusion.named_parameters()} if fusion == "mam" else set()
    assert twins <= {"input_layernorm", "post_attention_layernorm", "attention_query_key_value",
                     "self_attn_k_proj", "self_attn_v_proj"}
    ids, mask, images = interleaved_batch(model, PROMPTS)
    cached = model.generate(ids, mask, images=images, max_new_tokens=4, stop_token_ids=[])
    assert torch.equal(cached, _greedy_without_cache(model, ids, mask, images, 4))
    model.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(model(ids, mask, images=images).logits,
                           load_model(tmp_path / "saved")(ids, mask, images=images).logits)


def test_fusion_flops_are_counted_per_token_and_per_image() -> None:
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    splice, xattn, mam = _model("splice"), _model("xattn"), _model("mam")
    seq_len, dim, tokens = 64, splice.lm.config.hidden_size, splice.num_image_tokens
    assert xattn.lm_flops_per_token(seq_len) > splice.lm_flops_per_token(seq_len)
    assert mam.lm_flops_per_token(seq_len) == splice.lm_flops_per_token(seq_len)  # same shapes, other weights
    assert mam.image_flops() > splice.image_flops() and xattn.image_flops() > splice.image_flops()
    # the analytic per-token count of one block equals the measured forward FLOPs × 3 (fwd + bwd)
    block = next(iter(xattn.fusion.blocks.values()))
    x, media = torch.randn(1, seq_len, dim), torch.randn(1, tokens, dim)
    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN002, ANN003
        return sdpa_flop_count(query, key, value)  # the CPU SDPA kernel has no formula of its own

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        keys, values = block.media_keys_values(media)
        block(x, torch.ones(1, seq_len, dtype=torch.long), (keys, values, torch.ones(tokens, dtype=torch.long)))
    analytic = seq_len * xattn.fusion.flops_per_token() + xattn.fusion.flops_per_image()
    assert 3 * counter.get_total_flops() == analytic // len(xattn.fusion.blocks)


def test_freeze_lm_with_xattn_trains_only_the_new_blocks_and_the_connector() -> None:
    from mmbench_cli.train.loop import build_trainable_model

    cfg = load_config(None, [*MECHANICS, "model.fusion=xattn", "train.freeze_lm=true", "model.lm=pythia-toy-1m",
                             "model.image_size=32", "model.num_image_tokens=4"])
    model = build_trainable_model(cfg)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fusion", "connector", "encoder"}  # the encoder trains: train.freeze_encoder=false


TINY_RUN = [*MECHANICS, "model.lm=pythia-toy-1m", "model.image_size=32", "model.num_image_tokens=4",
            "model.max_seq_len=128", "data.seq_len=64", "train.batch_size=4", "data.num_train_images=32",
            "data.num_val_images=8", "data.num_test_images=8", "train.warmup_steps=1", "train.steps=1",
            "train.checkpoint_every=1"]


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS)
def test_one_step_pretrain_and_four_shot_eval(fusion: str, tmp_path: Path) -> None:
    run = tmp_path / fusion
    result = runner.invoke(app, ["pretrain", *TINY_RUN, f"model.fusion={fusion}", "--out", str(run)])
    assert result.exit_code == 0, result.output
    meta = json.loads((run / "meta.json").read_text())
    result = runner.invoke(app, ["eval", str(run), "--tasks", "synthetic-caption", "--shots", "0", "4",
                                 "--num-samples", "4"])
    assert result.exit_code == 0, result.output
    scores = json.loads((run / "eval" / "step_1.json").read_text())["tasks"]["synthetic-caption"]
    assert set(scores) == {"0", "4"} and all(scores[k]["n"] == 4 for k in scores)
    assert meta["flops_per_step"] > 0


@pytest.mark.parametrize(("fusion", "where"), [("xattn", "GATED XATTN-DENSE before LM layers 0, 1"),
                                               ("mam", "in all 2 LM layers image positions use their own")])
def test_mm_build_prints_the_anatomy(fusion: str, where: str, tmp_path: Path) -> None:
    out = tmp_path / "built"
    result = runner.invoke(app, ["build", *TINY_RUN, f"model.fusion={fusion}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table_row = next(line for line in result.output.splitlines() if line.lstrip("│┃ ").startswith("fusion"))
    assert fusion in table_row and where in " ".join(result.output.split())
    assert load_model(out).config.fusion == fusion
