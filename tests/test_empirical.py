"""The memorizing denoiser against a brute-force float64 loop (SCIENCE.md §3)."""

import math

import pytest
import torch

from theorybench import empirical_denoiser


def brute_force(train, y, sigma):
    """f(y) = Σ softmax(−‖y − x_i‖²/(2σ²)) x_i, one image and one training image at a time."""
    out = torch.zeros_like(y, dtype=torch.float64)
    for b in range(len(y)):
        logits = [-(y[b].double() - x.double()).pow(2).sum().item() / (2 * sigma**2) for x in train]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        total = sum(weights)
        for w, x in zip(weights, train, strict=True):
            out[b] += w / total * x.double()
    return out


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(40, 1, 6, 6, generator=g, dtype=torch.float64)
    y = train[:5] + 0.4 * torch.randn(5, 1, 6, 6, generator=g, dtype=torch.float64)
    y[0] = torch.rand(1, 6, 6, generator=g, dtype=torch.float64)  # far from every image
    return train, y


@pytest.mark.parametrize("sigma", [1e-4, 0.05, 0.3, 1.0, 5.0])
def test_matches_brute_force_float64(data, sigma):
    train, y = data
    f = empirical_denoiser(train, chunk=7)  # several chunks, last one partial
    assert (f(y, sigma) - brute_force(train, y, sigma)).abs().max() < 1e-5


@pytest.mark.parametrize("sigma", [1e-4, 0.3])
def test_float32_close_to_float64(data, sigma):
    train, y = data
    x32 = empirical_denoiser(train.float(), chunk=16)(y.float(), sigma)
    assert (x32.double() - brute_force(train, y, sigma)).abs().max() < 1e-3


def test_tiny_sigma_returns_nearest_training_image_without_nan(data):
    train, y = data
    for dtype in (torch.float32, torch.float64):
        f = empirical_denoiser(train.to(dtype))
        out = f(y.to(dtype), 1e-8)
        assert torch.isfinite(out).all()
        nearest = torch.cdist(y.flatten(1), train.flatten(1)).argmin(1)
        assert torch.allclose(out.double(), train[nearest], atol=1e-6)


def test_per_image_sigma_and_chunk_invariance(data):
    train, y = data
    sig = torch.tensor([0.1, 0.2, 0.5, 1.0, 2.0])
    out = empirical_denoiser(train, chunk=3)(y, sig)
    for i in range(len(y)):
        ref = empirical_denoiser(train, chunk=1000)(y[i:i + 1], float(sig[i]))
        assert torch.allclose(out[i:i + 1], ref, atol=1e-12)


def test_huge_sigma_returns_training_mean(data):
    train, y = data
    out = empirical_denoiser(train)(y, 1e6)
    assert torch.allclose(out, train.mean(0, keepdim=True).expand_as(out), atol=1e-6)


def test_nearest_matches_cdist(data):
    train, y = data
    dist, idx = empirical_denoiser(train, chunk=6).nearest(y, k=3)
    ref = torch.cdist(y.flatten(1), train.flatten(1)).topk(3, largest=False)
    assert torch.equal(idx, ref.indices)
    assert torch.allclose(dist, ref.values, atol=1e-9)


def test_bad_sigma_and_empty_training_set(data):
    train, y = data
    with pytest.raises(ValueError, match="sigma"):
        empirical_denoiser(train)(y, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        empirical_denoiser(train)(y, float("inf"))
    with pytest.raises(ValueError, match="non-empty"):
        empirical_denoiser(train[:0])
