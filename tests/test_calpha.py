"""``calpha``: construction, regularity, exact Gaussian law given the mask, and the MMSE bracket."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pywt
import torch

from datasets_synth.calpha import CAlpha, field_spectrum
from datasets_synth.conformance import check_distribution
from datasets_synth.references.calpha import CAlphaContourEstimator, CAlphaOracle
from theorybench.denoisers.baselines import Identity
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


def test_estimator_scores_candidates_in_slices_of_bounded_memory(monkeypatch):
    """Scoring the candidates one at a time (a memory budget of 1 byte) gives the same bits
    as the default slices, with the exact band model (small σ) and the low-rank one (large)."""
    import datasets_synth.references.calpha as module

    dist = CAlpha(size=16)
    x = dist.sample(2, seed=5)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    est = CAlphaContourEstimator(dist, samples=16, lowrank_samples=32)
    models = []
    build = est._model
    monkeypatch.setattr(est, "_model", lambda *a: models.append(build(*a)) or models[-1])
    sigmas = (0.05, 1.0)
    default = [est(x + s * z, s) for s in sigmas]
    kinds = {type(m).__name__ for m in models}
    assert kinds == {"_BandModel", "_LowRankModel"}
    assert all(m.candidate_bytes() > 1 for m in models)
    monkeypatch.setattr(module, "SCORE_BYTES", 1)
    for s, expected in zip(sigmas, default, strict=True):
        assert torch.equal(est(x + s * z, s), expected)


# -- the device argument -------------------------------------------------------------
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _law_statistics(x, lat):
    """Per-image statistics (n,) of a calpha sample, as float64 numpy arrays (CPU)."""
    s, h = x.shape[-1], lat["contour"]
    return {"pixel mean": x.flatten(1).mean(1), "centre pixel": x[:, 0, s // 2, s // 2],
            "corner pixel": x[:, 0, 0, 0], "region-1 area": lat["mask"].flatten(1).mean(1),
            "field roughness": x.diff(dim=-1).square().flatten(1).mean(1),  # β
            "contour mean": h.mean(1), "contour std": h.std(1),
            "contour roughness": h.diff(dim=1).square().mean(1)}  # α


def _assert_same_law(a, b, p_min=1e-4):
    """Two samples (x, latents) of one law: KS test on each statistic, moments within 5 SE."""
    from scipy.stats import ks_2samp

    sa, sb = _law_statistics(*a), _law_statistics(*b)
    for name in sa:
        u, v = sa[name].double().cpu().numpy(), sb[name].double().cpu().numpy()
        assert ks_2samp(u, v).pvalue > p_min, name
    xa, xb = a[0].flatten(1).double().cpu(), b[0].flatten(1).double().cpu()
    se = math.sqrt(float(xa.var(0).mean()) * (1 / len(xa) + 1 / len(xb)))  # per pixel
    assert float((xa.mean(0) - xb.mean(0)).abs().max()) < 5 * se
    assert abs(float(xa.var(0).mean() / xb.var(0).mean()) - 1) < 0.05


def test_device_argument_on_cpu():
    """device="cpu" (or a torch.device) is the default path: the same bits, on the CPU."""
    dist = CAlpha(size=16)
    x, lat = dist.sample_with_latents(300, seed=4, offset=100)
    for device in ("cpu", torch.device("cpu")):
        assert torch.equal(dist.sample(300, 4, offset=100, device=device), x)
        y, lat2 = dist.sample_with_latents(300, 4, offset=100, device=device)
        assert y.device.type == "cpu" and torch.equal(y, x)
        assert all(torch.equal(lat[k], lat2[k]) for k in lat)
    assert torch.equal(dist.sample(300, 4, offset=100), x)  # sample() skips the latents


@pytest.mark.parametrize("size", [8, 16, 32])
def test_direct_coverage_matches_the_scatter_one(size):
    """The mask of the non-CPU path (the formula itself) equals the CPU's up to rounding,
    also at heights 0 and s (the contour clipped at the image edges)."""
    dist = CAlpha(size=size)
    h = dist.sample_with_latents(256, seed=1)[1]["contour"].clone()
    h[:4, :40], h[4:8, -40:] = 0.0, float(size)
    assert float((dist._coverage_direct(h) - dist.coverage(h)).abs().max()) < 1e-6


def test_two_seeds_pass_the_same_law_check():
    """The check of the CUDA test, on two CPU seeds: one law, independent draws."""
    dist = CAlpha(size=16)
    _assert_same_law(dist.sample_with_latents(4096, 0), dist.sample_with_latents(4096, 1))
    for other in (CAlpha(size=16, beta=1.5), CAlpha(size=16, alpha=1.5, beta=2.0)):
        with pytest.raises(AssertionError):  # and it tells a rougher field or contour apart
            _assert_same_law(dist.sample_with_latents(4096, 0), other.sample_with_latents(4096, 1))


@CUDA
@pytest.mark.parametrize("params", [{}, {"size": 16, "antialias": False}])
def test_cuda_draws_the_same_law(params):
    """On CUDA the images are made there (its own random stream: other values), with the
    CPU's law; deterministic and index-addressable there too."""
    dist = CAlpha(**params)
    x, lat = dist.sample_with_latents(4096, 0, device="cuda")
    assert x.device.type == "cuda" and x.dtype == torch.float32 and x.shape == (4096, *dist.shape)
    assert all(v.device.type == "cuda" for v in lat.values())
    assert torch.equal(dist.sample(4096, 0, device="cuda"), x)
    split = torch.cat([dist.sample(1000, 0, device="cuda"),
                       dist.sample(3096, 0, offset=1000, device="cuda")])
    assert torch.equal(split, x)
    mask = lat["mask"]
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1
    _assert_same_law(dist.sample_with_latents(4096, 0), (x, lat))


def test_rate_law_states_the_theory_and_the_fields_wiener_slope():
    """α/(α+1) (SCIENCE.md §5); the region fields' Wiener MSE mean λσ²/(λ + σ²) has slope
    → 1 in σ² where σ² ≪ every λ and → 0 where σ² ≫ every λ."""
    from datasets_synth import get

    law = CAlpha(alpha=2.0, size=16).rate_law()
    assert law["slope"] == pytest.approx(2 / 3) and law["label"] == "theory α/(α+1)"
    lam = CAlpha(alpha=2.0, size=16).eigenvalues
    tiny, huge = float(lam.min().sqrt()) * 1e-4, float(lam.max().sqrt()) * 1e4
    assert law["component_slope"](16, tiny, 2 * tiny) == pytest.approx(1.0, abs=1e-3)
    assert law["component_slope"](16, huge, 2 * huge) == pytest.approx(0.0, abs=1e-3)
    assert get("disks", size=16).rate_law() is None  # no law: no slope rows
