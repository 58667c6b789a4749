"""Prompt templates and image preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmbench_cli.data import templates
from mmbench_cli.data.images import preprocess
from mmbench_cli.data.types import CaptionSample, FileImage, InterleavedDoc, MemoryImage, VQASample


def _image(color: str = "red") -> MemoryImage:
    return MemoryImage(Image.new("RGB", (8, 8), color), key=color)


def test_open_flamingo_formats() -> None:
    assert templates.caption_demo("a cat.") == "<image>Output: a cat.<|endofchunk|>"
    assert templates.caption_prompt() == "<image>Output:"
    assert templates.vqa_demo("what?", "red") == "<image>Question: what? Short answer: red<|endofchunk|>"
    assert templates.vqa_prompt("what?") == "<image>Question: what? Short answer:"


def test_fewshot_prompt_is_demos_then_query() -> None:
    demo = VQASample("1", "a", _image(), "what color?", ["red"] * 7 + ["orange"] * 3)
    caption = CaptionSample("b", _image("blue"), ["a blue square.", "blue."])
    assert templates.majority_answer(demo.answers) == "red"
    prompt = templates.fewshot_prompt([demo, demo], VQASample("2", "c", _image(), "what shape?", ["x"]))
    assert prompt == ("<image>Question: what color? Short answer: red<|endofchunk|>" * 2
                      + "<image>Question: what shape? Short answer:")
    assert templates.format_demo(caption, caption_index=1) == "<image>Output: blue.<|endofchunk|>"
    assert templates.format_query(caption) == "<image>Output:"


def test_interleaved_chunks_close_after_the_image_text() -> None:
    a, b = _image("red"), _image("blue")
    doc = InterleavedDoc("d", ["Intro.", a, "Output: a red square.", "A fact.", b, c := _image("green"), "End."])
    text, images = templates.format_interleaved(doc)
    assert text == ("Intro.<image>Output: a red square.<|endofchunk|>A fact.<image><|endofchunk|><image>End."
                    "<|endofchunk|>")
    assert images == [a, b, c]


def test_preprocess_values_and_shapes(tmp_path: Path) -> None:
    wide = Image.new("RGB", (40, 20), (0, 0, 0))
    wide.paste((255, 128, 0), (10, 0, 30, 20))  # the centre square crop is all orange
    path = tmp_path / "wide.png"
    wide.save(path)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)
    batch = preprocess([FileImage(path), wide], 16, mean, std)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32
    expected = torch.tensor([(1 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.5, (0 - 0.5) / 1.0])
    assert torch.allclose(batch[:, :, 8, 8], expected.expand(2, 3), atol=1e-5)
    assert torch.equal(batch[0], batch[1])  # cached ImageRef path == direct PIL path
    assert preprocess([], 16, mean, std).shape == (0, 3, 16, 16)


@pytest.mark.parametrize("size", [32, 64])
def test_preprocess_matches_reference_formula(size: int) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8))
    mean, std = (0.48, 0.45, 0.40), (0.27, 0.26, 0.28)
    got = preprocess([image], size, mean, std)[0]
    ref = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    ref = (ref - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    assert torch.allclose(got, torch.from_numpy(ref.transpose(2, 0, 1).copy()), atol=1e-5)
