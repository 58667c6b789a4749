"""CI regression checks: save every metric of a grid as a baseline, then compare a later grid against it.

A metric regresses when it drops by more than its tolerance (``--tolerance``, or a per-metric
``"tolerance"`` in the baseline file) **and**, where both sides have per-sample scores, the drop is
significant (one-sided p < alpha) under the same seed-aware contrast as the report's Findings
(``stats.linear_contrast``): the matched queries paired, clustered by image, and, when the current grid has
cells with several training seeds, its pooled between-seed variance added for the two runs compared. A metric
in the baseline that is missing now counts as a regression; new metrics are listed but never fail.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmbench_cli.errors import MMError
from mmbench_cli.report.load import Study, is_number
from mmbench_cli.report.stats import linear_contrast, one_sided_p, pooled_seed_variance

FORMAT = "mmbench-baseline"
VERSION = 1


@dataclass
class Comparison:
    """One metric's baseline vs. current value and the verdict."""

    key: str
    metric: str
    baseline: float | None
    current: float | None
    tolerance: float
    p_value: float | None
    matched: int
    status: str  # ok | regressed | within tolerance | not significant | missing | new

    @property
    def delta(self) -> float | None:
        """current − baseline (None if either is missing)."""
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    @property
    def failed(self) -> bool:
        """Whether this comparison fails the check."""
        return self.status in ("regressed", "missing")


def metric_key(run: str, task: str, shots: str) -> str:
    """The baseline key of one metric: ``<cell>/<task>/<k>shot``."""
    return f"{run}/{task}/{shots}shot"


def collect(study: Study, with_noise: bool = False) -> dict[str, dict[str, Any]]:
    """Every task × shots metric of every run at its last evaluated checkpoint, with per-sample scores; with
    ``with_noise`` also each query's image (``clusters``) and the grid's pooled seed variance (``seed_variance``)
    for the test (not saved in a baseline)."""
    pools = _seed_pools(study) if with_noise else {}
    metrics: dict[str, dict[str, Any]] = {}
    for run in study.runs:
        step = run.final_step
        if step is None:
            continue
        for task, by_shots in sorted(run.results[step].tasks.items()):
            for shots, cell in sorted(by_shots.items(), key=lambda item: int(item[0])):
                record: dict[str, Any] = {
                    "run": run.name,
                    "task": task,
                    "shots": int(shots),
                    "metric": cell.metric or None,
                    "value": cell.value,
                    "step": step,
                    "n": cell.n,
                }
                scores = run.sample_scores(step, task, shots)
                if scores:
                    record["scores"] = scores
                if with_noise:
                    record["clusters"] = run.sample_clusters(step, task, shots)
                    record["seed_variance"] = pools.get((task, shots))
                metrics[metric_key(run.name, task, shots)] = record
    return metrics


def _seed_pools(study: Study) -> dict[tuple[str, str], tuple[float, int] | None]:
    """(task, shots) -> the between-seed variance of one run's score, pooled over the study's cells with several
    seeds (``stats.pooled_seed_variance``, as in Findings); None where no cell has two seeds."""
    pools: dict[tuple[str, str], tuple[float, int] | None] = {}
    for task, info in study.tasks().items():
        for shots in info.shots:
            cells = []
            for runs in study.groups().values():
                seeds = [{task: scores} for run in runs if run.final_step is not None
                         and (scores := run.sample_scores(run.final_step, task, shots))]
                cells.append(seeds)
            pooled = pooled_seed_variance([cell for cell in cells if cell])
            pools[(task, shots)] = pooled
    return pools


def drop_pvalue(baseline: dict[str, float], current: dict[str, float], drop: float,
                clusters: dict[str, str | None] | None = None,
                seed_variance: tuple[float, int] | None = None) -> tuple[float, int] | None:
    """One-sided p-value that the true drop (baseline − current) is ≤ 0, given the observed ``drop`` of the reported
    values: its standard error from ``stats.linear_contrast`` over the matched queries (paired, clustered by image
    where ``clusters`` names one, plus twice the between-seed variance of one run when given). Returns (p, matched
    queries), or None when fewer than two queries match (then only the tolerance decides)."""
    ids = sorted(set(baseline) & set(current))
    if len(ids) < 2:
        return None
    labels = {("score", i): label for i, label in (clusters or {}).items() if label is not None and i in baseline}
    result = linear_contrast([(-1.0, [{"score": {i: baseline[i] for i in ids}}]),
                              (1.0, [{"score": {i: current[i] for i in ids}}])],
                             labels or None, seed_pool=[], pooled_variance=seed_variance)
    return one_sided_p(drop, result.se, result.df), len(ids)


