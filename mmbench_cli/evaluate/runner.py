"""``mm eval``: few-shot multimodal tasks and lm-eval text tasks over one or every checkpoint of a run.

A generic loop over (checkpoint, task, shots, seed) cells: for each, the task's type (``task_types/``) builds the
few-shot prompts, the model generates answers (``engine.generate_batch``: left-padded batches with the KV cache)
or scores each choice (``engine.choice_loglikelihoods``), the task type scores them, and the runner writes

- ``eval/step_<N>.json``: an ``rundir.EvalResult`` (value = mean over seeds, std, n, ...);
- ``eval/samples/step_<N>/<task>.<k>shot.seed<S>.jsonl``: one line per query
  ``{"id", "prediction", "references", "score", ...}``, enough to recompute any metric or bootstrap a CI.

The request arrives typed (``EvalRequest``); every run-dir path comes from ``rundir.RunDir``.

Cells already in the results JSON (same settings, same checkpoint) are reused unless ``force``. Image
features are computed once per image per checkpoint (``ImageFeatureCache``) and shared by every demo and
query that shows that image. Scores use the MM1 scale: CIDEr x 100, accuracies in %.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError
from mmbench_cli.evaluate import fewshot
from mmbench_cli.evaluate.engine import EncoderFeatures, ImageFeatureCache, choice_loglikelihoods, generate_batch
from mmbench_cli.evaluate.request import EvalRequest, EvalSettings, ResolvedEval
from mmbench_cli.evaluate.scoring import mean_extra_metrics, sample_id, score_predictions
from mmbench_cli.evaluate.target import Target, resolve_target
from mmbench_cli.evaluate.task_types import MULTIPLE_CHOICE, TaskType
from mmbench_cli.evaluate.tasks import TaskSpec, add_task_dirs, load_samples, resolve_task, result_metadata
from mmbench_cli.families import TEXT_PREFIX
from mmbench_cli.progress import ProgressBar, progress_bar
from mmbench_cli.rundir import (
    Checkpoint,
    EvalResult,
    ResultCell,
    RunDir,
    atomic_write_text,
    stored_file,
    summarize,
)

if TYPE_CHECKING:
    from rich.console import Console

    from mmbench_cli.config import DataConfig
    from mmbench_cli.model.mllm import MLLM

# the generation core and targets live in engine.py and target.py; their names stay importable from here
__all__ = ["DEMO_POOL_SIZE", "CellResult", "EncoderFeatures", "ImageFeatureCache", "Target", "TaskData",
           "evaluate", "generate_batch", "length_buckets", "resolve_target", "run_cell", "sample_id"]

DEMO_POOL_SIZE = 2048  # open_flamingo's query_set_size


# --------------------------------------------------------------------------------------------- cells
@dataclass
class CellResult:
    """One (task, shots, seed) evaluation."""

    value: float
    n: int
    samples_path: Path
    seconds: float = 0.0
    max_prompt_tokens: int = 0


class TaskData:
    """Queries and demo pools of one task, loaded once and shared by every checkpoint and cell."""

    def __init__(self, spec: TaskSpec, data_cfg: DataConfig, num_samples: int, need_demos: bool,
                 vqa_normalize: str = "official") -> None:
        self.spec = spec
        self.vqa_normalize = vqa_normalize
        self.queries = spec.task_type.expand_queries(fewshot.query_set(load_samples(spec, "query", data_cfg),
                                                                       num_samples), spec)
        self.train = load_samples(spec, "demos", data_cfg) if need_demos else []
        self.prior = self._answer_prior(data_cfg)
        self.world_version = data_cfg.world_version

    def _answer_prior(self, data_cfg: DataConfig) -> float | None:
        """The task type's answer prior (e.g. VQA: each question type's most common training answer), scored with
        the task's metric; None when the type has none or there is no demo split to take it from."""
        kind = self.spec.task_type
        if type(kind).answer_prior is TaskType.answer_prior:
            return None
        try:
            train = self.train or load_samples(self.spec, "demos", data_cfg)
        except MMError:  # no training split described (e.g. a 0-shot run on local files): no prior
            return None
        return kind.answer_prior(self.spec, train, self.queries,
                                 lambda ids, predictions, references: score_predictions(self.spec, ids, predictions,
                                                                                        references, self.vqa_normalize))

    def cell_metadata(self) -> dict[str, Any]:
        """What every results cell of this task carries besides its numbers (vocabulary, answer prior, chance)."""
        extra = result_metadata(self.spec, self.world_version)
        if self.prior is not None:
            extra["prior"] = self.prior
            if self.spec.task_type.prior_basis:  # VQA's cells keep their old shape: the report knows its basis
                extra["prior_by"] = self.spec.task_type.prior_basis
        chance = self.spec.task_type.chance(self.spec, self.queries)
        if chance is not None:
            extra["chance"] = chance
        return extra

    def pool(self, seed: int, rices: bool) -> list[Any]:
        """The demo pool: all train samples for RICES (capped), a per-seed random subset otherwise."""
        return fewshot.demo_pool(self.train, DEMO_POOL_SIZE, 0 if rices else seed)


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Query indices in batches of ``batch_size`` with similar prompt lengths (shortest first; equal lengths
    keep query order), so left padding, and the attention over it, stays small.

    A query's generation does not depend on its batch (left padding is masked and positions start at each
    row's first token; tests compare bucketed, query-order and one-by-one answers), so only the time differs.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[begin:begin + batch_size] for begin in range(0, len(order), batch_size)]


