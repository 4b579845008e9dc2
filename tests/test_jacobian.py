"""Jacobian of denoisers: closed forms (linear map, Wiener filter), homogeneity of bias-free
networks, SURE against the exact MMSE, principal angles (SCIENCE.md §6)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import datasets_synth
from datasets_synth.references.wiener import WienerFilter
from theorybench.denoisers.network import NetworkDenoiser
from theorybench.experiments import jacobian_analysis
from theorybench.jacobian import (
    TOP_K_TOL,
    jacobian,
    jacobian_and_output,
    jacobian_products,
    jacobian_spectrum,
    subspace_angles,
    sure_mse,
    top_eigenvectors_as_images,
)
from theorybench.networks import NetConfig, build_network

SIGMA = 0.1


class LinearDenoiser:
    """``f(y) = A y`` on flattened images (per image of the batch)."""

    def __init__(self, A: torch.Tensor):
        self.A = A

    def __call__(self, y, sigma):
        n = y.shape[0]
        return (y.reshape(n, -1) @ self.A.T).reshape(y.shape)


def small_net(bias: bool, seed: int = 0) -> nn.Module:
    """A 4-layer ReLU conv net predicting the residual; bias-free unless ``bias``."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=bias), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=bias), nn.BatchNorm2d(8, affine=False), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=bias), nn.ReLU(),
        nn.Conv2d(8, 1, 3, padding=1, bias=bias),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
        bn = net[3]
        bn.running_var.copy_(0.5 + torch.rand(8, generator=g))
        if not bias:
            bn.running_mean.zero_()  # eval-mode BN without mean: a per-channel scaling
        else:
            bn.running_mean.copy_(0.1 * torch.randn(8, generator=g))
    return net.eval()


