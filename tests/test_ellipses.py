"""The ``ellipses`` family (k = 1 … 7) and its MMSE bracket: MMSE/σ² → k at small σ."""

import math

import pytest
import torch

import datasets_synth
from datasets_synth.conformance import check_distribution
from datasets_synth.ellipses import Ellipses, ellipse_coverage
from datasets_synth.manifolds import disk_coverage
from datasets_synth.references.disks import PartialShapeOracle, ShapeOracle
from theorybench.evaluation import mse_curve, paired_difference

KS = tuple(range(1, 8))


def supersampled(ellipse, size, sub=64):
    """Brute-force coverage of an ellipse (cx, cy, a, b, θ): sub×sub points per pixel."""
    coords = (torch.arange(size * sub, dtype=torch.float64) + 0.5) / sub
    cx, cy, a, b, theta = ellipse
    dx, dy = coords[None, :] - cx, coords[:, None] - cy
    u = math.cos(theta) * dx + math.sin(theta) * dy
    v = math.cos(theta) * dy - math.sin(theta) * dx
    inside = ((u / a) ** 2 + (v / b) ** 2 <= 1).double()
    return inside.view(size, sub, size, sub).mean((1, 3))


@pytest.mark.parametrize("k", KS)
def test_conformance_and_dimension(k):
    dist = datasets_synth.get("ellipses", k=k)
    check_distribution(dist)
    _, latents = dist.sample_with_latents(4, seed=0)
    params = latents["params"]
    assert dist.intrinsic_dim == k and params.shape == (4, dist.geometry_dim + 2)
    assert dist.geometry_dim + sum(dist.free_intensities) == k
    inside = (params[:, :dist.geometry_dim] >= dist.geometry_low) \
        & (params[:, :dist.geometry_dim] <= dist.geometry_high)
    assert bool(inside.all())


@pytest.mark.parametrize("k", KS)
def test_tangent_columns_are_the_numerical_derivatives_of_the_render(k):
    """Each column of tangent_space is ∂render/∂θ_j (central difference) for a free θ_j,
    and the k columns have full rank (for k = 7 away from a = b, where the angle does not
    move the image: the manifold is singular there)."""
    dist = Ellipses(k=k)
    _, latents = dist.sample_with_latents(8, seed=3)
    params = latents["params"]
    pick = int(((params[:, 2] - params[:, 3]).abs() > 0.5).int().argmax()) if k == 7 else 1
    one = {"params": params[pick:pick + 1]}
    tangent = dist.tangent_space(one)
    assert tangent.shape == (dist.d, k)
    s = torch.linalg.svdvals(tangent)
    assert float(s[-1]) > 1e-3 * float(s[0])
    free = [*range(dist.geometry_dim), *[dist.geometry_dim + i for i, f in
                                         enumerate(dist.free_intensities) if f]]
    p, h = one["params"][0], 1e-6
    for col, j in enumerate(free):
        step = torch.zeros_like(p)
        step[j] = h
        fd = (dist.render((p + step)[None]) - dist.render((p - step)[None])).reshape(-1) / (2 * h)
        torch.testing.assert_close(fd, tangent[:, col], atol=1e-6, rtol=1e-5)


