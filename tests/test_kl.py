"""kl_bound against the closed-form Gaussian KL (SCIENCE.md §4), the bound B of §4b and its
interval logic."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

import datasets_synth
from datasets_synth.references.wiener import WienerFilter
from theorybench import mse_curve
from theorybench.kl import (
    closing_term,
    gaussian_kl,
    kl_bound,
    tightest_references,
    trapezoid_error_weights,
    trapezoid_weights,
)


def exact_curve(filter_, sigmas, data_eigenvalues=None):
    d = filter_.eigenvalues.numel()
    return pd.DataFrame({"sigma": sigmas, "mse": [filter_.mse(s, data_eigenvalues) for s in sigmas],
                         "se": 0.0, "d": d})


@pytest.mark.parametrize("gammas", [(2.0, 1.0), (1.0, 3.0), (0.5, 2.5)])
def test_gaussian_identity_matches_closed_form(gammas):
    p = datasets_synth.get("gaussian", size=16, gamma=gammas[0])
    q = datasets_synth.get("gaussian", size=16, gamma=gammas[1])
    sigmas = np.geomspace(1e-3, 1e3, 600)
    mmse = exact_curve(WienerFilter(p.eigenvalues, p.mean), sigmas)
    model = exact_curve(WienerFilter(q.eigenvalues, q.mean, kind="upper"), sigmas, p.eigenvalues)
    data_variance = float(p.eigenvalues.sum())  # E‖x − mean‖², μ̂ = the data's mean
    result = kl_bound(model, {"exact": mmse}, sigma0=[0.01, 0.05, 0.2, 1.0],
                      data_variance=data_variance)
    for row in result.table.itertuples():
        closed = gaussian_kl(p.eigenvalues, q.eigenvalues, row.sigma0)
        assert closed > 0
        assert not row.clipped and row.clipped_nats == 0
        # grid up to σ_max = 1e3: the closing term is negligible, B_high ≈ B_low ≈ the KL
        assert row.closing == data_variance / (2 * 1e3**2) and row.closing < 1e-3 * closed
        assert math.isclose(row.kl_high, row.kl_low + row.closing, rel_tol=1e-12)
        assert abs(row.kl_low - closed) / closed < 0.01, (row.sigma0, row.kl_low, closed)
    no_closing = kl_bound(model, {"exact": mmse}, sigma0=[0.05]).table.iloc[0]
    assert math.isnan(no_closing.closing) and no_closing.kl_high == no_closing.kl_low


def sde_gaussian_kl(lam_p, lam_q, sigma0, sigma_max, offset):
    """KL(p_σ0 ‖ q_σ0) in nats, p = N(m, C_p), q = the law at σ0 of the reverse VE SDE driven
    by the score of N(m, C_q + σ²I) and started at π = N(m + offset, σ_max² I) (same
    eigenvectors; offset a scalar added to every pixel, i.e. to the DC eigenvector only).

    Per eigenvector, with τ = σ²: the variance obeys dv/dτ = 2v/(λ_q + τ) − 1, so
    v(τ0) = λ_q + τ0 − λ_q (λ_q + τ0)²/(λ_q + τmax)², and the mean offset shrinks by
    (λ_q + τ0)/(λ_q + τmax).
    """
    lp, lq = lam_p.double().flatten(), lam_q.double().flatten()
    t0, tm = sigma0**2, sigma_max**2
    v = lq + t0 - lq * (lq + t0) ** 2 / (lq + tm) ** 2
    r = (lp + t0) / v
    mean = torch.zeros_like(lp)
    mean[0] = offset * math.sqrt(lp.numel()) * (lq[0] + t0) / (lq[0] + tm)  # DC coefficient
    return float((0.5 * (r - 1 - torch.log(r)) + mean**2 / (2 * v)).sum())


@pytest.mark.parametrize("sigma_max", [0.3, 1.0, 5.0])
@pytest.mark.parametrize("offset", [0.0, 0.1])
def test_closing_term_bounds_the_gaussian_start_kl(sigma_max, offset):
    """KL(p_σmax ‖ N(μ̂, σ_max² I)) in closed form ≤ closing = E‖x − μ̂‖²/(2σ_max²) (§4b)."""
    p = datasets_synth.get("gaussian", size=16, gamma=2.0)
    lam = p.eigenvalues.double()
    data_variance = float(lam.sum()) + lam.numel() * offset**2  # E‖x − μ̂‖², μ̂ = m + offset
    zero = torch.zeros_like(lam)
    # with the mean matched the start KL is gaussian_kl against λ' = 0: Σ ½(r − 1 − ln r)
    exact = gaussian_kl(lam, zero, sigma_max) + lam.numel() * offset**2 / (2 * sigma_max**2)
    assert math.isclose(exact, sde_gaussian_kl(lam, zero, sigma_max, sigma_max, -offset),
                        rel_tol=1e-9)
    # the family's own closed form (Distribution.start_kl), the bound's exact first term
    assert math.isclose(p.start_kl(sigma_max, p.mean + offset), exact, rel_tol=1e-9)
    closing = closing_term(data_variance, sigma_max)
    assert math.isclose(closing, data_variance / (2 * sigma_max**2), rel_tol=1e-12)
    assert 0 < exact <= closing
    # equality for a point mass at m (all variance is the mean offset): the bound is tight
    if offset:
        point = sde_gaussian_kl(zero, zero, sigma_max, sigma_max, -offset)
        assert math.isclose(point, closing_term(lam.numel() * offset**2, sigma_max),
                            rel_tol=1e-9)
    with pytest.raises(ValueError, match="data_variance"):
        closing_term(-1.0, 1.0)


@pytest.mark.parametrize("gammas", [(2.0, 1.0), (1.0, 3.0), (0.5, 2.5)])
@pytest.mark.parametrize("sigma_max", [0.5, 2.0])
def test_b_high_bounds_the_gaussian_kl_of_a_mismatched_wiener_filter(gammas, sigma_max):
    """B_high ≥ KL(p_σ0 ‖ q_σ0) for q = the reverse SDE driven by the Wiener filter of a
    mismatched Gaussian, started at N(μ̂, σ_max² I) (Song et al. 2021 Thm 1, §4b)."""
    p = datasets_synth.get("gaussian", size=16, gamma=gammas[0])
    q = datasets_synth.get("gaussian", size=16, gamma=gammas[1])
    sigmas = np.geomspace(1e-3, sigma_max, 600)
    mmse = exact_curve(WienerFilter(p.eigenvalues, p.mean), sigmas)
    model = exact_curve(WienerFilter(q.eigenvalues, q.mean, kind="upper"), sigmas, p.eigenvalues)
    offset = 0.05  # the samplers' μ̂ = mean + 0.05 on every pixel
    data_variance = float(p.eigenvalues.sum()) + p.eigenvalues.numel() * offset**2
    table = kl_bound(model, {"exact": mmse}, sigma0=[0.01, 0.05, 0.2],
                     data_variance=data_variance).table
    for row in table.itertuples():
        kl_sde = sde_gaussian_kl(p.eigenvalues, q.eigenvalues, row.sigma0, sigma_max, offset)
        assert 0 < kl_sde <= row.kl_high, (row.sigma0, kl_sde, row.kl_high)
        # the grid integral is the identity's KL(σ0) − KL(σ_max) (§4); the closing term
        # is what makes B_high exceed the stationary KL here
        integral = row.kl_high - row.closing
        expected = (gaussian_kl(p.eigenvalues, q.eigenvalues, row.sigma0)
                    - gaussian_kl(p.eigenvalues, q.eigenvalues, sigma_max))
        assert abs(integral - expected) < 0.01 * expected + 1e-9
        assert row.kl_high >= gaussian_kl(p.eigenvalues, q.eigenvalues, row.sigma0)
        assert math.isclose(row.kl_low, integral, rel_tol=1e-12) and row.kl_low <= row.kl_high
    # with the start's KL exact (Distribution.start_kl) B is known up to the clipping: the
    # bound tightens by convexity's slack and still holds; both ends carry the exact term
    start = p.start_kl(sigma_max, p.mean + offset)
    tight = kl_bound(model, {"exact": mmse}, sigma0=[0.01, 0.05, 0.2], data_variance=data_variance,
                     start_kl=start).table
    assert tight.closing_exact.all() and not table.closing_exact.any()
    assert np.allclose(tight.closing, start) and start < table.closing.iloc[0]
    for loose, row in zip(table.itertuples(), tight.itertuples(), strict=True):
        kl_sde = sde_gaussian_kl(p.eigenvalues, q.eigenvalues, row.sigma0, sigma_max, offset)
        assert kl_sde <= row.kl_high < loose.kl_high
        assert math.isclose(row.kl_high - row.closing, loose.kl_high - loose.closing)
        assert math.isclose(row.kl_low, loose.kl_low + start)
    with pytest.raises(ValueError, match="start_kl"):
        kl_bound(model, {"exact": mmse}, start_kl=-1.0)


@pytest.mark.parametrize("start_kl", [None, 0.3])
def test_exact_reference_gives_one_value_despite_noise(start_kl):
    """With an exact MMSE (L = U) and a network that Monte Carlo noise puts below it at some
    σ, both ends clip MSE − MMSE at 0 (the true gap is ≥ 0, §4b): B_low = B_high, never an
    inverted interval."""
    p = datasets_synth.get("gaussian", size=8)
    sigmas = np.geomspace(0.01, 2.0, 25)
    mmse = exact_curve(WienerFilter(p.eigenvalues, p.mean), sigmas)
    noisy = mmse.assign(mse=mmse["mse"] * (1 + 0.02 * np.sin(np.arange(len(sigmas)))))
    table = kl_bound(noisy, {"exact": mmse}, sigma0=[0.01, 0.1], start_kl=start_kl).table
    assert table.clipped.all()
    assert np.allclose(table.kl_low, table.kl_high, rtol=1e-12)
    integrand = kl_bound(noisy, {"exact": mmse}).integrand
    assert (integrand.integrand_high >= 0).all()
    assert np.allclose(integrand.integrand_low, integrand.integrand_high)


def test_model_equal_to_data_gives_zero():
    p = datasets_synth.get("gaussian", size=8)
    sigmas = np.geomspace(0.01, 10, 50)
    curve = exact_curve(WienerFilter(p.eigenvalues, p.mean), sigmas)
    table = kl_bound(curve, {"exact": curve}).table
    assert np.allclose(table[["kl_low", "kl_high"]].to_numpy(), 0.0)
    # no σ0 asked (a partial run's per-σ grid may hold none): no rows, the same columns
    empty = kl_bound(curve, {"exact": curve}, sigma0=[])
    assert len(empty.table) == 0 and list(empty.table.columns) == list(table.columns)
    assert len(empty.integrand) == len(sigmas)


def test_constant_relative_gap_gives_its_log_length():
    """A network at MMSE + ε·σ² per pixel: the integrand d·(MSE − MMSE)/σ² = d·ε is constant
    in ln σ, so both ends equal d·ε·ln(σ_max/σ0) (the trapezoid is exact; no closing term
    without ``data_variance``)."""
    p = datasets_synth.get("gaussian", size=8)
    sigmas = np.geomspace(0.01, 10, 37)
    curve = exact_curve(WienerFilter(p.eigenvalues, p.mean), sigmas)
    eps = 0.02
    table = kl_bound(curve.assign(mse=curve.mse + eps * sigmas**2), {"exact": curve},
                     sigma0=[0.01, 0.1, 1.0]).table
    for row in table.itertuples():
        expected = 64 * eps * math.log(10 / row.sigma0)
        assert math.isclose(row.kl_low, expected, rel_tol=1e-9), (row.sigma0, row.kl_low)
        assert math.isclose(row.kl_high, expected, rel_tol=1e-9)


def test_trapezoid_weights_integrate_linear_functions_exactly():
    u = np.array([0.0, 0.5, 1.5, 3.0])
    h = 2.0 * u + 1.0
    for u0 in (0.0, 0.3, 1.5, 2.2):
        exact = (3.0**2 + 3.0) - (u0**2 + u0)
        assert math.isclose(trapezoid_weights(u, u0) @ h, exact, rel_tol=1e-12)


def test_bracket_interval_and_clipped_flag():
    sigmas = np.geomspace(0.1, 10, 20)
    base = pd.DataFrame({"sigma": sigmas, "se": 1e-4, "d": 100})
    net = base.assign(mse=0.5 * sigmas**2 / (1 + sigmas**2))
    lower = base.assign(mse=0.2 * sigmas**2 / (1 + sigmas**2))
    upper = base.assign(mse=0.6 * sigmas**2 / (1 + sigmas**2))  # above the network
    table = kl_bound(net, {"lower": lower, "upper": upper}, sigma0=[0.1, 1.0],
                     data_variance=5.0).table
    assert (table.kl_low == 0).all() and (table.kl_high > 0).all()  # clipped, never < 0
    assert table.clipped.all()
    assert (table.kl_low <= table.kl_high).all()
    # analytic: ∫ c σ²/(1+σ²) σ^-3 dσ from 1 to 10 = c/2 ln((1+σ²)/σ²)|... with c = 0.3·100
    exact_high = 0.3 * 100 * 0.5 * (math.log(2.0) - math.log(1.01))
    closing = 5.0 / (2 * 10.0**2)
    assert (table.closing == closing).all()
    assert abs(table.kl_high.iloc[1] - closing - exact_high) / exact_high < 0.01
    assert math.isclose(table.bits_high.iloc[1], table.kl_high.iloc[1] / (100 * math.log(2)))
    # the clipped part is the integral of U − MSE (c = 0.1·100) and its largest value
    exact_clipped = 0.1 * 100 * 0.5 * (math.log(2.0) - math.log(1.01))
    assert abs(table.clipped_nats.iloc[1] - exact_clipped) / exact_clipped < 0.01
    assert math.isclose(table.clipped_max.iloc[1], 0.1 * 100 * 100 / 101)


def test_network_beating_the_upper_bound_at_some_sigma_is_clipped_there_only():
    sigmas = np.geomspace(0.1, 10, 40)
    base = pd.DataFrame({"sigma": sigmas, "se": 0.0, "d": 10})
    net = base.assign(mse=np.full(40, 0.5))
    lower = base.assign(mse=np.full(40, 0.1))
    upper = base.assign(mse=np.where(sigmas < 1, 0.3, 0.7))  # below the net, then above
    result = kl_bound(net, {"lower": lower, "upper": upper}, sigma0=[0.1, 2.0])
    low, high = result.table.iloc[0], result.table.iloc[1]
    assert low.clipped and high.clipped and low.kl_low > 0 and high.kl_low == 0
    assert math.isclose(low.clipped_max, 2.0) and math.isclose(high.clipped_max, 2.0)
    assert (result.table[["kl_low", "clipped_nats"]].to_numpy() >= 0).all()
    assert math.isnan(low.closing)
    # B_low = ∫ max(0, MSE − U): only the σ < 1 part, 2·∫ σ^-3 dσ ≈ 2·(1/0.01 − 1)/2 = 99
    grid = result.integrand
    assert (grid.integrand_low >= 0).all() and (grid.gap_low < 0).any()
    assert np.allclose(grid.clipped, np.maximum(-grid.gap_low, 0))
    assert abs(low.kl_low - 99.0) / 99.0 < 0.1
    unclipped = kl_bound(net, {"lower": lower, "upper": base.assign(mse=0.3)},
                         sigma0=[0.1]).table.iloc[0]
    assert low.kl_low < unclipped.kl_low and not unclipped.clipped


def test_sigma_without_an_upper_bound_adds_nothing_and_clips_nothing():
    # U = +inf above a coarse reference grid (report.common.extend_monotone): no bound there
    sigmas = np.geomspace(0.1, 10, 20)
    base = pd.DataFrame({"sigma": sigmas, "se": 1e-3, "d": 10})
    net, lower = base.assign(mse=0.5), base.assign(mse=0.1)
    upper = base.assign(mse=np.where(sigmas < 5, 0.3, np.inf))
    for paired in (False, True):
        if paired:
            for curve in (net, lower, upper):
                curve.attrs["errors"] = np.repeat(curve["mse"].to_numpy()[:, None], 8, 1)
                curve.attrs["errors"][:, ::2] *= 1.1
        table = kl_bound(net, {"lower": lower, "upper": upper}, sigma0=[0.1]).table
        row = table.iloc[0]
        assert not row.clipped and row.clipped_nats == 0 and row.clipped_max == 0
        assert np.isfinite(table[["kl_low", "kl_high", "se_low", "se_high"]].to_numpy()).all()
        # as if U equalled the network there (a gap of 0, nothing clipped)
        level = upper.assign(mse=np.where(sigmas < 5, 0.3, 0.5))
        if paired:
            level.attrs["errors"] = np.where(np.isinf(upper.attrs["errors"]),
                                             net.attrs["errors"], upper.attrs["errors"])
        same = kl_bound(net, {"lower": lower, "upper": level}, sigma0=[0.1]).table.iloc[0]
        assert row.kl_low > 0 and math.isclose(row.kl_low, same.kl_low)
        assert math.isclose(row.kl_high, same.kl_high)


def test_swapped_bounds_are_refused():
    sigmas = np.geomspace(0.1, 10, 10)
    base = pd.DataFrame({"sigma": sigmas, "se": 1e-3, "d": 10})
    net = base.assign(mse=0.5)
    lower, upper = base.assign(mse=0.2), base.assign(mse=0.6)
    kl_bound(net, {"lower": lower, "upper": upper})  # the right way round: accepted
    with pytest.raises(ValueError, match="swapped") as info:
        kl_bound(net, {"lower": upper, "upper": lower})
    assert "\n" not in str(info.value)
    # within 3 standard errors: noise, accepted
    kl_bound(net, {"lower": base.assign(mse=0.605), "upper": upper})
    # a U of +inf (no bound above a coarse reference grid) does not switch the check off
    open_top = base.assign(mse=np.where(sigmas < 5, 0.2, np.inf))
    with pytest.raises(ValueError, match="swapped"):
        kl_bound(net, {"lower": base.assign(mse=0.6), "upper": open_top})


def test_bracket_inverted_by_noise_keeps_low_below_high():
    # L above U by less than 3 standard errors at some σ: accepted as noise; there B_high
    # takes U, the larger gap, so it stays >= B_low, and equals it where L > U everywhere
    sigmas = np.geomspace(0.1, 10, 10)
    base = pd.DataFrame({"sigma": sigmas, "se": 1e-3, "d": 10})
    net, upper = base.assign(mse=0.7), base.assign(mse=0.6)
    inverted = kl_bound(net, {"lower": base.assign(mse=0.605), "upper": upper},
                        sigma0=[0.1, 1.0]).table
    assert np.allclose(inverted.kl_high, inverted.kl_low) and (inverted.kl_low > 0).all()
    assert np.allclose(inverted.se_high, inverted.se_low)
    partly = base.assign(mse=np.where(sigmas < 1, 0.605, 0.5))
    mixed = kl_bound(net, {"lower": partly, "upper": upper}, sigma0=[0.1]).table.iloc[0]
    assert mixed.kl_low < mixed.kl_high
    # the high end's integrand: MSE − U where L > U, MSE − L elsewhere
    grid = kl_bound(net, {"lower": partly, "upper": upper}).integrand
    assert np.allclose(grid.gap_high, np.where(sigmas < 1, 0.1, 0.2) * 10)


def test_quadrature_error_estimate_tracks_the_trapezoid_error():
    # gap = c σ^p: ∫_{σ0}^{σmax} c σ^(p-3) dσ in closed form; on a grid uniform in ln σ the
    # trapezoid's error is ∝ h², which quad_err estimates from the integrand's curvature; an
    # even number of points too (the per-σ networks' 8), where halving the grid is uneven,
    # from the lowest σ (the bottom segment, h'' extrapolated, carries most of the error)
    # and from a middle one
    c, p = 50.0, 0.5
    for n in (8, 9, 29):
        sigmas = np.geomspace(0.01, 2.0, n)
        base = pd.DataFrame({"sigma": sigmas, "se": 0.0, "d": 1})
        net, mmse = base.assign(mse=c * sigmas**p), base.assign(mse=0.0)
        for s0 in (sigmas[0], sigmas[n // 2]):
            row = kl_bound(net, {"exact": mmse}, sigma0=[s0]).table.iloc[0]
            exact = c * (s0 ** (p - 2) - 2.0 ** (p - 2)) / (2 - p)
            error = abs(row.kl_low - exact)
            assert row.quad_err_low == row.quad_err_high  # an exact MMSE: one integrand
            assert error > 0 and 0.5 * row.quad_err_low < error < 2 * row.quad_err_low, \
                (n, s0, error, row.quad_err_low)
    two = pd.DataFrame({"sigma": [0.1, 1.0], "mse": 1.0, "se": 0.0, "d": 1})
    short = kl_bound(two, {"exact": two.assign(mse=0.5)}).table
    assert short.quad_err_low.isna().all() and short.quad_err_high.isna().all()


def test_quadrature_error_weights_take_h2_of_a_segment_from_its_nearest_points():
    # any linear h'' is exact for a cubic: the pair of second differences each segment
    # uses shows on an integrand that is not one, e^{a u} on 8 points over [0.01, 2] (the
    # module docstring's ratios of estimate to true error; a pair shifted by one segment
    # gives other ratios)
    u = np.linspace(math.log(0.01), math.log(2.0), 8)
    for a, ratios in ((-1.5, (0.9572, 1.2243)), (-3.0, (0.7914, 2.2692))):
        h = np.exp(a * u)
        for k, ratio in zip((0, 3), ratios, strict=True):
            error = (math.exp(a * u[-1]) - math.exp(a * u[k])) / a - trapezoid_weights(u, u[k]) @ h
            estimate = trapezoid_error_weights(u, u[k]).sum(0) @ h
            assert estimate / error == pytest.approx(ratio, abs=1e-4)


def test_quadrature_error_is_exact_for_a_cubic_integrand_on_any_grid():
    # gap = σ² h(ln σ), h(u) = a + b u + e u² + f u³: the integrand in u = ln σ is h, whose
    # integral is closed form; the trapezoid's error (true − trapezoid, signed) is then
    # exactly what the weights give, segment by segment, on uneven grids and from a σ0
    # between points; kl_bound's quad_err_high adds the segments' errors in absolute value
    # (this h'' changes sign at u = −0.78: more than the total's size), quad_err_low is 0
    # with no gap to U
    rng = np.random.default_rng(3)
    a, b, e, f = 30.0, 0.4, 0.7, 0.3  # h > 0 on [ln 0.01, ln 2]: an MSE

    def h(t):
        return a + b * t + e * t**2 + f * t**3

    def primitive(t):
        return a * t + b * t**2 / 2 + e * t**3 / 3 + f * t**4 / 4

    def segment_errors(u, u0):  # true − trapezoid on each segment's part above u0
        lo, hi = np.clip(u0, u[:-1], u[1:]), u[1:]
        slope = np.diff(h(u)) / np.diff(u)
        line = (hi - lo) * (h(u[:-1]) + slope * ((lo + hi) / 2 - u[:-1]))
        return primitive(hi) - primitive(lo) - line

    for n in (4, 8, 9):
        u = np.sort(np.r_[np.log(0.01), np.log(2.0),
                          rng.uniform(np.log(0.01), np.log(2.0), n - 2)])
        for u0 in (u[0], 0.5 * (u[2] + u[3]), 0.3 * u[-2] + 0.7 * u[-1]):
            error = primitive(u[-1]) - primitive(u0) - trapezoid_weights(u, u0) @ h(u)
            weights = trapezoid_error_weights(u, u0)
            assert weights.sum(0) @ h(u) == pytest.approx(error, rel=1e-9)
            assert weights @ h(u) == pytest.approx(segment_errors(u, u0), rel=1e-9, abs=1e-12)
    grid = np.sort(np.r_[np.log(0.01), np.log(2.0), rng.uniform(np.log(0.01), np.log(2.0), 6)])
    sigmas = np.exp(grid)
    base = pd.DataFrame({"sigma": sigmas, "se": 0.0, "d": 1})
    net = base.assign(mse=sigmas**2 * h(grid))
    refs = {"lower": base.assign(mse=0.0), "upper": net}  # B_low 0: the gap is all B_high's
    for u0 in (grid[0], 0.5 * (grid[2] + grid[3])):
        row = kl_bound(net, refs, sigma0=[math.exp(u0)]).table.iloc[0]
        exact = primitive(grid[-1]) - primitive(u0)
        assert row.kl_low == 0 and row.quad_err_low == 0
        per_segment = np.abs(segment_errors(grid, u0)).sum()
        assert row.quad_err_high == pytest.approx(per_segment, rel=1e-9)
        assert row.quad_err_high > 1.01 * abs(row.kl_high - exact)
    with pytest.raises(ValueError, match="at least 3 grid points"):
        trapezoid_error_weights(u[:2], u[0])


def test_closing_term_error_enters_the_high_end_only():
    sigmas = np.geomspace(0.1, 10, 10)
    base = pd.DataFrame({"sigma": sigmas, "se": 1e-3, "d": 10})
    net, mmse = base.assign(mse=0.7), base.assign(mse=0.6)
    plain = kl_bound(net, {"exact": mmse}, data_variance=40.0).table.iloc[0]
    with_se = kl_bound(net, {"exact": mmse}, data_variance=40.0,
                       data_variance_se=4.0).table.iloc[0]
    assert math.isclose(with_se.se_high, math.hypot(plain.se_high, 4.0 / (2 * 10.0**2)))
    assert with_se.se_low == plain.se_low and with_se.kl_high == plain.kl_high
    # an exact start term carries no sampling error
    exact = kl_bound(net, {"exact": mmse}, data_variance=40.0, data_variance_se=4.0,
                     start_kl=0.1).table.iloc[0]
    assert exact.se_high == plain.se_high


def test_paired_standard_errors_from_mse_curves():
    dist = datasets_synth.get("gaussian", size=8)
    other = datasets_synth.get("gaussian", size=8, gamma=0.5)
    sigmas = np.geomspace(0.02, 4, 8)
    exact = WienerFilter(dist.eigenvalues, dist.mean)
    wrong = WienerFilter(other.eigenvalues, other.mean, kind="upper")
    mmse = mse_curve(exact, dist, sigmas, n=300, seed=3)
    model = mse_curve(wrong, dist, sigmas, n=300, seed=3)
    table = kl_bound(model, {"exact": mmse}, sigma0=[0.05]).table
    exact_curve_model = exact_curve(wrong, sigmas, dist.eigenvalues)
    exact_table = kl_bound(exact_curve_model, {"exact": exact_curve(exact, sigmas)},
                           sigma0=[0.05]).table
    # Monte Carlo integral within 4 paired standard errors of the exact-curve integral
    assert abs(table.kl_low[0] - exact_table.kl_low[0]) < 4 * table.se_low[0]
    assert 0 < table.se_low[0] < 0.2 * table.kl_low[0]
    # that standard error is the spread of the per-image integrals of the paired gap, not
    # of the network's errors alone nor of the two curves' combined unpaired
    d = int(model["d"].iloc[0])
    gap = (model.attrs["errors"] - mmse.attrs["errors"]) * d  # (σ, images)
    c = trapezoid_weights(np.log(sigmas), math.log(0.05)) * sigmas**-2.0
    gap_se = gap.std(1, ddof=1) / math.sqrt(300)
    c = c * clipped_sd(gap.mean(1), gap_se)  # the share of each σ's SE max(0, ·) keeps
    per_image = c @ gap
    assert table.se_low[0] == pytest.approx(per_image.std(ddof=1) / math.sqrt(300), rel=1e-9)


def bound_curve(sigmas, errors, d=1):
    """A curve from per-image errors (σ, images), per pixel, over ``d`` pixels."""
    errors = np.asarray(errors, dtype=float)
    with np.errstate(invalid="ignore"):  # a row of ∞ (no bound there): its SE NaN
        se = errors.std(1, ddof=1) / math.sqrt(errors.shape[1])
    curve = pd.DataFrame({"sigma": sigmas, "mse": errors.mean(1), "se": se, "d": d})
    curve.attrs["errors"] = errors
    return curve


def clipped_sd(mean, se):
    """sd(max(0, X))/se for X ~ N(mean, se²): a mixture of 0 (probability 1 − Φ(z)) and the
    normal truncated to (0, ∞) (probability Φ(z)), z = mean/se."""
    z = np.atleast_1d(np.asarray(mean, dtype=float) / np.asarray(se, dtype=float))
    kept = scipy.stats.norm.cdf(z)
    m, v = scipy.stats.truncnorm.stats(-z, np.inf, loc=z, moments="mv")
    return np.sqrt(np.maximum(kept * (v + m**2) - (kept * m) ** 2, 0.0))


def test_standard_error_of_a_clipped_gap_is_continuous_in_the_gap():
    """max(0, gap) enters the standard errors as the share of each σ's standard error that
    survives it, sd(max(0, X))/se for X ~ N(gap, se²): a σ whose measured gap crosses 0 by
    a tenth of its standard error moves se_low by little (it used to jump from all of that
    σ's variance to none of it), one at 0 keeps 0.584 of it, and a σ clipped by many
    standard errors adds nothing."""
    sigmas = np.geomspace(0.1, 1, 4)
    rng = np.random.default_rng(0)
    n, d = 400, 10
    ref = rng.gamma(2.0, 0.05, size=(4, n))
    noise = rng.normal(0, 0.2, size=(4, n))
    c = trapezoid_weights(np.log(sigmas), math.log(0.1)) * sigmas**-2.0

    def errors_with(shift_at_1):  # the network's gap at σ[1] set to shift_at_1 of its SE
        errors = ref + noise - noise.mean(1, keepdims=True) + 0.5  # 50 SE: kept whole
        errors[1] -= 0.5
        gap = (errors - ref) * d
        errors[1] += shift_at_1 * gap[1].std(ddof=1) / math.sqrt(n) / d
        return errors

    def se_low(shift_at_1):
        network = bound_curve(sigmas, errors_with(shift_at_1), d)
        return kl_bound(network, {"exact": bound_curve(sigmas, ref, d)},
                        sigma0=[0.1]).table.se_low[0]

    def expected(shift_at_1, share):  # the per-image integrals with σ[1]'s term scaled
        gap = (errors_with(shift_at_1) - ref) * d
        per_image = (c * np.where(np.arange(4) == 1, share, 1.0)) @ gap
        return per_image.std(ddof=1) / math.sqrt(n)

    below, above = se_low(-0.1), se_low(0.1)
    assert abs(below - above) < 0.1 * above
    assert se_low(0.0) == pytest.approx(expected(0.0, clipped_sd(0.0, 1.0)[0]), rel=1e-6)
    assert se_low(-10.0) == pytest.approx(expected(-10.0, 0.0), abs=1e-9)
    assert se_low(10.0) == pytest.approx(expected(10.0, 1.0), rel=1e-9)


def test_bad_inputs():
    sigmas = np.geomspace(0.1, 1, 4)
    curve = pd.DataFrame({"sigma": sigmas, "mse": 0.1, "se": 0.0, "d": 4})
    with pytest.raises(ValueError, match="exact"):
        kl_bound(curve, {"lower": curve})
    with pytest.raises(ValueError, match="sigma0"):
        kl_bound(curve, {"exact": curve}, sigma0=[5.0])
    with pytest.raises(ValueError, match="grid .σ = 0.2 where the network has 0.1.; measure"):
        kl_bound(curve, {"exact": curve.assign(sigma=sigmas * 2)})
    with pytest.raises(ValueError, match="grid .3 σ from 0.1 to 0.4642 against 4 σ from 0.1 "
                                         "to 1.; measure both with mse_curve on the same"):
        kl_bound(curve, {"exact": curve.iloc[:3]})
    with pytest.raises(ValueError, match="the upper curve has no MSE .NaN. at σ = 0.2154"):
        kl_bound(curve, {"lower": curve.assign(mse=0.0),
                         "upper": curve.assign(mse=[0.2, np.nan, 0.2, 0.2])})
    with pytest.raises(ValueError, match="the lower curve has a negative MSE at σ = 0.1 "):
        kl_bound(curve, {"lower": curve.assign(mse=[-0.01, 0.0, 0.0, 0.0]), "upper": curve})
    with pytest.raises(ValueError, match="data_variance_se must be"):
        kl_bound(curve, {"lower": curve.assign(mse=0.0), "upper": curve},
                 data_variance=1.0, data_variance_se=-1.0)
    # an infinite MSE at a σ that neither the integral from σ0 nor its error estimate reads
    # leaves both finite
    eight = pd.DataFrame({"sigma": np.geomspace(0.1, 1, 8), "mse": 0.1, "se": 0.0, "d": 4})
    wild = eight.assign(mse=[np.inf] + [0.2] * 7)
    row = kl_bound(wild, {"exact": eight}, sigma0=[eight.sigma[4]]).table.iloc[0]
    assert np.isfinite([row.kl_low, row.kl_high, row.quad_err_low, row.quad_err_high]).all()
    with pytest.raises(ValueError, match="data_variance"):
        kl_bound(curve, {"exact": curve}, data_variance=float("nan"))
    twice = curve.assign(sigma=[0.1, 0.2, 0.2, 0.4])
    with pytest.raises(ValueError, match="distinct σ values, got σ = 0.2 twice"):
        kl_bound(twice, {"exact": twice})


def test_monotone_envelope_tightens_both_ends_with_their_errors():
    """MMSE(σ) is non-decreasing (SCIENCE.md §4b; report.common.extend_monotone): U at σ'
    ≥ σ bounds it from above, L at σ' ≤ σ from below. The envelope takes, per σ, the
    nearest such σ' with the best value, its per-image errors and SE with it."""
    from theorybench.report.common import bracket, monotone_envelope

    sigmas = [0.1, 0.2, 0.4, 0.8]
    mse = np.array([1.0, 3.0, 2.0, 2.0])
    frame = pd.DataFrame({"sigma": sigmas, "mse": mse, "se": [0.1, 0.3, 0.2, 0.25], "d": 4})
    frame.attrs["errors"] = np.stack([mse * (1 + 0.1 * k) for k in range(3)], 1)
    up = monotone_envelope(frame, "upper")
    assert up["mse"].tolist() == [1.0, 2.0, 2.0, 2.0]  # 0.2 takes 0.4's, not 0.8's (nearest)
    assert up["se"].tolist() == [0.1, 0.2, 0.2, 0.25]
    assert np.array_equal(up.attrs["errors"], frame.attrs["errors"][[0, 2, 2, 3]])
    assert up.attrs["borrowed"].tolist() == [False, True, False, False]
    assert up["sigma"].tolist() == sigmas and frame["mse"].tolist() == mse.tolist()
    low = monotone_envelope(frame, "lower")
    assert low["mse"].tolist() == [1.0, 3.0, 3.0, 3.0]
    assert np.array_equal(low.attrs["errors"], frame.attrs["errors"][[0, 1, 1, 1]])
    assert low.attrs["borrowed"].tolist() == [False, False, True, True]
    # a monotone bound is its own envelope; +inf above a coarse grid stays +inf
    rising = frame.assign(mse=[1.0, 2.0, np.inf, np.inf])
    assert monotone_envelope(rising, "upper")["mse"].tolist() == [1.0, 2.0, np.inf, np.inf]
    assert not monotone_envelope(rising, "lower").attrs["borrowed"].any()
    # only a value better by more than 2 SE of the paired difference is taken: not noise
    noisy = frame.assign(mse=[1.0, 2.0, 1.9, 2.5])
    noisy.attrs["errors"] = np.array([[1.0, 1.0], [2.0, 2.0], [1.5, 2.3], [2.5, 2.5]])
    assert monotone_envelope(noisy, "upper")["mse"].tolist() == [1.0, 2.0, 1.9, 2.5]
    noisy.attrs["errors"][2] = [1.86, 1.94]  # the same mean, a paired difference of 2.5 SE
    assert monotone_envelope(noisy, "upper")["mse"].tolist() == [1.0, 1.9, 1.9, 2.5]
    single = frame.copy()
    single.attrs["errors"] = mse[:, None]  # one image: no noise estimate, nothing taken
    assert monotone_envelope(single, "upper")["mse"].tolist() == mse.tolist()
    for bad in (frame.assign(mse=[1.0, np.nan, 2.0, 2.0]), frame.assign(sigma=sigmas[::-1])):
        with pytest.raises(ValueError, match="increasing σ without NaN"):
            monotone_envelope(bad, "upper")

    # bracket: the tightest of the references, then its envelope; an exact MMSE as measured
    def stored(kind, values):
        return {"kind": kind, "sigma": sigmas, "mse": values, "se": [0.0] * 4, "d": 4,
                "errors": [[v, v] for v in values]}

    refs, how = bracket({"a": stored("upper", [1.0, 3.0, 2.5, 2.6]),
                         "b": stored("upper", [1.5, 3.5, 2.0, 3.0]),
                         "l": stored("lower", [0.5, 0.9, 0.8, 1.0])})
    assert how == "bracket"
    assert refs["upper"]["mse"].tolist() == [1.0, 2.0, 2.0, 2.6]
    assert refs["lower"]["mse"].tolist() == [0.5, 0.9, 0.9, 1.0]
    exact, _ = bracket({"m": stored("exact", [1.0, 3.0, 2.0, 2.0])})
    assert exact["exact"]["mse"].tolist() == [1.0, 3.0, 2.0, 2.0]
    # a reference stored at every other σ: extended (extend_monotone), flagged where picked
    coarse = {"kind": "upper", "sigma": [0.2, 0.8], "mse": [1.2, 2.2], "se": [0.0] * 2,
              "d": 4, "errors": [[1.2, 1.2], [2.2, 2.2]]}
    refs, _ = bracket({"a": stored("upper", [1.5, 3.0, 2.5, 2.6]), "c": coarse,
                       "l": stored("lower", [0.5, 0.9, 0.8, 1.0])})
    assert refs["upper"]["mse"].tolist() == [1.2, 1.2, 2.2, 2.2]  # c's, extended to 0.1, 0.4
    assert refs["upper"].attrs["extended"].tolist() == [True, False, True, False]
    assert not refs["upper"].attrs["borrowed"].any()  # within 2 SE: nothing else taken
    assert not refs["lower"].attrs["extended"].any()
    # picked per σ: the coarse curve's extension only where it is the tightest; a σ beyond
    # its grid holds no bound (U = ∞), taken from nowhere
    short = coarse | {"sigma": [0.2, 0.4], "mse": [1.2, 2.4], "errors": [[1.2, 1.2], [2.4, 2.4]]}
    refs, how = bracket({"c": short, "a": stored("upper", [1.0, 3.0, 2.5, 2.6])})
    assert how == "upper only (L = 0)"
    assert refs["upper"]["mse"].tolist() == [1.0, 1.2, 2.4, 2.6]
    assert refs["upper"].attrs["extended"].tolist() == [False, False, False, False]
    refs, _ = bracket({"c": short, "a": stored("upper", [1.3, 3.0, 2.5, 2.6])})
    assert refs["upper"]["mse"].tolist() == [1.2, 1.2, 2.4, 2.6]  # c's σ = 0.2 value at 0.1
    assert refs["upper"].attrs["extended"].tolist() == [True, False, False, False]
    assert not refs["lower"].attrs["extended"].any()
    # an exact MMSE stored at every other σ is exact only there: between them its next
    # larger σ's value bounds the MMSE from above and its next smaller σ's from below (0
    # below its grid), and a tighter upper bound measured at σ is taken where it is lower
    exact_coarse = coarse | {"kind": "exact"}
    refs, how = bracket({"m": exact_coarse, "a": stored("upper", [1.1, 3.0, 2.5, 2.6])})
    assert how == "bracket" and "exact" not in refs
    assert refs["upper"]["mse"].tolist() == [1.1, 1.2, 2.2, 2.2]
    assert refs["lower"]["mse"].tolist() == [0.0, 1.2, 1.2, 2.2]
    assert refs["lower"].attrs["extended"].tolist() == [False, False, True, False]
    # measured at every σ, it stays the exact MMSE
    refs, how = bracket({"c": exact_coarse, "m": stored("exact", [1.0, 1.2, 2.0, 2.2])})
    assert how == "exact" and refs["exact"]["mse"].tolist() == [1.0, 1.2, 2.0, 2.2]
    with pytest.raises(ValueError, match="two reference curves named 'c .upper.'"):
        bracket({"c (upper)": stored("upper", [1.0] * 4), "c": exact_coarse})


def test_tightest_references_do_not_select_noise():
    """Per σ another bound replaces the primary one (the tightest at the most σ) only where
    it is tighter by more than SELECTION_Z standard errors of the paired difference: two
    estimates of the same bound are not the minimum of their noise (the winner's curse),
    one clearly tighter is taken, and a missing bound (U = ∞) gives way to a finite one."""
    sigmas = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    rng = np.random.default_rng(1)
    n = 200
    base = rng.gamma(2.0, 0.5, size=(5, n))
    noise = rng.normal(0.0, 0.1, size=(5, n))
    noise -= noise.mean(1, keepdims=True)
    se = noise.std(1, ddof=1) / math.sqrt(n)

    def shifted(by_se):  # base + paired noise, its mean moved by ``by_se`` SE per σ
        return base + noise + (np.asarray(by_se) * se)[:, None]

    # B against A: tighter by 3 SE at σ[0] (more than SELECTION_Z = 2), by 1 SE at σ[1]
    # (noise), looser above; A, the primary, listed second
    a, b = bound_curve(sigmas, base), bound_curve(sigmas, shifted([-3, -1, 1, 1, 1]))
    refs, how = tightest_references({"b": b, "a": a}, {"a": "upper", "b": "upper"})
    assert how == "upper only (L = 0)"
    assert b.mse[1] < a.mse[1]  # the plain minimum would take B's noise at σ[1]
    assert np.allclose(refs["upper"].mse, [b.mse[0], *a.mse[1:]])
    assert np.allclose(refs["upper"].attrs["errors"][1], base[1])
    # without per-image errors the values alone decide: B's noise at σ[1] is taken
    plain = {name: curve.copy() for name, curve in (("a", a), ("b", b))}
    for curve in plain.values():
        curve.attrs.clear()
    refs, _ = tightest_references(plain, {"a": "upper", "b": "upper"})
    assert np.allclose(refs["upper"].mse, [*b.mse[:2], *a.mse[2:]])
    assert "errors" not in refs["upper"].attrs and "errors" not in refs["lower"].attrs
    with pytest.raises(ValueError, match="no MSE .NaN. at σ = 0.4"):
        tightest_references({"a": a.assign(mse=[1, 1, np.nan, 1, 1]), "b": b},
                            {"a": "upper", "b": "upper"})
    # the same rule for lower bounds: higher by more than SELECTION_Z SE
    low_a = bound_curve(sigmas, base * 0.5)
    low_b = bound_curve(sigmas, base * 0.5 - (shifted([-3, -1, 1, 1, 1]) - base))
    refs, how = tightest_references({"u": a, "la": low_a, "lb": low_b},
                                    {"u": "upper", "la": "lower", "lb": "lower"})
    assert how == "bracket"
    assert np.allclose(refs["lower"].mse, [low_b.mse[0], *low_a.mse[1:]])
    # no bound at σ[4] in the primary: a finite one is taken there, however loose
    missing = base.copy()
    missing[4] = np.inf
    loose = bound_curve(sigmas, shifted([3, 3, 3, 3, 3]))
    refs, _ = tightest_references({"a": bound_curve(sigmas, missing), "b": loose},
                                  {"a": "upper", "b": "upper"})
    assert np.allclose(refs["upper"].mse, [*a.mse[:4], loose.mse[4]])


def test_bracket_flags_a_value_from_another_sigma_where_it_is_kept_over_noise():
    """U from a coarse reference (its σ = 0.4 value at 0.2) stays where a reference measured
    at 0.2 is lower only by noise (0.5 SE of the paired difference): the bound there is
    still a value from another σ, and flagged so (the KL's quadrature estimate is `–` there)."""
    from theorybench.report.common import bracket

    sigmas = [0.1, 0.2, 0.4, 0.8]
    rng = np.random.default_rng(3)
    per_image = rng.gamma(4.0, 0.5, size=(4, 100))
    noise = rng.normal(0.0, 0.05, size=100)
    noise -= noise.mean()
    coarse_errors = per_image[[0, 2]]  # stored at 0.1 and 0.4
    measured = per_image + 10.0  # far looser at every σ ...
    # ... but at 0.2 just below the coarse curve's 0.4 value, by 0.5 SE
    measured[1] = coarse_errors[1] + noise - 0.5 * noise.std(ddof=1) / 10
    curves = {"c": {"kind": "upper", "sigma": [0.1, 0.4], "mse": coarse_errors.mean(1).tolist(),
                    "se": [0.0, 0.0], "d": 4, "errors": coarse_errors.tolist()},
              "m": {"kind": "upper", "sigma": sigmas, "mse": measured.mean(1).tolist(),
                    "se": [0.0] * 4, "d": 4, "errors": measured.tolist()}}
    refs, _ = bracket(curves)
    upper = refs["upper"]
    assert upper["mse"][1] == pytest.approx(coarse_errors[1].mean())  # kept over the noise
    assert upper["mse"][1] > measured[1].mean()
    assert upper.attrs["extended"].tolist() == [False, True, False, False]  # 0.8: m's own
