"""Bootstrap statistics on per-sample scores: confidence intervals and paired significance tests.

A metric shown in a report is a weighted sum of per-query means (a task's score; a mean over tasks such as
MM1's "caption avg"; a mean over training seeds or over grid cells). ``Estimate`` keeps those per-query
score arrays with their weights so one bootstrap gives a 95% interval for any such combination: queries are
resampled with replacement, jointly for score arrays over the same query set (the same task scored for
several seeds or cells: a paired resample) and independently across query sets, and the interval is the
percentile interval of the resampled deviation, placed around the reported value.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_RESAMPLES = 1000


@dataclass
class Estimate:
    """A reported number, the per-query scores behind it, and the per-seed values it pools."""

    value: float
    parts: list[tuple[float, np.ndarray, Hashable]] | None = None  # (weight, scores in id order, query-set key)
    seed_values: list[float] = field(default_factory=list)
    n: int = 0

    def ci(self, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
        """The bootstrap confidence interval (None when some part has no per-sample scores)."""
        if not self.parts:
            return None
        rng = np.random.default_rng(seed)
        deviation = np.zeros(resamples)
        by_query_set: dict[Hashable, list[tuple[float, np.ndarray]]] = {}
        for weight, scores, key in self.parts:
            by_query_set.setdefault(key, []).append((weight, scores))
        for members in by_query_set.values():
            index = rng.integers(0, len(members[0][1]), size=(resamples, len(members[0][1])))
            for weight, scores in members:
                deviation += weight * (scores[index].mean(axis=1) - scores.mean())
        low, high = np.percentile(deviation, [50 * (1 - level), 50 * (1 + level)])
        return float(self.value + low), float(self.value + high)

    @property
    def seed_std(self) -> float | None:
        """Standard deviation over training seeds (None with fewer than two)."""
        return float(np.std(self.seed_values, ddof=1)) if len(self.seed_values) > 1 else None


def bootstrap_means(scores: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``resamples`` resamples (with replacement) of ``scores``."""
    index = rng.integers(0, len(scores), size=(resamples, len(scores)))
    return scores[index].mean(axis=1)


def from_scores(value: float, scores: dict[str, float] | None) -> Estimate:
    """An Estimate of one task's reported ``value`` with its per-query scores (if any)."""
    if not scores:
        return Estimate(value=value, seed_values=[value])
    ids = tuple(sorted(scores))
    array = np.array([scores[i] for i in ids], dtype=float)
    return Estimate(value=value, parts=[(1.0, array, ids)], seed_values=[value], n=len(array))


def mean_of(estimates: Sequence[Estimate], pool_seeds: bool = False) -> Estimate | None:
    """The plain mean of several estimates (over tasks, seeds or cells); None if given none.

    With ``pool_seeds`` the inputs are one cell's training seeds, and their values become ``seed_values``.
    """
    if not estimates:
        return None
    weight = 1.0 / len(estimates)
    parts: list[tuple[float, np.ndarray, Hashable]] | None = []
    for estimate in estimates:
        if estimate.parts is None or parts is None:
            parts = None
            continue
        parts += [(weight * w, scores, key) for w, scores, key in estimate.parts]
    value = float(np.mean([e.value for e in estimates]))
    if pool_seeds:
        seeds = [e.value for e in estimates]
    else:
        seeds = [value]
    return Estimate(value=value, parts=parts or None, seed_values=seeds, n=sum(e.n for e in estimates))


def paired_drop_pvalue(
    baseline: dict[str, float],
    current: dict[str, float],
    drop: float,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, int] | None:
    """One-sided paired bootstrap p-value that the true drop (baseline − current) is ≤ 0.

    Queries are matched by id; the resampled drop is the observed ``drop`` of the reported values plus the
    deviation of the resampled mean paired difference from its full-sample mean. Returns (p, matched
    queries), or None when fewer than two queries match (then only the tolerance decides).
    """
    ids = sorted(set(baseline) & set(current))
    if len(ids) < 2:
        return None
    diffs = np.array([baseline[i] - current[i] for i in ids], dtype=float)
    rng = np.random.default_rng(seed)
    resampled = drop + bootstrap_means(diffs, resamples, rng) - diffs.mean()
    return float(np.mean(resampled <= 0.0)), len(ids)
