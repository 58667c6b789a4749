"""The pre-training stream: MM1 data mixing, sequence packing, image preprocessing, exact resumption.

How a global batch of ``num_rows`` rows is made (all of it deterministic from ``cfg.seed`` and the state):

1. **Types**: row ``n`` gets the data type chosen by smooth weighted round-robin over ``data.data_mix``
   (each type earns its proportion every row; the type with the most credit is served and pays 1), so
   after any ``N`` rows each type has ``N * p`` rows up to less than one row: exact long-run proportions
   with no sampling noise, instead of iid coin flips.
2. **Sources**: within a type, datasets (``data.datasets[].weight``) are interleaved the same way; each
   source walks through a fresh seeded permutation of its samples every epoch.
3. **Packing**: a row is filled with whole samples of its one type (so per-type loss is measurable),
   each formatted by ``data.templates`` and ended with ``<|endoftext|>``; ``<image>`` becomes
   ``num_image_tokens`` image tokens (``templates.encode_interleaved``). A sample that does not fit
   in what is left of a row starts the next row of that type; a sample longer than a row is truncated
   (never inside an image's token block). Padding and image tokens get label -100.
4. **Images** of the rows are decoded and preprocessed in a torch ``DataLoader`` with ``data.num_workers``
   workers (prefetching ahead of the training step); with DDP each rank materialises only its rows
   ``rank::world_size`` of every global batch. An image that fails to decode (say a truncated JPEG whose
   header passed the load-time check) stops training with one line naming it, or, with ``data.skip_bad``,
   its sample is skipped, there and at every later visit: its tokens become padding (no loss, no attention)
   and it is counted once (``TrainStream.bad_skipped``, logged as ``bad_skipped`` in metrics.jsonl).

``state_dict()`` is JSON (row counter, round-robin credits, each source's epoch and position): a stream
restored from it yields exactly the batch the original would have yielded next.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mmbench_cli.data import templates
from mmbench_cli.data.templates import conversation_segments, data_type_of, encode_interleaved
from mmbench_cli.data.types import CaptionSample, Conversation, ImageRef, InterleavedDoc, Sample, VQASample
from mmbench_cli.errors import MMError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

    from mmbench_cli.config import Config

STATE_VERSION = 1


def weighted_round_robin(weights: dict[str, float], credits: dict[str, float]) -> str:
    """One step of smooth weighted round-robin: every key earns its weight, the richest is chosen and pays 1.

    ``credits`` is updated in place. Over any prefix of ``N`` steps key ``k`` is chosen ``N*w_k`` times
    up to less than one (weights summing to 1), and the choices are spread evenly, not clumped.
    """
    best = None
    for key, weight in weights.items():
        if weight <= 0:
            continue
        credits[key] = credits.get(key, 0.0) + weight
        if best is None or credits[key] > credits[best] + 1e-12:
            best = key
    if best is None:
        raise ValueError("all weights are zero")
    credits[best] -= sum(w for w in weights.values() if w > 0)
    return best


# What to do about an image that fails to decode mid-training (mm pretrain's and the encoder stage's errors end with it).
BAD_IMAGE_HINT = ("`mm build --data` decodes every image to find such files, and data.skip_bad=true "
                  "(mm pretrain --skip-bad) skips and counts bad samples instead of stopping")


@dataclass
class Source:
    """One dataset feeding one data type."""

    name: str
    data_type: str
    samples: Sequence[Sample]
    weight: float = 1.0
    num_bad: int = 0  # bad samples skipped while loading (data.skip_bad)


def training_mix(cfg: Config) -> dict[str, float]:
    """The data types a run trains on: ``data.data_mix``, or only dialogues (``instruction``) for ``train.stage: sft``."""
    return {"instruction": 1.0} if cfg.train.stage == "sft" else dict(cfg.data.data_mix)


def sources_from_config(cfg: Config) -> list[Source]:
    """The training sources of a ``Config``: the synthetic world's train split, or ``data.datasets``."""
    data = cfg.data
    if data.source == "synthetic":
        from mmbench_cli.data.synthetic import world_from_config

        world = world_from_config(data)
        if cfg.train.stage == "sft":  # the multi-turn instruction split
            return [Source("synthetic-instruction", "instruction", world.conversations("train"))]
        return [
            Source("synthetic-caption", "caption", world.captions("train")),
            Source("synthetic-interleaved", "interleaved", world.interleaved("train")),
            Source("synthetic-text", "text", world.text("train")),
        ]
    from mmbench_cli.data.formats import load_dataset_spec

    if not data.datasets:
        raise MMError("data.datasets: data.source is local but no datasets are listed; add at least one "
                      "{format, path, images} entry (see docs/data.md)")
    sources = []
    for number, spec in enumerate(data.datasets):
        if spec.split != "train":
            continue
        samples = load_dataset_spec(spec, skip_bad=data.skip_bad)
        by_type: dict[str, list[Sample]] = {}
        for sample in samples:
            by_type.setdefault(data_type_of(sample), []).append(sample)
        for position, (data_type, group) in enumerate(by_type.items()):
            bad = samples.num_bad if position == 0 else 0  # count a file's skipped samples once
            sources.append(Source(f"{number}:{spec.format}:{data_type}", data_type, group, spec.weight, bad))
    return sources


