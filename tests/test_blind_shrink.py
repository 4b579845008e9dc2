"""BlindShrink: the noise estimate, the residual form below θ, the blind Wiener shrinkage."""

from __future__ import annotations

import math

import pytest
import torch

from datasets_synth.gaussian import GaussianField
from theorybench.blind_shrink import THRESHOLD_MARGIN, BlindShrink, noise_level, texture_level
from theorybench.denoisers.network import NetworkDenoiser
from theorybench.networks import NetConfig, build_network
from theorybench.train_config import TrainConfig
from theorybench.training import train

SMALL = NetConfig(arch="unet", channels=4, blocks=2, shrink=True)


def test_noise_levels_read_white_noise_and_the_robust_one_ignores_edges():
    gen = torch.Generator().manual_seed(0)
    noise = 0.3 * torch.randn(32, 1, 32, 32, generator=gen)
    for level in (noise_level, texture_level):
        estimate = level(noise)
        assert estimate.shape == (32,)
        assert abs(float(estimate.mean()) / 0.3 - 1) < 0.02  # 961 differences: ±2–4 % each
        assert float((estimate / 0.3 - 1).abs().max()) < 0.15
        torch.testing.assert_close(level(2.5 * noise), 2.5 * estimate)  # degree 1
    i, j = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    edge = (i + j >= 32).float().expand(2, 1, 32, 32)  # a clean diagonal edge
    assert float(texture_level(edge).max()) == 0.0  # 62 differences of ±1 among 961
    assert float(noise_level(edge).min()) == pytest.approx(math.sqrt(62 / 961) / 2, rel=0.05)
    with pytest.raises(ValueError, match="h, w >= 2"):
        noise_level(torch.zeros(2, 1, 1, 8))


def test_noise_level_gradient_is_spread_over_the_image():
    # the shrinkage's σ̂ is smooth: ∂σ̂/∂u is spread over the pixels, no spike
    u = 0.3 * torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(8))
    u.requires_grad_(True)
    (grad,) = torch.autograd.grad(noise_level(u).sum(), u)
    assert float(grad.abs().max()) < 10 * float(grad.abs().mean())
    assert float(grad.norm()) < 0.1  # a median's gradient has norm ≈ 1 on one difference


