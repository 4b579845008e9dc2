"""``mse_curve``: per-pixel MSE of a denoiser against σ, on paired images and noise.

Images and noise are both addressed by index and seed: image k is ``dist.sample`` image k
of ``seed``, its noise ``z_k`` comes from block ``k // NOISE_BLOCK`` of a generator seeded
by ``(seed, block)``, and the same ``z_k`` serves every σ (``y = x + σ z``). Every
denoiser evaluated with the same ``(dist, n, seed)`` therefore sees exactly the same
inputs, and differences between curves are paired (:func:`paired_difference`).
:func:`training_curve` measures a denoiser on its own training images (a
:class:`TensorImages` set), with noise apart from the test images'.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from datasets_synth.base import FiniteDistribution
from tbcore.denoiser import check_eval_mode, check_output
from tbcore.seeding import block_generator, derived_seed
from tbcore.validation import check_int, check_seed

NOISE_BLOCK = 256
NOISE_STREAM = 7  # generator stream reserved for evaluation noise
SIGMA_SCALE_WARNING = 20  # warn when σ exceeds this many times the images' value range
TRAINING_IMAGES_STREAM = 34  # derived_seed stream of the noise on training images


def check_sigmas(sigmas, name: str = "sigmas") -> list[float]:
    """A non-empty list of finite σ > 0 (pixel units), or ValueError naming ``name``."""
    if any(isinstance(s, (str, bytes)) for s in np.atleast_1d(np.asarray(sigmas, dtype=object))):
        raise ValueError(f"{name} must be finite numbers > 0, got {sigmas!r}")
    try:
        values = [float(s) for s in np.atleast_1d(np.asarray(sigmas, dtype=float))]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be finite numbers > 0, got {sigmas!r}") from exc
    if not values:
        raise ValueError(f"{name} must hold at least one value > 0, got an empty grid")
    bad = [s for s in values if not math.isfinite(s) or s <= 0]
    if bad:
        raise ValueError(f"{name} must be finite and > 0, got {bad[0]!r}")
    return values


def evaluation_noise(dist, seed: int, block: int) -> torch.Tensor:
    """Standard normal noise (NOISE_BLOCK, *dist.shape) of evaluation block ``block``.

    A family that conjugates a base (``dist.reference_base()``, e.g. shuffled pixels) gets
    the base's noise permuted like its images, ``P z``: then ``y_shuffled = P y_base``
    exactly, the conjugated references have bit-identical errors on both families, and
    networks on the two are compared on the same noise (paired)."""
    z = torch.randn(NOISE_BLOCK, *dist.shape, generator=block_generator(seed, block, NOISE_STREAM))
    return z if dist.reference_base() is None else dist.shuffle(z)


def _warn_if_sigma_off_scale(sigmas, x: torch.Tensor) -> None:
    """Warn when σ is far beyond the images' value range (e.g. σ = 25 from the 0–255
    convention applied to images in [0, 1]): pixel units are the images' own units."""
    spread = float(x.max() - x.min())
    if spread > 0 and max(sigmas) > SIGMA_SCALE_WARNING * spread:
        warnings.warn(f"σ = {max(sigmas):g} is {max(sigmas) / spread:.0f}× the images' value "
                      f"range {spread:.3g}: σ is in the images' own (pixel) units; for "
                      f"images in [0, 1] divide a 0–255 σ by 255", stacklevel=3)


def mse_curve(
    denoiser, dist, sigmas, n: int = 256, seed: int = 0, device=None, progress: bool = False,
) -> pd.DataFrame:
    """Per-pixel MSE of ``denoiser`` on ``dist`` at each σ.

    Parameters
    ----------
    denoiser : callable ``(y (n,c,h,w), sigma) -> x_hat``; oracles (``denoiser.oracle``)
        also receive ``latents=`` (the side information sampled with the images).
    dist : Distribution   clean images ``x``.
    sigmas : sequence of float > 0   noise levels, pixel units.
    n : int               number of test images (default 256).
    seed : int            selects images and noise; same seed → paired curves.
    device : torch device for the computation (default CPU).

    Returns
    -------
    DataFrame with one row per σ: ``sigma``, ``mse`` (mean per-pixel squared error
    ``‖f(y) − x‖²/d``), ``se`` (its standard error over the n images), ``d`` (values per
    image), ``n``. ``df.attrs["errors"]`` holds the per-image errors (len(sigmas), n) for
    :func:`paired_difference`.
    """
    sigmas = check_sigmas(sigmas)
    n = check_int("n", n, low=2)
    seed = check_seed(seed)
    device = torch.device(device) if device is not None else torch.device("cpu")
    oracle = getattr(denoiser, "oracle", False)
    check_eval_mode(denoiser)
    errors = np.zeros((len(sigmas), n))
    blocks = range(math.ceil(n / NOISE_BLOCK))
    bar = tqdm(total=n * len(sigmas), disable=not progress, desc="mse_curve", leave=False)
    with torch.no_grad():
        for block in blocks:
            start = block * NOISE_BLOCK
            count = min(NOISE_BLOCK, n - start)
            x, latents = dist.sample_with_latents(count, seed, offset=start)
            if block == 0:
                _warn_if_sigma_off_scale(sigmas, x)
            z = evaluation_noise(dist, seed, block)[:count]
            x, z = x.to(device), z.to(device)
            latents = {k: v.to(device) for k, v in latents.items()}
            for i, sigma in enumerate(sigmas):
                y = x + sigma * z
                x_hat = denoiser(y, sigma, latents=latents) if oracle else denoiser(y, sigma)
                check_output(x_hat, y)
                err = (x_hat.to(x.dtype) - x).pow(2).flatten(1).mean(1)
                errors[i, start:start + count] = err.double().cpu().numpy()
                bar.update(count)
    bar.close()
    if not np.all(np.isfinite(errors)):
        raise FloatingPointError(f"denoiser {denoiser!r} returned non-finite values")
    frame = pd.DataFrame({
        "sigma": sigmas,
        "mse": errors.mean(1),
        "se": errors.std(1, ddof=1) / math.sqrt(n),
        "d": dist.d,
        "n": n,
    })
    frame.attrs["errors"] = errors
    return frame


