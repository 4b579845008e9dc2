"""The Distribution contract over every registered family, and its refusals."""

import math

import numpy as np
import pytest
import torch

import datasets_synth
from datasets_synth import check_distribution
from datasets_synth.base import Distribution
from tests.conftest import build


@pytest.mark.parametrize("name", datasets_synth.names())
def test_conformance_of_every_registered_distribution(name, image_folder):
    check_distribution(build(name, image_folder))


def test_builtin_families_are_listed():
    assert {"calpha", "disks", "faces", "faces-folder", "shuffled", "gaussian"} <= set(
        datasets_synth.names())


@pytest.mark.parametrize("name", ["gaussian", "calpha", "disks", "faces", "shuffled"])
def test_batch_split_and_prefix_invariance(name, image_folder):
    dist = build(name, image_folder)
    n = min(300, dist.num_images or 300)  # crosses a block boundary for generators
    whole = dist.sample(n, seed=5)
    k, m = 7, n // 3
    parts = torch.cat([dist.sample(k, 5), dist.sample(n - k - m, 5, offset=k),
                       dist.sample(m, 5, offset=n - m)])
    assert torch.equal(whole, parts)
    assert torch.equal(dist.sample(3, 5), whole[:3])


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_moments_match_eigenvalues(device):
    """The field's law on each device (a GPU draws from its own stream: other values), and
    on the device the same images for every batch split."""
    dist = datasets_synth.get("gaussian", size=16, gamma=2.0, std=0.2, mean=0.3)
    x = dist.sample(4000, seed=0, device=device)
    assert x.device.type == device and x.dtype == torch.float32
    split = torch.cat([dist.sample(1000, 0, device=device),
                       dist.sample(3000, 0, offset=1000, device=device)])
    assert torch.equal(split, x)
    x = x.double().cpu()
    assert abs(x.mean() - 0.3) < 0.01
    centred = (x - 0.3)[:, 0]
    power = torch.fft.fft2(centred, norm="ortho").abs().pow(2).mean(0)  # E|x̂_k|² = λ_k
    ratio = power / dist.eigenvalues
    assert abs(float(ratio.mean()) - 1) < 0.03
    assert float((ratio - 1).abs().max()) < 0.25  # 4000 draws: ~2% s.e. per frequency
    assert abs(float(centred.var()) - 0.04) < 0.002


def test_convergence_table_against_closed_form_shrinkage():
    """``evaluation.convergence`` on ``f(y) = c·y`` over a Gaussian field, whose MSE per
    pixel is ``(1 − c)² E[x²] + c² σ²``; differences are paired against the last setting."""
    from theorybench.evaluation import convergence

    dist = datasets_synth.get("gaussian", size=16)
    sigma = 0.2
    second_moment = dist.mean ** 2 + float(dist.eigenvalues.double().mean())  # per pixel
    table = convergence(lambda c: (lambda y, s: c * y), [{"c": 0.5}, {"c": 0.9}, {"c": 1.0}],
                        dist, sigma, n=256, seed=3)
    assert list(table["c"]) == [0.5, 0.9, 1.0]
    for row in table.itertuples():
        expected = (1 - row.c) ** 2 * second_moment + row.c ** 2 * sigma ** 2
        assert abs(row.mse - expected) < 4 * row.se, (row.c, row.mse, expected)
        assert math.isclose(row.total_over_s2, row.mse * dist.d / sigma ** 2, rel_tol=1e-12)
        assert math.isclose(row.diff_to_last, row.mse - table["mse"].iloc[-1],
                            rel_tol=1e-9, abs_tol=1e-15)
    assert table["diff_to_last"].iloc[-1] == 0 and table["diff_se"].iloc[-1] == 0
    with pytest.raises(ValueError, match="settings"):
        convergence(lambda c: None, [], dist, sigma)


def test_gaussian_wiener_matches_exact_mmse_within_3_se():
    from theorybench import mse_curve

    dist = datasets_synth.get("gaussian", size=16)
    wiener = dist.reference_denoisers()["wiener"]
    sigmas = np.geomspace(0.01, 2, 9)
    curve = mse_curve(wiener, dist, sigmas, n=512, seed=1)
    for row in curve.itertuples():
        assert abs(row.mse - dist.mmse(row.sigma)) < 3 * row.se
        assert math.isclose(wiener.mse(row.sigma), dist.mmse(row.sigma), rel_tol=1e-12)


def test_faces_split_is_fixed_and_disjoint():
    train = datasets_synth.get("faces", split="train")
    test = datasets_synth.get("faces", split="test")
    assert (train.num_images, test.num_images) == (80, 20)
    assert train.shape == (1, 25, 25)
    a, b = train.images.flatten(1), test.images.flatten(1)
    assert torch.cdist(a, b).min() > 0
    assert torch.equal(datasets_synth.get("faces", split="train").images, train.images)
    with pytest.raises(ValueError, match="holds 80 images"):
        train.sample(81, seed=0)


