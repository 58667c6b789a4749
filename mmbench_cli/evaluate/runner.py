"""``mm eval``: few-shot captioning/VQA and lm-eval text tasks over one or every checkpoint of a run.

For each checkpoint, each task, each shot count and each demo seed (a "cell"), the runner builds the
few-shot prompts, generates answers in left-padded batches with the KV cache, scores them, and writes

- ``eval/step_<N>.json``: the results schema of docs/architecture.md (value = mean over seeds, std, n, ...);
- ``eval/samples/step_<N>/<task>.<k>shot.seed<S>.jsonl``: one line per query
  ``{"id", "prediction", "references", "score", ...}``, enough to recompute any metric or bootstrap a CI.

Cells already in the results JSON (same settings, same checkpoint) are reused unless ``force``. Image
features are computed once per image per checkpoint (``ImageFeatureCache``) and shared by every demo and
query that shows that image. Scores use the MM1 scale: CIDEr x 100 and VQA accuracy in %.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError
from mmbench_cli.evaluate import fewshot
from mmbench_cli.evaluate.tasks import TEXT_PREFIX, TaskSpec, load_samples, resolve_task
from mmbench_cli.rundir import atomic_write_json, atomic_write_text, read_jsonl

if TYPE_CHECKING:
    import torch

    from mmbench_cli.config import Config, EvalConfig

RESULTS_DIR = "eval"
SAMPLES_DIR = "samples"
DEMO_POOL_SIZE = 2048  # open_flamingo's query_set_size
SCALE = 100.0  # MM1 reports CIDEr x 100 and VQA accuracy in %


# ------------------------------------------------------------------------------------------- targets
@dataclass
class Target:
    """What ``mm eval`` was pointed at: where results go and which checkpoints to evaluate."""

    run_dir: Path
    checkpoints: list[tuple[int, Path]]
    config: Config
    name: str


def resolve_target(path: str | Path, all_checkpoints: bool = False) -> Target:
    """A run dir (last or all checkpoints), a ``checkpoints/step_<N>/`` dir, or a ``mm build -o`` model dir."""
    from mmbench_cli.config import Config, config_from_dict, read_yaml
    from mmbench_cli.train.checkpoints import list_checkpoints

    path = Path(path)
    if not path.exists():
        raise MMError(f"{path}: no such run dir or checkpoint; pass a run dir (runs/<name>), a "
                      "checkpoints/step_<N>/ dir, or a model saved by `mm build -o`")
    if (path / "model.safetensors").is_file():
        if path.parent.name == "checkpoints":
            run_dir = path.parent.parent
        else:
            run_dir = path
        checkpoints = [(_checkpoint_step(path), path)]
    else:
        checkpoints = list_checkpoints(path)
        if not checkpoints:
            raise MMError(f"{path}: no checkpoints found (expected checkpoints/step_<N>/ with model.safetensors); "
                          "train with `mm pretrain` or pass a model dir saved by `mm build -o`")
        run_dir = path
        if not all_checkpoints:
            checkpoints = checkpoints[-1:]
    config_path = run_dir / "config.yaml"
    config = config_from_dict(read_yaml(config_path), str(config_path)) if config_path.is_file() else Config()
    return Target(run_dir=run_dir, checkpoints=checkpoints, config=config, name=run_dir.resolve().name)


def _checkpoint_step(ckpt_dir: Path) -> int:
    info = ckpt_dir / "checkpoint.json"
    if info.is_file():
        try:
            return int(json.loads(info.read_text())["step"])
        except (ValueError, KeyError, json.JSONDecodeError):
            raise MMError(f"{info}: damaged checkpoint.json (no integer step)") from None
    name = ckpt_dir.name
    return int(name.split("_", 1)[1]) if name.startswith("step_") and name[5:].isdigit() else 0


def checkpoint_info(ckpt_dir: Path) -> dict[str, Any]:
    """content_hash and train_flops of a checkpoint (hash of the weights file when checkpoint.json is absent)."""
    info_path = ckpt_dir / "checkpoint.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if not info.get("content_hash"):
        digest = hashlib.sha256()
        with (ckpt_dir / "model.safetensors").open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        info["content_hash"] = digest.hexdigest()[:16]
    return info


# ------------------------------------------------------------------------------------ generation core
class ImageFeatureCache:
    """LM-space image embeddings, computed once per image key (per model) and reused by every prompt."""

    def __init__(self, model: Any, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = batch_size
        self.features: dict[str, torch.Tensor] = {}
        self.computed = 0

    def ensure(self, images: Sequence[Any]) -> None:
        """Encode the images whose keys are not cached yet (in batches)."""
        import torch

        from mmbench_cli.data.images import preprocess

        todo: dict[str, Any] = {}
        for image in images:
            if image.key not in self.features and image.key not in todo:
                todo[image.key] = image
        refs = list(todo.values())
        device = next(self.model.parameters()).device
        for start in range(0, len(refs), self.batch_size):
            chunk = refs[start:start + self.batch_size]
            pixels = preprocess(chunk, self.model.image_size, self.model.image_mean, self.model.image_std)
            with torch.no_grad():
                embeds = self.model.encode_images(pixels.to(device))
            for ref, emb in zip(chunk, embeds, strict=True):
                self.features[ref.key] = emb
            self.computed += len(chunk)

    def stack(self, images: Sequence[Any]) -> torch.Tensor:
        """[N, num_image_tokens, d] embeddings of ``images`` in order (computing any that are missing)."""
        import torch

        self.ensure(images)
        return torch.stack([self.features[image.key] for image in images])

    def pooled(self, images: Sequence[Any]) -> torch.Tensor:
        """One vector per image (mean over its tokens) — the similarity space of RICES."""
        return self.stack(images).float().mean(dim=1)


def generate_batch(
    model: Any,
    prompts: Sequence[str],
    images: Sequence[Sequence[Any]],
    cache: ImageFeatureCache,
    max_new_tokens: int,
    num_beams: int = 1,
) -> tuple[list[str], int]:
    """Generate continuations of interleaved ``prompts`` (left-padded, KV cache); returns (texts, longest prompt)."""
    import torch

    from mmbench_cli.model.tokenizer import encode_interleaved

    encoded = [encode_interleaved(model.tokenizer, text, model.num_image_tokens) for text in prompts]
    longest = max(len(ids) for ids in encoded)
    device = next(model.parameters()).device
    input_ids = torch.full((len(encoded), longest), model.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), longest), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, longest - len(ids):] = 1
    flat_images = [image for row in images for image in row]
    image_embeds = cache.stack(flat_images) if flat_images else None
    new_tokens = model.generate(input_ids.to(device), attention_mask.to(device), image_embeds=image_embeds,
                                max_new_tokens=max_new_tokens, num_beams=num_beams)
    texts = model.tokenizer.batch_decode(new_tokens.tolist(), skip_special_tokens=False)
    return texts, longest


# ------------------------------------------------------------------------------------------ scoring
def _references(sample: Any) -> list[str]:
    return list(sample.captions) if hasattr(sample, "captions") else list(sample.answers)


def _sample_id(sample: Any) -> str:
    return str(getattr(sample, "question_id", None) or sample.image_id)


def score_predictions(spec: TaskSpec, ids: Sequence[str], predictions: Sequence[str],
                      references: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """(corpus score, per-sample scores) on the MM1 scale (CIDEr x 100; VQA accuracy in %)."""
    from mmbench_cli.evaluate import metrics

    if not predictions:
        raise MMError(f"task {spec.name}: no predictions to score")
    if spec.metric == "CIDEr":
        refs = {i: list(r) for i, r in zip(ids, references, strict=True)}
        cands = dict(zip(ids, predictions, strict=True))
        corpus, per_sample = metrics.caption_scores_per_sample(refs, cands, ("CIDEr",))
        return SCALE * corpus["CIDEr"], [SCALE * per_sample[i]["CIDEr"] for i in ids]
    scorer = metrics.vizwiz_accuracy if spec.metric == "vizwiz_accuracy" else metrics.vqa_accuracy
    scores = [SCALE * scorer(p, list(r)) for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores), scores


# --------------------------------------------------------------------------------------------- cells
@dataclass
class CellResult:
    """One (task, shots, seed) evaluation."""

    value: float
    n: int
    samples_path: Path
    seconds: float = 0.0
    max_prompt_tokens: int = 0


@dataclass
class EvalSettings:
    """The knobs that decide a cell's numbers (besides model and task); part of the reuse fingerprint."""

    num_samples: int
    demo_selection: str
    max_new_tokens: int | None
    num_beams: int
    text_only_zero_shot: bool
    batch_size: int
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self, spec: TaskSpec, checkpoint_hash: str) -> str:
        """A short hash of everything that decides a cell's value (batch size excluded: it does not)."""
        data = {"num_samples": self.num_samples, "demo_selection": self.demo_selection,
                "max_new_tokens": self.max_new_tokens or spec.max_new_tokens, "num_beams": self.num_beams,
                "text_only_zero_shot": self.text_only_zero_shot, "task": spec.fingerprint(),
                "checkpoint": checkpoint_hash}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class TaskData:
    """Queries and demo pools of one task, loaded once and shared by every checkpoint and cell."""

    def __init__(self, spec: TaskSpec, data_cfg: Any, num_samples: int, need_demos: bool) -> None:
        self.spec = spec
        self.queries = fewshot.query_set(load_samples(spec, "query", data_cfg), num_samples)
        self.train = load_samples(spec, "demos", data_cfg) if need_demos else []

    def pool(self, seed: int, rices: bool) -> list[Any]:
        """The demo pool: all train samples for RICES (capped), a per-seed random subset otherwise."""
        return fewshot.demo_pool(self.train, DEMO_POOL_SIZE, 0 if rices else seed)


