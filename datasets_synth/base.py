"""The Distribution base class (and its finite kind) that every family subclasses.

A distribution draws images deterministically from a seed. Randomness is addressed by
image index: the stream of a seed is cut into blocks of ``block_size`` images, and block
``b`` is drawn from its own generator, ``tbcore.block_generator(seed, b)`` (seeded by
``SeedSequence([seed, 0, b])``: stream 0, the images). Image ``k``
of a seed is therefore the same whatever the batch split (``sample(n, seed, offset)``
returns images ``offset … offset + n − 1`` of the stream), and no global random state is
touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from tbcore.seeding import block_generator
from tbcore.validation import check_int, check_seed

Latents = dict[str, torch.Tensor]


class Distribution:
    """A family of images ``(c, h, w)`` drawn deterministically from a seed.

    Subclasses set ``name``, ``shape``, ``intrinsic_dim`` and ``value_range`` and implement
    ``_draw(generator, count) -> (images (count, c, h, w) float32, latents)``, where
    ``latents`` maps names to tensors with first dimension ``count`` (the side information
    that oracle denoisers may use: contours, disk geometry, ...). Finite data sets set
    ``num_images`` and override ``_take``. A family whose ``_draw`` makes its tensors on
    ``generator.device`` (drawing from that generator) sets ``draws_on_device``: then
    ``sample(..., device="cuda")`` draws on the GPU instead of copying CPU draws there.

    Attributes
    ----------
    name : str            registry name.
    shape : (c, h, w)     image shape; ``d = c*h*w`` values per image.
    intrinsic_dim : int or None   manifold dimension, None when unknown or infinite.
    value_range : (lo, hi)        every value of every sample lies in it (may be infinite).
    params : dict                 the validated parameters the instance was built with.
    num_images : int or None      size of a finite data set, None for an endless generator.
    periodic : bool               the law is invariant to cyclic shifts of the image (a
        field on the torus); the studies' networks on it then pad circularly by default
        (``theorybench.net_config_for``).
    published_jacobian : dict or None   a published measurement of a trained network's
        Jacobian on this family, quoted next to the report's Jacobian table: ``source``,
        ``sigma``, and eigenvalue ranges ``first`` (λ1…λk) and ``next`` (λk+1…λ2k).
    """

    name: str = "distribution"
    shape: tuple[int, int, int]
    intrinsic_dim: int | None = None
    value_range: tuple[float, float] = (-math.inf, math.inf)
    num_images: int | None = None
    block_size: int = 256
    draws_on_device: bool = False  # _draw makes its tensors on the generator's device
    periodic: bool = False
    published_jacobian: dict | None = None

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)

    # -- public API ------------------------------------------------------------------
    @property
    def d(self) -> int:
        """Values per image, ``c*h*w``."""
        c, h, w = self.shape
        return c * h * w

    def sample(self, n: int, seed: int, offset: int = 0, device=None) -> torch.Tensor:
        """Images ``offset … offset+n−1`` of the stream of ``seed``: tensor (n, c, h, w) float32.

        ``device`` (default: the CPU) is where the images are returned. A family with
        ``draws_on_device`` makes them there from that device's random stream: the same
        law, the same images for every batch split, but other values than on the CPU.
        Any other family draws on the CPU and copies (the CPU's values).
        """
        return self.sample_with_latents(n, seed, offset, device)[0]

    def sample_with_latents(
        self, n: int, seed: int, offset: int = 0, device=None
    ) -> tuple[torch.Tensor, Latents]:
        """Like :meth:`sample`, also returning the latent parameters of each image."""
        n, seed, offset, device = self._check_sample(n, seed, offset, device)
        if device is None:
            return self._take(n, seed, offset)
        if self.draws_on_device:
            return self._take(n, seed, offset, device=device)
        images, latents = self._take(n, seed, offset)
        return images.to(device), {k: v.to(device) for k, v in latents.items()}

    def train_images(self) -> torch.Tensor | None:
        """The fixed training set (N, c, h, w) of a finite data set, None for a generator
        (networks then train on fresh samples every step)."""
        return None

    def reference_denoisers(self) -> Mapping[str, Any]:
        """Reference denoisers of this distribution by name (``tbcore.ReferenceDenoiser``).

        Each has a ``kind``: ``exact`` (the posterior mean), ``lower`` (an oracle using
        side information: MSE ≤ MMSE) or ``upper`` (uses y alone: MSE ≥ MMSE).
        The base class knows none; families and plugins override this.
        """
        return {}

    def project(self, images: torch.Tensor, sigma: float) -> torch.Tensor | None:
        """The closest image of the family to each image (its best fit on the family's
        manifold), for images seen at noise level ``sigma``; None when the family cannot
        say (the default). A family with a known low-dimensional parameterization
        overrides it: the memorization study then reports which generated samples are
        images of the family (SCIENCE.md §8).

        images : tensor (n, c, h, w); returns a tensor like ``images`` or None.
        """
        return None

    def tangent_space(self, latents: Latents) -> torch.Tensor | None:
        """Tangent vectors (d, k) float64 spanning the image manifold's tangent space at one
        image, from its latents (each with leading dimension 1); None when the family has
        no known parameterization (the default). The Jacobian analysis then reports the
        principal angles between the top-k eigenvectors and this space (SCIENCE.md §5–6).
        """
        return None

    def contour_region(self, latents: Latents, width: float):
        """Pixels (a bool array (h, w)) within ``width`` pixels of the boundary between the
        regions of one image (latents with leading dimension 1); None when the family has
        no such boundary (the default). The Jacobian analysis then reports how much of
        each top eigenvector's energy lies there (SCIENCE.md §6)."""
        return None

    def rate_law(self) -> dict | None:
        """The predicted decay of the MMSE with σ, for the report's slope tables; None (the
        default) when the family states none.

        A dict with ``slope`` (the predicted log–log slope of the MMSE in σ², SCIENCE.md
        §5), ``label`` (its column name, e.g. ``"theory α/(α+1)"``), ``component`` (in
        words: the part of the image that dominates the MSE on small images) and
        ``component_slope(size, a, b)`` (that part's own slope on [a, b] at image side
        ``size``).
        """
        return None

    def start_kl(self, sigma: float, mean: float) -> float | None:
        """``KL(p_σ ‖ N(mean·1, σ² I))`` in nats, ``p_σ`` the law of ``x + σz``, where the
        family knows it in closed form; None (the default) where it does not.

        The first term of the KL bound (SCIENCE.md §4b): the samplers start from
        ``N(μ̂, σ_max² I)`` with ``μ̂`` a scalar pixel mean. Without a closed form the bound
        uses joint convexity, ``≤ E‖x − μ̂‖²/(2σ²)``, which for a Gaussian field overstates
        it by ``½ Σ ln(1 + λ_k/σ²)``.
        """
        return None

    def reference_base(self) -> Distribution | None:
        """The distribution whose references this one inherits by conjugation, or None.

        A family that is a fixed pixel permutation ``P`` of another (``shuffled``) returns
        that base and provides ``shuffle`` (P) / ``unshuffle`` (P⁻¹): every reference of
        the base, its own and the baselines alike, is then used as ``P f P⁻¹`` (same kind,
        same MSE; SCIENCE.md §5) instead of references rebuilt on the permuted pixels.
        The default, None, means the distribution's references are its own.
        """
        return None

    def describe(self) -> str:
        """One line: name, shape, intrinsic dimension and parameters."""
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        dim = "?" if self.intrinsic_dim is None else self.intrinsic_dim
        shape = "x".join(str(s) for s in self.shape)
        return f"{self.name:14s} shape={shape:9s} intrinsic_dim={dim!s:4s} {params}"

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({params})"

    # -- implementation --------------------------------------------------------------
    @staticmethod
    def _check_sample(n, seed, offset, device) -> tuple[int, int, int, torch.device | None]:
        """Validated ``(n, seed, offset, device)`` of :meth:`sample`; device None for the CPU."""
        n = check_int("n", n, low=0)
        seed = check_seed(seed)
        offset = check_int("offset", offset, low=0)
        device = None if device is None else torch.device(device)
        return n, seed, offset, None if device is None or device.type == "cpu" else device

    def _draw(self, generator: torch.Generator, count: int) -> tuple[torch.Tensor, Latents]:
        raise NotImplementedError

    def _take(self, n: int, seed: int, offset: int, device=None) -> tuple[torch.Tensor, Latents]:
        """Cut images ``offset … offset+n−1`` out of the blocks that cover them.

        ``device`` (only with ``draws_on_device``): the device of the block generators.
        """
        if n == 0:
            images, latents = self._draw(block_generator(seed, 0, device=device), 1)
            return images[:0], {k: v[:0] for k, v in latents.items()}
        first, last = offset // self.block_size, (offset + n - 1) // self.block_size
        parts = [self._draw(block_generator(seed, b, device=device), self.block_size)
                 for b in range(first, last + 1)]
        start = offset - first * self.block_size
        images = torch.cat([p[0] for p in parts])[start:start + n]
        latents = {k: torch.cat([p[1][k] for p in parts])[start:start + n] for k in parts[0][1]}
        return images.contiguous(), latents


class FiniteDistribution(Distribution):
    """A fixed set of images; the stream of a seed is a seeded permutation of them.

    ``sample(n, seed)`` draws without replacement, so asking for more than
    ``num_images`` is a ValueError. Subclasses provide ``images`` (N, c, h, w).
    """

    images: torch.Tensor

    def _take(self, n: int, seed: int, offset: int) -> tuple[torch.Tensor, Latents]:
        total = self.num_images
        if offset + n > total:
            raise ValueError(
                f"{self.name} holds {total} images: offset + n must be <= {total}, "
                f"got offset={offset}, n={n}"
            )
        perm = torch.randperm(total, generator=block_generator(seed, 0, stream=1))
        index = perm[offset:offset + n]
        return self.images[index].clone(), {"index": index}
