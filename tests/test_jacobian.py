"""Jacobian of denoisers: closed forms (linear map, Wiener filter), homogeneity of bias-free
networks, SURE against the exact MMSE, principal angles (SCIENCE.md §6)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import datasets_synth
from theorybench.denoisers.wiener import WienerFilter
from theorybench.jacobian import (
    jacobian,
    jacobian_and_output,
    jacobian_spectrum,
    subspace_angles,
    sure_mse,
    top_eigenvectors_as_images,
)

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
