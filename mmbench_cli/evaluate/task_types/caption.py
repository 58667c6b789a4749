"""Captioning: ``<image>Output: {caption}<|endofchunk|>`` prompts, generated captions scored by CIDEr.

Extra metric: NoCaps's CIDEr by domain, when the annotations give each image's domain. Synthetic captioning
cells record the world's colour and shape words (``vocabulary``) so a report can check what captions name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmbench_cli.data import templates
from mmbench_cli.data.types import CaptionSample
from mmbench_cli.evaluate.task_types import TaskType
from mmbench_cli.registry import TASK_TYPES

if TYPE_CHECKING:
    from mmbench_cli.data.synthetic import SyntheticWorld
    from mmbench_cli.evaluate.tasks import TaskSpec


class CaptionType(TaskType):
    """Few-shot captioning, as open_flamingo's COCO / NoCaps / TextCaps evaluation."""

    name = "caption"
    sample_type = CaptionSample
    dataset_kind = "caption"
    max_new_tokens = 20
    default_metric = "CIDEr"
    synthetic_kinds = ("caption",)

    def synthetic_samples(self, world: SyntheticWorld, split: str, spec: TaskSpec) -> list[Any]:
        return world.captions(split)

    def format_demo(self, sample: Any, spec: TaskSpec) -> str:
        return templates.caption_demo(sample.captions[0])

    def format_query(self, sample: Any, spec: TaskSpec) -> str:
        return templates.caption_prompt()

    def prompt_fields(self, sample: Any, spec: TaskSpec) -> dict[str, str]:
        return {"caption": sample.captions[0], "answer": sample.captions[0]}

    def postprocess(self, text: str, spec: TaskSpec) -> str:
        from mmbench_cli.evaluate.fewshot import clean_caption

        return clean_caption(text)

    def references(self, sample: Any, spec: TaskSpec) -> list[str]:
        return list(sample.captions)

    def sample_id(self, sample: Any) -> str:
        return str(sample.image_id)

    def record_fields(self, sample: Any) -> dict[str, Any]:
        return {"domain": sample.meta["domain"]} if sample.meta.get("domain") is not None else {}

    def has_extra_metrics(self, spec: TaskSpec, queries: Sequence[Any]) -> bool:
        return any(q.meta.get("domain") for q in queries)

    def extra_metrics(self, spec: TaskSpec, records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
        """NoCaps's in-domain / near-domain / out-domain / entire CIDEr (x100) when records carry a domain."""
        from mmbench_cli.evaluate.metrics import cider_by_domain

        if not records or not any(r.get("domain") for r in records):
            return {}
        by_domain = cider_by_domain([str(r["id"]) for r in records], [str(r["prediction"]) for r in records],
                                    [list(r["references"]) for r in records], [r.get("domain") for r in records])
        return {"cider_by_domain": {name: 100.0 * value for name, value in by_domain.items()}}

    def result_metadata(self, spec: TaskSpec, world_version: int = 1) -> dict[str, Any]:
        """Synthetic captioning: the world's colour and shape words (world 4 draws three of the five shapes)."""
        if spec.source != "synthetic":
            return {}
        from mmbench_cli.data.synthetic import COLORS, SHAPES, V4_SHAPES

        return {"vocabulary": {"colour": list(COLORS), "shape": list(V4_SHAPES if world_version >= 4 else SHAPES)}}


TASK_TYPES.add(CaptionType.name, CaptionType())