def run_cell(model: MLLM, data: TaskData, shots: int, seed: int, settings: EvalSettings,
             cache: ImageFeatureCache, samples_path: Path, progress: ProgressBar | None = None,
             rices_features: EncoderFeatures | None = None, bucket_by_length: bool = True) -> CellResult:
    """Evaluate one (task, shots, seed) cell and write its per-sample JSONL atomically.

    The task type builds the prompts and turns the model's output into answers: ``generate_until`` types generate
    (in length-bucketed batches, ``length_buckets``; ``bucket_by_length=False``: in query order), ``multiple_choice``
    types compare the log-likelihoods of their choices (``engine.choice_loglikelihoods``). RICES ranks demos by
    the model's own pooled image features, or by ``rices_features`` when given.
    """
    from mmbench_cli.data.templates import encode_interleaved

    spec, kind = data.spec, data.spec.task_type
    start = time.perf_counter()
    queries = data.queries
    text_only = shots == 0 and settings.text_only_zero_shot
    num_demos = fewshot.FLAMINGO_ZERO_SHOT_DEMOS if text_only else shots
    if num_demos:
        pool = data.pool(seed, settings.demo_selection == "rices")
        fewshot.check_pool(pool, num_demos, spec.name)
        if settings.demo_selection == "rices" and not text_only:
            space = rices_features if rices_features is not None else cache
            demos = fewshot.select_rices(pool, space.pooled([d.image for d in pool]),
                                         space.pooled([q.image for q in queries]), num_demos)
        else:
            demos = fewshot.select_random(pool, len(queries), num_demos, seed)
    else:
        demos = [[] for _ in queries]
    built = [kind.build_prompt(demos[i], queries[i], spec, text_only) for i in range(len(queries))]
    encoded = [encode_interleaved(model.tokenizer, text, model.num_image_tokens) for text, _ in built]
    longest = max((len(ids) for ids in encoded), default=0)
    chosen: list[dict[str, Any]] = [{} for _ in queries]
    if kind.output_type == MULTIPLE_CHOICE:
        raw: list[Any] = choice_loglikelihoods(model, [text for text, _ in built], [images for _, images in built],
                                               [kind.choices(q, spec) for q in queries], cache, settings.batch_size)
        predictions = []
        for i, query in enumerate(queries):
            answer, chosen[i] = kind.choose(query, spec, raw[i])
            predictions.append(answer)
        if progress is not None:
            progress.update(advance=len(queries))
    else:
        max_new = settings.max_new_tokens or spec.max_new_tokens or 16
        batches = (length_buckets([len(ids) for ids in encoded], settings.batch_size) if bucket_by_length else
                   [list(range(b, min(b + settings.batch_size, len(queries))))
                    for b in range(0, len(queries), settings.batch_size)])
        raw = [""] * len(queries)
        for batch in batches:
            texts, _ = generate_batch(model, [built[i][0] for i in batch], [built[i][1] for i in batch], cache,
                                      max_new, settings.num_beams, encoded=[encoded[i] for i in batch])
            for i, text in zip(batch, texts, strict=True):
                raw[i] = text
            if progress is not None:
                progress.update(advance=len(batch))
        predictions = [kind.postprocess(text, spec) for text in raw]
    ids = [kind.sample_id(q) for q in queries]
    references = [kind.references(q, spec) for q in queries]
    value, per_sample = score_predictions(spec, ids, predictions, references, settings.vqa_normalize)
    lines = []
    for i, query in enumerate(queries):
        record = {"id": ids[i], "prediction": predictions[i], "references": references[i], "score": per_sample[i],
                  **({} if chosen[i] else {"raw": raw[i]}), "demos": [kind.sample_id(d) for d in demos[i]],
                  **kind.record_fields(query), **chosen[i]}
        lines.append(json.dumps(record))
    atomic_write_text(samples_path, "\n".join(lines) + "\n")
    return CellResult(value=value, n=len(queries), samples_path=samples_path,
                      seconds=time.perf_counter() - start, max_prompt_tokens=longest)


