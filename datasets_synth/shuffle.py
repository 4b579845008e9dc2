"""``shuffled``: one fixed pixel permutation applied to every sample of a base distribution.

For a fixed permutation ``P``, ``MMSE_shuffled(σ) = MMSE(σ)`` and ``f*_shuffled = P f* P⁻¹``
(SCIENCE.md §5): a network that does worse on shuffled images than on the originals
shows an inductive bias (locality) that the shuffled data do not share.
"""

from __future__ import annotations

import torch

from tbcore.validation import check_seed

from .base import Distribution
from .references.conjugate import Conjugated


class Shuffled(Distribution):
    """Pixel-shuffled version of ``base`` (any registered name; extra keywords go to it).

    Parameters
    ----------
    base : str     the base distribution (default ``"faces"``).
    seed : int     seed of the permutation (default 0).
    **base_params  parameters of the base distribution.

    Attributes
    ----------
    permutation : LongTensor (d,)   shuffled.flatten()[j] = original.flatten()[permutation[j]].
    inverse : LongTensor (d,)       its inverse: original.flatten() = shuffled.flatten()[inverse].
    """

    name = "shuffled"

    def __init__(self, base: str = "faces", seed: int = 0, **base_params):
        from .registry import get

        if base == "shuffled":
            raise ValueError("shuffled base must be another distribution than 'shuffled'")
        seed = check_seed(seed)
        self.base = get(base, **base_params)
        super().__init__(base=base, seed=seed, **base_params)
        self.shape = self.base.shape
        self.intrinsic_dim = self.base.intrinsic_dim
        self.value_range = self.base.value_range
        self.num_images = self.base.num_images
        generator = torch.Generator().manual_seed(seed)
        self.permutation = torch.randperm(self.base.d, generator=generator)
        self.inverse = torch.argsort(self.permutation)

    def shuffle(self, x: torch.Tensor) -> torch.Tensor:
        """Apply P to images (n, c, h, w)."""
        return x.flatten(1)[:, self.permutation.to(x.device)].view_as(x)

    def unshuffle(self, x: torch.Tensor) -> torch.Tensor:
        """Apply P⁻¹ to images (n, c, h, w)."""
        return x.flatten(1)[:, self.inverse.to(x.device)].view_as(x)

    def train_images(self):
        base = self.base.train_images()
        return None if base is None else self.shuffle(base)

    def _take(self, n, seed, offset):
        x, latents = self.base._take(n, seed, offset)
        return self.shuffle(x), latents

    def start_kl(self, sigma: float, mean: float) -> float | None:
        """The base's: ``N(mean·1, σ² I)`` is invariant to the permutation, so the KL is."""
        return self.base.start_kl(sigma, mean)

    def reference_base(self):
        """The base: ``theorybench.denoisers.reference_denoisers`` conjugates all of its
        references (own, identity, wavelet, empirical), so ``U_shuffled = U_base``."""
        return self.base

    def reference_denoisers(self):
        """The base's own references as ``P f P⁻¹`` (the baselines are added, conjugated
        too, by ``theorybench.denoisers.reference_denoisers``)."""
        base_refs = self.base.reference_denoisers()
        return {name: Conjugated(den, self) for name, den in base_refs.items()}
