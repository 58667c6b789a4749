"""The run directory, the one contract between train, eval, ablate and report: its layout, typed readers
and writers, the results schema, locks and atomic writes.

Layout of ``runs/<name>/`` (docs/architecture.md)::

    config.yaml  meta.json  metrics.jsonl  status  .lock
    checkpoints/step_<N>/   model.safetensors, mm_config.json, tokenizer, checkpoint.json, trainer state
    eval/step_<N>.json      results (``EvalResult``), one per evaluated checkpoint
    eval/samples/step_<N>/<task>.<k>shot.seed<S>.jsonl   per-query predictions and scores

Train, eval, ablate and report reach a run dir only through this module (``RunDir``), so the layout is
written down once. Every writer goes through the atomic helpers, so a kill -9 never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from mmbench_cli.errors import MMError
from mmbench_cli.families import FAMILIES, guess_family

if TYPE_CHECKING:
    import torch

STATUSES = ("pending", "running", "done", "failed")
TRACKED_PACKAGES = ("mmbench", "torch", "transformers", "tokenizers", "datasets", "lm_eval", "numpy", "pillow")


# A CLIP encoder whose held-out retrieval (``encoder_eval.json``) is under this multiple of chance did not learn:
# working ones here score 35-75x chance, collapsed ones (a flat loss at ln(batch size)) 1-2x. Judged only over at
# least NEAR_CHANCE_MIN_PAIRS pairs (with fewer, 4x chance is more than a working encoder may reach).
NEAR_CHANCE_FACTOR = 4.0
NEAR_CHANCE_MIN_PAIRS = 64


def retrieval_near_chance(scores: Mapping[str, Any]) -> bool:
    """Whether an ``encoder_eval.json``'s CLIP retrieval top-1 is within ``NEAR_CHANCE_FACTOR`` × chance over at
    least ``NEAR_CHANCE_MIN_PAIRS`` held-out pairs (the encoder did not learn); False for MAE scores, which have no
    chance level, and for fewer pairs."""
    top1, chance = scores.get("val_retrieval_top1"), scores.get("val_retrieval_chance")
    if not (is_number(top1) and is_number(chance)) or not chance or 1 / float(chance) < NEAR_CHANCE_MIN_PAIRS:  # type: ignore[arg-type]
        return False
    return float(top1) < NEAR_CHANCE_FACTOR * float(chance)  # type: ignore[arg-type]


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
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.filename is None:  # a failed write names no file: name it
            raise OSError(error.errno, error.strerror, str(path)) from error
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


GZ_SUFFIX = ".gz"


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file; MMError naming anything else there (a FIFO would block the read forever, a
    device never end). FileNotFoundError if nothing is there."""
    if path.exists() and not path.is_file():
        raise MMError(f"{path}: not a regular file (a pipe, socket or device); mmbench reads only files it wrote")
    return path.read_bytes()


