"""theorybench: do denoisers learn the true image distribution, or memorize it?

Public API (one Denoiser interface ``denoiser(y, sigma) -> x_hat``, see ``tbcore.denoiser``):

* :func:`mse_curve`, :func:`paired_difference`: per-pixel MSE against σ, paired across denoisers;
* :func:`empirical_denoiser`: the memorizing optimum of a training set;
* :func:`reference_denoisers`: a distribution's exact / lower / upper references + baselines;
* :func:`kl_bound`: the σ⁻³-weighted MSE gap integrated into a smoothed-KL interval;
* :func:`mmse_references`, :func:`data_variance`: a distribution's tightest MMSE references
  and the closing term's input, ready for :func:`kl_bound`;
* :func:`sample`: stochastic ascent and probability-flow ODE samplers for any denoiser;
* :func:`memorization_measures`, :func:`summarize`: nearest-training similarity, d1/d2;
* :func:`train`, :class:`NetworkDenoiser`: bias-free networks (per-σ or universal);
  :func:`net_config_for`: a network's configuration for a family (circular padding on a
  periodic one, as the studies train);
* :func:`jacobian`, :func:`jacobian_spectrum`: the adaptive basis of a denoiser.
"""

from .data_stats import data_variance
from .denoisers import (
    EmpiricalDenoiser,
    NetworkDenoiser,
    ReferenceDenoiser,
    empirical_denoiser,
    reference_denoisers,
)
from .evaluation import mse_curve, paired_difference
from .jacobian import jacobian, jacobian_spectrum, subspace_angles, sure_mse
from .kl import kl_bound, mmse_references
from .memorization import memorization_measures, summarize
from .networks import NetConfig, build_network, net_config_for
from .sampling import SampleResult, SamplingDiverged, sample
from .train_config import TrainConfig
from .training import TrainingDiverged, train

__all__ = [
    "NetConfig",
    "NetworkDenoiser",
    "TrainConfig",
    "TrainingDiverged",
    "build_network",
    "net_config_for",
    "train",
    "EmpiricalDenoiser",
    "ReferenceDenoiser",
    "SampleResult",
    "SamplingDiverged",
    "empirical_denoiser",
    "jacobian",
    "jacobian_spectrum",
    "data_variance",
    "kl_bound",
    "mmse_references",
    "memorization_measures",
    "mse_curve",
    "paired_difference",
    "reference_denoisers",
    "sample",
    "subspace_angles",
    "sure_mse",
    "summarize",
]
