"""kl_bound against the closed-form Gaussian KL (SCIENCE.md §4) and its interval logic."""

import math

import numpy as np
import pandas as pd
import pytest

import datasets_synth
from theorybench import mse_curve
from theorybench.denoisers.wiener import WienerFilter
from theorybench.kl import gaussian_kl, kl_bound, trapezoid_weights


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
    result = kl_bound(model, {"exact": mmse}, sigma0=[0.01, 0.05, 0.2, 1.0])
    for row in result.table.itertuples():
        closed = gaussian_kl(p.eigenvalues, q.eigenvalues, row.sigma0)
        assert closed > 0
        assert row.kl_low == row.kl_high
        assert abs(row.kl_low - closed) / closed < 0.01, (row.sigma0, row.kl_low, closed)
        assert row.tail < 1e-3 * closed


def test_model_equal_to_data_gives_zero():
    p = datasets_synth.get("gaussian", size=8)
    sigmas = np.geomspace(0.01, 10, 50)
    curve = exact_curve(WienerFilter(p.eigenvalues, p.mean), sigmas)
    table = kl_bound(curve, {"exact": curve}).table
    assert np.allclose(table[["kl_low", "kl_high"]].to_numpy(), 0.0)


def test_trapezoid_weights_integrate_linear_functions_exactly():
    u = np.array([0.0, 0.5, 1.5, 3.0])
    h = 2.0 * u + 1.0
    for u0 in (0.0, 0.3, 1.5, 2.2):
        exact = (3.0**2 + 3.0) - (u0**2 + u0)
        assert math.isclose(trapezoid_weights(u, u0) @ h, exact, rel_tol=1e-12)


def test_bracket_interval_and_negative_gap_flag():
    sigmas = np.geomspace(0.1, 10, 20)
    base = pd.DataFrame({"sigma": sigmas, "se": 1e-4, "d": 100})
    net = base.assign(mse=0.5 * sigmas**2 / (1 + sigmas**2))
    lower = base.assign(mse=0.2 * sigmas**2 / (1 + sigmas**2))
    upper = base.assign(mse=0.6 * sigmas**2 / (1 + sigmas**2))  # above the network
    table = kl_bound(net, {"lower": lower, "upper": upper}, sigma0=[0.1, 1.0]).table
    assert (table.kl_low < 0).all() and (table.kl_high > 0).all()  # kept, not clipped
    assert table.negative_gap.all()
    assert (table.kl_low <= table.kl_high).all()
    # analytic: ∫ c σ²/(1+σ²) σ^-3 dσ from 1 to 10 = c/2 ln((1+σ²)/σ²)|... with c = 0.3·100
    exact_high = 0.3 * 100 * 0.5 * (math.log(2.0) - math.log(1.01))
    assert abs(table.kl_high.iloc[1] - exact_high) / exact_high < 0.01
    assert math.isclose(table.bits_high.iloc[1], table.kl_high.iloc[1] / (100 * math.log(2)))


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


def test_bad_inputs():
    sigmas = np.geomspace(0.1, 1, 4)
    curve = pd.DataFrame({"sigma": sigmas, "mse": 0.1, "se": 0.0, "d": 4})
    with pytest.raises(ValueError, match="exact"):
        kl_bound(curve, {"lower": curve})
    with pytest.raises(ValueError, match="sigma0"):
        kl_bound(curve, {"exact": curve}, sigma0=[5.0])
    with pytest.raises(ValueError, match="grid"):
        kl_bound(curve, {"exact": curve.assign(sigma=sigmas * 2)})
