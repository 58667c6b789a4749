"""The sample types every data source produces (synthetic world and real-format loaders alike).

Images are referenced, not held: ``ImageRef.load()`` opens them when needed, so a dataset of 100k samples
costs little memory and a DataLoader worker can decode in parallel. ``ImageRef.key`` is a stable identity
(used to cache image features in evaluation and to check that splits do not leak images).
"""

from __future__ import annotations

import contextlib
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from PIL import Image

from mmbench_cli.errors import MMError

# What decoding a hostile image file raises (PIL is not uniform: a header without data fails verify() with an
# IndexError, a truncated one with struct.error or EOFError); each becomes one line naming the file.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, IndexError, EOFError, struct.error, Image.DecompressionBombError,
                Image.DecompressionBombWarning)


@contextlib.contextmanager
def open_image(source: str | Path | IO[bytes]) -> Iterator[Image.Image]:
    """``Image.open`` as every reader of an image file uses it: a decompression-bomb size is an error (one of
    ``IMAGE_ERRORS``, never PIL's warning printed before our error line), and so is a truncated file, whatever
    another library in the process set PIL's global ``LOAD_TRUNCATED_IMAGES`` to (lmms-eval sets it on import)."""
    from PIL import ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                yield image
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def as_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB; 16-bit greyscale (PNG ``I;16``, ``I``) is scaled to 8 bits, not clipped to white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        import numpy as np

        pixels = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))
    return image.convert("RGB")  # a decoded copy, even of an RGB image: the file it came from may close


@runtime_checkable
class ImageRef(Protocol):
    """Something that can produce an RGB PIL image, with a stable key."""

    key: str

    def load(self) -> Image.Image:
        """Return the image as RGB (raises MMError naming the file if it cannot be read)."""
        ...


@dataclass(frozen=True)
class FileImage:
    """An image file on local disk."""

    path: Path
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", str(self.path))

    def load(self) -> Image.Image:
        """Open and decode the file as RGB; a missing or corrupt file is an MMError naming it."""
        try:
            with open_image(self.path) as image:
                return as_rgb(image)
        except FileNotFoundError:
            raise MMError(f"{self.path}: image file not found") from None
        except IMAGE_ERRORS as error:
            raise MMError(f"{self.path}: cannot read image ({error.__class__.__name__}: {error})") from None


@dataclass(frozen=True)
class MemoryImage:
    """An image already in memory (e.g. decoded from a Hugging Face datasets row)."""

    image: Image.Image
    key: str

    def load(self) -> Image.Image:
        """Return the image as RGB."""
        return as_rgb(self.image)


@dataclass
class CaptionSample:
    """An image with one or more reference captions (COCO style)."""

    image_id: str
    image: ImageRef
    captions: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class VQASample:
    """A question about an image with (usually ten) human answers, VQAv2 style."""

    question_id: str
    image_id: str
    image: ImageRef
    question: str
    answers: list[str]
    answer_type: str = "other"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class MultipleChoiceSample:
    """A question with lettered options and one right option (ScienceQA, MMBench, SEED-Bench, MMMU style).

    ``images`` are in reading order; when ``question`` holds ``<image>`` markers (MMMU's ``<image 1>`` slots) each
    marker is where the image at that position goes, otherwise the images come before the question.
    ``rotation`` numbers MMBench CircularEval's shifted copies of one question (0: the original order).
    """

    question_id: str
    images: list[ImageRef]
    question: str
    options: list[str]
    answer: int
    hint: str = ""
    rotation: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> ImageRef:
        """The first image (what RICES compares and what a one-image prompt shows)."""
        if not self.images:
            raise MMError(f"question {self.question_id}: has no image")
        return self.images[0]

    @property
    def image_id(self) -> str:
        """The first image's key (the id a record names when it has no question id)."""
        return self.image.key


@dataclass
class YesNoSample:
    """A yes/no question about an image with its label (POPE's object-presence probes).

    ``meta["split"]`` says how a negative was drawn (``random``, ``popular`` or ``adversarial``).
    """

    question_id: str
    image_id: str
    image: ImageRef
    question: str
    label: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class InterleavedDoc:
    """A document of text passages and images in reading order (MMC4/OBELICS style)."""

    doc_id: str
    chunks: list[str | ImageRef]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextDoc:
    """A text-only document."""

    doc_id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Conversation:
    """An instruction-tuning dialogue about one image (LLaVA style): (question, answer) turns, trained on the answers
    only (``train.stage: sft``)."""

    doc_id: str
    image: ImageRef | None
    turns: list[tuple[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)


Sample = CaptionSample | VQASample | InterleavedDoc | TextDoc | Conversation