def sample_text(sample: Sample, variant: int) -> tuple[str, list[ImageRef]]:
    """A training sample as (text with ``<image>`` markers ending in ``<|endoftext|>``, its images)."""
    if isinstance(sample, CaptionSample):
        return templates.caption_demo(sample.captions[variant % len(sample.captions)]) + templates.EOS_TOKEN, [
            sample.image
        ]
    if isinstance(sample, VQASample):
        return templates.format_demo(sample) + templates.EOS_TOKEN, [sample.image]
    if isinstance(sample, InterleavedDoc):
        text, images = templates.format_interleaved(sample)
        return text + templates.EOS_TOKEN, images
    if isinstance(sample, Conversation):
        text = "".join(piece for piece, _ in conversation_segments(sample))
        return text + templates.EOS_TOKEN, [sample.image] if sample.image is not None else []
    return templates.format_text(sample) + templates.EOS_TOKEN, []


@dataclass
class RowPlan:
    """One packed row before its images are decoded."""

    data_type: str
    input_ids: list[int]
    labels: list[int]
    images: list[ImageRef]
    sample_ids: list[str]
    length: int  # real tokens before the right padding
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # per sample: (first token, end, its images)


class Planner:
    """Packs rows from the sources (no image decoding): the deterministic half of the stream."""

    def __init__(self, sources: list[Source], data_mix: dict[str, float], seq_len: int, seed: int,
                 tokenizer: PreTrainedTokenizerBase, num_image_tokens: int, cache_size: int = 50_000) -> None:
        self.sources = [source for source in sources if len(source.samples) > 0]
        self.seq_len = seq_len
        self.seed = seed
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.image_id = tokenizer.convert_tokens_to_ids(templates.IMAGE_TOKEN)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.by_type: dict[str, list[int]] = {}
        for index, source in enumerate(self.sources):
            self.by_type.setdefault(source.data_type, []).append(index)
        self.mix = {t: p for t, p in data_mix.items() if p > 0}
        missing = [t for t in self.mix if t not in self.by_type]
        if missing:
            have = ", ".join(sorted(self.by_type)) or "nothing"
            raise MMError(
                f"data.data_mix: {missing[0]} has weight {self.mix[missing[0]]:g} but no dataset provides "
                f"{missing[0]} samples (the data has: {have}); give it weight 0 in data.data_mix"
            )
        if seq_len <= num_image_tokens and any(t in self.mix for t in ("caption", "interleaved", "instruction")):
            raise MMError(f"data.seq_len: {seq_len} leaves no room for text after {num_image_tokens} image tokens; "
                          "raise data.seq_len or lower model.num_image_tokens")
        self._orders: dict[tuple[int, int], list[int]] = {}
        self._tokens: OrderedDict[tuple[int, int, int], tuple[list[int], list[bool] | None]] = OrderedDict()
        self._cache_size = cache_size

    def initial_state(self) -> dict[str, Any]:
        """The state of a fresh stream."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "rows": 0,
            "type_credits": {t: 0.0 for t in self.mix},
            "source_credits": {t: {str(i): 0.0 for i in idx} for t, idx in self.by_type.items()},
            "cursors": {str(i): [0, 0] for i in range(len(self.sources))},  # [epoch, position]
            "sources": [f"{s.name}:{len(s.samples)}" for s in self.sources],
        }

    def _order(self, source: int, epoch: int) -> list[int]:
        key = (source, epoch)
        if key not in self._orders:
            if len(self._orders) > 2 * len(self.sources) + 2:
                self._orders.clear()
            order = list(range(len(self.sources[source].samples)))
            random.Random(f"order:{self.seed}:{source}:{epoch}").shuffle(order)
            self._orders[key] = order
        return self._orders[key]

    def _peek(self, state: dict[str, Any], source: int) -> tuple[int, int, int]:
        """(sample index, epoch, variant) at the source's cursor."""
        epoch, position = state["cursors"][str(source)]
        index = self._order(source, epoch)[position]
        variant = random.Random(f"variant:{self.seed}:{source}:{epoch}:{position}").randrange(1 << 16)
        return index, epoch, variant

    def _advance(self, state: dict[str, Any], source: int) -> None:
        epoch, position = state["cursors"][str(source)]
        position += 1
        if position >= len(self.sources[source].samples):
            epoch, position = epoch + 1, 0
        state["cursors"][str(source)] = [epoch, position]

    def _encode(self, source: int, index: int, variant: int) -> tuple[list[int], list[ImageRef], str, list[bool] | None]:
        """A sample's token ids, images, id, and which tokens are trained (None: all but the image slots)."""
        sample = self.sources[source].samples[index]
        if isinstance(sample, CaptionSample):
            variant %= len(sample.captions)
        else:
            variant = 0
        text, images = sample_text(sample, variant)
        key = (source, index, variant)
        cached = self._tokens.get(key)
        if cached is None:
            cached = self._tokenize(sample, text)
            self._tokens[key] = cached
            if len(self._tokens) > self._cache_size:
                self._tokens.popitem(last=False)
        sample_id = getattr(sample, "question_id", None) or getattr(sample, "image_id", None) or sample.doc_id
        return cached[0], images, f"{self.sources[source].name}/{sample_id}", cached[1]

    def _tokenize(self, sample: Sample, text: str) -> tuple[list[int], list[bool] | None]:
        if not isinstance(sample, Conversation):
            return encode_interleaved(self.tokenizer, text, self.num_image_tokens), None
        ids: list[int] = []
        trained: list[bool] = []
        for piece, scored in [*conversation_segments(sample), (templates.EOS_TOKEN, False)]:
            piece_ids = encode_interleaved(self.tokenizer, piece, self.num_image_tokens) if piece else []
            ids += piece_ids
            trained += [scored] * len(piece_ids)
        return ids, trained

    def _truncate(self, ids: list[int], images: list[ImageRef], room: int) -> tuple[list[int], list[ImageRef]]:
        """Cut ``ids`` to ``room`` tokens without splitting an image's token block."""
        kept = ids[:room]
        image_tokens = sum(1 for token in kept if token == self.image_id)
        partial = image_tokens % self.num_image_tokens
        if partial:
            kept = kept[: len(kept) - partial]
        return kept, images[: image_tokens // self.num_image_tokens]

    def truncation(self, per_type: int = 400) -> dict[str, dict[str, float]]:
        """How much of each data type a row of ``seq_len`` tokens cuts off (a sample longer than a row loses its
        tail): over the first ``per_type`` samples of each type in the mix (spread over its sources, variant 0),
        the fraction of samples cut (``samples_cut``) and of tokens dropped (``tokens_cut``)."""
        report: dict[str, dict[str, float]] = {}
        for data_type in self.mix:
            indices = self.by_type[data_type]
            picks = [(indices[n % len(indices)], n // len(indices)) for n in range(per_type)]
            picks = [(source, index) for source, index in picks if index < len(self.sources[source].samples)]
            cut = total = dropped = 0
            for source, index in picks:
                ids, _, _, _ = self._encode(source, index, 0)
                total += len(ids)
                if len(ids) > self.seq_len:
                    cut += 1
                    dropped += len(ids) - len(self._truncate(ids, [], self.seq_len)[0])
            report[data_type] = {"samples_cut": cut / max(len(picks), 1), "tokens_cut": dropped / max(total, 1)}
        return report

    def plan_row(self, state: dict[str, Any]) -> RowPlan:
        """Pack the next row (advancing ``state`` in place)."""
        data_type = weighted_round_robin(self.mix, state["type_credits"])
        weights = {str(i): self.sources[i].weight for i in self.by_type[data_type]}
        input_ids: list[int] = []
        trained: list[bool] = []  # which tokens carry the loss (dialogues: the answers only)
        images: list[ImageRef] = []
        sample_ids: list[str] = []
        spans: list[tuple[int, int, int]] = []
        credits = state["source_credits"][data_type]
        while len(input_ids) < self.seq_len:
            # pick the source of the next sample without committing: peek with a copy of the credits
            trial = dict(credits)
            source = int(weighted_round_robin(weights, trial))
            index, _, variant = self._peek(state, source)
            ids, sample_images, sample_id, scored = self._encode(source, index, variant)
            room = self.seq_len - len(input_ids)
            if len(ids) > room:
                if input_ids:
                    break  # starts the next row of this type
                ids, sample_images = self._truncate(ids, sample_images, room)
            credits.update(trial)
            self._advance(state, source)
            spans.append((len(input_ids), len(input_ids) + len(ids), len(sample_images)))
            input_ids.extend(ids)
            trained.extend(scored[: len(ids)] if scored is not None else [True] * len(ids))
            images.extend(sample_images)
            sample_ids.append(sample_id)
        labels = [-100 if token == self.image_id or not keep else token for token, keep in zip(input_ids, trained,
                                                                                                 strict=True)]
        padding = self.seq_len - len(input_ids)
        state["rows"] += 1
        return RowPlan(data_type, input_ids + [self.pad_id] * padding, labels + [-100] * padding, images, sample_ids,
                       len(input_ids), spans)

    def plan_batch(self, state: dict[str, Any], num_rows: int) -> list[RowPlan]:
        """Pack ``num_rows`` rows (a global batch), advancing ``state`` in place."""
        return [self.plan_row(state) for _ in range(num_rows)]


def collate_rows(rows: list[RowPlan], image_size: int, mean: Sequence[float], std: Sequence[float],
                 seq_len: int, skip_bad: bool = False, pad_id: int = 0) -> dict[str, Any]:
    """Tensors of packed rows: input_ids, attention_mask, labels [B, L], images [N,3,S,S] (or None), data_type.

    An image that cannot be decoded raises its MMError, or with ``skip_bad`` drops its sample from the row (its
    tokens become ``pad_id`` with attention 0 and label -100, its images are left out): ``bad_samples`` lists
    those samples as (sample id, problem).
    """
    from mmbench_cli.data.images import preprocess

    input_ids = torch.tensor([row.input_ids for row in rows], dtype=torch.long).view(len(rows), seq_len)
    labels = torch.tensor([row.labels for row in rows], dtype=torch.long).view(len(rows), seq_len)
    attention_mask = torch.zeros(len(rows), seq_len, dtype=torch.long)
    for i, row in enumerate(rows):
        attention_mask[i, : row.length] = 1
    all_images = [image for row in rows for image in row.images]
    problems: list[tuple[str, str]] = []
    if not skip_bad or not all_images:
        images = preprocess(all_images, image_size, mean, std) if all_images else None
    else:
        kept: list[torch.Tensor] = []
        for i, row in enumerate(rows):
            first = 0
            for (start, end, count), sample_id in zip(row.spans, row.sample_ids, strict=True):
                sample_images = row.images[first:first + count]
                first += count
                if not sample_images:
                    continue
                try:
                    kept.append(preprocess(sample_images, image_size, mean, std))
                except MMError as error:
                    problems.append((sample_id, error.message))
                    input_ids[i, start:end] = pad_id
                    attention_mask[i, start:end] = 0
                    labels[i, start:end] = -100
        images = torch.cat(kept) if kept else None
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "images": images,
        "data_type": [row.data_type for row in rows],
        "sample_ids": [row.sample_ids for row in rows],
        "bad_samples": problems,
    }


class _BatchDataset(torch.utils.data.IterableDataset):
    """Yields (this rank's collated batch, state after the batch) from a start state, forever.

    With ``W`` workers, worker ``w`` materialises batches ``w, w+W, ...``: every worker packs every batch
    (cheap: token ids are cached) to keep the state, but decodes images only for its own batches, and the
    DataLoader hands them back in order.
    """

    def __init__(self, planner: Planner, state: dict[str, Any], num_rows: int, rank: int, world_size: int,
                 image_size: int, mean: Sequence[float], std: Sequence[float], skip_bad: bool = False) -> None:
        super().__init__()
        self.skip_bad = skip_bad
        self.planner = planner
        self.state = state
        self.num_rows = num_rows
        self.rank = rank
        self.world_size = world_size
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __iter__(self) -> Iterator[tuple[dict[str, Any] | None, dict[str, Any], str | None]]:
        import copy

        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        state = copy.deepcopy(self.state)
        number = 0
        while True:
            rows = self.planner.plan_batch(state, self.num_rows)
            if number % num_workers == worker:
                mine = rows[self.rank :: self.world_size]
                try:
                    batch = collate_rows(mine, self.image_size, self.mean, self.std, self.planner.seq_len,
                                         self.skip_bad, self.planner.pad_id)
                except MMError as error:
                    yield None, copy.deepcopy(state), error.message
                    return
                yield batch, copy.deepcopy(state), None
            number += 1


class TrainStream:
    """The training data stream of a ``Config`` (see the module docstring)."""

    def __init__(self, cfg: Config, tokenizer: PreTrainedTokenizerBase, num_image_tokens: int, image_mean: Sequence[float],
                 image_std: Sequence[float], sources: list[Source] | None = None) -> None:
        self.cfg = cfg
        self.seq_len = cfg.data.seq_len
        self.image_size = cfg.model.image_size
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.num_workers = cfg.data.num_workers
        self.planner = Planner(
            sources if sources is not None else sources_from_config(cfg), training_mix(cfg), cfg.data.seq_len,
            cfg.seed, tokenizer, num_image_tokens,
        )
        self._state = self.planner.initial_state()
        self.skip_bad = cfg.data.skip_bad
        self.bad_samples: dict[str, str] = {}  # sample id → why, for samples dropped mid-run (skip_bad)
        self._iterator: Iterator[Any] | None = None
        self._iterator_args: tuple[int, int, int] | None = None

    @property
    def rows_seen(self) -> int:
        """Global rows consumed so far."""
        return int(self._state["rows"])

    @property
    def num_bad(self) -> int:
        """Bad samples skipped while loading local data (``data.skip_bad``)."""
        return sum(source.num_bad for source in self.planner.sources)

    def counts(self) -> dict[str, int]:
        """Samples available per data type."""
        return {t: sum(len(self.planner.sources[i].samples) for i in idx) for t, idx in self.planner.by_type.items()}

    def next_batch(self, num_rows: int, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
        """The next global batch of ``num_rows`` rows; returns this rank's rows ``rank::world_size``.

        Keys: ``input_ids``, ``attention_mask``, ``labels`` (LongTensor[b, seq_len]), ``images``
        (FloatTensor[N, 3, S, S] in order of appearance, or None), ``data_type`` (one per row),
        ``sample_ids`` (per row, for debugging and leakage checks).
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        args = (num_rows, rank, world_size)
        if self._iterator is None or self._iterator_args != args:
            self._start(args)
        batch, state, error = next(self._iterator)
        if error:
            self._iterator = None
            raise MMError(f"{error}; {BAD_IMAGE_HINT}")
        self._state = state
        for sample_id, problem in batch.pop("bad_samples", []):
            self.bad_samples.setdefault(sample_id, problem)
        return batch

    @property
    def bad_skipped(self) -> int:
        """Distinct samples dropped during training because an image failed to decode (``data.skip_bad``)."""
        return len(self.bad_samples)

    @property
    def bad_problems(self) -> list[str]:
        """Why, for each sample dropped during training (first seen first)."""
        return list(self.bad_samples.values())

    def _start(self, args: tuple[int, int, int]) -> None:
        num_rows, rank, world_size = args
        dataset = _BatchDataset(self.planner, self._state, num_rows, rank, world_size, self.image_size,
                                self.image_mean, self.image_std, self.skip_bad)
        if self.num_workers == 0:
            self._iterator = iter(dataset)
        else:
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=None, num_workers=self.num_workers, prefetch_factor=2,
                persistent_workers=False,
            )
            self._iterator = iter(loader)
        self._iterator_args = args

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position of the stream (after the last batch returned), with the samples skipped for
        bad images so far (when there were any)."""
        import copy

        state = copy.deepcopy(self._state)
        if self.bad_samples:
            state["bad_samples"] = dict(self.bad_samples)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from ``state_dict``): the next batch is the one that followed it."""
        import copy

        expected = self.planner.initial_state()
        if state.get("version") != STATE_VERSION or state.get("sources") != expected["sources"]:
            raise MMError("data stream state: it was saved for other data (sources or version differ); "
                          "resume with the same data config or start a new run")
        if state.get("seed") != self.planner.seed:
            raise MMError(f"data stream state: saved with seed {state.get('seed')}, this run has seed "
                          f"{self.planner.seed}; use the same seed to resume")
        self._state = copy.deepcopy(state)
        self.bad_samples = dict(self._state.pop("bad_samples", {}))
        self._iterator = None

    def close(self) -> None:
        """Stop prefetching workers."""
        self._iterator = None
