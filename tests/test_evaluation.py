"""``evaluation``'s image sets and curves: a tensor of images as a finite distribution,
and the curve of a denoiser on its own training images."""

import numpy as np
import torch

import datasets_synth
from datasets_synth.references.empirical import EmpiricalDenoiser
from tbcore.seeding import derived_seed
from theorybench.evaluation import TensorImages, mse_curve, training_curve


def test_tensor_images_tiles_a_small_set():
    images = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    dist = TensorImages(images, count=8)
    drawn = dist.sample(8, seed=0)
    counts = np.bincount(drawn[:, 0, 0, 0].long().numpy(), minlength=3)
    assert dist.num_images == 8 and counts.tolist() == [3, 3, 2]


def test_training_curve_measures_a_memorizing_denoiser_on_its_own_images():
    """The empirical denoiser of a set recovers its images at small σ: ``training_curve``
    on that set gives MSE ≪ σ², on other images of the family far more, and its noise is
    not the test images' (``mse_curve`` of the same seed)."""
    dist = datasets_synth.get("disks", size=8)
    images = dist.sample(6, seed=3)
    memorizer = EmpiricalDenoiser(images)
    sigmas = [0.01, 0.02]
    on_train = training_curve(memorizer, images, sigmas, seed=0)
    on_test = mse_curve(memorizer, dist, sigmas, n=6, seed=0)
    assert len(on_train) == 2 and set(on_train["n"]) == {6}
    assert (on_train["mse"] < 1e-3 * on_train["sigma"] ** 2).all()
    assert (on_test["mse"] > 0.1 * on_test["sigma"] ** 2).all()
    identity = training_curve(lambda y, sigma: y, images, [1.0], seed=0)
    test_noise = mse_curve(lambda y, sigma: y, TensorImages(images), [1.0], n=6, seed=0)
    assert identity["mse"].iloc[0] != test_noise["mse"].iloc[0]  # a noise of its own
    tiled = training_curve(memorizer, images, sigmas, seed=0, n=10)
    assert set(tiled["n"]) == {10}


def test_training_curve_keeps_the_memorization_sweeps_noise():
    """The sweep's train curves (stored results) were measured with the noise of stream 34
    and the set tiled to n images: ``training_curve`` must keep both."""
    images = datasets_synth.get("disks", size=8).sample(3, seed=1)
    shrink = EmpiricalDenoiser(images[:2])
    ours = training_curve(shrink, images, [0.1, 0.5], seed=5, n=7)
    theirs = mse_curve(shrink, TensorImages(images, 7), [0.1, 0.5], n=7,
                       seed=derived_seed(5, 34))
    assert ours["mse"].tolist() == theirs["mse"].tolist()
