"""The blind Wiener filter: the posterior mean of a Gaussian field when σ is unknown."""

import math

import numpy as np
import pytest
import torch

import datasets_synth
from datasets_synth.references.wiener import BlindWienerFilter, WienerFilter
from theorybench.evaluation import mse_curve


@pytest.fixture(scope="module")
def field():
    return datasets_synth.get("gaussian", size=8, gamma=2.0, std=0.2)


def brute_force(dist, y, sigma_min, sigma_max, nodes=4000):
    """E[x | y] with σ ∝ σ⁻³ on the range, in pixel space: dense covariances, log N(y; m,
    C + σ²I) by slogdet, E[x | y, σ] = m + C (C + σ²I)⁻¹ (y − m), a fine trapezoid in ln σ."""
    d = dist.d
    eye = np.eye(d)
    basis = np.fft.fft2(eye.reshape(d, 8, 8), norm="ortho").reshape(d, d)  # F (unitary)
    lam = dist.eigenvalues.numpy().reshape(-1)
    cov = (basis.conj().T @ np.diag(lam) @ basis).real  # C = F* diag(λ) F
    r = y.reshape(len(y), -1).double().numpy() - dist.mean
    sigmas = np.geomspace(sigma_min, sigma_max, nodes)
    logw, means = [], []
    for s in sigmas:
        k = cov + s * s * eye
        sign, logdet = np.linalg.slogdet(k)
        sol = np.linalg.solve(k, r.T).T
        logw.append(-0.5 * (r * sol).sum(1) - 0.5 * logdet - 2 * math.log(s))
        means.append(sol @ cov)  # C (C+σ²I)⁻¹ r, C symmetric
    logw = np.array(logw)  # (K, n)
    trap = np.full(nodes, math.log(sigma_max / sigma_min) / (nodes - 1))
    trap[[0, -1]] /= 2
    logw += np.log(trap)[:, None]
    w = np.exp(logw - logw.max(0))
    w /= w.sum(0)
    return dist.mean + np.einsum("kn,knd->nd", w, np.array(means))


def test_matches_the_pixel_space_posterior_mean(field):
    x = field.sample(4, 0)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    y = x + torch.tensor([0.02, 0.1, 0.5, 1.5]).view(-1, 1, 1, 1) * z
    blind = BlindWienerFilter(field.eigenvalues, field.mean, 0.01, 2.0)
    expected = brute_force(field, y, 0.01, 2.0)
    got = blind(y.double(), None).reshape(4, -1).numpy()
    assert np.abs(got - expected).max() < 1e-6 * max(1.0, np.abs(expected).max()) + 1e-7


def test_narrow_range_is_the_wiener_filter_and_sigma_is_ignored(field):
    y = field.sample(3, 1) + 0.1 * torch.randn(3, 1, 8, 8, generator=torch.Generator()
                                               .manual_seed(1))
    blind = WienerFilter(field.eigenvalues, field.mean).blind(0.1, 0.1 * (1 + 1e-7))
    assert blind.kind == "blind"
    wiener = WienerFilter(field.eigenvalues, field.mean)(y.double(), 0.1)
    assert torch.allclose(blind(y.double(), 0.1), wiener, atol=1e-9)
    assert torch.equal(blind(y, 0.1), blind(y, 7.0))


def test_its_weighted_mse_is_the_least_among_blind_denoisers(field):
    """Under σ ~ q(σ) ∝ σ⁻³ (drawn as ln σ uniform, weight σ⁻²), the KL-weighted MSE of the
    blind posterior mean is below that of perturbed blind denoisers (paired draws)."""
    n = 4000
    gen = torch.Generator().manual_seed(2)
    x = field.sample(n, 3).double()
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(
        math.log(0.01), math.log(2.0), generator=gen)).view(-1, 1, 1, 1)
    y = x + sigma * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    blind = BlindWienerFilter(field.eigenvalues, field.mean, 0.01, 2.0)
    wiener = WienerFilter(field.eigenvalues, field.mean)

    def weighted(xhat):  # the KL integrand's weight σ⁻² per draw of ln σ
        return ((xhat - x).square().flatten(1).sum(1) / sigma.view(-1) ** 2)

    best = weighted(blind(y, None))
    others = {"wiener at σ=0.1 for all": wiener(y, 0.1),
              "shrunk 2 %": field.mean + 0.98 * (blind(y, None) - field.mean),
              "plug-in σ from ‖y − m‖": wiener(y, ((y - field.mean).flatten(1).std(1)
                                                    .view(-1, 1, 1, 1) ** 2 - 0.04)
                                               .clamp_min(1e-4).sqrt().view(-1))}
    for name, xhat in others.items():
        diff = weighted(xhat) - best
        assert float(diff.mean()) > 3 * float(diff.std()) / math.sqrt(n), name


def test_price_of_blindness_is_small_but_positive_on_the_study_field():
    """At 32×32 the blind optimum is within 3 % of the MMSE at σ = 0.01, 0.1 and 1 (measured:
    2.0 %, 0.2 %, 0.0 %) and above it at σ = 0.01 (5 SE), where it is even above the
    identity."""
    dist = datasets_synth.get("gaussian", size=32)
    wiener = WienerFilter(dist.eigenvalues, dist.mean)
    sigmas = [0.01, 0.1, 1.0]
    blind = mse_curve(wiener.blind(0.01, 2.0), dist, sigmas, n=256, seed=0)
    exact = mse_curve(wiener, dist, sigmas, n=256, seed=0)
    diff = blind.attrs["errors"] - exact.attrs["errors"]
    mean, se = diff.mean(1), diff.std(1, ddof=1) / math.sqrt(256)
    assert np.all(mean > -3 * se) and np.all(blind["mse"] < 1.03 * exact["mse"])
    assert mean[0] > 5 * se[0] and blind["mse"][0] > 0.01 ** 2


def test_bad_arguments(field):
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        BlindWienerFilter(field.eigenvalues, field.mean, 0.5, 0.1)
    with pytest.raises(ValueError, match="points"):
        BlindWienerFilter(field.eigenvalues, field.mean, 0.01, 1.0, points=4)
    with pytest.raises(ValueError, match="values per image"):
        BlindWienerFilter(field.eigenvalues, field.mean, 0.01, 1.0)(torch.zeros(1, 1, 4, 4))