def test_circle_is_the_disks_renderer_and_ellipses_match_supersampling():
    g = torch.tensor([[7.3, 8.1, 3.2], [5.5, 9.9, 2.1], [8.0, 8.0, 4.0]], dtype=torch.float64)
    circles = torch.cat([g[:, :2], g[:, 2:], g[:, 2:], torch.full((3, 1), 0.7,
                                                                  dtype=torch.float64)], 1)
    torch.testing.assert_close(ellipse_coverage(circles, 16), disk_coverage(g, 16),
                               atol=1e-12, rtol=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        u = torch.rand(5, dtype=torch.float64, generator=gen)
        e = (4 + 8 * u[0].item(), 4 + 8 * u[1].item(), 2 + 2 * u[2].item(),
             2 + 2 * u[3].item(), math.pi / 2 * u[4].item())
        m = ellipse_coverage(torch.tensor([e], dtype=torch.float64), 16)[0]
        assert float((m - supersampled(e, 16)).abs().max()) <= 0.06 / min(e[2], e[3]), e


@pytest.mark.parametrize("k", (1, 4, 7))
def test_coverage_jacobian_matches_autograd(k):
    dist = Ellipses(k=k)
    g = dist.sample_with_latents(3, seed=1)[1]["params"][:, :dist.geometry_dim]
    m, jm = dist.coverage_jacobian(g)
    torch.testing.assert_close(m, dist.coverage(g), atol=0, rtol=0)
    # k <= 5 renders circles with the disks renderer: the ellipse formula's values
    torch.testing.assert_close(m, ellipse_coverage(dist.ellipse(g), 16), atol=1e-12, rtol=0)
    weights = torch.randn(3, 16, 16, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(2))
    q = g.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((dist.coverage(q) * weights).sum(), q)
    torch.testing.assert_close((jm * weights[:, None]).sum((2, 3)), grad, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("bad, match", [({"k": 0}, r"k must be .*\[1, 7\]"),
                                        ({"k": 8}, r"k must be .*\[1, 7\]"),
                                        ({"r_min": 1.0}, "r_min"),
                                        ({"k": 3, "fg_mean": 0.5, "bg_mean": 0.5}, "differ"),
                                        ({"size": 16, "r_max": 8.0}, "r_max")])
def test_bad_parameters(bad, match):
    with pytest.raises(ValueError, match=match):
        Ellipses(**bad)


@pytest.mark.parametrize("k, sigma", [(4, 0.05), (1, 0.3)])
def test_oracle_with_fixed_intensities_against_dense_gaussian(k, sigma):
    """One or both intensities fixed (τ = 0): E[x | y, g] of the closed form = the dense
    Gaussian x ~ N(Aμ, AΛAᵀ), Λ = diag(τ²) singular, y = x + σz."""
    dist = Ellipses(k=k)
    x, latents = dist.sample_with_latents(3, seed=4)
    y = x.double() + sigma * torch.randn(x.shape, dtype=torch.float64,
                                         generator=torch.Generator().manual_seed(1))
    out = ShapeOracle(dist)(y, sigma, latents=latents)
    masks = dist.coverage(latents["params"][:, :dist.geometry_dim]).flatten(1)
    mean = torch.tensor(dist.intensity_mean, dtype=torch.float64)
    var = torch.diag(torch.tensor(dist.intensity_std, dtype=torch.float64) ** 2)
    for i in range(3):
        a = torch.stack([masks[i], 1 - masks[i]], 1)
        cov = a @ var @ a.T
        gain = cov @ torch.linalg.inv(cov + sigma ** 2 * torch.eye(dist.d, dtype=torch.float64))
        ref = a @ mean + gain @ (y[i].flatten() - a @ mean)
        torch.testing.assert_close(out[i].flatten(), ref, atol=1e-9, rtol=1e-9)


def test_quadrature_posterior_is_exact_kind_and_needs_no_latents():
    dist = Ellipses(k=2)
    refs = dist.reference_denoisers()
    quad = refs["posterior-quadrature"]
    assert quad.kind == "exact" and not quad.oracle and not quad.differentiable
    x = dist.sample(2, seed=0)
    torch.testing.assert_close(quad(x, 0.05), quad(x, 0.05, latents=None))
    with pytest.raises(ValueError, match="free"):
        PartialShapeOracle(dist, free=(0, 2))


@pytest.mark.parametrize("k, n", [(1, 400), (3, 135), (7, 120)])
def test_posterior_mmse_over_sigma2_is_k_at_small_sigma(k, n):
    """SCIENCE.md §5: total MSE/σ² → k. The posterior (an upper bound) is within 15 % of k
    at σ = 0.005 (n images: Monte Carlo SE ≈ √(2/(kn)) ≤ 7 %), and its error is the
    noise projected on the tangent space, image by image (paired, within 5 % on average)."""
    dist = Ellipses(k=k)
    sigma = 0.005
    x, latents = dist.sample_with_latents(n, seed=11)
    z = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = dist.reference_denoisers()["posterior"](x.double() + sigma * z, sigma)
    total = (out - x.double()).flatten(1).square().sum(1) / sigma ** 2
    assert abs(float(total.mean()) - k) <= 0.15 * k
    projected = []
    for i in range(min(n, 40)):
        q, _ = torch.linalg.qr(dist.tangent_space({"params": latents["params"][i:i + 1]}))
        projected.append(float((q.T @ z[i].flatten()).square().sum()))
    projected = torch.tensor(projected, dtype=torch.float64)
    assert abs(float(total[:len(projected)].mean() / projected.mean()) - 1) < 0.05


@pytest.mark.parametrize("k", KS)
def test_lower_is_below_upper(k):
    """L ≤ U at every σ: strictly (paired errors) for an oracle; for the quadrature
    posterior (k ≤ 2, the same E[x|y] by another method) within 3 paired SE."""
    dist = Ellipses(k=k)
    refs = dist.reference_denoisers()
    upper = refs.pop("posterior")
    ((name, lower),) = refs.items()
    sigmas = [0.01, 0.3]
    lo = mse_curve(lower, dist, sigmas, n=12, seed=0)
    hi = mse_curve(upper, dist, sigmas, n=12, seed=0)
    diff = paired_difference(lo, hi)
    slack = 3 * diff["se"].to_numpy() if lower.kind == "exact" else 0.0
    assert (diff["diff"].to_numpy() <= slack + 1e-12).all(), (name, diff)


@pytest.mark.parametrize("k", (1, 3, 7))
def test_posterior_jacobian_projects_on_the_tangent_space(k):
    """SCIENCE.md §5–6: at small σ the MMSE Jacobian Cov[x|y]/σ² is close to the projection
    on the k-dimensional tangent space: k eigenvalues above 0.5, the rest near 0, trace ≈ k,
    top-k eigenvectors within a few degrees of the tangent space."""
    from scipy.linalg import subspace_angles

    dist = Ellipses(k=k)
    x, latents = dist.sample_with_latents(1, seed=2)
    sigma = 0.01
    y = x.double() + sigma * torch.randn(x.shape, dtype=torch.float64,
                                         generator=torch.Generator().manual_seed(3))
    mom = dist.reference_denoisers()["posterior"].moments(y, sigma)
    eigenvalues, vectors = torch.linalg.eigh(mom["jacobian"])
    eigenvalues, vectors = eigenvalues.flip(0), vectors.flip(1)
    assert int((eigenvalues > 0.5).sum()) == k and float(eigenvalues[k]) < 0.1
    assert float(mom["jacobian"].trace()) == pytest.approx(k, rel=0.15)
    angles = subspace_angles(vectors[:, :k].numpy(), dist.tangent_space(latents).numpy())
    assert math.degrees(float(angles.max())) < 10