def run_cell(model: Any, data: TaskData, shots: int, seed: int, settings: EvalSettings,
             cache: ImageFeatureCache, samples_path: Path, progress: Any = None) -> CellResult:
    """Evaluate one (task, shots, seed) cell and write its per-sample JSONL atomically."""
    spec = data.spec
    start = time.perf_counter()
    queries = data.queries
    text_only = shots == 0 and settings.text_only_zero_shot
    num_demos = fewshot.FLAMINGO_ZERO_SHOT_DEMOS if text_only else shots
    if num_demos:
        pool = data.pool(seed, settings.demo_selection == "rices")
        fewshot.check_pool(pool, num_demos, spec.name)
        if settings.demo_selection == "rices" and not text_only:
            demos = fewshot.select_rices(pool, cache.pooled([d.image for d in pool]),
                                         cache.pooled([q.image for q in queries]), num_demos)
        else:
            demos = fewshot.select_random(pool, len(queries), num_demos, seed)
    else:
        demos = [[] for _ in queries]
    max_new = settings.max_new_tokens or spec.max_new_tokens or 16
    predictions: list[str] = []
    raw: list[str] = []
    longest = 0
    for begin in range(0, len(queries), settings.batch_size):
        batch = list(range(begin, min(begin + settings.batch_size, len(queries))))
        built = [fewshot.build_prompt(demos[i], queries[i], text_only) for i in batch]
        texts, prompt_len = generate_batch(model, [b[0] for b in built], [b[1] for b in built], cache, max_new,
                                           settings.num_beams)
        longest = max(longest, prompt_len)
        raw.extend(texts)
        predictions.extend(fewshot.postprocess(t, spec.family) for t in texts)
        if progress is not None:
            progress(len(batch))
    ids = [_sample_id(q) for q in queries]
    references = [_references(q) for q in queries]
    value, per_sample = score_predictions(spec, ids, predictions, references)
    lines = []
    for i, query in enumerate(queries):
        record = {"id": ids[i], "prediction": predictions[i], "references": references[i], "score": per_sample[i],
                  "raw": raw[i], "demos": [_sample_id(d) for d in demos[i]]}
        if hasattr(query, "question"):
            record["question"] = query.question
        lines.append(json.dumps(record))
    atomic_write_text(samples_path, "\n".join(lines) + "\n")
    return CellResult(value=value, n=len(queries), samples_path=samples_path,
                      seconds=time.perf_counter() - start, max_prompt_tokens=longest)


