"""The synthetic multimodal world: deterministic from a seed, rendered with PIL, cached on disk.

Each image is a 256 px scene of 1-4 coloured shapes (circle, square, triangle, diamond, star) of three
sizes placed in a 3x3 grid, and, in about half of the scenes, a short word or number written in a small
or a large font. At the native 256 px everything is legible; downsampled to 32-64 px the *small*
shapes and the *small* text are not, so resolution and image-token count matter exactly where MM1 says
they do (small objects, OCR).

From the same scene descriptions the world derives:

- captions: five COCO-like reference captions per image, varied wording;
- VQA: VQAv2-style questions (colour, count, position, yes/no) with ten answers each and a little
  annotator disagreement, and an OCR split ("what is written?") like TextVQA;
- interleaved documents: 2-4 images of one theme with passages around them, some written in the
  caption / Q&A format of few-shot prompts (so interleaved data teaches the in-context format);
- text: a text-only corpus about the same world (facts about its things, stories, Q&A), a held-out text
  split, and the items of three text benchmarks (``text_tasks``).

Every split has its own images (their random streams are keyed by split) and its own questions, so
nothing leaks from train into val/test. Images are rendered lazily on first use and cached under
``cache_root(data.cache_dir)/synthetic/``; a cached image is never rendered again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmbench_cli.data.templates import EOC_TOKEN as EOC
from mmbench_cli.data.templates import SPECIAL_TOKENS, majority_answer, text_qa
from mmbench_cli.data.types import (
    CaptionSample,
    Conversation,
    ImageRef,
    InterleavedDoc,
    MultipleChoiceSample,
    TextDoc,
    VQASample,
    YesNoSample,
)
from mmbench_cli.errors import MMError
from mmbench_cli.rundir import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from mmbench_cli.config import DataConfig

# The world's versions. A run's config records ``data.world_version``, so a run made with an older world
# re-runs on the same data. Scenes, images, captions, version 1's questions and text are the same in all.
# Versions 2 and 3 add two questions per image that need no shape recognition ("is there a red shape?", "how
# many shapes are there?"); version 2 also follows a Q&A-style image in an interleaved document with every
# question about it instead of one (docs/data.md has what each measurably changed).
#
# Version 4 is a different world, modelled on Sort-of-CLEVR (Santoro et al. 2017): 2-4 objects of *distinct*
# colours (so "the red one" names one object), three shapes (circle, square, triangle) in two sizes larger than
# version 1's, text in a larger font from 16 words, questions that name an object by its colour or place (is there a
# <colour> one, how many shapes, what colour is the one <somewhere>, where is the <colour> one, what shape is the
# <colour> one) and, after a Q&A-style image in an interleaved document, every question about it, in twice as many
# Q&A-style documents. Small shapes and small text still need resolution (at 32 px a small shape is 4 px wide).
# Its images, keys and image cache are its own. docs/data.md has what each version measurably changed.
#
# Version 5 is version 4 with legible text: a larger, bold font (V5_TEXT_SIZES, drawn with a stroke). Version 4's
# thin grey-looking glyphs blur away at 64 px: a vit-tiny trained *supervised* on its words stays at chance (4.6% of
# 16 words after 600 steps), on version 5's it reaches 70% (benchmarks/word_learnability.py). Same scenes, captions,
# questions and documents as version 4; its images, keys and image cache are its own.
WHOLE_SCENE_QUESTIONS = {1: False, 2: True, 3: True, 4: False, 5: False}
# How many of an image's questions follow it in a Q&A-style interleaved document (None: all of them).
QUESTIONS_IN_DOCS: dict[int, int | None] = {1: 1, 2: None, 3: 1, 4: None, 5: None}
# The styles an interleaved document is written in (drawn uniformly; version 4 writes Q&A twice as often).
DOC_STYLES = {1: ("caption", "qa", "mixed"), 2: ("caption", "qa", "mixed"), 3: ("caption", "qa", "mixed"),
              4: ("caption", "qa", "qa", "mixed"), 5: ("caption", "qa", "qa", "mixed")}
WORLD_VERSIONS = tuple(WHOLE_SCENE_QUESTIONS)
WORLD_VERSION = 1  # the default (a saved config without data.world_version was made with version 1)
RENDER_VERSION = 1  # bump when rendering changes (invalidates the image cache)
RESIZE_VERSION = 1  # bump when data.images.resize_square changes (invalidates the stored resized pixels)
NATIVE_SIZE = 256
SPLITS = ("train", "val", "test")
POPE_NEGATIVES = ("random", "popular", "adversarial")  # how POPE draws the absent objects it asks about

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38),
    "green": (38, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (232, 196, 20),
    "purple": (140, 60, 185),
    "orange": (245, 135, 25),
}
# What a careless annotator confuses a colour with.
COLOR_CONFUSIONS = {
    "red": "orange", "orange": "red", "yellow": "orange", "purple": "blue", "blue": "purple", "green": "blue",
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
SIZES = {"small": 11, "medium": 24, "large": 38}  # half-widths in native pixels (the grid cell is ~85 px)
POSITIONS = ("left", "right", "top", "bottom", "center")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
WORDS = (
    "cat", "dog", "sun", "map", "box", "key", "cup", "hat", "pen", "bus", "car", "egg", "fox", "owl",
    "bag", "jam", "tea", "van", "toy", "cow", "pig", "bee", "ant", "ice", "ink", "jet", "kit", "log",
    "mud", "net", "oak", "pot", "rug", "sky", "tin", "web", "yak", "zip", "bow", "fig",
)
TEXT_SIZES = {"small": 15, "large": 40}  # font size in native pixels
# World version 4's scenes (Sort-of-CLEVR-like): fewer, larger shapes, larger text, fewer words.
V4_SHAPES = ("circle", "square", "triangle")
V4_SIZES = {"small": 17, "large": 34}  # half-widths in native pixels: 8.5 / 17 px wide at 64 px
V4_TEXT_SIZES = {"small": 28, "large": 52}  # font sizes in native pixels: letters 3.5 / 6.5 px tall at 32 px
# World version 5: version 4 with legible text (fonts of 8 / 4.5 px at 32 px, strokes 1/20 of the font size).
V5_TEXT_SIZES = {"small": 36, "large": 64}
TEXT_STROKE = 1 / 20
V4_WORDS = ("cat", "dog", "sun", "map", "box", "key", "cup", "hat", "pen", "bus", "egg", "fox", "owl", "jam",
            "web", "zip")
BACKGROUND = (238, 236, 228)
TEXT_COLOR = (15, 15, 15)

# The text world: things with a colour, a shape and a home, and people who tell stories about them.
THINGS = (
    "apple", "lemon", "frog", "kite", "boat", "lamp", "fish", "bird", "ball", "drum", "shoe", "coat",
    "bell", "leaf", "rock", "cake", "vase", "sock", "book", "ring", "flag", "coin", "rose", "moon",
)
PLACES = ("forest", "city", "farm", "beach", "garden", "river", "castle", "market")
NAMES = ("anna", "ben", "cara", "dan", "eva", "finn", "gina", "hugo", "iris", "jack", "kim", "leo",
         "mia", "ned", "olga", "paul")
VERBS = ("found", "saw", "painted", "carried", "bought", "drew", "lost", "kept")


def _rng(*key: object) -> random.Random:
    """A random stream keyed by strings/ints (stable across processes and machines)."""
    return random.Random(":".join(str(part) for part in key))


def _plural(word: str, count: int) -> str:
    return word if count == 1 else word + "s"


def _count_word(count: int) -> str:
    return NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)


# ----------------------------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Shape:
    """One object in a scene."""

    shape: str
    color: str
    size: str
    cell: tuple[int, int]  # (row, col) in the 3x3 grid
    offset: tuple[int, int]  # jitter inside the cell, native pixels

    @property
    def position(self) -> str:
        """left/right by column, else top/bottom by row, else center."""
        row, col = self.cell
        if col == 0:
            return "left"
        if col == 2:
            return "right"
        return ("top", "center", "bottom")[row]

    def phrase(self) -> str:
        """``a small red circle``."""
        return f"a {self.size} {self.color} {self.shape}"

    def where(self) -> str:
        """``on the left``, ``at the top``, ``in the center``."""
        position = self.position
        if position in ("left", "right"):
            return f"on the {position}"
        return "in the center" if position == "center" else f"at the {position}"


@dataclass(frozen=True)
class Scene:
    """Everything that is in one image (the renderer draws it; captions and questions describe it)."""

    objects: tuple[Shape, ...]
    text: str | None
    text_size: str | None
    text_cell: tuple[int, int] | None
    version: int = 1  # the world version that drew it (4 renders with V4_SIZES / V4_TEXT_SIZES, 5 with V5_TEXT_SIZES)

    @property
    def is_number(self) -> bool:
        """Whether the written text is a number."""
        return bool(self.text) and self.text.isdigit()


def make_scene(rng: random.Random) -> Scene:
    """Draw a random scene: 1-4 shapes (often repeating a shape so counting is non-trivial), maybe a word."""
    cells = [(row, col) for row in range(3) for col in range(3)]
    rng.shuffle(cells)
    num_objects = rng.choice((1, 2, 2, 3, 3, 4))
    kinds = rng.sample(SHAPES, rng.choice((1, 2, 2, 3)))
    objects = []
    for index in range(num_objects):
        kind = kinds[index % len(kinds)] if index < len(kinds) else rng.choice(kinds)
        objects.append(
            Shape(
                shape=kind,
                color=rng.choice(tuple(COLORS)),
                size=rng.choice(tuple(SIZES)),
                cell=cells[index],
                offset=(rng.randint(-14, 14), rng.randint(-14, 14)),
            )
        )
    text = text_size = text_cell = None
    if rng.random() < 0.5:
        text = rng.choice(WORDS) if rng.random() < 0.7 else str(rng.randint(10, 99))
        text_size = rng.choice(tuple(TEXT_SIZES))
        text_cell = cells[num_objects]
    return Scene(tuple(objects), text, text_size, text_cell)


def make_scene_v4(rng: random.Random, version: int = 4) -> Scene:
    """World version 4's scene (also version 5's, which renders its text larger): 2-4 objects of distinct colours
    (so "the red one" names one object), each a circle, square or triangle, small or large, in distinct cells; a
    word in half of the scenes."""
    cells = [(row, col) for row in range(3) for col in range(3)]
    rng.shuffle(cells)
    num_objects = rng.choice((2, 3, 3, 4))
    colors = rng.sample(tuple(COLORS), num_objects)
    objects = tuple(
        Shape(shape=rng.choice(V4_SHAPES), color=color, size=rng.choice(tuple(V4_SIZES)), cell=cells[index],
              offset=(rng.randint(-10, 10), rng.randint(-10, 10)))
        for index, color in enumerate(colors)
    )
    text = text_size = text_cell = None
    if rng.random() < 0.5:
        text = rng.choice(V4_WORDS)
        text_size = rng.choice(tuple(V4_TEXT_SIZES))
        text_cell = cells[num_objects]
    return Scene(objects, text, text_size, text_cell, version=version)


# The heads of the ``attributes`` encoder pre-training: what is in each of the 3x3 cells, the word, the count.
ATTRIBUTE_GRID = 3


def _vocabulary(version: int) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The shapes, words and sizes that world ``version`` draws from (versions 4 and 5 share theirs)."""
    if version >= 4:
        return V4_SHAPES, V4_WORDS, tuple(V4_SIZES)
    return SHAPES, WORDS, tuple(SIZES)


