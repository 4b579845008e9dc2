"""The Wiener filter of a stationary Gaussian field: exact posterior mean (SCIENCE.md §4)."""

from __future__ import annotations

import torch

from .base import ReferenceDenoiser, sigma_column


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
