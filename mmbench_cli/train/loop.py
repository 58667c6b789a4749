"""The pre-training loop: AdamW + warm-up/cosine, grad clipping and accumulation, Pythia-style checkpoints,
exact resume, on one process or under torchrun (how: the ``train.strategy`` object, ``strategies.py``).

One optimizer step consumes ``train.batch_size`` packed rows (global, across ranks) in ``train.grad_accum``
micro-batches. The loss is the mean over every label token of the global batch, whatever the split into
ranks and micro-batches, so 1 process and N processes (or 1 and k accumulation steps) follow the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from mmbench_cli.config import DATA_TYPES, Config
from mmbench_cli.errors import MMError
from mmbench_cli.model.device import use_cpu_threads
from mmbench_cli.rundir import CHECKPOINT_JSON, RunDir, RunLock, file_content_hash, read_json_file, step_dir_name
from mmbench_cli.trackers import TrackerSet, open_trackers, require_trackers
from mmbench_cli.train import run_setup
from mmbench_cli.train.checkpoints import checkpoint_schedule
from mmbench_cli.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    init_distributed,
    shutdown,
)
from mmbench_cli.train.pretrained_encoder import ensure_pretrained_encoder, load_pretrained_encoder
from mmbench_cli.train.schedule import resolve_lr_and_wd
from mmbench_cli.train.step_loop import StepResult, run_steps
from mmbench_cli.train.strategies import TrainingStrategy, build_strategy, needs_process_group, seed_everything

if TYPE_CHECKING:
    from mmbench_cli.data.mixture import TrainStream
    from mmbench_cli.model.mllm import MLLM

IGNORE_INDEX = -100


@dataclass
class LogWindow:
    """Sums over the optimizer steps since the last metrics line (saved in checkpoints for exact resume)."""

    loss_sum: float = 0.0
    label_tokens: float = 0.0
    type_loss_sum: dict[str, float] = field(default_factory=dict)
    type_label_tokens: dict[str, float] = field(default_factory=dict)
    tokens: float = 0.0
    time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-able state."""
        return dict(self.__dict__)


@dataclass
class TrainState:
    """Counters carried across steps and resumes."""

    step: int = 0
    tokens_seen: float = 0.0
    train_flops: float = 0.0
    elapsed_s: float = 0.0
    window: LogWindow = field(default_factory=LogWindow)


def check_batch_shape(cfg: Config, world_size: int) -> int:
    """Rows per rank per micro-batch; MMError unless the global batch splits evenly."""
    batch, accum = cfg.train.batch_size, cfg.train.grad_accum
    if batch % (accum * world_size):
        raise MMError(
            f"train.batch_size: {batch} rows do not split into grad_accum={accum} micro-batches on "
            f"{world_size} rank(s); use a multiple of {accum * world_size}"
        )
    return batch // (accum * world_size)


def token_losses(logits: torch.Tensor, labels: torch.Tensor, ignore_ids: tuple[int, ...] = ()) -> torch.Tensor:
    """Per-token next-token cross-entropy ``[B, L]`` in fp32 (position t scores token t+1; 0 where ignored).

    The labels are shifted, not the logits (as transformers' own loss does): slicing ``logits[:, :-1]`` would
    copy the largest activation of the step, and its backward would allocate and fill it again.
    """
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    for token_id in ignore_ids:
        targets = targets.masked_fill(targets == token_id, IGNORE_INDEX)
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="none")
    return losses.view(targets.shape)


def _row_types(batch: dict[str, Any], rows: int) -> list[str]:
    kind = batch.get("data_type")
    if isinstance(kind, str):
        return [kind] * rows
    return list(kind) if kind is not None else ["caption"] * rows


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def _log_steps(steps: int, every: int) -> set[int]:
    return {1, steps, *range(every, steps + 1, every)}


