"""``check_distribution``: the contract every distribution (built-in or plugin) must meet."""

from __future__ import annotations

import math

import torch

from .base import Distribution


def check_distribution(dist: Distribution, n: int = 6, seed: int = 1234) -> None:
    """Raise ValueError with the first broken rule of the Distribution contract.

    Checks: a ``(c, h, w)`` shape of positive ints; ``sample(n, seed)`` returns a float32
    tensor of shape ``(n, c, h, w)`` with finite values inside the declared
    ``value_range``; the same seed gives the same images whatever the batch split
    (``sample(n)`` equals ``sample(k)`` followed by ``sample(n−k, offset=k)``); another
    seed gives other images; latents, if any, have first dimension ``n``; the global
    torch random state is untouched.
    """
    label = f"distribution {getattr(dist, 'name', type(dist).__name__)!r}"
    if not isinstance(dist, Distribution):
        raise ValueError(f"{label} is a {type(dist).__name__}, not a datasets_synth.Distribution")
    shape = tuple(getattr(dist, "shape", ()))
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"{label}: shape must be (c, h, w) of positive ints, got {shape!r}")
    dim = dist.intrinsic_dim
    if dim is not None and (not isinstance(dim, int) or not 0 <= dim <= dist.d):
        raise ValueError(f"{label}: intrinsic_dim must be None or an int in [0, {dist.d}]")
    lo, hi = dist.value_range
    if not (lo < hi) or math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{label}: value_range must be (lo, hi) with lo < hi, got {(lo, hi)}")
    if dist.num_images is not None:
        n = min(n, dist.num_images)

    rng_state = torch.get_rng_state()
    x, latents = dist.sample_with_latents(n, seed)
    if not torch.equal(rng_state, torch.get_rng_state()):
        raise ValueError(f"{label}: sampling touched the global torch random state")
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
        raise ValueError(f"{label}: samples must be a float32 torch.Tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if tuple(x.shape) != (n, *shape):
        raise ValueError(f"{label}: sample({n}) has shape {tuple(x.shape)}, expected {(n, *shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{label}: samples contain NaN or infinite values")
    if x.numel() and (x.min() < lo or x.max() > hi):
        raise ValueError(f"{label}: samples span [{x.min():.4g}, {x.max():.4g}], "
                         f"outside the declared value_range {(lo, hi)}")
    for key, value in latents.items():
        if not isinstance(value, torch.Tensor) or value.shape[:1] != (n,):
            raise ValueError(f"{label}: latent {key!r} must be a tensor with first dimension {n}")

    if not torch.equal(x, dist.sample(n, seed)):
        raise ValueError(f"{label}: the same seed gave different images")
    k = n // 2
    split = torch.cat([dist.sample(k, seed), dist.sample(n - k, seed, offset=k)])
    if not torch.equal(x, split):
        raise ValueError(f"{label}: images depend on the batch split (sample(n) != "
                         "sample(k) + sample(n-k, offset=k))")
    if n > 1 and torch.equal(x, dist.sample(n, seed + 1)):
        raise ValueError(f"{label}: seeds {seed} and {seed + 1} gave identical images")
