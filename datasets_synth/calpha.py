"""``calpha``: a C^α contour between two C^β Gaussian regions, exactly Gaussian given the contour.

Construction (shape ``(1, s, s)``, rows ``i = 0 … s−1`` top to bottom, columns
``j = 0 … s−1``; ``t ∈ [0, 1)`` runs across the width, heights are in pixel units
measured downwards from the top edge):

1. Contour, a graph over the columns (periodic in t)::

       c(t) = c0 + κ Σ_{k=1..K} k^{−(α+1/2)} (a_k cos 2πkt + b_k sin 2πkt),

   ``a_k, b_k ~ N(0, 1)``, ``c0 ~ U(3s/8, 5s/8)``, ``K = 8s``; κ makes the standard
   deviation of ``c − c0`` equal to ``s/8``. The coefficient variance ``k^{−(2α+1)}`` gives
   wavelet coefficients ``|d_j| ~ 2^{−j(α+1/2)}``: Hölder exponent α down to the scale
   ``1/K`` (like fBm; SCIENCE.md §5). The height used is ``h = clip(c, 0, s)``.
2. Mask ``m`` (s, s) in [0, 1], the fraction of each pixel above the contour (region 1).
   With ``antialias`` each pixel column is cut into ``S = 8`` sub-columns at
   ``t = (j + (q + ½)/S)/s``; the coverage is exact in y and averaged over the
   sub-columns: ``m[i, j] = mean_q clip(h(t_{j,q}) − i, 0, 1)``. Without antialias
   ``S = 1`` and ``m[i, j] = 1{i + ½ < h(t_j)}`` (hard threshold at pixel centres).
3. Two regions: ``x = m ∘ (f1 + a1) + (1 − m) ∘ (f2 + a2)`` with ``f1, f2`` independent
   periodic stationary Gaussian fields of Fourier variances
   ``λ(ω) ∝ (ω0² + |ω|²)^{−(β+1)}`` (ω in cycles per image, ω0 = 1; Hölder β in 2-D),
   per-pixel std 0.1, and offsets ``a1, a2 ~ N(0.5, 0.25²)`` independent of all else.

Given the mask, x is exactly Gaussian (SCIENCE.md §5: the oracle's posterior is then a
Wiener-type formula)::

    x | m ~ N(μ(m), C(m)),   μ = m·0.5 + (1 − m)·0.5 = 0.5,
    C(m) = D_m A D_m + D_{1−m} A D_{1−m},   A = F⁻¹ diag(λ) F + s_a² 1 1ᵀ,

``D_v = diag(v)``, ``F`` the unitary 2-D DFT and ``s_a = 0.25`` (both regions share the
same field law). :meth:`CAlpha.mean_vector` and :meth:`CAlpha.covariance` build μ and C
(float64) for a batch of masks; ``_draw`` returns the latents ``contour`` (clipped
heights at the sub-column positions, (n, s·S)) and ``mask`` ((n, 1, s, s)).
"""

from __future__ import annotations

import math

import torch

from .base import Distribution, check_choice, check_float, check_int

CONTOUR_STD = 1.0 / 8.0  # std of c − c0, in units of the image size
FIELD_STD = 0.1  # per-pixel std of the region fields f1, f2
OFFSET_MEAN = 0.5  # mean of the region offsets a1, a2
OFFSET_STD = 0.25  # std of the region offsets a1, a2
OMEGA0 = 1.0  # ω0 of the field spectrum, cycles per image
SUBCOLUMNS = 8  # S: sub-columns per pixel column when antialiasing


def field_spectrum(size: int, beta: float, std: float = FIELD_STD) -> torch.Tensor:
    """Fourier variances λ (size, size) float64 of the region fields, ``mean(λ) = std²``.

    ``λ(ω) ∝ (ω0² + |ω|²)^{−(β+1)}`` on the unitary DFT grid (Hölder β in 2-D).
    """
    freq = torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64)
    radius2 = freq[:, None] ** 2 + freq[None, :] ** 2
    lam = (OMEGA0**2 + radius2) ** (-(beta + 1.0))
    return lam * (std**2 / lam.mean())


def contour_amplitudes(size: int, alpha: float, terms: int) -> torch.Tensor:
    """Std of ``a_k, b_k`` terms, κ k^{−(α+1/2)} for k = 1..terms (float64, pixel units)."""
    k = torch.arange(1, terms + 1, dtype=torch.float64)
    amp = k ** (-(alpha + 0.5))
    # Var(c − c0) = Σ amp_k² (a cos + b sin has unit variance); scale it to (s/8)²
    return amp * (CONTOUR_STD * size / amp.pow(2).sum().sqrt())