def pretrain(cfg: Config, out_dir: str | Path, resume: bool = False, force: bool = False, progress: bool = True) -> Path:
    """Train ``cfg``'s model on its data mixture into the run dir ``out_dir``; return the run dir.

    Resumes automatically from the newest checkpoint when the dir holds a run of the same config (or, with
    ``resume``, one differing only in resumable keys); ``force`` starts over. Under torchrun, runs as
    ``train.strategy`` says (auto: DDP).
    """
    run_setup.check_out_dir(Path(out_dir))
    if cfg.train.stage == "encoder":
        from mmbench_cli.train.encoder_pretrain import pretrain_encoder

        return pretrain_encoder(cfg, out_dir, resume=resume, force=force, progress=progress)
    run_setup.check_data_inputs(cfg)
    require_trackers(cfg.train.trackers)  # a tracker that is not installed: refused before anything starts
    ctx = init_distributed(cfg.train.device, process_group=needs_process_group(cfg.train))
    use_cpu_threads(ctx.device, cfg.train.cpu_threads)
    try:
        check_batch_shape(cfg, ctx.world_size)
        return _pretrain(cfg, Path(out_dir), resume, force, progress, ctx)
    finally:
        shutdown(ctx)


def _claim_run_dir(cfg: Config, run_dir: Path, resume: bool, force: bool, ctx: DistContext) -> tuple[RunLock | None, int | None]:
    """Rank 0 takes the lock and decides where to start; every rank learns the decision (or the error)."""
    lock, start, error = None, None, None
    if ctx.is_main:
        lock = RunLock(run_dir, "run")
        try:
            lock.acquire()
        except MMError as failure:
            error = failure.message
        else:
            try:
                start = run_setup.prepare_run_dir(cfg, run_dir, resume, force)
            except MMError as failure:
                run_setup.fail_run(run_dir, started=False)  # a status left `running` by a killed writer: failed
                lock.release()
                error = failure.message
            except BaseException:
                run_setup.fail_run(run_dir, started=False)
                lock.release()
                raise
    error, start = broadcast_from_main((error, start), ctx)
    if error:
        raise MMError(error)
    return lock, start


def _precheck_run_dir(cfg: Config, run_dir: Path, resume: bool, force: bool, ctx: DistContext) -> None:
    """The run-dir refusals (another config, a foreign dir), read-only and before the model is built; they are
    checked again under the lock. Skipped while an interrupted --force is pending repair (the lock holder does it)."""
    error = None
    if ctx.is_main and not RunDir(run_dir).has_set_aside():
        try:
            run_setup.check_run_dir(cfg, run_dir, resume, force)
        except MMError as failure:
            error = failure.message
    error = broadcast_from_main(error, ctx)
    if error:
        raise MMError(error)


def _finished(cfg: Config, run: RunDir, start_step: int | None) -> bool:
    """Whether ``run`` already is this config's finished run (final checkpoint, status done, same config file)."""
    from mmbench_cli.config import config_to_yaml

    return (start_step == cfg.train.steps and run.read_status() == "done"
            and run.read_config_text() == config_to_yaml(cfg))