def stored_file(path: Path) -> Path | None:
    """``path`` if it exists, else its gzip-compressed copy ``<path>.gz`` if that exists (a published study
    compresses its per-sample files, ``gzip -n``), else None."""
    if path.exists():
        return path
    zipped = path.with_name(path.name + GZ_SUFFIX)
    return zipped if zipped.is_file() else None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file of objects (or its ``.gz`` copy, when only that exists), ignoring a torn final line left
    by a killed writer.

    Anything else that is not one JSON object per line (bad JSON, non-UTF-8 bytes, an array or a number) is a
    one-line MMError naming the file and the line; blank lines are skipped.
    """
    path = stored_file(Path(path))
    if path is None:
        return []
    try:
        data = read_regular(path)
        lines = (gzip.decompress(data) if path.name.endswith(GZ_SUFFIX) else data).splitlines()
    except (OSError, EOFError) as error:
        raise MMError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines)
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            if last:
                break
            raise MMError(f"{path}: line {number} is not UTF-8 text; delete or fix that line") from None
        except (json.JSONDecodeError, RecursionError):
            if last:
                break
            raise MMError(f"{path}: line {number} is not valid JSON; delete or fix that line") from None
        if not isinstance(record, dict):
            raise MMError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}; "
                          "delete or fix that line")
        records.append(record)
    return records


# ------------------------------------------------------------------------------- never overwrite what you did not write
def what_is_at(path: str | Path) -> str | None:
    """What ``path`` holds, in words ("a run directory", "a checkpoint", "a results file", ...), for the overwrite
    guard; None when there is nothing to lose there (no such path, an empty file or an empty directory)."""
    path = Path(path)
    if not os.path.lexists(path):
        return None
    if path.is_symlink() and not path.exists():
        return "a broken symbolic link"
    if path.is_dir():
        if not any(path.iterdir()):
            return None
        if RunDir(path).is_run_dir():
            return "a run directory"
        if (path / GRID_FILE).is_file():
            return "a grid directory"
        if (path / CHECKPOINT_JSON).is_file() or (path.parent.name == CHECKPOINTS_DIR and step_of_dir(path.name) is not None):
            return "a run's checkpoint"
        if (path / MODEL_FILE).is_file():
            return "a saved model"
        if (path / "index.html").is_file() and (path / "report.md").is_file():
            return "a report"
        return "a directory of other files"
    if not path.is_file():
        return "not a regular file (a pipe, socket or device)"
    if path.stat().st_size == 0:
        return None
    if path.parent.name == EVAL_DIR and step_of_results_file(path.name) is not None:
        return "a run's results file"
    if path.name == CONFIG_FILE and RunDir(path.parent).is_run_dir():
        return "a run's config"
    if path.parent.name == CHECKPOINTS_DIR or path.parent.parent.name == CHECKPOINTS_DIR:
        return "a file of a run's checkpoint"
    return "a file"


def refuse_overwrite(path: str | Path, option: str, ours: Callable[[Path], bool] | None = None) -> None:
    """The one guard of "never overwrite what you did not write": MMError (exit 2, touching nothing) if ``path``
    holds anything (``what_is_at``) that ``ours`` does not recognise as this writer's own earlier output.

    Every command that writes to a path the user names calls it before doing any work (``--force`` semantics, where
    a command has them, are the command's own: ``mm pretrain --force`` sets the old run aside and restores it).
    """
    path = Path(path)
    found = what_is_at(path)
    if found is None or (ours is not None and ours(path)):
        return
    raise MMError(f"{option} {path}: already holds {found} that this command did not write; mm never overwrites "
                  "what it did not write: choose another path (or delete it yourself)")


def json_object_at(path: Path, limit_bytes: int = 64 * 2**20) -> dict[str, Any] | None:
    """The JSON object in a regular file of at most ``limit_bytes`` (None for anything else, never an error): how
    a writer recognises a file it wrote before (``refuse_overwrite``'s ``ours``)."""
    try:
        if not path.is_file() or path.stat().st_size > limit_bytes:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM
    return True


class RunLock:
    """An exclusive lock file (``<dir>/.lock``) holding the owner's pid and host.

    A second process trying to take it gets an MMError. A lock left by a dead process on this host (kill -9) is
    reclaimed; so is an empty or garbled one (with a warning on stderr), since no live writer leaves one: the lock
    file is created with its content in one step.
    """

    # An unreadable lock younger than this may be one being created by an older mmbench (create, then write).
    UNREADABLE_GRACE_S = 2.0

    def __init__(self, directory: str | Path, what: str = "run") -> None:
        self.path = Path(directory) / ".lock"
        self.what = what
        self._held = False

    def acquire(self) -> RunLock:
        """Take the lock or raise MMError naming the holder (or saying why it cannot be written)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._acquire()
        except OSError as error:
            if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
                raise
            raise MMError(f"{self.path.parent}: cannot take the {self.what} lock ({error.strerror}); this {self.what} "
                          "needs a writable directory: copy the run somewhere writable") from None

    def _acquire(self) -> RunLock:
        for _ in range(3):
            if self._create():
                self._held = True
                return self
            holder, problem = self._holder()
            if problem is not None:
                self._reclaim(f"warning: {self.path}: {problem}; reclaimed it")
                continue
            if holder is None:  # released meanwhile: try again
                continue
            if holder["host"] == socket.gethostname() and not _pid_alive(holder["pid"]):
                self._reclaim(None)
                continue
            raise MMError(
                f"{self.path.parent}: this {self.what} is being written by pid {holder['pid']} on {holder['host']}; "
                f"wait for it to finish (or delete {self.path} if that process is gone)"
            )
        raise MMError(f"{self.path}: could not take the lock; delete it if no mmbench process is running")

    def _create(self) -> bool:
        """Create the lock file with its content in one step (a hard link of a written temp file); False if taken."""
        content = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        fd, tmp = tempfile.mkstemp(prefix=".lock.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, self.path)
                return True
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: exclusive create, then write
                try:
                    lock_fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(lock_fd, "wb") as handle:
                    handle.write(content)
                return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _holder(self) -> tuple[dict[str, Any] | None, str | None]:
        """(holder, None) for a readable lock, (None, problem) for an unreadable one, (None, None) if it vanished."""
        deadline = time.monotonic() + self.UNREADABLE_GRACE_S
        while True:
            try:
                raw = read_regular(self.path)
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return None, None
            except OSError as error:
                raise MMError(f"{self.path}: cannot read the lock file ({error.strerror})") from None
            problem = _lock_problem(raw)
            if problem is None:
                data = json.loads(raw)
                return {"pid": data["pid"], "host": data["host"]}, None
            if age >= self.UNREADABLE_GRACE_S or time.monotonic() >= deadline:
                return None, problem
            time.sleep(0.1)

    def _reclaim(self, warning: str | None) -> None:
        if warning:
            print(warning, file=sys.stderr)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Release the lock if this object holds it."""
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_problem(raw: bytes) -> str | None:
    """Why a lock file's bytes are not a lock ({"pid": int, "host": str}), or None if they are one."""
    if not raw.strip():
        return "empty lock file"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "garbled lock file (not JSON)"
    if (not isinstance(data, dict) or isinstance(data.get("pid"), bool) or not isinstance(data.get("pid"), int)
            or data["pid"] <= 0 or not isinstance(data.get("host"), str)):
        return "garbled lock file (no pid and host)"
    return None


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The git commit of the mmbench source tree (with ``-dirty`` if modified), or None outside git.

    An installed package (site-packages) is not a source tree, even inside someone else's git repository (a project's
    .venv): the repository must be the one the package's own folder sits at the top of."""
    source = Path(__file__).resolve().parents[1]
    cwd = Path(cwd) if cwd else source
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        if cwd == source and Path(top).resolve() != source:
            return None
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
    return read_regular(path).decode("utf-8", errors="replace").strip() if path.exists() else None


def cache_root(configured: str | None = None) -> Path:
    """Where rendered images, tokenizers and features are cached.

    ``data.cache_dir`` if set, else ``$MMBENCH_CACHE_DIR``, else ``~/.cache/mmbench``.
    """
    source = "data.cache_dir" if configured else "$MMBENCH_CACHE_DIR" if os.environ.get("MMBENCH_CACHE_DIR") else None
    root = configured or os.environ.get("MMBENCH_CACHE_DIR") or Path.home() / ".cache" / "mmbench"
    path = Path(root).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    except OSError as error:
        what = error.strerror if not isinstance(error, FileExistsError) else "exists and is not a directory"
        raise MMError(f"{source or 'cache dir'} {path}: {what}; the cache needs a writable directory: "
                      f"set {source or '$MMBENCH_CACHE_DIR'} to one") from None
    return path


# The numeric environment variables (megabytes): name → (default, maximum). Checked by every command at its start
# (``check_environment``), so a bad value is refused at once, not after a model has loaded.
ENV_NUMBERS: dict[str, tuple[float, float]] = {
    "MMBENCH_IMAGE_CACHE_MB": (256, 2**30),
    "MMBENCH_FEATURE_STORE_MB": (4096, 2**30),
}


def env_number(name: str) -> float:
    """The numeric environment variable ``name`` of ``ENV_NUMBERS`` (its default if unset or empty); MMError naming
    it if it is not a number from 0 to its maximum."""
    import math

    default, maximum = ENV_NUMBERS[name]
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= maximum:
        raise MMError(f"${name}={raw!r}: expected a number from 0 to {maximum:,.0f}; unset it for the "
                      f"default ({default:g})")
    return value


def check_environment() -> None:
    """MMError naming a deleted working directory, the first bad ``MMBENCH_*`` number (``ENV_NUMBERS``) or a
    ``$MMBENCH_CACHE_DIR`` that is no writable directory: every command checks them before any work."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise MMError("the current directory was deleted; cd to an existing directory and run again") from None
    for name in ENV_NUMBERS:
        env_number(name)
    if os.environ.get("MMBENCH_CACHE_DIR"):
        cache_root()  # a file or a read-only dir is named now, not when the first image is cached



FEATURE_STORE_DIR = "features"  # model.feature_store's shards: <cache>/features/<namespace>/*.safetensors
FEATURE_SHARD_SUFFIX = ".safetensors"
FEATURE_STORE_MB = int(ENV_NUMBERS["MMBENCH_FEATURE_STORE_MB"][0])  # default cap of the feature store


def feature_store_cap_bytes() -> int:
    """The feature store's size cap from ``$MMBENCH_FEATURE_STORE_MB`` (default 4096; 0 turns the store off)."""
    return int(env_number("MMBENCH_FEATURE_STORE_MB") * 2**20)


def feature_store_dir(configured: str | None = None) -> Path:
    """Where the frozen-encoder feature store lives: ``cache_root(configured)/features``."""
    return cache_root(configured) / FEATURE_STORE_DIR


def feature_shards(root: Path) -> Iterator[os.DirEntry[str]]:
    """Every shard file of the feature store at ``root`` (one level of namespace dirs; vanished ones skipped)."""
    try:
        namespaces = [entry for entry in os.scandir(root) if entry.is_dir()]
    except FileNotFoundError:
        return
    for namespace in namespaces:
        try:
            yield from (entry for entry in os.scandir(namespace.path) if entry.name.endswith(FEATURE_SHARD_SUFFIX))
        except FileNotFoundError:
            continue


def feature_store_usage(root: Path) -> tuple[int, int]:
    """(bytes, shards) the feature store at ``root`` holds on disk."""
    total = count = 0
    for entry in feature_shards(root):
        try:
            total += entry.stat().st_size
            count += 1
        except FileNotFoundError:
            continue
    return total, count

# ------------------------------------------------------------------------------------------------ layout
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_JSON = "checkpoint.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_SHARDS_DIR = "optimizer"  # train.strategy=fsdp: the sharded optimizer state (torch.distributed.checkpoint)
RNG_FILE = "rng.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
ENCODER_EVAL_FILE = "encoder_eval.json"  # a pre-trained encoder's own held-out quality (mm pretrain --stage encoder)
EVAL_DIR = "eval"
SAMPLES_DIR = "samples"
RUN_FILES = (CONFIG_FILE, META_FILE, METRICS_FILE, STATUS_FILE)
RUN_DIRS = (CHECKPOINTS_DIR, EVAL_DIR)
RUN_MARKERS = (*RUN_FILES, EVAL_DIR, CHECKPOINTS_DIR)
GRID_FILE = "grid.json"  # marks a grid dir of mm ablate (its layout lives in ablate/store.py)
REPLACED_DIR = ".replaced"  # a finished run set aside by ``--force`` until the new run has its first checkpoint
_MANIFEST = "manifest.json"
_TMP_CHECKPOINT = re.compile(r"^\.step_\d+\..+\.tmp$")  # a checkpoint dir being built by atomic_dir
_TRASH_CHECKPOINT = re.compile(r"^\.(step_\d+)\.old$")  # a checkpoint being replaced by atomic_dir
_STEP_DIR = re.compile(r"^step_(\d+)$")
_STEP_JSON = re.compile(r"^step_(\d+)\.json$")


def step_dir_name(step: int) -> str:
    """``step_<N>``: the name of a checkpoint dir and of a per-sample dir."""
    return f"step_{step}"


def step_of_dir(name: str) -> int | None:
    """The step of a ``step_<N>`` name, or None if ``name`` is not one."""
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def step_of_results_file(name: str) -> int | None:
    """The step of a ``step_<N>.json`` name, or None if ``name`` is not one."""
    match = _STEP_JSON.match(name)
    return int(match.group(1)) if match else None


def samples_file_name(task: str, shots: int | str, seed: int) -> str:
    """``<task>.<k>shot.seed<S>.jsonl``: one demo seed's per-sample file of one task and shot count."""
    return f"{task}.{shots}shot.seed{seed}.jsonl"


def content_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A hash of the weights themselves (names, dtypes, shapes, bytes), independent of file metadata.

    Two checkpoints with equal hashes hold identical weights: a duplicated or stale checkpoint.
    """
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:32]


def file_content_hash(model_file: str | Path) -> str:
    """``content_hash`` of a saved ``model.safetensors`` (to verify a checkpoint on disk)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return content_hash(load_file(str(model_file)))
    except (SafetensorError, OSError) as error:
        raise MMError(f"{model_file}: not a readable safetensors file ({str(error).splitlines()[0][:120]})") from None


def read_json_file(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file; a missing, unreadable or garbled one is a one-line MMError naming it."""
    path = Path(path)
    try:
        return json.loads(read_regular(path).decode("utf-8"))
    except FileNotFoundError:
        raise MMError(f"{path}: no such {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise MMError(f"{path}: not valid JSON ({error.__class__.__name__}); re-run the stage that wrote it") from None
    except OSError as error:
        raise MMError(f"{path}: cannot read ({error.strerror})") from None


@dataclass(frozen=True)
class Checkpoint:
    """One complete ``checkpoints/step_<N>/`` (or a model dir saved by ``mm build -o``)."""

    step: int
    path: Path

    @property
    def model_file(self) -> Path:
        """The weights file."""
        return self.path / MODEL_FILE

    @property
    def has_trainer_state(self) -> bool:
        """Whether training can resume from this checkpoint (optimizer, RNG and trainer state saved)."""
        optimizer = (self.path / OPTIMIZER_FILE).is_file() or (self.path / OPTIMIZER_SHARDS_DIR).is_dir()
        return optimizer and all((self.path / name).is_file() for name in (RNG_FILE, TRAINER_STATE_FILE))

    def recorded_info(self) -> dict[str, Any]:
        """``checkpoint.json`` as written (its step defaulted to the dir's), computing nothing: no weights are read,
        so a missing ``content_hash`` stays missing. ``{"step": N}`` without one; MMError if garbled."""
        path = self.path / CHECKPOINT_JSON
        if not path.is_file():
            return {"step": self.step}
        info = read_json_file(path, "checkpoint.json")
        if not isinstance(info, dict):
            raise MMError(f"{path}: expected a JSON object; delete this checkpoint dir")
        info = dict(info)
        info.setdefault("step", self.step)
        return info

    def verify(self) -> None:
        """MMError naming the file if ``checkpoint.json`` is garbled or ``model.safetensors`` is not a complete
        safetensors file (its header and size are checked; no weights are read). ``mm eval --all-checkpoints``
        verifies every checkpoint before it evaluates (and writes results for) any."""
        from safetensors import SafetensorError, safe_open

        self.recorded_info()
        try:
            with safe_open(str(self.model_file), framework="pt") as handle:
                if not list(handle.keys()):
                    raise ValueError("it holds no tensors")
        except (SafetensorError, OSError, ValueError) as error:
            raise MMError(f"{self.model_file}: not a readable safetensors file ({str(error).splitlines()[0][:120]}); "
                          "delete this checkpoint dir or re-save it") from None

    def info(self) -> dict[str, Any]:
        """``checkpoint.json``: step, content_hash, tokens_seen, train_flops, wall_time_s (MMError if garbled).

        A model dir without one (``mm build -o``) gets its step and the content hash of its weights.
        """
        info = self.recorded_info()
        if not info.get("content_hash"):
            info["content_hash"] = file_content_hash(self.model_file)
        return info


def model_dir_checkpoint(path: str | Path) -> Checkpoint:
    """A single model dir (``checkpoints/step_<N>/`` or a ``mm build -o`` dir) as a Checkpoint."""
    path = Path(path)
    info_path = path / CHECKPOINT_JSON
    step = step_of_dir(path.name)
    if info_path.is_file():
        info = read_json_file(info_path, "checkpoint.json")
        if not isinstance(info, dict) or isinstance(info.get("step"), bool) or not isinstance(info.get("step"), int):
            raise MMError(f"{info_path}: damaged checkpoint.json (no integer step); delete this checkpoint dir")
        step = info["step"]
    return Checkpoint(step=step if step is not None else 0, path=path)


# ----------------------------------------------------------------------------------------- results schema
def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or float (not a bool): the one check of a number read from a results file."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> TypeGuard[int | float]:
    """Whether ``value`` is a finite number: what a metric read from a results file must be (JSON's NaN and
    Infinity, which Python writes and reads, are damage, never a score)."""
    import math

    return is_number(value) and math.isfinite(value)


_CELL_FIELDS = ("family", "metric", "value", "std", "n", "seeds", "seed_ids", "samples", "demo_selection",
                "text_only_demos", "fingerprint", "reused")


@dataclass
class ResultCell:
    """One (task, shot count) entry of a results JSON: the mean over demo seeds and where its samples are.

    ``samples`` are paths relative to ``eval/`` (one per seed); ``extra`` keeps any key this version does not
    know, so older and newer files round-trip unchanged.
    """

    family: str
    metric: str
    value: float
    std: float = 0.0
    n: int | None = None
    seeds: list[float] = field(default_factory=list)
    seed_ids: list[int] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    demo_selection: str | None = None
    text_only_demos: bool = False
    fingerprint: str | None = None
    reused: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The cell as written in ``eval/step_<N>.json``."""
        data = {name: getattr(self, name) for name in _CELL_FIELDS}
        data.update(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str, task: str = "") -> ResultCell:
        """Validate and read one cell (MMError naming ``where`` on anything malformed)."""
        if not isinstance(data, dict) or not is_finite(data.get("value")):
            raise MMError(f"{where}: expected an object with a finite numeric 'value'; re-run mm eval")
        for name in ("seeds", "seed_ids", "reused"):
            values = data.get(name, [])
            if not isinstance(values, list) or not all(is_finite(v) for v in values):
                raise MMError(f"{where}.{name}: expected a list of finite numbers; re-run mm eval")
        samples = data.get("samples", [])
        if not isinstance(samples, list) or not all(isinstance(s, str) for s in samples):
            raise MMError(f"{where}.samples: expected a list of paths; re-run mm eval")
        if data.get("n") is not None and not is_number(data.get("n")):
            raise MMError(f"{where}.n: expected a number; re-run mm eval")
        if data.get("std") is not None and not is_finite(data.get("std")):
            raise MMError(f"{where}.std: expected a finite number; re-run mm eval")
        if data.get("n") is not None and not is_finite(data.get("n")):
            raise MMError(f"{where}.n: expected a finite number; re-run mm eval")
        metric = data.get("metric")
        family = data.get("family")
        return cls(
            family=str(family) if isinstance(family, str) and family else guess_family(task, metric),
            metric=str(metric) if metric is not None else "",
            value=float(data["value"]),
            std=float(data.get("std") or 0.0),
            n=int(data["n"]) if data.get("n") is not None else None,
            seeds=[float(v) for v in data.get("seeds", [])],
            seed_ids=[int(v) for v in data.get("seed_ids", [])],
            samples=list(samples),
            demo_selection=data.get("demo_selection"),
            text_only_demos=bool(data.get("text_only_demos", False)),
            fingerprint=data.get("fingerprint"),
            reused=[int(v) for v in data.get("reused", [])],
            extra={key: value for key, value in data.items() if key not in _CELL_FIELDS},
        )


_RESULT_FIELDS = ("run", "step", "config_hash", "checkpoint_hash", "train_flops", "checkpoint", "tasks", "summary")


@dataclass
class EvalResult:
    """``eval/step_<N>.json``: every (task, shots) cell of one checkpoint plus MM1's per-shot averages."""

    run: str
    step: int
    config_hash: str | None = None
    checkpoint_hash: str | None = None
    train_flops: float | None = None
    checkpoint: str | None = None
    tasks: dict[str, dict[str, ResultCell]] = field(default_factory=dict)
    summary: dict[str, dict[str, float | None]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def cell(self, task: str, shots: int | str) -> ResultCell | None:
        """The cell of ``task`` at ``shots`` (None if absent)."""
        return self.tasks.get(task, {}).get(str(shots))

    def set_cell(self, task: str, shots: int | str, cell: ResultCell) -> None:
        """Add or replace one cell and refresh the summary."""
        self.tasks.setdefault(task, {})[str(shots)] = cell
        self.summary = summarize(self.tasks)

    def to_json(self) -> dict[str, Any]:
        """The results JSON as written (cells via ``ResultCell.to_json``)."""
        data: dict[str, Any] = {
            "run": self.run, "step": self.step, "config_hash": self.config_hash,
            "checkpoint_hash": self.checkpoint_hash, "train_flops": self.train_flops, "checkpoint": self.checkpoint,
            "tasks": {task: {shots: cell.to_json() for shots, cell in by_shots.items()}
                      for task, by_shots in self.tasks.items()},
            "summary": self.summary,
        }
        data.update(self.extra)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str | Path, step: int | None = None) -> EvalResult:
        """Validate and read a results JSON (MMError naming ``where`` and the bad field)."""
        if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
            raise MMError(f"{where}: malformed results JSON: expected an object with a 'tasks' mapping; re-run mm eval")
        tasks: dict[str, dict[str, ResultCell]] = {}
        for task, by_shots in data["tasks"].items():
            if not isinstance(by_shots, dict):
                raise MMError(f"{where}: tasks.{task}: expected a mapping of shot counts; re-run mm eval")
            for shots, entry in by_shots.items():
                if not str(shots).isdigit():
                    raise MMError(f"{where}: tasks.{task}.{shots}: shot count must be a non-negative integer; "
                                  "re-run mm eval")
                tasks.setdefault(task, {})[str(shots)] = ResultCell.from_json(entry, f"{where}: tasks.{task}.{shots}",
                                                                              task)
        summary = data.get("summary", {})
        if not isinstance(summary, dict) or not all(isinstance(v, dict) and all(x is None or is_finite(x)
                                                                                for x in v.values())
                                                    for v in summary.values()):
            raise MMError(f"{where}: summary: expected a mapping of shot counts to finite averages; re-run mm eval")
        found = data.get("step", step)
        if not isinstance(found, int) or isinstance(found, bool):
            raise MMError(f"{where}: 'step' must be an integer; re-run mm eval")
        flops = data.get("train_flops")
        return cls(
            run=str(data.get("run", "")), step=found, config_hash=data.get("config_hash"),
            checkpoint_hash=data.get("checkpoint_hash"), train_flops=flops if is_finite(flops) else None,
            checkpoint=data.get("checkpoint"), tasks=tasks, summary=summary,
            extra={key: value for key, value in data.items() if key not in _RESULT_FIELDS},
        )


def summarize(tasks: Mapping[str, Mapping[str, ResultCell]]) -> dict[str, dict[str, float | None]]:
    """MM1's averages per shot count: for each family the mean over its tasks (or its summary task's value)."""
    shot_counts = sorted({shots for by_shots in tasks.values() for shots in by_shots}, key=int)
    summary: dict[str, dict[str, float | None]] = {}
    for shots in shot_counts:
        row: dict[str, float | None] = {}
        for family in FAMILIES.values():
            if family.summary_task is not None:
                cell = tasks.get(family.summary_task, {}).get(shots)
                row[family.summary_key] = cell.value if cell is not None else None
                continue
            values = [by_shots[shots].value for by_shots in tasks.values()
                      if shots in by_shots and by_shots[shots].family == family.name]
            row[family.summary_key] = sum(values) / len(values) if values else None
        summary[shots] = row
    return summary


# ----------------------------------------------------------------------------------------------- run dir
class RunDir:
    """One run directory: where each file of the contract lives, and typed readers and writers for them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # paths
    @property
    def config_path(self) -> Path:
        """``config.yaml``: the resolved config the run was trained with."""
        return self.path / CONFIG_FILE

    @property
    def meta_path(self) -> Path:
        """``meta.json``: seed, git commit, package versions, timings."""
        return self.path / META_FILE

    @property
    def encoder_eval_path(self) -> Path:
        """``encoder_eval.json`` of an encoder pre-training run: the encoder's own held-out quality."""
        return self.path / ENCODER_EVAL_FILE

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``: one training log line per logged step."""
        return self.path / METRICS_FILE

    @property
    def checkpoints_dir(self) -> Path:
        """``checkpoints/``."""
        return self.path / CHECKPOINTS_DIR

    @property
    def eval_dir(self) -> Path:
        """``eval/``: results JSON per checkpoint and per-sample files."""
        return self.path / EVAL_DIR

    def checkpoint_dir(self, step: int) -> Path:
        """``checkpoints/step_<N>/``."""
        return self.checkpoints_dir / step_dir_name(step)

    def results_path(self, step: int) -> Path:
        """``eval/step_<N>.json``."""
        return self.eval_dir / f"{step_dir_name(step)}.json"

    def samples_relpath(self, step: int, task: str, shots: int | str, seed: int) -> str:
        """A per-sample file's path relative to ``eval/``, as results cells record it."""
        return str(Path(SAMPLES_DIR) / step_dir_name(step) / samples_file_name(task, shots, seed))

    def samples_dir(self, step: int) -> Path:
        """``eval/samples/step_<N>/``."""
        return self.eval_dir / SAMPLES_DIR / step_dir_name(step)

    # what is there
    def is_run_dir(self) -> bool:
        """Whether the dir holds any run-contract file."""
        return self.path.is_dir() and any((self.path / marker).exists() for marker in RUN_MARKERS)

    def checkpoints(self) -> list[Checkpoint]:
        """Complete checkpoints sorted by step (half-written ones live under temp names; a dir without
        ``checkpoint.json`` is skipped)."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for child in self.checkpoints_dir.iterdir():
            step = step_of_dir(child.name)
            if step is not None and child.is_dir() and (child / CHECKPOINT_JSON).is_file():
                found.append(Checkpoint(step, child))
        return sorted(found, key=lambda checkpoint: checkpoint.step)

    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints."""
        return [checkpoint.step for checkpoint in self.checkpoints()]

    def incomplete_checkpoint_steps(self) -> list[int]:
        """Steps of ``step_<N>`` dirs that lack ``checkpoint.json`` (damaged or foreign), sorted."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(step for child in self.checkpoints_dir.iterdir()
                      if (step := step_of_dir(child.name)) is not None and child.is_dir()
                      and not (child / CHECKPOINT_JSON).is_file())

    # results
    def result_steps(self) -> list[int]:
        """Steps with an ``eval/step_<N>.json``, sorted."""
        if not self.eval_dir.is_dir():
            return []
        return sorted(step for child in self.eval_dir.iterdir()
                      if (step := step_of_results_file(child.name)) is not None and child.is_file())

    def read_results(self, step: int) -> EvalResult | None:
        """The validated results of ``step`` (None if never evaluated; MMError if damaged)."""
        path = self.results_path(step)
        if not path.is_file():
            return None
        return EvalResult.from_json(read_json_file(path, "results file"), path, step)

    def all_results(self) -> dict[int, EvalResult]:
        """Every checkpoint's results, keyed by the step they record."""
        found = {}
        for step in self.result_steps():
            result = self.read_results(step)
            if result is not None:
                found[result.step] = result
        return found

    def final_results(self) -> EvalResult | None:
        """The results of the final checkpoint (the highest step), or None if it is not evaluated (yet)
        or its results file is unreadable."""
        steps = self.result_steps()
        checkpoints = self.checkpoint_steps()
        if not steps or (checkpoints and steps[-1] < checkpoints[-1]):
            return None
        try:
            return self.read_results(steps[-1])
        except MMError:
            return None

    def write_results(self, result: EvalResult) -> Path:
        """Atomically write ``eval/step_<N>.json``."""
        return atomic_write_json(self.results_path(result.step), result.to_json())

    def sample_paths(self, step: int, task: str, shots: int | str, cell: ResultCell | None = None) -> list[Path]:
        """The per-sample files of one (task, shots) cell at ``step``: those ``cell.samples`` lists (relative to
        ``eval/``; files outside the run dir are ignored), else every demo seed's file found on disk."""
        paths: list[Path] = []
        root = self.path.resolve()
        for relative in cell.samples if cell is not None else []:
            for base in (self.path, self.eval_dir, self.samples_dir(step)):
                candidate = stored_file((base / relative).resolve())
                if candidate is not None and candidate.is_file() and root in candidate.parents:
                    paths.append(candidate)
                    break
        if not paths:
            pattern = f"{task}.{shots}shot.seed*.jsonl"
            found = {p.name: p for p in self.samples_dir(step).glob(pattern + GZ_SUFFIX)}
            found.update({p.name + GZ_SUFFIX: p for p in self.samples_dir(step).glob(pattern)})
            paths = [found[name] for name in sorted(found)]
        return paths

    def read_samples(self, path: Path) -> list[dict[str, Any]]:
        """The records of one per-sample file (each an object; MMError naming the line otherwise)."""
        records = read_jsonl(path)
        for number, record in enumerate(records, start=1):
            if not isinstance(record, dict):
                raise MMError(f"{path}: line {number}: expected a JSON object; re-run mm eval")
            if record.get("score") is not None and not is_finite(record["score"]):
                raise MMError(f"{path}: line {number}: score {record['score']!r} is not a finite number; re-run mm eval")
        return records

    def eval_lock(self) -> RunLock:
        """The lock that keeps two ``mm eval`` from writing one run's results (``eval/.lock``)."""
        return RunLock(self.eval_dir, "evaluation")

    def write_config(self, text: str) -> None:
        """Atomically write ``config.yaml``."""
        atomic_write_text(self.config_path, text)

    # training log, metadata, status
    def read_metrics(self) -> list[dict[str, Any]]:
        """The training log lines with a numeric step, sorted by step (a torn last line is skipped)."""
        records = [r for r in read_jsonl(self.metrics_path) if isinstance(r, dict) and is_number(r.get("step"))]
        return sorted(records, key=lambda record: record["step"])

    def last_metrics(self, tail_bytes: int = 4096) -> dict[str, Any]:
        """The last complete training log line, read from the file's tail only (for live progress displays while
        training appends); {} if there is none or the file cannot be read."""
        try:
            with self.metrics_path.open("rb") as handle:
                handle.seek(max(0, self.metrics_path.stat().st_size - tail_bytes))
                lines = handle.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return {}
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                return record
        return {}

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one training log line (flushed to disk)."""
        append_jsonl(self.metrics_path, record)

    def truncate_metrics(self, last_step: int | None) -> None:
        """Keep only log lines up to ``last_step`` (all gone if None) so a resumed curve has no duplicates."""
        if not self.metrics_path.exists():
            return
        kept = [] if last_step is None else [r for r in read_jsonl(self.metrics_path) if r.get("step", 0) <= last_step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))

    def read_meta(self) -> dict[str, Any]:
        """``meta.json`` ({} if absent; MMError if it is not a JSON object)."""
        if not self.meta_path.exists():
            return {}
        meta = read_json_file(self.meta_path, "meta.json")
        if not isinstance(meta, dict):
            raise MMError(f"{self.meta_path}: expected a JSON object")
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Atomically write ``meta.json``."""
        atomic_write_json(self.meta_path, meta)

    def update_meta(self, updates: dict[str, Any]) -> None:
        """Merge ``updates`` into ``meta.json`` (an unreadable old file is replaced)."""
        try:
            meta = self.read_meta()
        except MMError:
            meta = {}
        meta.update(updates)
        self.write_meta(meta)

    def read_config_text(self) -> str | None:
        """The saved ``config.yaml`` as text (None if absent)."""
        if not self.config_path.is_file():
            return None
        return self.config_path.read_text(encoding="utf-8", errors="replace")

    def read_status(self) -> str | None:
        """pending / running / done / failed, or None if the run has no status yet."""
        return read_status(self.path)

    def write_status(self, status: str) -> None:
        """Record the run's state atomically."""
        write_status(self.path, status)

    def lock(self, what: str = "run") -> RunLock:
        """The run's writer lock (``.lock``); use as a context manager."""
        return RunLock(self.path, what)

    def wipe(self) -> None:
        """Delete the files a run wrote (and only those), so the dir can be reused with ``--force``."""
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for name in RUN_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    # replacing a run (--force) without ever losing the old one
    @property
    def replaced_dir(self) -> Path:
        """``.replaced/``: where ``set_aside`` keeps the old run while a ``--force`` run replaces it."""
        return self.path / REPLACED_DIR

    def set_aside(self) -> None:
        """Move the run's files into ``.replaced/`` (renames, nothing copied) so a new run can start in this dir.

        Call under the run's lock. ``drop_set_aside`` deletes the old run once the new one has a checkpoint;
        ``restore_set_aside`` puts it back if the new one fails first (or was killed: see ``recover``).
        MMError if an evaluation is writing the old run's results.
        """
        if (self.eval_dir / ".lock").exists():
            eval_lock = self.eval_lock()
            eval_lock.acquire()  # MMError while a live `mm eval` holds it; a stale one is reclaimed
            eval_lock.release()
        names = [name for name in (*RUN_FILES, *RUN_DIRS) if (self.path / name).exists()]
        if not names:
            return
        self.replaced_dir.mkdir(exist_ok=True)
        atomic_write_json(self.replaced_dir / _MANIFEST, {"names": names})
        for name in names:
            os.replace(self.path / name, self.replaced_dir / name)

    def has_set_aside(self) -> bool:
        """Whether an old run is set aside in ``.replaced/``."""
        return self.replaced_dir.is_dir()

    def restore_set_aside(self) -> bool:
        """Delete the new run's files and move the old run back from ``.replaced/``; False if none was set aside.

        Safe to repeat after a kill half-way: the manifest says which files were the old run's.
        """
        if not self.has_set_aside():
            return False
        try:
            manifest = read_json_file(self.replaced_dir / _MANIFEST, "manifest")
            old, delete_new = set(manifest["names"]), True
        except (MMError, KeyError, TypeError):  # killed before the manifest was written: nothing was moved yet
            old, delete_new = {child.name for child in self.replaced_dir.iterdir()}, False
        for name in (*RUN_FILES, *RUN_DIRS):
            kept = self.replaced_dir / name
            if name in old:
                if kept.exists():  # else: never moved (a kill while setting aside) or already moved back
                    _remove(self.path / name)
                    os.replace(kept, self.path / name)
            elif delete_new:
                _remove(self.path / name)
        shutil.rmtree(self.replaced_dir, ignore_errors=True)
        return True

    def drop_set_aside(self) -> None:
        """Delete the old run set aside in ``.replaced/`` (the new run now has a checkpoint)."""
        if self.has_set_aside():
            trash = self.path / f"{REPLACED_DIR}.{os.getpid()}.tmp"
            os.replace(self.replaced_dir, trash)  # one rename: a kill during the delete cannot restore half a run
            shutil.rmtree(trash, ignore_errors=True)

    def recover(self) -> list[str]:
        """Undo what a killed writer left half-done; call when opening the run for writing (under its lock).

        Restores an old run still set aside by an interrupted ``--force``, puts back a checkpoint caught between
        atomic_dir's renames, and deletes partial ``checkpoints/.step_<N>.*.tmp`` dirs and temp files of the
        run's files. Returns one note per repair, for the caller to print.
        """
        notes = []
        for stale in sorted(self.path.glob(f"{REPLACED_DIR}.*.tmp")):
            shutil.rmtree(stale, ignore_errors=True)
        if self.restore_set_aside():
            notes.append(f"{self.path}: restored the run that an interrupted --force was replacing")
        if self.checkpoints_dir.is_dir():
            for child in sorted(self.checkpoints_dir.iterdir()):
                trash = _TRASH_CHECKPOINT.match(child.name)
                if trash and child.is_dir():
                    target = self.checkpoints_dir / trash.group(1)
                    if target.exists():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        os.replace(child, target)
                        notes.append(f"{target}: restored (a kill interrupted its replacement)")
            partial = [child for child in self.checkpoints_dir.iterdir() if _TMP_CHECKPOINT.match(child.name)]
            for child in sorted(partial):
                _remove(child)
            if partial:
                notes.append(f"{self.checkpoints_dir}: deleted {len(partial)} partial checkpoint(s) left by a kill "
                             f"({', '.join(sorted(child.name for child in partial)[:3])})")
        for name in RUN_FILES:
            for temp in self.path.glob(f".{name}.*.tmp"):
                temp.unlink(missing_ok=True)
        return notes


def _remove(path: Path) -> None:
    """Delete a file or a directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
