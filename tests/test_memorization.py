"""Memorization measures (SCIENCE.md §8) against hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import datasets_synth
from theorybench.memorization import (
    COPY_COSINE,
    COPY_THRESHOLD,
    ON_MANIFOLD_FACTOR,
    baseline_reference,
    copy_directions,
    cosine,
    leave_one_out_references,
    manifold_fit,
    memorization_measures,
    nearest_copy,
    nearest_neighbours,
    on_manifold,
    reference_direction,
    summarize,
    unit_images,
    wilson_interval,
)


def vecs(rows):
    """Tiny explicit images: rows of length 3 as tensors (n, 1, 1, 3)."""
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 1, -1)


TRAIN = vecs([[1, 0, 0], [0, 2, 0], [1, 1, 1], [10, 0, 0]])


def test_distances_ratio_and_flag_by_hand():
    frame = memorization_measures(vecs([[1, 0.1, 0], [0, 1, 0]]), TRAIN)
    # sample 0: distances 0.1, √(1+3.61), √(0.81+1), 9.0005… → d1 = 0.1, d2 = √1.81
    assert frame.loc[0, "d1"] == pytest.approx(0.1, rel=1e-6)
    assert frame.loc[0, "d2"] == pytest.approx(math.sqrt(1.81), rel=1e-6)
    assert frame.loc[0, "ratio"] == pytest.approx(0.1 / math.sqrt(1.81), rel=1e-6)
    assert frame.loc[0, "nn_index"] == 0 and bool(frame.loc[0, "memorized_ratio"])
    # sample 1 = (0,1,0): distances √2, 1, √2, √101 → d1/d2 = 1/√2: not memorized
    assert frame.loc[1, "ratio"] == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    assert frame.loc[1, "nn_index"] == 1 and not bool(frame.loc[1, "memorized_ratio"])
    assert frame.loc[1, "cos_nn"] == pytest.approx(1.0)
    assert frame.loc[0, "cos_nn"] == pytest.approx(1 / math.sqrt(1.01), rel=1e-6)


def test_nearest_and_max_cosine_neighbours_differ():
    """(1,0,0)·k has cosine 1 with (10,0,0) but is nearest to (1,0.5,0) when k = 1."""
    train = vecs([[10, 0, 0], [1, 0.5, 0], [0, 0, 3]])
    frame = memorization_measures(vecs([[1, 0, 0]]), train)
    assert frame.loc[0, "nn_index"] == 1 and frame.loc[0, "max_cos_index"] == 0
    assert frame.loc[0, "max_cos"] == pytest.approx(1.0)
    assert frame.loc[0, "cos_nn"] == pytest.approx(1 / math.sqrt(1.25), rel=1e-6)
    assert frame.loc[0, "d1"] == pytest.approx(0.5) and frame.loc[0, "d2"] == pytest.approx(
        math.sqrt(10))


def test_mean_subtracted_similarity():
    """(3,1,2) is (2,0,1) shifted by +1: centered cosine 1, plain cosine 8/√70."""
    train = vecs([[3, 1, 2], [0, 0, 5]])
    frame = memorization_measures(vecs([[2, 0, 1]]), train)
    assert frame.loc[0, "nn_index"] == 0
    assert frame.loc[0, "cos_nn"] == pytest.approx(8 / math.sqrt(70), rel=1e-6)
    assert frame.loc[0, "cos_nn_centered"] == pytest.approx(1.0, rel=1e-9)
    # (0,0,5) centered is (−5/3,−5/3,10/3); (1,−1,0)·that = 0
    assert frame.loc[0, "max_cos_centered"] == pytest.approx(1.0)
    assert frame.loc[0, "max_cos_centered_index"] == 0
    assert cosine(vecs([[2, 0, 1]]), vecs([[0, 0, 5]]), centered=True).item() == pytest.approx(
        0.0, abs=1e-12)


def test_cross_similarity_and_zero_vector():
    a, b = vecs([[1, 0, 0], [1, 2, 3]]), vecs([[1, 1, 0], [2, 3, 4]])
    frame = memorization_measures(a, TRAIN, other_samples=b)
    assert frame["cross_cos"].tolist() == pytest.approx([1 / math.sqrt(2), 20 / math.sqrt(14 * 29)])
    # centered: (1,2,3)→(−1,0,1), (2,3,4)→(−1,0,1): 1; (1,0,0)→(2,−1,−1)/3, (1,1,0)→(1,1,−2)/3
    assert frame["cross_cos_centered"].tolist() == pytest.approx([(2 - 1 + 2) / 6, 1.0])
    constant = cosine(vecs([[2, 2, 2]]), vecs([[1, 0, 0]]), centered=True)
    assert constant.item() == 0.0  # a zero vector has cosine 0, not NaN


def test_duplicates_defeat_the_ratio_not_the_copy_criterion():
    frame = memorization_measures(vecs([[1, 0, 0]]), vecs([[1, 0, 0], [1, 0, 0], [0, 1, 0]]))
    assert frame.loc[0, "d1"] == 0 and frame.loc[0, "d2"] == 0 and frame.loc[0, "ratio"] == 1
    assert not bool(frame.loc[0, "memorized_ratio"])
    assert bool(frame.loc[0, "memorized"]) and frame.loc[0, "copy_cos"] == pytest.approx(1.0)


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_chunked_matches_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    train, samples = torch.rand(50, 1, 4, 4, generator=g), torch.rand(7, 1, 4, 4, generator=g)
    train[3] = samples[2] + 0.01  # one memorized sample
    found = nearest_neighbours(samples, train, chunk=chunk)
    s, x = samples.flatten(1).double(), train.flatten(1).double()
    d, i = torch.cdist(s, x).sort(1)
    assert torch.allclose(found["d1"], d[:, 0]) and torch.allclose(found["d2"], d[:, 1])
    assert torch.equal(found["nn_index"], i[:, 0])
    cos = (s @ x.T) / (s.norm(dim=1)[:, None] * x.norm(dim=1)[None])
    assert torch.allclose(found["max_cos"], cos.max(1).values)
    assert torch.equal(found["max_cos_index"], cos.argmax(1))
    sc, xc = s - s.mean(1, keepdim=True), x - x.mean(1, keepdim=True)
    cos_c = (sc @ xc.T) / (sc.norm(dim=1)[:, None] * xc.norm(dim=1)[None])
    assert torch.allclose(found["max_cos_centered"], cos_c.max(1).values)
    frame = memorization_measures(samples, train, chunk=chunk)
    assert frame["memorized_ratio"].tolist() == [k == 2 for k in range(7)]
    # copy criterion (per-image centring): brute force over centred unit directions
    u = s / s.norm(dim=1, keepdim=True)
    v = x / x.norm(dim=1, keepdim=True)
    uc, vc = u - u.mean(1, keepdim=True), v - v.mean(1, keepdim=True)
    cc = (uc @ vc.T) / (uc.norm(dim=1)[:, None] * vc.norm(dim=1)[None])
    assert frame["copy_cos"].to_numpy() == pytest.approx(cc.max(1).values.numpy())
    assert frame["copy_index"].tolist() == cc.argmax(1).tolist()
    assert frame["memorized"].tolist() == (cc.max(1).values > COPY_COSINE).tolist()
    assert bool(frame.loc[2, "memorized"])


def test_float64_resolves_tiny_distances():
    """A sample 1e-6 from a training image of norm ~8: d1 is resolved (float32 could not)."""
    g = torch.Generator().manual_seed(1)
    train = torch.rand(20, 1, 16, 16, generator=g, dtype=torch.float64)
    sample = train[5:6].clone()
    sample[0, 0, 0, 0] += 1e-6
    frame = memorization_measures(sample, train)
    assert frame.loc[0, "d1"] == pytest.approx(1e-6, rel=1e-3)


def test_wilson_interval():
    lo_w, hi_w = wilson_interval(6, 20)
    assert lo_w < 0.3 < hi_w and wilson_interval(0, 20)[1] > 0.1  # not degenerate at 0

    def closed_form(k, n, level):  # Wilson (1927): (p + z²/2n ± z√(p(1−p)/n + z²/4n²))/(1 + z²/n)
        z = norm.ppf(0.5 + level / 2)
        p, shrink = k / n, 1 + z**2 / n
        half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
        return (p + z**2 / (2 * n) - half) / shrink, (p + z**2 / (2 * n) + half) / shrink

    for k, n, level in ((6, 20, 0.95), (6, 20, 0.9), (0, 20, 0.95), (64, 64, 0.95)):
        assert wilson_interval(k, n, level) == pytest.approx(closed_form(k, n, level), abs=1e-12)
    assert wilson_interval(6, 20) == pytest.approx((0.1455, 0.5190), abs=5e-5)


def test_summarize():
    train = vecs([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    samples = vecs([[1, 0.01, 0], [0.5, 0.5, 0], [0, 0, 0.99], [0.4, 0.3, 0.3]])
    other = vecs([[1, 0.01, 0], [0, 1, 0], [0, 0, 0.99], [0.4, 0.3, 0.3]])  # 2nd differs
    frame = memorization_measures(samples, train, other_samples=other)
    out = summarize(frame)
    assert out["n"] == 4 and out["memorized_ratio_fraction"] == pytest.approx(0.5)
    p = float(frame["memorized"].mean())
    assert out["memorized_fraction"] == pytest.approx(p)
    assert out["memorized_ci_wilson"] == wilson_interval(round(4 * p), 4)
    assert out["median_copy_cos"] == pytest.approx(float(np.median(frame["copy_cos"])))
    cross = frame["cross_copy_cos"].to_numpy()  # paired row by row: 1 but at the 2nd
    assert np.allclose(cross[[0, 2, 3]], 1.0) and cross[1] < 0.99
    assert out["median_cross_copy_cos"] == pytest.approx(1.0)
    assert out["copy_threshold"] == COPY_THRESHOLD
    strict = summarize(memorization_measures(samples, train, threshold=0.005))
    assert strict["copy_threshold"] == 0.005 and strict["memorized_fraction"] < p
    assert out["median_cross_cos"] == pytest.approx(1.0)
    assert frame["cross_cos"][1] == pytest.approx(0.5 / math.sqrt(0.5))  # ⟨(.5,.5,0),(0,1,0)⟩
    assert out["median_ratio"] == pytest.approx(float(np.median(frame["ratio"])))
    with pytest.raises(ValueError, match="frame must be"):
        summarize(frame.drop(columns="memorized"))


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 1"):
        memorization_measures(vecs([[1, 0, 0]]), vecs([[1, 0, 0]])[:0])
    with pytest.raises(ValueError, match="reference must have"):
        memorization_measures(vecs([[1, 0, 0]]), TRAIN, reference=torch.zeros(4))
    with pytest.raises(ValueError, match="same image size"):
        memorization_measures(vecs([[1, 0, 0]]), torch.zeros(3, 1, 1, 4))
    with pytest.raises(ValueError, match="other_samples"):
        memorization_measures(vecs([[1, 0, 0]]), TRAIN, other_samples=vecs([[1, 0, 0]] * 2))
    with pytest.raises(ValueError, match="finite"):
        memorization_measures(vecs([[math.nan, 0, 0]]), TRAIN)


# ------------------------------------------------------------------ copy criterion


def _blobs(n, size=12, seed=0):
    """Images with a strong shared mean: a bright background plus one random bump."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.rand(n, 2, generator=g) * (size - 4) + 2
    bump = torch.exp(-((yy[None] - centres[:, :1, None]) ** 2
                       + (xx[None] - centres[:, 1:, None]) ** 2) / 4.0)
    return (1.0 + 0.5 * bump).unsqueeze(1).double()


