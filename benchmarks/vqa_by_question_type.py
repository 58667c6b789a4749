"""VQA accuracy by question type (the question's first two words, as the answer prior groups them) next to
that type's answer prior and the model's most common answers: which questions a run has learnt.

    python benchmarks/vqa_by_question_type.py runs/x/checkpoints/step_600 [--task synthetic-vqa] [--shots 0]
    python benchmarks/vqa_by_question_type.py runs/x --step 600

Reads the per-sample file ``eval/samples/step_<N>/<task>.<k>shot.seed0.jsonl`` of the run (nothing is re-run)
and computes each type's prior from the task's training split with ``evaluate.prior`` (the tool's own prior).
Prints a table and, with ``--json``, the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def type_table(records: Iterable[tuple[str, str, float, Sequence[str]]], by_type: dict[str, str]) -> list[dict]:
    """Per question type: n, accuracy (mean score, in %), that type's prior (the score of answering ``by_type``'s
    answer, in %) and the three most common predictions, from (question, prediction, score in %, references) rows."""
    from types import SimpleNamespace

    from mmbench_cli.evaluate.metrics import vqa_accuracy
    from mmbench_cli.evaluate.prior import question_type

    rows: dict[str, dict] = defaultdict(lambda: {"scores": [], "prior_hits": [], "answers": Counter()})
    for question, prediction, score, references in records:
        kind = question_type(SimpleNamespace(meta={}, question=question))  # type: ignore[arg-type]
        row = rows[kind]
        row["scores"].append(score)
        row["prior_hits"].append(100.0 * vqa_accuracy(by_type.get(kind, ""), references))
        row["answers"][prediction] += 1
    return [{"question_type": kind, "n": len(row["scores"]),
             "accuracy": round(sum(row["scores"]) / len(row["scores"]), 1),
             "prior": round(sum(row["prior_hits"]) / len(row["prior_hits"]), 1), "prior_answer": by_type.get(kind),
             "top_answers": row["answers"].most_common(3)} for kind, row in sorted(rows.items())]


def print_table(table: list[dict]) -> None:
    """One line per question type: n, accuracy, prior (and its answer), most common predictions."""
    for row in table:
        print(f"  {row['question_type']:<14} n={row['n']:<4} accuracy {row['accuracy']:5.1f}  prior {row['prior']:5.1f} "
              f"({row['prior_answer']})  answers {row['top_answers']}")


def main() -> None:
    """Print accuracy, prior and top answers per question type."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a run dir or a checkpoints/step_<N> dir")
    parser.add_argument("--step", type=int)
    parser.add_argument("--task", default="synthetic-vqa")
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from mmbench_cli.config import load_config
    from mmbench_cli.evaluate.prior import prior_answers
    from mmbench_cli.evaluate.tasks import TASKS, load_samples

    run = args.run
    if run.parent.name == "checkpoints":
        args.step, run = int(run.name.removeprefix("step_")), run.parent.parent
    samples = run / "eval" / "samples" / f"step_{args.step}" / f"{args.task}.{args.shots}shot.seed0.jsonl"
    cfg = load_config(str(run / "config.yaml"), [])
    train = load_samples(TASKS.get(args.task), "demos", cfg.data, verify="none")
    by_type, _ = prior_answers(train)
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    table = type_table(((r["question"], r["prediction"], r["score"], r["references"]) for r in records), by_type)
    if args.json:
        print(json.dumps(table))
        return
    print(f"{samples}")
    print_table(table)


if __name__ == "__main__":
    main()
