"""Few-shot prompt lengths against the trained sequence length: which shot counts stay inside what the LM saw.

A k-shot prompt holds k + 1 images of ``model.num_image_tokens`` tokens each plus the demos' and the query's
text. Training sequences are ``data.seq_len`` tokens long (packed caption / interleaved / text documents), so a
prompt longer than that puts the query at positions the LM never trained on. This script builds the prompts of
the eval queries exactly as ``mm eval`` does (``fewshot.select_random`` with demo seed 0, ``fewshot.build_prompt``,
``templates.encode_interleaved``) and reports, per task, shot count and image-token count, the median and longest
prompt in tokens and the share longer than ``data.seq_len``. No model is needed, only the config's tokenizer.

    python benchmarks/prompt_lengths.py ablations/mm1-toy-v2/base.yaml [--shots 0 2 4 8 --tokens 4 16]

Writes ``benchmarks/results/prompt_lengths.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mmbench_cli.config import load_config
from mmbench_cli.data.synthetic import tokenizer_source
from mmbench_cli.data.templates import encode_interleaved
from mmbench_cli.evaluate import fewshot
from mmbench_cli.evaluate.runner import TaskData
from mmbench_cli.evaluate.tasks import resolve_task
from mmbench_cli.model.tokenizer import get_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "prompt_lengths.json"


def main() -> None:
    """Measure and print the prompt lengths; save them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=None, help="config YAML (default: the built-in defaults)")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cfg = load_config(args.config, [])
    tokenizer = get_tokenizer(cfg.model, tokenizer_source(cfg.data))
    limit = cfg.data.seq_len
    rows = []
    for name in [t for t in cfg.eval.tasks if not t.startswith("text:")]:
        task = TaskData(resolve_task(name), cfg.data, cfg.eval.num_samples, True, "official")
        for shots in args.shots:
            demos = (fewshot.select_random(task.pool(0, False), len(task.queries), shots, 0) if shots
                     else [[] for _ in task.queries])
            texts = [fewshot.build_prompt(d, q)[0] for d, q in zip(demos, task.queries, strict=True)]
            for tokens in args.tokens:
                lengths = [len(encode_interleaved(tokenizer, text, tokens)) for text in texts]
                rows.append({"task": name, "shots": shots, "image_tokens": tokens, "n": len(lengths),
                             "median": statistics.median(lengths), "max": max(lengths),
                             "share_over_seq_len": round(sum(n > limit for n in lengths) / len(lengths), 4)})
                print(f"{name:18} {shots}-shot {tokens:>2} image tokens: median {rows[-1]['median']:>5} "
                      f"max {rows[-1]['max']:>4}  longer than seq_len {limit}: {rows[-1]['share_over_seq_len']:.0%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": args.config or "built-in defaults", "seq_len": limit, "max_seq_len": cfg.model.max_seq_len,
               "world_version": cfg.data.world_version, "rows": rows}
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