HELD = _blobs(64, seed=1)
REF = reference_direction(HELD)


def test_threshold_is_stated_and_consistent():
    assert COPY_THRESHOLD == 0.2 and COPY_COSINE == pytest.approx(1 - 0.2 ** 2 / 2)


def test_single_training_image_exact_copy_is_memorized():
    """N = 1: the old criterion had no d2 (it raised, then borrowed held-out images)."""
    x1 = _blobs(1, seed=2)
    frame = memorization_measures(x1.clone(), x1, reference=REF)
    assert bool(frame.loc[0, "memorized"]) and frame.loc[0, "copy_distance"] < 1e-6
    assert math.isinf(frame.loc[0, "d2"]) and math.isnan(frame.loc[0, "ratio"])
    assert not bool(frame.loc[0, "memorized_ratio"])  # d1/d2 is undefined at N = 1
    out = summarize(frame)
    assert out["memorized_fraction"] == 1.0 and out["memorized_ratio_fraction"] is None
    assert out["median_ratio"] is None


@pytest.mark.parametrize("scale", [0.5, 0.8, 1.7])
def test_scaled_copy_is_memorized(scale):
    """A homogeneous network reproduces a training image up to a scale: still a copy, while
    d1/d2 (the old criterion) calls it novel."""
    train = _blobs(5, seed=3)
    frame = memorization_measures(scale * train[2:3], train, reference=REF)
    assert bool(frame.loc[0, "memorized"]) and frame.loc[0, "copy_index"] == 2
    assert frame.loc[0, "copy_cos"] == pytest.approx(1.0, abs=1e-12)
    assert not bool(frame.loc[0, "memorized_ratio"])  # the old flag misses it
    # and at N = 1 too
    one = memorization_measures(scale * train[2:3], train[2:3], reference=REF)
    assert bool(one.loc[0, "memorized"])


