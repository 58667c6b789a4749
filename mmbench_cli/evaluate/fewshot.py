"""Few-shot prompting as open_flamingo / MM1 evaluate: demos from the train split, then the query.

- ``query_set``: the fixed subset of evaluation queries (the same for every seed and shot count, so seeds
  only change the demos);
- ``demo_pool``: open_flamingo's "query set": a fixed random subset of the train split per seed, from which
  each query's demos are drawn;
- ``select_random`` / ``select_rices``: k demos per query; RICES ranks the pool by cosine similarity of image
  features and puts the most similar demo LAST (nearest the query), as open_flamingo's ``RICES.find``;
- ``build_prompt``: the interleaved text (templates from ``mmbench_cli.data.templates``) and its images;
  with ``text_only_demos`` (Flamingo's 0-shot variant) two demos are shown as text with their images dropped;
- ``postprocess``: generations cut at the template's stop words, plus open_flamingo's short-answer cleanup.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mmbench_cli.data import templates
from mmbench_cli.data.types import CaptionSample, ImageRef, VQASample
from mmbench_cli.errors import MMError

if TYPE_CHECKING:
    import torch

Query = CaptionSample | VQASample  # a few-shot query or demo

STOP_STRINGS = (templates.EOC_TOKEN, templates.EOS_TOKEN, templates.PAD_TOKEN, templates.IMAGE_TOKEN, "\n")
FLAMINGO_ZERO_SHOT_DEMOS = 2


def query_set(samples: Sequence[Any], num_samples: int, seed: int = 0) -> list[Any]:
    """A fixed random subset of ``num_samples`` evaluation queries (all of them if there are fewer)."""
    if not samples:
        raise MMError("evaluation queries: the task has no samples to evaluate")
    if num_samples >= len(samples):
        return list(samples)
    indices = sorted(random.Random(f"queries-{seed}").sample(range(len(samples)), num_samples))
    return [samples[i] for i in indices]


def demo_pool(samples: Sequence[Any], size: int, seed: int) -> list[Any]:
    """open_flamingo's per-seed "query set": ``size`` train samples drawn with ``seed`` (all if fewer)."""
    if size >= len(samples):
        return list(samples)
    return random.Random(f"pool-{seed}").sample(list(samples), size)


def check_pool(pool: Sequence[Any], shots: int, task: str) -> None:
    """Raise MMError when the demo pool cannot supply ``shots`` distinct demos."""
    if shots > len(pool):
        raise MMError(f"--shots {shots}: task {task} has only {len(pool)} demonstration samples in its train "
                      f"split; use at most {len(pool)} shots or a larger demo split")


def select_random(pool: Sequence[Any], num_queries: int, shots: int, seed: int) -> list[list[Any]]:
    """For each of ``num_queries`` queries, ``shots`` distinct demos drawn uniformly from ``pool`` with ``seed``."""
    rng = random.Random(f"demos-{seed}-{shots}")
    return [rng.sample(list(pool), shots) if shots else [] for _ in range(num_queries)]


def select_rices(pool: Sequence[Query], pool_features: torch.Tensor, query_features: torch.Tensor,
                 shots: int) -> list[list[Query]]:
    """RICES: the ``shots`` pool samples whose image features are most similar to each query's.

    Features are L2-normalised and compared by dot product; the list is ordered from least to most similar,
    so the most similar demo sits right before the query (open_flamingo's ``RICES.find`` reverses top-k).
    """
    import torch

    if shots == 0:
        return [[] for _ in range(len(query_features))]
    pool_n = torch.nn.functional.normalize(pool_features.float(), dim=-1)
    query_n = torch.nn.functional.normalize(query_features.float(), dim=-1)
    similarity = query_n @ pool_n.T
    top = similarity.topk(shots, dim=-1).indices  # most similar first
    return [[pool[int(i)] for i in reversed(row.tolist())] for row in top]


def build_prompt(demos: Sequence[Any], query: Any, text_only_demos: bool = False,
                 format_demo: Callable[[Any], str] = templates.format_demo,
                 format_query: Callable[[Any], str] = templates.format_query,
                 images_of: Callable[[Any], list[ImageRef]] = lambda sample: [sample.image]) -> tuple[str, list[ImageRef]]:
    """(prompt text, images in order of appearance) for ``demos`` then ``query``.

    The formats default to the training templates of captions and VQA; a task type passes its own. With
    ``text_only_demos`` the demos keep their text but lose their ``<image>`` markers and images (Flamingo's
    zero-shot variant).
    """
    if text_only_demos:
        text = "".join(format_demo(d).replace(templates.IMAGE_TOKEN, "") for d in demos)
        return text + format_query(query), images_of(query)
    text = "".join(format_demo(d) for d in demos) + format_query(query)
    return text, [image for sample in (*demos, query) for image in images_of(sample)]


def cut_at_stops(text: str) -> str:
    """A generation up to its first stop string (end of chunk, end of text, padding, an image, a new line)."""
    for stop in STOP_STRINGS:
        text = text.split(stop, 1)[0]
    return text


def clean_short_answer(text: str) -> str:
    """open_flamingo's ``postprocess_vqa_generation``: what precedes "Question"/"Answer"/"Short" and the first ", "."""
    text = re.split("Question|Answer|Short", cut_at_stops(text), maxsplit=1)[0]
    return re.split(", ", text, maxsplit=1)[0].strip()


def clean_caption(text: str) -> str:
    """open_flamingo's ``postprocess_captioning_generation``: what precedes "Output", double quotes dropped."""
    return cut_at_stops(text).split("Output", 1)[0].replace('"', "").strip()


CLEANERS: dict[str | None, Callable[[str], str]] = {"vqa": clean_short_answer, "caption": clean_caption}


def postprocess(text: str, style: str | None) -> str:
    """Cut a generation at the first stop string, then clean it as open_flamingo does for the prompt style
    (``vqa``: ``clean_short_answer``; anything else: ``clean_caption``)."""
    return CLEANERS.get(style, clean_caption)(text)
