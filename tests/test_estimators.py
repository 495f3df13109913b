"""Tests for approxql.estimators: moment merging, HT totals, delta-method coverage, quantiles."""

import math
import re

import numpy as np
import pytest

from approxql.estimators import (
    ConfidenceInterval,
    Estimate,
    Moments,
    delta_method,
    disc_index,
    estimate_totals,
    feature_covariance,
    make_estimates,
    quantile_estimate,
    quantile_interval,
    sample_quantile,
    woodruff_quantile,
)

Z95 = 1.959964
REPS = 400
N_POP = 20_000


# ---------------------------------------------------------------- moments


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_equals_from_rows_any_split(seed):
    rng = np.random.default_rng(seed)
    z = np.column_stack([np.ones(1000), rng.normal(5, 2, 1000), rng.exponential(3, 1000)])
    cuts = np.sort(rng.choice(np.arange(1, 1000), size=6, replace=False))
    merged = Moments.empty(3)
    for part in np.split(z, cuts):
        merged = merged.merge(Moments.from_rows(part))
    ref = Moments.from_rows(z)
    assert merged.n == ref.n == 1000
    np.testing.assert_allclose(merged.mean, ref.mean, rtol=1e-13)
    np.testing.assert_allclose(merged.comoment, ref.comoment, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(merged.total, z.sum(axis=0), rtol=1e-12)


def test_merge_with_empty_is_identity_and_order_free():
    rng = np.random.default_rng(3)
    a = Moments.from_rows(rng.normal(size=(50, 2)))
    b = Moments.from_rows(rng.normal(size=(70, 2)))
    assert Moments.empty(2).merge(a) is a
    assert a.merge(Moments.empty(2)) is a
    ab, ba = a.merge(b), b.merge(a)
    np.testing.assert_allclose(ab.mean, ba.mean, rtol=1e-14)
    np.testing.assert_allclose(ab.comoment, ba.comoment, rtol=1e-12)


def test_merge_stable_at_large_offset():
    """Mean 1e9, std 1: merged moments must match float64 moments of the shifted data."""
    rng = np.random.default_rng(4)
    shift = np.array([1e9, -3e9])
    dev = rng.normal(0.0, 1.0, size=(20_000, 2)) @ np.array([[1.0, 0.5], [0.0, 1.0]])
    z = shift + dev
    merged = Moments.empty(2)
    for part in np.array_split(z, 37):  # also uneven increments
        merged = merged.merge(Moments.from_rows(part))
    ref = Moments.from_rows(z - shift)  # centered data: computed at full precision
    # A mean near 1e9 is itself only representable to ~1e-7, which bounds the merge at ~1e-8 relative;
    # raw sums of squares would be off by a factor ~100 here.
    np.testing.assert_allclose(merged.comoment, ref.comoment, rtol=1e-7)
    np.testing.assert_allclose(merged.mean - shift, ref.mean, atol=1e-6)


def test_quad_matches_explicit_sum_of_outer_products():
    rng = np.random.default_rng(5)
    z = rng.normal(3, 1, size=(200, 3))
    m = Moments.from_rows(z)
    J = rng.normal(size=(2, 3))
    np.testing.assert_allclose(m.quad(J), J @ (z.T @ z) @ J.T, rtol=1e-10)


def test_from_covar_pop_matches_from_rows():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(100, 2))
    m = Moments.from_covar_pop(100, z.mean(axis=0), np.cov(z.T, ddof=0))
    np.testing.assert_allclose(m.comoment, Moments.from_rows(z).comoment, rtol=1e-12)
    assert Moments.from_covar_pop(0, [None, None], [[None, None], [None, None]]).n == 0


# ---------------------------------------------------------------- totals: exactness and stability


