"""``mm doctor``: what this machine has for ``mm``, one line per check, and whether the main job can run.

Each check is cheap (no model is built, no heavy library is imported except torch, whose version and devices are the
point). A check is ``required`` when the README's main job (``mm ablate --grid resolution,tokens`` then
``mm report``) cannot run without it; extras (Ray, SLURM, trackers, lmms-eval) are reported but optional.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from mmbench_cli import __version__
from mmbench_cli.errors import MMError
from mmbench_cli.rundir import (
    cache_root,
    feature_store_cap_bytes,
    feature_store_dir,
    feature_store_usage,
    git_commit,
)

PINNED_TORCH = "2.13.0"
# extra name -> the modules it brings (found without importing them)
EXTRAS: dict[str, tuple[str, ...]] = {
    "ray": ("ray",),
    "slurm": ("submitit",),
    "tracking": ("tensorboard", "mlflow", "wandb"),
    "lmms": ("lmms_eval",),
}


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report: ``ok`` False on a required check means the main job cannot run."""

    name: str
    ok: bool
    detail: str
    required: bool = True


def version_line() -> str:
    """``mm --version``: the package version, and the git commit when running from a source checkout."""
    commit = git_commit()
    return f"mm (mmbench) {__version__}" + (f" (commit {commit})" if commit else "")


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", ok, f"{sys.version.split()[0]} ({sys.executable})" + ("" if ok else ": needs >= 3.10"))


def check_torch() -> list[Check]:
    """torch's version (pinned), threads, and the accelerators it sees."""
    try:
        import torch
    except ImportError as error:
        return [Check("torch", False, f"not importable ({error}); pip install torch=={PINNED_TORCH}")]
    version = torch.__version__.split("+")[0]
    pinned = version == PINNED_TORCH
    checks = [Check("torch", True, f"{torch.__version__}" + ("" if pinned else f" (mmbench pins {PINNED_TORCH}: "
                                                                           "numbers may differ from the committed ones)")),
              Check("torch threads", True, f"{torch.get_num_threads()} intra-op of {os.cpu_count()} CPU cores", False)]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        checks.append(Check("cuda", True, f"{len(names)} device(s): {', '.join(names)}", False))
    else:
        checks.append(Check("cuda", True, "no CUDA device (CPU runs only)", False))
    mps = getattr(torch.backends, "mps", None)
    checks.append(Check("mps", True, "available" if mps is not None and mps.is_available() else "not available", False))
    return checks


def check_java() -> Check:
    """pycocoevalcap's PTB tokenizer (every caption metric) runs ``java``."""
    java = shutil.which("java")
    if java is None:
        return Check("java", False, "not on PATH: caption metrics (pycocoevalcap) need it; e.g. apt install default-jre")
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as error:
        return Check("java", False, f"{java} does not run: {error}")
    first = (done.stderr or done.stdout).strip().splitlines()
    return Check("java", done.returncode == 0, f"{first[0] if first else 'java'} ({java})")


def check_packages() -> list[Check]:
    """The libraries every run needs (installed with mmbench) and the optional extras."""
    checks = []
    for name in ("transformers", "lm-eval", "pycocoevalcap", "safetensors"):
        try:
            checks.append(Check(name, True, metadata.version(name)))
        except metadata.PackageNotFoundError:
            checks.append(Check(name, False, "not installed: pip install mmbench's dependencies"))
    for extra, modules in EXTRAS.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        detail = "installed" if not missing else f"not installed ({', '.join(missing)}): pip install 'mmbench[{extra}]'"
        checks.append(Check(f"extra: {extra}", not missing, detail, required=False))
    return checks


def check_cache(configured: str | None = None) -> Check:
    """The cache dir (rendered images, tokenizers, pre-trained encoders) must be writable; its size is shown."""
    try:
        root = cache_root(configured)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
            pass
    except (OSError, MMError) as error:
        where = configured or os.environ.get("MMBENCH_CACHE_DIR") or "~/.cache/mmbench"
        return Check("cache dir", False, f"{where} is not writable ({getattr(error, 'strerror', None) or error}); "
                                         "set MMBENCH_CACHE_DIR to a writable directory")
    free = shutil.disk_usage(root).free
    return Check("cache dir", True, f"{root}: {_human(_dir_size(root))} used, {_human(free)} free")


def check_feature_store(configured: str | None = None) -> Check:
    """The frozen-encoder feature store's size on disk and its cap (``$MMBENCH_FEATURE_STORE_MB``; 0: off)."""
    try:
        root, cap = feature_store_dir(configured), feature_store_cap_bytes()
    except (OSError, MMError) as error:
        return Check("feature store", False, f"not usable ({getattr(error, 'strerror', None) or error})",
                     required=False)
    size, shards = feature_store_usage(root)
    state = f"cap {_human(cap)}" if cap else "off (MMBENCH_FEATURE_STORE_MB=0)"
    return Check("feature store", True, f"{root}: {_human(size)} in {shards} shards, {state}; `mm cache clear` "
                                        "empties it", required=False)


def run_checks() -> list[Check]:
    """Every check, in the order they are printed."""
    return [Check("mmbench", True, version_line()), check_python(), *check_torch(), check_java(), *check_packages(),
            check_cache(), check_feature_store()]


def can_run_main_job(checks: list[Check]) -> bool:
    """True when no required check failed."""
    return all(check.ok for check in checks if check.required)


def as_json(checks: list[Check]) -> dict[str, object]:
    """The report as one JSON-able document (``mm doctor --json``)."""
    return {"main_job_can_run": can_run_main_job(checks), "checks": [asdict(check) for check in checks]}