def _pretrain(cfg: Config, run_dir: Path, resume: bool, force: bool, show: bool, ctx: DistContext) -> Path:
    from mmbench_cli.data.mixture import TrainStream

    # Everything that can be refused is checked before the run dir is touched: config (on load), precision,
    # model (built here), optimizer settings. Only then is the dir claimed (an old run set aside with --force).
    tcfg = cfg.train
    strategy = build_strategy(tcfg, ctx)
    source = run_setup.init_source(tcfg.init_from) if tcfg.init_from else None
    _precheck_run_dir(cfg, run_dir, resume, force, ctx)
    seed_everything(cfg.seed)
    model = build_trainable_model(cfg)
    num_params = sum(p.numel() for p in model.parameters())
    peak_lr, weight_decay = resolve_lr_and_wd(tcfg, num_params)

    lock, start_step = _claim_run_dir(cfg, run_dir, resume, force, ctx)
    run = RunDir(run_dir)
    started = False
    try:
        if broadcast_from_main(ctx.is_main and _finished(cfg, run, start_step), ctx):
            return run_dir  # the same finished run: nothing to train, so nothing is rewritten
        if show and ctx.is_main and start_step is not None:
            from rich.console import Console

            Console(stderr=True).print(f"resuming {run_dir} from checkpoint step {start_step}", highlight=False)
        pretrained: dict[str, Any] | None = None
        initialised: dict[str, Any] | None = None
        if start_step is not None:
            _load_weights(model, run.checkpoint_dir(start_step))
        else:  # a fresh start from a pre-trained encoder (vit-tiny-clip): made once, cached, loaded here
            made = ensure_pretrained_encoder(cfg, progress=show and ctx.is_main, build=ctx.is_main)
            if made is not None:
                load_pretrained_encoder(model, made[0])
                # its weights' content hash: a cached encoder made by other code under the same key shows here
                pretrained = {"dir": str(made[0]), "pretrain_s": round(made[1], 3),
                              "weights": file_content_hash(made[0] / "model.safetensors")}
            if source is not None:  # a later stage: another run's weights, this run's own optimizer and schedule
                initialised = _init_from(model, source, show and ctx.is_main)
        # Training FLOPs: LM per token (6N + attention) and encoder+connector per image, counted exactly per step
        # (on the unwrapped model: a sharded one runs only inside its forward).
        flops_per_row = float(model.lm_flops_per_token(cfg.data.seq_len)) * cfg.data.seq_len
        flops_per_image = float(model.image_flops())
        flops_per_step = float(model.flops_per_sample(cfg.data.seq_len)) * tcfg.batch_size  # estimate: 1 image/row
        strategy.setup(model, peak_lr, weight_decay, tcfg.encoder_lr_scale)  # wraps, then builds the optimizer

        stream = TrainStream(cfg, model.tokenizer, model.num_image_tokens, model.image_mean, model.image_std)
        cuts = stream.planner.truncation() if ctx.is_main else {}
        if show and ctx.is_main:
            _note_truncation(cfg, cuts)
        state = TrainState()
        if start_step is not None:
            optimizer = strategy.optimizer
            assert optimizer is not None
            scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
            saved = strategy.load(run.checkpoint_dir(start_step))
            for group, scale in zip(optimizer.param_groups, scales, strict=True):  # the saved groups lack it
                group["lr_scale"] = scale
            try:
                stream.load_state_dict(saved["data"])
                state = TrainState(step=saved["step"], tokens_seen=saved["tokens_seen"],
                                   train_flops=saved["train_flops"], elapsed_s=saved["elapsed_s"],
                                   window=LogWindow(**saved["window"]))
            except (KeyError, TypeError, ValueError) as error:
                raise MMError(f"{run.checkpoint_dir(start_step)}: damaged trainer state ({type(error).__name__}: "
                              f"{error}); delete this checkpoint dir to resume from an earlier one") from None

        if ctx.is_main:
            started = True
            run.truncate_metrics(start_step)
            run_setup.write_run_files(cfg, run_dir, {
                "num_params": num_params, "flops_per_step": flops_per_step, "lr": peak_lr,
                "weight_decay": weight_decay, "world_size": ctx.world_size, "device": str(ctx.device),
                "precision": strategy.precision_name, **strategy.run_meta(),
                "wall_time_s": state.elapsed_s, "resumed_from": start_step, "seq_len_cuts": cuts,
                **({"pretrained_encoder": pretrained} if pretrained else {}),
                **({"init_from": initialised} if initialised else {}),
            })
            run.write_status("running")
        barrier(ctx)

        trackers = open_trackers(cfg, run_dir, "train", start_step) if ctx.is_main else TrackerSet({}, run_dir, {})
        trainer = _Trainer(cfg, strategy, stream, peak_lr, (flops_per_row, flops_per_image), run_dir, trackers)
        with trackers:
            trainer.run(state, show)
        if ctx.is_main:
            run.drop_set_aside()  # a resumed or empty schedule saves nothing new: the old run goes now
            bad = stream.num_bad + stream.bad_skipped  # skipped while loading + while training (data.skip_bad)
            run.update_meta({"wall_time_s": state.elapsed_s, "tokens_seen": state.tokens_seen,
                             "train_flops": state.train_flops,
                             "flops_per_step": state.train_flops / max(state.step, 1),
                             **({"cuda_peak_memory_bytes": torch.cuda.max_memory_allocated(ctx.device)}
                                if ctx.device.type == "cuda" else {}),
                             **({"bad_samples_skipped": bad} if bad else {})})
            run.write_status("done")
            if bad and show:
                from rich.console import Console

                first = (stream.bad_problems or [""])[0]
                Console(stderr=True).print(f"[yellow]skipped {bad} bad samples[/] (data.skip_bad)"
                                           f"{'; first: ' + first if first else ''}", highlight=False, soft_wrap=True)
        return run_dir
    except BaseException:
        if ctx.is_main:
            run_setup.fail_run(run_dir, started)
        raise
    finally:
        if lock is not None:
            lock.release()