def attribute_classes(version: int) -> dict[str, int]:
    """How many classes each head of ``scene_attributes`` has in world ``version`` (class 0 is "nothing")."""
    shapes, words, sizes = _vocabulary(version)
    return {"cell_color": len(COLORS) + 1, "cell_shape": len(shapes) + 2, "cell_size": len(sizes) + 1,
            "word": len(words) + 2, "count": 7}


def scene_attributes(scene: Scene) -> dict[str, list[int]]:
    """Class labels of ``scene`` for a supervised (ImageNet-style) encoder pre-training: per cell of the 3x3 grid
    (row-major) the object's colour, shape (or "text", or nothing) and size, plus the written word (a number is
    one class) and the number of objects. Class 0 is always "nothing there"."""
    shapes, words, sizes = _vocabulary(scene.version)
    colors = tuple(COLORS)
    cells = ATTRIBUTE_GRID * ATTRIBUTE_GRID
    color, shape, size = [0] * cells, [0] * cells, [0] * cells
    for obj in scene.objects:
        index = obj.cell[0] * ATTRIBUTE_GRID + obj.cell[1]
        color[index] = colors.index(obj.color) + 1
        shape[index] = shapes.index(obj.shape) + 1
        size[index] = sizes.index(obj.size) + 1
    word = 0
    if scene.text:
        word = len(words) + 1 if scene.is_number else words.index(scene.text) + 1
        if scene.text_cell is not None:
            shape[scene.text_cell[0] * ATTRIBUTE_GRID + scene.text_cell[1]] = len(shapes) + 1
    return {"cell_color": color, "cell_shape": shape, "cell_size": size, "word": [word],
            "count": [min(len(scene.objects), 6)]}


