"""Diagnosis of the synthetic world: which stage loses the information VQA, OCR and shape words need?

Linear probes (logistic regression, scikit-learn) on frozen image features predict what is in each image:
which colours and which shapes are present, how many objects there are, which of the 3x3 cells are occupied,
and (on images with text) the written word, for large and small text separately. Each probe's test accuracy is
printed next to the majority-class baseline. Feature sources, at each resolution:

- ``pixels``: the raw image downsampled to 16x16 (what a linear reader of the input can get);
- ``random:<name>``: a randomly initialised encoder from the registry (the default MLLM's starting point);
- ``<dir>``: a saved encoder (``mm pretrain --stage encoder``) or a run's checkpoint dir (its trained encoder).

Features are the patch tokens mean-pooled, concatenated with a 3x3 spatial pooling (so position survives).

    python benchmarks/diagnose_world.py --resolution 32 64 --encoders random:vit-tiny runs/enc-clip
    python benchmarks/diagnose_world.py --encoders runs/grid/resolution=64,tokens=16/checkpoints/step_300
    python benchmarks/diagnose_world.py --world-version 4 --resolution 64 --encoders random:vit-tiny <dir> \
        --out benchmarks/results/diagnose_world_v4.json

Writes ``benchmarks/results/diagnose_world.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmbench_cli.data.synthetic import COLORS, SHAPES, V4_SHAPES, V4_WORDS, WORDS, SyntheticWorld  # noqa: E402
from mmbench_cli.rundir import atomic_write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "diagnose_world.json"


def labels(world: SyntheticWorld, split: str) -> dict[str, np.ndarray]:
    """Per-image targets from the scenes: multi-label presence, counts, occupancy, the shape and the colour in
    each occupied cell (``cell_shape`` / ``cell_colour``, -1 where empty: what "what shape is the red one?" and
    "where is the red one?" need) and written words."""
    rows: dict[str, list] = {"colour": [], "shape": [], "count": [], "cells": [], "cell_shape": [], "cell_colour": [],
                             "word_large": [], "word_small": []}
    shapes, words = (V4_SHAPES, V4_WORDS) if world.version >= 4 else (SHAPES, WORDS)
    vocabulary = [*words, *map(str, range(10, 100))]
    for index in range(world.num_images[split]):
        scene = world.scene(split, index)
        rows["colour"].append([any(o.color == c for o in scene.objects) for c in COLORS])
        rows["shape"].append([any(o.shape == s for o in scene.objects) for s in shapes])
        rows["count"].append(len(scene.objects))
        rows["cells"].append([any(o.cell == (r, c) for o in scene.objects) for r in range(3) for c in range(3)])
        in_cell = {o.cell: shapes.index(o.shape) for o in scene.objects}
        rows["cell_shape"].append([in_cell.get((r, c), -1) for r in range(3) for c in range(3)])
        colour_in = {o.cell: list(COLORS).index(o.color) for o in scene.objects}
        rows["cell_colour"].append([colour_in.get((r, c), -1) for r in range(3) for c in range(3)])
        for size in ("large", "small"):
            present = scene.text is not None and scene.text_size == size
            rows[f"word_{size}"].append(vocabulary.index(scene.text) if present else -1)
    return {key: np.asarray(value) for key, value in rows.items()}


def pixel_features(images: list[torch.Tensor]) -> np.ndarray:
    """The images downsampled to 16x16, flattened."""
    batch = torch.stack(images)
    return torch.nn.functional.adaptive_avg_pool2d(batch, 16).flatten(1).numpy()


@torch.no_grad()
def encoder_features(encoder: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Mean-pooled patch tokens plus a 3x3 spatial pooling of them."""
    chunks = []
    for start in range(0, len(pixels), batch_size):
        tokens = encoder(pixels[start:start + batch_size])  # [N, P, D]
        side = int(round(tokens.shape[1] ** 0.5))
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
        pooled = torch.nn.functional.adaptive_avg_pool2d(grid, 3).flatten(1)
        chunks.append(torch.cat([tokens.mean(1), pooled], dim=1).float().numpy())
    return np.concatenate(chunks)