# ------------------------------------------------------------------------------------------- results
def summarize(tasks: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """MM1's summary per shot count: mean over caption tasks, over VQA tasks, and the textcore value."""
    by_shots: dict[str, dict[str, list[float]]] = {}
    for cells in tasks.values():
        for shots, cell in cells.items():
            family = cell.get("family")
            bucket = by_shots.setdefault(shots, {"caption": [], "vqa": [], "text": []})
            if family in ("caption", "vqa") and cell.get("value") is not None:
                bucket[family].append(float(cell["value"]))
    summary: dict[str, dict[str, float | None]] = {}
    for shots, bucket in sorted(by_shots.items(), key=lambda kv: int(kv[0])):
        textcore = tasks.get("text:textcore", {}).get(shots, {}).get("value")
        summary[shots] = {
            "caption_avg": sum(bucket["caption"]) / len(bucket["caption"]) if bucket["caption"] else None,
            "vqa_avg": sum(bucket["vqa"]) / len(bucket["vqa"]) if bucket["vqa"] else None,
            "textcore": textcore,
        }
    return summary


def _load_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise MMError(f"{path}: damaged results file (not JSON); delete it or rerun with --force") from None
    return data if isinstance(data, dict) else {}


def _reusable_seeds(cell: dict[str, Any] | None, fingerprint: str, results_dir: Path) -> dict[int, float]:
    """Seed → value of a cell computed earlier with the same fingerprint, whose samples file still exists."""
    if not cell or cell.get("fingerprint") != fingerprint:
        return {}
    reuse = {}
    for seed, value, rel in zip(cell.get("seed_ids", []), cell.get("seeds", []), cell.get("samples", []), strict=False):
        if (results_dir / rel).is_file():
            reuse[int(seed)] = float(value)
    return reuse


# ----------------------------------------------------------------------------------------------- main
def evaluate(
    target: str | Path,
    tasks: Sequence[str] | None = None,
    shots: Sequence[int] | None = None,
    seeds: int | None = None,
    *,
    all_checkpoints: bool = False,
    demo_selection: str | None = None,
    num_samples: int | None = None,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    text_only_zero_shot: bool | None = None,
    include_paths: Sequence[str | Path] = (),
    task_data: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
    device: str = "auto",
    console: Any = None,
    progress: bool = True,
) -> list[Path]:
    """Evaluate a run/checkpoint/model on ``tasks`` × ``shots`` × ``seeds``; returns the results JSON paths.

    Unset options fall back to the run config's ``eval`` section (``EvalConfig``). Text tasks
    (``text:<name>``) run through lm-evaluation-harness (zero-shot; recorded under shots "0").
    """
    from mmbench_cli.train.distributed import resolve_device

    device = str(resolve_device(device, field="--device"))
    resolved = resolve_target(target, all_checkpoints)
    ecfg: EvalConfig = resolved.config.eval
    task_names = list(tasks or ecfg.tasks)
    shot_list = sorted(set(shots if shots is not None else ecfg.shots))
    if any(k < 0 for k in shot_list):
        raise MMError("--shots: shot counts must be >= 0")
    num_seeds = seeds or ecfg.seeds
    selection = demo_selection or ecfg.demo_selection
    if selection not in ("random", "rices"):
        raise MMError(f"--demo-selection {selection!r}: choose random or rices")
    settings = EvalSettings(
        num_samples=num_samples or ecfg.num_samples, demo_selection=selection,
        max_new_tokens=max_new_tokens, num_beams=ecfg.num_beams,
        text_only_zero_shot=ecfg.zero_shot_text_demos if text_only_zero_shot is None else text_only_zero_shot,
        batch_size=batch_size or ecfg.batch_size,
    )
    seed_ids = [0] if selection == "rices" else list(range(num_seeds))
    mm_tasks = [t for t in task_names if not t.startswith(TEXT_PREFIX)]
    text_tasks = [t for t in task_names if t.startswith(TEXT_PREFIX)]
    specs = {name: resolve_task(name, task_data) for name in mm_tasks}  # unknown tasks fail before any work
    needs_demos = any(k > 0 for k in shot_list) or (settings.text_only_zero_shot and 0 in shot_list)
    data = {name: TaskData(spec, resolved.config.data, settings.num_samples, needs_demos)
            for name, spec in specs.items()}
    most_demos = max([k for k in shot_list if k > 0] +
                     ([fewshot.FLAMINGO_ZERO_SHOT_DEMOS] if settings.text_only_zero_shot and 0 in shot_list else []),
                     default=0)
    for name, task in data.items():
        if most_demos:
            fewshot.check_pool(task.pool(0, selection == "rices"), most_demos, name)

    from mmbench_cli.rundir import RunLock

    written = []
    results_dir = resolved.run_dir / RESULTS_DIR
    with RunLock(results_dir, what="evaluation"):
        for step, ckpt_dir in resolved.checkpoints:
            written.append(_evaluate_checkpoint(resolved, step, ckpt_dir, data, shot_list, seed_ids, settings,
                                                text_tasks, include_paths, force, device, console, progress))
    return written


def _evaluate_checkpoint(resolved: Target, step: int, ckpt_dir: Path, data: dict[str, TaskData],
                         shot_list: list[int], seed_ids: list[int], settings: EvalSettings, text_tasks: list[str],
                         include_paths: Sequence[str | Path], force: bool, device: str, console: Any,
                         progress: bool) -> Path:
    from mmbench_cli.config import config_hash
    from mmbench_cli.evaluate.metrics import mean_std
    from mmbench_cli.model import load_model

    results_dir = resolved.run_dir / RESULTS_DIR
    results_path = results_dir / f"step_{step}.json"
    samples_rel = Path(SAMPLES_DIR) / f"step_{step}"
    info = checkpoint_info(ckpt_dir)
    previous = {} if force else _load_results(results_path)
    if previous.get("checkpoint_hash") not in (None, info["content_hash"]):
        previous = {}  # a different checkpoint now lives at this step: nothing is reusable
    results: dict[str, Any] = {
        "run": resolved.name, "step": step, "config_hash": config_hash(resolved.config),
        "checkpoint_hash": info["content_hash"], "train_flops": info.get("train_flops"),
        "checkpoint": str(ckpt_dir), "tasks": dict(previous.get("tasks", {})),
    }
    model = None
    cache = None
    plan = []
    for name, task in data.items():
        for k in shot_list:
            fingerprint = settings.fingerprint(task.spec, info["content_hash"])
            old = results["tasks"].get(name, {}).get(str(k))
            reuse = {} if force else _reusable_seeds(old, fingerprint, results_dir)
            plan.append((name, task, k, fingerprint, reuse, [s for s in seed_ids if s not in reuse]))
    total = sum(len(task.queries) * len(todo) for _, task, _, _, _, todo in plan)
    progress_bar = _progress(console, progress)
    with progress_bar as bar:
        job = bar.add_task(f"step {step}", total=max(total, 1)) if total else None
        for name, task, k, fingerprint, reuse, todo in plan:
            values = dict(reuse)
            for seed in todo:
                if model is None:
                    model = load_model(ckpt_dir, device=device)
                    cache = ImageFeatureCache(model)
                rel = samples_rel / f"{name}.{k}shot.seed{seed}.jsonl"
                bar.update(job, description=f"step {step} {name} {k}-shot seed {seed}")
                cell = run_cell(model, task, k, seed, settings, cache, results_dir / rel,
                                progress=lambda n: bar.advance(job, n))
                values[seed] = cell.value
                if model is not None and cell.max_prompt_tokens > model.config.max_seq_len and console is not None:
                    console.print(f"[yellow]note:[/] {name} {k}-shot prompts reach {cell.max_prompt_tokens} tokens, "
                                  f"beyond the model's max_seq_len {model.config.max_seq_len}")
            ordered = [values[s] for s in seed_ids]
            mean, std = mean_std(ordered)
            results["tasks"].setdefault(name, {})[str(k)] = {
                "family": task.spec.family, "metric": task.spec.metric, "value": mean, "std": std,
                "n": len(task.queries), "seeds": ordered, "seed_ids": seed_ids,
                "samples": [str(samples_rel / f"{name}.{k}shot.seed{s}.jsonl") for s in seed_ids],
                "demo_selection": settings.demo_selection if k else None,
                "text_only_demos": bool(k == 0 and settings.text_only_zero_shot),
                "fingerprint": fingerprint, "reused": sorted(reuse),
            }
            # write after every cell so an interrupted eval keeps what it finished
            results["summary"] = summarize(results["tasks"])
            atomic_write_json(results_path, results)
    if text_tasks:
        from mmbench_cli.evaluate.text import run_text_tasks

        fingerprint = hashlib.sha256(json.dumps([info["content_hash"], sorted(map(str, include_paths)),
                                                 settings.num_samples]).encode()).hexdigest()[:16]
        todo = [t for t in text_tasks
                if force or results["tasks"].get(t, {}).get("0", {}).get("fingerprint") != fingerprint]
        if todo:
            model = model or load_model(ckpt_dir, device=device)
            text_results = run_text_tasks(model, [t[len(TEXT_PREFIX):] for t in todo], include_paths,
                                          resolved.config.data, results_dir / samples_rel, settings.batch_size)
            for name, cell in text_results.items():
                cell["fingerprint"] = fingerprint
                results["tasks"][TEXT_PREFIX + name] = {"0": cell}
    results["summary"] = summarize(results["tasks"])
    atomic_write_json(results_path, results)
    return results_path


def _progress(console: Any, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not enabled, transient=False)


# ------------------------------------------------------------------------------------- external preds
def score_file(predictions_path: str | Path, task: str, task_data: dict[str, dict[str, Any]] | None = None,
               annotations: dict[str, Any] | None = None, data_cfg: Any = None,
               out: str | Path | None = None) -> dict[str, Any]:
    """Score another system's predictions (JSONL/JSON: ``question_id``/``image_id``/``id`` + ``answer``/``caption``)
    with the same metric as ``task``; the references come from the task's query data.
    """
    from mmbench_cli.config import DataConfig

    if annotations:
        task_data = {**(task_data or {}), task: {**(task_data or {}).get(task, {}), "query": annotations}}
    spec = resolve_task(task, task_data)
    records = _read_predictions(Path(predictions_path))
    samples = load_samples(spec, "query", data_cfg or DataConfig())
    by_id = {_sample_id(s): s for s in samples}
    if spec.family == "caption":
        by_id.update({str(s.image_id): s for s in samples})
    ids, preds, refs = [], [], []
    for number, record in enumerate(records, start=1):
        key = next((record[k] for k in ("question_id", "image_id", "id") if k in record), None)
        text = next((record[k] for k in ("answer", "caption", "prediction") if k in record), None)
        if key is None or not isinstance(text, str):
            raise MMError(f"{predictions_path}: record {number} needs an id (question_id/image_id/id) and an "
                          "answer/caption/prediction string")
        sample = by_id.get(str(key))
        if sample is None:
            raise MMError(f"{predictions_path}: record {number}: id {key!r} is not in the {task} annotations")
        ids.append(str(key))
        preds.append(text)
        refs.append(_references(sample))
    value, per_sample = score_predictions(spec, ids, preds, refs)
    result = {"task": task, "metric": spec.metric, "value": value, "n": len(ids)}
    if out:
        atomic_write_text(Path(out), "".join(
            json.dumps({"id": i, "prediction": p, "references": r, "score": s}) + "\n"
            for i, p, r, s in zip(ids, preds, refs, per_sample, strict=True)))
    return result


def _read_predictions(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise MMError(f"{path}: predictions file not found")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise MMError(f"{path}: predictions file is empty; expected JSONL lines like "
                      '{"question_id": 1, "answer": "2"}')
    if text.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError:
            raise MMError(f"{path}: not valid JSON") from None
    else:
        records = read_jsonl(path)
    if not records or not all(isinstance(r, dict) for r in records):
        raise MMError(f"{path}: expected a list of objects with an id and an answer/caption")
    return records
