"""Denoisers sharing one interface ``denoiser(y, sigma) -> x_hat`` (``tbcore.denoiser``):
the baselines every family gets, trained networks (``network``), the local and
equivariant machines (``local``); ``reference_denoisers(dist)`` adds the family's own."""

from datasets_synth.references.conjugate import Conjugated
from datasets_synth.references.empirical import EmpiricalDenoiser, empirical_denoiser
from tbcore.denoiser import KINDS, ReferenceDenoiser, sigma_column

from .baselines import CALIBRATION_SEED, Identity, MeanImage, WaveletSoftThreshold
from .network import NetworkDenoiser

__all__ = [
    "KINDS",
    "EmpiricalDenoiser",
    "Identity",
    "MeanImage",
    "NetworkDenoiser",
    "ReferenceDenoiser",
    "WaveletSoftThreshold",
    "empirical_denoiser",
    "reference_denoisers",
    "sigma_column",
]


MEAN_IMAGES = 1024  # calibration images averaged into the mean-image baseline
WAVELET_IMAGES = 64  # the first of them, on which the wavelet threshold is tuned


def calibration_images(dist, n: int):
    """Images for tuning baselines: a finite distribution's training split; a finite one
    without a split, its own images (up to ``n``, drawn without replacement: for a set of
    at most ``n`` images all of them, so every test draw is among them; its law is
    uniform on those images, so a baseline tuned on them is still a function of y alone
    and its MSE an upper bound on that law's MMSE, but not on that of a population the
    set stands in for); else a reserved seed, disjoint from any test draw."""
    train = dist.train_images()
    if train is not None:
        return train[:n]
    if dist.num_images is not None:
        return dist.sample(min(n, dist.num_images), 0)
    return dist.sample(n, CALIBRATION_SEED)


def reference_denoisers(dist) -> dict:
    """The distribution's own reference denoisers plus the baselines every family gets.

    A distribution with a ``reference_base()`` (a pixel permutation ``P`` of it, e.g.
    ``shuffled``) gets every reference of that base, baselines and empirical included,
    as ``P f P⁻¹`` (same names and kinds): the same MSE as on the base, rather than
    baselines rebuilt on permuted pixels, which would loosen ``U`` (SCIENCE.md §5).
    """
    base_of = getattr(dist, "reference_base", None)
    base = base_of() if callable(base_of) else None
    if base is not None:
        return {name: Conjugated(den, dist) for name, den in reference_denoisers(base).items()}
    refs = dict(dist.reference_denoisers())
    refs["identity"] = Identity()
    calibration = calibration_images(dist, MEAN_IMAGES)
    refs["mean-image"] = MeanImage(calibration)
    refs["wavelet"] = WaveletSoftThreshold(calibration[:WAVELET_IMAGES])
    return refs