class TensorImages(FiniteDistribution):
    """A tensor of images as a finite Distribution (sampled without replacement).

    Parameters
    ----------
    images : tensor (N, c, h, w)
    count : int   the set is tiled (image k = ``images[k mod N]``) to at least ``count``
        images, so that ``mse_curve(..., n=count)`` runs even when N < count: each copy
        then gets its own noise.
    """

    name = "tensor-images"

    def __init__(self, images: torch.Tensor, count: int = 0):
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
            raise ValueError("images must be a non-empty tensor (N, c, h, w)")
        count = check_int("count", count, low=0)
        super().__init__(n_images=len(images), count=count)
        reps = math.ceil(max(count, len(images)) / len(images))
        self.images = images.float().cpu().repeat(reps, 1, 1, 1)[:max(count, len(images))]
        self.num_images = len(self.images)
        self.shape = tuple(self.images.shape[1:])


def training_curve(denoiser, images: torch.Tensor, sigmas, seed: int, n: int | None = None,
                   device=None) -> pd.DataFrame:
    """:func:`mse_curve` of ``denoiser`` on its own training images (N, c, h, w): per-pixel
    MSE (pixel units squared) at each σ of ``sigmas``, a frame with ``mse_curve``'s columns
    and per-image errors. ``n`` images (default N; the set tiled when n > N), with the
    noise of stream ``TRAINING_IMAGES_STREAM`` of ``seed``, independent of the test
    images' noise (and not permuted as :func:`evaluation_noise` permutes a shuffled
    family's: the curves of a family and of its shuffled copy on their training images
    are not paired). Against the curve on held-out images it measures the generalization
    gap."""
    count = len(images) if n is None else check_int("n", n, low=1)
    return mse_curve(denoiser, TensorImages(images, count), sigmas, n=count,
                     seed=derived_seed(seed, TRAINING_IMAGES_STREAM), device=device)


def paired_difference(curve_a: pd.DataFrame, curve_b: pd.DataFrame) -> pd.DataFrame:
    """``mse_a − mse_b`` per σ with the standard error of the paired per-image differences.

    Both curves must come from :func:`mse_curve` with the same distribution, σ grid, n and
    seed (so image k and its noise are the same in both).
    """
    ea, eb = curve_a.attrs.get("errors"), curve_b.attrs.get("errors")
    if ea is None or eb is None or ea.shape != eb.shape or not np.allclose(
        curve_a["sigma"], curve_b["sigma"]
    ):
        raise ValueError("paired_difference needs two mse_curve results on the same sigmas and n")
    diff = ea - eb
    return pd.DataFrame({
        "sigma": curve_a["sigma"].to_numpy(),
        "diff": diff.mean(1),
        "se": diff.std(1, ddof=1) / math.sqrt(diff.shape[1]),
    })


def convergence(build, settings, dist, sigma: float, n: int = 64, seed: int = 0) -> pd.DataFrame:
    """MSE of an estimator as its settings grow (a bank, a local sample, a grid): is it
    converged?

    Parameters
    ----------
    build : callable ``(**setting) -> denoiser``.
    settings : sequence of dicts, the keyword arguments of ``build``, increasing in cost.
    dist : Distribution
    sigma : float               noise level (pixel units).
    n, seed : int               test images and noise (paired across settings).

    Returns
    -------
    DataFrame, one row per setting: its keys, ``mse`` (per pixel), ``se``,
    ``total_over_s2`` (``d·mse/σ²``), ``diff_to_last`` and ``diff_se`` (paired difference
    to the last setting). A converged estimator shows differences within a few standard
    errors.
    """
    settings = [dict(s) for s in settings]
    if not settings:
        raise ValueError("settings must hold at least one dict of build's keyword arguments")
    curves = [mse_curve(build(**s), dist, [sigma], n=n, seed=seed) for s in settings]
    rows = []
    for setting, curve in zip(settings, curves, strict=True):
        diff = paired_difference(curve, curves[-1])
        mse = float(curve["mse"][0])
        rows.append({**setting, "mse": mse, "se": float(curve["se"][0]),
                     "total_over_s2": mse * dist.d / sigma ** 2,
                     "diff_to_last": float(diff["diff"][0]), "diff_se": float(diff["se"][0])})
    return pd.DataFrame(rows)