def test_different_image_is_not_memorized_though_raw_cosine_is_high():
    """Two different images of a strong-mean family: raw cosine near 1, centred far."""
    train, other = _blobs(1, seed=4), _blobs(1, seed=5)
    frame = memorization_measures(other, train, reference=REF)
    assert frame.loc[0, "cos_nn"] > COPY_COSINE  # a raw-cosine criterion would call it a copy
    assert not bool(frame.loc[0, "memorized"]) and frame.loc[0, "copy_cos"] < 0.9
    # without a reference (each image's own pixel mean) it is not a copy either
    assert not bool(memorization_measures(other, train).loc[0, "memorized"])


def test_reference_centring_by_hand():
    """reference = mean of unit-normalized held-out images; directions re-normalized."""
    held = vecs([[1, 0, 0], [0, 2, 0]])
    ref = reference_direction(held)
    assert ref.tolist() == pytest.approx([0.5, 0.5, 0.0])
    # sample (1,0,0) → (0.5,−0.5,0)/‖·‖; training (0,0,3) → (−0.5,−0.5,1)/‖·‖: cosine 0
    frame = memorization_measures(vecs([[1, 0, 0]]), vecs([[0, 0, 3]]), reference=ref)
    assert frame.loc[0, "copy_cos"] == pytest.approx(0.0, abs=1e-12)
    assert frame.loc[0, "copy_distance"] == pytest.approx(math.sqrt(2))


