"""Pythia-style checkpoints: the schedule and the pickle-free trainer state (layout and content hash: rundir.py).

A checkpoint ``checkpoints/step_<N>/`` holds what ``MLLM.save_pretrained`` writes (``model.safetensors``,
``mm_config.json``, tokenizer files), ``checkpoint.json`` (``step, content_hash, tokens_seen, train_flops,
wall_time_s``) and the trainer state needed to resume exactly:

- ``optimizer.safetensors``: every optimizer state tensor (``state.<param index>.<name>``); under
  ``train.strategy=fsdp`` instead ``optimizer/``, each rank's shard written with ``torch.distributed.checkpoint``
  (whose small ``.metadata`` index is a pickle: load such checkpoints only from sources you trust);
- ``rng.safetensors``: the torch CPU (and CUDA) generator states as uint8 tensors;
- ``trainer_state.json``: scalars — param groups, data-stream position, python/numpy RNG, log accumulators.

Nothing is pickled: a checkpoint from an untrusted source cannot run code when loaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError
from mmbench_cli.rundir import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    OPTIMIZER_SHARDS_DIR,
    RNG_FILE,
    TRAINER_STATE_FILE,
    Checkpoint,
    atomic_write_json,
    read_json_file,
)

if TYPE_CHECKING:
    import torch


def checkpoint_schedule(steps: int, every: int, log_spaced: bool = True) -> list[int]:
    """The steps at which to save, as Pythia: 0, 1, 2, 4, ... (powers of two below ``every``), then every
    ``every`` steps, and always the final step.

    >>> checkpoint_schedule(300, 100)
    [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300]
    """
    if steps < 0 or every <= 0:
        raise ValueError("steps must be >= 0 and every > 0")
    schedule = {0, steps}
    if log_spaced:
        power = 1
        while power < every and power <= steps:
            schedule.add(power)
            power *= 2
    schedule.update(range(every, steps + 1, every))
    return sorted(schedule)


# --------------------------------------------------------------------------------------------- trainer state


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into a flat tensor dict (for safetensors) and JSON-able scalars."""
    import torch

    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, param_state in state["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalar_state": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict[str, Any]
) -> None:
    """Load what ``optimizer_to_tensors`` produced back into ``optimizer`` (tensors move to the params' device)."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for key, value in scalars.get("scalar_state", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def rng_state_tensors() -> dict[str, torch.Tensor]:
    """The torch CPU and (if present) CUDA generator states as uint8 tensors."""
    import torch

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, rng_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = rng_state
    return tensors


def python_rng_state() -> dict[str, Any]:
    """The python and numpy RNG states as JSON-able data."""
    import numpy as np

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def restore_rng(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    """Restore every RNG saved by ``rng_state_tensors`` and ``python_rng_state``."""
    import numpy as np
    import torch

    torch.set_rng_state(tensors["torch_cpu"])
    cuda_states = [tensors[key] for key in sorted(tensors) if key.startswith("torch_cuda_")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    if "python" in scalars:
        version, internal, gauss = scalars["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in scalars:
        name, keys, pos, has_gauss, cached = scalars["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_trainer_state(
    directory: str | Path, optimizer: torch.optim.Optimizer, extra: dict[str, Any]
) -> None:
    """Write optimizer, RNG and ``extra`` (data position, counters — JSON-able) into ``directory``."""
    from safetensors.torch import save_file

    opt_tensors, opt_scalars = optimizer_to_tensors(optimizer)
    save_file(opt_tensors, str(Path(directory) / OPTIMIZER_FILE))
    save_rng_and_counters(directory, opt_scalars, extra)


def save_rng_and_counters(directory: str | Path, optimizer_scalars: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write the RNG states and ``trainer_state.json`` (the optimizer's JSON part, RNGs, ``extra``): the trainer
    state besides the optimizer tensors, which each strategy writes in its own format."""
    from safetensors.torch import save_file

    directory = Path(directory)
    save_file(rng_state_tensors(), str(directory / RNG_FILE))
    atomic_write_json(
        directory / TRAINER_STATE_FILE, {"optimizer": optimizer_scalars, "rng": python_rng_state(), **extra}
    )