def baseline_document(study: Study) -> dict[str, Any]:
    """The JSON document ``--save-baseline`` writes; MMError if the study has no evaluated metric."""
    metrics = collect(study)
    if not metrics:
        raise MMError(f"{study.name}: no eval/step_<N>.json results to save as a baseline; run mm eval first")
    return {
        "format": FORMAT,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": [str(path) for path in study.sources],
        "encoders": encoder_weights(study),
        "metrics": metrics,
    }


def encoder_weights(study: Study) -> dict[str, str]:
    """Pre-trained encoder (cache dir name) -> its weights' content hash, as the runs' ``meta.json`` recorded them
    (runs made before the hash was recorded are left out)."""
    found = {Path(source["dir"]).name: source["weights"] for run in study.runs
             if (source := run.pretrained_encoder) is not None and isinstance(source.get("weights"), str)}
    return dict(sorted(found.items()))


def provenance_notes(recorded: dict[str, str], study: Study) -> list[str]:
    """One line per pre-trained encoder that both the baseline (``recorded``: its ``encoders``) and ``study`` name
    but with other weights: then a drop (or a rise) may come from the encoder cache (one made by older code under the
    same key), not the change under test. Empty when they agree or either side did not record weights."""
    now = encoder_weights(study)
    return [f"encoder {name}: the baseline's runs used weights {recorded[name][:12]}, these runs {now[name][:12]} "
            f"(a cached encoder from other code, or pre-training changed without a new cache key)"
            for name in sorted(set(recorded) & set(now)) if recorded[name] != now[name]]


def read_baseline(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Read and validate a baseline file: its metrics and its encoders' weights (empty in baselines saved before
    they were recorded); every problem is a one-line MMError naming the file."""
    fix = "pass a file written by `mm report GRID --save-baseline FILE`"
    if not path.is_file():
        raise MMError(f"{path}: no such baseline file; {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MMError(f"{path}: baseline is not valid JSON; {fix}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("metrics"), dict):
        raise MMError(f"{path}: not an mmbench baseline (expected format '{FORMAT}' and a 'metrics' mapping); {fix}")
    if data.get("version") != VERSION:
        raise MMError(f"{path}: baseline version {data.get('version')!r} is not supported (expected {VERSION}); {fix}")
    for key, record in data["metrics"].items():
        if not isinstance(record, dict) or not _finite(record.get("value")):
            raise MMError(f"{path}: metrics.{key}: expected an object with a numeric 'value'; {fix}")
        tolerance = record.get("tolerance")
        if tolerance is not None and (not _finite(tolerance) or tolerance < 0):
            raise MMError(f"{path}: metrics.{key}.tolerance: expected a number >= 0")
        scores = record.get("scores")
        if scores is not None and (
            not isinstance(scores, dict) or not all(_finite(v) for v in scores.values())
        ):
            raise MMError(f"{path}: metrics.{key}.scores: expected a mapping of query id to number; {fix}")
    encoders = data.get("encoders", {})
    if not isinstance(encoders, dict) or not all(isinstance(v, str) for v in encoders.values()):
        raise MMError(f"{path}: encoders: expected a mapping of encoder name to weights hash; {fix}")
    return data["metrics"], encoders


def _finite(value: object) -> bool:
    return is_number(value) and math.isfinite(value)


def compare(
    baseline: dict[str, dict[str, Any]],
    current: dict[str, dict[str, Any]],
    tolerance: float,
    alpha: float = 0.05,
) -> list[Comparison]:
    """Compare current metrics with a baseline; see the module docstring for the rule."""
    rows = []
    for key, base in baseline.items():
        limit = float(base["tolerance"]) if base.get("tolerance") is not None else tolerance
        now = current.get(key)
        metric = str(base.get("metric") or "")
        if now is None:
            rows.append(Comparison(key, metric, float(base["value"]), None, limit, None, 0, "missing"))
            continue
        drop = float(base["value"]) - now["value"]
        test = None
        if base.get("scores") and now.get("scores"):
            test = drop_pvalue(base["scores"], now["scores"], drop, now.get("clusters"), now.get("seed_variance"))
        p_value, matched = test if test else (None, 0)
        if drop <= 0:
            status = "ok"
        elif drop <= limit + 1e-12:
            status = "within tolerance"
        elif p_value is not None and p_value >= alpha:
            status = "not significant"
        else:
            status = "regressed"
        rows.append(Comparison(key, metric, float(base["value"]), now["value"], limit, p_value, matched, status))
    for key, now in current.items():
        if key not in baseline:
            rows.append(Comparison(key, str(now.get("metric") or ""), None, now["value"], tolerance, None, 0, "new"))
    return rows
