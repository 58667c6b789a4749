"""Benchmark: samples/s of 0/4/8-shot VQA evaluation, our runner vs a naive baseline, in the same process.

- ours: ``runner.run_cell``: left-padded batches, HF ``generate`` with the KV cache, image features computed
  once per image (``ImageFeatureCache``, fresh for every shot count so its cost is included);
- naive: per-sample greedy decoding that re-runs the full forward pass (images re-encoded) for every new
  token: no batching, no KV cache, no feature cache (what a straightforward HF-style loop does).

Both decode greedily with the same stop tokens and max_new_tokens; the script checks they produce the same
answers. Usage: ``python benchmarks/bench_eval.py [--model DIR] [--num-samples 16] [--shots 0 4 8]``.
Writes ``benchmarks/results/bench_eval.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def naive_generate(model, prompt: str, images: list, max_new_tokens: int) -> str:  # noqa: ANN001
    """Greedy decoding by full re-computation per token (images re-encoded on every forward)."""
    import torch

    from mmbench_cli.data.images import preprocess
    from mmbench_cli.data.templates import encode_interleaved

    pixels = preprocess(images, model.image_size, model.image_mean, model.image_std)
    ids = encode_interleaved(model.tokenizer, prompt, model.num_image_tokens)
    stops = {model.eoc_token_id, model.eos_token_id}
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids + generated]), images=pixels).logits
            token = int(logits[0, -1].argmax())
            generated.append(token)
            if token in stops:
                break
    return model.tokenizer.decode(generated, skip_special_tokens=False)


def main() -> None:
    """Run the benchmark and write its JSON."""
    import torch

    from mmbench_cli.config import load_config
    from mmbench_cli.evaluate import fewshot
    from mmbench_cli.evaluate.request import EvalSettings
    from mmbench_cli.evaluate.runner import ImageFeatureCache, TaskData, run_cell
    from mmbench_cli.evaluate.tasks import resolve_task
    from mmbench_cli.model import build_model, load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a checkpoint/model dir (default: a freshly built untrained toy model)")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_eval.json"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    cfg = load_config(None, ["data.num_train_images=200", "data.num_test_images=40", "data.num_val_images=10"])
    if args.model:
        model = load_model(args.model)
    else:
        torch.manual_seed(0)
        from mmbench_cli.data.synthetic import tokenizer_source

        model = build_model(cfg.model, tokenizer_source(cfg.data)).eval()
    spec = resolve_task("synthetic-vqa")
    data = TaskData(spec, cfg.data, args.num_samples, need_demos=True)
    settings = EvalSettings(num_samples=args.num_samples, demo_selection="random", max_new_tokens=args.max_new_tokens,
                            num_beams=1, text_only_zero_shot=False, batch_size=args.batch_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shots in args.shots:
            cache = ImageFeatureCache(model)
            start = time.perf_counter()
            run_cell(model, data, shots, 0, settings, cache, Path(tmp) / f"{shots}.jsonl")
            ours_s = time.perf_counter() - start
            ours = [json.loads(x)["raw"] for x in (Path(tmp) / f"{shots}.jsonl").read_text().splitlines()]

            demos = fewshot.select_random(data.pool(0, False), len(data.queries), shots, 0) if shots else \
                [[] for _ in data.queries]
            start = time.perf_counter()
            naive = []
            for query, query_demos in zip(data.queries, demos, strict=True):
                prompt, images = fewshot.build_prompt(query_demos, query)
                naive.append(naive_generate(model, prompt, images, args.max_new_tokens))
            naive_s = time.perf_counter() - start
            same = sum(fewshot.postprocess(a, "vqa") == fewshot.postprocess(b, "vqa") for a, b in zip(ours, naive, strict=True))
            n = len(data.queries)
            rows.append({"shots": shots, "n": n, "ours_samples_per_s": n / ours_s, "naive_samples_per_s": n / naive_s,
                         "speedup": naive_s / ours_s, "same_answers": same, "images_encoded_ours": cache.computed,
                         "images_encoded_naive": sum((len(d) + 1) * args.max_new_tokens for d in demos)})
            print(f"{shots}-shot: ours {n / ours_s:7.2f} samples/s | naive {n / naive_s:6.2f} samples/s | "
                  f"speedup {naive_s / ours_s:5.1f}x | identical answers {same}/{n}")
    result = {
        "benchmark": "bench_eval", "task": "synthetic-vqa", "model": args.model or "untrained pythia-toy-2m + vit-tiny",
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "torch_threads": torch.get_num_threads(),
        "host": platform.node(), "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows,
        "note": "naive images_encoded is an upper bound (stops early at a stop token)",
    }
    from mmbench_cli.rundir import atomic_write_json

    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
