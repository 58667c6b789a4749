"""Our MLLM as an lm-evaluation-harness LM (``model="mm"``), and text tasks run through lm-eval.

After ``import mmbench_cli``, ``lm_eval.simple_evaluate(model="mm", model_args="path=RUN_OR_CKPT", ...)``
finds this class: ``mmbench_cli/evaluate/lm_eval_hook.py`` registers a lazy placeholder the moment
``lm_eval.api.registry`` is imported, so neither lm_eval nor torch is imported by ``mm --help``.

The LM runs text-only (no ``<image>`` tokens): ``loglikelihood`` scores continuations in right-padded
batches (sorted by length; requests with the same model input, like a multiple-choice question's one-token
answers, run once), ``loglikelihood_rolling`` uses lm-eval's disjoint rolling windows of the model's
``max_seq_len``, ``generate_until`` generates in left-padded batches with the KV cache and cuts at ``until``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from mmbench_cli.errors import MMError
from mmbench_cli.families import FAMILIES, METRICS, TEXT_FAMILY, TEXT_PREFIX
from mmbench_cli.resources import resource_path
from mmbench_cli.rundir import ResultCell, samples_file_name

if TYPE_CHECKING:
    from mmbench_cli.config import DataConfig
    from mmbench_cli.model.mllm import MLLM


# model_args lm-eval itself may add (from its --batch_size/--device options and the like); others are refused
LM_EVAL_KEYS = frozenset({"max_batch_size", "trust_remote_code", "dtype", "parallelize"})


@register_model("mm")
class MMLM(TemplateLM):
    """lm-eval wrapper of an mmbench MLLM (``model_args``: ``path`` (alias ``pretrained``), ``batch_size``,
    ``device``, ``max_length``). A path with commas (a grid cell) may be quoted or passed as it is: lm-eval's
    split at its commas is undone (``lm_eval_hook.model_path``)."""

    def __init__(self, path: str | None = None, model: MLLM | None = None, batch_size: int | str = 16,
                 device: str = "cpu", max_length: int | None = None, **kwargs: Any) -> None:
        super().__init__()
        if model is None:
            from mmbench_cli.evaluate.lm_eval_hook import load_model_from_args

            model = load_model_from_args(path, kwargs, LM_EVAL_KEYS, "path (alias pretrained), batch_size, device, "
                                         "max_length", device)
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self._device = next(model.parameters()).device
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        if self.batch_size < 1:
            raise MMError(f"batch_size {batch_size}: must be a positive integer (or auto)")
        self.max_length = int(max_length or model.config.max_seq_len)

    # ---- tokenizer glue ---------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        """End-of-text id: the prefix for empty contexts and rolling windows."""
        return int(self.model.eos_token_id)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string`` (our tokenizer adds no BOS)."""
        return self.tokenizer(string, add_special_tokens=False)["input_ids"]

    def tok_decode(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens`` (special tokens kept so stop strings can be found)."""
        return self.tokenizer.decode(list(tokens), skip_special_tokens=False)

    # ---- scoring ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy decode) per request, batched."""
        # Requests whose model input is the same (a multiple-choice question's one-token answers share their
        # context) are run once, as lm-eval's hf model does with its one-token-continuation cache.
        inputs: dict[tuple[int, ...], int] = {}  # model input → its row
        row_of, conts = [], []
        for _, context, continuation in requests:
            whole = (context + continuation)[-(self.max_length + 1):]
            row_of.append(inputs.setdefault(tuple(whole[:-1]), len(inputs)))
            conts.append(continuation[-len(whole) + 1:] if len(continuation) >= len(whole) else continuation)
        rows = list(inputs)
        users: list[list[int]] = [[] for _ in rows]
        for i, row in enumerate(row_of):
            users[row].append(i)
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = max(len(rows[r]) for r in chunk)
            input_ids = torch.full((len(chunk), width), self.model.pad_token_id, dtype=torch.long)
            for b, r in enumerate(chunk):
                input_ids[b, :len(rows[r])] = torch.tensor(rows[r])
            # Right padding needs no attention mask in a causal LM: a real token never attends to the padding after
            # it, and positions start at 0 in every row; without a mask SDPA takes its causal fast path (as lm-eval's
            # hf model does).
            logits = self.model(input_ids.to(self._device)).logits
            # every request's continuation positions at once: log-softmax over those positions only
            batch_index, positions, targets, owners = [], [], [], []
            for b, r in enumerate(chunk):
                end = len(rows[r])
                for i in users[r]:
                    cont = conts[i]
                    batch_index += [b] * len(cont)
                    positions += range(end - len(cont), end)
                    targets += cont
                    owners += [i] * len(cont)
            span = F.log_softmax(logits[batch_index, positions].float(), dim=-1)
            target = torch.tensor(targets, device=span.device)
            scores = span.gather(-1, target.unsqueeze(-1)).squeeze(-1).double().cpu().tolist()
            greedy = (span.argmax(-1) == target).cpu().tolist()
            for i, score, hit in zip(owners, scores, greedy, strict=True):
                total, all_hit = results[i] or (0.0, True)
                results[i] = (total + score, all_hit and hit)
        return [r if r is not None else (0.0, True) for r in results]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of whole documents via disjoint rolling windows (for perplexity tasks)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owner = [], []
        for index, request in enumerate(requests):
            (text,) = request.args
            for window in get_rolling_token_windows(self.tok_encode(text), self.eot_token_id, self.max_length, 1):
                context, continuation = make_disjoint_window(window)
                windows.append(((text, ""), context, continuation))
                owner.append(index)
        scores = self._loglikelihood_tokens(windows)
        totals = [0.0] * len(requests)
        for index, (value, _) in zip(owner, scores, strict=True):
            totals[index] += value
        return totals

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations in left-padded batches, cut at the request's ``until`` strings."""
        outputs: list[str] = [""] * len(requests)
        for start in range(0, len(requests), self.batch_size):
            batch = list(range(start, min(start + self.batch_size, len(requests))))
            encoded = []
            for i in batch:
                context, gen_kwargs = requests[i].args
                max_new = int(gen_kwargs.get("max_gen_toks", 32))
                encoded.append(self.tok_encode(context)[-(self.max_length - max_new):])
            max_new = max(int(requests[i].args[1].get("max_gen_toks", 32)) for i in batch)
            width = max(len(e) for e in encoded)
            input_ids = torch.full((len(batch), width), self.model.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, ids in enumerate(encoded):
                input_ids[r, width - len(ids):] = torch.tensor(ids)
                mask[r, width - len(ids):] = 1
            new = self.model.generate(input_ids.to(self._device), mask.to(self._device), max_new_tokens=max_new,
                                      stop_token_ids=[self.model.eos_token_id])
            for r, i in enumerate(batch):
                text = self.tok_decode(new[r].tolist())
                until = requests[i].args[1].get("until") or []
                for stop in ([until] if isinstance(until, str) else until) + [self.tokenizer.eos_token, self.tokenizer.pad_token]:
                    if stop:
                        text = text.split(stop, 1)[0]
                outputs[i] = text
        return outputs


# --------------------------------------------------------------------------------------- task running
def task_manager(include_paths: Sequence[str | Path] = (), include_defaults: bool = False,
                 metadata: dict[str, Any] | None = None) -> Any:
    """An lm-eval TaskManager indexing only ``evals/`` and the user's dirs (~1 s) unless defaults are asked.

    ``metadata`` reaches our task loaders (``world_seed``, ``num_train_images``, ``num_test_images`` or ``path``).
    """
    from lm_eval.tasks import TaskManager

    paths = [str(resource_path("evals"))] + [str(Path(p)) for p in include_paths]
    for path in paths[1:]:
        if not Path(path).is_dir():
            raise MMError(f"--include-path {path}: not a directory of lm-eval task YAMLs")
    return TaskManager(include_path=paths, include_defaults=include_defaults, metadata=metadata)


def run_text_tasks(model: MLLM, names: Sequence[str], include_paths: Sequence[str | Path], data_cfg: DataConfig,
                   samples_dir: Path, batch_size: int = 16, limit: int | None = None) -> dict[str, ResultCell]:
    """Run lm-eval tasks on ``model``; returns ``{task: cell}`` in the results-JSON cell format (shots 0).

    Our and the user's task dirs are indexed first; a name found in neither is looked up in lm-eval's
    built-in index (its data must already be in the local HF cache: we run offline).
    """
    import lm_eval

    metadata = {"world_seed": data_cfg.world_seed, "num_train_images": data_cfg.num_train_images,
                "num_test_images": data_cfg.num_test_images}
    manager = task_manager(include_paths, metadata=metadata)
    missing = [n for n in names if n not in manager.all_tasks]
    if missing:
        manager = task_manager(include_paths, include_defaults=True, metadata=metadata)
        unknown = [n for n in missing if n not in manager.all_tasks]
        if unknown:
            raise MMError(f"unknown text task {unknown[0]!r}: not in evals/, --include-path dirs or lm-eval's "
                          "built-in tasks; e.g. text:textcore, text:mm_synth_cloze")
    lm = MMLM(model=model, batch_size=batch_size)
    output = lm_eval.simple_evaluate(model=lm, tasks=list(names), task_manager=manager, num_fewshot=None,
                                     limit=limit, log_samples=True, bootstrap_iters=0)
    return cells_from_lm_eval(output, samples_dir)


def _main_metric(metrics: dict[str, Any]) -> tuple[str, float] | None:
    for name in FAMILIES[TEXT_FAMILY].metrics:
        for key, value in metrics.items():
            if key.split(",")[0] == name and isinstance(value, int | float):
                return name, float(value)
    return None


def cells_from_lm_eval(output: dict[str, Any], samples_dir: Path) -> dict[str, ResultCell]:
    """Turn lm-eval's ``results``/``groups`` and logged samples into our cells (+ per-sample JSONL files)."""
    from mmbench_cli.rundir import atomic_write_text

    cells: dict[str, ResultCell] = {}
    logged = output.get("samples") or {}
    for name, metrics in {**output.get("results", {}), **output.get("groups", {})}.items():
        found = _main_metric(metrics)
        if found is None:
            continue
        metric, value = found
        scale = METRICS[metric].scale
        cell = ResultCell(family="text", metric=metric, value=scale * value, std=0.0,
                          n=int(output.get("n-samples", {}).get(name, {}).get("effective", 0)) or None,
                          seeds=[scale * value], seed_ids=[0], samples=[])
        if name in logged:
            rel = samples_file_name(TEXT_PREFIX + name, 0, 0)
            lines = []
            for sample in logged[name]:
                score = sample.get(metric)
                if isinstance(score, list | tuple):
                    score = score[0]
                lines.append(json.dumps({"id": sample.get("doc_id"), "prediction": _prediction(sample),
                                         "references": [str(sample.get("target"))],
                                         "score": scale * float(score) if isinstance(score, int | float) else None}))
            atomic_write_text(samples_dir / rel, "\n".join(lines) + "\n")
            cell.samples = [str(Path(samples_dir.parent.name, samples_dir.name) / rel)]
            cell.n = len(lines)
        cells[name] = cell
    return cells


def _prediction(sample: dict[str, Any]) -> Any:
    filtered = sample.get("filtered_resps") or sample.get("resps")
    try:
        return json.loads(json.dumps(filtered, default=str))
    except (TypeError, ValueError):
        return str(filtered)
