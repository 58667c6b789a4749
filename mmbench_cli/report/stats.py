"""Statistics on per-sample scores: bootstrap intervals, paired and clustered contrasts, seed noise, Holm, power.

Two kinds of uncertainty meet in an ablation study, and a verdict must account for both (Miller, *Adding
Error Bars to Evals*, arXiv 2411.00640):

- **the evaluation set** (which queries were asked): each number is a mean over queries, so it has a CLT
  standard error; when two cells answered the same queries the difference is taken **per query** (paired,
  much tighter), and queries that share a context (here: an image, asked several questions) are not
  independent, so the standard error is **clustered** by that context;
- **training seeds**: the same config trained twice differs; a contrast between cells adds the between-seed
  variance of the cell means (estimated from the cells that have several seeds) to the query variance.

``Estimate`` keeps a reported number's per-query score arrays with their weights so one bootstrap gives a 95%
interval for any weighted sum of per-query means (a task; a mean over tasks such as MM1's "caption avg"; over
seeds or cells): queries are resampled with replacement, jointly for score arrays over the same query set
(a paired resample) and independently across query sets; the interval is the percentile interval of the
resampled deviation, placed around the reported value.

The contrast functions are analytic (CLT), not resampled:

- ``paired_difference(a, b, clusters)``: two per-query score maps, paired and optionally clustered;
- ``linear_contrast(terms, clusters, seed_pool)``: any weighted sum of cells (an axis value against the base,
  averaged over the other axes; an interaction), each cell a list of training seeds, each seed per-query
  scores of one or more tasks; query noise cluster-robust, seed noise from a pooled between-seed variance;
- ``estimate_difference(a, b)``: the same for two table ``Estimate`` s (is the best cell better than the
  runner-up?);
- ``holm``: Holm's step-down adjustment over a report's p-values; ``minimum_detectable_effect``: the effect
  a contrast would detect with 80% power at its standard error; ``verdict``: effect / direction, not
  significant / no detectable effect.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_POWER = 0.8
EFFECT = "effect"
DIRECTION = "direction, not significant"
NO_EFFECT = "no detectable effect"

SeedScores = Mapping[str, Mapping[Hashable, float]]  # one training seed of one cell: part (task) -> query id -> score


@dataclass
class Estimate:
    """A reported number, the per-query scores behind it, and the per-seed values it pools.

    ``clusters`` maps a part's query-set key to the cluster label (image) of each of its queries, where known
    (None for a query without one: it is its own cluster).
    """

    value: float
    parts: list[tuple[float, np.ndarray, Hashable]] | None = None  # (weight, scores in id order, query-set key)
    seed_values: list[float] = field(default_factory=list)
    n: int = 0
    clusters: dict[Hashable, tuple[Hashable, ...]] = field(default_factory=dict)
    _intervals: dict[tuple[int, float, int], tuple[float, float]] = field(default_factory=dict, repr=False, compare=False)

    def ci(self, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
        """The bootstrap confidence interval (None when some part has no per-sample scores; computed once)."""
        if not self.parts:
            return None
        key = (resamples, level, seed)
        if key not in self._intervals:
            self._intervals[key] = self._bootstrap(resamples, level, seed)
        return self._intervals[key]

    def _bootstrap(self, resamples: int, level: float, seed: int) -> tuple[float, float]:
        assert self.parts is not None
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


def from_scores(value: float, scores: dict[str, float] | None, clusters: Mapping[str, Hashable] | None = None) -> Estimate:
    """An Estimate of one task's reported ``value`` with its per-query scores (if any) and, optionally, the
    cluster (image) of each query."""
    if not scores:
        return Estimate(value=value, seed_values=[value])
    ids = tuple(sorted(scores))
    array = np.array([scores[i] for i in ids], dtype=float)
    labels: dict[Hashable, tuple[Hashable, ...]] = {}
    if clusters:
        labels[ids] = tuple(clusters.get(i) for i in ids)  # None: the query is its own cluster
    return Estimate(value=value, parts=[(1.0, array, ids)], seed_values=[value], n=len(array), clusters=labels)


def mean_of(estimates: Sequence[Estimate], pool_seeds: bool = False) -> Estimate | None:
    """The plain mean of several estimates (over tasks, seeds or cells); None if given none.

    With ``pool_seeds`` the inputs are one cell's training seeds, and their values become ``seed_values``.
    """
    if not estimates:
        return None
    weight = 1.0 / len(estimates)
    parts: list[tuple[float, np.ndarray, Hashable]] | None = []
    clusters: dict[Hashable, tuple[Hashable, ...]] = {}
    for estimate in estimates:
        clusters.update(estimate.clusters)
        if estimate.parts is None or parts is None:
            parts = None
            continue
        parts += [(weight * w, scores, key) for w, scores, key in estimate.parts]
    value = float(np.mean([e.value for e in estimates]))
    if pool_seeds:
        seeds = [e.value for e in estimates]
    else:
        seeds = [value]
    return Estimate(value=value, parts=parts or None, seed_values=seeds, n=sum(e.n for e in estimates),
                    clusters=clusters if parts else {})


# ---------------------------------------------------------------------------------------------------------------
# Analytic contrasts


def _quantile(probability: float, df: float | None) -> float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom (the normal when df is None)."""
    if df is None or not math.isfinite(df):
        return NormalDist().inv_cdf(probability)
    from scipy.special import stdtrit  # scipy.special, not scipy.stats: a quarter of the import time

    return float(stdtrit(max(df, 1.0), probability))


