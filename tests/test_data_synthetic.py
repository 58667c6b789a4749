"""The synthetic world: determinism, caching, no split leakage, vocabulary coverage, resolution-dependent legibility."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmbench_cli.data import templates
from mmbench_cli.data.synthetic import (
    SPLITS,
    Scene,
    Shape,
    SyntheticWorld,
    render_scene,
    tokenizer_corpus,
    world_from_config,
)
from mmbench_cli.data.types import CaptionSample, InterleavedDoc, TextDoc, VQASample

# sha256 (first 16 hex) of version 4's test image 3 rendered natively: the image its committed runs were made with
V4_TEST3_SHA = "3b60d03623f5275b"


def _world(tmp_path: Path, seed: int = 0, name: str = "a") -> SyntheticWorld:
    return SyntheticWorld(seed, num_train_images=24, num_val_images=8, num_test_images=8, cache_dir=str(tmp_path / name))


def _texts(world: SyntheticWorld) -> list[str]:
    texts = []
    for split in SPLITS:
        texts += [c for s in world.captions(split) for c in s.captions]
        texts += [f"{s.question} {' '.join(s.answers)}" for kind in ("vqa", "ocr") for s in world.vqa(split, kind)]
        texts += [templates.format_interleaved(d)[0] for d in world.interleaved(split)]
        texts += [d.text for d in world.text(split)]
    return texts


def _png_bytes(world: SyntheticWorld) -> list[bytes]:
    world.materialize()
    return [image.path.read_bytes() for split in SPLITS for image in world.images(split)]


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    first, again, other = _world(tmp_path, 0, "a"), _world(tmp_path, 0, "b"), _world(tmp_path, 1, "c")
    assert _png_bytes(first) == _png_bytes(again)
    assert _texts(first) == _texts(again)
    assert first.text_tasks("test") == again.text_tasks("test")
    assert _png_bytes(first) != _png_bytes(other)
    assert _texts(first) != _texts(other)


def test_images_are_rendered_once_and_cached(tmp_path: Path) -> None:
    world = _world(tmp_path)
    assert world.materialize(["val"]) == 8
    stamps = [image.path.stat().st_mtime_ns for image in world.images("val")]
    assert world.materialize(["val"]) == 0
    loaded = world.images("val")[0].load()
    assert loaded.size == (256, 256) and loaded.mode == "RGB"
    assert [image.path.stat().st_mtime_ns for image in world.images("val")] == stamps


def test_sample_types_and_vqa_answers(tmp_path: Path) -> None:
    world = _world(tmp_path)
    captions = world.captions("train")
    assert len(captions) == 24 and all(isinstance(s, CaptionSample) for s in captions)
    assert all(len(s.captions) == 5 and len(set(s.captions)) >= 3 for s in captions)  # varied wording
    vqa, ocr = world.vqa("train", "vqa"), world.vqa("train", "ocr")
    assert all(isinstance(s, VQASample) and len(s.answers) == 10 for s in vqa + ocr)
    assert {s.answer_type for s in vqa} >= {"number", "yes/no", "other"}
    for sample in ocr:  # the majority OCR answer is the word actually rendered
        assert templates.majority_answer(sample.answers) == sample.image.scene.text
    # a little annotator disagreement, but not everywhere
    disagree = sum(len(set(s.answers)) > 1 for s in vqa + ocr)
    assert 0 < disagree < len(vqa + ocr) / 2
    docs = world.interleaved("train")
    assert docs and all(isinstance(d, InterleavedDoc) for d in docs)
    assert all(2 <= sum(not isinstance(c, str) for c in d.chunks) <= 4 for d in docs)
    joined = " ".join(templates.format_interleaved(d)[0] for d in docs)
    assert "Output:" in joined and "<|endofchunk|>" in joined  # teaches the few-shot format
    assert all(isinstance(d, TextDoc) for d in world.text("train"))


def test_no_leakage_across_splits(tmp_path: Path) -> None:
    world = _world(tmp_path)
    world.materialize()
    keys = {split: {image.key for image in world.images(split)} for split in SPLITS}
    pixels = {split: {hashlib.sha256(image.path.read_bytes()).hexdigest() for image in world.images(split)}
              for split in SPLITS}
    questions = {split: {s.question_id for s in world.vqa(split) + world.vqa(split, "ocr")} for split in SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not keys[a] & keys[b]
        assert not pixels[a] & pixels[b]
        assert not questions[a] & questions[b]
    for doc in world.interleaved("test"):
        assert all(chunk.key in keys["test"] for chunk in doc.chunks if not isinstance(chunk, str))
    train_text = {d.text for d in world.text("train")}
    assert not train_text & {d.text for d in world.text("test")}
    tasks = world.text_tasks("test")
    assert not train_text & {f"{item['context']} {item['target']}." for item in tasks["cloze"]}


def test_text_tasks_shape(tmp_path: Path) -> None:
    tasks = _world(tmp_path).text_tasks("test")
    assert set(tasks) == {"cloze", "facts", "perplexity"}
    for item in tasks["cloze"]:
        assert item["target"] and " " not in item["target"]
        assert item["target"] in item["context"]  # predictable from the context, LAMBADA-style
    for item in tasks["facts"]:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4 and 0 <= item["gold"] < 4
    assert tasks["perplexity"] and all(item["text"] for item in tasks["perplexity"])


def test_tokenizer_corpus_covers_every_word_the_world_uses(tmp_path: Path) -> None:
    corpus_words = set(re.findall(r"[a-z0-9]+", " ".join(tokenizer_corpus(0)).lower()))
    world_words = set(re.findall(r"[a-z0-9]+", " ".join(_texts(_world(tmp_path))).lower()))
    assert world_words - corpus_words == set()


def test_world_from_config() -> None:
    from mmbench_cli.config import load_config

    cfg = load_config(None, ["data.world_seed=3", "data.num_val_images=7"])
    world = world_from_config(cfg.data)
    assert world.seed == 3 and world.num_images["val"] == 7


def test_world_versions_differ_only_in_interleaved_qa(tmp_path: Path) -> None:
    """Versions 2 and 3 add two whole-scene questions per image; 2 also puts every question about a Q&A-style
    image after it in interleaved documents; everything else is version 1's."""
    from mmbench_cli.config import load_config
    from mmbench_cli.errors import MMError

    old = SyntheticWorld(0, 24, 8, 8, cache_dir=str(tmp_path / "c"), version=1)
    new = SyntheticWorld(0, 24, 8, 8, cache_dir=str(tmp_path / "c"), version=2)
    assert old.image_dir == new.image_dir  # same renderings: one image cache
    assert [s.captions for s in old.captions("train")] == [s.captions for s in new.captions("train")]
    new_vqa = {s.question_id: (s.question, s.answers) for s in new.vqa("test")}
    assert all(new_vqa[s.question_id] == (s.question, s.answers) for s in old.vqa("test"))  # version 1's kept
    added = [q for q, _ in new_vqa.values() if q == "how many shapes are there?" or q.endswith(" shape?")]
    assert len(added) == 2 * 8 and len(new_vqa) == len(old.vqa("test")) + len(added)
    assert [d.text for d in old.text("train")] == [d.text for d in new.text("train")]

    def qa_per_image(world: SyntheticWorld) -> float:
        docs = [d for d in world.interleaved("train") if d.meta["style"] == "qa"]
        texts = [templates.format_interleaved(d) for d in docs]
        return sum(t.count("Question:") for t, _ in texts) / sum(len(images) for _, images in texts)

    assert qa_per_image(old) == 1.0
    assert qa_per_image(new) >= 3.0
    third = SyntheticWorld(0, 24, 8, 8, cache_dir=str(tmp_path / "c"), version=3)  # 2's questions, 1's documents
    assert [(s.question, s.answers) for s in third.vqa("test")] == [(s.question, s.answers) for s in new.vqa("test")]
    assert qa_per_image(third) == 1.0
    # in version 2 every answer is closed by <|endofchunk|>, like a few-shot demo
    qa_docs = [templates.format_interleaved(d)[0] for d in new.interleaved("train") if d.meta["style"] == "qa"]
    assert all(t.count("Short answer:") == t.count(templates.EOC_TOKEN) for t in qa_docs)
    assert world_from_config(load_config(None, ["data.world_version=2"]).data).version == 2
    assert world_from_config(load_config(None, []).data).version == 4  # the default since issue 13
    with pytest.raises(MMError, match="world_version"):
        load_config(None, ["data.world_version=6"])
    from typing import get_args

    from mmbench_cli.config import DataConfig
    from mmbench_cli.data.synthetic import WORLD_VERSIONS

    assert get_args(DataConfig.model_fields["world_version"].annotation) == WORLD_VERSIONS  # config knows them all


