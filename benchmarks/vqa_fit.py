"""Does a checkpoint fit the VQA questions it trained on? 0-shot VQA accuracy by question type on training
questions next to test questions of the synthetic world, with the tool's own prompts, generation, metric and
question types (``evaluate.prior``).

A type at its prior on *test* questions may be memorised (high on train) or not learnt at all (low on both):
the first wants more data, the second a model or recipe that can learn the look-up. Several checkpoints may be
given; ``--json`` appends a row per checkpoint to a results file.

    python benchmarks/vqa_fit.py runs/x/checkpoints/step_1200 [more checkpoints] [--num 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fit_row(checkpoint: Path, num: int, batch_size: int = 32) -> dict:
    """Accuracy (VQA accuracy, %) per question type on ``num`` train and ``num`` test questions."""
    import torch

    from mmbench_cli.data.synthetic import world_from_config
    from mmbench_cli.evaluate import fewshot
    from mmbench_cli.evaluate.metrics import SCORERS
    from mmbench_cli.evaluate.prior import question_type
    from mmbench_cli.evaluate.runner import ImageFeatureCache, generate_batch, resolve_target
    from mmbench_cli.model import load_model

    torch.set_num_threads(1)
    model = load_model(checkpoint).eval()
    cfg = resolve_target(checkpoint).config
    world = world_from_config(cfg.data)
    cache = ImageFeatureCache(model)
    row: dict = {"checkpoint": str(checkpoint), "world_version": cfg.data.world_version,
                 "num_train_images": cfg.data.num_train_images}
    for split in ("train", "test"):
        queries = world.vqa(split)[:num]
        built = [fewshot.build_prompt([], query, False) for query in queries]
        predictions: list[str] = []
        for start in range(0, len(queries), batch_size):
            chunk = built[start:start + batch_size]
            texts, _ = generate_batch(model, [b[0] for b in chunk], [b[1] for b in chunk], cache, 5, 1)
            predictions += [fewshot.postprocess(text, "vqa") for text in texts]
        _, scores = SCORERS["vqa_accuracy"]([q.question_id for q in queries], predictions, [q.answers for q in queries])
        by_type: dict[str, list[float]] = defaultdict(list)
        for query, score in zip(queries, scores, strict=True):
            by_type[question_type(query)].append(score)
        row[split] = {kind: round(100 * sum(values) / len(values), 1) for kind, values in sorted(by_type.items())}
        row[f"{split}_all"] = round(100 * sum(scores) / len(scores), 1)
    return row


def main() -> None:
    """Print train vs test accuracy per question type for each checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--num", type=int, default=300, help="questions per split")
    parser.add_argument("--json", type=Path, help="append the rows to this JSON file")
    args = parser.parse_args()
    rows = []
    for checkpoint in args.checkpoints:
        row = fit_row(checkpoint, args.num)
        rows.append(row)
        print(checkpoint)
        for kind in row["test"]:
            print(f"  {kind:12s} train {row['train'].get(kind, float('nan')):5.1f}  test {row['test'][kind]:5.1f}")
        print(f"  {'all':12s} train {row['train_all']:5.1f}  test {row['test_all']:5.1f}")
    if args.json:
        from mmbench_cli.rundir import atomic_write_json

        old = json.loads(args.json.read_text()) if args.json.exists() else {"rows": []}
        atomic_write_json(args.json, {"benchmark": "vqa_fit", "rows": old["rows"] + rows})


if __name__ == "__main__":
    main()
