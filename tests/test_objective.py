"""Training objectives (SCIENCE.md §4c), mean-image centring, warm starts, convergence flag."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from datasets_synth.gaussian import GaussianField
from theorybench.denoisers.network import NetworkDenoiser
from theorybench.evaluation import mse_curve
from theorybench.jacobian import jacobian
from theorybench.networks import NetConfig
from theorybench.train_config import TrainConfig, edm_scales
from theorybench.training import (
    CHUNK_STEPS,
    converged,
    draw_sigma,
    objective_loss,
    tail_drop,
    train,
)

TINY = NetConfig(arch="bfcnn", channels=4, depth=3)


def test_kl_objective_equals_the_kl_integral_on_the_gaussian_family():
    """d·ln(σ_hi/σ_lo)·E[loss] = ∫ MSE σ⁻³ dσ for the Wiener filter, whose total MSE is
    Σ λσ²/(λ+σ²): the integral is Σ ½ ln(σ_hi²(λ+σ_lo²) / (σ_lo²(λ+σ_hi²))).

    The plain average of 20,000 draws has a relative standard error of about 0.55 %, most
    of it from the σ drawn; with the loss's expectation at each drawn σ, ``mean_k λ_k/(λ_k
    + σ²)``, as a control variate (its mean under the law is the integral, closed form) what
    remains is the loss's spread at a given σ, and the identity is checked within 0.5 %. The
    law of σ itself is tested in :func:`test_sigma_laws_of_the_objectives`."""
    dist = GaussianField(size=16)
    wiener = dist.reference_denoisers()["wiener"]
    cfg = TrainConfig(mode="universal", objective="kl", sigma_min=0.01, sigma_max=2.0)
    lam = dist.eigenvalues.double().flatten()
    gen = torch.Generator().manual_seed(0)
    losses, given_sigma = [], []
    for block in range(10):  # 20,000 (image, σ, noise) draws
        x = dist.sample(2000, seed=block)
        sigma = draw_sigma(cfg, len(x), gen, "cpu")
        noise = sigma * torch.randn(x.shape, generator=gen)
        y = x + noise
        residual = y - wiener(y, sigma.flatten())
        losses.append(float(objective_loss(residual, noise, sigma, "kl")))
        s2 = sigma.double().flatten()[:, None] ** 2
        given_sigma.append(float((lam / (lam + s2)).mean()))
    scale = dist.d * math.log(cfg.sigma_max / cfg.sigma_min)
    lo, hi = cfg.sigma_min ** 2, cfg.sigma_max ** 2
    closed = float((0.5 * torch.log(hi * (lam + lo) / (lo * (lam + hi)))).sum())
    plain = scale * sum(losses) / len(losses)
    assert abs(plain / closed - 1) < 0.03, (plain, closed)  # 5 standard errors
    controlled = closed + scale * (sum(losses) - sum(given_sigma)) / len(losses)
    assert abs(controlled / closed - 1) < 0.005, (controlled, closed)  # about 4 SE


def test_sigma_laws_of_the_objectives():
    gen = torch.Generator().manual_seed(1)
    kl = TrainConfig(mode="universal", objective="kl", sigma_min=0.01, sigma_max=1.0)
    s = draw_sigma(kl, 40_000, gen, "cpu").flatten()
    assert s.min() >= 0.01 and s.max() <= 1.0
    u = torch.log(s / 0.01) / math.log(100)  # uniform on [0, 1] under the log-uniform law
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.003
    paper = TrainConfig(mode="universal", objective="paper", sigma_max=2.0)
    s = draw_sigma(paper, 40_000, gen, "cpu").flatten()
    assert abs(float(s.median()) - 0.5) < 0.02  # σ = 2u²: median 2·(1/2)² = 0.5
    per = TrainConfig(sigma=0.3)
    assert torch.all(draw_sigma(per, 5, gen, "cpu") == 0.3)


def test_losses_are_the_weighted_squared_errors():
    r, n = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    s = torch.tensor([0.1, 1.0, 2.0]).view(3, 1, 1, 1)
    assert torch.allclose(objective_loss(r, n, s, "paper"), ((r - n) ** 2).mean())
    assert torch.allclose(objective_loss(r, n, s, "kl"), (((r - n) / s) ** 2).mean())
    weight = s**-2 + 0.25**-2  # balanced: the KL weight with a floor at σ_data = 0.25
    assert torch.allclose(objective_loss(r, n, s, "balanced", sigma_data=0.25),
                          ((r - n) ** 2 * weight).mean())


def test_centred_network_is_homogeneous_about_the_mean_image(tmp_path):
    dist = GaussianField(size=8, mean=0.5)
    cfg = TrainConfig(mode="universal", center=True, steps=CHUNK_STEPS, batch_size=8)
    den = train(dist, TINY, cfg)
    assert den.center is not None and abs(float(den.center.mean()) - 0.5) < 0.02
    with torch.no_grad():  # a far-from-identity residual, to make the check sharp
        den.net.layers[-1].weight.normal_(generator=torch.Generator().manual_seed(2))
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = dist.sample(1, 3) + 0.2 * noise
    J = jacobian(den, y, 0.2)
    centred = (y - den.center).flatten()
    # f(y) − μ̂ = ∇f(y)(y − μ̂) (bias-free about μ̂), while f(y) ≠ ∇f(y) y
    assert torch.allclose(J @ centred + den.center.flatten(), den(y, 0.2).flatten(), atol=1e-4)
    assert not torch.allclose(J @ y.flatten(), den(y, 0.2).flatten(), atol=1e-2)
    den.save(tmp_path / "c.pt")
    back = NetworkDenoiser.load(tmp_path / "c.pt")
    assert torch.equal(back.center, den.center)
    assert torch.equal(back(y, 0.2), den(y, 0.2))


def test_warm_start_begins_at_the_initial_network_and_keeps_its_mean():
    dist = GaussianField(size=8)
    base = train(dist, TINY, TrainConfig(mode="universal", center=True, steps=2 * CHUNK_STEPS,
                                         batch_size=8, lr=3e-3))
    with torch.no_grad():  # far from the identity, so that a fresh start would differ
        base.net.layers[-1].weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(4))
    cfg = TrainConfig(sigma=0.2, center=True, steps=CHUNK_STEPS, batch_size=8, lr=1e-3,
                      warmup=0)
    tuned = train(dist, TINY, cfg, init=base)
    monitor = tuned.history["monitor"]
    start = mse_curve(base, dist, [0.2], n=cfg.monitor_images, seed=0)  # other images
    assert monitor["sigma"] == [0.2] and monitor["step"][0] == 0
    assert math.isclose(monitor["mse"][0][0], float(start.mse[0]), rel_tol=0.3)
    # with a negligible learning rate the tuned network is the initial one, output for output
    still = train(dist, TINY, dataclasses.replace(cfg, lr=1e-12), init=base)
    y = dist.sample(4, 9) + 0.2 * torch.randn(4, 1, 8, 8, generator=torch.Generator())
    torch.testing.assert_close(still(y, 0.2), base(y, 0.2), atol=1e-6, rtol=1e-6)
    fresh = train(dist, TINY, dataclasses.replace(cfg, lr=1e-12))
    assert not torch.allclose(fresh(y, 0.2), base(y, 0.2), atol=1e-2)
    assert torch.equal(tuned.center, base.center)
    assert tuned.meta["warm_start"] is True
    with pytest.raises(ValueError, match="same NetConfig"):
        train(dist, NetConfig(arch="bfcnn", channels=5, depth=3), cfg, init=base)
    with pytest.raises(ValueError, match="init has a mean image but train_cfg.center is False"):
        train(dist, TINY, dataclasses.replace(cfg, center=False), init=base)


def test_preconditioned_network_starts_at_the_scalar_wiener_shrinkage(tmp_path):
    """EDM's scalings with σ_d² = the field's pixel variance v: the warm start, output layer
    zeroed, is f(y) = μ̂ + v/(v+σ²)·(y − μ̂), whose MSE is v σ²/(v + σ²) per pixel."""
    dist = GaussianField(size=8, std=0.2, mean=0.5)
    base = train(dist, TINY, TrainConfig(mode="universal", center=True, steps=CHUNK_STEPS,
                                         batch_size=8, lr=3e-3))
    with torch.no_grad():  # a far-from-zero residual, which the warm start must discard
        base.net.layers[-1].weight.normal_(generator=torch.Generator().manual_seed(2))
    sigma, v = 1.0, 0.2**2
    c_skip, c_out = edm_scales(sigma, 0.2)
    assert math.isclose(c_skip, v / (v + sigma**2)) and \
        math.isclose(c_out**-2, sigma**-2 + v**-1)  # the balanced objective's weight
    cfg = TrainConfig(sigma=sigma, precondition="edm", sigma_data=0.2, center=True,
                      steps=CHUNK_STEPS, batch_size=8, lr=1e-3, warmup=0, monitor_images=2000)
    tuned = train(dist, TINY, cfg, init=base)
    assert (tuned.c_skip, tuned.c_out) == (c_skip, c_out)
    start = tuned.history["monitor"]["mse"][0][0]
    assert math.isclose(start, v * sigma**2 / (v + sigma**2), rel_tol=0.03), start
    y = dist.sample(2, 5) + sigma * torch.randn(2, 1, 8, 8, generator=torch.Generator())
    with torch.no_grad():
        r = tuned.net(y - tuned.center)
        assert r.norm() > 0  # trained away from the zeroed output layer
        expected = tuned.center + c_skip * (y - tuned.center) - c_out * r
    torch.testing.assert_close(tuned(y, sigma), expected)
    J = jacobian(tuned, y[:1], sigma)  # still homogeneous about μ̂
    torch.testing.assert_close(J @ (y[:1] - tuned.center).flatten() + tuned.center.flatten(),
                               tuned(y[:1], sigma).flatten(), atol=1e-5, rtol=1e-4)
    tuned.save(tmp_path / "p.pt")
    torch.testing.assert_close(NetworkDenoiser.load(tmp_path / "p.pt")(y, sigma), expected)
    payload = torch.load(tmp_path / "p.pt", weights_only=True)
    del payload["output_scales"]  # a checkpoint written before the form existed
    torch.save(payload, tmp_path / "old.pt")
    old = NetworkDenoiser.load(tmp_path / "old.pt")
    assert (old.c_skip, old.c_out) == (1.0, 1.0)
    with pytest.raises(ValueError, match="precondition needs mode='per-sigma'"):
        TrainConfig(mode="universal", precondition="edm")
    with pytest.raises(ValueError, match="init must be in the residual form"):
        train(dist, TINY, cfg, init=tuned)  # its scalings belong to its own σ
    with pytest.raises(ValueError, match="c_skip must be a finite number"):
        NetworkDenoiser(tuned.net, TINY, output_scales=(float("nan"), 1.0))


@pytest.mark.parametrize("sigma,sigma_data,chosen", [(0.05, 0.01, False), (1.0, 0.2, True)])
def test_auto_precondition_keeps_the_better_start(sigma, sigma_data, chosen):
    """``auto``: the started-from network where it is better on the first training images (a
    near-identity network, MSE ≈ σ² = 0.0025, against σ_d = 0.01, whose shrinkage at
    σ = 0.05 is nearly the mean image, MSE ≈ v = 0.04), the preconditioned form where the
    shrinkage is (here: MSE v σ²/(v + σ²) against a residual made far off)."""
    dist = GaussianField(size=8, std=0.2, mean=0.5)
    base = train(dist, TINY, TrainConfig(mode="universal", center=True, steps=4 * CHUNK_STEPS,
                                         batch_size=16, lr=3e-3))
    if chosen:
        with torch.no_grad():
            base.net.layers[-1].weight.normal_(generator=torch.Generator().manual_seed(2))
    cfg = TrainConfig(sigma=sigma, precondition="auto", sigma_data=sigma_data, center=True,
                      steps=CHUNK_STEPS, batch_size=8, lr=1e-3, warmup=0)
    tuned = train(dist, TINY, cfg, init=base)
    assert (tuned.c_skip, tuned.c_out) == (edm_scales(sigma, sigma_data) if chosen else (1, 1))
    untrained = train(dist, TINY, TrainConfig(sigma=sigma, precondition="auto", steps=1,
                                              batch_size=8))
    assert untrained.c_skip == edm_scales(sigma, 0.25)[0]  # from scratch: EDM's form


def test_convergence_flag():
    flat = {"step": [0, 50, 80, 90, 100], "sigma": [0.1], "mse": [[1.0, 0.5, 0.50, 0.49, 0.49]]}
    falling = {"step": [0, 50, 80, 90, 100], "sigma": [0.1], "mse": [[1.0, 0.5, 0.40, 0.35, 0.3]]}
    assert converged(flat) is True and converged(falling) is False
    # from the last measurement at or before the tail's start (60), not the nearest (90)
    late = {"step": [0, 30, 60, 90, 100], "sigma": [0.1], "mse": [[1, 0.6, 0.5, 0.46, 0.45]]}
    assert tail_drop(late) == pytest.approx(0.1) and converged(late) is False
    # the held-out error is the mean of MSE/σ² over the monitored σ: the small σ weighs in
    two = {"step": [0, 80, 100], "sigma": [0.1, 1.0], "mse": [[1e-2, 1e-2, 0.9e-2],
                                                             [0.5, 0.5, 0.5]]}
    assert tail_drop(two) == pytest.approx(1 - (0.9 + 0.5) / (1.0 + 0.5))
    assert converged({"step": [], "sigma": [], "mse": []}) is None
    # measured more sparsely than the tail: compared with the one before the last
    assert converged({"step": [0, 1000, 2000], "sigma": [0.1], "mse": [[1, 0.5, 0.1]]}) is False
    # a deliberately short training is still improving at its end: flagged
    dist = GaussianField(size=8)
    short = train(dist, TINY, TrainConfig(sigma=0.5, steps=20, batch_size=8, lr=3e-3,
                                          schedule="constant", warmup=0, monitor_every=2))
    mse = short.history["monitor"]["mse"][0]
    assert len(mse) == 11 and mse[-1] < 0.9 * mse[-3]  # measured: 0.148 → 0.130
    assert converged(short.history["monitor"]) is False


def test_bad_objective_and_range_are_refused():
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainConfig(objective="l2")
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        TrainConfig(mode="universal", sigma_min=1.0, sigma_max=0.5)