def _two_sided_p(statistic: float, df: float | None) -> float:
    if math.isnan(statistic):
        return math.nan
    if df is None or not math.isfinite(df):
        return 2.0 * (1.0 - NormalDist().cdf(abs(statistic)))
    from scipy.special import stdtr

    return float(2.0 * stdtr(max(df, 1.0), -abs(statistic)))


def one_sided_p(drop: float, se: float, df: float | None) -> float:
    """One-sided p-value that the true value of an observed ``drop`` (standard error ``se``, t with ``df``) is ≤ 0."""
    if math.isnan(drop) or math.isnan(se):
        return math.nan
    if se == 0.0:
        return 0.0 if drop > 0 else 1.0
    if df is None or not math.isfinite(df):
        return 1.0 - NormalDist().cdf(drop / se)
    from scipy.special import stdtr

    return float(stdtr(max(df, 1.0), -drop / se))


def _p_value(diff: float, se: float, df: float | None) -> float:
    if math.isnan(diff) or math.isnan(se):
        return math.nan
    if se == 0.0:
        return 1.0 if diff == 0.0 else 0.0
    return _two_sided_p(diff / se, df)


def paired_difference(
    a: Mapping[Hashable, float],
    b: Mapping[Hashable, float],
    clusters: Mapping[Hashable, Hashable] | None = None,
    level: float = 0.95,
) -> dict[str, float]:
    """The paired difference ``b − a`` over the queries both answered, with a CLT (optionally clustered) interval.

    ``a``, ``b``: query id → per-sample score; only ids present in both count (``n``). With ``d_i = b_i − a_i``
    and ``diff = mean(d)``: without ``clusters`` ``se = sqrt(var(d, ddof=1) / n)``; with ``clusters`` (query id →
    cluster key, say the image a question is about; an id it lacks is its own cluster) the cluster-robust
    ``se = sqrt(Σ_c (Σ_{i∈c} (d_i − diff))²) / n``. ``ci = diff ± z·se`` with the normal quantile for ``level``;
    ``p_value`` is two-sided from the normal. Returns ``{diff, se, ci_low, ci_high, p_value, n}`` (NaN where
    undefined: no common id; ``se`` with one id and no clusters).
    """
    ids = [key for key in a if key in b]
    n = len(ids)
    if n == 0:
        return {"diff": math.nan, "se": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "n": 0}
    d = np.array([float(b[key]) - float(a[key]) for key in ids])
    diff = float(d.mean())
    if clusters is None:
        se = float(math.sqrt(np.var(d, ddof=1) / n)) if n > 1 else math.nan
    else:
        sums: dict[Hashable, float] = {}
        for key, residual in zip(ids, d - diff, strict=True):
            label = clusters.get(key, ("query", key))
            sums[label] = sums.get(label, 0.0) + float(residual)
        se = math.sqrt(sum(s * s for s in sums.values())) / n
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return {"diff": diff, "se": se, "ci_low": diff - z * se, "ci_high": diff + z * se,
            "p_value": _p_value(diff, se, None), "n": n}


