"""Training strategies (``train.strategy``): one class per way to train, as prismatic-vlms' ``training/strategies``.

A strategy owns what differs between one process, DDP and FSDP: wrapping the model, building the optimizer after
the wrap, gradient accumulation (``no_sync``), clipping, mixed precision, checkpoint save/load (weights,
optimizer, RNG, the caller's counters and data position) and which rank writes. The step loops (``loop.py`` for the
MLLM, ``encoder_pretrain.py`` for the encoder) call a strategy and never ask which one it is.

- ``single``: one process, one device.
- ``ddp``: ``DistributedDataParallel`` under torchrun; replicated weights and optimizer, gradients all-reduced on
  the last micro-batch; rank 0 writes.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) under torchrun: every LM block is its own unit, the rest
  (embeddings, head, connector, a trained encoder, fusion blocks) the root unit, a frozen encoder replicated; weights,
  gradients and AdamW state are sharded over the ranks; bf16 parameters with fp32 reductions on CUDA. A checkpoint
  holds a consolidated ``model.safetensors`` (what ``load_model`` and a single process read) and the sharded
  optimizer state (``optimizer/``, written by ``torch.distributed.checkpoint``).
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmbench_cli.errors import MMError
from mmbench_cli.registry import STRATEGIES
from mmbench_cli.rundir import CHECKPOINT_JSON, MODEL_FILE, OPTIMIZER_SHARDS_DIR, atomic_dir, atomic_write_json, file_content_hash
from mmbench_cli.train.checkpoints import damaged_state, load_trainer_state, save_rng_and_counters, save_trainer_state
from mmbench_cli.train.distributed import DistContext, all_reduce_sum, barrier, broadcast_from_main

if TYPE_CHECKING:
    from mmbench_cli.config import TrainConfig

def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 (else fp16) on CUDA for ``auto``; None (fp32) elsewhere.

    Low-precision autocast is refused off CUDA: on CPUs without bf16 matmul units it is hundreds of times slower.
    """
    if precision == "fp32":
        return None
    if device.type != "cuda":
        if precision == "auto":
            return None
        raise MMError(
            f"train.precision: {precision} autocast is only used on CUDA (on {device.type} it is far slower "
            "than fp32); use train.precision=auto or fp32"
        )
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every rank the same: identical initial weights)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device,
                    encoder_lr_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW with decay on matrices only (biases, norms and 1-d gains are not decayed), as nanoGPT.

    With ``encoder_lr_scale`` != 1 the image encoder's parameters get their own groups, whose learning rate is
    the schedule's times that scale (``lr_scale`` in the group; the step loop applies it)."""
    encoder = getattr(model, "encoder", None)
    in_encoder = {id(p) for p in encoder.parameters()} if encoder is not None and encoder_lr_scale != 1.0 else set()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = []
    parts = [(1.0, [p for p in params if id(p) not in in_encoder])]  # the two groups every run has
    if in_encoder:
        parts.append((encoder_lr_scale, [p for p in params if id(p) in in_encoder]))
    for number, (scale, members) in enumerate(parts):
        for decay, chosen in ((weight_decay, [p for p in members if p.dim() >= 2]),
                              (0.0, [p for p in members if p.dim() < 2])):
            if chosen or number == 0:
                groups.append({"params": chosen, "weight_decay": decay, "lr_scale": scale})
    # The fused kernel (CUDA and CPU) is ~10x faster than the per-tensor loop on this toy model's many small tensors.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused or None)


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute the LM blocks' activations in backward (transformers' non-reentrant gradient checkpointing)."""
    lm = getattr(model, "lm", model)
    if not getattr(lm, "supports_gradient_checkpointing", False):
        raise MMError(f"train.activation_checkpointing: {type(lm).__name__} does not support it; set it to false")
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def lm_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The LM's transformer blocks: the modules whose class the transformers model names in ``_no_split_modules``
    (the unit that must stay whole on one device: ``GPTNeoXLayer``, ``LlamaDecoderLayer``...)."""
    lm = getattr(model, "lm", model)
    names = set(getattr(lm, "_no_split_modules", None) or ())
    return [module for module in lm.modules() if type(module).__name__ in names]


