"""Classical baselines that every distribution gets: identity, mean image and wavelet
soft-thresholding.

Each is a fixed function of y (the mean image: of nothing), so its MSE is an upper bound on
the MMSE (SCIENCE.md §5).
"""

from __future__ import annotations

import numpy as np
import pywt
import torch

from tbcore.denoiser import ReferenceDenoiser, sigma_column

CALIBRATION_SEED = 2**40 + 17  # images used to pick thresholds, disjoint from test seeds
THRESHOLD_FACTORS = tuple(float(f) for f in np.arange(0.0, 4.01, 0.25))  # τ/σ grid


class Identity(ReferenceDenoiser):
    """``f(y) = y``: per-pixel MSE exactly σ²."""

    description = "identity (no denoising)"

    def __call__(self, y, sigma, latents=None):
        sigma_column(sigma, y)  # validates σ like every denoiser
        return y.clone()


class MeanImage(ReferenceDenoiser):
    """``f(y) = μ̂``, the mean of ``images`` (m, c, h, w) (calibration images, never the test
    images): per-pixel MSE ``E‖x − μ̂‖²/d`` at every σ, the large-σ limit of the MMSE, and
    the bar a denoiser must clear where the noise swamps the image."""

    description = "mean image (ignores y)"

    def __init__(self, images: torch.Tensor):
        super().__init__("upper")
        self.mean = images.double().mean(0)

    def __call__(self, y, sigma, latents=None):
        sigma_column(sigma, y)
        return self.mean.to(device=y.device, dtype=y.dtype).expand_as(y).clone()


class WaveletSoftThreshold(ReferenceDenoiser):
    """Orthogonal wavelet soft-thresholding with threshold ``τ = c(σ)·σ`` on detail bands.

    ``c(σ)`` is the grid value in ``factors`` with the lowest MSE on calibration images
    (``calibration`` (m, c, h, w), never the test images), chosen once per σ and cached:
    a fixed function of y for each σ, hence an upper bound. Periodized decimated
    transform (pywavelets), ``levels`` scales (default: as many as the size allows).
    """

    description = "wavelet soft-thresholding (best threshold per σ)"

    def __init__(self, calibration: torch.Tensor, wavelet: str = "db4", levels: int | None = None,
                 factors=THRESHOLD_FACTORS):
        super().__init__("upper")
        self.calibration = calibration.double().cpu()
        self.wavelet = wavelet
        size = min(calibration.shape[-2:])
        self.levels = levels or max(1, pywt.dwtn_max_level((size, size), wavelet))
        self.factors = tuple(float(f) for f in factors)
        self._factor: dict[float, float] = {}
        self._noise = torch.randn(self.calibration.shape,
                                  generator=torch.Generator().manual_seed(CALIBRATION_SEED % 2**32))

    def _shrink(self, y: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """Soft-threshold the detail coefficients of images y (n, c, h, w) at τ (n,)."""
        coeffs = pywt.wavedec2(y, self.wavelet, mode="periodization", level=self.levels,
                               axes=(-2, -1))
        t = tau.reshape(-1, *([1] * (y.ndim - 1)))
        # by hand, not pywt.threshold(mode="soft"): that returns NaN for a zero coefficient
        # at τ = 0 (0/0), and τ/σ = 0 is on the grid while flat images have zero details
        shrunk = [coeffs[0]] + [
            tuple(np.sign(c) * np.maximum(np.abs(c) - t, 0.0) for c in band) for band in coeffs[1:]
        ]
        rec = pywt.waverec2(shrunk, self.wavelet, mode="periodization", axes=(-2, -1))
        return rec[..., : y.shape[-2], : y.shape[-1]]

    def factor(self, sigma: float) -> float:
        """The calibrated ``c(σ)`` (cached)."""
        key = round(float(sigma), 12)
        if key not in self._factor:
            x = self.calibration.numpy()
            y = x + float(sigma) * self._noise.numpy()
            errors = [np.mean((self._shrink(y, np.full(len(y), f * sigma)) - x) ** 2)
                      for f in self.factors]
            self._factor[key] = self.factors[int(np.argmin(errors))]
        return self._factor[key]

    def __call__(self, y, sigma, latents=None):
        s = sigma_column(sigma, y).flatten().double().cpu().numpy()
        tau = np.array([self.factor(v) * v for v in s]) if len(set(s)) > 1 else \
            np.full(len(s), self.factor(s[0]) * s[0])
        out = self._shrink(y.detach().double().cpu().numpy(), tau)
        return torch.from_numpy(out).to(device=y.device, dtype=y.dtype)
