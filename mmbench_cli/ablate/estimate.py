"""The ``--dry-run`` cost estimate: what running the grid will take, modelled on what will actually happen; and
the per-device memory a training run needs (``memory_estimate``), for its strategy and world size.

Per cell: process start-up, model and data set-up, ``train.steps`` optimizer steps (timed now on real batches of
the cell's own data mixture, at its batch size and ``train.cpu_threads`` torch threads), the checkpoint saves of
its schedule, and the evaluation (batched few-shot generation timed per task and shot count at the task's real
prompt length). Cells are then laid out
on the executor's slots in the order the executor starts them (``--jobs`` locally, Ray's CPUs, the SLURM array),
slowed down when they ask for more threads than the machine has cores. Every number the estimate rests on is
returned in ``assumptions`` so the plan can print it.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmbench_cli.ablate.grid import GridPlan, stage_waves
from mmbench_cli.ablate.store import GridStore
from mmbench_cli.config import Config, config_hash
from mmbench_cli.errors import MMError

# Starting a cell's process (python + torch + transformers imports) when it is not this process; an assumption,
# not a measurement, because this process has imported them already.
PROCESS_START_S = 6.0
# Text tokens per demo / query in a few-shot prompt besides its image tokens (templates + caption or Q/A).
PROMPT_TEXT_TOKENS = 20
TIMED_STEPS = 3


def format_flops(flops: float) -> str:
    """FLOPs (or FLOP/s) with a unit prefix: ``6.66 T``; ``?`` when unknown."""
    if not math.isfinite(flops):
        return "?"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.2f} {unit}"
    return f"{flops:.0f}"


@dataclass
class Schedule:
    """How many cells run at once and how fast each then goes, for one executor and its options."""

    executor: str
    parallel: int
    threads: int
    cores: int
    slowdown: float
    process_start_s: float
    notes: list[str] = field(default_factory=list)


def schedule_for(plan: GridPlan, executor: str, options: dict[str, Any]) -> Schedule:
    """The parallelism the executor will give ``plan``'s cells (see ``default_jobs`` for the local default)."""
    cores = os.cpu_count() or 1
    threads = max(cell.config.train.cpu_threads for cell in plan.cells)
    cells = len(plan.cells)
    if executor == "local":
        parallel = max(1, min(cells, int(options.get("jobs") or 1)))
        start = PROCESS_START_S if parallel > 1 else 0.0
        notes = [f"--jobs {parallel}: {parallel} cell(s) at once on this machine's {cores} cores"]
    elif executor == "ray":
        per_cell = max(1.0, float(options.get("cpus_per_cell") or 1))
        parallel = max(1, min(cells, int(cores // per_cell)))
        start = PROCESS_START_S
        notes = [f"ray: {parallel} cell(s) at once ({cores} CPUs of a local Ray / {per_cell:g} per cell; "
                 "a bigger cluster runs more)"]
    else:
        parallel = max(1, min(cells, int(options.get("array_parallelism") or cells)))
        start = PROCESS_START_S
        notes = [f"{executor}: {parallel} cell(s) at once, each on its own node/slot, timed as on this machine; "
                 "queue wait not counted"]
    slowdown = 1.0
    if executor != "slurm":
        slowdown = max(1.0, parallel * threads / cores)
        if slowdown > 1:
            notes.append(f"{parallel} cells × {threads} threads on {cores} cores: each cell {slowdown:.2f}× slower")
    return Schedule(executor, parallel, threads, cores, slowdown, start, notes)


def _model_key(cfg: Config) -> str:
    return config_hash(cfg.model) + config_hash(cfg.data) + f"/{cfg.train.batch_size}x{cfg.train.grad_accum}" \
        f"/{cfg.train.cpu_threads}/{cfg.train.device}/{cfg.train.stage}/{cfg.train.freeze_encoder}/{cfg.train.freeze_lm}"


def _timed(function: Any, repeats: int) -> float:
    """Median seconds of ``function()`` over ``repeats`` calls, after one warm-up call."""
    function()
    timings = []
    for _ in range(repeats):
        begin = time.perf_counter()
        function()
        timings.append(time.perf_counter() - begin)
    return sorted(timings)[len(timings) // 2]


def measure_cell(cfg: Config) -> dict[str, float]:
    """Time what a cell of ``cfg`` does, on this machine, at the cell's own thread count.

    Returns ``setup_s`` (model + data stream), ``step_s`` (one optimizer step on real batches), ``checkpoint_s``
    (one save), ``eval_s`` (the whole evaluation), ``params``, ``flops_per_sample`` and ``eval_flops``; for a frozen
    encoder also ``image_s`` (its seconds per image) and ``images_per_step``, with which ``store_savings`` takes out
    what the feature store will not recompute. Steps and eval are timed with every image encoded (what a cell pays
    when the store does not hold its images yet), and nothing is written to the store.
    """
    import torch

    from mmbench_cli.data.mixture import TrainStream
    from mmbench_cli.model.device import resolve_device
    from mmbench_cli.model.feature_store import encoder_features
    from mmbench_cli.train.loop import build_trainable_model

    device = resolve_device(cfg.train.device)
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cfg.train.cpu_threads)
    try:
        begin = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model = build_trainable_model(cfg).to(device)  # as mm pretrain: a frozen encoder runs forward only
        if model.frozen_features is not None:
            model.frozen_features = encoder_features  # every image computed, as before the store holds it
        stream = TrainStream(cfg, model.tokenizer, model.num_image_tokens, model.image_mean, model.image_std)
        setup_s = time.perf_counter() - begin
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model.train()
        seen: list[torch.Tensor] = []

        def train_step() -> None:
            for _ in range(cfg.train.grad_accum):
                batch = stream.next_batch(cfg.train.batch_size)
                images = batch.get("images")
                seen.append(images if images is not None else torch.zeros(0))
                output = model(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device),
                               images=None if images is None else images.to(device),
                               labels=batch["labels"].to(device))
                output.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step_s = _timed(train_step, TIMED_STEPS)
        with tempfile.TemporaryDirectory(prefix="mm-estimate.") as tmp:
            # a checkpoint holds the weights and the optimizer's two moments: about three model files
            checkpoint_s = 3 * _timed(lambda: model.save_pretrained(Path(tmp) / "model"), 1)
        eval_s, eval_flops, eval_images = _measure_eval(model, cfg, device)
        counts = model.param_counts()
        cost = {"setup_s": setup_s, "step_s": step_s, "checkpoint_s": checkpoint_s, "eval_s": eval_s,
                "params": float(counts["total"]), "flops_per_sample": float(model.flops_per_sample(cfg.data.seq_len)),
                "eval_flops": eval_flops, "eval_images": eval_images}
        if model.frozen_features is not None and any(len(images) for images in seen):
            images = torch.cat([images for images in seen if len(images)])
            cost["image_s"] = _timed(lambda: encoder_features(model.encoder, images.to(device)), 1) / len(images)
            cost["images_per_step"] = len(images) / len(seen) * cfg.train.grad_accum
        return cost
    finally:
        torch.set_num_threads(threads_before)


@dataclass
class TaskShape:
    """What one eval task costs per shot count, from its own data: queries, generation length, prompt length."""

    queries: int  # evaluated queries (``eval.num_samples``, or fewer when the task has fewer)
    new_tokens: int  # generation length as the runner uses it; 0: scored by its choices
    choices: int  # forwards per query of a multiple-choice task (its largest choice count), else 1
    prompt_tokens: dict[int, int]  # shots -> mean prompt length in tokens (image tokens included)


_TASK_SHAPES: dict[str, TaskShape | None] = {}  # shapes measured in this process (tasks x data x image tokens)
SHAPE_SAMPLE = 64  # queries whose prompts are built to measure a task's prompt length


def task_shape(cfg: Config, model: Any, name: str) -> TaskShape | None:
    """``name``'s cost shape for ``cfg`` (real prompts of ``SHAPE_SAMPLE`` queries built by its task type with random
    demos, encoded with ``model``'s tokenizer), or None for a task this process cannot load (lm-eval text tasks, local
    files that are missing): those are timed as generic prompts."""
    from mmbench_cli.data.templates import encode_interleaved
    from mmbench_cli.evaluate import fewshot
    from mmbench_cli.evaluate.runner import DEMO_POOL_SIZE, TaskData
    from mmbench_cli.evaluate.task_types import MULTIPLE_CHOICE
    from mmbench_cli.evaluate.tasks import resolve_task
    from mmbench_cli.families import TEXT_PREFIX

    ecfg = cfg.eval
    key = (f"{name}/{config_hash(cfg.data)}/{cfg.model.lm}/{cfg.model.tokenizer}/{model.num_image_tokens}/"
           f"{ecfg.num_samples}/{sorted(ecfg.shots)}")  # the tokenizer decides the prompt lengths
    if key in _TASK_SHAPES:
        return _TASK_SHAPES[key]
    shape = None
    if not name.startswith(TEXT_PREFIX):
        try:
            data = TaskData(resolve_task(name), cfg.data, ecfg.num_samples, need_demos=any(ecfg.shots))
            spec, kind = data.spec, data.spec.task_type
            sample = data.queries[:SHAPE_SAMPLE]
            prompt_tokens = {}
            for shots in ecfg.shots:
                pool = fewshot.demo_pool(data.train, DEMO_POOL_SIZE, 0) if shots else []
                demos = fewshot.select_random(pool, len(sample), shots, 0) if shots else [[] for _ in sample]
                lengths = [len(encode_interleaved(model.tokenizer, kind.build_prompt(demos[i], query, spec, False)[0],
                                                  model.num_image_tokens)) for i, query in enumerate(sample)]
                prompt_tokens[shots] = round(sum(lengths) / max(len(lengths), 1))
            multiple = kind.output_type == MULTIPLE_CHOICE
            choices = max((len(kind.choices(query, spec)) for query in sample), default=1) if multiple else 1
            shape = TaskShape(len(data.queries), 0 if multiple else spec.max_new_tokens or kind.max_new_tokens,
                              choices, prompt_tokens)
        except MMError:  # not readable here: timed as a generic prompt
            pass
    _TASK_SHAPES[key] = shape
    return shape


def _measure_eval(model: Any, cfg: Config, device: Any) -> tuple[float, float, float]:
    """Seconds, FLOPs and encoded images of the cell's evaluation: for each task and shot count, one batch of its real mean prompt
    length timed (``task_shape``), times its batches.

    Each batch generates the task's full length (a trained model often stops sooner, so this leans high); a task
    scored by its choices runs one forward per choice instead. A task whose data cannot be read here is timed with
    ``PROMPT_TEXT_TOKENS`` text tokens per image and ``eval.max_new_tokens``.
    """
    import torch

    ecfg = cfg.eval
    per_token = model.flops_per_sample(cfg.data.seq_len) / cfg.data.seq_len / 3.0  # forward = 1/3 of fwd+bwd
    text_id = model.tokenizer("the", add_special_tokens=False)["input_ids"][0]  # an ordinary word, not an image token
    limit = model.lm.config.max_position_embeddings
    model.eval()
    timings: dict[tuple[int, int, int], float] = {}  # (prompt tokens, images per row, new tokens) -> seconds
    seconds = flops = encoded = 0.0
    for name in ecfg.tasks:
        shape = task_shape(cfg, model, name)
        for shots in ecfg.shots:
            images_per_row = shots + 1
            if shape is None:
                new_tokens, choices, queries = ecfg.max_new_tokens, 1, ecfg.num_samples
                length = images_per_row * (model.num_image_tokens + PROMPT_TEXT_TOKENS)
            else:
                new_tokens, choices, queries = shape.new_tokens, shape.choices, shape.queries
                length = shape.prompt_tokens[shots]
            length = max(images_per_row * model.num_image_tokens + 1, min(length, limit - max(new_tokens, 1)))
            batches = math.ceil(queries * ecfg.seeds / ecfg.batch_size) * (choices if new_tokens == 0 else 1)
            key = (length, images_per_row, new_tokens)
            if key not in timings:
                row = ([model.image_token_id] * model.num_image_tokens + [text_id]) * images_per_row
                row += [text_id] * (length - len(row))
                input_ids = torch.tensor([row], device=device).repeat(ecfg.batch_size, 1)
                images = torch.randn(ecfg.batch_size * images_per_row, 3, model.image_size, model.image_size,
                                     device=device)

                def run(ids: torch.Tensor = input_ids, pixels: torch.Tensor = images, new: int = new_tokens) -> None:
                    if new == 0:
                        with torch.no_grad():
                            model(ids, images=pixels)
                    else:
                        model.generate(ids, images=pixels, max_new_tokens=new, num_beams=ecfg.num_beams,
                                       min_new_tokens=new)

                timings[key] = _timed(run, 1)
            seconds += batches * timings[key]
            flops += batches * ecfg.batch_size * per_token * (length + new_tokens * ecfg.num_beams)
            encoded += batches * ecfg.batch_size * images_per_row
    return seconds, flops, encoded


def _from_throughput(cfg: Config, throughput: float) -> dict[str, float]:
    """Cell costs from a given training throughput (FLOP/s): FLOPs only, no timing."""
    from mmbench_cli.data.synthetic import tokenizer_source
    from mmbench_cli.model import build_model

    model = build_model(cfg.model, tokenizer_source(cfg.data))
    per_seq = float(model.flops_per_sample(cfg.data.seq_len))
    per_token = per_seq / cfg.data.seq_len / 3.0
    ecfg = cfg.eval
    eval_flops = sum(ecfg.num_samples * ecfg.seeds * len(ecfg.tasks) * per_token
                     * ((shots + 1) * (cfg.model.num_image_tokens + PROMPT_TEXT_TOKENS) + ecfg.max_new_tokens)
                     for shots in ecfg.shots)
    return {"setup_s": 0.0, "step_s": per_seq * cfg.train.batch_size * cfg.train.grad_accum / throughput,
            "checkpoint_s": 0.0, "eval_s": eval_flops / throughput, "params": float(model.param_counts()["total"]),
            "flops_per_sample": per_seq, "eval_flops": eval_flops}


def _num_checkpoints(cfg: Config) -> int:
    from mmbench_cli.train.checkpoints import checkpoint_schedule

    return len(checkpoint_schedule(cfg.train.steps, cfg.train.checkpoint_every, cfg.train.log_spaced_checkpoints))


# Seconds that vit-tiny-clip's recipe (300 steps x 64 pairs) took at 64 px on one core of the 2-core dev machine;
# other encoders, resolutions and recipes are scaled from it (a rough figure: the note says so).
PRETRAIN_CALIBRATION_S = 142.0


def encoder_pretrain_estimate(cfg: Config) -> tuple[str, float] | None:
    """(cache dir, estimated seconds) of ``cfg``'s pre-trained encoder if it still has to be made, else None."""
    from mmbench_cli.registry import ENCODERS
    from mmbench_cli.train.pretrained_encoder import ENCODER_RECIPE, encoder_dir

    directory = encoder_dir(cfg)
    if directory is None or (directory / "model.safetensors").exists():
        return None
    spec = ENCODERS.get(cfg.model.encoder)
    patches = (cfg.model.image_size // cfg.model.patch_size) ** 2
    work = patches * ENCODER_RECIPE["steps"] * ENCODER_RECIPE["batch_size"] * spec.hidden_size ** 2 * spec.num_layers
    reference = 64 * 300 * 64 * 128 ** 2 * 4
    return str(directory), PRETRAIN_CALIBRATION_S * work / reference


def _store_key(cfg: Config) -> str:
    """What decides a cell's stored features: its encoder's weights (the pre-trained encoder's cache dir, or the model
    config and seed of a randomly initialised one) and its images (the data config)."""
    from mmbench_cli.train.pretrained_encoder import encoder_dir

    directory = encoder_dir(cfg)
    weights = str(directory) if directory is not None else f"{config_hash(cfg.model)}/{cfg.seed}"
    return f"{weights}/{cfg.model.image_size}/{config_hash(cfg.data)}/{cfg.train.cpu_threads}/{cfg.train.device}"


def store_savings(cfg: Config, cost: dict[str, float], stored: dict[str, set[str]]) -> tuple[float, float]:
    """(training, eval) seconds the feature store saves a cell of ``cfg``, given what earlier cells stored.

    Training encodes each distinct image once (synthetic data: at most ``data.num_train_images``; other data is
    assumed not to repeat), and not at all when an earlier cell with the same encoder and data stored it. The
    measured eval encodes every prompt image of every batch; with the store each query image is encoded once per
    store (the demos are training images, stored by training). ``stored`` (store key → parts stored) is updated.
    """
    from mmbench_cli.rundir import feature_store_cap_bytes

    image_s, per_step = cost.get("image_s"), cost.get("images_per_step")
    if image_s is None or per_step is None or not cfg.train.freeze_encoder or feature_store_cap_bytes() == 0:
        return 0.0, 0.0
    parts = stored.setdefault(_store_key(cfg), set())
    seen = cfg.train.steps * per_step
    distinct = min(seen, cfg.data.num_train_images) if cfg.data.source == "synthetic" else seen
    train_saved = (seen - (0 if "train" in parts else distinct)) * image_s
    measured = cost.get("eval_images", 0.0)  # images the eval timing encoded
    queries = 0 if "test" in parts else min(cfg.eval.num_samples, cfg.data.num_test_images)
    parts.update(("train", "test"))
    return train_saved, max(0.0, measured - queries) * image_s


def _makespan(durations: list[float], slots: int) -> float:
    """Wall time of running ``durations`` in this order on ``slots`` slots, each job taking the first free slot."""
    free = [0.0] * max(1, slots)
    for duration in durations:
        index = free.index(min(free))
        free[index] += duration
    return max(free, default=0.0)


def check_throughput(throughput: float | None) -> None:
    """MMError unless ``throughput`` (``--throughput``, FLOP/s) is None or a positive finite number."""
    if throughput is not None and not (math.isfinite(throughput) and throughput > 0):
        raise MMError(f"--throughput {throughput:g}: must be a positive number of FLOP/s, e.g. 1e12")


def estimate_plan(plan: GridPlan, out: str | Path, executor: str = "local", options: dict[str, Any] | None = None,
                  throughput: float | None = None) -> dict[str, Any]:
    """Estimated cost of each cell of ``plan`` and the grid's wall time under ``executor``.

    A cell's time comes from ``throughput`` (FLOP/s) if given, else from timing its model on this machine now
    (once per distinct model/data/batch/threads). Done cells cost nothing. The result holds the ``assumptions``
    behind the numbers, one sentence each.
    """
    check_throughput(throughput)
    schedule = schedule_for(plan, executor, options or {})
    store = GridStore(out)
    measured: dict[str, dict[str, float]] = {}
    rows = []
    to_pretrain: dict[str, float] = {}  # uncached pre-trained encoders (vit-tiny-clip) → estimated seconds
    stored: dict[str, set[str]] = {}  # feature store: what earlier cells put there (store_savings)
    saved = 0.0
    for cell in plan.cells:
        cfg = cell.config
        key = _model_key(cfg)
        if key not in measured:
            measured[key] = _from_throughput(cfg, throughput) if throughput else measure_cell(cfg)
        cost = measured[key]
        train_s = cfg.train.steps * cost["step_s"] + _num_checkpoints(cfg) * cost["checkpoint_s"]
        eval_s = cost["eval_s"]
        pretrain_s = 0.0
        if store.cell_state(cell.id) != "done":
            train_saved, eval_saved = store_savings(cfg, cost, stored)
            train_s, eval_s, saved = train_s - train_saved, eval_s - eval_saved, saved + train_saved + eval_saved
            encoder = encoder_pretrain_estimate(cfg)
            if encoder is not None and encoder[0] not in to_pretrain:  # the first cell that needs it makes it
                to_pretrain[encoder[0]] = pretrain_s = encoder[1]
        train_s += pretrain_s
        cell_s = (schedule.process_start_s + cost["setup_s"] + train_s + eval_s) * schedule.slowdown
        rows.append({
            "cell": cell.id,
            "state": store.cell_state(cell.id),
            "params": cost["params"],
            "train_flops": cost["flops_per_sample"] * cfg.train.steps * cfg.train.batch_size * cfg.train.grad_accum,
            "eval_flops": cost["eval_flops"],
            "train_s": train_s * schedule.slowdown,
            "eval_s": eval_s * schedule.slowdown,
            "est_s": cell_s,
        })
    todo = [row for row in rows if row["state"] != "done"]
    seconds = {row["cell"]: row["est_s"] for row in todo}
    waves = stage_waves([cell for cell in plan.cells if cell.id in seconds])  # a stage waits for the one it starts from
    total_s = sum(_makespan([seconds[cell.id] for cell in wave], schedule.parallel) for wave in waves)
    if throughput:
        how = f"cell times from --throughput {format_flops(throughput)}FLOP/s (training FLOPs and eval forward FLOPs)"
    else:
        how = (f"cell times measured now: {TIMED_STEPS} real training steps per distinct model at its batch size "
               "and train.cpu_threads, one checkpoint save, one generation batch per shot count")
    first = plan.cells[0].config
    assumptions = [
        how,
        *schedule.notes,
        f"{schedule.threads} torch thread(s) per cell (train.cpu_threads)",
        f"per cell: {schedule.process_start_s:.0f}s process start, model/data set-up, "
        f"{_num_checkpoints(first)} checkpoint saves, eval of {len(first.eval.tasks)} task(s) × shots "
        f"{list(first.eval.shots)} × up to {first.eval.num_samples} samples × {first.eval.seeds} seed(s), each task "
        "timed at its own mean prompt length (real prompts of its data) generating its full answer length",
        (f"encoder pre-training: {len(to_pretrain)} pre-trained encoder(s) not cached yet, "
         f"{sum(to_pretrain.values()) / 60:.1f} min in all, counted in the first cell that needs each (scaled from "
         f"{PRETRAIN_CALIBRATION_S:.0f} s for vit-tiny-clip at 64 px on one core of a 2-core CPU, by patches x steps x "
         "batch x width)" if to_pretrain else
         "no encoder pre-training: cells with a built-in encoder train it with the MLLM; a cached pre-trained "
         "encoder (vit-tiny-clip) or one given by its dir (`mm pretrain --stage encoder`) costs nothing here"),
        (f"feature store: frozen encoders encode each image once per store (the first cell with an encoder pays, "
         f"later cells and eval reuse): {saved * schedule.slowdown / 60:.1f} min of cell time saved" if saved else
         "feature store: no savings counted (no frozen encoder, timed by --throughput, or MMBENCH_FEATURE_STORE_MB=0)"),
        f"machine load now (1-min average): {os.getloadavg()[0]:.2f} on {schedule.cores} cores",
        *([f"{len(waves)} waves of cells run one after another: a cell that starts from another cell "
           "(train.init_from: ${stage}) waits for it"] if len(waves) > 1 else []),
    ]
    return {
        "executor": executor, "parallel": schedule.parallel, "threads_per_cell": schedule.threads,
        "cores": schedule.cores, "slowdown": schedule.slowdown, "cells": rows, "total_s": total_s,
        "cell_s": sum(row["est_s"] for row in todo),
        "total_flops": sum(row["train_flops"] + row["eval_flops"] for row in todo),
        "throughput": throughput, "assumptions": assumptions,
    }


# ------------------------------------------------------------------------------------------------------ memory
# Values a transformer block keeps for backward per token, in units of its width (GPT-NeoX / ViT in fp32 with a
# fused attention kernel, which keeps no seq x seq matrix): the two LayerNorm inputs, the QKV input and Q, K, V, the
# attention output and the output projection's input, the MLP's input and its 4x-wide pre- and post-GELU tensors.
BLOCK_SAVED_WIDTHS = 19
# Logits-sized tensors alive at the loss: the fp32 logits, log-softmax kept by cross-entropy, and their gradient.
LOGITS_COPIES = 3


def _micro_batch_images(cfg: Config, rows: int) -> float:
    """Images in a micro-batch of ``rows`` packed rows: caption/interleaved rows hold about one image per
    ``num_image_tokens`` + ``PROMPT_TEXT_TOKENS`` tokens, text rows none (an estimate: the stream packs real ones)."""
    image_share = sum(share for kind, share in cfg.data.data_mix.items() if kind != "text")
    per_row = cfg.data.seq_len / (cfg.model.num_image_tokens + PROMPT_TEXT_TOKENS)
    return rows * image_share * per_row


def memory_estimate(cfg: Config, world_size: int = 1, strategy: str | None = None) -> dict[str, Any]:
    """Per-device training memory of ``cfg`` in bytes: parameters, gradients, optimizer state (AdamW's two fp32
    moments) and activations of one micro-batch (``train.batch_size / (grad_accum x world_size)`` rows of
    ``data.seq_len``), for ``strategy`` (default: ``train.strategy`` resolved for ``world_size``).

    single: everything whole. ddp: the same plus DDP's gradient buckets (a second gradient copy). fsdp: parameters,
    gradients and moments sharded over the ranks, plus the gathered root unit (embeddings, head, connector,
    encoder) and two gathered LM blocks (the one running and the one prefetched); with ``fsdp_sharding: grad_op``
    every block stays gathered from forward to backward. ``activation_checkpointing`` keeps each LM block's input
    and recomputes one block at a time. The model is built on the meta device (nothing is allocated), except a
    saved LM (``hf:<dir>``), which loads on CPU.
    """
    import torch

    from mmbench_cli.train.loop import build_trainable_model
    from mmbench_cli.train.strategies import lm_blocks

    tcfg = cfg.train
    name = strategy or (tcfg.strategy if tcfg.strategy != "auto" else ("ddp" if world_size > 1 else "single"))
    from mmbench_cli.errors import MMError

    try:
        with torch.device("meta"):
            model = build_trainable_model(cfg)
    except MMError:  # a saved LM (hf:<dir>) loads its weights, which transformers refuses on the meta device
        model = build_trainable_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = lm_blocks(model)
    block_params = max((sum(p.numel() for p in block.parameters()) for block in blocks), default=0)
    root_params = params - sum(sum(p.numel() for p in block.parameters()) for block in blocks)
    root_trainable = trainable - sum(sum(p.numel() for p in block.parameters() if p.requires_grad) for block in blocks)
    fp32 = 4
    if name == "fsdp":
        gathered = root_params + (params - root_params if tcfg.fsdp_sharding == "grad_op" else 2 * block_params)
        weights = fp32 * (params / world_size + gathered * (world_size - 1) / world_size)
        grads = fp32 * (trainable / world_size + root_trainable + block_params)
        optimizer = 2 * fp32 * trainable / world_size
    else:
        weights = fp32 * params
        grads = fp32 * trainable * (2 if name == "ddp" and world_size > 1 else 1)
        optimizer = 2 * fp32 * trainable
    activations = _activation_bytes(cfg, model, tcfg.batch_size // max(1, tcfg.grad_accum * world_size))
    total = weights + grads + optimizer + activations
    return {"strategy": name, "world_size": world_size, "params": params, "trainable_params": trainable,
            "weights_bytes": weights, "grads_bytes": grads, "optimizer_bytes": optimizer,
            "activations_bytes": activations, "total_bytes": total}


def _activation_bytes(cfg: Config, model: Any, rows: int) -> float:
    """Bytes kept for backward by one micro-batch of ``rows`` rows (fp32; bf16 halves most of it on CUDA)."""
    lm_cfg = model.lm.config
    tokens = rows * cfg.data.seq_len
    width, layers = lm_cfg.hidden_size, lm_cfg.num_hidden_layers
    per_block = BLOCK_SAVED_WIDTHS * tokens * width
    lm = (layers * tokens * width + per_block) if cfg.train.activation_checkpointing else layers * per_block
    logits = LOGITS_COPIES * tokens * lm_cfg.vocab_size
    encoder = 0.0
    if not cfg.train.freeze_encoder:  # a frozen encoder runs without autograd: it keeps nothing
        enc_cfg = model.encoder.hf_model.config
        patches = (cfg.model.image_size // cfg.model.patch_size) ** 2 + 1
        encoder = (_micro_batch_images(cfg, rows) * patches * enc_cfg.hidden_size * BLOCK_SAVED_WIDTHS
                   * enc_cfg.num_hidden_layers)
    return 4.0 * (lm + logits + encoder + 2 * tokens * width)  # + embeddings and final norm


def format_bytes(count: float) -> str:
    """Bytes with a binary unit: ``1.50 GiB``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:.0f} B"


def parse_memory(text: str) -> float:
    """``80GB``, ``80GiB``, ``512MiB``, ``1e9`` → bytes; MMError on anything else (GB and GiB both mean 2**30,
    as device memory is quoted)."""
    import re

    from mmbench_cli.errors import MMError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([KMGT]i?B?)?\s*", text, flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise MMError(f"--device-memory: {text!r} is not a size; use e.g. 80GB, 24GiB or 512MiB")
    unit = (match.group(2) or "").upper()[:1]
    return float(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit]


def memory_line(estimate: dict[str, Any]) -> str:
    """One line: the per-device total and its parts."""
    return (f"{format_bytes(estimate['total_bytes'])} per device ({estimate['strategy']}, {estimate['world_size']} "
            f"rank(s)): weights {format_bytes(estimate['weights_bytes'])}, grads {format_bytes(estimate['grads_bytes'])}, "
            f"optimizer {format_bytes(estimate['optimizer_bytes'])}, activations "
            f"{format_bytes(estimate['activations_bytes'])}")


def check_fits(estimate: dict[str, Any], device_memory: float | None, what: str = "the plan") -> None:
    """MMError (one line) when ``estimate`` needs more than ``device_memory`` bytes per device."""
    from mmbench_cli.errors import MMError

    if device_memory is not None and estimate["total_bytes"] > device_memory:
        raise MMError(f"--device-memory {format_bytes(device_memory)}: {what} needs {memory_line(estimate)}; use "
                      "train.strategy=fsdp, more ranks, train.activation_checkpointing=true or a smaller batch")


def plan_memory(plan: GridPlan, world_size: int = 1) -> dict[str, dict[str, Any]]:
    """``memory_estimate`` of every cell of ``plan`` (computed once per distinct model, data row and strategy)."""
    known: dict[str, dict[str, Any]] = {}
    estimates = {}
    for cell in plan.cells:
        cfg = cell.config
        key = _model_key(cfg) + f"/{cfg.train.strategy}/{cfg.train.fsdp_sharding}/{cfg.train.activation_checkpointing}"
        if key not in known:
            known[key] = memory_estimate(cfg, world_size)
        estimates[cell.id] = known[key]
    return estimates


def largest(estimates: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The (cell, estimate) needing the most memory per device."""
    return max(estimates.items(), key=lambda item: item[1]["total_bytes"])