def test_uncalibrated_and_small_noise_keep_the_residual_form():
    net = build_network(SMALL, torch.Generator().manual_seed(1))
    assert isinstance(net, BlindShrink) and math.isinf(float(net.threshold))
    with torch.no_grad():  # a nonzero output layer, so r is not trivially 0
        [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.normal_(
            0, 0.1, generator=torch.Generator().manual_seed(2))
    net.eval()
    u = 0.05 * torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(net(u), net.inner(u))  # θ = ∞: the residual form
    net.calibrate(u)  # θ ≥ 1.1 × the largest σ̂ of these images
    assert float(net.shrinkage(u).min()) == 1.0
    torch.testing.assert_close(net(u), net.inner(u))
    torch.testing.assert_close(net(0.5 * u), 0.5 * net(u))  # homogeneous while σ̂ ≤ θ
    assert float(net.shrinkage(30 * u).max()) < 1.0  # far above θ it shrinks


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_zero_network_is_the_blind_wiener_shrinkage_of_white_data(sigma):
    # white data of variance v: with r = 0, f(y) = μ̂ + a u, and a = v/(v + σ̂² − θ²)
    # with σ̂² ≈ v + σ², θ ≈ 1.1 × 1.06 √v: within 0.2 % of the MMSE v σ²/(v + σ²)
    v, gen = 0.04, torch.Generator().manual_seed(4)
    net = build_network(SMALL, gen).eval()  # output layer zero: r = 0
    x = math.sqrt(v) * torch.randn(256, 1, 64, 64, generator=gen)
    net.calibrate(x)
    assert float(net.threshold) == pytest.approx(THRESHOLD_MARGIN * float(noise_level(x).max()))
    assert 1.1 * math.sqrt(v) < float(net.threshold) < 1.1 * 1.1 * math.sqrt(v)
    y = x + sigma * torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        x_hat = y - net(y)
    mse = float((x_hat - x).pow(2).mean())
    mmse = v * sigma**2 / (v + sigma**2)
    assert mse == pytest.approx(mmse, rel=0.01)
    assert mse < float(x.pow(2).mean()) < sigma**2  # beats the mean image (0) and y


def test_shrinkage_and_forward_are_the_stated_formulas():
    # a = σ_d²/(σ_d² + max(0, σ̂² − θ²)) per image and y − f(y) = (1 − a) u + √a r(u), with
    # a nonzero r (the MSE of a zero r is flat near its optimum: it cannot pin a or b down)
    gen = torch.Generator().manual_seed(6)
    net = build_network(SMALL, gen).eval()
    with torch.no_grad():
        [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.normal_(
            0, 0.1, generator=gen)
    net.calibrate(0.2 * torch.randn(64, 1, 16, 16, generator=gen))
    u = torch.randn(5, 1, 16, 16, generator=gen) * torch.tensor([0.1, 0.3, 0.6, 1.0, 2.0]
                                                                 ).view(5, 1, 1, 1)
    theta, v = float(net.threshold), float(net.variance)
    expected = v / (v + (noise_level(u).square() - theta**2).clamp(min=0))
    torch.testing.assert_close(net.shrinkage(u).flatten(), expected)
    a = expected.view(5, 1, 1, 1)
    assert float(a.min()) < 0.5 and float(a.max()) == 1.0  # both regimes among the images
    with torch.no_grad():
        r = net.inner(u)
        assert float(r.norm()) > 0.1 * float(u.norm())
        torch.testing.assert_close(net(u), (1 - a) * u + a.sqrt() * r)


def test_training_calibrates_and_checkpoints_keep_the_form(tmp_path):
    field = GaussianField(size=16)
    cfg = TrainConfig(mode="universal", center=True, steps=16, batch_size=8, seed=5)
    den = train(field, SMALL, cfg)
    x = field.sample(1024, 2**41 + 5)  # the training stream's calibration images
    variance = float((x - x.mean(0)).pow(2).mean())
    assert float(den.net.variance) == pytest.approx(variance, rel=1e-5)
    theta = THRESHOLD_MARGIN * float(noise_level(x - x.mean(0)).max())
    assert float(den.net.threshold) == pytest.approx(theta, rel=1e-5)
    den.save(tmp_path / "net.pt")
    back = NetworkDenoiser.load(tmp_path / "net.pt")
    assert back.net.active  # the host-side flag follows the loaded θ
    y = field.sample(4, 9) + 1.5 * torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(back(y, 1.5), den(y, 1.5))
    assert float(back.net.shrinkage(y - den.center).max()) < 1.0  # σ = 1.5: shrinking
    # a per-σ network told σ takes EDM's form: the blind shrinkage is switched off
    per_sigma = train(field, SMALL, TrainConfig(sigma=1.5, center=True, precondition="edm",
                                                steps=16, batch_size=8, seed=5), init=den)
    assert math.isinf(float(per_sigma.net.threshold)) and per_sigma.c_skip < 1
    # so is one trained from scratch (calibrated first, as every BlindShrink network is)
    cold = train(field, SMALL, TrainConfig(sigma=1.5, center=True, precondition="edm",
                                           steps=16, batch_size=8, seed=5))
    assert math.isinf(float(cold.net.threshold)) and cold.c_skip < 1


def test_piecewise_constant_data_switches_the_shrinkage_off():
    # no fine-scale texture (median σ̂ = 0 < 0.1 σ_d): the residual form at every σ
    gen = torch.Generator().manual_seed(6)
    x = torch.zeros(64, 1, 16, 16)
    x[..., 5:11, 4:12] = torch.rand(64, 1, 1, 1, generator=gen)  # rectangles, random heights
    net = build_network(SMALL, gen)
    net.calibrate(x - x.mean(0))
    assert not net.active and float(net.variance) > 0
    y = x + 2.0 * torch.randn(x.shape, generator=gen)
    assert float(net.shrinkage(y).min()) == 1.0
    net.calibrate(x + 0.3 * torch.randn(x.shape, generator=gen))  # textured: on
    assert net.active
