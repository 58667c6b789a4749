"""Pythia-style checkpoints: the schedule, the on-disk layout, content hashes and pickle-free trainer state.

A checkpoint ``checkpoints/step_<N>/`` holds what ``MLLM.save_pretrained`` writes (``model.safetensors``,
``mm_config.json``, tokenizer files), ``checkpoint.json`` (``step, content_hash, tokens_seen, train_flops,
wall_time_s``) and the trainer state needed to resume exactly:

- ``optimizer.safetensors``: every optimizer state tensor (``state.<param index>.<name>``);
- ``rng.safetensors``: the torch CPU (and CUDA) generator states as uint8 tensors;
- ``trainer_state.json``: scalars — param groups, data-stream position, python/numpy RNG, log accumulators.

Nothing is pickled: a checkpoint from an untrusted source cannot run code when loaded.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmbench_cli.errors import MMError
from mmbench_cli.rundir import atomic_write_json

if TYPE_CHECKING:
    import torch

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_JSON = "checkpoint.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


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


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, as (step, dir) sorted by step.

    Half-written ones cannot appear (they are built under a temp name); a dir without ``checkpoint.json``
    is skipped.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / CHECKPOINT_JSON).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def read_checkpoint_info(ckpt_dir: str | Path) -> dict[str, Any]:
    """The ``checkpoint.json`` of a checkpoint dir (MMError if it is missing or garbled)."""
    path = Path(ckpt_dir) / CHECKPOINT_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MMError(f"{ckpt_dir}: not a checkpoint (no {CHECKPOINT_JSON})") from None
    except json.JSONDecodeError:
        raise MMError(f"{path}: not valid JSON; delete this checkpoint dir") from None


def content_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """A hash of the weights themselves (names, dtypes, shapes, bytes), independent of file metadata.

    Two checkpoints with equal hashes hold identical weights: a duplicated or stale checkpoint.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(_byte_dtype()).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:32]


def _byte_dtype() -> torch.dtype:
    import torch

    return torch.uint8


def file_content_hash(model_file: str | Path) -> str:
    """``content_hash`` of a saved ``model.safetensors`` (to verify a checkpoint on disk)."""
    from safetensors.torch import load_file

    return content_hash(load_file(str(model_file)))


def find_duplicate_checkpoints(run_dir: str | Path) -> list[list[int]]:
    """Groups of checkpoint steps whose recorded content hashes are equal (each group has ≥ 2 steps)."""
    by_hash: dict[str, list[int]] = {}
    for step, path in list_checkpoints(run_dir):
        by_hash.setdefault(read_checkpoint_info(path).get("content_hash", ""), []).append(step)
    return [steps for digest, steps in by_hash.items() if digest and len(steps) > 1]


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

    directory = Path(directory)
    opt_tensors, opt_scalars = optimizer_to_tensors(optimizer)
    save_file(opt_tensors, str(directory / OPTIMIZER_FILE))
    save_file(rng_state_tensors(), str(directory / RNG_FILE))
    atomic_write_json(
        directory / TRAINER_STATE_FILE, {"optimizer": opt_scalars, "rng": python_rng_state(), **extra}
    )


def load_trainer_state(directory: str | Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore optimizer and RNGs from ``directory``; return the JSON state (with the ``extra`` keys)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    missing = [name for name in (OPTIMIZER_FILE, RNG_FILE, TRAINER_STATE_FILE) if not (directory / name).is_file()]
    if missing:
        raise MMError(f"{directory}: checkpoint has no trainer state ({', '.join(missing)}); cannot resume from it")
    state = json.loads((directory / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    optimizer_from_tensors(optimizer, load_file(str(directory / OPTIMIZER_FILE)), state["optimizer"])
    restore_rng(load_file(str(directory / RNG_FILE)), state["rng"])
    return state