# ------------------------------------------------------------------------------------------- results
def _reusable_seeds(cell: ResultCell | None, fingerprint: str, run: RunDir) -> dict[int, float]:
    """Seed → value of a cell computed earlier with the same fingerprint, whose samples file still exists."""
    if cell is None or cell.fingerprint != fingerprint:
        return {}
    return {seed: value for seed, value, rel in zip(cell.seed_ids, cell.seeds, cell.samples, strict=False)
            if stored_file(run.eval_dir / rel) is not None}


# ----------------------------------------------------------------------------------------------- main
def evaluate(request: EvalRequest, console: Console | None = None) -> list[Path]:
    """Evaluate a run/checkpoint/model on tasks × shots × demo seeds; returns the results JSON paths.

    Options the request leaves unset come from the run config's ``eval`` section. Text tasks
    (``text:<name>``) run through lm-evaluation-harness (zero-shot; recorded under shots "0").
    """
    from mmbench_cli.model.device import resolve_device, use_cpu_threads

    device = str(resolve_device(request.device, field="--device"))
    target = resolve_target(request.target, request.all_checkpoints)
    for checkpoint in target.checkpoints:  # a damaged later checkpoint is refused before any results are written
        checkpoint.verify()
    use_cpu_threads(device, target.config.train.cpu_threads)  # the run's own count: same numbers on any machine
    if target.notes:
        from rich.console import Console

        for note in target.notes:
            Console(stderr=True).print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    plan = request.resolve(target.config.eval)
    settings = plan.settings
    add_task_dirs(request.include_paths)  # the user's task files, before any task name is looked up
    mm_tasks = [t for t in plan.tasks if not t.startswith(TEXT_PREFIX)]
    text_tasks = [t for t in plan.tasks if t.startswith(TEXT_PREFIX)]
    specs = {name: resolve_task(name, request.task_data) for name in mm_tasks}  # unknown tasks fail before any work
    zero_shot_demos = settings.text_only_zero_shot and 0 in plan.shots
    needs_demos = any(k > 0 for k in plan.shots) or zero_shot_demos
    data = {name: TaskData(spec, target.config.data, settings.num_samples, needs_demos, settings.vqa_normalize)
            for name, spec in specs.items()}
    most_demos = max([k for k in plan.shots if k > 0] + ([fewshot.FLAMINGO_ZERO_SHOT_DEMOS] if zero_shot_demos else []),
                     default=0)
    for name, task in data.items():
        if most_demos:
            fewshot.check_pool(task.pool(0, settings.demo_selection == "rices"), most_demos, name)
    rices = None
    if settings.rices_encoder and data and any(k > 0 for k in plan.shots):
        rices = EncoderFeatures(settings.rices_encoder, device)  # loaded once: it does not depend on the checkpoint
    written = []
    with target.run.eval_lock():
        for checkpoint in target.checkpoints:
            written.append(_evaluate_checkpoint(target, checkpoint, data, plan, text_tasks, request, device, console,
                                                rices))
    from mmbench_cli.trackers import log_eval_results

    # the run's trackers (train.trackers) get the results at their training steps; the JSON files stay the record
    log_eval_results(target.config, target.run,
                     [r for c in target.checkpoints if (r := target.run.read_results(c.step)) is not None])
    return written


def _cell_extra(task: TaskData, shots: int, settings: EvalSettings, run: RunDir, samples: list[str]) -> dict[str, Any]:
    """A results cell's ``extra``: the task's metadata, the VQA normalisation and RICES encoder that produced the
    numbers (where they apply), and the task type's extra metrics (mean over the demo seeds' per-sample files)."""
    extra = task.cell_metadata()
    normalize = settings.vqa_normalize_for(task.spec)
    if normalize is not None:
        extra["vqa_normalize"] = normalize
    if shots and settings.rices_encoder:
        extra["rices_encoder"] = settings.rices_encoder
    kind = task.spec.task_type
    if kind.has_extra_metrics(task.spec, task.queries):
        per_seed = [kind.extra_metrics(task.spec, run.read_samples(run.eval_dir / rel)) for rel in samples]
        extra.update(mean_extra_metrics(per_seed))
    return extra


def _note_long_prompts(console: Console, what: str, longest: int, max_seq_len: int, trained_len: int | None) -> None:
    """Say when prompts outgrow the model's context or the sequences the run trained on (positions the LM never
    saw in training: the score then measures length generalisation too)."""
    if longest > max_seq_len:
        console.print(f"[yellow]note:[/] {what} prompts reach {longest} tokens, beyond the model's max_seq_len "
                      f"{max_seq_len}")
    elif trained_len is not None and longest > trained_len:
        console.print(f"[yellow]note:[/] {what} prompts reach {longest} tokens, longer than the run's training "
                      f"sequences (data.seq_len {trained_len}); fewer shots or image tokens keep them inside")