def test_full_sample_is_exact():
    rng = np.random.default_rng(7)
    x = rng.lognormal(0, 1, 1000)
    z = np.column_stack([np.ones_like(x), x, x * x])
    m = Moments.from_rows(z)
    T, C = estimate_totals(m, 1.0)
    np.testing.assert_allclose(T, z.sum(axis=0), rtol=1e-12)
    assert np.all(C == 0.0)
    vals, cov = feature_covariance(lambda t: [t[1] / t[0], t[1], (t[2] - t[1] ** 2 / t[0]) / (t[0] - 1)], m, 1)
    np.testing.assert_allclose(vals, [x.mean(), x.sum(), x.var(ddof=1)], rtol=1e-9)
    assert np.all(cov == 0.0)
    est = make_estimates(vals, cov, support=m.n, exact=True)
    assert all(e.exact and e.stderr == 0.0 for e in est)
    assert est[0].interval() == ConfidenceInterval(est[0].value, est[0].value)


def test_avg_variance_stable_at_large_offset():
    """AVG of values around 1e9 with std 1: variance must equal (1-p) M_xx / n^2 (the exact linearization)."""
    rng = np.random.default_rng(8)
    for offset, rel in ((1e6, 1e-6), (1e9, 1e-6), (1e12, 1e-2)):
        x = offset + rng.normal(0, 1, 5000)
        m = Moments.from_rows(np.column_stack([np.ones_like(x), x]))
        p = 0.1
        _, cov = feature_covariance(lambda t: t[1] / t[0], m, p)
        expected = (1 - p) * m.comoment[1, 1] / m.n**2
        assert cov[0, 0] == pytest.approx(expected, rel=rel), offset


def test_stddev_with_offset_matches_shifted():
    """STDDEV of values ~1000 +- 1: finite-difference steps must not leave sqrt's domain."""
    rng = np.random.default_rng(9)
    x = 1000.0 + rng.normal(0, 1, 5000)

    def g(t):
        v = (t[2] - t[1] ** 2 / t[0]) / (t[0] - 1)
        return [v, np.sqrt(v)]

    def fc(y):
        return feature_covariance(g, Moments.from_rows(np.column_stack([np.ones_like(y), y, y * y])), 0.2)

    (v1, c1), (v2, c2) = fc(x), fc(x - 1000.0)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)
    np.testing.assert_allclose(c1, c2, rtol=1e-2)


def test_delta_method_jacobian_accuracy():
    """delta_method on known Jacobians: ratio and sqrt."""
    T = np.array([4.0, 9.0])
    cov = np.array([[2.0, 0.3], [0.3, 1.0]])
    vals, out = delta_method(lambda t: [t[0] / t[1], np.sqrt(t[1])], T, cov)
    J = np.array([[1 / 9.0, -4 / 81.0], [0.0, 0.5 / 3.0]])
    np.testing.assert_allclose(vals, [4 / 9, 3.0])
    np.testing.assert_allclose(out, J @ cov @ J.T, rtol=1e-8)


def test_undefined_feature_gives_nan_not_error():
    vals, cov = feature_covariance(lambda t: t[1] / t[0], Moments.empty(2), 0.5)
    assert np.isnan(vals).all() and np.isnan(cov).all()
    vals, cov = feature_covariance(lambda t: [t[1] / t[0], t[1]], Moments.from_rows(np.zeros((3, 2))), 0.5)
    assert np.isnan(vals[0]) and vals[1] == 0.0
    assert np.isnan(cov[0]).all() and np.isnan(cov[:, 0]).all() and cov[1, 1] == 0.0
    est = make_estimates(vals, cov, support=3, exact=False)
    assert math.isnan(est[0].stderr) and math.isnan(est[0].interval().low)


# ---------------------------------------------------------------- coverage by simulation


def _coverage(z_pop, g, truth, p, seed, reps=REPS, increments=1):
    """Fraction of Bernoulli(p) samples whose 95% interval covers truth, and the estimates / covariances."""
    rng = np.random.default_rng(seed)
    hits, values, covs = 0, [], []
    for _ in range(reps):
        z = z_pop[rng.random(z_pop.shape[0]) < p]
        m = Moments.empty(z_pop.shape[1])
        for part in np.array_split(z, increments):
            m = m.merge(Moments.from_rows(part))
        v, c = feature_covariance(g, m, p)
        hits += np.all(np.abs(v - truth) <= Z95 * np.sqrt(np.diag(c)))
        values.append(v)
        covs.append(c)
    return hits / reps, np.array(values), np.array(covs)


