"""Which stage loses the look-ups? The world's VQA questions answered from a *text* description of the scene.

The default MLLM learns counting but answers every look-up question (is there a <colour> one, what colour is the one
<place>, where is / what shape is the <colour> one) with one word per question type. This benchmark asks whether the
language model itself can learn those look-ups at the same budget when nothing has to pass through the image encoder
and connector: each training document is ``scene: <every object with its size, colour, shape and place>. Question: <q>
Short answer: <a>`` for the world's training questions (world version 4, the same questions as synthetic-vqa), the LM
is trained on them alone with ``mm pretrain`` (local ``text`` data, the default LM and recipe), and the test questions
are answered greedily from ``scene: ... Question: <q> Short answer:`` and scored with the official VQA accuracy,
per question type next to that type's answer prior (``evaluate.prior``).

    python benchmarks/lookup_oracle.py                       # 600 steps, pythia-toy-2m, 800 test questions
    python benchmarks/lookup_oracle.py --steps 300 --out runs/lookup-oracle-300
    python benchmarks/lookup_oracle.py --out runs/lookup-oracle-lr6e-3 --results /tmp/x.json train.lr=0.006

Writes ``benchmarks/results/lookup_oracle.json`` (and the run under ``--out``).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "lookup_oracle.json"


def describe(scene: object, rng: random.Random) -> str:
    """Every object of a scene as text, in random order: ``a small red circle on the left and ...``."""
    objects = list(scene.objects)  # type: ignore[attr-defined]
    rng.shuffle(objects)
    return " and ".join(f"{obj.phrase()} {obj.where()}" for obj in objects)


def documents(world: object, split: str) -> list[tuple[str, object]]:
    """(``scene: ... Question: ... Short answer:`` prompt, VQA sample) for every VQA question of ``split``."""
    from mmbench_cli.data.synthetic import _rng

    prompts = []
    for sample in world.vqa(split, "vqa"):  # type: ignore[attr-defined]
        index = int(sample.image.path.stem)
        scene = sample.image.scene
        text = describe(scene, _rng("oracle", world.seed, split, index, sample.question))  # type: ignore[attr-defined]
        prompts.append((f"scene: {text}. Question: {sample.question} Short answer:", sample))
    return prompts


def evaluate(model: object, test: list[tuple[str, object]], by_type: dict[str, str]) -> tuple[list[dict], float]:
    """Greedy answers to the test prompts: the per-question-type table (``vqa_by_question_type.type_table``, printed)
    and the overall accuracy."""
    import torch
    from vqa_by_question_type import print_table, type_table

    from mmbench_cli.evaluate.fewshot import postprocess
    from mmbench_cli.evaluate.metrics import vqa_accuracy

    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    tokenizer.padding_side = "left"
    records = []
    for start in range(0, len(test), 64):
        chunk = test[start:start + 64]
        batch = tokenizer([prompt for prompt, _ in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            new = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=6)  # type: ignore[attr-defined]
        for (_, sample), ids in zip(chunk, new, strict=True):
            answer = postprocess(tokenizer.decode(ids, skip_special_tokens=False), "vqa").strip()
            records.append((sample.question, answer, 100 * vqa_accuracy(answer, sample.answers), sample.answers))
    table = type_table(records, by_type)
    print_table(table)
    overall = round(sum(score for _, _, score, _ in records) / len(records), 1)
    print(f"  all            accuracy {overall:.1f}")
    return table, overall


def main() -> None:
    """Train the LM on text-described scenes' Q&A, answer the test questions, print and save per-type accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (default: the last only)")
    parser.add_argument("--lm", default="pythia-toy-2m")
    parser.add_argument("--num-test", type=int, default=800)
    parser.add_argument("--out", type=Path, default=Path("runs/lookup-oracle"))
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides for mm pretrain (e.g. train.lr=0.006)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    from mmbench_cli.data.synthetic import SyntheticWorld
    from mmbench_cli.data.templates import EOC_TOKEN, majority_answer
    from mmbench_cli.evaluate.prior import prior_answers
    from mmbench_cli.model import load_model

    world = SyntheticWorld(0, num_train_images=4000, num_val_images=200, num_test_images=2400, version=4)
    args.out.mkdir(parents=True, exist_ok=True)
    train_file = args.out / "train.jsonl"
    train = documents(world, "train")
    with train_file.open("w") as handle:
        for prompt, sample in train:
            handle.write(json.dumps({"text": f"{prompt} {majority_answer(sample.answers)}{EOC_TOKEN}"}) + "\n")
    config = {"name": "lookup-oracle", "model": {"encoder": "vit-tiny", "lm": args.lm},
              "data": {"source": "local", "datasets": [{"format": "text", "path": str(train_file.resolve())}],
                       "data_mix": {"caption": 0.0, "interleaved": 0.0, "text": 1.0}},
              "train": {"steps": args.steps, "device": "cpu", "log_spaced_checkpoints": False,
                        "checkpoint_every": args.eval_every or args.steps}}
    config_file = args.out / "oracle.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    run = args.out / "run"
    started = time.perf_counter()
    subprocess.run(["mm", "pretrain", str(config_file), *args.overrides, "--out", str(run)], check=True)
    train_s = time.perf_counter() - started

    test = documents(world, "test")[: args.num_test]
    by_type, _ = prior_answers([sample for _, sample in train])
    steps = list(range(args.eval_every, args.steps + 1, args.eval_every)) if args.eval_every else [args.steps]
    if steps[-1] != args.steps:
        steps.append(args.steps)
    per_step = {}
    for step in steps:
        print(f"step {step}:")
        per_step[step] = evaluate(load_model(run / "checkpoints" / f"step_{step}").eval(), test, by_type)
    table, overall = per_step[args.steps]
    result = {"benchmark": "lookup_oracle", "command": " ".join(["python", "benchmarks/lookup_oracle.py", *sys.argv[1:]]),
              "steps": args.steps, "lm": args.lm, "overrides": args.overrides, "train_documents": len(train),
              "train_s": round(train_s, 1),
              "num_test": len(test), "accuracy": overall, "by_type": table,
              "per_step": {str(step): {"accuracy": acc, "by_type": rows} for step, (rows, acc) in per_step.items()},
              "date": time.strftime("%Y-%m-%d")}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {args.results}")


if __name__ == "__main__":
    main()