def twin_scene(scene: Scene, rng: random.Random) -> Scene:
    """A counterfactual twin of ``scene``: the same picture with one object's shape changed, or (in half of the
    scenes that have one) its written word changed. Placed next to ``scene`` in a contrastive batch, it makes the
    encoder keep what plain CLIP batches let it drop (colours, counts and places already tell captions apart)."""
    shapes, words, _ = _vocabulary(scene.version)
    if scene.text and rng.random() < 0.5:
        text = rng.choice([word for word in words if word != scene.text]) if not scene.is_number else str(
            rng.choice([number for number in range(10, 100) if str(number) != scene.text]))
        return dataclasses.replace(scene, text=text)
    objects = list(scene.objects)
    index = rng.randrange(len(objects))
    objects[index] = dataclasses.replace(objects[index], shape=rng.choice([s for s in shapes if s != objects[index].shape]))
    return dataclasses.replace(scene, objects=tuple(objects))


def scene_for_version(rng: random.Random, version: int) -> Scene:
    """A random scene of world ``version`` (versions 1-3 share their scenes)."""
    return make_scene_v4(rng, version) if version >= 4 else make_scene(rng)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render_scene(scene: Scene, size: int = NATIVE_SIZE) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` px (shapes and text scale with the image)."""
    scale = size / NATIVE_SIZE
    sizes, text_sizes = (V4_SIZES, V4_TEXT_SIZES) if scene.version >= 4 else (SIZES, TEXT_SIZES)
    if scene.version >= 5:
        text_sizes = V5_TEXT_SIZES
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = size / 3
    for obj in scene.objects:
        cx = (obj.cell[1] + 0.5) * cell + obj.offset[0] * scale
        cy = (obj.cell[0] + 0.5) * cell + obj.offset[1] * scale
        r = sizes[obj.size] * scale
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
        elif obj.shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)], fill=fill)
        else:  # star
            points = []
            for k in range(10):
                radius = r if k % 2 == 0 else r * 0.45
                angle = -math.pi / 2 + k * math.pi / 5
                points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
            draw.polygon(points, fill=fill)
    if scene.text and scene.text_cell and scene.text_size:
        font_size = text_sizes[scene.text_size] * scale
        font = _font(max(1, round(font_size)))
        cx = (scene.text_cell[1] + 0.5) * cell
        cy = (scene.text_cell[0] + 0.5) * cell
        stroke = 0
        if scene.version >= 5:  # bold (legible when resized), and kept inside the image
            stroke = max(1, round(font_size * TEXT_STROKE))
            left, _, right, _ = draw.textbbox((cx, cy), scene.text, font=font, anchor="mm", stroke_width=stroke)
            cx += max(0.0, 1 - left) - max(0.0, right - (size - 1))
        draw.text((cx, cy), scene.text, fill=TEXT_COLOR, font=font, anchor="mm", stroke_width=stroke,
                  stroke_fill=TEXT_COLOR)
    return image


# --------------------------------------------------------------------------------------------- language
def _group_objects(objects: Iterable[Shape], with_size: bool = True) -> list[str]:
    """``two small red circles``, ``a large blue star``, ... (identical objects grouped)."""
    counts: dict[tuple[str, ...], int] = {}
    for obj in objects:
        key = (obj.size, obj.color, obj.shape) if with_size else (obj.color, obj.shape)
        counts[key] = counts.get(key, 0) + 1
    phrases = []
    for key, count in counts.items():
        *adjectives, noun = key
        phrases.append(" ".join([_count_word(count) if count > 1 else "a", *adjectives, _plural(noun, count)]))
    return [_fix_articles(phrase) for phrase in phrases]


def _fix_articles(text: str) -> str:
    """``a orange`` -> ``an orange`` (the only vowel-initial adjective/noun the world uses)."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][:1] in "aeiou" and words[i + 1][:1]:
            words[i] = "an"
    return " ".join(words)


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _text_phrase(scene: Scene, rng: random.Random) -> str:
    what = "number" if scene.is_number else "word"
    small = " in small letters" if scene.text_size == "small" else ""
    return rng.choice((f"the {what} {scene.text}{small}", f"the {what} {scene.text} written{small}"))


def scene_captions(scene: Scene, rng: random.Random, num: int = 5) -> list[str]:
    """``num`` different reference captions of ``scene`` (COCO-like: same content, varied wording)."""
    objects = list(scene.objects)
    templates: list[Callable[[], str]] = []

    def listing(with_size: bool = True) -> str:
        shuffled = objects[:]
        rng.shuffle(shuffled)
        return _join(_group_objects(shuffled, with_size))

    templates.append(lambda: f"{listing()}.")
    templates.append(lambda: f"a picture of {listing()}.")
    templates.append(lambda: f"there is {listing(False)} on a grey background.")
    templates.append(
        lambda: f"{_count_word(len(objects))} {_plural('shape', len(objects))}: {listing(False)}."
    )
    templates.append(
        lambda: " and ".join(f"{obj.phrase()} {obj.where()}" for obj in rng.sample(objects, len(objects))) + "."
    )
    templates.append(lambda: f"an image with {listing()}.")
    captions: list[str] = []
    order = list(range(len(templates)))
    rng.shuffle(order)
    for index in order[:num]:
        caption = templates[index]()
        if scene.text:
            phrase = _text_phrase(scene, rng)
            caption = caption[:-1] + rng.choice((f" and {phrase}.", f", with {phrase}."))
        captions.append(_fix_articles(caption))
    return captions


def _annotate(truth: str, confusions: list[str], rng: random.Random, contested: float) -> list[str]:
    """Ten human answers: all ``truth``, except that with probability ``contested`` 1-3 annotators give a
    plausible confusion instead (so the majority answer is always the truth, as in most of VQAv2)."""
    answers = [truth] * 10
    if confusions and rng.random() < contested:
        for position in rng.sample(range(10), rng.choice((1, 1, 1, 2, 2, 3))):
            answers[position] = rng.choice(confusions)
    return answers


def swap_attributes(caption: str, rng: random.Random) -> list[str]:
    """Hard negatives for contrastive pre-training (NegCLIP, Yuksekgonul et al. 2023): ``caption`` with one of
    its shape words replaced by another shape, and ``caption`` with its written word replaced by another word, so
    only an encoder that sees every shape and the glyphs tells them from the true caption. [] if it names neither."""
    words = caption.split(" ")
    shapes: list[tuple[int, str, str]] = []  # (position, the word without plural "s", the "s" or "")
    written: list[tuple[int, str, str]] = []
    for index, word in enumerate(words):
        core = word.rstrip(".,:")
        if core in SHAPES or (core.endswith("s") and core[:-1] in SHAPES):
            stem = core if core in SHAPES else core[:-1]
            shapes.append((index, stem, core[len(stem):]))
        elif core in WORDS and index > 0 and words[index - 1] == "word":
            written.append((index, core, ""))
    negatives = []
    for found, (world_4, every) in ((shapes, (V4_SHAPES, SHAPES)), (written, (V4_WORDS, WORDS))):
        if not found:
            continue
        index, stem, plural = rng.choice(found)
        pool = world_4 if stem in world_4 else every
        swapped = words[:]
        swapped[index] = rng.choice([w for w in pool if w != stem]) + plural + words[index][len(stem + plural):]
        negatives.append(" ".join(swapped))
    return negatives


def typo(text: str) -> str:
    """The misreading an OCR annotator makes: a dropped last letter, or a doubled last digit."""
    return text[:-1] if len(text) > 2 else text + text[-1]


def scene_questions(scene: Scene, rng: random.Random, version: int = 1) -> list[dict[str, Any]]:
    """VQAv2-style questions about ``scene``: dicts with question, answers (10), answer_type, kind, hard.

    World versions 2 and 3 add two questions that need no shape recognition (``_whole_scene_questions``);
    version 4 asks its own (``_questions_v4``)."""
    if version >= 4:
        questions = _questions_v4(scene, rng)
        _annotate_all(questions, rng)
        return questions
    questions: list[dict[str, Any]] = []
    objects = scene.objects
    by_shape: dict[str, list[Shape]] = {}
    for obj in objects:
        by_shape.setdefault(obj.shape, []).append(obj)

    # colour of a shape that occurs once
    unique = [obj for obj in objects if len(by_shape[obj.shape]) == 1]
    if unique:
        obj = rng.choice(unique)
        noise = 0.5 if obj.size == "small" else 0.15
        questions.append({
            "question": f"what color is the {obj.shape}?", "truth": obj.color, "answer_type": "other",
            "confusions": [COLOR_CONFUSIONS[obj.color]], "noise": noise, "hard": obj.size == "small",
        })
    # count of a shape (sometimes one that is absent)
    shape = rng.choice(list(by_shape)) if rng.random() < 0.85 else rng.choice(SHAPES)
    count = len(by_shape.get(shape, []))
    questions.append({
        "question": f"how many {_plural(shape, 2)} are there?", "truth": str(count), "answer_type": "number",
        "confusions": [str(max(0, count - 1)), str(count + 1)], "noise": 0.25,
        "hard": any(obj.size == "small" for obj in by_shape.get(shape, [])),
    })
    # position of an object unique by colour and shape
    pairs: dict[tuple[str, str], list[Shape]] = {}
    for obj in objects:
        pairs.setdefault((obj.color, obj.shape), []).append(obj)
    located = [found[0] for found in pairs.values() if len(found) == 1]
    if located:
        obj = rng.choice(located)
        others = [p for p in POSITIONS if p != obj.position]
        questions.append({
            "question": f"where is the {obj.color} {obj.shape}?", "truth": obj.position, "answer_type": "other",
            "confusions": [rng.choice(others)], "noise": 0.2, "hard": obj.size == "small",
        })
    # yes/no: is there a <colour> <shape>?
    if rng.random() < 0.5:
        obj = rng.choice(objects)
        color, kind, truth = obj.color, obj.shape, "yes"
    else:
        present = set(pairs)
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        color, kind = rng.choice(absent)
        truth = "no"
    questions.append({
        "question": f"is there a {color} {kind}?", "truth": truth, "answer_type": "yes/no",
        "confusions": ["no" if truth == "yes" else "yes"], "noise": 0.1, "hard": False,
    })
    for item in questions:
        item["kind"] = "vqa"
    questions.extend(_ocr_question(scene, rng))
    _annotate_all(questions, rng)
    if WHOLE_SCENE_QUESTIONS[version]:  # drawn after version 1's questions, so those stay exactly as they were
        extra = _whole_scene_questions(scene, rng)
        _annotate_all(extra, rng)
        questions.extend(extra)
    return questions


def _ocr_question(scene: Scene, rng: random.Random) -> list[dict[str, Any]]:
    """"What is written?" (TextVQA-like) when the scene has text, else nothing."""
    if not scene.text:
        return []
    return [{
        "question": rng.choice(("what is written?", "what is written in the picture?", "what does the text say?")),
        "truth": scene.text, "answer_type": "number" if scene.is_number else "other",
        "confusions": [typo(scene.text)], "noise": 0.4 if scene.text_size == "small" else 0.1,
        "hard": scene.text_size == "small", "kind": "ocr",
    }]


def _questions_v4(scene: Scene, rng: random.Random) -> list[dict[str, Any]]:
    """World version 4's questions (Sort-of-CLEVR's, in VQAv2 form): an object is named by its colour, which is
    unique in the scene, or by where it is. Is there a <colour> one, how many shapes, what colour is the one
    <somewhere>, where is the <colour> one, and what shape is the <colour> one (the one that needs shapes)."""
    objects = scene.objects
    questions: list[dict[str, Any]] = []
    present = [obj.color for obj in objects]
    color = rng.choice(present) if rng.random() < 0.5 else rng.choice([c for c in COLORS if c not in present])
    truth = "yes" if color in present else "no"
    questions.append({
        "question": f"is there a {color} one?", "truth": truth, "answer_type": "yes/no",
        "confusions": ["no" if truth == "yes" else "yes"], "noise": 0.1,
        "hard": truth == "yes" and next(o for o in objects if o.color == color).size == "small",
    })
    questions.append({
        "question": "how many shapes are there?", "truth": str(len(objects)), "answer_type": "number",
        "confusions": [str(len(objects) - 1), str(len(objects) + 1)], "noise": 0.2,
        "hard": any(obj.size == "small" for obj in objects),
    })
    by_position: dict[str, list[Shape]] = {}
    for obj in objects:
        by_position.setdefault(obj.position, []).append(obj)
    alone = [found[0] for found in by_position.values() if len(found) == 1]
    if alone:
        obj = rng.choice(alone)
        questions.append({
            "question": f"what color is the one {obj.where()}?", "truth": obj.color, "answer_type": "other",
            "confusions": [COLOR_CONFUSIONS[obj.color]], "noise": 0.3 if obj.size == "small" else 0.1,
            "hard": obj.size == "small",
        })
    obj = rng.choice(objects)
    questions.append({
        "question": f"where is the {obj.color} one?", "truth": obj.position, "answer_type": "other",
        "confusions": [rng.choice([p for p in POSITIONS if p != obj.position])], "noise": 0.15,
        "hard": obj.size == "small",
    })
    obj = rng.choice(objects)
    questions.append({
        "question": f"what shape is the {obj.color} one?", "truth": obj.shape, "answer_type": "other",
        "confusions": [s for s in V4_SHAPES if s != obj.shape], "noise": 0.3 if obj.size == "small" else 0.1,
        "hard": obj.size == "small",
    })
    for item in questions:
        item["kind"] = "vqa"
    return questions + _ocr_question(scene, rng)


def _annotate_all(questions: list[dict[str, Any]], rng: random.Random) -> None:
    """Fix the articles of each question and turn its truth into ten human answers, in place."""
    for item in questions:
        item["question"] = _fix_articles(item["question"])
        item["answers"] = _annotate(item.pop("truth"), item.pop("confusions"), rng, item.pop("noise"))


def _whole_scene_questions(scene: Scene, rng: random.Random) -> list[dict[str, Any]]:
    """World versions 2 and 3's questions that need no shape recognition: is there a <colour> shape (colour alone,
    which small models ground first) and how many shapes are there (all objects)."""
    colors = {obj.color for obj in scene.objects}
    color = rng.choice(sorted(colors)) if rng.random() < 0.5 else rng.choice([c for c in COLORS if c not in colors])
    truth = "yes" if color in colors else "no"
    count = len(scene.objects)
    return [
        {"question": f"is there a {color} shape?", "truth": truth, "answer_type": "yes/no",
         "confusions": ["no" if truth == "yes" else "yes"], "noise": 0.1,
         "hard": truth == "yes" and all(o.size == "small" for o in scene.objects if o.color == color),
         "kind": "vqa"},
        {"question": "how many shapes are there?", "truth": str(count), "answer_type": "number",
         "confusions": [str(count - 1), str(count + 1)], "noise": 0.25,
         "hard": any(obj.size == "small" for obj in scene.objects), "kind": "vqa"},
    ]


# ----------------------------------------------------------------------------------------- text world
@dataclass(frozen=True)
class Facts:
    """The world's knowledge: each thing's colour, shape and home (fixed by the world seed)."""

    color: dict[str, str]
    shape: dict[str, str]
    home: dict[str, str]


def world_facts(seed: int) -> Facts:
    """Assign every thing a colour, a shape and a home, deterministically from ``seed``."""
    rng = _rng("facts", seed)
    return Facts(
        color={thing: rng.choice(tuple(COLORS)) for thing in THINGS},
        shape={thing: rng.choice(SHAPES) for thing in THINGS},
        home={thing: rng.choice(PLACES) for thing in THINGS},
    )


def _fact_sentence(facts: Facts, thing: str, rng: random.Random) -> str:
    return rng.choice((
        f"the {thing} is {facts.color[thing]}.",
        f"every {thing} is {facts.color[thing]}.",
        f"the {thing} is shaped like a {facts.shape[thing]}.",
        f"the {thing} lives in the {facts.home[thing]}.",
        f"you can find the {thing} in the {facts.home[thing]}.",
        _fix_articles(f"the {facts.color[thing]} {thing} looks like a {facts.shape[thing]}."),
    ))


def _cloze_story(facts: Facts, rng: random.Random) -> tuple[str, str]:
    """A short story whose last word can only be predicted from the story itself (LAMBADA-style)."""
    a, b = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    place = rng.choice(PLACES)
    color = rng.choice(tuple(COLORS))
    pattern = rng.randrange(4)
    if pattern == 0:
        context = (f"{a} lived near the {place}. one day {a} met {b} at the market. {b} asked where {a} lived. "
                   f"{a} smiled and said that home was near the")
        return context, place
    if pattern == 1:
        context = (f"{a} painted the {thing} {color}. then {a} showed the {thing} to {b}. {b} said that the "
                   f"new color of the {thing} was")
        return context, color
    if pattern == 2:
        context = (f"{a} {rng.choice(('found', 'bought'))} the {thing} and gave it to {b}. later {b} lost it in the "
                   f"{place}. so {b} went back to look for the lost")
        return context, thing
    context = (f"{a} and {b} went to the {place}. {b} was tired and sat down, but {a} kept walking. "
               f"after an hour, the one who came back first was")
    return context, a


def _text_document(facts: Facts, rng: random.Random) -> tuple[str, str]:
    """One text-only document (facts, a story, Q&A or a cloze story); returns (kind, text)."""
    kind = rng.choice(("facts", "story", "qa", "cloze"))
    if kind == "facts":
        things = rng.sample(THINGS, rng.randint(3, 6))
        return kind, " ".join(_fact_sentence(facts, thing, rng) for thing in things)
    if kind == "story":
        a, b = rng.sample(NAMES, 2)
        things = rng.sample(THINGS, 3)
        count = rng.randint(2, 5)
        sentences = [
            f"{a} {rng.choice(VERBS)} {_count_word(count)} {facts.color[things[0]]} {_plural(things[0], count)} "
            f"in the {facts.home[things[0]]}.",
            _fix_articles(f"{b} came with a {things[1]} that was {facts.color[things[1]]}."),
            _fix_articles(f"together they {rng.choice(VERBS)} a {things[2]} shaped like a {facts.shape[things[2]]}."),
            f"at the end of the day {a} had {_count_word(count)} {_plural(things[0], count)}.",
        ]
        return kind, " ".join(sentences)
    if kind == "qa":
        lines = []
        for thing in rng.sample(THINGS, rng.randint(2, 4)):
            question, answer = rng.choice((
                (f"what color is the {thing}?", facts.color[thing]),
                (f"what shape is the {thing}?", facts.shape[thing]),
                (f"where does the {thing} live?", facts.home[thing]),
            ))
            lines.append(text_qa(question, answer))
        return kind, " ".join(lines)
    context, target = _cloze_story(facts, rng)
    return kind, f"{context} {target}."


def text_document(facts: Facts, rng: random.Random) -> tuple[str, str]:
    """One text-only document (facts, a story, Q&A or a cloze story) as (kind, text), articles fixed."""
    kind, text = _text_document(facts, rng)
    return kind, _fix_articles(text)


# ------------------------------------------------------------------------------------------ the world
@dataclass(frozen=True)
class SyntheticImage:
    """A synthetic image: rendered on first ``load`` and cached as PNG; later loads read the cache."""

    key: str
    path: Path
    scene: Scene

    def load(self) -> Image.Image:
        """The image as RGB at the native resolution (rendered and cached if not on disk yet)."""
        try:
            with Image.open(self.path) as image:
                return image.convert("RGB")
        except (FileNotFoundError, OSError, SyntaxError):
            pass
        image = render_scene(self.scene)
        _write_png(self.path, image)
        return image

    def ensure(self) -> bool:
        """Render and cache the image if it is not on disk yet; True if it had to be rendered."""
        if self.path.exists():
            return False
        _write_png(self.path, render_scene(self.scene))
        return True

    def stored_pixels(self, image_size: int) -> np.ndarray:
        """uint8 [S, S, 3] pixels at ``image_size``, kept on disk next to the PNG after the first resize.

        Decoding the 256 px PNG and resizing it cost ~1 ms an image; reading the stored pixels ~0.01 ms, so every
        run after the first at a resolution (a grid's other cells, seeds, reruns, evals) skips both. The pixels
        are those of ``data.images.decode_resized`` (the same code, so bit-identical); a file of the wrong length
        is redone.
        """
        from mmbench_cli.data.images import decode_resized

        path = self.path.parent / f"{image_size}px-r{RESIZE_VERSION}" / f"{self.path.stem}.u8"
        shape = (image_size, image_size, 3)
        with contextlib.suppress(FileNotFoundError):
            data = path.read_bytes()
            if len(data) == math.prod(shape):
                return np.frombuffer(data, dtype=np.uint8).reshape(shape)
        array = decode_resized(self, image_size)
        atomic_write_bytes(path, array.tobytes())
        return array


def _write_png(path: Path, image: Image.Image) -> None:
    """Write a cache PNG atomically, so a killed renderer never leaves a truncated image in the cache."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    atomic_write_bytes(path, buffer.getvalue())


class SyntheticWorld:
    """The embedded synthetic multimodal world (see the module docstring and docs/data.md).

    Everything is a pure function of ``seed`` (and the split sizes): two worlds with the same seed produce
    byte-identical images and identical texts.
    """

    def __init__(
        self,
        seed: int = 0,
        num_train_images: int = 4000,
        num_val_images: int = 200,
        num_test_images: int = 400,
        cache_dir: str | None = None,
        version: int = WORLD_VERSION,
    ) -> None:
        if version not in WORLD_VERSIONS:
            raise MMError(f"data.world_version {version}: unknown; choose from: {', '.join(map(str, WORLD_VERSIONS))}")
        self.seed = seed
        self.version = version
        self.num_images = {"train": num_train_images, "val": num_val_images, "test": num_test_images}
        self.cache_dir = cache_dir
        self.facts = world_facts(seed)
        self._memo: dict[tuple[str, ...], list[Any]] = {}

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise MMError(f"split {split!r}: unknown split; choose from: {', '.join(SPLITS)}")

    @cached_property
    def image_dir(self) -> Path:
        """Where this world's rendered images are cached."""
        from mmbench_cli.rundir import cache_root

        folder = f"v{RENDER_VERSION}-seed{self.seed}" if self.version < 4 else f"world{self.version}-seed{self.seed}"
        return cache_root(self.cache_dir) / "synthetic" / folder

    @property
    def _key_prefix(self) -> str:
        """``synthetic:<seed>`` (versions 1-3 share images), ``synthetic-w4:<seed>`` for version 4's own."""
        return f"synthetic:{self.seed}" if self.version < 4 else f"synthetic-w{self.version}:{self.seed}"

    # images and scenes ---------------------------------------------------------------------------
    def scene(self, split: str, index: int) -> Scene:
        """The scene of image ``index`` of ``split`` (independent of the split sizes)."""
        return scene_for_version(_rng("scene", self.seed, split, index), self.version)

    def image(self, split: str, index: int) -> SyntheticImage:
        """The (lazily rendered) image ``index`` of ``split``."""
        return SyntheticImage(
            key=f"{self._key_prefix}:{split}:{index}",
            path=self.image_dir / split / f"{index:06d}.png",
            scene=self.scene(split, index),
        )

    def images(self, split: str) -> list[SyntheticImage]:
        """All images of ``split``."""
        self._check_split(split)
        key = ("images", split)
        if key not in self._memo:
            self._memo[key] = [self.image(split, index) for index in range(self.num_images[split])]
        return list(self._memo[key])

    def materialize(self, splits: Iterable[str] = SPLITS, progress: Callable[[int], None] | None = None) -> int:
        """Render every image of ``splits`` that is not cached yet; returns how many were rendered."""
        rendered = 0
        for split in splits:
            for image in self.images(split):
                rendered += image.ensure()
                if progress:
                    progress(1)
        return rendered

    # captions and VQA ----------------------------------------------------------------------------
    def captions(self, split: str) -> list[CaptionSample]:
        """Five reference captions per image of ``split``."""
        if ("captions", split) in self._memo:
            return list(self._memo[("captions", split)])
        samples = []
        for image in self.images(split):
            index = int(image.path.stem)
            captions = scene_captions(image.scene, _rng("captions", self.seed, split, index))
            samples.append(CaptionSample(
                image_id=image.key, image=image, captions=captions, meta={"split": split, "source": "synthetic"}
            ))
        self._memo[("captions", split)] = samples
        return list(samples)

    def conversations(self, split: str) -> list[Conversation]:
        """The instruction split: one multi-turn dialogue per image of ``split``, its VQA and OCR questions in turn
        (each answered with its majority answer), for ``train.stage: sft``."""
        if ("conversations", split) in self._memo:
            return list(self._memo[("conversations", split)])
        turns: dict[str, list[tuple[str, str]]] = {}
        images: dict[str, Any] = {}
        for sample in self.vqa(split) + self.vqa(split, "ocr"):
            turns.setdefault(sample.image_id, []).append((sample.question, majority_answer(sample.answers)))
            images[sample.image_id] = sample.image
        samples = [Conversation(doc_id=f"{key}:dialogue", image=images[key], turns=dialogue,
                                meta={"split": split, "source": "synthetic"})
                   for key, dialogue in turns.items()]
        self._memo[("conversations", split)] = samples
        return list(samples)

    def twins(self, split: str) -> list[CaptionSample]:
        """The counterfactual twin of every image of ``split`` (``twin_scene``: one shape or the word changed), with
        five captions each, in the order of ``captions(split)``; rendered lazily into the image cache's
        ``<split>-twins`` folder. Used by the ``twinclip`` encoder pre-training only."""
        self._check_split(split)
        if ("twins", split) in self._memo:
            return list(self._memo[("twins", split)])
        samples = []
        for index in range(self.num_images[split]):
            scene = twin_scene(self.scene(split, index), _rng("twin", self.seed, split, index))
            image = SyntheticImage(key=f"{self._key_prefix}:{split}-twin:{index}",
                                   path=self.image_dir / f"{split}-twins" / f"{index:06d}.png", scene=scene)
            captions = scene_captions(scene, _rng("twin-captions", self.seed, split, index))
            samples.append(CaptionSample(image_id=image.key, image=image, captions=captions,
                                         meta={"split": split, "source": "synthetic", "twin": True}))
        self._memo[("twins", split)] = samples
        return list(samples)

    def vqa(self, split: str, kind: str = "vqa") -> list[VQASample]:
        """VQA questions (``kind="vqa"``: colour/count/position/yes-no) or OCR questions (``kind="ocr"``)."""
        if kind not in ("vqa", "ocr"):
            raise MMError(f"vqa kind {kind!r}: choose vqa or ocr")
        if ("vqa", split, kind) in self._memo:
            return list(self._memo[("vqa", split, kind)])
        samples = []
        for image in self.images(split):
            index = int(image.path.stem)
            for number, item in enumerate(scene_questions(image.scene, _rng("vqa", self.seed, split, index), self.version)):
                if item["kind"] != kind:
                    continue
                samples.append(VQASample(
                    question_id=f"{image.key}:q{number}", image_id=image.key, image=image,
                    question=item["question"], answers=item["answers"], answer_type=item["answer_type"],
                    meta={"split": split, "kind": kind, "hard": item["hard"], "source": "synthetic"},
                ))
        self._memo[("vqa", split, kind)] = samples
        return list(samples)

    # multiple choice and POPE-style probes --------------------------------------------------------
    def multiple_choice(self, split: str) -> list[MultipleChoiceSample]:
        """"what shape is the red one?" for a colour that one object of the image has, with the world's shapes as
        options (the right one and up to three others, shuffled per question; world 4's three shapes are all
        options). Images where no colour is unique ask nothing."""
        if ("choice", split) in self._memo:
            return list(self._memo[("choice", split)])
        shapes = _vocabulary(self.version)[0]
        samples = []
        for image in self.images(split):
            index = int(image.path.stem)
            rng = _rng("choice", self.seed, split, index)
            colours = Counter(obj.color for obj in image.scene.objects)
            unique = [obj for obj in image.scene.objects if colours[obj.color] == 1]
            if not unique:
                continue
            obj = rng.choice(unique)
            options = [obj.shape, *rng.sample([s for s in shapes if s != obj.shape], min(3, len(shapes) - 1))]
            rng.shuffle(options)
            samples.append(MultipleChoiceSample(
                question_id=f"{image.key}:choice", images=[image], question=f"what shape is the {obj.color} one?",
                options=options, answer=options.index(obj.shape),
                meta={"split": split, "source": "synthetic", "image_id": image.key}))
        self._memo[("choice", split)] = samples
        return list(samples)

    def pope(self, split: str, negatives: str = "random", per_image: int = 3) -> list[YesNoSample]:
        """POPE-style object-presence questions ("is there a red circle in the image?"): for each image up to
        ``per_image`` of its objects (colour + shape) answered yes, and as many absent objects answered no, drawn
        as POPE draws them from the split's statistics: ``random`` (uniformly), ``popular`` (the split's most
        frequent objects) or ``adversarial`` (the objects that co-occur most with the image's own)."""
        if negatives not in POPE_NEGATIVES:
            raise MMError(f"pope negatives {negatives!r}: choose from {', '.join(POPE_NEGATIVES)}")
        key = ("pope", split, negatives, str(per_image))
        if key in self._memo:
            return list(self._memo[key])
        shapes = _vocabulary(self.version)[0]
        vocabulary = [f"{colour} {shape}" for colour in COLORS for shape in shapes]
        present = [sorted({f"{obj.color} {obj.shape}" for obj in image.scene.objects}) for image in self.images(split)]
        frequency = Counter(name for names in present for name in names)
        together: Counter[tuple[str, str]] = Counter((a, b) for names in present for a in names for b in names if a != b)
        samples = []
        for image, names in zip(self.images(split), present, strict=True):
            index = int(image.path.stem)
            positives = _rng("pope", self.seed, split, index).sample(names, min(per_image, len(names)))
            absent = [name for name in vocabulary if name not in names]
            if negatives == "random":
                chosen = _rng("pope-random", self.seed, split, index).sample(absent, min(len(positives), len(absent)))
            else:
                score = {n: frequency[n] if negatives == "popular" else sum(together[(own, n)] for own in names)
                         for n in absent}
                chosen = sorted(absent, key=lambda n: (-score[n], n))[:len(positives)]
            for number, (name, label) in enumerate([(n, "yes") for n in positives] + [(n, "no") for n in chosen]):
                samples.append(YesNoSample(
                    question_id=f"{image.key}:pope{number}", image_id=image.key, image=image,
                    question=f"is there {'an' if name[0] in 'aeiou' else 'a'} {name} in the image?", label=label,
                    meta={"split": negatives, "source": "synthetic", "object": name}))
        self._memo[key] = samples
        return list(samples)

    # interleaved documents -----------------------------------------------------------------------
    def interleaved(self, split: str) -> list[InterleavedDoc]:
        """MMC4/OBELICS-like documents: 2-4 images sharing a theme (a colour or a shape) with passages.

        The text after each image is a caption in the ``Output:`` format, ``Question: ... Short answer:``
        pairs (world versions 1 and 3: one; 2: every question about the image), or a free sentence; passages about
        the theme's things sit between images.
        """
        images = self.images(split)
        by_theme: dict[str, list[SyntheticImage]] = {}
        for image in images:
            for obj in image.scene.objects:
                for theme in (obj.color, obj.shape):
                    group = by_theme.setdefault(theme, [])
                    if not group or group[-1] is not image:
                        group.append(image)
        themes = sorted(theme for theme, group in by_theme.items() if len(group) >= 2)
        docs = []
        num_docs = max(1, len(images) // 2)
        for number in range(num_docs):
            rng = _rng("interleaved", self.seed, split, number)
            if not themes:
                break
            theme = rng.choice(themes)
            chosen = rng.sample(by_theme[theme], min(len(by_theme[theme]), rng.randint(2, 4)))
            is_color = theme in COLORS
            related = [t for t in THINGS if (self.facts.color[t] if is_color else self.facts.shape[t]) == theme]
            intro = (f"a page about {theme} things." if is_color else f"a page about things shaped like a {theme}.")
            chunks: list[str | ImageRef] = [intro]
            style = rng.choice(DOC_STYLES[self.version])
            for image in chosen:
                index = int(image.path.stem)
                scene_rng = _rng("interleaved-text", self.seed, split, number, index)
                chunks.append(image)
                mode = style if style != "mixed" else rng.choice(("caption", "qa", "free"))
                if mode == "caption":
                    chunks.append("Output: " + scene_captions(image.scene, scene_rng, num=1)[0])
                elif mode == "qa" and QUESTIONS_IN_DOCS[self.version] != 1:  # several questions, random order
                    questions = scene_questions(image.scene, scene_rng, self.version)
                    scene_rng.shuffle(questions)
                    questions = questions[: QUESTIONS_IN_DOCS[self.version] or len(questions)]
                    # each answer closed like a few-shot demo's (format_interleaved closes the last one)
                    chunks.append(EOC.join(text_qa(item["question"], item["answers"][0]) for item in questions))
                elif mode == "qa":
                    item = scene_rng.choice(scene_questions(image.scene, scene_rng, self.version))
                    chunks.append(text_qa(item["question"], item["answers"][0]))
                else:
                    chunks.append("here we see " + scene_captions(image.scene, scene_rng, num=1)[0])
                if related and rng.random() < 0.5:
                    chunks.append(_fix_articles(_fact_sentence(self.facts, rng.choice(related), rng)))
            docs.append(InterleavedDoc(
                doc_id=f"{self._key_prefix}:{split}:doc{number}", chunks=chunks,
                meta={"split": split, "theme": theme, "style": style, "source": "synthetic"},
            ))
        return docs

    # text ----------------------------------------------------------------------------------------
    def num_text_docs(self, split: str) -> int:
        """Text documents per split (proportional to the split's images)."""
        return max(50, self.num_images[split])

    def text(self, split: str) -> list[TextDoc]:
        """Text-only documents about the world; val/test documents never repeat a train document."""
        self._check_split(split)
        seen = self._train_texts if split != "train" else set()
        docs = []
        number = 0
        attempt = 0
        while len(docs) < self.num_text_docs(split):
            kind, text = text_document(self.facts, _rng("text", self.seed, split, attempt))
            attempt += 1
            if text in seen:
                continue
            docs.append(TextDoc(doc_id=f"synthetic:{self.seed}:{split}:text{number}", text=text,
                                meta={"split": split, "kind": kind, "source": "synthetic"}))
            number += 1
        return docs

    @cached_property
    def _train_texts(self) -> set[str]:
        return {doc.text for doc in self.text("train")}

    def text_tasks(self, split: str = "test") -> dict[str, list[dict[str, Any]]]:
        """Items of the three text benchmarks on ``split`` (held out from the training text).

        - ``cloze``: LAMBADA-style ``{context, target}``: the last word is predictable only from the story;
        - ``facts``: multiple choice ``{question, choices, gold}`` about the world's facts (which the
          training text states, so this measures knowledge kept from text-only data);
        - ``perplexity``: ``{doc_id, text}`` held-out documents.
        """
        self._check_split(split)
        num = max(50, self.num_images[split] // 2)
        seen = self._train_texts
        cloze = []
        attempt = 0
        while len(cloze) < num:
            context, target = _cloze_story(self.facts, _rng("cloze", self.seed, split, attempt))
            context = _fix_articles(context)
            attempt += 1
            if f"{context} {target}." in seen:
                continue
            cloze.append({"context": context, "target": target})
        facts = []
        for number in range(num):
            rng = _rng("mc", self.seed, split, number)
            thing = rng.choice(THINGS)
            question, gold_answer, pool = rng.choice((
                (f"what color is the {thing}?", self.facts.color[thing], tuple(COLORS)),
                (f"what shape is the {thing}?", self.facts.shape[thing], SHAPES),
                (f"where does the {thing} live?", self.facts.home[thing], PLACES),
            ))
            choices = [gold_answer, *rng.sample([c for c in pool if c != gold_answer], 3)]
            rng.shuffle(choices)
            facts.append({"question": question, "choices": choices, "gold": choices.index(gold_answer)})
        perplexity = [{"doc_id": doc.doc_id, "text": doc.text} for doc in self.text(split)]
        return {"cloze": cloze, "facts": facts, "perplexity": perplexity}

    def counts(self) -> dict[str, dict[str, int]]:
        """Samples per split and type (for reports)."""
        return {
            split: {
                "images": self.num_images[split],
                "captions": len(self.captions(split)),
                "vqa": len(self.vqa(split, "vqa")),
                "ocr": len(self.vqa(split, "ocr")),
                "interleaved": len(self.interleaved(split)),
                "text": len(self.text(split)),
            }
            for split in SPLITS
        }


def world_from_config(data_cfg: DataConfig) -> SyntheticWorld:
    """The synthetic world described by a ``DataConfig``."""
    return SyntheticWorld(
        seed=data_cfg.world_seed,
        num_train_images=data_cfg.num_train_images,
        num_val_images=data_cfg.num_val_images,
        num_test_images=data_cfg.num_test_images,
        cache_dir=data_cfg.cache_dir,
        version=data_cfg.world_version,
    )


def tokenizer_corpus(world_seed: int = 0, num_scenes: int = 1500) -> list[str]:
    """Texts covering every word the world uses, for training the BPE tokenizer (renders no images).

    Holds captions, questions and answers of ``num_scenes`` scenes, interleaved-style text, the
    text-only corpus and cloze/fact items, plus one line listing the whole vocabulary so that rare
    words (and every number 0-99) are always present.
    """
    from mmbench_cli.data.templates import caption_demo, format_interleaved, vqa_demo

    facts = world_facts(world_seed)
    texts: list[str] = []
    for index in range(num_scenes):
        scene = make_scene(_rng("scene", world_seed, "train", index))
        rng = _rng("corpus", world_seed, index)
        for caption in scene_captions(scene, rng):
            texts.append(caption_demo(caption))
        for item in scene_questions(scene, rng):
            texts.append(vqa_demo(item["question"], item["answers"][0]))
            texts.append(text_qa(item["question"], item["answers"][0]))
    for index in range(num_scenes):
        texts.append(text_document(facts, _rng("text", world_seed, "train", index))[1])
    # Version 1's documents, whatever the default: the tokenizer of every world version must stay the same.
    world = SyntheticWorld(world_seed, num_train_images=min(num_scenes, 400), num_val_images=1, num_test_images=1,
                           version=1)
    texts.extend(format_interleaved(doc)[0] for doc in world.interleaved("train"))  # renders nothing
    vocabulary = [
        *COLORS, *SHAPES, *(_plural(s, 2) for s in SHAPES), *SIZES, *POSITIONS, *NUMBER_WORDS, *WORDS,
        *THINGS, *(_plural(t, 2) for t in THINGS), *PLACES, *NAMES, *VERBS,
        *(str(n) for n in range(100)), *(typo(w) for w in WORDS), *(typo(str(n)) for n in range(10, 100)),
        "yes", "no", "word", "number", "written", "letters", "page", "things",
        "shaped", "here", "we", "see",
    ]
    texts.append(" ".join(vocabulary))
    texts.append(" ".join(f"{w}." for w in vocabulary))
    return texts


@lru_cache(maxsize=4)
def _memo_corpus(world_seed: int) -> tuple[str, ...]:
    return tuple(tokenizer_corpus(world_seed))


@dataclass(frozen=True)
class WorldTokenizerSource:
    """What the model needs from the data side to make its tokenizer (``model.tokenizer.TokenizerSource``).

    The special tokens every tokenizer gets (``templates.SPECIAL_TOKENS``), the synthetic world's corpus for
    training the ``synthetic-bpe`` (made only when asked for, then memoised in this process) and where
    trained tokenizers are cached.
    """

    world_seed: int = 0
    cache_dir: str | None = None

    @property
    def special_tokens(self) -> Mapping[str, str]:
        """Role → string of the special tokens (``templates.SPECIAL_TOKENS``)."""
        return SPECIAL_TOKENS

    def corpus(self) -> Sequence[str]:
        """``tokenizer_corpus(world_seed)``, made once per process."""
        return _memo_corpus(self.world_seed)


def tokenizer_source(data_cfg: DataConfig | None = None) -> WorldTokenizerSource:
    """The tokenizer source of a ``DataConfig`` (default: world seed 0, the default cache); pass it to
    ``build_model`` / ``get_tokenizer``. Local datasets use the same synthetic-world tokenizer."""
    if data_cfg is None:
        return WorldTokenizerSource()
    return WorldTokenizerSource(world_seed=data_cfg.world_seed, cache_dir=data_cfg.cache_dir)
