"""Property-based tests: random valid parameters for every built-in distribution and its
reference denoisers; shapes, dtypes, finiteness and determinism must hold for all of them.

Everything runs with one torch thread: on these tiny tensors extra threads only wait for
each other (tens of times slower on a busy 2-core machine).
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datasets_synth
from theorybench.denoisers import reference_denoisers

FAST = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(FAST, max_examples=8)
finite = {"allow_nan": False, "allow_infinity": False}


@st.composite
def gaussian(draw):
    return "gaussian", {"size": draw(st.integers(8, 16)),
                        "gamma": draw(st.floats(0.0, 3.0, **finite)),
                        "std": draw(st.floats(0.01, 1.0, **finite)),
                        "mean": draw(st.floats(-1.0, 1.0, **finite))}


@st.composite
def calpha(draw):
    alpha = draw(st.floats(0.5, 4.0, **finite))
    beta = draw(st.one_of(st.none(), st.floats(0.5, 4.0, **finite)))
    return "calpha", {"alpha": alpha, "beta": beta, "size": draw(st.integers(8, 12)),
                      "antialias": draw(st.booleans())}


@st.composite
def disks(draw):
    size = draw(st.integers(8, 16))
    r_min = draw(st.floats(1.0, size / 4, **finite))
    r_max = draw(st.floats(r_min, size / 2, exclude_min=True, exclude_max=True, **finite))
    return "disks", {"size": size, "r_min": r_min, "r_max": r_max,
                     "fg_mean": draw(st.floats(0.0, 1.0, **finite)),
                     "fg_std": draw(st.floats(0.01, 0.5, **finite)),
                     "bg_mean": draw(st.floats(0.0, 1.0, **finite)),
                     "bg_std": draw(st.floats(0.01, 0.5, **finite))}


@st.composite
def ellipses(draw):
    size = draw(st.integers(10, 16))
    r_min = draw(st.floats(2.0, size / 4, **finite))
    r_max = draw(st.floats(r_min, size / 2, exclude_min=True, exclude_max=True, **finite))
    fg_mean = draw(st.floats(0.0, 1.0, **finite))
    contrast = draw(st.floats(0.1, 1.0, **finite)) * draw(st.sampled_from([-1, 1]))
    return "ellipses", {"k": draw(st.integers(1, 7)), "size": size, "r_min": r_min,
                        "r_max": r_max, "fg_mean": fg_mean, "bg_mean": fg_mean + contrast,
                        "fg_std": draw(st.floats(0.01, 0.5, **finite)),
                        "bg_std": draw(st.floats(0.01, 0.5, **finite))}


@st.composite
def faces(draw):
    return "faces", {"split": draw(st.sampled_from(["train", "test", "all"]))}


@st.composite
def shuffled(draw):
    base, params = draw(st.one_of(gaussian(), faces(), disks()))
    return "shuffled", {"base": base, "seed": draw(st.integers(0, 2**31)), **params}



FAMILIES = {"gaussian": gaussian(), "calpha": calpha(), "disks": disks(),
            "ellipses": ellipses(), "faces": faces(), "shuffled": shuffled()}


def test_every_builtin_family_has_a_strategy():
    assert set(FAMILIES) | {"faces-folder"} == set(datasets_synth.builtin_names())


def check_samples(dist, n: int, seed: int, offset: int) -> None:
    x = dist.sample(n, seed, offset=offset)
    assert x.shape == (n, *dist.shape) and x.dtype == torch.float32
    assert bool(torch.isfinite(x).all())
    lo, hi = dist.value_range
    assert n == 0 or (x.min() >= lo and x.max() <= hi)
    assert torch.equal(x, dist.sample(n, seed, offset=offset))


def _family_test(name, config):
    @config
    @given(entry=FAMILIES[name], n=st.integers(0, 5), seed=st.integers(0, 2**40),
           offset=st.integers(0, 600))
    def test(entry, n, seed, offset):
        dist = datasets_synth.get(entry[0], **entry[1])
        datasets_synth.check_distribution(dist, n=3, seed=seed)
        if dist.num_images is not None:
            offset = min(offset, dist.num_images - n)
        check_samples(dist, n, seed, offset)
        again = datasets_synth.get(entry[0], **entry[1])  # a second instance: same stream
        assert torch.equal(dist.sample(n, seed, offset=offset),
                           again.sample(n, seed, offset=offset))

    test.__name__ = f"test_{name}_samples"
    return test


test_gaussian_samples = _family_test("gaussian", FAST)
test_calpha_samples = _family_test("calpha", SLOW)
test_disks_samples = _family_test("disks", FAST)
test_ellipses_samples = _family_test("ellipses", FAST)
test_faces_samples = _family_test("faces", SLOW)
test_shuffled_samples = _family_test("shuffled", FAST)


@SLOW
@given(size=st.integers(8, 16), split=st.sampled_from(["train", "test", "all"]),
       seed=st.integers(0, 2**40))
def test_faces_folder_samples(image_folder, size, split, seed):
    dist = datasets_synth.get("faces-folder", path=str(image_folder), size=size, split=split)
    datasets_synth.check_distribution(dist, seed=seed)
    check_samples(dist, dist.num_images, seed, 0)


def denoise(denoiser, y, sigma, latents):
    with torch.no_grad():
        if getattr(denoiser, "oracle", False):
            return denoiser(y, sigma, latents=latents)
        return denoiser(y, sigma)


def _denoiser_test(name, config):
    @config
    @given(entry=FAMILIES[name], n=st.integers(1, 3), seed=st.integers(0, 2**40),
           log_sigma=st.floats(math.log(0.01), math.log(1.5), **finite))
    def test(entry, n, seed, log_sigma):
        dist = datasets_synth.get(entry[0], **entry[1])
        if dist.num_images is not None:
            n = min(n, dist.num_images)
        sigma = math.exp(log_sigma)
        x, latents = dist.sample_with_latents(n, seed)
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed % 2**63))
        y = x + sigma * z
        fresh = reference_denoisers(datasets_synth.get(entry[0], **entry[1]))
        for key, den in reference_denoisers(dist).items():
            out = denoise(den, y, sigma, latents)
            assert out.shape == y.shape and out.dtype == y.dtype, key
            assert bool(torch.isfinite(out).all()), key
            assert torch.equal(out, denoise(den, y, sigma, latents)), key  # same call, same bits
            assert torch.equal(out, denoise(fresh[key], y, sigma, latents)), key  # rebuilt
            per_image = denoise(den, y, torch.full((n,), sigma), latents)  # σ as n values
            assert torch.allclose(per_image, out, rtol=1e-5, atol=1e-6), key
            assert den.kind in ("exact", "lower", "upper"), key

    test.__name__ = f"test_{name}_reference_denoisers"
    return test


test_gaussian_reference_denoisers = _denoiser_test("gaussian", FAST)
test_calpha_reference_denoisers = _denoiser_test("calpha", SLOW)
test_disks_reference_denoisers = _denoiser_test("disks", SLOW)
test_ellipses_reference_denoisers = _denoiser_test("ellipses", SLOW)
test_faces_reference_denoisers = _denoiser_test("faces", SLOW)
test_shuffled_reference_denoisers = _denoiser_test("shuffled", SLOW)


@pytest.mark.parametrize("bad", [0.0, -0.1, math.inf, math.nan])
def test_every_reference_denoiser_refuses_a_bad_sigma(bad):
    dist = datasets_synth.get("gaussian", size=8)
    y = dist.sample(2, 0)
    for den in reference_denoisers(dist).values():
        with pytest.raises(ValueError, match="sigma"):
            den(y, bad)


def test_wavelet_soft_threshold_at_zero_threshold_keeps_flat_images_finite():
    """τ/σ = 0 is on the calibration grid and flat images have exactly zero detail
    coefficients: the soft threshold must give them back, not 0/0 = NaN."""
    from theorybench.denoisers.baselines import WaveletSoftThreshold

    flat = torch.zeros(2, 1, 16, 16)  # every coefficient exactly 0
    wavelet = WaveletSoftThreshold(flat, factors=(0.0,))
    assert torch.allclose(wavelet(flat, 0.01), flat, atol=1e-12)


@pytest.mark.filterwarnings("ignore:σ = 50 is")  # far off the images' scale, on purpose
def test_mean_image_baseline_is_the_large_sigma_limit_of_the_mmse():
    """On the Gaussian field the MMSE (Wiener) tends to the pixel variance E‖x − μ‖²/d as
    σ → ∞; the mean-image baseline is that value at every σ (μ̂ of 1024 calibration images,
    so within ~1/1024 of it), and lies above the MMSE everywhere (an upper bound)."""
    from theorybench.evaluation import mse_curve

    dist = datasets_synth.get("gaussian", size=16)
    refs = reference_denoisers(dist)
    assert refs["mean-image"].kind == "upper"
    sigmas = [0.05, 0.5, 2.0, 50.0]  # at 50 the Wiener gain λ/(λ+σ²) is below 0.5 %
    mean = mse_curve(refs["mean-image"], dist, sigmas, n=256, seed=4)
    wiener = mse_curve(refs["wiener"], dist, sigmas, n=256, seed=4)  # the same images
    assert mean.mse.nunique() == 1  # ignores y
    assert math.isclose(mean.mse.iloc[-1], wiener.mse.iloc[-1], rel_tol=0.01)
    assert (wiener.mse.iloc[:-1] < mean.mse.iloc[:-1]).all()