class CAlpha(Distribution):
    """A C^α contour between two C^β Gaussian regions, shape (1, size, size).

    Parameters
    ----------
    alpha : float > 0          Hölder exponent of the contour (default 2).
    beta : float > 0 or None   Hölder exponent of the region fields (default: alpha).
    size : int >= 8            image side in pixels (default 32).
    antialias : bool           exact area coverage of boundary pixels (default True).

    Attributes
    ----------
    terms : int                 K, Fourier terms of the contour (8·size).
    subcolumns : int            S, sub-columns per pixel column (8, or 1 without antialias).
    amplitudes : tensor (K,)    std of the k-th contour coefficients, pixel units.
    eigenvalues : tensor (s, s) Fourier variances λ of the fields f1, f2 (float64).
    region_covariance : tensor (d, d)   A = F⁻¹ diag(λ) F + s_a² 1 1ᵀ (float64).
    """

    name = "calpha"
    block_size = 256

    def __init__(self, alpha: float = 2.0, beta: float | None = None, size: int = 32,
                 antialias: bool = True):
        alpha = check_float("alpha", alpha, low=0.0, low_open=True)
        beta = alpha if beta is None else check_float("beta", beta, low=0.0, low_open=True)
        size = check_int("size", size, low=8)
        antialias = bool(check_choice("antialias", antialias, (True, False)))
        super().__init__(alpha=alpha, beta=beta, size=size, antialias=antialias)
        self.alpha, self.beta, self.size, self.antialias = alpha, beta, size, antialias
        self.shape = (1, size, size)
        self.intrinsic_dim = None
        self.value_range = (-math.inf, math.inf)
        self.terms = 8 * size
        self.subcolumns = SUBCOLUMNS if antialias else 1
        self.amplitudes = contour_amplitudes(size, alpha, self.terms)
        self.eigenvalues = field_spectrum(size, beta)
        self._field_amp = self.eigenvalues.sqrt().float()[..., None]
        # sub-column centres t_n = (n + ½)/N, N = s·S: c(t_n) = Re Σ_k z_k e^{2πikn/N} with
        # z_k = amp_k e^{iπk/N} (a_k − i b_k); k is folded modulo N (exact, K is a multiple of N)
        k = torch.arange(1, self.terms + 1, dtype=torch.float64)
        n_sub = size * self.subcolumns
        phase = self.amplitudes * torch.exp(1j * math.pi * k / n_sub)
        self._phase_re, self._phase_im = phase.real.float(), phase.imag.float()
        self._column_of = torch.arange(n_sub) // self.subcolumns
        self._rows = torch.arange(size, dtype=torch.float32)
        self._region_cov: torch.Tensor | None = None

    # -- construction pieces ---------------------------------------------------------
    def draw_contour_coefficients(self, generator: torch.Generator, count: int,
                                  dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the contour's ``c0`` (count,) and standard normal ``a_k, b_k`` (count, 2, K)."""
        ab = torch.randn(count, 2, self.terms, generator=generator, dtype=dtype)
        c0 = self.size * (3 / 8 + torch.rand(count, generator=generator, dtype=dtype) / 4)
        return c0, ab

    def contour_grid(self, c0: torch.Tensor, ab: torch.Tensor, points: int) -> torch.Tensor:
        """Unclipped heights ``c(t)`` (count, points) at ``t = m/points``, m = 0 … points−1.

        Takes the output of :meth:`draw_contour_coefficients`; computes in ``ab``'s dtype.
        ``points`` must exceed ``2K`` (the evaluation is then an exact inverse real FFT).
        """
        if points <= 2 * self.terms:
            raise ValueError(f"points must be > 2K = {2 * self.terms}, got {points}")
        amp = self.amplitudes.to(ab.dtype)
        # irfft(X)[m] = (2/M) Re Σ_k X_k e^{2πikm/M}: X_k = (M/2) amp_k (a_k − i b_k)
        spectrum = torch.zeros(ab.shape[0], points // 2 + 1, dtype=torch.promote_types(
            ab.dtype, torch.complex64))
        spectrum[:, 1:self.terms + 1] = torch.complex(amp * ab[:, 0], -amp * ab[:, 1])
        return torch.fft.irfft(spectrum * (points / 2), n=points) + c0[:, None]

    def subcolumn_heights(self, c0: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """Clipped heights ``h = clip(c, 0, s)`` (count, s·S) at the sub-column centres.

        ``t_n = (n + ½)/N``, ``N = s·S``; float32, one length-N FFT per image.
        """
        count, n_sub = ab.shape[0], self.size * self.subcolumns
        a, b = ab[:, 0], ab[:, 1]
        wr, wi = self._phase_re, self._phase_im
        z = torch.complex(a * wr + b * wi, a * wi - b * wr)  # z_k = w_k (a_k − i b_k)
        folded = z.view(count, -1, n_sub).sum(1).roll(1, -1)  # Z_r = Σ_{k ≡ r mod N} z_k
        heights = torch.fft.ifft(folded, norm="forward").real + c0[:, None]
        return heights.clamp_(0.0, float(self.size))

    def coverage(self, heights: torch.Tensor) -> torch.Tensor:
        """Mask m (n, 1, s, s) from clipped heights (n, s·S) at the sub-column positions.

        Antialias: ``m[i, j] = mean_q clip(h_{j,q} − i, 0, 1)``, computed as
        ``1 − #{q: ⌊h_q⌋ ≤ i}/S + Σ_{q: ⌊h_q⌋ = i} frac(h_q)/S`` (two scatters and a
        cumulative sum). Without antialias: ``m[i, j] = 1{i + ½ < h_j}``.
        """
        n, s, S = heights.shape[0], self.size, self.subcolumns
        if not self.antialias:
            rows = self._rows.to(heights.device, heights.dtype)
            return (rows[:, None] + 0.5 < heights[:, None, :]).to(heights.dtype)[:, None]
        floor = heights.floor()
        index = floor.long() * s + self._column_of.to(heights.device)  # (row ⌊h⌋, column j)
        below = torch.zeros(n, (s + 1) * s, dtype=heights.dtype, device=heights.device)
        below.scatter_add_(1, index, torch.full_like(heights, -1.0 / S))
        part = torch.zeros_like(below).scatter_add_(1, index, (heights - floor).div_(S))
        mask = below.view(n, s + 1, s).cumsum_(1).add_(part.view(n, s + 1, s)).add_(1.0)
        return mask[:, None, :s]

    def _draw(self, generator, count):
        s = self.size
        c0, ab = self.draw_contour_coefficients(generator, count)
        heights = self.subcolumn_heights(c0, ab)
        mask = self.coverage(heights)
        # f1 + i f2 = F⁻¹(√λ ξ), ξ complex white: real and imaginary parts are independent
        # real fields with covariance F⁻¹ diag(λ) F (λ is symmetric in ω)
        xi = torch.randn(count, s, s, 2, generator=generator).mul_(self._field_amp)
        fields = torch.fft.ifft2(torch.view_as_complex(xi), norm="ortho")
        offsets = OFFSET_MEAN + OFFSET_STD * torch.randn(count, 2, 1, 1, generator=generator)
        u1 = fields.real + offsets[:, 0]
        u2 = fields.imag + offsets[:, 1]
        x = u2.add_(mask[:, 0] * u1.sub_(u2))  # m u1 + (1 − m) u2
        return x[:, None], {"contour": heights, "mask": mask}

    # -- the Gaussian law given the mask ---------------------------------------------
    @property
    def region_covariance(self) -> torch.Tensor:
        """A = F⁻¹ diag(λ) F + s_a² 1 1ᵀ (d, d) float64: covariance of f + a in one region."""
        if self._region_cov is None:
            s = self.size
            kernel = torch.fft.ifft2(self.eigenvalues).real  # k(p − q), periodic
            ii = torch.arange(s)
            di = (ii[:, None] - ii[None, :]) % s  # (s, s) row offsets
            cov = kernel[di[:, None, :, None], di[None, :, None, :]]  # (s, s, s, s)
            self._region_cov = cov.reshape(s * s, s * s) + OFFSET_STD**2
        return self._region_cov

    def mean_vector(self, mask: torch.Tensor) -> torch.Tensor:
        """μ(m) (n, d) float64: ``m·E a1 + (1 − m)·E a2`` (= 0.5 everywhere)."""
        m = mask.reshape(mask.shape[0], -1).double()
        return m * OFFSET_MEAN + (1 - m) * OFFSET_MEAN

    def covariance(self, mask: torch.Tensor) -> torch.Tensor:
        """C(m) (n, d, d) float64 for masks (n, 1, s, s) (or (n, d)).

        ``C = D_m A D_m + D_{1−m} A D_{1−m} = A ∘ (m mᵀ + (1−m)(1−m)ᵀ)`` (module docstring).
        """
        m = mask.reshape(mask.shape[0], -1).double()
        A = self.region_covariance.to(m.device)
        mc = 1 - m
        return A * (m[:, :, None] * m[:, None, :] + mc[:, :, None] * mc[:, None, :])

    def reference_denoisers(self):
        from theorybench.denoisers.calpha import CAlphaContourEstimator, CAlphaOracle

        return {"oracle-contour": CAlphaOracle(self),
                "estimated-contour": CAlphaContourEstimator(self)}