def test_tokenizer_corpus_is_the_same_for_every_world_version() -> None:
    """The BPE trains on version 1's documents: "<|endofchunk|>Question:" occurs only in version 2's."""
    assert not any(f"{templates.EOC_TOKEN}Question:" in text for text in tokenizer_corpus(0, num_scenes=50))


def _diff_at(scene_a: Scene, scene_b: Scene, size: int) -> float:
    """Mean absolute pixel difference of two scenes rendered natively and downsampled to ``size`` px."""
    a, b = (np.asarray(render_scene(s).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
            for s in (scene_a, scene_b))
    return float(np.abs(a - b).mean())


@pytest.mark.parametrize("what", ["text", "color"])
def test_small_details_need_resolution(what: str) -> None:
    """What distinguishes two scenes by a small detail mostly vanishes at 32 px; a large detail survives."""
    def scenes(size: str) -> tuple[Scene, Scene]:
        if what == "text":
            return (Scene((), "cat", size, (1, 1)), Scene((), "dog", size, (1, 1)))
        size = "small" if size == "small" else "large"
        return tuple(Scene((Shape("circle", color, size, (1, 1), (0, 0)),), None, None, None)  # type: ignore
                     for color in ("red", "orange"))

    small, large = scenes("small"), scenes("large")
    # at the native resolution the small detail is clearly there...
    assert _diff_at(*small, 256) > 0.1
    # ...but downsampled to 32 px it carries far less signal than the large one
    assert _diff_at(*small, 32) < _diff_at(*large, 32) / 4


def test_world_version_4_is_sort_of_clevr_like(tmp_path: Path) -> None:
    """Version 4: 2-4 objects of distinct colours, three shapes, words from a short list; questions name an object
    by its colour and are answered by the scene; its images are its own (no clash with versions 1-3's cache)."""
    from mmbench_cli.data.synthetic import COLORS, V4_SHAPES, V4_WORDS, scene_questions

    world = SyntheticWorld(0, 40, 8, 8, cache_dir=str(tmp_path / "c"), version=4)
    old = SyntheticWorld(0, 40, 8, 8, cache_dir=str(tmp_path / "c"), version=1)
    assert world.image_dir != old.image_dir and world.images("test")[0].key != old.images("test")[0].key
    again = SyntheticWorld(0, 40, 8, 8, cache_dir=str(tmp_path / "d"), version=4)
    assert _png_bytes(world)[:5] == _png_bytes(again)[:5]  # deterministic
    for index in range(40):
        scene = world.scene("train", index)
        colors = [obj.color for obj in scene.objects]
        assert 2 <= len(colors) <= 4 and len(set(colors)) == len(colors) and set(colors) <= set(COLORS)
        assert {obj.shape for obj in scene.objects} <= set(V4_SHAPES) and scene.text in (None, *V4_WORDS)
        by_color = {obj.color: obj for obj in scene.objects}
        for item in scene_questions(scene, __import__("random").Random(index), version=4):
            question, truth = item["question"], templates.majority_answer(item["answers"])
            if question.startswith("what shape is the "):
                assert by_color[question.split()[4]].shape == truth
            elif question.startswith("where is the "):
                assert by_color[question.split()[3]].position == truth
            elif question == "how many shapes are there?":
                assert truth == str(len(scene.objects))
            elif question.startswith(("is there a ", "is there an ")):
                assert (truth == "yes") == (question.split()[3] in by_color)
            elif question.startswith("what color is the one "):
                where = question.removeprefix("what color is the one ").removesuffix("?")
                assert [obj.color for obj in scene.objects if obj.where() == where] == [truth]
            else:
                assert item["kind"] == "ocr" and truth == scene.text, question
    # Q&A-style documents carry every question of each image
    qa = [templates.format_interleaved(d)[0] for d in world.interleaved("train") if d.meta["style"] == "qa"]
    assert qa and all(t.count("Short answer:") >= 2 * t.count(templates.IMAGE_TOKEN) for t in qa)
    corpus_words = set(re.findall(r"[a-z0-9]+", " ".join(tokenizer_corpus(0)).lower()))
    assert set(re.findall(r"[a-z0-9]+", " ".join(_texts(world)).lower())) - corpus_words == set()


def test_world_version_5_is_version_4_with_legible_text(tmp_path: Path) -> None:
    """Version 5 has version 4's scenes, captions, questions and documents, but draws its words larger and bold,
    inside the image: more ink survives at 64 px, and two words differ by far more than in version 4 there. Its
    images are its own, and version 4's images are unchanged by it."""
    from mmbench_cli.data.synthetic import scene_questions

    four = SyntheticWorld(0, 40, 8, 8, cache_dir=str(tmp_path / "c"), version=4)
    five = SyntheticWorld(0, 40, 8, 8, cache_dir=str(tmp_path / "c"), version=5)
    assert four.image_dir != five.image_dir and four.images("test")[0].key != five.images("test")[0].key
    for index in range(40):
        a, b = four.scene("train", index), five.scene("train", index)
        assert (a.objects, a.text, a.text_size, a.text_cell) == (b.objects, b.text, b.text_size, b.text_cell)
        assert scene_questions(a, __import__("random").Random(index), 4) == \
            scene_questions(b, __import__("random").Random(index), 5)
    assert [c.captions for c in four.captions("train")] == [c.captions for c in five.captions("train")]
    assert [templates.format_interleaved(d)[0] for d in four.interleaved("train")] == \
        [templates.format_interleaved(d)[0] for d in five.interleaved("train")]

    def ink(scene: Scene) -> float:  # dark pixels at 64 px
        return float((np.asarray(render_scene(scene).resize((64, 64), Image.Resampling.BICUBIC)).max(-1) < 80).sum())

    for size in ("small", "large"):
        v4 = [Scene((), word, size, (1, 1), version=4) for word in ("cat", "dog")]
        v5 = [Scene((), word, size, (1, 1), version=5) for word in ("cat", "dog")]
        assert ink(v5[0]) > 2 * max(1.0, ink(v4[0]))
        assert _diff_at(*v5, 64) > 1.5 * _diff_at(*v4, 64)
    # a large word in a corner cell stays inside the image (no glyph cut at the border)
    corner = np.asarray(render_scene(Scene((), "jam", "large", (2, 0), version=5)))
    assert (corner[:, 0].max(-1) > 200).all() and (corner[:, -1].max(-1) > 200).all()
    # version 4's rendering is what it was (its committed runs' images)
    assert hashlib.sha256(render_scene(four.scene("test", 3)).tobytes()).hexdigest()[:16] == V4_TEST3_SHA


def test_hard_negatives_swap_one_shape_or_the_written_word() -> None:
    import random

    from mmbench_cli.data.synthetic import swap_attributes

    caption = "two small red circles and a large blue square, with the word owl."
    negatives = swap_attributes(caption, random.Random(0))
    assert len(negatives) == 2 and all(n != caption for n in negatives)
    shape_swap, word_swap = negatives
    assert sum(a != b for a, b in zip(shape_swap.split(), caption.split(), strict=True)) == 1
    assert word_swap.endswith(".") and "owl" not in word_swap and word_swap.split()[:-1] == caption.split()[:-1]
    assert swap_attributes("a page about red things.", random.Random(0)) == []


def test_twins_change_one_shape_or_the_word_and_nothing_else(tmp_path: Path) -> None:
    """Each training image's counterfactual twin (the twinclip encoder objective) differs from it in exactly one
    thing: one object's shape, or the written word; colours, sizes, places and the other objects stay. Twins are
    deterministic, aligned with captions(split), rendered into their own folder, and their captions describe them."""
    world = _world(tmp_path, name="twins")
    originals, twins = world.captions("train"), world.twins("train")
    assert len(twins) == len(originals)
    changed = {"shape": 0, "word": 0}
    for original, twin in zip(originals, twins, strict=True):
        before, after = original.image.scene, twin.image.scene
        shape_changes = [(a, b) for a, b in zip(before.objects, after.objects, strict=True) if a != b]
        if before.text != after.text:
            changed["word"] += 1
            assert not shape_changes and after.text and after.text_size == before.text_size
        else:
            changed["shape"] += 1
            assert len(shape_changes) == 1
            a, b = shape_changes[0]
            assert a.shape != b.shape and (a.color, a.size, a.cell, a.offset) == (b.color, b.size, b.cell, b.offset)
        assert twin.image.path.parent.name == "train-twins" and twin.image_id != original.image_id
        named = " ".join(twin.captions)  # shapes may be plural ("two triangles"); the text may be a number
        assert all(o.shape in named for o in after.objects)
        assert after.text is None or after.text in re.findall(r"[a-z0-9]+", named)
    assert changed["shape"] and changed["word"]
    other = _world(tmp_path, name="twins-b").twins("train")
    assert [t.image.scene for t in other] == [t.image.scene for t in twins]
    assert np.array_equal(np.asarray(twins[0].image.load()), np.asarray(render_scene(twins[0].image.scene)))


def test_stored_pixels_are_the_resized_png_and_are_read_back(tmp_path: Path) -> None:
    """A synthetic image keeps its resized pixels on disk: the first call stores exactly what decoding and
    resizing give, later calls read that file (not the PNG), and a file of the wrong length is redone."""
    from mmbench_cli.data.images import resize_square

    image = _world(tmp_path).image("train", 3)
    expected = np.asarray(resize_square(image.load(), 32), dtype=np.uint8)
    first = image.stored_pixels(32)
    assert first.dtype == np.uint8 and np.array_equal(first, expected)
    stored = next(image.path.parent.glob("32px-r*/000003.u8"))
    assert stored.read_bytes() == expected.tobytes()
    stored.write_bytes(bytes(32 * 32 * 3))  # same length: trusted and read as is (proves the file is read)
    assert not image.stored_pixels(32).any()
    stored.write_bytes(b"torn")  # wrong length: redone from the PNG
    assert np.array_equal(image.stored_pixels(32), expected)
    assert stored.read_bytes() == expected.tobytes()
    assert np.array_equal(image.stored_pixels(64), np.asarray(resize_square(image.load(), 64), dtype=np.uint8))