@dataclass
class Contrast:
    """A linear contrast of cells (``Σ coef · cell mean``) with its uncertainty from queries and training seeds.

    ``se_queries``: cluster-robust standard error over queries (seed-averaged per query); ``se_seeds``: from the
    pooled between-seed variance (None when no cell involved in the pool has two seeds: training noise unknown);
    ``df``: Welch–Satterthwaite degrees of freedom of ``se``, at most the seed variance's own (t quantiles, p);
    ``n``: distinct queries
    (task, id); ``clusters``: distinct clusters; ``seeds``: the fewest training seeds of any cell in the contrast;
    ``paired``: every cell answered the same queries.
    """

    diff: float
    se: float
    se_queries: float
    se_seeds: float | None
    df: float | None
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    clusters: int
    seeds: int
    paired: bool
    level: float = 0.95

    def mde(self, alpha: float = 0.05, power: float = DEFAULT_POWER) -> float:
        """The minimum detectable effect at ``power`` for a two-sided test at ``alpha`` (``minimum_detectable_effect``)."""
        return minimum_detectable_effect(self.se, alpha, power, self.df)


def minimum_detectable_effect(se: float, alpha: float = 0.05, power: float = DEFAULT_POWER,
                              df: float | None = None) -> float:
    """The smallest true effect a two-sided test at ``alpha`` detects with probability ``power``:
    ``(q(1 − alpha/2) + q(power)) · se`` (t quantiles with ``df``, else normal; 2.80·se at the defaults)."""
    if math.isnan(se):
        return math.nan
    return (_quantile(1 - alpha / 2, df) + _quantile(power, df)) * se


def _part_means(seeds: Sequence[SeedScores]) -> dict[str, dict[Hashable, float]]:
    """part -> query -> mean over the seeds that scored it."""
    sums: dict[str, dict[Hashable, list[float]]] = {}
    for seed in seeds:
        for part, scores in seed.items():
            bucket = sums.setdefault(part, {})
            for query, score in scores.items():
                bucket.setdefault(query, []).append(float(score))
    return {part: {q: sum(v) / len(v) for q, v in by_query.items()} for part, by_query in sums.items()}


def seed_value(seed: SeedScores) -> float:
    """A seed's value of a measure: the mean over its parts (tasks) of each part's mean score."""
    means = [sum(scores.values()) / len(scores) for scores in seed.values() if scores]
    return sum(means) / len(means) if means else math.nan


def _training_variance(cell: Sequence[SeedScores]) -> tuple[float, int] | None:
    """(σ²_train, df) of one cell from its seeds: the variance of the seed values minus what the seed × query
    noise alone adds to it (two-way ANOVA on the queries all seeds scored), or None with fewer than two seeds."""
    k = len(cell)
    if k < 2:
        return None
    values = np.array([seed_value(seed) for seed in cell])
    if not np.all(np.isfinite(values)):
        return None
    total = float(np.var(values, ddof=1))
    parts = [part for part in cell[0] if all(part in seed for seed in cell)]
    noise = 0.0
    for part in parts:
        common = sorted(set.intersection(*(set(seed[part]) for seed in cell)), key=str)
        n = len(common)
        if n < 2:
            continue
        matrix = np.array([[seed[part][q] for q in common] for seed in cell], dtype=float)
        residual = matrix - matrix.mean(axis=1, keepdims=True) - matrix.mean(axis=0, keepdims=True) + matrix.mean()
        interaction = float((residual ** 2).sum()) / ((k - 1) * (n - 1))
        noise += interaction / n / len(parts) ** 2
    return total - noise, k - 1


def pooled_seed_variance(cells: Sequence[Sequence[SeedScores]]) -> tuple[float, int] | None:
    """The training-seed variance of a cell's mean, pooled over ``cells`` (those with two or more seeds), and its
    degrees of freedom; None when no cell has two seeds.

    Each cell's estimate (``_training_variance``: the seed values' variance minus the seed × query noise, an
    ANOVA method-of-moments estimate, which is negative whenever the seeds differ less than the queries' noise
    alone makes them) is truncated at 0 *before* the df-weighted pooling: a variance component cannot be
    negative, and averaging negative estimates into the pool would cancel the seed noise that other cells show
    (Searle, Casella & McCulloch, *Variance Components*, 1992, §3.7 on truncating ANOVA estimates at zero).
    The truncation biases the pool upwards, so intervals err wide; with the df cap of ``linear_contrast`` the
    simulations in ``tests/test_report_stats.py`` keep the false "effect" rate at no true effect at or below 6% with
    2 and 3 seeds."""
    found = [v for v in (_training_variance(cell) for cell in cells) if v is not None]
    df = sum(d for _, d in found)
    if df == 0:
        return None
    return sum(max(0.0, v) * d for v, d in found) / df, df