# A data type losing more than this share of its tokens to the row length gets a note when training starts.
TRUNCATION_NOTE = 0.05


def _note_truncation(cfg: Config, cuts: dict[str, dict[str, float]]) -> None:
    """Say which data types ``data.seq_len`` cuts (samples longer than a row lose their tail, so their later
    images and Q&A are never trained on)."""
    from rich.console import Console

    for data_type, cut in cuts.items():
        if cut["tokens_cut"] > TRUNCATION_NOTE:
            Console(stderr=True).print(
                f"[yellow]note:[/] data.seq_len={cfg.data.seq_len} cuts {cut['tokens_cut']:.0%} of the {data_type} "
                f"tokens ({cut['samples_cut']:.0%} of its samples are longer than a row and lose their tail); "
                "raise data.seq_len (with model.max_seq_len) to train on them", highlight=False, soft_wrap=True)


def build_trainable_model(cfg: Config) -> MLLM:
    """``cfg``'s model as ``mm pretrain`` trains it: built, its encoder frozen when ``train.freeze_encoder`` says so
    (no gradient flows into it: it runs forward only) and its LM when ``train.freeze_lm`` does (gradients pass through
    it to the connector). Benchmarks and the dry-run estimate time this same model."""
    from mmbench_cli.data.synthetic import tokenizer_source
    from mmbench_cli.model import build_model
    from mmbench_cli.model.feature_store import use_feature_store

    model = use_feature_store(build_model(cfg.model, tokenizer_source(cfg.data)), cfg)  # frozen: features stored
    if cfg.train.freeze_encoder:
        model.encoder.requires_grad_(False)
    if cfg.train.freeze_lm:
        model.lm.requires_grad_(False)
    return model


