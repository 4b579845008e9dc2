"""The Wiener filter of a stationary Gaussian field: exact posterior mean (SCIENCE.md §4),
and its blind counterpart, the posterior mean when σ itself is unknown."""

from __future__ import annotations

import math

import torch

from tbcore.denoiser import ReferenceDenoiser, sigma_column


class WienerFilter(ReferenceDenoiser):
    """``x̂ = mean + F⁻¹ diag(λ/(λ+σ²)) F (y − mean)`` for ``x ~ N(mean, F⁻¹ diag(λ) F)``.

    Parameters
    ----------
    eigenvalues : tensor (h, w)   Fourier variances λ of the field (unitary 2-D DFT).
    mean : float                  the field's mean intensity.
    kind : str                    ``exact`` when the data are that field; ``upper`` when
                                  the filter is used as an estimator for other data.
    """

    description = "Wiener filter (Fourier domain)"

    def __init__(self, eigenvalues: torch.Tensor, mean: float, kind: str = "exact"):
        super().__init__(kind)
        self.eigenvalues = eigenvalues.double()
        self.mean = float(mean)

    def __call__(self, y, sigma, latents=None):
        s2 = sigma_column(sigma, y).double() ** 2
        lam = self.eigenvalues.to(y.device)
        gain = lam / (lam + s2)  # (n, 1, h, w): λ/(λ+σ²) per frequency
        spectrum = torch.fft.fft2(y.double() - self.mean, norm="ortho")
        x = torch.fft.ifft2(gain * spectrum, norm="ortho").real + self.mean
        return x.to(y.dtype)

    def blind(self, sigma_min: float, sigma_max: float) -> BlindWienerFilter:
        """The optimal blind denoiser of this field for σ on [sigma_min, sigma_max] with
        the KL bound's weight (:class:`BlindWienerFilter`)."""
        return BlindWienerFilter(self.eigenvalues, self.mean, sigma_min, sigma_max)

    def mse(self, sigma: float, data_eigenvalues: torch.Tensor | None = None) -> float:
        """Exact per-pixel MSE on data ``N(mean, diag(λ_data))`` (same eigenvectors).

        ``Σ [(σ²/(λ'+σ²))² λ + (λ'/(λ'+σ²))² σ²] / d`` with λ' this filter's eigenvalues
        (SCIENCE.md §4); with ``data_eigenvalues=None`` the data are this field and the
        value is the MMSE ``Σ λσ²/(λ+σ²) / d``.
        """
        lam_q = self.eigenvalues
        lam_p = lam_q if data_eigenvalues is None else data_eigenvalues.double()
        s2 = float(sigma) ** 2
        total = (s2 / (lam_q + s2)) ** 2 * lam_p + (lam_q / (lam_q + s2)) ** 2 * s2
        return float(total.mean())


class BlindWienerFilter(ReferenceDenoiser):
    """``E[x | y]`` for ``x ~ N(mean, F⁻¹ diag(λ) F)`` when σ is unknown: the best blind
    denoiser, kind ``blind``.

    σ follows the law ``q(σ) ∝ σ⁻³`` on ``[sigma_min, sigma_max]`` (density in σ): the
    weight of the KL bound, ``∫ MSE(f, σ) σ⁻³ dσ`` (SCIENCE.md §4b–c). Minimizing that
    integral over denoisers that see y alone is least squares under the joint law of
    (σ, x, y), so its minimizer is this posterior mean and, for every blind denoiser f
    (a universal network),

        ∫ (MSE(f, σ) − MMSE(σ)) σ⁻³ dσ  ≥  ∫ (MSE(this, σ) − MMSE(σ)) σ⁻³ dσ

    over the range: the price of not knowing σ, a floor under every universal network's
    KL integral from ``sigma_min``. Computation: ``p(y | σ)`` is Gaussian and diagonal in
    Fourier, ``log p(y | σ) = −½ Σ_ω (|ŷ_ω|²/(λ_ω + σ²) + log(λ_ω + σ²)) + c``; the
    posterior over σ is evaluated on ``points`` nodes geometric in σ (trapezoid weights
    in ln σ, prior density ∝ σ⁻² in ln σ) and the estimate is the posterior average of
    the Wiener gains, ``x̂ = mean + F⁻¹ (Σ_k p(σ_k | y) λ/(λ + σ_k²)) F (y − mean)``.

    Parameters
    ----------
    eigenvalues : tensor (h, w)   Fourier variances λ of the field (unitary 2-D DFT).
    mean : float                  the field's mean intensity.
    sigma_min, sigma_max : float  the range of σ (pixel units), 0 < sigma_min < sigma_max.
    points : int >= 16            quadrature nodes in σ (default 4096: the posterior's
                                  width in ln σ, about 1/√(2d), spans tens of nodes).
    """

    kind = "blind"
    description = "Wiener filter averaged over the posterior of σ (σ unknown; q(σ) ∝ σ⁻³)"

    def __init__(self, eigenvalues: torch.Tensor, mean: float, sigma_min: float,
                 sigma_max: float, points: int = 4096):
        super().__init__("blind")
        if not (isinstance(sigma_min, (int, float)) and isinstance(sigma_max, (int, float))
                and 0 < sigma_min < sigma_max < math.inf):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min!r}, "
                             f"{sigma_max!r}")
        if isinstance(points, bool) or not isinstance(points, int) or points < 16:
            raise ValueError(f"points must be an integer >= 16, got {points!r}")
        self.eigenvalues = eigenvalues.double()
        self.mean = float(mean)
        self.sigma_min, self.sigma_max, self.points = float(sigma_min), float(sigma_max), points
        sigmas = torch.logspace(math.log10(sigma_min), math.log10(sigma_max), points,
                                dtype=torch.float64)
        step = math.log(sigma_max / sigma_min) / (points - 1)
        trapezoid = torch.full((points,), step, dtype=torch.float64)
        trapezoid[[0, -1]] = step / 2
        lam = self.eigenvalues.flatten()
        total = lam[None, :] + sigmas[:, None] ** 2  # λ + σ_k² (K, d)
        self._inverse = 1 / total  # (K, d)
        # log prior (σ⁻² in ln σ) + quadrature weight − ½ Σ log(λ + σ²)
        self._offset = (-2 * sigmas.log() + trapezoid.log()
                        - 0.5 * total.log().sum(1))  # (K,)

    def __call__(self, y, sigma=None, latents=None):
        """Denoise ``y`` (n, c, h, w); ``sigma`` is ignored (the denoiser is blind)."""
        spectrum = torch.fft.fft2(y.double() - self.mean, norm="ortho")  # (n, c, h, w)
        flat = spectrum.flatten(1)
        d = self._inverse.shape[1]
        if flat.shape[1] != d:
            raise ValueError(f"y must have {d} values per image, got {flat.shape[1]}")
        power = flat.abs().square()  # |ŷ_ω|² (n, d)
        log_post = self._offset[None, :] - 0.5 * power @ self._inverse.T  # (n, K)
        post = torch.softmax(log_post, dim=1)
        # Σ_k p(σ_k|y) λ/(λ + σ_k²) = λ · Σ_k p(σ_k|y)/(λ + σ_k²)
        gain = (self.eigenvalues.flatten() * (post @ self._inverse)).view(spectrum.shape)
        x = torch.fft.ifft2(gain * spectrum, norm="ortho").real + self.mean
        return x.to(y.dtype)