class ResidualDenoiser(nn.Module):
    """``f(y) = y − net(y)`` (networks predict the noise)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, y, sigma):
        return y - self.net(y)


def noisy_image(size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, size, size, generator=g) + SIGMA * torch.randn(1, 1, size, size,
                                                                           generator=g)


def dense_covariance(eigenvalues: torch.Tensor) -> torch.Tensor:
    """``C = F⁻¹ diag(λ) F`` (d × d) with F the unitary 2-D DFT on row-major pixels."""
    h, w = eigenvalues.shape
    F1 = [torch.fft.fft(torch.eye(n, dtype=torch.complex128), norm="ortho") for n in (h, w)]
    F = torch.kron(F1[0], F1[1])  # unitary DFT of an h×w image flattened row by row
    lam = eigenvalues.reshape(-1).to(torch.complex128)
    return (F.conj().T @ torch.diag(lam) @ F).real


# ----------------------------------------------------------------------------- closed forms


def test_linear_denoiser_jacobian_is_A():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(64, 64, generator=g, dtype=torch.float64)
    y = torch.randn(1, 8, 8, generator=g, dtype=torch.float64)
    J = jacobian(LinearDenoiser(A), y, SIGMA)
    assert J.shape == (64, 64) and J.dtype == torch.float64
    assert torch.allclose(J, A, rtol=0, atol=1e-6)
    # a non-symmetric A is reported as such, and J y = A y = f(y) exactly
    spec = jacobian_spectrum(LinearDenoiser(A), y, SIGMA)
    assert spec.asymmetry > 0.5
    assert spec.homogeneity_error < 1e-12 and abs(spec.homogeneity - 1) < 1e-12
    assert math.isclose(spec.trace, float(A.trace()), rel_tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wiener_jacobian_closed_form_and_symmetric(dtype):
    dist = datasets_synth.get("gaussian", size=8, mean=0.0)
    wiener = WienerFilter(dist.eigenvalues, dist.mean)
    y = (dist.sample(1, seed=3) + SIGMA * torch.randn(1, 1, 8, 8)).to(dtype)
    C = dense_covariance(dist.eigenvalues)
    expected = C @ torch.linalg.inv(C + SIGMA**2 * torch.eye(64, dtype=torch.float64))
    spec = jacobian_spectrum(wiener, y, SIGMA)
    assert torch.allclose(spec.jacobian.double(), expected, rtol=0, atol=1e-6)
    assert spec.asymmetry < 1e-6  # the MMSE denoiser's Jacobian is symmetric (§6)
    # eigenvalues are the shrinkage factors λ/(λ+σ²), and tr J = Σ λ/(λ+σ²)
    shrink = (dist.eigenvalues / (dist.eigenvalues + SIGMA**2)).reshape(-1)
    assert torch.allclose(spec.eigenvalues, shrink.sort(descending=True).values, atol=1e-6)
    assert math.isclose(spec.trace, float(shrink.sum()), rel_tol=1e-6)
    # mean 0 makes the Wiener filter linear: J y = f(y)
    assert spec.homogeneity_error < 1e-5


def test_bias_free_net_is_homogeneous_and_biased_net_is_not():
    y = noisy_image(8)
    bias_free = jacobian_spectrum(ResidualDenoiser(small_net(bias=False)), y, SIGMA)
    assert bias_free.homogeneity_error < 1e-4  # f(y) = J y (SCIENCE.md §6)
    assert abs(bias_free.homogeneity - 1) < 1e-4
    biased = jacobian_spectrum(ResidualDenoiser(small_net(bias=True)), y, SIGMA)
    assert biased.homogeneity_error > 1e-2


def test_matches_per_pixel_backward_loop():
    f = ResidualDenoiser(small_net(bias=False))
    y = noisy_image(8)
    leaf = y.clone().requires_grad_(True)
    out = f(leaf, SIGMA).reshape(-1)
    loop = torch.stack([torch.autograd.grad(out[i], leaf, retain_graph=True)[0].reshape(-1)
                        for i in range(out.numel())])
    for method in ("vmap", "replicate"):
        assert torch.allclose(jacobian(f, y, SIGMA, method=method), loop, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- mechanics


def test_chunked_equals_unchunked_and_methods_agree():
    f = ResidualDenoiser(small_net(bias=False))
    y = noisy_image(8)
    full = jacobian(f, y, SIGMA, chunk=64)
    for chunk in (1, 7, 64, 1000):
        assert torch.allclose(jacobian(f, y, SIGMA, chunk=chunk), full, rtol=0, atol=1e-6)
    small_budget = jacobian(f, y, SIGMA, memory_budget=200_000)  # forces several chunks
    assert torch.allclose(small_budget, full, rtol=0, atol=1e-6)
    replicate = jacobian(f, y, SIGMA, chunk=10, method="replicate")
    assert torch.allclose(replicate, full, rtol=0, atol=1e-6)


def test_runs_under_no_grad_and_accepts_chw():
    f = ResidualDenoiser(small_net(bias=False))
    y = noisy_image(8)
    with torch.no_grad():
        J, fy = jacobian_and_output(f, y[0], SIGMA)
    assert J.shape == (64, 64) and fy.shape == (1, 8, 8)
    assert torch.allclose(fy, f(y, SIGMA)[0].detach(), atol=1e-6)


def test_batch_coupled_denoiser_detected_by_replicate_check():
    def coupled(y, sigma):  # output of one image depends on the batch mean
        return y - 0.5 * y.mean(0, keepdim=True)

    y = noisy_image(8)
    with pytest.raises(ValueError, match="depends on the other images"):
        jacobian(coupled, y, SIGMA, method="replicate")
    # vmap differentiates the single-image map, well defined: (1/2) I; auto falls back to it
    for method in ("vmap", "auto"):
        J = jacobian(coupled, y, SIGMA, method=method)
        assert torch.allclose(J, 0.5 * torch.eye(64), atol=1e-7)
    assert not torch.allclose(jacobian(coupled, y, SIGMA, method="replicate", check=False),
                              0.5 * torch.eye(64), atol=1e-3)  # what the check prevents


def test_errors():
    f = ResidualDenoiser(small_net(bias=False))
    y = noisy_image(8)
    with pytest.raises(ValueError, match="shape"):
        jacobian(f, torch.rand(2, 1, 8, 8), SIGMA)
    with pytest.raises(ValueError, match="method must be one of"):
        jacobian(f, y, SIGMA, method="forward")
    with pytest.raises(ValueError, match="chunk must be"):
        jacobian(f, y, SIGMA, chunk=0)
    with pytest.raises(ValueError, match="sigma"):
        jacobian(f, y, -1.0)
    with pytest.raises(ValueError, match="not differentiable"):
        jacobian(lambda y, s: torch.from_numpy(np.asarray(y.detach()) * 0.5), y, SIGMA)
    f.train()
    with pytest.raises(ValueError, match="training mode"):
        jacobian(f, y, SIGMA)


# ----------------------------------------------------------------------------- spectrum


def test_spectrum_ordering_and_eigenvector_images():
    f = ResidualDenoiser(small_net(bias=False))
    spec = jacobian_spectrum(f, noisy_image(8), SIGMA)
    assert spec.eigenvalues.dtype == torch.float64
    assert bool(torch.all(spec.eigenvalues[:-1] >= spec.eigenvalues[1:]))
    V = spec.eigenvectors
    assert torch.allclose(V.T @ V, torch.eye(64, dtype=torch.float64), atol=1e-10)
    S = 0.5 * (spec.jacobian.double() + spec.jacobian.double().T)
    assert torch.allclose(S @ V[:, 0], spec.eigenvalues[0] * V[:, 0], atol=1e-6)
    images = top_eigenvectors_as_images(spec, 5)
    assert images.shape == (5, 1, 8, 8)
    assert torch.allclose(images[2].reshape(-1), V[:, 2])
    with pytest.raises(ValueError, match="k must be"):
        top_eigenvectors_as_images(spec, 0)


# ----------------------------------------------------------------------------- top-k spectrum


def small_unet_denoiser(size_scale: float = 1.0) -> NetworkDenoiser:
    """A bias-free UNet (4 channels, 2 levels) with He-normal weights times ``size_scale``
    everywhere (the output layer included), so that (J + Jᵀ)/2 has a spread spectrum
    (about 1.5 … 0.6 at 16×16)."""
    cfg = NetConfig(arch="unet", channels=4, blocks=2)
    net = build_network(cfg, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.copy_(size_scale * (2.0 / p[0].numel()) ** 0.5
                        * torch.randn(p.shape, generator=g))
    return NetworkDenoiser(net.eval(), cfg)


def test_top_k_spectrum_matches_full_spectrum():
    den, y = small_unet_denoiser(), noisy_image(16)
    full = jacobian_spectrum(den, y, SIGMA)
    k = 8  # λ_8 − λ_9 ≈ 5e-3 here: the top-8 span is well defined
    top = jacobian_spectrum(den, y, SIGMA, k=k)
    assert top.k == k and top.jacobian is None and full.k is None
    assert top.eigenvalues.shape == (k,) and top.eigenvectors.shape == (256, k)
    assert float(top.residual_norms.max()) <= TOP_K_TOL
    assert float((top.eigenvalues - full.eigenvalues[:k]).abs().max()) < 1e-3
    assert float(subspace_angles(top.eigenvectors, full.eigenvectors[:, :k]).max()) < 0.05
    V = top.eigenvectors
    assert torch.allclose(V.T @ V, torch.eye(k, dtype=torch.float64), atol=1e-10)
    assert top.products < 256  # fewer J v, Jᵀ v pairs than the d rows of the full J
    # Hutchinson trace (deflated by the top-k span): unbiased, within a few SEs
    assert 0 < top.trace_se < 0.01 * full.trace
    assert abs(top.trace - full.trace) < 4 * top.trace_se
    assert top.effective_dimension == top.trace
    assert top.asymmetry == pytest.approx(full.asymmetry, rel=0.05)
    assert top.homogeneity_error < 1e-5 and abs(top.homogeneity - 1) < 1e-5  # bias-free
    assert torch.equal(top.output, full.output)
    # count of eigenvalues above a level: exact once λ_k is below it, else unknown
    level = float(top.eigenvalues[-1]) + 1e-3
    assert top.count_above(level) == full.count_above(level) == int((full.eigenvalues > level)
                                                                    .sum())
    with pytest.raises(ValueError, match="unknown from the top 8 eigenvalues.*larger k"):
        top.count_above(0.5)
    images = top_eigenvectors_as_images(top, 3)
    assert images.shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 8\]"):
        top_eigenvectors_as_images(top, 9)
    # deterministic for a seed; another seed moves only the random parts, within errors
    again = jacobian_spectrum(den, y, SIGMA, k=k)
    assert torch.equal(again.eigenvalues, top.eigenvalues) and again.trace == top.trace
    other = jacobian_spectrum(den, y, SIGMA, k=k, seed=1, probes=16)
    assert other.trace != top.trace and abs(other.trace - full.trace) < 4 * other.trace_se
    assert float((other.eigenvalues - full.eigenvalues[:k]).abs().max()) < 1e-3


def test_top_k_spectrum_of_batch_coupled_linear_map():
    """A denoiser coupling batch images: products by batched cotangents (method vmap)."""
    g = torch.Generator().manual_seed(2)
    A = torch.randn(64, 64, generator=g, dtype=torch.float64) / 8

    def coupled(y, sigma):  # one image alone: f(y) = A y − y/2, so J = A − I/2
        return LinearDenoiser(A)(y, sigma) - 0.5 * y.mean(0, keepdim=True)

    y = torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64)
    J = A - 0.5 * torch.eye(64, dtype=torch.float64)
    evals = torch.linalg.eigvalsh(0.5 * (J + J.T)).flip(0)
    top = jacobian_spectrum(coupled, y, SIGMA, k=6)
    assert float((top.eigenvalues - evals[:6]).abs().max()) < 1e-3
    V = torch.randn(64, 3, generator=g, dtype=torch.float64)
    JV, JtV = jacobian_products(coupled, y, SIGMA, V)
    assert torch.allclose(JV, J @ V, atol=1e-12) and torch.allclose(JtV, J.T @ V, atol=1e-12)
    with pytest.raises(ValueError, match="depends on the other images"):
        jacobian_spectrum(coupled, y, SIGMA, k=6, method="replicate")
    # k = d: the whole space, so every eigenvalue and the trace are exact
    every = jacobian_spectrum(coupled, y, SIGMA, k=64)
    assert torch.allclose(every.eigenvalues, evals, atol=1e-10)
    assert every.trace == pytest.approx(float(J.trace()), abs=1e-9)
    assert every.asymmetry == pytest.approx(float((J - J.T).norm() / J.norm()), rel=1e-9)


def test_top_k_errors():
    f = ResidualDenoiser(small_net(bias=False))
    y = noisy_image(8)
    for k in (0, 65, 2.5, True, "8"):
        with pytest.raises(ValueError, match=r"^k must be None \(full spectrum\) or an "
                                             r"integer in \[1, 64\], got [^\n]*$"):
            jacobian_spectrum(f, y, SIGMA, k=k)
    for bad, match in ((dict(probes=1), "probes must be an integer >= 2"),
                       (dict(tol=0.0), "tol must be a float > 0"),
                       (dict(seed=-1), "seed must be an integer >= 0"),
                       (dict(max_products=0), "max_products must be")):
        with pytest.raises(ValueError, match=match):
            jacobian_spectrum(f, y, SIGMA, k=4, **bad)
    with pytest.raises(ValueError, match="probes apply only to the top-k spectrum; pass k"):
        jacobian_spectrum(f, y, SIGMA, probes=8)
    with pytest.raises(ValueError, match="V must have shape"):
        jacobian_products(f, y, SIGMA, torch.ones(63, 2))
    with pytest.warns(RuntimeWarning, match="not converged after"):
        jacobian_spectrum(f, y, SIGMA, k=8, max_products=20)


def test_analyse_above_the_size_threshold_uses_top_k(monkeypatch):
    """jacobian_analysis.analyse past TOP_K_MIN_D: top-k eigenvalues then NaN, count_above
    exact when λ_k ≤ 0.5 within TOP_K_MAX, NaN otherwise; trace within its SEs."""
    dist = datasets_synth.get("gaussian", size=8)
    x = dist.sample(1, seed=0)
    den = WienerFilter(dist.eigenvalues, dist.mean)
    for sigma in (0.3, 0.05):
        y = (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
        exact = jacobian_analysis.analyse(den, x[0], y[0].double(), sigma)
        monkeypatch.setattr(jacobian_analysis, "TOP_K_MIN_D", 0)
        monkeypatch.setattr(jacobian_analysis, "TOP_K_START", 8)
        monkeypatch.setattr(jacobian_analysis, "TOP_K_MAX", 16)
        top = jacobian_analysis.analyse(den, x[0], y[0].double(), sigma)
        monkeypatch.undo()
        n = int(np.isfinite(top["eigenvalues"]).sum())
        assert n in (8, 16) and np.isnan(top["eigenvalues"][n:]).all()
        np.testing.assert_allclose(top["eigenvalues"][:n], exact["eigenvalues"][:n], atol=1e-3)
        if exact["count_above"] < n:  # λ_n ≤ 0.5: exact
            assert top["count_above"] == exact["count_above"]
        else:  # more than TOP_K_MAX eigenvalues above 0.5: unknown
            assert exact["count_above"] >= 16 and math.isnan(top["count_above"])
        assert abs(top["trace"] - exact["trace"]) < 4 * top["trace_se"] + 1e-9
        assert exact["trace_se"] == 0.0
    assert exact["count_above"] >= 16  # σ = 0.05 exercised the NaN branch


def test_pair_similarity_above_the_size_threshold(monkeypatch, tmp_path):
    """Top-k overlaps and a Hutchinson Jacobian distance agree with the exact ones."""
    paths = []
    for i, seed in enumerate((0, 0, 5)):
        cfg = NetConfig(arch="bfcnn", channels=8, depth=3)
        net = build_network(cfg, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
        paths.append(tmp_path / f"net{i}.pt")
        NetworkDenoiser(net, cfg).save(paths[-1])
    args = ("gaussian", {"size": 8}, [0.1], 2, 0)
    exact = jacobian_analysis.compute_pair_similarity(paths[0], paths[2], *args, k=4)
    monkeypatch.setattr(jacobian_analysis, "TOP_K_MIN_D", 0)
    same = jacobian_analysis.compute_pair_similarity(paths[0], paths[1], *args, k=4)
    other = jacobian_analysis.compute_pair_similarity(paths[0], paths[2], *args, k=4)
    np.testing.assert_allclose(same["overlap"], 1.0, atol=1e-6)
    np.testing.assert_allclose(same["jacobian_distance"], 0.0, atol=1e-6)
    np.testing.assert_allclose(other["jacobian_distance"], exact["jacobian_distance"], rtol=0.3)
    np.testing.assert_allclose(other["overlap"], exact["overlap"], atol=0.05)


# ----------------------------------------------------------------------------- helpers


def test_subspace_angles():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(64, 10, generator=g, dtype=torch.float64))
    U = torch.randn(64, 5, generator=g, dtype=torch.float64)
    R = torch.randn(5, 5, generator=g, dtype=torch.float64)
    assert float(subspace_angles(U, U @ R).abs().max()) < 1e-7  # same span, other basis
    right = torch.full((5,), math.pi / 2, dtype=torch.float64)
    assert torch.allclose(subspace_angles(Q[:, :5], Q[:, 5:]), right)
    # a known angle, tiny and moderate: span{e1} against span{cos θ e1 + sin θ e2}
    for theta in (1e-9, 0.3, 1.2):
        a = Q[:, :1]
        b = math.cos(theta) * Q[:, :1] + math.sin(theta) * Q[:, 1:2]
        assert math.isclose(float(subspace_angles(a, b)[0]), theta, rel_tol=1e-6)
    # a 2-D span containing a line: one angle, 0; numpy input accepted
    assert float(subspace_angles(Q[:, :2].numpy(), Q[:, 1:2].numpy()).item()) < 1e-7
    with pytest.raises(ValueError, match="same number of rows"):
        subspace_angles(torch.ones(4, 2), torch.ones(5, 2))


def test_sure_matches_exact_wiener_mse():
    dist = datasets_synth.get("gaussian", size=8, mean=0.0)
    wiener = WienerFilter(dist.eigenvalues, dist.mean)
    n, sigma = 4000, 0.15
    g = torch.Generator().manual_seed(5)
    y = dist.sample(n, seed=1) + sigma * torch.randn(n, 1, 8, 8, generator=g)
    trace = jacobian_spectrum(wiener, y[0], sigma).trace  # the same at every y: linear filter
    sure = sure_mse(wiener, y, sigma, trace)
    assert sure.shape == (n,)
    exact = wiener.mse(sigma)  # = MMSE (SCIENCE.md §4)
    se = float(sure.std()) / math.sqrt(n)
    assert abs(float(sure.mean()) - exact) < 4 * se
    assert se < 0.05 * exact  # the check has power
    # trace=None computes tr J per image, same values
    assert torch.allclose(sure_mse(wiener, y[:3], sigma), sure[:3], atol=1e-6)
    # a wrong trace (the identity's d) is rejected by the data: biased by 2σ²(d − tr J)/d
    wrong = sure_mse(wiener, y, sigma, 64.0)
    assert abs(float(wrong.mean()) - exact) > 10 * se