def _init_from(model: torch.nn.Module, source: Path, show: bool) -> dict[str, Any]:
    """Load checkpoint ``source``'s weights into ``model`` where names and shapes match; parameters the source lacks
    keep their fresh initialisation (reported). Returns what meta.json records of the source."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(source / "model.safetensors"))
    except (SafetensorError, OSError) as error:
        raise MMError(f"train.init_from: {source}: unreadable weights ({str(error).splitlines()[0][:160]})") from None
    own = model.state_dict()
    wrong = [name for name, tensor in weights.items() if name in own and own[name].shape != tensor.shape]
    if wrong:
        raise MMError(f"train.init_from: {source}: {wrong[0]} has shape {tuple(weights[wrong[0]].shape)} there but "
                      f"{tuple(own[wrong[0]].shape)} here ({len(wrong)} such); start from a run of the same model")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [name for name in missing if name not in _tied_aliases(model, weights)]
    if missing and show:
        run_setup.note(f"train.init_from: {len(missing)} parameter(s) not in {source} start fresh "
                       f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    info = read_json_file(source / CHECKPOINT_JSON, CHECKPOINT_JSON) if (source / CHECKPOINT_JSON).is_file() else {}
    return {"path": str(source.parent.parent), "checkpoint": str(source), "step": info.get("step"),
            "content_hash": info.get("content_hash") or file_content_hash(source / "model.safetensors"),
            "missing": missing, "unused": list(unexpected)}


def _tied_aliases(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> set[str]:
    """Names ``safetensors.save_model`` left out because they share a tensor with a name the file has."""
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(tensor.data_ptr(), []).append(name)
    return {name for names in by_tensor.values() if any(n in weights for n in names) for name in names
            if name not in weights}


def _load_weights(model: torch.nn.Module, ckpt_dir: Path) -> None:
    """Load a checkpoint's ``model.safetensors`` into ``model`` (same architecture; safetensors only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    try:
        load_model(model, str(ckpt_dir / "model.safetensors"), strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise MMError(f"{ckpt_dir}: checkpoint does not match the model ({str(error).splitlines()[0][:160]}); "
                      "use --force to start over") from None


class _Trainer:
    """The step loop, split from set-up so that each reads on one screen."""

    def __init__(self, cfg: Config, strategy: TrainingStrategy, stream: TrainStream, peak_lr: float,
                 flops: tuple[float, float], run_dir: Path, trackers: TrackerSet | None = None) -> None:
        assert strategy.model is not None and strategy.optimizer is not None, "strategy.setup first"
        self.cfg, self.strategy, self.ctx = cfg, strategy, strategy.ctx
        self.model: MLLM = strategy.model  # type: ignore[assignment]
        self.optimizer = strategy.optimizer
        self.trackers = trackers or TrackerSet({}, run_dir, {})
        self.stream, self.peak_lr, self.run_dir = stream, peak_lr, run_dir
        self.flops_per_row, self.flops_per_image = flops
        ctx, model = self.ctx, self.model
        self.rows = check_batch_shape(cfg, ctx.world_size) * ctx.world_size  # global rows per micro-batch
        self.ignore_ids = tuple({int(model.image_token_id)})
        self.params = [p for p in model.parameters() if p.requires_grad]
        tcfg = cfg.train
        self.checkpoints = set(checkpoint_schedule(tcfg.steps, tcfg.checkpoint_every, tcfg.log_spaced_checkpoints))
        self.log_steps = _log_steps(tcfg.steps, tcfg.log_every)

    def run(self, state: TrainState, show: bool) -> None:
        """Train from ``state.step`` to ``train.steps``, logging and checkpointing on schedule."""
        tcfg = self.cfg.train
        if state.step == 0 and 0 in self.checkpoints:
            self.save(state)

        def after(done: int, lr: float, result: StepResult) -> None:
            state.step = done
            state.tokens_seen += result.tokens
            state.train_flops += self.flops_per_row * tcfg.batch_size + self.flops_per_image * result.images
            state.elapsed_s += result.seconds
            state.window.time_s += result.seconds
            state.window.tokens += result.tokens
            if done in self.log_steps:
                self.log(state, lr, result.grad_norm)
            if done in self.checkpoints:
                self.save(state)

        run_steps(tcfg, self.peak_lr, state.step, lambda lr: self.step(lr, state.window),
                  lambda done, result: self.check_finite(done, result.loss, result.grad_norm), after,
                  label="[bold]pretrain", stats="loss {loss:.4f}  lr {lr:.2e}  {tps:,.0f} tok/s",
                  show=show and self.ctx.is_main,
                  bar_fields=lambda result: {"tps": result.tokens / max(result.seconds, 1e-9)})

    def check_finite(self, step: int, loss: float, grad_norm: float) -> None:
        """Stop the run (MMError naming the step) on a non-finite loss, or grad norm when no fp16 loss scaler is
        expected to skip such steps; nothing of this step is logged or checkpointed."""
        bad = [f"{name} {value}" for name, value in (("loss", loss), ("grad norm", grad_norm))
               if not math.isfinite(value) and (name == "loss" or self.strategy.scaler is None)]
        if bad:
            raise MMError(f"train: non-finite {' and '.join(bad)} at step {step}; training stopped, the last "
                          f"checkpoint is {self._last_saved_name()}; lower train.lr or raise train.warmup_steps")

    def _last_saved_name(self) -> str:
        steps = RunDir(self.run_dir).checkpoint_steps()
        return step_dir_name(steps[-1]) if steps else "none"

    def step(self, lr: float, window: LogWindow) -> StepResult:
        """One optimizer step over the global batch: its mean loss, grad norm, tokens and images."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        batches = [self.stream.next_batch(self.rows, self.ctx.rank, self.ctx.world_size)
                   for _ in range(self.cfg.train.grad_accum)]
        # counts: [label tokens, sequence tokens, images, label tokens per data type...] over ranks/micro-batches
        counts = torch.zeros(3 + len(DATA_TYPES), dtype=torch.float64)
        for batch in batches:
            valid = self._valid_targets(batch["labels"])
            counts[0] += valid.sum()
            counts[1] += batch["attention_mask"].sum()
            counts[2] += 0 if batch.get("images") is None else batch["images"].size(0)
            for row, kind in enumerate(_row_types(batch, valid.size(0))):
                counts[3 + DATA_TYPES.index(kind)] += valid[row].sum()
        all_reduce_sum(counts, self.ctx)
        norm = self.ctx.world_size / max(counts[0].item(), 1.0)  # DDP and FSDP average grads over ranks: undo it
        loss_sums = torch.zeros(1 + len(DATA_TYPES), dtype=torch.float64)
        for index, batch in enumerate(batches):
            with self.strategy.micro_batch(last=index == len(batches) - 1):
                per_token = self._forward(_to_device(batch, self.ctx.device))
                loss = per_token.sum() * norm
                used_images = batch.get("images") is not None and batch["images"].size(0) > 0
                self.strategy.backward(self.strategy.skipped_params_loss(loss, used_images))
            row_sums = per_token.detach().sum(dim=1).double().cpu()
            loss_sums[0] += row_sums.sum()
            for row, kind in enumerate(_row_types(batch, row_sums.size(0))):
                loss_sums[1 + DATA_TYPES.index(kind)] += row_sums[row]
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        grad_norm = self.strategy.optimizer_step(self.params, max_norm)
        all_reduce_sum(loss_sums, self.ctx)
        window.loss_sum += loss_sums[0].item()
        window.label_tokens += counts[0].item()
        for index, kind in enumerate(DATA_TYPES):
            if counts[3 + index] > 0:
                window.type_loss_sum[kind] = window.type_loss_sum.get(kind, 0.0) + loss_sums[1 + index].item()
                window.type_label_tokens[kind] = window.type_label_tokens.get(kind, 0.0) + counts[3 + index].item()
        return StepResult(loss_sums[0].item() / max(counts[0].item(), 1.0), grad_norm, counts[1].item(),
                          counts[2].item())

    def _valid_targets(self, labels: torch.Tensor) -> torch.Tensor:
        targets = labels[:, 1:]
        valid = targets != IGNORE_INDEX
        for token_id in self.ignore_ids:
            valid &= targets != token_id
        return valid

    def _forward(self, batch: dict[str, Any]) -> torch.Tensor:
        with self.strategy.autocast():
            output = self.strategy.train_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                               images=batch.get("images"), labels=None)
        return token_losses(output.logits, batch["labels"], self.ignore_ids)

    def log(self, state: TrainState, lr: float, grad_norm: float) -> None:
        """Append one metrics line for the window that ends at ``state.step`` and reset the window."""
        window = state.window
        if self.ctx.is_main:
            record: dict[str, Any] = {"step": state.step, "loss": window.loss_sum / max(window.label_tokens, 1.0)}
            for kind in DATA_TYPES:
                if window.type_label_tokens.get(kind):
                    record[f"loss/{kind}"] = window.type_loss_sum[kind] / window.type_label_tokens[kind]
            record.update({
                "lr": lr, "grad_norm": grad_norm, "tokens_per_s": window.tokens / max(window.time_s, 1e-9),
                "tokens_seen": state.tokens_seen, "train_flops": state.train_flops, "elapsed_s": state.elapsed_s,
            })
            bad = self.stream.num_bad + self.stream.bad_skipped
            if bad:
                record["bad_skipped"] = bad  # bad samples skipped so far (data.skip_bad)
            RunDir(self.run_dir).append_metrics(record)
            # loss/caption -> train/loss_caption: MLflow's file store cannot hold both loss and loss/caption
            self.trackers.log_metrics({"train/" + k.replace("/", "_"): v for k, v in record.items() if k != "step"},
                                      state.step)
        state.window = LogWindow()

    def save(self, state: TrainState) -> None:
        """Write checkpoint ``step_<N>`` (the strategy writes it atomically, from the ranks it chooses): weights,
        tokenizer, trainer state, checkpoint.json."""
        if not self.strategy.weights_finite():  # same on every rank
            raise MMError(f"train: the weights became non-finite by step {state.step}; training stopped before "
                          f"saving {step_dir_name(state.step)} (the last checkpoint is {self._last_saved_name()}); "
                          "lower train.lr or raise train.warmup_steps")
        directory = RunDir(self.run_dir).checkpoint_dir(state.step)
        extra: dict[str, Any] = {
            "step": state.step, "tokens_seen": state.tokens_seen, "train_flops": state.train_flops,
            "elapsed_s": state.elapsed_s, "window": state.window.to_json(), "data": self.stream.state_dict(),
        }
        self.strategy.save(directory, extra, {"step": state.step, "tokens_seen": state.tokens_seen,
                                              "train_flops": state.train_flops, "wall_time_s": state.elapsed_s})
        if self.ctx.is_main:
            RunDir(self.run_dir).drop_set_aside()  # the new run has a checkpoint: the run it replaces can go
            self.trackers.log_checkpoint(state.step, directory)