@pytest.fixture(scope="module")
def lognormal_pop():
    return np.random.default_rng(100).lognormal(0.0, 1.0, N_POP)


@pytest.mark.parametrize(
    "name, g, truth_fn",
    [
        ("avg", lambda t: t[1] / t[0], lambda x: x.mean()),
        ("sum", lambda t: t[1], lambda x: x.sum()),
        ("count", lambda t: t[0], lambda x: float(x.size)),
    ],
)
def test_coverage_lognormal(lognormal_pop, name, g, truth_fn):
    x = lognormal_pop
    z = np.column_stack([np.ones_like(x), x])
    cov_rate, _, _ = _coverage(z, g, truth_fn(x), p=0.05, seed=11, increments=3)
    print(f"coverage {name}: {cov_rate:.3f}")
    assert 0.92 <= cov_rate <= 0.98, (name, cov_rate)


def _var(t):
    return (t[2] - t[1] ** 2 / t[0]) / (t[0] - 1)


@pytest.mark.parametrize(
    "name, g, truth_fn",
    [
        ("var_samp", _var, lambda x: x.var(ddof=1)),
        ("stddev_samp", lambda t: np.sqrt(_var(t)), lambda x: x.std(ddof=1)),
    ],
)
def test_coverage_variance(name, g, truth_fn):
    x = np.random.default_rng(101).normal(3.0, 2.0, N_POP)
    z = np.column_stack([np.ones_like(x), x, x * x])
    cov_rate, _, _ = _coverage(z, g, truth_fn(x), p=0.2, seed=12)
    print(f"coverage {name}: {cov_rate:.3f}")
    assert 0.92 <= cov_rate <= 0.98, (name, cov_rate)


def test_coverage_ratio_of_sums():
    rng = np.random.default_rng(102)
    b = rng.lognormal(0.0, 0.7, N_POP)
    a = 2.0 * b + rng.lognormal(0.0, 1.0, N_POP)
    z = np.column_stack([a, b])
    cov_rate, _, _ = _coverage(z, lambda t: t[0] / t[1], a.sum() / b.sum(), p=0.05, seed=13)
    print(f"coverage sum(a)/sum(b): {cov_rate:.3f}")
    assert 0.92 <= cov_rate <= 0.98


def test_covariance_between_features(lognormal_pop):
    """Empirical covariance of (AVG, SUM) across samples vs the mean predicted covariance."""
    x = lognormal_pop
    z = np.column_stack([np.ones_like(x), x])
    _, values, covs = _coverage(z, lambda t: [t[1] / t[0], t[1]], np.array([x.mean(), x.sum()]), p=0.05, seed=14)
    empirical = np.cov(values.T)
    predicted = covs.mean(axis=0)
    ratio = empirical / predicted
    print(f"empirical/predicted covariance ratios: {ratio.ravel()}")
    assert predicted[0, 1] > 0
    assert np.all((ratio > 1 / 1.5) & (ratio < 1.5)), ratio


def test_coverage_cluster_sampling():
    """Blocks of 50 rows with a block random effect and a filter; Bernoulli over blocks."""
    rng = np.random.default_rng(103)
    n_blocks, size = N_POP // 50, 50
    effect = np.repeat(rng.normal(0.0, 3.0, n_blocks), size)
    x = 10.0 + effect + rng.lognormal(0.0, 1.0, N_POP)
    keep_prob = np.repeat(rng.uniform(0.1, 0.9, n_blocks), size)
    match = rng.random(N_POP) < keep_prob
    block = np.repeat(np.arange(n_blocks), size)
    z_blocks = np.column_stack(
        [np.bincount(block, weights=match, minlength=n_blocks), np.bincount(block, weights=match * x, minlength=n_blocks)]
    )
    truth = x[match].mean()
    cov_rate, _, _ = _coverage(z_blocks, lambda t: t[1] / t[0], truth, p=0.2, seed=15)
    print(f"coverage cluster avg: {cov_rate:.3f}")
    assert 0.92 <= cov_rate <= 0.98


