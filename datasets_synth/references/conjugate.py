"""``P f P⁻¹``: a denoiser of a base distribution carried over to its pixel-shuffled version."""

from __future__ import annotations

from tbcore.denoiser import ReferenceDenoiser


class Conjugated(ReferenceDenoiser):
    """``f_shuffled(y) = P f(P⁻¹ y)``; same kind and MSE as ``f`` on the base (SCIENCE.md §5).

    ``shuffler`` provides ``shuffle`` (P) and ``unshuffle`` (P⁻¹) on (n, c, h, w) tensors.
    """

    def __init__(self, denoiser, shuffler):
        super().__init__(getattr(denoiser, "kind", "upper"))
        self.denoiser = denoiser
        self.shuffler = shuffler
        self.oracle = getattr(denoiser, "oracle", False)
        self.costly = getattr(denoiser, "costly", False)
        # a denoiser computed outside autograd stays so (the Jacobian analysis skips it);
        # `given` and `moments` (the Jacobian references) are not carried over
        self.differentiable = getattr(denoiser, "differentiable", True)
        self.description = f"P f P^-1 of {getattr(denoiser, 'description', denoiser)!s}"

    @property
    def blind(self):
        """The base's blind counterpart conjugated, ``(σ_min, σ_max) -> P f_blind P⁻¹``,
        where the base denoiser has one (``AttributeError`` otherwise, so ``hasattr`` tells)."""
        make = self.denoiser.blind  # AttributeError where the base has none
        return lambda sigma_min, sigma_max: Conjugated(make(sigma_min, sigma_max), self.shuffler)

    def __call__(self, y, sigma, latents=None):
        y_base = self.shuffler.unshuffle(y)
        if self.oracle:
            return self.shuffler.shuffle(self.denoiser(y_base, sigma, latents=latents))
        return self.shuffler.shuffle(self.denoiser(y_base, sigma))
