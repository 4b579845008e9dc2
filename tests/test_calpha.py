"""``calpha``: construction, regularity, exact Gaussian law given the mask, and the MMSE bracket."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pywt
import torch

from datasets_synth.calpha import CAlpha, field_spectrum
from datasets_synth.conformance import check_distribution
from theorybench.denoisers.baselines import Identity
from theorybench.denoisers.calpha import CAlphaContourEstimator, CAlphaOracle
from theorybench.evaluation import mse_curve, paired_difference

SIGMAS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]



@pytest.mark.parametrize("params", [{}, {"size": 16, "antialias": False},
                                    {"alpha": 4.0, "beta": 1.0, "size": 8}])
def test_conformance(params):
    check_distribution(CAlpha(**params))


@pytest.mark.parametrize("params", [
    {"alpha": 0.0}, {"alpha": -1.0}, {"alpha": float("nan")}, {"beta": 0.0}, {"size": 7},
    {"size": 16.5}, {"antialias": "yes"},
])
def test_bad_parameters_raise(params):
    with pytest.raises(ValueError):
        CAlpha(**params)


def test_shapes_and_latents():
    dist = CAlpha(size=16)
    x, lat = dist.sample_with_latents(5, seed=3)
    assert x.shape == (5, 1, 16, 16) and dist.shape == (1, 16, 16)
    assert lat["contour"].shape == (5, 16 * 8) and lat["mask"].shape == (5, 1, 16, 16)
    assert float(lat["contour"].min()) >= 0 and float(lat["contour"].max()) <= 16
    assert dist.intrinsic_dim is None and dist.value_range == (-math.inf, math.inf)
    assert set(dist.reference_denoisers()) == {"oracle-contour", "estimated-contour"}
    kinds = {k: v.kind for k, v in dist.reference_denoisers().items()}
    assert kinds == {"oracle-contour": "lower", "estimated-contour": "upper"}


@pytest.mark.parametrize("antialias", [True, False])
def test_subcolumn_heights_and_coverage_match_direct_formulas(antialias):
    dist = CAlpha(size=16, antialias=antialias)
    c0, ab = dist.draw_contour_coefficients(torch.Generator().manual_seed(0), 6,
                                            dtype=torch.float64)
    h = dist.subcolumn_heights(c0.float(), ab.float()).double()
    n_sub = 16 * dist.subcolumns
    # c(t) at t = (n + ½)/N by the exact inverse FFT on a grid of 32·N points
    direct = dist.contour_grid(c0, ab, 32 * n_sub)[:, 16 * (2 * torch.arange(n_sub) + 1)]
    assert torch.allclose(h, direct.clamp(0, 16), atol=1e-4)
    rows = torch.arange(16.0, dtype=torch.float64)
    if antialias:  # m[i, j] = mean_q clip(h_{j,q} − i, 0, 1)
        ref = (h.view(6, 1, 16, 8) - rows[:, None, None]).clamp(0, 1).mean(-1)
    else:  # m[i, j] = 1{i + ½ < h_j}
        ref = (rows[:, None] + 0.5 < h[:, None, :]).double()
    assert torch.allclose(dist.coverage(h)[:, 0], ref, atol=1e-12)


@pytest.mark.parametrize("alpha", [2.0, 4.0])
def test_contour_holder_exponent_from_wavelet_decay(alpha):
    """RMS of db6 (6 vanishing moments) detail coefficients of c(t) sampled at 4096 points
    decays like 2^{−j(α+½)}; the fit uses the levels with 16, 32 and 64 coefficients
    (scales 1/16 … 1/64 of the width, well above the cut-off 1/K = 1/256 at size 32)."""
    dist = CAlpha(alpha=alpha, size=32)
    c0, ab = dist.draw_contour_coefficients(torch.Generator().manual_seed(1), 64,
                                            dtype=torch.float64)
    c = dist.contour_grid(c0, ab, 4096).numpy()
    details = pywt.wavedec(c, "db6", mode="periodization", axis=-1)[1:]
    levels = np.array([math.log2(b.shape[-1]) for b in details])
    log_rms = np.array([math.log2(math.sqrt(float((b**2).mean()))) for b in details])
    fit = (levels >= 4) & (levels <= 6)
    slope = np.polyfit(levels[fit], log_rms[fit], 1)[0]
    assert abs((-slope - 0.5) - alpha) < 0.3


def test_exactly_gaussian_given_the_mask():
    """Whitened by C(m) (closed form), x − μ(m) is i.i.d. N(0, 1); marginal moments match."""
    dist = CAlpha(size=16)
    x, lat = dist.sample_with_latents(400, seed=11)
    mask = lat["mask"]
    flat = x.flatten(1).double()
    L = torch.linalg.cholesky(dist.covariance(mask))
    z = torch.linalg.solve_triangular(L, (flat - dist.mean_vector(mask))[..., None],
                                      upper=False)[..., 0]
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    # per-pixel variance = mean over images of diag C(m) (±5 standard errors)
    var_model = torch.diagonal(dist.covariance(mask), dim1=1, dim2=2).mean(0)
    var_emp = ((flat - 0.5) ** 2).mean(0)
    se = ((flat - 0.5) ** 2).std(0) / math.sqrt(len(flat))
    assert float(((var_emp - var_model).abs() / se).max()) < 5
    assert abs(float(flat.mean()) - 0.5) < 0.05  # μ = 0.5 (offsets std 0.25 shared per region)


def test_region_covariance_closed_form():
    dist = CAlpha(size=8, beta=2.0)
    A = dist.region_covariance
    lam = field_spectrum(8, 2.0)
    # A = F⁻¹ diag(λ) F + s_a² 1 1ᵀ: its eigenvalues are λ, with d·s_a² added at ω = 0
    expected = lam.flatten().clone()
    expected[0] += 64 * 0.25**2
    assert torch.allclose(torch.linalg.eigvalsh(A), expected.sort().values, atol=1e-12)
    assert torch.allclose(A.diagonal(), torch.full((64,), 0.01 + 0.0625, dtype=A.dtype))


@pytest.mark.parametrize("sigma", [0.02, 0.5])
def test_oracle_equals_brute_force_solve(sigma):
    dist = CAlpha(size=16)
    x, lat = dist.sample_with_latents(3, seed=5)
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    oracle = CAlphaOracle(dist)
    got = oracle(y, sigma, latents=lat).flatten(1).double()
    C, mu = dist.covariance(lat["mask"]), dist.mean_vector(lat["mask"])
    eye = torch.eye(256, dtype=torch.float64)
    r = (y.flatten(1).double() - mu)[..., None]
    ref = mu + (C @ torch.linalg.solve(C + sigma**2 * eye, r))[..., 0]
    assert torch.allclose(got, ref, atol=1e-6)
    # the eigendecomposition is cached for the same masks and recomputed for others
    key = oracle._cache[0]
    oracle(y, 2 * sigma, latents=lat)
    assert oracle._cache[0] == key
    oracle(y[:2], sigma, latents={k: v[:2] for k, v in lat.items()})
    assert oracle._cache[0] != key


def test_oracle_needs_the_mask():
    dist = CAlpha(size=8)
    with pytest.raises(ValueError):
        CAlphaOracle(dist)(dist.sample(2, 0), 0.1)


def _bracket(dist, n, seed=0):
    oracle = mse_curve(CAlphaOracle(dist), dist, SIGMAS, n=n, seed=seed)
    upper = mse_curve(CAlphaContourEstimator(dist), dist, SIGMAS, n=n, seed=seed)
    identity = mse_curve(Identity(), dist, SIGMAS, n=n, seed=seed)
    return oracle, upper, identity


def _check_bracket(oracle, upper, identity):
    gap = paired_difference(upper, oracle)  # U − L per σ
    assert bool((gap["diff"] >= -3 * gap["se"]).all()), gap
    for curve in (oracle, upper):
        beat = paired_difference(curve, identity)  # both strictly below the identity's σ²
        assert bool((beat["diff"] + 3 * beat["se"] < 0).all()), beat


def test_bracket_lower_below_upper_below_identity():
    _check_bracket(*_bracket(CAlpha(size=16), n=24))


@pytest.mark.heavy
def test_bracket_32():
    _check_bracket(*_bracket(CAlpha(size=32), n=64))


def test_estimator_ignores_latents_and_is_deterministic():
    dist = CAlpha(size=16)
    x, lat = dist.sample_with_latents(4, seed=9)
    y = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    est = CAlphaContourEstimator(dist)
    assert not getattr(est, "oracle", False)
    a = est(y, 0.1)
    assert torch.equal(a, est(y, 0.1, latents=lat))
    assert torch.equal(a, CAlphaContourEstimator(dist)(y, 0.1))
    s = torch.tensor([0.05, 0.1, 0.5, 1.0])  # one σ per image
    assert est(x + s.view(-1, 1, 1, 1) * (y - x) / 0.1, s).shape == x.shape
