"""Denoisers sharing one interface ``denoiser(y, sigma) -> x_hat`` (see ``base``)."""

from .base import KINDS, ReferenceDenoiser, sigma_column
from .baselines import CALIBRATION_SEED, Identity, WaveletSoftThreshold
from .empirical import EmpiricalDenoiser, empirical_denoiser

__all__ = [
    "KINDS",
    "EmpiricalDenoiser",
    "Identity",
    "ReferenceDenoiser",
    "WaveletSoftThreshold",
    "empirical_denoiser",
    "reference_denoisers",
    "sigma_column",
]


def calibration_images(dist, n: int = 64):
    """Images for tuning baselines, disjoint from any test draw: a finite distribution's
    training split, else a reserved seed."""
    train = dist.train_images()
    if train is not None:
        return train[:n]
    if dist.num_images is not None:
        return dist.sample(min(n, dist.num_images), 0)
    return dist.sample(n, CALIBRATION_SEED)


def reference_denoisers(dist) -> dict:
    """The distribution's own reference denoisers plus the baselines every family gets."""
    refs = dict(dist.reference_denoisers())
    refs["identity"] = Identity()
    refs["wavelet"] = WaveletSoftThreshold(calibration_images(dist))
    return refs
