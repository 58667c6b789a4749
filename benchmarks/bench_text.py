"""Text tasks: our lm-eval model (``model="mm"``) against lm-eval's own ``hf`` model on the same GPT-NeoX weights.

The MLLM's language model is saved as a plain Hugging Face checkpoint (``save_pretrained`` of the GPT-NeoX LM and
the tokenizer) and both models run the same YAML tasks (packaged ``resources/evals/``: cloze, facts, perplexity) in one process,
alternating over ``--rounds`` rounds, same batch size and thread count. Reports each model's scores (they must be
identical up to float summation order: the check is |difference| <= 1e-6 relative), the median seconds spent in
each model's request methods (loglikelihood, loglikelihood_rolling, generate_until) and the throughput ratio
hf/ours of those (target >= 1.0), and the whole runs' wall times (which add lm-eval's own task building, the same
for both).

    python benchmarks/bench_text.py                          # a freshly built toy model (random weights)
    python benchmarks/bench_text.py --model runs/x           # a trained run's last checkpoint

Writes ``benchmarks/results/bench_text.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mmbench_cli.rundir import atomic_write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_text.json"
TASKS = ["mm_synth_cloze", "mm_synth_facts", "mm_synth_perplexity"]


def export_lm(model, directory: Path) -> None:  # noqa: ANN001 - an MLLM
    """The MLLM's LM and tokenizer as a plain HF causal-LM checkpoint (safetensors)."""
    model.lm.save_pretrained(str(directory), safe_serialization=True)
    model.tokenizer.save_pretrained(str(directory))


def time_model_calls(lm, spent: list[float]) -> None:  # noqa: ANN001 - an lm-eval LM
    """Wrap the LM's request methods so the seconds spent in them (the model's share of a run, without
    lm-eval's own task building and templating, which is the same for both) add up in ``spent``."""
    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        method = getattr(lm, name)

        def timed(*args, _method=method, **kwargs):  # noqa: ANN002, ANN003, ANN202
            started = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent.append(time.perf_counter() - started)

        setattr(lm, name, timed)


def scores(output: dict) -> dict[str, float]:
    """Every numeric metric of every task (lm-eval's ``results``), keyed ``task/metric``."""
    found = {}
    for task, metrics in output["results"].items():
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and "stderr" not in name and name != "alias":
                found[f"{task}/{name}"] = float(value)
    return found


def main() -> None:
    """Time both models over the rounds, compare their scores, save JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a run, checkpoint or mm build -o dir (default: build a toy model)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import lm_eval
    import torch

    from mmbench_cli.config import load_config
    from mmbench_cli.data.synthetic import tokenizer_source
    from mmbench_cli.evaluate.text import MMLM, task_manager
    from mmbench_cli.model import build_model, load_model

    torch.set_num_threads(args.threads)
    cfg = load_config(None, [])
    if args.model:
        from mmbench_cli.evaluate.runner import resolve_target

        target = resolve_target(Path(args.model))
        cfg = target.config or cfg
        model = load_model(target.checkpoints[-1].path)
    else:
        torch.manual_seed(0)
        model = build_model(cfg.model, tokenizer_source(cfg.data))
    model.eval()
    work = Path(tempfile.mkdtemp(prefix="bench-text-"))
    export_lm(model, work / "lm")
    metadata = {"world_seed": cfg.data.world_seed, "num_train_images": cfg.data.num_train_images,
                "num_test_images": cfg.data.num_test_images}
    manager = task_manager(metadata=metadata)
    ours_lm = MMLM(model=model, batch_size=args.batch_size)
    from lm_eval.models.huggingface import HFLM

    hf_lm = HFLM(pretrained=str(work / "lm"), batch_size=args.batch_size, device="cpu", dtype="float32",
                 max_length=model.config.max_seq_len)

    times: dict[str, list[float]] = {"mm": [], "hf": []}
    model_times: dict[str, list[float]] = {"mm": [], "hf": []}
    spent: dict[str, list[float]] = {"mm": [], "hf": []}
    time_model_calls(ours_lm, spent["mm"])
    time_model_calls(hf_lm, spent["hf"])
    results: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for name, lm in (("mm", ours_lm), ("hf", hf_lm)):
            spent[name].clear()
            started = time.perf_counter()
            output = lm_eval.simple_evaluate(model=lm, tasks=TASKS, task_manager=manager, num_fewshot=None,
                                             bootstrap_iters=0, log_samples=False)
            times[name].append(time.perf_counter() - started)
            model_times[name].append(sum(spent[name]))
            results[name] = scores(output)
    differences = {key: abs(results["mm"][key] - results["hf"].get(key, math.nan)) for key in results["mm"]}
    same = all(diff <= 1e-6 * max(1.0, abs(results["mm"][key])) for key, diff in differences.items())
    median = {name: statistics.median(values) for name, values in times.items()}
    model_median = {name: statistics.median(values) for name, values in model_times.items()}
    report = {
        "benchmark": "bench_text", "command": "python " + " ".join(sys.argv), "tasks": TASKS,
        "model": args.model or "toy default config, random weights (torch seed 0)",
        "lm_params": sum(p.numel() for p in model.lm.parameters()), "batch_size": args.batch_size,
        "torch_threads": args.threads, "rounds": args.rounds, "seconds": times, "median_s": median,
        "model_seconds": model_times, "model_median_s": model_median,
        "throughput_ratio_mm_vs_hf": model_median["hf"] / model_median["mm"],
        "whole_run_ratio_mm_vs_hf": median["hf"] / median["mm"], "scores_mm": results["mm"],
        "scores_hf": results["hf"], "max_abs_difference": max(differences.values()), "same_scores": same,
    }
    atomic_write_json(args.out, report)
    for key in sorted(results["mm"]):
        print(f"{key:<45} mm {results['mm'][key]:12.6f}   hf {results['hf'].get(key, math.nan):12.6f}")
    print(f"median in the model's request methods: mm {model_median['mm']:.2f}s  hf {model_median['hf']:.2f}s  "
          f"throughput ratio {report['throughput_ratio_mm_vs_hf']:.2f}x; whole runs (lm-eval's task building included): "
          f"mm {median['mm']:.2f}s  hf {median['hf']:.2f}s; same scores: {same}")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
