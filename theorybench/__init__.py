"""theorybench: do denoisers learn the true image distribution, or memorize it?

Public API (one Denoiser interface ``denoiser(y, sigma) -> x_hat``, see ``denoisers.base``):

* :func:`mse_curve`, :func:`paired_difference`: per-pixel MSE against σ, paired across denoisers;
* :func:`empirical_denoiser`: the memorizing optimum of a training set;
* :func:`reference_denoisers`: a distribution's exact / lower / upper references + baselines.
"""

from .denoisers import EmpiricalDenoiser, ReferenceDenoiser, empirical_denoiser, reference_denoisers
from .evaluation import mse_curve, paired_difference

__all__ = [
    "EmpiricalDenoiser",
    "ReferenceDenoiser",
    "empirical_denoiser",
    "mse_curve",
    "paired_difference",
    "reference_denoisers",
]