def _evaluate_checkpoint(target: Target, checkpoint: Checkpoint, data: dict[str, TaskData], plan: ResolvedEval,
                         text_tasks: list[str], request: EvalRequest, device: str, console: Console | None,
                         rices: EncoderFeatures | None = None) -> Path:
    from mmbench_cli.config import config_hash
    from mmbench_cli.evaluate.metrics import mean_std
    from mmbench_cli.model import load_model
    from mmbench_cli.model.feature_store import use_feature_store

    run, step, settings = target.run, checkpoint.step, plan.settings
    info = checkpoint.info()
    try:
        previous = None if request.force else run.read_results(step)
    except MMError as error:
        raise MMError(f"{error.message.split('; re-run')[0]}; delete it or pass --force to recompute "
                      "this checkpoint's results") from None
    if previous is not None and previous.checkpoint_hash not in (None, info["content_hash"]):
        previous = None  # a different checkpoint now lives at this step: nothing is reusable
    results = EvalResult(run=target.name, step=step, config_hash=config_hash(target.config),
                         checkpoint_hash=info["content_hash"], train_flops=info.get("train_flops"),
                         checkpoint=str(checkpoint.path), tasks=dict(previous.tasks) if previous else {})
    model = None
    cache = None
    todo_cells = []
    for name, task in data.items():
        fingerprint = settings.fingerprint(task.spec, info["content_hash"])
        for k in plan.shots:
            reuse = {} if request.force else _reusable_seeds(results.cell(name, k), fingerprint, run)
            todo_cells.append((name, task, k, fingerprint, reuse, [s for s in plan.seed_ids if s not in reuse]))
    total = sum(len(task.queries) * len(todo) for _, task, _, _, _, todo in todo_cells)
    with progress_bar(f"step {step}", total, enabled=request.progress and total > 0, console=console,
                      eta=False) as bar:
        trained_len = target.config.data.seq_len if run.config_path.is_file() else None
        for name, task, k, fingerprint, reuse, todo in todo_cells:
            values = dict(reuse)
            earlier = results.cell(name, k)
            longest = (earlier.extra or {}).get("max_prompt_tokens") if earlier is not None and reuse else None
            for seed in todo:
                if model is None:
                    model = use_feature_store(load_model(checkpoint.path, device=device), target.config)
                    cache = ImageFeatureCache(model)
                bar.update(description=f"step {step} {name} {k}-shot seed {seed}")
                cell = run_cell(model, task, k, seed, settings, cache,
                                run.eval_dir / run.samples_relpath(step, name, k, seed), progress=bar,
                                rices_features=rices)
                values[seed] = cell.value
                longest = max(longest or 0, cell.max_prompt_tokens)
                if console is not None:
                    _note_long_prompts(console, f"{name} {k}-shot", cell.max_prompt_tokens, model.config.max_seq_len,
                                       trained_len)
            ordered = [values[s] for s in plan.seed_ids]
            mean, std = mean_std(ordered)
            samples = [run.samples_relpath(step, name, k, s) for s in plan.seed_ids]
            results.set_cell(name, k, ResultCell(
                family=task.spec.family, metric=task.spec.metric, value=mean, std=std, n=len(task.queries),
                seeds=ordered, seed_ids=list(plan.seed_ids), samples=samples,
                demo_selection=settings.demo_selection if k else None,
                text_only_demos=bool(k == 0 and settings.text_only_zero_shot),
                fingerprint=fingerprint, reused=sorted(reuse),
                extra={**_cell_extra(task, k, settings, run, samples),
                       **({"max_prompt_tokens": longest} if longest else {})},
            ))
            run.write_results(results)  # after every cell, so an interrupted eval keeps what it finished
    if text_tasks:
        from mmbench_cli.evaluate.text import run_text_tasks

        # lm-eval runs each text task on all its documents (no limit), so eval.num_samples is not an input.
        # Results written before this rule carry it in their fingerprint: those stay valid at the same value.
        inputs = [info["content_hash"], sorted(map(str, request.include_paths))]
        fingerprint = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]
        legacy = hashlib.sha256(json.dumps([*inputs, settings.num_samples]).encode()).hexdigest()[:16]
        todo = [t for t in text_tasks
                if request.force or getattr(results.cell(t, 0), "fingerprint", None) not in (fingerprint, legacy)]
        if todo:
            model = model or load_model(checkpoint.path, device=device)
            text_results = run_text_tasks(model, [t[len(TEXT_PREFIX):] for t in todo], request.include_paths,
                                          target.config.data, run.samples_dir(step), settings.batch_size)
            for name, cell in text_results.items():
                cell.fingerprint = fingerprint
                results.set_cell(TEXT_PREFIX + name, 0, cell)
    results.summary = summarize(results.tasks)
    return run.write_results(results)