def linear_contrast(
    terms: Sequence[tuple[float, Sequence[SeedScores]]],
    clusters: Mapping[tuple[str, Hashable], Hashable] | None = None,
    level: float = 0.95,
    seed_pool: Sequence[Sequence[SeedScores]] | None = None,
    pooled_variance: tuple[float, int] | None = None,
) -> Contrast:
    """``Σ coef_c · value_c`` over cells ``terms = [(coef_c, seeds_c)]`` with a CI from queries and seeds.

    A cell's value is the mean over its seeds of the mean over parts (tasks) of each part's mean score, which
    is the mean over parts of the seed-averaged per-query means. Query noise: each (cell, part, query)
    contributes ``coef · (ȳ_q − mean) / (parts · n)`` (ȳ_q: the query's seed-averaged score); contributions are
    summed per cluster (``clusters[(part, query)]``, else the (part, query) itself; so cells that answered the
    same queries are paired) and ``se_queries² = G/(G−1) · Σ_g (Σ contributions)²``. Seed noise:
    ``σ²_train · Σ coef_c² / k_c`` with σ²_train pooled over ``seed_pool`` (default: the cells of ``terms``;
    pass all cells of a grid to pool over it). The two add; the interval uses Student's t with
    Welch–Satterthwaite degrees of freedom, capped at the pooled seed variance's df. ``pooled_variance``
    (``pooled_seed_variance`` of the pool, computed
    once by a caller that tests many contrasts on one pool) replaces the pooling.
    """
    contributions: dict[Hashable, float] = {}
    diff = 0.0
    keys_by_term: list[dict[str, frozenset[Hashable]]] = []
    queries: set[tuple[str, Hashable]] = set()
    for coef, seeds in terms:
        means = _part_means(seeds)
        keys_by_term.append({part: frozenset(by_query) for part, by_query in means.items()})
        count = len(means)
        for part, by_query in means.items():
            n = len(by_query)
            if n == 0:
                continue
            mean = sum(by_query.values()) / n
            diff += coef * mean / count
            scale = coef / (count * n)
            for query, score in by_query.items():
                key = (part, query)
                queries.add(key)
                label = clusters.get(key, key) if clusters else key
                contributions[label] = contributions.get(label, 0.0) + scale * (score - mean)
    groups = len(contributions)
    sum_sq = sum(v * v for v in contributions.values())
    se_queries = math.sqrt(sum_sq * groups / (groups - 1)) if groups > 1 else math.nan
    pooled = pooled_variance or pooled_seed_variance(seed_pool if seed_pool is not None else [seeds for _, seeds in terms])
    se_seeds = None
    if pooled is not None:
        se_seeds = math.sqrt(pooled[0] * sum(coef * coef / len(seeds) for coef, seeds in terms if seeds))
    se = math.sqrt(se_queries ** 2 + (se_seeds or 0.0) ** 2)
    df_queries = groups - 1 if groups > 1 else None
    if se_seeds and pooled is not None and df_queries:
        # Welch–Satterthwaite, capped at the seed variance's own df: with few seeds the approximation alone calls
        # up to 6.4% "effect" at no true effect (3 seeds, 2,000 simulated grids); the cap, the conservative choice of
        # Welch's test (the smaller group's df; Moore, McCabe & Craig, *Introduction to the Practice of Statistics*,
        # §7.2), keeps it at 0.9–2.8% with 2 seeds and 2.5–5.2% with 3 (tests/test_report_stats.py).
        df: float | None = min(se ** 4 / (se_queries ** 4 / df_queries + se_seeds ** 4 / pooled[1]), float(pooled[1]))
    else:
        df = float(df_queries) if df_queries else None
    half = _quantile(0.5 + level / 2, df) * se
    paired = all(keys == keys_by_term[0] for keys in keys_by_term)
    return Contrast(diff=diff, se=se, se_queries=se_queries, se_seeds=se_seeds, df=df, ci_low=diff - half,
                    ci_high=diff + half, p_value=_p_value(diff, se, df), n=len(queries), clusters=groups,
                    seeds=min((len(seeds) for _, seeds in terms), default=0), paired=paired, level=level)