def test_coverage_quantile_median(lognormal_pop):
    x = lognormal_pop
    truth = np.quantile(x, 0.5)
    rng = np.random.default_rng(16)
    hits = 0
    for _ in range(REPS):
        est = quantile_estimate(x[rng.random(x.size) < 0.05], 0.5, p=0.05)
        ci = est.interval()
        hits += ci.low <= truth <= ci.high
    rate = hits / REPS
    print(f"coverage quantile median: {rate:.3f}")
    assert 0.92 <= rate <= 0.98


# ---------------------------------------------------------------- quantiles


def test_disc_index_matches_duckdb_examples():
    # (n, q, index) observed with duckdb 2.0 quantile_disc(x, <decimal literal>) over range(n)
    for n, q, idx in [(25, 0.28, 6), (100, 0.55, 54), (10, 0.75, 7), (4, 0.3, 1), (5, 0.25, 1), (1, 0.5, 0), (3, 0.0, 0), (3, 1.0, 2)]:
        assert disc_index(n, q) == idx, (n, q)


def test_disc_against_duckdb_if_available():
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    for n in (1, 2, 7, 25, 100, 333):
        for q in (0.0, 0.07, 0.28, 0.5, 0.56, 0.9, 1.0):
            got = con.execute(f"select quantile_disc(x, {q}), quantile_cont(x, {q}) from range({n}) t(x)").fetchone()
            v = np.arange(n, dtype=float)
            assert sample_quantile(v, q, "disc") == got[0], (n, q)
            assert sample_quantile(v, q, "cont") == pytest.approx(got[1], abs=1e-9), (n, q)


def test_quantile_interval_properties():
    v = np.arange(1.0, 101.0)
    ci = quantile_interval(v, 0.5)
    assert ci.low < 50.5 < ci.high and ci.high - ci.low < 25
    tiny = quantile_interval(np.array([1.0, 2.0]), 0.5)
    assert tiny.low == -math.inf and tiny.high == math.inf
    est = quantile_estimate(np.r_[v, np.nan], 0.5, p=0.5, method="disc")
    assert est.value == 50.0 and est.support == 100
    raw = quantile_interval(v, 0.5)
    # normal-equivalent: the wider side, so value +/- z * stderr contains the order-statistic interval
    wider = max(raw.high - est.value, est.value - raw.low)
    assert est.stderr == pytest.approx(math.sqrt(0.5) * wider / Z95, rel=1e-6)
    full = quantile_estimate(v, 0.9, p=1.0)
    assert full.exact and full.stderr == 0.0 and full.interval().low == full.value


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("p", [0, 1.5, -0.1, float("nan")])
def test_bad_p(p):
    m = Moments.from_rows(np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\]"):
        estimate_totals(m, p)
    with pytest.raises(ValueError, match="got"):
        feature_covariance(lambda t: t, m, p)
    with pytest.raises(ValueError, match="sampling rate p"):
        quantile_estimate(np.ones(3), 0.5, p=p)