def load_encoder(source: str, image_size: int, patch_size: int) -> torch.nn.Module:
    """A registry encoder (random init), a saved encoder dir, or a checkpoint's trained encoder."""
    from mmbench_cli.config import ModelConfig
    from mmbench_cli.model.encoders import build_encoder

    if source.startswith("random:"):
        torch.manual_seed(0)
        return build_encoder(ModelConfig(encoder=source.split(":", 1)[1], image_size=image_size,
                                         patch_size=patch_size)).eval()
    path = Path(source)
    if (path / "mm_config.json").is_file():  # an MLLM checkpoint: its (trained) encoder
        from mmbench_cli.model import load_model

        return load_model(path).encoder.eval()
    return build_encoder(ModelConfig(encoder=str(path), image_size=image_size, patch_size=patch_size)).eval()


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> dict[str, float]:
    """Test accuracy of a logistic-regression probe (mean over labels for multi-label targets) vs majority."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    columns = [(train_y[:, j], test_y[:, j]) for j in range(train_y.shape[1])] if train_y.ndim == 2 else [(train_y, test_y)]
    accuracy, majority = [], []
    for y_train, y_test in columns:
        keep_train, keep_test = y_train >= 0, y_test >= 0
        if len(set(y_train[keep_train].tolist())) < 2 or not keep_test.any():
            continue
        model = LogisticRegression(max_iter=2000, C=0.5).fit(train_x[keep_train], y_train[keep_train])
        accuracy.append(float((model.predict(test_x[keep_test]) == y_test[keep_test]).mean()))
        values, counts = np.unique(y_train[keep_train], return_counts=True)
        majority.append(float((y_test[keep_test] == values[counts.argmax()]).mean()))
    return {"accuracy": 100 * float(np.mean(accuracy)), "majority": 100 * float(np.mean(majority)),
            "n_test": int(len(test_y))}


def main() -> None:
    """Probe every feature source at every resolution; print a table; save JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--encoders", nargs="+", default=["random:vit-tiny"])
    parser.add_argument("--num-train", type=int, default=1500)
    parser.add_argument("--num-test", type=int, default=400)
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--world-version", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from mmbench_cli.data.images import preprocess

    world = SyntheticWorld(args.world_seed, num_train_images=args.num_train, num_val_images=1,
                           num_test_images=args.num_test, version=args.world_version)
    targets = {split: labels(world, split) for split in ("train", "test")}
    rows = []
    for resolution in args.resolution:
        for source in ["pixels", *args.encoders]:
            started = time.perf_counter()
            if source == "pixels":
                features = {split: pixel_features(list(preprocess(world.images(split), resolution, (0.5,) * 3,
                                                                 (0.5,) * 3))) for split in ("train", "test")}
            else:
                encoder = load_encoder(source, resolution, args.patch_size)
                features = {split: encoder_features(encoder, preprocess(world.images(split), resolution,
                                                                        encoder.image_mean, encoder.image_std))
                            for split in ("train", "test")}
            for target in targets["train"]:
                result = probe(features["train"], targets["train"][target], features["test"], targets["test"][target])
                rows.append({"resolution": resolution, "features": source, "probe": target, **result})
                print(f"{resolution:>4} px  {source:<40} {target:<11} {result['accuracy']:6.1f}%  "
                      f"(majority {result['majority']:5.1f}%)", flush=True)
            print(f"      {source}: {time.perf_counter() - started:.0f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, {"benchmark": "diagnose_world", "world_version": args.world_version,
                                 "command": "python " + " ".join(sys.argv), "num_train": args.num_train,
                                 "num_test": args.num_test, "rows": rows})
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
