"""Where a model runs: ``auto`` picks cuda > mps > cpu; a named device is checked to exist.

Used by training (each torchrun rank picks its GPU by ``LOCAL_RANK``) and by evaluation.
"""

from __future__ import annotations

import torch

from mmbench_cli.errors import MMError


def resolve_device(name: str, local_rank: int = 0, field: str = "train.device") -> torch.device:
    """``auto`` → cuda (this rank's GPU) > mps > cpu; otherwise the named device, checked to exist.

    ``field`` names the option in error messages."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MMError(f"{field}: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise MMError(f"{field}: {name} requested but CUDA is not available here; use auto")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MMError(f"{field}: {name} requested but MPS is not available here; use auto")
    return device


def use_cpu_threads(device: torch.device | str, threads: int) -> None:
    """Fix torch's intra-op thread count on CPU (``train.cpu_threads``), so a run's numbers do not depend on
    how many cores it happened to get: another count reduces floats in another order."""
    if torch.device(device).type == "cpu":
        torch.set_num_threads(threads)
