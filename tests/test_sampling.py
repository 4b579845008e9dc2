"""Samplers (SCIENCE.md §7): memorization by the empirical denoiser, determinism, the
Gaussian field's spectrum recovered by the ODE, batch independence, divergence guard."""

import math

import pytest
import torch

import datasets_synth
from theorybench import empirical_denoiser
from theorybench.experiments import memorization_sweep as ms
from theorybench.sampling import (
    SampleResult,
    SamplingDiverged,
    sample,
    sigma_grid,
)


def normal(n, size=16, seed=0):
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def gaussian():
    return datasets_synth.get("gaussian", size=16)


@pytest.fixture(scope="module")
def wiener(gaussian):
    return gaussian.reference_denoisers()["wiener"]


@pytest.fixture(scope="module")
def train(gaussian):
    return gaussian.sample(10, seed=0)


ODE = {"sigma_max": 1.0, "sigma_min": 0.01, "steps": 40}


@pytest.mark.parametrize("method,options", [("stochastic", {}), ("euler", ODE), ("heun", ODE)])
def test_empirical_denoiser_samples_land_on_training_images(train, method, options):
    """The empirical optimum's density is the training set: samples reproduce it (§3, §8)."""
    result = sample(empirical_denoiser(train), normal(12, seed=1), method, **options)
    assert isinstance(result, SampleResult) and result.images.shape == (12, 1, 16, 16)
    dist = torch.cdist(result.images.flatten(1).double(), train.flatten(1).double())
    d, i = dist.sort(1)
    assert bool((d[:, 0] / d[:, 1] < 1 / 3).all())  # d1/d2 < 1/3: memorized
    x_nn = train.flatten(1).double()[i[:, 0]]
    cos = torch.nn.functional.cosine_similarity(result.images.flatten(1).double(), x_nn)
    assert bool((cos > 0.99).all())
    assert len(set(i[:, 0].tolist())) >= 3  # not one attractor for every noise
    assert bool(result.converged.all())