def test_faces_folder_loader(image_folder):
    dist = datasets_synth.get("faces-folder", path=str(image_folder), size=12, split="all")
    assert dist.num_images == 6 and dist.shape == (1, 12, 12)
    assert dist.images.min() >= 0 and dist.images.max() <= 1
    # centre crop + resize of a constant image stays constant
    from skimage.io import imsave

    flat = image_folder.parent / "flat"
    flat.mkdir(exist_ok=True)
    for i in range(2):
        imsave(flat / f"c{i}.png", np.full((20, 30), 128, np.uint8), check_contrast=False)
    const = datasets_synth.get("faces-folder", path=str(flat), size=8, split="all")
    assert torch.allclose(const.images, torch.full_like(const.images, 128 / 255), atol=1e-6)
    # an opaque RGBA file is the same image as its RGB one; 16-bit files scale by 65535
    rgb = (np.random.default_rng(1).random((20, 20, 3)) * 255).astype(np.uint8)
    modes = image_folder.parent / "modes"
    modes.mkdir(exist_ok=True)
    imsave(modes / "a.png", rgb, check_contrast=False)
    imsave(modes / "b.png", np.dstack([rgb, np.full((20, 20), 255, np.uint8)]),
           check_contrast=False)
    imsave(modes / "c.png", np.full((20, 20), 128 * 257, np.uint16), check_contrast=False)
    both = datasets_synth.get("faces-folder", path=str(modes), size=8, split="all").images
    assert 0.2 < float(both[0].mean()) < 0.8
    torch.testing.assert_close(both[1], both[0])
    assert torch.allclose(both[2], torch.full_like(both[2], 128 / 255), atol=1e-6)


def test_shuffled_permutation_and_inverse():
    base = datasets_synth.get("gaussian", size=8)
    sh = datasets_synth.get("shuffled", base="gaussian", size=8, seed=3)
    x = base.sample(4, seed=2)
    y = sh.sample(4, seed=2)
    assert torch.equal(y.flatten(1), x.flatten(1)[:, sh.permutation])
    assert torch.equal(sh.unshuffle(y), x)
    assert not torch.equal(y, x)


def test_shuffled_conjugation_identity():
    """f*_shuffled = P f* P⁻¹ and MMSE_shuffled = MMSE (SCIENCE.md §5), on the Gaussian."""
    from theorybench import mse_curve

    base = datasets_synth.get("gaussian", size=8)
    sh = datasets_synth.get("shuffled", base="gaussian", size=8, seed=1)
    f, f_sh = base.reference_denoisers()["wiener"], sh.reference_denoisers()["wiener"]
    assert f_sh.kind == "exact"
    z = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = sh.sample(5, seed=0) + 0.3 * z
    assert torch.allclose(f_sh(y, 0.3), sh.shuffle(f(sh.unshuffle(y), 0.3)), atol=1e-6)
    sigmas = [0.05, 0.3, 1.0]
    a, b = mse_curve(f, base, sigmas, n=400, seed=4), mse_curve(f_sh, sh, sigmas, n=400, seed=4)
    # same images, noise drawn in shuffled coordinates: equal in distribution, not paired
    assert np.all(np.abs(a.mse - b.mse) < 3 * np.hypot(a.se, b.se))


class _NoName(Distribution):
    pass


@pytest.mark.parametrize("call, match", [
    (lambda: datasets_synth.get("nope"), "valid names: gaussian, calpha"),
    (lambda: datasets_synth.get("calpha", alpha=0), "alpha"),
    (lambda: datasets_synth.get("calpha", alpha=-1.5), "alpha"),
    (lambda: datasets_synth.get("disks", size=4), "size"),
    (lambda: datasets_synth.get("gaussian", size=7), "size must be an integer >= 8"),
    (lambda: datasets_synth.get("gaussian", size=16.5), "size"),
    (lambda: datasets_synth.get("gaussian", gamma=float("nan")), "gamma"),
    (lambda: datasets_synth.get("gaussian").sample(-1, 0), "n must be an integer >= 0"),
    (lambda: datasets_synth.get("gaussian").sample(2, 1.5), "seed must be an integer"),
    (lambda: datasets_synth.get("gaussian").sample(2, "0"), "seed must be an integer"),
    (lambda: datasets_synth.get("gaussian").sample(2, -3), "seed"),
    (lambda: datasets_synth.get("faces", split="validation"), "split must be one of"),
    (lambda: datasets_synth.get("faces-folder", path="/no/such/folder"), "existing folder"),
    (lambda: datasets_synth.get("faces-folder"), "path"),
    (lambda: datasets_synth.get("shuffled", base="nope"), "unknown distribution"),
    (lambda: datasets_synth.get("shuffled", base="shuffled"), "another distribution"),
    (lambda: datasets_synth.get("gaussian", colour=True), "bad parameters"),
])
def test_bad_input_raises_value_error_naming_valid_values(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_empty_folder_is_refused_and_nothing_written(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="holds no images"):
        datasets_synth.get("faces-folder", path=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_conformance_check_catches_broken_distributions():
    class WrongDtype(Distribution):
        name, shape, block_size = "wrong", (1, 8, 8), 8

        def _draw(self, generator, count):
            return torch.zeros(count, 1, 8, 8, dtype=torch.float64), {}

    class NaNs(WrongDtype):
        def _draw(self, generator, count):
            return torch.full((count, 1, 8, 8), float("nan")), {}

    class GlobalRandom(WrongDtype):
        def _draw(self, generator, count):
            return torch.rand(count, 1, 8, 8), {}

    class OutOfRange(WrongDtype):
        value_range = (0.0, 1.0)

        def _draw(self, generator, count):
            return 2 + torch.rand(count, 1, 8, 8, generator=generator), {}

    for cls, match in [(WrongDtype, "float32"), (NaNs, "NaN"), (GlobalRandom, "global"),
                       (OutOfRange, "value_range")]:
        with pytest.raises(ValueError, match=match):
            check_distribution(cls())