TRAINER_STATE_KEYS = ("optimizer", "rng", "step", "tokens_seen", "train_flops", "elapsed_s", "window", "data")


def trainer_state_problem(directory: str | Path) -> str | None:
    """Why training cannot resume from the checkpoint in ``directory`` (a missing, garbled or non-safetensors
    file of its trainer state or weights), or None if its files look whole. Reads the safetensors headers only."""
    from safetensors import safe_open

    directory = Path(directory)
    sharded = (directory / OPTIMIZER_SHARDS_DIR).is_dir()
    missing = [name for name in ((RNG_FILE, TRAINER_STATE_FILE, MODEL_FILE) if sharded else
                                 (OPTIMIZER_FILE, RNG_FILE, TRAINER_STATE_FILE, MODEL_FILE))
               if not (directory / name).is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    try:
        state = read_json_file(directory / TRAINER_STATE_FILE, TRAINER_STATE_FILE)
    except MMError:
        return f"{TRAINER_STATE_FILE} is not valid JSON"
    absent = [key for key in TRAINER_STATE_KEYS if not isinstance(state, dict) or key not in state]
    if absent:
        return f"{TRAINER_STATE_FILE} lacks {', '.join(absent[:3])}"
    for name in (RNG_FILE, MODEL_FILE) if sharded else (OPTIMIZER_FILE, RNG_FILE, MODEL_FILE):
        try:
            with safe_open(str(directory / name), framework="pt"):
                pass
        except Exception:  # noqa: BLE001 - SafetensorError, OSError, ...: any failure means unusable
            return f"{name} is not a safetensors file"
    return None


def resume_point(checkpoints: list[Checkpoint], max_step: int) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint at or below ``max_step`` that training can resume from, and a note for each newer
    one skipped because its trainer state is damaged (checkpoints without trainer state are never resume points)."""
    notes = []
    for checkpoint in sorted(checkpoints, key=lambda c: c.step, reverse=True):
        if checkpoint.step > max_step or not checkpoint.has_trainer_state:
            continue
        problem = trainer_state_problem(checkpoint.path)
        if problem is None:
            return checkpoint, notes
        notes.append(f"{checkpoint.path}: damaged checkpoint ({problem}); not resuming from it")
    return None, notes


def load_trainer_state(directory: str | Path, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore optimizer (unless None: a strategy that keeps it elsewhere loads it) and RNGs from ``directory``;
    return the JSON state (with the ``extra`` keys).

    MMError naming the checkpoint if its trainer state is missing, damaged or does not fit the optimizer.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    needed = (RNG_FILE, TRAINER_STATE_FILE) if optimizer is None else (OPTIMIZER_FILE, RNG_FILE, TRAINER_STATE_FILE)
    missing = [name for name in needed if not (directory / name).is_file()]
    if missing:
        raise MMError(f"{directory}: checkpoint has no trainer state ({', '.join(missing)}); cannot resume from it")
    try:
        state = json.loads((directory / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        if optimizer is not None:
            optimizer_from_tensors(optimizer, load_file(str(directory / OPTIMIZER_FILE)), state["optimizer"])
        restore_rng(load_file(str(directory / RNG_FILE)), state["rng"])
    except Exception as error:  # noqa: BLE001 - garbled JSON, not safetensors, wrong shapes: one message
        raise damaged_state(directory, error) from None
    return state


def damaged_state(directory: Path, error: Exception) -> MMError:
    """The one-line error for a checkpoint whose trainer state cannot be loaded."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
    return MMError(f"{directory}: damaged trainer state ({type(error).__name__}: {first}); "
                   "delete this checkpoint dir to resume from an earlier one, or use --force to start over")