def test_mismatched_shapes():
    with pytest.raises(ValueError, match=r"comoment must have shape \(3, 3\)"):
        Moments(2, np.zeros(3), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2 columns and Moments with 3 columns"):
        Moments.empty(2).merge(Moments.empty(3))
    with pytest.raises(ValueError, match=r"J must have shape \(m, 2\)"):
        Moments.empty(2).quad(np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"cov_T must have shape \(3, 3\)"):
        delta_method(lambda t: t, np.ones(3), np.eye(2))
    with pytest.raises(ValueError, match=r"z must have shape \(n, k\)"):
        Moments.from_rows(np.ones(5))
    with pytest.raises(ValueError, match="quantile q must be in"):
        quantile_estimate(np.ones(3), 1.5, p=0.5)
    with pytest.raises(ValueError, match="sorted ascending"):
        quantile_interval(np.array([2.0, 1.0]), 0.5)
    with pytest.raises(ValueError, match="confidence level"):
        Estimate(1.0, 0.1, False, 10).interval(95)


# ---------------------------------------------------------------- Woodruff (cluster-sampled quantiles)

N_CLUSTERS, CLUSTER_SIZE = 3000, 40


@pytest.fixture(scope="module")
def clustered_pop():
    """3000 clusters of 40 rows, value = cluster effect N(0, 1) + lognormal(0, 0.5) noise (rows sorted by cluster)."""
    rng = np.random.default_rng(104)
    effect = np.repeat(rng.normal(0.0, 1.0, N_CLUSTERS), CLUSTER_SIZE)
    x = effect + rng.lognormal(0.0, 0.5, N_CLUSTERS * CLUSTER_SIZE)
    return x, np.repeat(np.arange(N_CLUSTERS), CLUSTER_SIZE)


@pytest.mark.parametrize("q, seed", [(0.5, 17), (0.9, 18)])
def test_woodruff_coverage_cluster_sampling(clustered_pop, q, seed):
    """Bernoulli(0.05) over clusters: Woodruff covers; the row-level order-statistic interval does not."""
    x, cid = clustered_pop
    truth = np.quantile(x, q, method="linear")
    rng = np.random.default_rng(seed)
    hits_w = hits_rows = 0
    for _ in range(REPS):
        keep = np.repeat(rng.random(N_CLUSTERS) < 0.05, CLUSTER_SIZE)
        est = woodruff_quantile(x[keep], cid[keep], q, p=0.05)
        ci = est.interval()
        assert ci.low <= est.value <= ci.high and math.isfinite(ci.low) and math.isfinite(ci.high)
        assert est.stderr == pytest.approx(max(ci.high - est.value, est.value - ci.low) / Z95, rel=1e-6)
        assert est.clusters == np.unique(cid[keep]).size and est.support == keep.sum()
        hits_w += ci.low <= truth <= ci.high
        rows = quantile_interval(np.sort(x[keep]), q)
        hits_rows += rows.low <= truth <= rows.high
    rate_w, rate_rows = hits_w / REPS, hits_rows / REPS
    print(f"coverage woodruff q={q}: {rate_w:.3f}, row-level order statistics: {rate_rows:.3f}")
    assert 0.92 <= rate_w <= 0.98, rate_w
    assert rate_rows < 0.85, rate_rows


@pytest.mark.parametrize("q, seed", [(0.5, 19), (0.9, 20)])
def test_woodruff_coverage_singleton_clusters(q, seed):
    """Every row its own cluster (Bernoulli over rows) on heavy-tailed data."""
    x = np.random.default_rng(105).lognormal(0.0, 1.5, N_POP)
    ids = np.arange(N_POP)
    truth = np.quantile(x, q, method="linear")
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(REPS):
        keep = rng.random(N_POP) < 0.05
        ci = woodruff_quantile(x[keep], ids[keep], q, p=0.05).interval()
        hits += ci.low <= truth <= ci.high
    rate = hits / REPS
    print(f"coverage woodruff singleton clusters q={q}: {rate:.3f}")
    assert 0.92 <= rate <= 0.98, rate


def test_woodruff_singleton_clusters_reduce_to_binomial_variance():
    """With one row per cluster, Var(F) = (1 - p) R (1 - R) / n exactly (the p factors are right)."""
    rng = np.random.default_rng(106)
    v = rng.normal(size=500)
    p, q = 0.3, 0.37
    est = woodruff_quantile(v, np.arange(500) + 7, q, p=p)
    s = np.sort(v)
    r = np.mean(s <= est.value)
    half = Z95 * math.sqrt((1 - p) * r * (1 - r) / 500)
    assert est.value == sample_quantile(s, q)
    assert est.ci.low == pytest.approx(sample_quantile(s, q - half), rel=1e-5)
    assert est.ci.high == pytest.approx(sample_quantile(s, q + half), rel=1e-5)
    # Two identical rows per cluster carry the information of one: F's half-width is that of
    # 500 independent rows, sqrt(2) wider than 1000 independent rows would give.
    v2 = np.sort(np.repeat(v, 2))
    est2 = woodruff_quantile(v2, np.repeat(np.arange(500), 2), q, p=p)
    r2 = np.mean(v2 <= est2.value)
    half2 = Z95 * math.sqrt((1 - p) * r2 * (1 - r2) / 500)
    assert est2.ci.low == pytest.approx(sample_quantile(v2, q - half2), rel=1e-5)
    assert est2.ci.high == pytest.approx(sample_quantile(v2, q + half2), rel=1e-5)
    assert est2.clusters == 500 and est2.support == 1000


@pytest.mark.parametrize("method", ["cont", "disc"])
def test_woodruff_full_sample_is_exact(clustered_pop, method):
    x, cid = clustered_pop
    x = x.copy()
    x[::97] = np.nan  # NULLs are dropped
    clean = x[~np.isnan(x)]
    for q in (0.0, 0.28, 0.5, 0.9, 1.0):
        est = woodruff_quantile(x, cid, q, p=1.0, method=method)
        expected = np.quantile(clean, q, method="linear" if method == "cont" else "inverted_cdf")
        assert est.exact and est.stderr == 0.0
        assert est.value == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert est.interval() == ConfidenceInterval(est.value, est.value)
        assert est.support == clean.size and est.clusters == N_CLUSTERS


def test_woodruff_no_fake_bounds():
    rng = np.random.default_rng(107)
    v = rng.normal(size=200)
    cid = np.arange(200) // 20
    # The sample extremes cannot bound the population's.
    top = woodruff_quantile(v, cid, 1.0, p=0.1)
    assert top.ci.low == v.max() and top.ci.high == math.inf and top.stderr == math.inf
    bottom = woodruff_quantile(v, cid, 0.0, p=0.1)
    assert bottom.ci.low == -math.inf and bottom.ci.high >= bottom.value == v.min()
    # One cluster: no variance estimate, no interval.
    one = woodruff_quantile(v[:20], np.zeros(20, dtype=int), 0.5, p=0.1)
    assert one.ci == ConfidenceInterval(-math.inf, math.inf) and one.clusters == 1
    # Nothing sampled / only NULLs.
    empty = woodruff_quantile(np.array([np.nan, np.nan]), np.array([1, 2]), 0.5, p=0.1)
    assert math.isnan(empty.value) and math.isnan(empty.stderr) and empty.support == 0
    # Clusters holding only NULLs do not count.
    est = woodruff_quantile(np.r_[v, np.nan], np.r_[cid, 99], 0.5, p=0.1)
    assert est.clusters == 10 and est.support == 200


def test_woodruff_bad_input():
    v, c = np.ones(3), np.array([1, 1, 2])
    with pytest.raises(ValueError, match=r"one id per value \(3 values\), got shape \(2,\)"):
        woodruff_quantile(v, c[:2], 0.5, p=0.5)
    for p in (0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"sampling rate p must be in \(0, 1\], got " + re.escape(repr(p))):
            woodruff_quantile(v, c, 0.5, p=p)
    for q in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"quantile q must be in \[0, 1\], got " + re.escape(repr(q))):
            woodruff_quantile(v, c, q, p=0.5)
    with pytest.raises(ValueError, match="integer cluster ids, got 1.5"):
        woodruff_quantile(v, np.array([1.0, 1.5, 2.0]), 0.5, p=0.5)
    with pytest.raises(ValueError, match="integer cluster ids, got dtype <U1"):
        woodruff_quantile(v, np.array(["a", "b", "c"]), 0.5, p=0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        woodruff_quantile(v, c, 0.5, p=0.5, method="linear")
    with pytest.raises(ValueError, match="confidence level must be in \\(0, 1\\), got 95"):
        woodruff_quantile(v, c, 0.5, p=0.5, level=95)