class TrainingStrategy:
    """One process on one device (``single``); the base the distributed strategies change in parts.

    ``setup`` moves the model, wraps it and builds the optimizer; ``micro_batch`` (accumulation), ``autocast``,
    ``backward`` and ``optimizer_step`` run a step; ``save``/``load`` write and read a checkpoint's weights and
    trainer state. Only ``writes`` ranks write files.
    """

    name = "single"

    def __init__(self, ctx: DistContext, tcfg: TrainConfig) -> None:
        self.ctx, self.tcfg = ctx, tcfg
        self.autocast_dtype = resolve_precision(tcfg.precision, ctx.device)
        self.model: torch.nn.Module | None = None  # the model as built (its parameters: what the loop clips/counts)
        self.train_model: torch.nn.Module | None = None  # the model as wrapped (what the forward pass calls)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None

    # ---- set-up -----------------------------------------------------------------------------------------
    @property
    def writes(self) -> bool:
        """Whether this rank writes the run's files (rank 0)."""
        return self.ctx.is_main

    @property
    def precision_name(self) -> str:
        """The compute dtype, for meta.json (``float32``, ``bfloat16``...)."""
        return str(self.autocast_dtype or torch.float32).removeprefix("torch.")

    def run_meta(self) -> dict[str, Any]:
        """How the run was trained, for its meta.json: the strategy (and what only it has)."""
        return {"strategy": self.name}

    def setup(self, model: torch.nn.Module, lr: float, weight_decay: float, encoder_lr_scale: float = 1.0) -> None:
        """Move ``model`` to this rank's device, wrap it, then build AdamW over the wrapped parameters."""
        model.to(self.ctx.device)
        model.train()
        if self.tcfg.activation_checkpointing:
            enable_activation_checkpointing(model)
        self.model = model
        self.train_model = self.wrap(model)
        self.optimizer = build_optimizer(self.model, lr, weight_decay, self.ctx.device, encoder_lr_scale)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype == torch.float16 else None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the forward pass calls (``model`` itself on one process)."""
        return model

    # ---- one step ---------------------------------------------------------------------------------------
    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Context for one micro-batch's forward and backward; gradients are synchronised on the ``last``."""
        return contextlib.nullcontext()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision context of the forward pass (none in fp32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)

    def skipped_params_loss(self, loss: torch.Tensor, used_images: bool) -> torch.Tensor:
        """``loss``, tied to the parameters this micro-batch did not use where the strategy needs every rank to
        produce the same gradients (FSDP); unchanged elsewhere."""
        return loss

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of ``loss`` (scaled when an fp16 loss scaler is in use)."""
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def clip(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """Clip the gradients' global norm to ``max_norm``; return the norm before clipping."""
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def optimizer_step(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """Unscale, clip to ``max_norm``, step and zero the gradients; return the gradient norm before clipping."""
        assert self.optimizer is not None
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = self.clip(params, max_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def weights_finite(self) -> bool:
        """Whether every weight is finite (the same answer on every rank)."""
        assert self.model is not None
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    # ---- checkpoints ------------------------------------------------------------------------------------
    def save(self, directory: Path, extra: dict[str, Any], summary: dict[str, Any]) -> None:
        """Write checkpoint ``directory`` atomically (every rank calls; ``writes`` ranks write): the weights as
        ``save_pretrained`` writes them, the trainer state (optimizer, RNGs, ``extra``) and ``checkpoint.json``
        (``summary`` plus the weights' content hash)."""
        if not self.writes:
            return
        assert self.model is not None and self.optimizer is not None
        with atomic_dir(directory) as tmp:
            self.model.save_pretrained(tmp)
            save_trainer_state(tmp, self.optimizer, {**extra, "grad_scaler": self._scaler_state()})
            _write_checkpoint_json(tmp, summary)

    def load(self, directory: Path) -> dict[str, Any]:
        """Restore optimizer, loss scaler and RNGs from checkpoint ``directory``; return its JSON trainer state.
        (The weights were loaded into the model before ``setup``: ``load_weights``.)"""
        saved = load_trainer_state(directory, self.optimizer)
        if self.scaler is not None and saved.get("grad_scaler"):
            self.scaler.load_state_dict(saved["grad_scaler"])
        return saved

    def _scaler_state(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler else None


@STRATEGIES.register("single")
class SingleStrategy(TrainingStrategy):
    """One process, one device."""


@STRATEGIES.register("ddp")
class DDPStrategy(TrainingStrategy):
    """``DistributedDataParallel``: replicated weights and optimizer; gradients all-reduced (averaged) once per step,
    on the last micro-batch. On one rank it is the single-process strategy."""

    name = "ddp"

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around ``model`` when there is more than one rank."""
        if not self.ctx.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # Text-only rows skip the encoder, so some parameters get no gradient on some ranks.
        return DistributedDataParallel(model, device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda"
                                       else None, find_unused_parameters=True)

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """``no_sync`` on every micro-batch but the last: one all-reduce per optimizer step."""
        if last or not self.ctx.distributed:
            return contextlib.nullcontext()
        assert self.train_model is not None
        return self.train_model.no_sync()


@STRATEGIES.register("fsdp")
class FSDPStrategy(TrainingStrategy):
    """FSDP2 (``fully_shard``): each LM block one unit, the rest of the model the root unit.

    The encoder and connector stay in the root unit: a rank whose micro-batch is text-only skips them, and FSDP
    needs every rank to gather the same units in the same order (a per-block encoder unit would hang there).
    Gradients are averaged over ranks as DDP's are, so the loop's loss normalisation is the same.
    """

    name = "fsdp"

    def __init__(self, ctx: DistContext, tcfg: TrainConfig) -> None:
        super().__init__(ctx, tcfg)
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise MMError("train.strategy: fsdp runs under torchrun (torchrun --nproc_per_node N -m mmbench_cli.cli "
                          "pretrain ...); use single or ddp in one process")
        if self.autocast_dtype == torch.float16:
            raise MMError("train.precision: fp16 is not supported with train.strategy=fsdp; use bf16 or fp32")
        # bf16 weights in forward/backward with fp32 gradient reductions (FSDP's casts); autocast stays on for what
        # FSDP does not hold (a frozen encoder) and for the loss.
        self.param_dtype = self.autocast_dtype
        self._kept_names: set[str] = set()

    def run_meta(self) -> dict[str, Any]:
        return {**super().run_meta(), "fsdp_sharding": self.tcfg.fsdp_sharding}

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``fully_shard`` each LM block, then the whole model (the root unit). A frozen encoder is left out: it has no
        gradients or optimizer state to shard, every rank keeps it whole, and it runs only where a rank has images
        (its frozen features can then come from the feature store)."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self._kept_names = _unique_state_names(model)
        policy = (MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=torch.float32)
                  if self.param_dtype is not None else MixedPrecisionPolicy())
        reshard = self.tcfg.fsdp_sharding == "full"
        encoder = getattr(model, "encoder", None)
        frozen = ({p for p in encoder.parameters()} if encoder is not None
                  and not any(p.requires_grad for p in encoder.parameters()) else None)
        for block in lm_blocks(model):
            fully_shard(block, mp_policy=policy, reshard_after_forward=reshard)
        # The root unit stays gathered from forward to backward (FSDP's own default for a root): the step's backward
        # needs it at once, and skipped_params_loss reads its parameters after the forward.
        fully_shard(model, mp_policy=policy, reshard_after_forward=False, ignored_params=frozen)
        return model

    def skipped_params_loss(self, loss: torch.Tensor, used_images: bool) -> torch.Tensor:
        """On a micro-batch without images, add 0 x the image path's parameters (encoder, connector, fusion blocks:
        the root unit's, still gathered after the forward) so that this rank reduces a (zero) gradient for each of
        them like the ranks that used them."""
        if used_images:
            return loss
        assert self.model is not None
        skipped = [p for name in ("encoder", "connector", "fusion") if hasattr(self.model, name)
                   for p in getattr(self.model, name).parameters() if p.requires_grad]
        return loss + sum((0.0 * p.sum() for p in skipped), torch.zeros((), device=loss.device))

    def clip(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        """The global norm over the sharded gradients (a DTensor reduced over ranks), clipped."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def weights_finite(self) -> bool:
        """Every rank checks its shards; the verdict is agreed over ranks."""
        assert self.model is not None
        bad = torch.tensor([0.0], dtype=torch.float64)
        for p in self.model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            if not bool(torch.isfinite(local).all()):
                bad += 1
        return all_reduce_sum(bad, self.ctx).item() == 0

    def save(self, directory: Path, extra: dict[str, Any], summary: dict[str, Any]) -> None:
        """Gather the full weights to rank 0 (CPU), write the optimizer shards with torch.distributed.checkpoint
        (every rank), and let rank 0 write the rest and rename the dir into place."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        assert self.model is not None and self.optimizer is not None
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # Before the first step AdamW has no state, and get_optimizer_state_dict would make some (a zero step that
        # counts: the next step's bias correction would differ). Nothing to save then.
        empty = not self.optimizer.state
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_dir(directory)) if self.writes else None
            tmp = Path(broadcast_from_main(tmp, self.ctx))
            if empty:
                (tmp / OPTIMIZER_SHARDS_DIR).mkdir(exist_ok=True)
            else:
                sharded = get_optimizer_state_dict(self.model, self.optimizer)
                dcp.save({"optimizer": sharded}, checkpoint_id=str(tmp / OPTIMIZER_SHARDS_DIR))
            barrier(self.ctx)
            if self.writes:
                weights = {name: tensor for name, tensor in full.items() if name in self._kept_names}
                self.model.save_pretrained(tmp, weights=weights)
                save_rng_and_counters(tmp, {"format": "torch.distributed.checkpoint", "dir": OPTIMIZER_SHARDS_DIR,
                                            "empty": empty}, {**extra, "grad_scaler": None})
                _write_checkpoint_json(tmp, summary)
        barrier(self.ctx)

    def load(self, directory: Path) -> dict[str, Any]:
        """Restore the optimizer shards (each rank its own) and the RNGs."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        assert self.model is not None and self.optimizer is not None
        shards = Path(directory) / OPTIMIZER_SHARDS_DIR
        if not shards.is_dir():
            raise MMError(f"{directory}: checkpoint has no sharded optimizer state ({OPTIMIZER_SHARDS_DIR}/), so it "
                          "was not written by train.strategy=fsdp; resume with the strategy that wrote it")
        saved = load_trainer_state(directory, None)
        if saved.get("optimizer", {}).get("empty"):
            return saved  # saved before the first step: the fresh optimizer is that state
        try:
            state = get_optimizer_state_dict(self.model, self.optimizer)
            dcp.load({"optimizer": state}, checkpoint_id=str(shards))
            set_optimizer_state_dict(self.model, self.optimizer, state)
        except Exception as error:  # noqa: BLE001 - missing/garbled shards, another world size: one message
            raise damaged_state(Path(directory), error) from None
        return saved


def _unique_state_names(model: torch.nn.Module) -> set[str]:
    """The state-dict names ``safetensors.save_model`` writes: of names sharing one tensor (tied weights), the
    first in sorted order, so a consolidated checkpoint has the keys a single-process one has."""
    groups: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(name)
    return {sorted(names)[0] for names in groups.values()}


def _write_checkpoint_json(directory: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(directory / CHECKPOINT_JSON,
                      {"step": summary["step"], "content_hash": file_content_hash(directory / MODEL_FILE),
                       **{key: value for key, value in summary.items() if key != "step"}})


def strategy_name(tcfg: TrainConfig, ctx: DistContext) -> str:
    """``train.strategy`` resolved: auto is ddp under torchrun with more than one rank, else single."""
    if tcfg.strategy == "auto":
        return "ddp" if ctx.distributed else "single"
    if tcfg.strategy == "single" and ctx.distributed:
        raise MMError(f"train.strategy: single runs one process, but torchrun started {ctx.world_size}; "
                      "use ddp or fsdp (or auto)")
    return tcfg.strategy


def needs_process_group(tcfg: TrainConfig) -> bool:
    """Whether ``train.strategy`` needs a process group even in one process (FSDP's collectives do)."""
    return tcfg.strategy == FSDPStrategy.name


def build_strategy(tcfg: TrainConfig, ctx: DistContext) -> TrainingStrategy:
    """The strategy ``train.strategy`` names, for this rank."""
    return STRATEGIES.get(strategy_name(tcfg, ctx))(ctx, tcfg)