def test_stochastic_records_decreasing_effective_noise(train):
    r = sample(empirical_denoiser(train), normal(4, seed=2), "stochastic", record_every=10)
    assert r.sigmas.shape == r.sigma_in.shape == (4, int(r.steps.max()))
    for k in range(4):
        s = r.sigmas[k, : int(r.steps[k])]
        assert bool(torch.isfinite(s).all()) and s[-1] < 0.05 <= float(s[:-1].min())
        assert float(s[0]) > 0.5  # starts near σ0 = 1
        assert bool(torch.isnan(r.sigmas[k, int(r.steps[k]):]).all())
    assert r.trajectory.shape[:2] == (4, len(r.trajectory_steps))
    assert r.trajectory_steps[:3].tolist() == [0, 10, 20]
    # the first recorded iterate is y0 = mean + σ0 z
    assert torch.allclose(r.trajectory[:, 0], 0.5 + normal(4, seed=2))


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_ode_is_deterministic(wiener, method):
    noise = normal(6, seed=3)
    a = sample(wiener, noise, method, steps=20)
    b = sample(wiener, noise.clone(), method, steps=20)
    assert torch.equal(a.images, b.images)
    c = sample(wiener, normal(6, seed=4), method, steps=20)
    assert not torch.allclose(a.images, c.images)
    assert torch.equal(a.grid, sigma_grid(1.0, 0.01, 20))
    assert a.sigmas.shape == (6, 20) and torch.equal(a.sigma_in[0], a.grid)


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_ode_on_an_explicit_schedule(wiener, method):
    """``sigmas`` replaces the geometric grid: the same grid gives the same images, bit for
    bit; any decreasing schedule is followed as given; a bad one is refused."""
    noise = normal(4, seed=3)
    geometric = sample(wiener, noise, method, steps=12)
    same = sample(wiener, noise, method, sigmas=sigma_grid(1.0, 0.01, 12).tolist())
    assert torch.equal(same.images, geometric.images)
    schedule = [1.0, 0.5, 0.3, 0.1, 0.05, 0.02, 0.01]
    run = sample(wiener, noise, method, sigmas=schedule)
    assert run.grid.tolist() == schedule and torch.equal(run.sigma_in[0], run.grid)
    assert ms.last_sigma(method, {"sigmas": schedule}) == 0.01
    for bad in ([1.0], [0.5, 1.0], [1.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="strictly decreasing"):
            sample(wiener, noise, method, sigmas=bad)


def test_stochastic_seeded_and_batch_independent(wiener):
    noise = normal(6, seed=5)
    a = sample(wiener, noise, "stochastic", seed=7)
    b = sample(wiener, noise, "stochastic", seed=7)
    c = sample(wiener, noise, "stochastic", seed=8)
    assert torch.equal(a.images, b.images)
    assert (a.images - c.images).abs().amax() > 0.05  # another seed, another sample
    # images 3..5 drawn alone with offset=3 follow the same paths as in the big batch
    part = sample(wiener, noise[3:], "stochastic", seed=7, offset=3)
    assert torch.equal(part.steps, a.steps[3:])
    assert torch.allclose(part.images, a.images[3:], atol=1e-5)
    # without the offset they take other streams
    assert not torch.allclose(sample(wiener, noise[3:], "stochastic", seed=7).images,
                              a.images[3:], atol=1e-3)


def zero_denoiser(y, sigma):
    """f = 0: d = −y, so the effective noise σ_t is the iterate's own RMS."""
    return torch.zeros_like(y)


@pytest.mark.parametrize("beta", [0.2, 0.5, 1.0])
def test_stochastic_steps_aim_at_one_minus_beta_h_sigma(beta):
    """Each step aims at the noise level (1 − βh_t)σ_t (SCIENCE.md §7): with f = 0 and mean
    0, ``y ← (1 − h_t) y + γ_t z`` has E‖y‖²/d = ((1 − h_t)² σ_t² + γ_t²) = (1 − βh_t)² σ_t²
    exactly, so the measured σ falls by that factor per step (64×64 images: the relative
    spread of one ratio is about γ_t/(σ_t √d), ≤ 0.01); γ_t independent of β would give 1."""
    h0, steps = 0.5, 5
    with pytest.warns(UserWarning, match="did not reach sigma_stop"):
        r = sample(zero_denoiser, normal(8, size=64, seed=15), "stochastic", mean=0.0,
                   h0=h0, beta=beta, sigma_stop=1e-9, max_steps=steps)
    t = torch.arange(1, steps, dtype=torch.float64)
    h = h0 * t / (1 + h0 * (t - 1))
    measured = r.sigmas[:, 1:] / r.sigmas[:, :-1]  # (8, steps − 1)
    assert torch.allclose(measured, (1 - beta * h).expand_as(measured), atol=0.03)
    if beta == 1.0:  # no noise injected: the same path for every seed
        with pytest.warns(UserWarning, match="did not reach sigma_stop"):
            again = sample(zero_denoiser, normal(8, size=64, seed=15), "stochastic",
                           mean=0.0, h0=h0, beta=beta, sigma_stop=1e-9, max_steps=steps, seed=3)
        assert torch.equal(again.images, r.images)


def radial_band_ratios(images, eigenvalues, mean):
    """Measured Fourier variance / λ per integer radial band (DC joins band 1)."""
    size = images.shape[-1]
    freq = torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64)
    band = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2).round().clamp_min(1).long()
    power = (torch.fft.fft2(images.double() - mean, norm="ortho")[:, 0].abs() ** 2).mean(0)
    return torch.stack([power[band == b].sum() / eigenvalues[band == b].sum()
                        for b in range(1, int(band.max()) + 1)])


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_ode_with_wiener_filter_samples_the_gaussian_field(gaussian, wiener, method):
    """Output covariance in Fourier = the field's eigenvalues λ (SCIENCE.md §4, §7).

    Each band pools ≥ 5 real degrees of freedom over 400 samples: relative standard error
    ≤ √(2/2000) ≈ 3.2 %, so 15 % is a > 4σ tolerance, and Euler's O(Δ ln σ) bias (~5 % at
    100 steps) still fits. σ_max = 20 ≫ √λ_max ≈ 0.77 makes mean + σ_max z ≈ p_σmax.
    """
    noise = normal(400, seed=11)
    options = {"sigma_max": 20.0, "sigma_min": 0.005, "steps": 100}
    ratios = radial_band_ratios(sample(wiener, noise, method, **options).images,
                                gaussian.eigenvalues, gaussian.mean)
    assert len(ratios) == 11
    assert bool(((ratios - 1).abs() < 0.15).all()), ratios
    if method == "heun":
        assert bool(((ratios - 1).abs() < 0.06).all()), ratios  # 2nd order: no visible bias
        # negative control: σ_max = 1 is not ≫ √λ_max; the low band falls ≈ λ/(λ+1) short
        low = radial_band_ratios(sample(wiener, noise, method, **{**options, "sigma_max": 1.0})
                                 .images, gaussian.eigenvalues, gaussian.mean)
        assert float(low[0]) < 0.85


