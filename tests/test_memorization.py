"""Memorization measures (SCIENCE.md §8) against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from theorybench.memorization import (
    bootstrap_fraction,
    cosine,
    memorization_measures,
    nearest_neighbours,
    summarize,
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
    assert frame.loc[0, "nn_index"] == 0 and bool(frame.loc[0, "memorized"])
    # sample 1 = (0,1,0): distances √2, 1, √2, √101 → d1/d2 = 1/√2: not memorized
    assert frame.loc[1, "ratio"] == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    assert frame.loc[1, "nn_index"] == 1 and not bool(frame.loc[1, "memorized"])
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


def test_duplicates_are_not_memorized():
    frame = memorization_measures(vecs([[1, 0, 0]]), vecs([[1, 0, 0], [1, 0, 0], [0, 1, 0]]))
    assert frame.loc[0, "d1"] == 0 and frame.loc[0, "d2"] == 0 and frame.loc[0, "ratio"] == 1
    assert not bool(frame.loc[0, "memorized"])


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
    assert frame["memorized"].tolist() == [k == 2 for k in range(7)]


def test_float64_resolves_tiny_distances():
    """A sample 1e-6 from a training image of norm ~8: d1 is resolved (float32 could not)."""
    g = torch.Generator().manual_seed(1)
    train = torch.rand(20, 1, 16, 16, generator=g, dtype=torch.float64)
    sample = train[5:6].clone()
    sample[0, 0, 0, 0] += 1e-6
    frame = memorization_measures(sample, train)
    assert frame.loc[0, "d1"] == pytest.approx(1e-6, rel=1e-3)


def test_memorized_fraction_and_bootstrap():
    flags = np.array([True] * 6 + [False] * 14)
    p, low, high = bootstrap_fraction(flags, seed=0)
    assert p == pytest.approx(0.3) and low <= p <= high
    assert bootstrap_fraction(flags, seed=0) == (p, low, high)  # seeded
    big = np.tile(flags, 100)  # same fraction, n = 2000
    p2, low2, high2 = bootstrap_fraction(big, seed=0)
    assert p2 == pytest.approx(0.3) and low2 <= p2 <= high2
    assert (high2 - low2) < 0.35 * (high - low)  # width ∝ 1/√n: √(20/2000) = 0.1
    # matches the normal approximation ±1.96 √(p(1−p)/n) at large n
    half = 1.959964 * math.sqrt(0.3 * 0.7 / 2000)
    assert (high2 - low2) / 2 == pytest.approx(half, rel=0.1)
    lo_w, hi_w = wilson_interval(6, 20)
    assert lo_w < 0.3 < hi_w and wilson_interval(0, 20)[1] > 0.1  # not degenerate at 0


def test_summarize():
    train = vecs([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    samples = vecs([[1, 0.01, 0], [0.5, 0.5, 0], [0, 0, 0.99], [0.4, 0.3, 0.3]])
    frame = memorization_measures(samples, train, other_samples=samples)
    out = summarize(frame, seed=3)
    assert out["n"] == 4 and out["memorized_fraction"] == pytest.approx(0.5)
    low, high = out["memorized_ci"]
    assert low <= 0.5 <= high
    assert out["median_cross_cos"] == pytest.approx(1.0)
    assert out["median_ratio"] == pytest.approx(float(np.median(frame["ratio"])))
    with pytest.raises(ValueError, match="frame must be"):
        summarize(frame.drop(columns="memorized"))


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        memorization_measures(vecs([[1, 0, 0]]), vecs([[1, 0, 0]]))
    with pytest.raises(ValueError, match="same image size"):
        memorization_measures(vecs([[1, 0, 0]]), torch.zeros(3, 1, 1, 4))
    with pytest.raises(ValueError, match="other_samples"):
        memorization_measures(vecs([[1, 0, 0]]), TRAIN, other_samples=vecs([[1, 0, 0]] * 2))
    with pytest.raises(ValueError, match="finite"):
        memorization_measures(vecs([[math.nan, 0, 0]]), TRAIN)
