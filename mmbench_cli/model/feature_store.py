"""The feature store: a frozen encoder's image features, computed once and reused by every step, demo, checkpoint
and grid cell that shows the same image to the same encoder.

A feature is keyed by what determines it, and nothing else:

- the encoder's weights (``rundir.content_hash`` of its state dict, taken at first use: a frozen encoder does not
  change) and the numerics it runs with (device type, autocast dtype, CPU threads: another count gives other last
  bits), which name the store's *namespace* directory;
- the image as the encoder sees it: a hash of the preprocessed pixel tensor (its resolution, resize and
  normalisation included), so any data source works and no image can be confused with another.

Features come from one function, ``encoder_features``, in fixed chunks of ``FEATURE_CHUNK`` images (the last chunk
zero-padded), whether the store is on or off and whatever else is in the batch: store on and off give the same bits.
The connector, which trains, always runs on the caller's batch as before.

On disk (``cache_root(data.cache_dir)/features/<namespace>/*.safetensors``) features go in write-once shards, each
written atomically (a temp file renamed into place), so concurrent grid workers never see a half-written shard and
never need a lock: two workers that compute the same image write two identical entries, and eviction removes
the older. The store's size is capped by ``$MMBENCH_FEATURE_STORE_MB`` (default 4096; 0 turns the store off);
the least recently used shards (by modification time, touched on read) go first. A damaged shard is reported in
one line on stderr, deleted, and its features recomputed. Within a process, features also stay in memory (at
most ``MEMORY_FRACTION`` of the cap, least recently used out first).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import sys
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mmbench_cli.rundir import FEATURE_SHARD_SUFFIX as SHARD_SUFFIX
from mmbench_cli.rundir import feature_shards, feature_store_cap_bytes, feature_store_dir, feature_store_usage

if TYPE_CHECKING:  # pragma: no cover
    from mmbench_cli.config import Config
    from mmbench_cli.model.mllm import MLLM

FEATURE_CHUNK = 8  # images per encoder call, whatever the batch: the same shapes give the same bits
MEMORY_FRACTION = 0.25  # share of the cap a process may hold in memory
SHARD_BYTES = 32 * 2**20  # pending features are written as one shard when they reach this size (and at exit)
FORMAT = "mmbench-features/1"

FeatureFunction = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def encoder_features(encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Features [N, P, D] of a frozen ``encoder`` on normalised pixels [N, 3, S, S], without gradients.

    Always in chunks of ``FEATURE_CHUNK`` images, the last one zero-padded, so an image's features never depend on
    how many others were encoded with it.
    """
    outputs = []
    with torch.no_grad():
        for start in range(0, pixels.shape[0], FEATURE_CHUNK):
            chunk = pixels[start:start + FEATURE_CHUNK]
            count = chunk.shape[0]
            if count < FEATURE_CHUNK:
                chunk = torch.cat([chunk, chunk.new_zeros((FEATURE_CHUNK - count, *chunk.shape[1:]))])
            outputs.append(encoder(chunk)[:count])
    if not outputs:
        raise ValueError("encoder_features: no images")
    return torch.cat(outputs)


def clear_store(root: Path) -> int:
    """Delete every shard (and left-over temp file) under ``root``; returns the bytes freed."""
    import shutil

    freed, _ = feature_store_usage(root)
    if root.is_dir():
        for entry in os.scandir(root):
            if entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
    _STORES.clear()
    return freed


