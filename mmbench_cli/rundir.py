"""The run store: atomic writes, lock files, run metadata and status of a run directory.

Layout of ``runs/<name>/`` (see ../shared/DESIGN.md): ``config.yaml``, ``meta.json``, ``metrics.jsonl``,
``checkpoints/step_<N>/``, ``eval/step_<N>.json``, ``status``, ``.lock``.
Every writer of results goes through this module so that a kill -9 never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from mmbench_cli.errors import MMError

STATUSES = ("pending", "running", "done", "failed")
TRACKED_PACKAGES = ("mmbench", "torch", "transformers", "tokenizers", "datasets", "lm_eval", "numpy", "pillow")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same dir, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Atomically write JSON (indented, keys in insertion order)."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temp name and rename it into place when the block succeeds.

    Use for checkpoints: readers never see a half-written ``step_<N>/``. An existing dir is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            trash = path.with_name(f".{path.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a torn last line is skipped by ``read_jsonl``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file, ignoring a torn final line left by a killed writer."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise MMError(f"{path}: line {number} is not valid JSON") from None
    return records


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM
    return True


class RunLock:
    """An exclusive lock file (``<dir>/.lock``) holding the owner's pid and host.

    A second process trying to take it gets an MMError; a lock left by a dead process (kill -9) is reclaimed.
    """

    def __init__(self, directory: str | Path, what: str = "run") -> None:
        self.path = Path(directory) / ".lock"
        self.what = what
        self._held = False

    def acquire(self) -> RunLock:
        """Take the lock or raise MMError naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"])):
                    self.path.unlink(missing_ok=True)
                    continue
                who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
                raise MMError(
                    f"{self.path.parent}: this {self.what} is being written by {who}; "
                    f"wait for it to finish (or delete {self.path} if that process is gone)"
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, handle)
            self._held = True
            return self
        raise MMError(f"{self.path}: could not take the lock")

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def release(self) -> None:
        """Release the lock if this object holds it."""
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The git commit of the mmbench source tree (with ``-dirty`` if modified), or None outside git."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide the numbers."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_metadata(seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What makes a run reproducible: seed, git commit, package versions, host, command line, time."""
    meta = {
        "seed": seed,
        "git_commit": git_commit(),
        "versions": package_versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "command": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta.update(extra or {})
    return meta


def write_status(run_dir: str | Path, status: str) -> None:
    """Record the run's state (pending/running/done/failed) atomically."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    atomic_write_text(Path(run_dir) / "status", status + "\n")


def read_status(run_dir: str | Path) -> str | None:
    """The run's recorded state, or None if it has none yet."""
    path = Path(run_dir) / "status"
    return path.read_text().strip() if path.exists() else None


def cache_root(configured: str | None = None) -> Path:
    """Where rendered images, tokenizers and features are cached.

    ``data.cache_dir`` if set, else ``$MMBENCH_CACHE_DIR``, else ``~/.cache/mmbench``.
    """
    root = configured or os.environ.get("MMBENCH_CACHE_DIR") or Path.home() / ".cache" / "mmbench"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
