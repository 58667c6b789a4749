"""report/stats.py: paired and clustered differences against hand-computed values, seed-aware contrasts, Holm,
power, and simulations (no true effect: at most 6% called "effect" with 2 and 3 seeds; a large effect: nearly all)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmbench_cli.report import stats

Z975 = 1.959963984540054


def test_paired_difference_by_hand_without_clusters() -> None:
    a = {"q1": 1.0, "q2": 0.0, "q3": 1.0, "q4": 0.0, "only-a": 1.0}
    b = {"q1": 1.0, "q2": 1.0, "q3": 1.0, "q4": 1.0, "only-b": 0.0}
    found = stats.paired_difference(a, b)
    # d = [0, 1, 0, 1]: diff 0.5, var(d, ddof=1) = 1/3, se = sqrt(1/3 / 4) = sqrt(1/12)
    se = math.sqrt(1 / 12)
    assert found["n"] == 4
    assert found["diff"] == pytest.approx(0.5)
    assert found["se"] == pytest.approx(se)
    assert found["ci_low"] == pytest.approx(0.5 - Z975 * se) and found["ci_high"] == pytest.approx(0.5 + Z975 * se)
    assert found["p_value"] == pytest.approx(0.0832645, abs=1e-6)  # 2 (1 − Φ(√3))
    assert set(found) == {"diff", "se", "ci_low", "ci_high", "p_value", "n"}


def test_paired_difference_by_hand_with_clusters() -> None:
    a = {"q1": 1.0, "q2": 0.0, "q3": 1.0, "q4": 0.0}
    b = {"q1": 1.0, "q2": 1.0, "q3": 1.0, "q4": 1.0}
    # residuals d − diff = [−.5, .5, −.5, .5]; clusters A = {q1, q3} sums to −1, B = {q2, q4} to +1
    found = stats.paired_difference(a, b, clusters={"q1": "A", "q2": "B", "q3": "A", "q4": "B"})
    se = math.sqrt(1 + 1) / 4
    assert found["se"] == pytest.approx(se)
    assert found["ci_high"] - found["diff"] == pytest.approx(Z975 * se)
    assert found["p_value"] == pytest.approx(0.1572992, abs=1e-6)  # 2 (1 − Φ(√2))
    # clusters whose residuals cancel: the difference is the same in every cluster, se 0, p 0
    same = stats.paired_difference(a, b, clusters={"q1": "A", "q2": "A", "q3": "B", "q4": "B"})
    assert same["se"] == 0.0 and same["p_value"] == 0.0
    # a level other than 95%
    wide = stats.paired_difference(a, b, level=0.99)
    assert wide["ci_high"] - wide["diff"] == pytest.approx(2.5758293 * math.sqrt(1 / 12), rel=1e-6)


def test_paired_difference_textbook_example() -> None:
    """Student's sleep data (Cushny & Peebles), the paired-t textbook example: mean 1.58, sd 1.2300, se 0.3890."""
    drug1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    drug2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    found = stats.paired_difference(dict(enumerate(drug1)), dict(enumerate(drug2)))
    assert found["diff"] == pytest.approx(1.58) and found["se"] == pytest.approx(0.3889587, rel=1e-6)
    assert found["n"] == 10


def test_paired_difference_edge_cases() -> None:
    assert math.isnan(stats.paired_difference({"a": 1.0}, {"b": 1.0})["diff"])
    equal = stats.paired_difference({"a": 1.0, "b": 0.0}, {"a": 1.0, "b": 0.0})
    assert equal["diff"] == 0.0 and equal["p_value"] == 1.0