class Amplifier:
    """Not a denoiser: f(y) = y + (y − mean) pushes away from the mean."""

    def __call__(self, y, sigma):
        return y + (y - 0.5)


class NaNAfter:
    """Returns NaN for image 1 once σ falls below a threshold."""

    def __init__(self, inner, below):
        self.inner, self.below = inner, below

    def __call__(self, y, sigma):
        out = self.inner(y, sigma).clone()
        if float(torch.as_tensor(sigma).min()) < self.below and len(out) > 1:
            out[1] = math.nan
        return out


@pytest.mark.parametrize("method", ["stochastic", "euler", "heun"])
def test_divergence_guard_raises_without_nan(method):
    with pytest.raises(SamplingDiverged, match="diverged at step") as info:
        sample(Amplifier(), normal(3, seed=12), method)
    err = info.value
    assert isinstance(err, RuntimeError) and err.step > 1 and err.images
    assert bool(torch.isfinite(err.partial.images).all())
    assert err.partial.sigmas.shape[1] >= 1 and bool(torch.isfinite(err.partial.sigmas).all())


@pytest.mark.parametrize("method", ["stochastic", "heun"])
def test_divergence_guard_catches_nan(wiener, method):
    with pytest.raises(SamplingDiverged) as info:
        sample(NaNAfter(wiener, 0.3), normal(3, seed=13), method)
    assert info.value.images == [1]
    assert bool(torch.isfinite(info.value.partial.images).all())


def test_unconverged_stochastic_warns(wiener):
    with pytest.warns(UserWarning, match="did not reach sigma_stop"):
        r = sample(wiener, normal(2, seed=14), "stochastic", max_steps=5)
    assert not bool(r.converged.any()) and r.steps.tolist() == [5, 5]
    assert bool(torch.isfinite(r.images).all())


def test_bad_arguments(wiener):
    noise = normal(2)
    with pytest.raises(ValueError, match="method must be one of"):
        sample(wiener, noise, "ddpm")
    with pytest.raises(ValueError, match="unknown option"):
        sample(wiener, noise, "euler", sigma0=1.0)
    with pytest.raises(ValueError, match="noise must be"):
        sample(wiener, noise[0], "euler")
    with pytest.raises(ValueError, match="beta must be"):
        sample(wiener, noise, "stochastic", beta=1.5)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        sample(wiener, noise, "heun", sigma_min=2.0)
    with pytest.raises(ValueError, match="mean must be"):
        sample(wiener, noise, "euler", mean=torch.zeros(3))
    oracle = Amplifier()
    oracle.oracle = True
    with pytest.raises(ValueError, match="oracle"):
        sample(oracle, noise, "euler")
