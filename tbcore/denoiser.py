"""The one Denoiser interface, and what reference denoisers declare on top of it.

A denoiser is any callable ``denoiser(y, sigma) -> x_hat``:

* ``y``: tensor (n, c, h, w), noisy images ``x + σ z`` in pixel units;
* ``sigma``: a float, or a tensor of n values (one per image), in pixel units;
* ``x_hat``: tensor (n, c, h, w) on ``y``'s device.

Reference denoisers (optimal, oracle, baselines) subclass :class:`ReferenceDenoiser`
and declare a ``kind`` (SCIENCE.md §5):

* ``exact``: the posterior mean E[x|y]; its MSE *is* the MMSE;
* ``lower``: an oracle that also sees side information (the latents the distribution
  sampled with the image); computed exactly, its MSE is ≤ MMSE;
* ``upper``: an estimator that sees y alone; its MSE is ≥ MMSE;
* ``blind``: the optimal denoiser that sees y but not σ, for a stated law of σ (e.g. the
  σ range of the universal networks): its MSE is ≥ MMSE at every σ, and its σ-averaged
  MSE under that law is the least any blind (universal) denoiser can reach. It is not a
  bound on the MMSE and never enters the bracket.
* ``model``: the optimum under a stated restriction of the estimator, computed from a
  finite training set (the local and equivariant-local machines of
  ``theorybench.denoisers.local``); a model of what a network may compute, neither the
  MMSE nor a bound on it.

Oracles set ``oracle = True`` and take ``latents=`` (a dict of per-image tensors). Only
the evaluator hands latents over, and only to oracles; ``upper`` denoisers have no way
to receive them.

A reference that is expensive per σ sets ``costly = True``: the study evaluates it on the
coarse σ grid only, and the report extends its bound to the dense grid by monotonicity
(the MMSE is non-decreasing in σ, so ``U(σ) ≤ U(σ')`` bounds it for every σ ≤ σ' and
``L(σ')`` for every σ ≥ σ'). One that autograd cannot differentiate in ``y`` (a
search, a quadrature on an adaptive grid) sets ``differentiable = False``: the Jacobian
analysis then does not use it.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

KINDS = ("exact", "lower", "upper", "blind", "model")


def sigma_column(sigma, y: torch.Tensor) -> torch.Tensor:
    """σ as a tensor of shape (n, 1, 1, 1) on y's device and dtype (float or n values)."""
    if isinstance(sigma, torch.Tensor):
        s = sigma.to(device=y.device, dtype=y.dtype).reshape(-1)
        if s.numel() == 1:
            s = s.expand(y.shape[0])
        if s.numel() != y.shape[0]:
            raise ValueError(f"sigma must be a float or hold one value per image "
                             f"({y.shape[0]}), got {s.numel()} values")
    else:
        real = isinstance(sigma, numbers.Real) and not isinstance(sigma, bool)
        if not real or not math.isfinite(sigma):
            raise ValueError(f"sigma must be a finite positive number, got {sigma!r}")
        s = torch.full((y.shape[0],), float(sigma), device=y.device, dtype=y.dtype)
    if not bool(torch.all(s > 0)) or not bool(torch.all(torch.isfinite(s))):
        raise ValueError("sigma must be finite and > 0")
    return s.view(-1, *([1] * (y.dim() - 1)))


def check_eval_mode(denoiser) -> None:
    """ValueError if the denoiser (a module, or an object holding modules as attributes)
    has batch-norm or dropout layers in training mode: its output for one image would
    depend on the batch, or be random. The message names the fix (``.eval()``)."""
    if isinstance(denoiser, nn.Module):
        modules = [denoiser]
    else:
        modules = [v for v in vars(denoiser).values() if isinstance(v, nn.Module)] \
            if hasattr(denoiser, "__dict__") else []
    stateful = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    for module in modules:
        for sub in module.modules():
            named_norm = "batchnorm" in type(sub).__name__.lower()  # e.g. bias-free BN
            if sub.training and (isinstance(sub, stateful) or named_norm):
                raise ValueError(f"the denoiser holds {type(sub).__name__} in training mode; "
                                 f"call .eval() first (a denoiser must be a per-image, "
                                 f"deterministic map)")


def check_output(x_hat, y: torch.Tensor) -> None:
    """ValueError (one line) unless the denoiser's output ``x_hat`` is a tensor of ``y``'s
    shape (n, c, h, w): a (n, h, w) output would otherwise broadcast silently."""
    if not isinstance(x_hat, torch.Tensor) or tuple(x_hat.shape) != tuple(y.shape):
        shape = tuple(x_hat.shape) if isinstance(x_hat, torch.Tensor) else type(x_hat).__name__
        raise ValueError(f"the denoiser returned {shape}; it must return a tensor of y's "
                         f"shape {tuple(y.shape)} (n, c, h, w)")


class ReferenceDenoiser:
    """Base class of reference denoisers: a callable with a ``kind`` and a description."""

    kind: str = "upper"
    oracle: bool = False
    costly: bool = False
    differentiable: bool = True
    description: str = ""

    def __init__(self, kind: str | None = None):
        if kind is not None:
            if kind not in KINDS:
                raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
            self.kind = kind

    def __call__(self, y: torch.Tensor, sigma, latents=None) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r})"