def test_leave_one_out_references_by_hand():
    """Row i: the mean of the other held-out images' unit directions."""
    held = vecs([[1, 0, 0], [0, 2, 0], [0, 0, 3]])
    refs = leave_one_out_references(held)
    assert refs.tolist() == [pytest.approx(r) for r in ([0, .5, .5], [.5, 0, .5], [.5, .5, 0])]
    # held image 0 centred on (0,.5,.5) → (1,−.5,−.5)/‖·‖; training (0,2,0) → (0,.5,−.5)/‖·‖:
    # cosine 0; the shared mean (⅓,⅓,⅓), to which image 0 contributes, gives
    # (⅔,−⅓,−⅓)·(−⅓,⅔,−⅓)/(⅔) = −½
    frame = memorization_measures(held[:1], vecs([[0, 2, 0]]), reference=refs[:1])
    assert frame.loc[0, "copy_cos"] == pytest.approx(0.0, abs=1e-12)
    shared = memorization_measures(held[:1], vecs([[0, 2, 0]]),
                                   reference=reference_direction(held))
    assert shared.loc[0, "copy_cos"] == pytest.approx(-0.5, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_references(held[:1])
    with pytest.raises(ValueError, match=r"shape \(3,\), shared, or \(3, 3\), one row per"):
        memorization_measures(held, TRAIN, reference=refs[:2])


def test_unit_images_divide_each_image_by_its_norm():
    images = vecs([[3, 4, 0], [0, 0, 0], [0, -2, 0]])
    unit = unit_images(images)
    assert unit.shape == images.shape and unit.dtype == torch.float64
    torch.testing.assert_close(unit.flatten(1), torch.tensor(
        [[0.6, 0.8, 0.0], [0.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(unit_images(5 * images), unit)


def test_baseline_reference_leaves_each_image_out_and_a_lone_one_on_its_pixel_mean():
    """Two or more held-out images: the leave-one-out rows; one: None (its own shared
    mean would centre it to a zero vector, cosine 0 to everything)."""
    held = vecs([[1, 0, 0], [0, 2, 0], [0, 0, 3]])
    refs, words = baseline_reference(held)
    torch.testing.assert_close(refs, leave_one_out_references(held))
    assert words == "for a held-out image: of the others"
    assert baseline_reference(held[:1]) == (None, "for the one held-out image: its own pixel mean")
    lone = memorization_measures(held[:1], vecs([[2, 0.1, 0.1]]),
                                 reference=baseline_reference(held[:1])[0])
    assert lone.loc[0, "copy_cos"] > 0.99  # (1,0,0) against (2,.1,.1), pixel-mean centred
    shared = memorization_measures(held[:1], vecs([[2, 0.1, 0.1]]),
                                   reference=reference_direction(held[:1]))
    assert shared.loc[0, "copy_cos"] == 0.0


def test_nearest_copy_rejects_bad_samples_and_sizes_in_one_line():
    with pytest.raises(ValueError, match="samples must be a non-empty tensor"):
        nearest_copy(torch.zeros(0, 1, 1, 3), TRAIN)
    with pytest.raises(ValueError, match="same image size"):
        nearest_copy(vecs([[1, 0, 0, 0]]), TRAIN, reference=torch.zeros(1, 4))


def test_training_image_at_its_reference_has_cosine_zero():
    """Two held-out images: each one's leave-one-out reference is the other's unit direction,
    so a training image that is a scaled copy of held-out image 1 sits at image 0's
    reference: a zero centred vector, cosine 0 (as for ``copy_directions``), not the
    rounding of 0/0."""
    held = vecs([[0.3, 1.7, 0.2], [2.9, 0.4, 1.3]])
    refs = leave_one_out_references(held)
    frame = memorization_measures(held, 7.1 * held[1:], reference=refs)
    assert frame.loc[0, "copy_cos"] == 0.0
    assert frame["memorized"].tolist() == [False, True]  # held-out image 1 is copied


@pytest.mark.parametrize("chunk", [2, 4096])
def test_per_sample_references_match_brute_force(chunk):
    """One reference per sample: sample i and every training image centred on r_i, as a
    loop over the samples with a shared reference gives it."""
    gen = torch.Generator().manual_seed(3)
    held = torch.rand(7, 1, 4, 4, generator=gen)
    train = torch.rand(5, 1, 4, 4, generator=gen)
    refs = leave_one_out_references(held)
    frame = memorization_measures(held, train, reference=refs, chunk=chunk)
    loop = [(copy_directions(held[i:i + 1], refs[i]) @ copy_directions(train, refs[i]).T)[0]
            for i in range(len(held))]
    np.testing.assert_allclose(frame["copy_cos"], [c.max().item() for c in loop], atol=1e-12)
    np.testing.assert_array_equal(frame["copy_index"],
                                  [int(c.argmax()) for c in loop])
    # paired samples of a second network: pair i centred on r_i
    other = torch.rand(7, 1, 4, 4, generator=gen)
    cross = memorization_measures(held, train, other_samples=other, reference=refs)
    expected = [float(copy_directions(held[i:i + 1], refs[i])
                      @ copy_directions(other[i:i + 1], refs[i]).T) for i in range(len(held))]
    np.testing.assert_allclose(cross["cross_copy_cos"], expected, atol=1e-12)


def test_on_manifold_accepts_disks_and_rejects_blends_and_flat_images():
    """Disk images (clean or seen at σ) are images of the family; the average of two
    distinct disks images (a non-disk) is not, though its raw cosine to a disk is high; nor
    is a flat image, which fits a disk of equal inside and outside intensity."""
    disks = datasets_synth.get("disks", size=16)
    sigma = 0.01
    tol = ON_MANIFOLD_FACTOR * sigma ** 2
    contrast = torch.linspace(0.2, 0.6, 8, dtype=torch.float64)  # 0.1: within 2σ² at σ=0.01
    first = torch.stack([torch.full_like(contrast, 5.0), torch.full_like(contrast, 5.0),
                         torch.full_like(contrast, 2.5), 0.4 + contrast,
                         torch.full_like(contrast, 0.4)], 1)
    x = disks.render(first)
    gen = torch.Generator().manual_seed(1)
    noisy = x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)

    def flags(images):
        return on_manifold(*manifold_fit(images, disks, sigma), sigma)

    assert flags(x).all() and flags(noisy).all()
    residuals, shapes = manifold_fit(x, disks, sigma)  # a clean disk is its own fit
    assert residuals.max() < 1e-3 * tol
    np.testing.assert_allclose(shapes, x.flatten(1).var(1, unbiased=False).numpy(), rtol=1e-3)
    # the average of two disks images with disks apart: two half-contrast disks
    second = first.clone()
    second[:, :2] = 11.0
    assert not flags(0.5 * (x + disks.render(second))).any()
    # flat images, clean or at σ, fit within the tolerance but their fit shows no shape
    flat = torch.full_like(x, 0.3)
    flat_noisy = flat + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    for images in (flat, flat_noisy):
        residuals, shapes = manifold_fit(images, disks, sigma)
        assert (residuals <= tol).all() and (shapes <= tol).all()
        assert not flags(images).any()
    assert manifold_fit(x, datasets_synth.get("gaussian", size=16), sigma) is None
    assert on_manifold([tol], [1.01 * tol], sigma)[0]
    assert not on_manifold([tol * 1.01], [1.01 * tol], sigma)[0]
    assert not on_manifold([tol], [tol], sigma)[0]
    with pytest.raises(ValueError, match="one value per image"):
        on_manifold([tol, tol], [tol], sigma)
