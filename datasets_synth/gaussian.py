"""``gaussian``: a stationary Gaussian field with power spectrum ∝ 1/|ω|^γ (exact MMSE known).

Construction (periodic boundary, unitary 2-D DFT ``F``): with white noise ``w ~ N(0, I)``,

    x = mean + F⁻¹ diag(√λ) F w,     λ(ω) = c · |ω|^{−γ},   ω ∈ {−s/2 … s/2−1}² cycles/image,

so ``x ~ N(mean, C)`` with ``C = F⁻¹ diag(λ) F``: the Fourier variances ``λ`` are the
eigenvalues of the covariance (exposed as ``eigenvalues``). ``λ(0)`` would be infinite;
it is set to ``λ`` at ``|ω| = 1``. ``c`` makes the per-pixel variance ``mean(λ) = std²``.
The optimal denoiser is the Wiener filter and ``MMSE(σ) = Σ λσ²/(λ+σ²)`` (SCIENCE.md §4).
"""

from __future__ import annotations

import torch

from tbcore.validation import check_float, check_int

from .base import Distribution
from .references.wiener import WienerFilter


def power_law_spectrum(size: int, gamma: float, std: float) -> torch.Tensor:
    """Fourier variances λ (size, size), float64, ∝ |ω|^−γ, ``mean(λ) = std²``."""
    freq = torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64)
    radius = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    radius[0, 0] = 1.0  # the DC variance is set to that of the lowest frequency
    lam = radius ** (-gamma)
    return lam * (std ** 2 / lam.mean())


class GaussianField(Distribution):
    """Stationary Gaussian field, spectrum ∝ 1/|ω|^γ, shape (1, size, size).

    Parameters
    ----------
    size : int >= 8      image side in pixels (default 32).
    gamma : float >= 0   spectral exponent γ (0: white noise; 2: "1/f²" natural-image-like).
    std : float > 0      per-pixel standard deviation (default 0.2).
    mean : float         mean intensity (default 0.5).
    """

    name = "gaussian"
    block_size = 512
    draws_on_device = True  # white noise and the FFTs run where the generator is
    periodic = True  # C is a circulant: the law is invariant to cyclic shifts

    def __init__(self, size: int = 32, gamma: float = 2.0, std: float = 0.2, mean: float = 0.5):
        size = check_int("size", size, low=8)
        gamma = check_float("gamma", gamma, low=0.0)
        std = check_float("std", std, low=0.0, low_open=True)
        mean = check_float("mean", mean)
        super().__init__(size=size, gamma=gamma, std=std, mean=mean)
        self.shape = (1, size, size)
        self.intrinsic_dim = None
        self.mean = mean
        self.eigenvalues = power_law_spectrum(size, gamma, std)  # (size, size) float64
        self._amplitude = self.eigenvalues.sqrt().float()

    def _draw(self, generator, count):
        s, device = self.shape[-1], generator.device
        w = torch.randn(count, 1, s, s, generator=generator, device=device)
        amplitude = self._amplitude.to(device)
        x = torch.fft.ifft2(amplitude * torch.fft.fft2(w, norm="ortho"), norm="ortho").real
        return (x + self.mean).float(), {}

    def mmse(self, sigma: float) -> float:
        """Exact per-pixel MMSE at noise level σ: ``mean_k λ_k σ² / (λ_k + σ²)``."""
        lam = self.eigenvalues
        return float((lam * sigma**2 / (lam + sigma**2)).mean())

    def start_kl(self, sigma: float, mean: float) -> float:
        """``KL(N(m, C + σ²I) ‖ N(mean·1, σ²I))`` (nats; ``m`` = this field's mean) in closed
        form: ``Σ_k ½ (r_k − 1 − ln r_k)`` with ``r_k = (λ_k + σ²)/σ²`` (SCIENCE.md §4's
        Gaussian KL with λ' = 0, both covariances diagonal in Fourier) plus the mean's
        ``d (m − mean)²/(2σ²)``."""
        sigma = check_float("sigma", sigma, low=0.0, low_open=True)
        mean = check_float("mean", mean)
        ratio = self.eigenvalues / sigma**2  # r − 1
        shape_term = 0.5 * float((ratio - torch.log1p(ratio)).sum())
        return shape_term + self.d * (self.mean - mean) ** 2 / (2 * sigma**2)

    def reference_denoisers(self):
        return {"wiener": WienerFilter(self.eigenvalues, self.mean, kind="exact")}