def test_linear_contrast_reduces_to_the_paired_difference() -> None:
    rng = np.random.default_rng(0)
    a = {f"q{i}": float(v) for i, v in enumerate(rng.random(50))}
    b = {f"q{i}": float(v) for i, v in enumerate(rng.random(50) + 0.1)}
    paired = stats.paired_difference(a, b)
    contrast = stats.linear_contrast([(-1.0, [{"task": a}]), (1.0, [{"task": b}])])
    assert contrast.diff == pytest.approx(paired["diff"])
    assert contrast.se == pytest.approx(paired["se"])  # G/(G−1) Σ residual² / n² = var(d, ddof=1) / n
    assert contrast.paired and contrast.n == 50 and contrast.seeds == 1 and contrast.se_seeds is None
    images = {("task", f"q{i}"): i // 5 for i in range(50)}
    clustered = stats.linear_contrast([(-1.0, [{"task": a}]), (1.0, [{"task": b}])], clusters=images)
    by_spec = stats.paired_difference(a, b, clusters={f"q{i}": i // 5 for i in range(50)})
    assert clustered.clusters == 10
    assert clustered.se == pytest.approx(by_spec["se"] * math.sqrt(10 / 9))  # the G/(G−1) small-sample factor


def test_linear_contrast_weights_tasks_equally_and_adds_seed_variance() -> None:
    # two tasks of different sizes: the family value is the mean of the two task means
    seed = {"t1": {"a": 1.0, "b": 0.0}, "t2": {"x": 1.0, "y": 1.0, "z": 1.0, "w": 1.0}}
    assert stats.seed_value(seed) == pytest.approx(0.75)
    # three seeds per cell whose means differ by a constant per seed (no seed × query noise)
    def cell(level: float, offsets: list[float]) -> list[dict]:
        return [{"t": {f"q{i}": level + o + 0.01 * i for i in range(10)}} for o in offsets]
    base, other = cell(0.0, [-1.0, 0.0, 1.0]), cell(2.0, [-1.0, 0.0, 1.0])
    contrast = stats.linear_contrast([(-1.0, base), (1.0, other)])
    assert contrast.diff == pytest.approx(2.0)
    # seed variance 1 per cell, 3 seeds each: se_seeds² = 1/3 + 1/3; queries add nothing (same pattern)
    assert contrast.se_seeds == pytest.approx(math.sqrt(2 / 3))
    assert contrast.se_queries == pytest.approx(0.0, abs=1e-12)
    assert contrast.df == pytest.approx(4.0)  # pooled over two cells with 2 df each
    assert contrast.seeds == 3
    half = contrast.ci_high - contrast.diff
    assert half == pytest.approx(2.7764451 * math.sqrt(2 / 3), rel=1e-6)  # t(0.975, 4)


def test_holm_by_hand() -> None:
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(adjusted[4])


def test_minimum_detectable_effect_and_verdicts() -> None:
    assert stats.minimum_detectable_effect(1.0) == pytest.approx(1.959964 + 0.841621, rel=1e-6)
    assert stats.minimum_detectable_effect(2.0, df=10) == pytest.approx(2 * (2.228139 + 0.879058), rel=1e-5)
    assert stats.verdict(0.01, 0.001) == stats.EFFECT
    assert stats.verdict(0.2, 0.01) == stats.DIRECTION
    assert stats.verdict(0.9, 0.3) == stats.NO_EFFECT
    assert [stats.decimals_for(w) for w in (54, 12, 5.4, 1.6, 0.35, 0.12, 0.0004, None)] == [0, 0, 0, 1, 1, 2, 3, 3]


def test_estimate_difference_pairs_queries_and_adds_seed_spread() -> None:
    ids = {f"q{i}": float(i % 2) for i in range(40)}
    better = {key: 1.0 for key in ids}
    a, b = stats.from_scores(0.5, ids), stats.from_scores(1.0, better)
    found = stats.estimate_difference(a, b)
    by_spec = stats.paired_difference(ids, better)
    assert found.diff == pytest.approx(0.5) and found.se == pytest.approx(by_spec["se"]) and found.paired
    assert found.p_value < 1e-6
    # two seeds per cell that disagree a lot: the same query-level difference is no longer significant
    spread_a = stats.mean_of([stats.from_scores(0.1, ids), stats.from_scores(0.9, ids)], pool_seeds=True)
    spread_b = stats.mean_of([stats.from_scores(0.4, better), stats.from_scores(1.6, better)], pool_seeds=True)
    noisy = stats.estimate_difference(spread_a, spread_b)
    assert noisy.se_seeds is not None and noisy.p_value > 0.05
    assert stats.estimate_difference(stats.from_scores(1.0, None), b) is None


# ---------------------------------------------------------------------------------------------------------------
# Simulations: the verdicts are calibrated where their assumptions hold.

IMAGES, QUESTIONS, SEEDS = 40, 3, 3


def _simulate_cell(rng: np.random.Generator, level: float, image_effect: np.ndarray, train_sd: float,
                   query_base: np.ndarray, seeds_per_cell: int = SEEDS) -> list[dict]:
    """One cell's seeds: per-query scores = level + query difficulty + this cell's image effect + seed offset + noise."""
    seeds = []
    for _ in range(seeds_per_cell):
        offset = rng.normal(0, train_sd)
        noise = rng.normal(0, 1.0, IMAGES * QUESTIONS)
        scores = level + query_base + np.repeat(image_effect, QUESTIONS) + offset + noise
        seeds.append({"vqa": {f"img{i // QUESTIONS}:q{i % QUESTIONS}": float(s) for i, s in enumerate(scores)}})
    return seeds


CLUSTERS = {("vqa", f"img{i // QUESTIONS}:q{i % QUESTIONS}"): f"img{i // QUESTIONS}" for i in range(IMAGES * QUESTIONS)}


def _called_effect(true_effect: float, trials: int, seed: int, **kwargs: object) -> dict[str, float]:
    """Share of trials called "effect" (one contrast: Holm over m=1 is the raw p) by the full model and by two
    naive ones (no seed noise; no clustering)."""
    rng = np.random.default_rng(seed)
    hits = {"full": 0, "queries only": 0, "unclustered": 0}
    for _ in range(trials):
        query_base = rng.normal(0, 1.0, IMAGES * QUESTIONS)
        cells = [_simulate_cell(rng, level, rng.normal(0, 0.8, IMAGES), 0.25, query_base)
                 for level in (0.0, true_effect)]
        terms = [(-1.0, cells[0]), (1.0, cells[1])]
        full = stats.linear_contrast(terms, clusters=CLUSTERS)
        hits["full"] += stats.verdict(stats.holm([full.p_value])[0], full.p_value) == stats.EFFECT
        hits["queries only"] += stats.linear_contrast(terms, clusters=CLUSTERS, seed_pool=[]).p_value < 0.05
        hits["unclustered"] += stats.linear_contrast(terms).p_value < 0.05
    return {name: count / trials for name, count in hits.items()}


def test_simulation_no_true_effect_calls_about_five_percent() -> None:
    rates = _called_effect(0.0, trials=600, seed=1)
    # at most 6%; with the seed variance pooled over just these two cells (4 df) the capped df is conservative (~1.5%)
    assert 0.005 <= rates["full"] <= 0.06, rates
    # ignoring either source of noise calls far more false effects: both corrections are needed
    assert rates["queries only"] > 0.1 and rates["unclustered"] > rates["full"] + 0.015, rates


def test_simulation_large_effect_is_nearly_always_found() -> None:
    rates = _called_effect(1.5, trials=200, seed=2)
    assert rates["full"] >= 0.95, rates


@pytest.mark.parametrize("seeds_per_cell", [2, 3])
@pytest.mark.parametrize("train_sd", [0.02, 0.25])
def test_simulation_grid_pool_with_truncated_cell_variances_stays_calibrated(seeds_per_cell: int,
                                                                            train_sd: float) -> None:
    """A grid of four cells at no true effect, the seed variance pooled over all four as a report does, each cell's
    estimate truncated at 0 before pooling: "effect" is called at most 6% of the time with 2 and 3 seeds, whether the
    seed noise is tiny (most cells' estimates negative before truncation) or comparable to the query noise."""
    rng = np.random.default_rng(10 * seeds_per_cell + int(train_sd * 100))
    trials, hits = 600, 0
    for _ in range(trials):
        query_base = rng.normal(0, 1.0, IMAGES * QUESTIONS)
        cells = [_simulate_cell(rng, 0.0, rng.normal(0, 0.8, IMAGES), train_sd, query_base, seeds_per_cell)
                 for _ in range(4)]
        pooled = stats.pooled_seed_variance(cells)
        result = stats.linear_contrast([(-1.0, cells[0]), (1.0, cells[1])], clusters=CLUSTERS, pooled_variance=pooled)
        hits += stats.verdict(result.p_value, result.p_value) == stats.EFFECT
    assert hits / trials <= 0.06, (seeds_per_cell, train_sd, hits / trials)


def test_pooled_seed_variance_truncates_each_cell_before_pooling() -> None:
    """A cell whose seeds agree more than query noise allows (a negative ANOVA estimate) adds 0, not a negative
    amount that would cancel another cell's seed noise."""
    rng = np.random.default_rng(4)
    query_base = rng.normal(0, 1.0, IMAGES * QUESTIONS)
    noisy = _simulate_cell(rng, 0.0, np.zeros(IMAGES), 1.0, query_base)
    quiet = [{"vqa": dict(noisy[0]["vqa"])} for _ in range(SEEDS)]  # identical seeds: estimate 0 − noise share
    own = [stats._training_variance(cell) for cell in (noisy, quiet)]
    assert own[0][0] > 0 and own[1][0] <= 0
    pooled = stats.pooled_seed_variance([noisy, quiet])
    assert pooled[0] == pytest.approx(own[0][0] * own[0][1] / (own[0][1] + own[1][1]))
    assert pooled[1] == own[0][1] + own[1][1]


def test_simulation_holm_keeps_the_family_wise_error_rate() -> None:
    rng = np.random.default_rng(3)
    trials, m, false = 2000, 20, 0
    for _ in range(trials):
        p_values = list(rng.random(m))
        false += any(p < 0.05 for p in stats.holm(p_values))
    assert false / trials <= 0.06
