"""Image preprocessing: resize to the encoder's resolution and normalise (the one place it happens)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mmbench_cli.data.types import ImageRef, as_rgb
from mmbench_cli.rundir import env_number

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_pil(image: Image.Image | ImageRef) -> Image.Image:
    """An RGB PIL image from a PIL image or an ``ImageRef`` (which decodes its file)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else as_rgb(image)
    return image.load()


def resize_square(image: Image.Image, image_size: int) -> Image.Image:
    """Resize to ``image_size`` x ``image_size`` (bicubic, antialiased when shrinking, as CLIP/SigLIP do).

    Non-square images are centre-cropped to a square first, so objects keep their aspect ratio.
    """
    width, height = image.size
    if width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return image


class _ResizedCache:
    """Decoded-and-resized images (uint8) of ``ImageRef``s by (key, size), least recently used out first.

    Decoding and resizing dominate the data stream's cost; with a few thousand training images every
    epoch after the first is then nearly free (and synthetic images keep their resized pixels on disk, so
    later runs skip even the first decode). Bounded by ``$MMBENCH_IMAGE_CACHE_MB`` (default 256; 0 = off).
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self.bytes = 0

    @property
    def budget(self) -> int:
        return int(env_number("MMBENCH_IMAGE_CACHE_MB") * 2**20)

    def get(self, image: ImageRef, image_size: int) -> np.ndarray:
        key = (image.key, image_size)
        array = self.entries.get(key)
        if array is not None:
            self.entries.move_to_end(key)
            return array
        array = _resized(image, image_size)
        budget = self.budget
        if array.nbytes <= budget:
            self.entries[key] = array
            self.bytes += array.nbytes
            while self.bytes > budget:
                _, old = self.entries.popitem(last=False)
                self.bytes -= old.nbytes
        return array


_CACHE = _ResizedCache()


def decode_resized(image: ImageRef, image_size: int) -> np.ndarray:
    """uint8 [S, S, 3] pixels of ``image`` decoded and resized (no cache of any kind)."""
    return np.asarray(resize_square(image.load(), image_size), dtype=np.uint8)


def _resized(image: ImageRef, image_size: int) -> np.ndarray:
    """Decode and resize ``image``, or read its stored pixels when its kind keeps them (synthetic images do)."""
    stored = getattr(image, "stored_pixels", None)
    return stored(image_size) if stored is not None else decode_resized(image, image_size)


def _pixels(image: Image.Image | ImageRef, image_size: int) -> np.ndarray:
    """uint8 [S, S, 3] pixels of an image at ``image_size`` (``ImageRef`` pixels are cached once resized)."""
    if isinstance(image, Image.Image):
        return np.asarray(resize_square(to_pil(image), image_size), dtype=np.uint8)
    return _CACHE.get(image, image_size)


def _normalise_into(pixels: np.ndarray, out: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> None:
    """out[3, S, S] = (pixels / 255 - mean) / std, in two passes without temporaries."""
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32)))[:, None, None]
    offset = (-np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32))[:, None, None]
    np.multiply(pixels.transpose(2, 0, 1), scale, out=out, casting="unsafe")
    out += offset


def preprocess_one(
    image: Image.Image | ImageRef, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """One image as a normalised ``FloatTensor[3, S, S]``."""
    out = np.empty((3, image_size, image_size), dtype=np.float32)
    _normalise_into(_pixels(image, image_size), out, mean, std)
    return torch.from_numpy(out)


def preprocess(
    images: Sequence[Image.Image | ImageRef],
    image_size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """Resize and normalise images (PIL or ``ImageRef``) into ``FloatTensor[N, 3, S, S]``.

    Writes straight into one preallocated array (no per-image tensors and no ``torch.stack`` copy).
    """
    out = np.empty((len(images), 3, image_size, image_size), dtype=np.float32)
    for index, image in enumerate(images):
        _normalise_into(_pixels(image, image_size), out[index], mean, std)
    return torch.from_numpy(out)