def pixel_hash(pixels: torch.Tensor) -> str:
    """A hash of one preprocessed image tensor [3, S, S] (shape, dtype and values)."""
    image = pixels.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(f"{image.dtype}|{tuple(image.shape)}|".encode(), digest_size=16)
    digest.update(image.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _warn(message: str) -> None:
    print(f"warning: feature store: {message}", file=sys.stderr)


class FeatureStore:
    """Frozen-encoder features by (encoder, numerics, image), in memory and in safetensors shards under ``root``."""

    def __init__(self, root: Path, cap_bytes: int) -> None:
        self.root = root
        self.cap_bytes = cap_bytes
        self.memory_cap = int(cap_bytes * MEMORY_FRACTION)
        self.memory: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.memory_bytes = 0
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.pending_bytes = 0
        self.index: dict[str, dict[str, Path]] = {}  # namespace → image hash → shard
        self.indexed: dict[str, set[str]] = {}  # namespace → shard names read
        self.touched: set[Path] = set()
        self.encoder_hashes: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
        self.stats = {"memory": 0, "disk": 0, "computed": 0}

    # ---- lookup --------------------------------------------------------------------------------------
    def features(self, encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """``encoder_features(encoder, pixels)``, each image's row taken from the store when it holds it."""
        namespace = self.namespace(encoder, pixels)
        keys = [pixel_hash(image) for image in pixels]
        found: dict[str, torch.Tensor] = {}
        for key in dict.fromkeys(keys):
            cached = self.memory.get((namespace, key))
            if cached is not None:
                self.memory.move_to_end((namespace, key))
                found[key] = cached
                self.stats["memory"] += 1
        missing = [key for key in dict.fromkeys(keys) if key not in found]
        if missing:
            from_disk = self._read(namespace, missing)
            self.stats["disk"] += len(from_disk)
            for key, tensor in from_disk.items():
                self._remember(namespace, key, tensor)
            found.update(from_disk)
        todo = {key: index for index, key in enumerate(keys) if key not in found}
        if todo:
            computed = encoder_features(encoder, pixels[list(todo.values())])
            self.stats["computed"] += len(todo)
            for key, row in zip(todo, computed, strict=True):
                tensor = row.detach().to("cpu").clone()
                found[key] = tensor
                self._remember(namespace, key, tensor)
                self.pending.setdefault(namespace, {})[key] = tensor
                self.pending_bytes += tensor.nbytes
            if self.pending_bytes >= SHARD_BYTES:
                self.flush()
        return torch.stack([found[key] for key in keys]).to(pixels.device)

    def namespace(self, encoder: nn.Module, pixels: torch.Tensor) -> str:
        """The directory name of ``encoder``'s features under the numerics they are computed with now."""
        weights = self.encoder_hashes.get(encoder)
        if weights is None:
            from mmbench_cli.rundir import content_hash

            weights = self.encoder_hashes[encoder] = content_hash(encoder.state_dict())
        device = pixels.device.type
        dtype = str(torch.get_autocast_dtype(device)).removeprefix("torch.") if torch.is_autocast_enabled(device) \
            else "fp32"
        threads = f"-t{torch.get_num_threads()}" if device == "cpu" else ""
        return f"{weights[:24]}-{device}-{dtype}{threads}"

    def _remember(self, namespace: str, key: str, tensor: torch.Tensor) -> None:
        self.memory[(namespace, key)] = tensor
        self.memory_bytes += tensor.nbytes
        while self.memory_bytes > self.memory_cap and self.memory:
            _, old = self.memory.popitem(last=False)
            self.memory_bytes -= old.nbytes

    def _refresh_index(self, namespace: str) -> dict[str, Path]:
        """Add the namespace's shards written since the last look (by this or any other process)."""
        from safetensors import safe_open

        index = self.index.setdefault(namespace, {})
        seen = self.indexed.setdefault(namespace, set())
        directory = self.root / namespace
        try:
            names = sorted(entry.name for entry in os.scandir(directory) if entry.name.endswith(SHARD_SUFFIX))
        except FileNotFoundError:
            return index
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            path = directory / name
            try:
                with safe_open(str(path), framework="pt") as shard:
                    keys = list(shard.keys())
            except FileNotFoundError:
                continue  # evicted by another process meanwhile
            except Exception as error:  # noqa: BLE001 - any unreadable header is damage
                self._drop_damaged(path, error)
                continue
            for key in keys:
                index[key] = path
        return index

    def _read(self, namespace: str, keys: list[str]) -> dict[str, torch.Tensor]:
        """The features of ``keys`` that shards on disk hold (damaged or vanished shards count as misses)."""
        from safetensors import safe_open

        index = self.index.get(namespace, {})
        if any(key not in index for key in keys):
            index = self._refresh_index(namespace)
        by_shard: dict[Path, list[str]] = {}
        for key in keys:
            if key in index:
                by_shard.setdefault(index[key], []).append(key)
        found: dict[str, torch.Tensor] = {}
        for path, wanted in by_shard.items():
            try:
                with safe_open(str(path), framework="pt") as shard:
                    tensors = {key: shard.get_tensor(key) for key in wanted}
            except FileNotFoundError:
                self._forget(namespace, path)
                continue
            except Exception as error:  # noqa: BLE001 - a damaged shard is recomputed, not fatal
                self._drop_damaged(path, error)
                self._forget(namespace, path)
                continue
            found.update(tensors)
            if path not in self.touched:  # least recently used: reads count as use
                self.touched.add(path)
                try:
                    os.utime(path)
                except OSError:
                    pass
        return found

    def _forget(self, namespace: str, path: Path) -> None:
        index = self.index.get(namespace, {})
        for key in [key for key, shard in index.items() if shard == path]:
            del index[key]

    def _drop_damaged(self, path: Path, error: BaseException) -> None:
        _warn(f"{path} is damaged ({type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''});"
              " deleted, its features are recomputed")
        try:
            path.unlink()
        except OSError:
            pass

    # ---- writing -------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the features computed since the last flush as one shard per namespace, then evict to the cap."""
        from safetensors.torch import save

        from mmbench_cli.rundir import atomic_write_bytes

        pending, self.pending, self.pending_bytes = self.pending, {}, 0
        for namespace, tensors in pending.items():
            path = self.root / namespace / f"{uuid.uuid4().hex}{SHARD_SUFFIX}"
            try:
                atomic_write_bytes(path, save(tensors, metadata={"format": FORMAT}))
            except OSError as error:
                _warn(f"cannot write {path} ({error.strerror or error}); these features stay in memory only")
                continue
            self.indexed.setdefault(namespace, set()).add(path.name)
            self.index.setdefault(namespace, {}).update(dict.fromkeys(tensors, path))
        if pending:
            self.evict()

    def evict(self) -> None:
        """Delete the least recently used shards (oldest modification time first) until the store fits its cap."""
        entries = []
        for entry in feature_shards(self.root):
            try:
                status = entry.stat()
            except FileNotFoundError:
                continue
            entries.append((status.st_mtime_ns, status.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.cap_bytes:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            total -= size


_STORES: dict[Path, FeatureStore] = {}


def open_store(cache_dir: str | None = None) -> FeatureStore | None:
    """The process's feature store under ``cache_dir`` (one per directory, written out at exit), or None when
    ``$MMBENCH_FEATURE_STORE_MB`` is 0."""
    cap = feature_store_cap_bytes()
    if cap == 0:
        return None
    root = feature_store_dir(cache_dir).resolve()
    store = _STORES.get(root)
    if store is None or store.cap_bytes != cap:
        store = _STORES[root] = FeatureStore(root, cap)
        atexit.register(store.flush)
    return store


def frozen_features(cache_dir: str | None = None) -> FeatureFunction:
    """How a frozen encoder's features are computed: through the store under ``cache_dir``, or (store off)
    ``encoder_features`` directly; both give the same bits."""
    store = open_store(cache_dir)
    return encoder_features if store is None else store.features


def use_feature_store(model: MLLM, cfg: Config) -> MLLM:
    """Give ``model`` its frozen encoder's features through the store when ``train.freeze_encoder`` says the encoder
    stays fixed (``MMBENCH_FEATURE_STORE_MB=0``: computed directly, the same bits); a training encoder never uses it.
    """
    if cfg.train.freeze_encoder:
        model.frozen_features = frozen_features(cfg.data.cache_dir)
    return model