def estimate_difference(a: Estimate, b: Estimate, level: float = 0.95) -> Contrast | None:
    """``b − a`` of two table Estimates (reported values) with the same noise model as ``linear_contrast``:
    cluster-robust over their per-query scores (parts with the same query-set key are paired), plus each
    cell's own between-seed variance (``var(seed values) / k``). None when either has no per-sample scores."""
    if not a.parts or not b.parts:
        return None
    labels_of: dict[Hashable, tuple[Hashable, ...]] = {**a.clusters, **b.clusters}
    contributions: dict[Hashable, float] = {}
    keys: dict[Hashable, int] = {}
    for sign, estimate in ((-1.0, a), (1.0, b)):
        for weight, scores, key in estimate.parts:
            index = keys.setdefault(key, len(keys))
            labels = labels_of.get(key)
            residual = sign * weight * (scores - scores.mean()) / len(scores)
            for i, value in enumerate(residual):
                label = labels[i] if labels is not None and labels[i] is not None else (index, i)
                contributions[label] = contributions.get(label, 0.0) + float(value)
    groups = len(contributions)
    sum_sq = sum(v * v for v in contributions.values())
    se_queries = math.sqrt(sum_sq * groups / (groups - 1)) if groups > 1 else math.nan
    seed_terms = [(float(np.var(e.seed_values, ddof=1)) / len(e.seed_values), len(e.seed_values) - 1)
                  for e in (a, b) if len(e.seed_values) > 1]
    se_seeds = math.sqrt(sum(v for v, _ in seed_terms)) if seed_terms else None
    se = math.sqrt(se_queries ** 2 + (se_seeds or 0.0) ** 2)
    df: float | None = float(groups - 1) if groups > 1 else None
    if seed_terms and df:
        denominator = se_queries ** 4 / df + sum(v * v / d for v, d in seed_terms)
        df = se ** 4 / denominator if denominator > 0 else df
    diff = b.value - a.value
    half = _quantile(0.5 + level / 2, df) * se
    seeds = min(len(a.seed_values), len(b.seed_values))
    return Contrast(diff=diff, se=se, se_queries=se_queries, se_seeds=se_seeds, df=df, ci_low=diff - half,
                    ci_high=diff + half, p_value=_p_value(diff, se, df), n=a.n + b.n, clusters=groups, seeds=seeds,
                    paired=set(k for *_, k in a.parts) == set(k for *_, k in b.parts), level=level)


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Contrast | None:
    """``mean(b) − mean(a)`` of two sets of per-seed values (no per-sample scores: the training loss) by Welch's
    t-test; None with fewer than two values on either side."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = float(np.var(a, ddof=1)) / len(a), float(np.var(b, ddof=1)) / len(b)
    se = math.sqrt(va + vb)
    df = se ** 4 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1)) if se > 0 else None
    diff = float(np.mean(b) - np.mean(a))
    half = _quantile(0.5 + level / 2, df) * se
    return Contrast(diff=diff, se=se, se_queries=math.nan, se_seeds=se, df=df, ci_low=diff - half, ci_high=diff + half,
                    p_value=_p_value(diff, se, df), n=0, clusters=0, seeds=min(len(a), len(b)), paired=False, level=level)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order; NaN stays NaN and does not count towards m)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(order)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def verdict(p_adjusted: float, p_value: float, alpha: float = 0.05) -> str:
    """**effect** when the multiplicity-adjusted p is below ``alpha``; **direction, not significant** when only
    the contrast's own p is (its 95% CI excludes 0, but not after correcting for the report's other contrasts);
    else **no detectable effect** (read it with the minimum detectable effect)."""
    if not math.isnan(p_adjusted) and p_adjusted < alpha:
        return EFFECT
    if not math.isnan(p_value) and p_value < alpha:
        return DIRECTION
    return NO_EFFECT


def decimals_for(half_width: float | None, largest: int = 3) -> int:
    """How many decimals a value with a 95% interval of ``half_width`` supports: the position of the half-width's
    first significant digit (one more when that digit is 1), between 0 and ``largest``."""
    if half_width is None or not math.isfinite(half_width) or half_width <= 0:
        return largest
    exponent = math.floor(math.log10(half_width))
    leading = int(half_width / 10 ** exponent + 1e-9)
    decimals = -exponent + (1 if leading == 1 else 0)
    return max(0, min(largest, decimals))
