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

Sampling is vectorized over blocks of 256 images in float32, each block written straight
into the output; ``sample`` (images only) draws the latents of every block into one
block of scratch (``bench/bench_calpha.py`` measures it).
With ``device="cuda"`` the same construction runs on the GPU from the GPU's random
stream (other values, the same law); the mask is then computed by the formula of step 2
itself, which the CPU's scatters equal up to float rounding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from tbcore.seeding import block_generator
from tbcore.validation import check_bool, check_float, check_int

from .base import Distribution
from .references.calpha import CAlphaContourEstimator, CAlphaOracle

CONTOUR_STD = 1.0 / 8.0  # std of c − c0, in units of the image size
FIELD_STD = 0.1  # per-pixel std of the region fields f1, f2
OFFSET_MEAN = 0.5  # mean of the region offsets a1, a2
OFFSET_STD = 0.25  # std of the region offsets a1, a2
OMEGA0 = 1.0  # ω0 of the field spectrum, cycles per image
SUBCOLUMNS = 8  # S: sub-columns per pixel column when antialiasing


class _Constants(NamedTuple):
    """Per-instance constants of ``_draw``, float32 (int64 ``column_of``), on one device."""

    phase_re: torch.Tensor  # (K,) Re w_k, w_k = amp_k e^{iπk/N}
    phase_im: torch.Tensor  # (K,) Im w_k
    field_amp: torch.Tensor  # (2s²,) √λ repeated for the real and imaginary parts of ξ
    rows: torch.Tensor  # (s,) row indices i
    column_of: torch.Tensor  # (N,) pixel column j of each sub-column


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


def contour_band(mask, width: float) -> np.ndarray:
    """Pixels whose centre lies within ``width`` pixels of a pixel the contour crosses.

    Parameters
    ----------
    mask : array (h, w) (or (1, h, w)) in [0, 1]   region-1 coverage of each pixel.
    width : float >= 0   distance between pixel centres, in pixels.

    Returns
    -------
    bool array (h, w). Crossed pixels: partly covered (``0 < m < 1``) or, for hard masks,
    on either side of a jump of ``m`` across ½ between 4-neighbours.
    """
    from scipy.ndimage import distance_transform_edt

    m = np.asarray(mask, dtype=float).reshape(np.shape(mask)[-2:])
    if not width >= 0:
        raise ValueError(f"width must be >= 0 pixels, got {width!r}")
    eps = 1e-6
    crossed = (m > eps) & (m < 1 - eps)
    side = m >= 0.5
    jump_v = side[1:] != side[:-1]
    jump_h = side[:, 1:] != side[:, :-1]
    crossed[1:] |= jump_v
    crossed[:-1] |= jump_v
    crossed[:, 1:] |= jump_h
    crossed[:, :-1] |= jump_h
    if not crossed.any():
        return np.zeros_like(crossed)
    return distance_transform_edt(~crossed) <= width


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
    draws_on_device = True

    def __init__(self, alpha: float = 2.0, beta: float | None = None, size: int = 32,
                 antialias: bool = True):
        alpha = check_float("alpha", alpha, low=0.0, low_open=True)
        beta = alpha if beta is None else check_float("beta", beta, low=0.0, low_open=True)
        size = check_int("size", size, low=8)
        antialias = check_bool("antialias", antialias)
        super().__init__(alpha=alpha, beta=beta, size=size, antialias=antialias)
        self.alpha, self.beta, self.size, self.antialias = alpha, beta, size, antialias
        self.shape = (1, size, size)
        self.intrinsic_dim = None
        self.value_range = (-math.inf, math.inf)
        self.terms = 8 * size
        self.subcolumns = SUBCOLUMNS if antialias else 1
        self.amplitudes = contour_amplitudes(size, alpha, self.terms)
        self.eigenvalues = field_spectrum(size, beta)
        # sub-column centres t_n = (n + ½)/N, N = s·S: c(t_n) = Re Σ_k z_k e^{2πikn/N} with
        # z_k = amp_k e^{iπk/N} (a_k − i b_k); k is folded modulo N (exact, K is a multiple of N)
        k = torch.arange(1, self.terms + 1, dtype=torch.float64)
        n_sub = size * self.subcolumns
        phase = self.amplitudes * torch.exp(1j * math.pi * k / n_sub)
        field_amp = self.eigenvalues.sqrt().float()[..., None].expand(size, size, 2)
        self._consts = {torch.device("cpu"): _Constants(
            phase.real.float(), phase.imag.float(), field_amp.flatten(),
            torch.arange(size, dtype=torch.float32), torch.arange(n_sub) // self.subcolumns)}
        self._region_cov: torch.Tensor | None = None

    # -- construction pieces ---------------------------------------------------------
    def draw_contour_coefficients(self, generator: torch.Generator, count: int,
                                  dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the contour's ``c0`` (count,) and standard normal ``a_k, b_k`` (count, 2, K).

        On the generator's device.
        """
        device = generator.device
        ab = torch.randn(count, 2, self.terms, generator=generator, dtype=dtype, device=device)
        c0 = torch.rand(count, generator=generator, dtype=dtype, device=device)
        return self.size * (3 / 8 + c0 / 4), ab

    def contour_grid(self, c0: torch.Tensor, ab: torch.Tensor, points: int) -> torch.Tensor:
        """Unclipped heights ``c(t)`` (count, points) at ``t = m/points``, m = 0 … points−1.

        Takes the output of :meth:`draw_contour_coefficients`; computes in ``ab``'s dtype.
        ``points`` must exceed ``2K`` (the evaluation is then an exact inverse real FFT).
        """
        if points <= 2 * self.terms:
            raise ValueError(f"points must be > 2K = {2 * self.terms}, got {points}")
        amp = self.amplitudes.to(ab.device, ab.dtype)
        # irfft(X)[m] = (2/M) Re Σ_k X_k e^{2πikm/M}: X_k = (M/2) amp_k (a_k − i b_k)
        spectrum = torch.zeros(ab.shape[0], points // 2 + 1, dtype=torch.promote_types(
            ab.dtype, torch.complex64), device=ab.device)
        spectrum[:, 1:self.terms + 1] = torch.complex(amp * ab[:, 0], -amp * ab[:, 1])
        return torch.fft.irfft(spectrum * (points / 2), n=points) + c0[:, None]

    def subcolumn_heights(self, c0: torch.Tensor, ab: torch.Tensor,
                          out: torch.Tensor | None = None) -> torch.Tensor:
        """Clipped heights ``h = clip(c, 0, s)`` (count, s·S) at the sub-column centres.

        ``t_n = (n + ½)/N``, ``N = s·S``; float32, one length-N FFT per image. ``out``:
        an optional (count, s·S) tensor to write them into.
        """
        count, n_sub = ab.shape[0], self.size * self.subcolumns
        a, b = ab[:, 0], ab[:, 1]
        const = self._constants(ab.device)
        wr, wi = const.phase_re, const.phase_im
        re, im = a * wr + b * wi, a * wi - b * wr  # z_k = w_k (a_k − i b_k)
        if self.terms > n_sub:  # Z_r = Σ_{k ≡ r mod N} z_k, k = N folds onto r = 0
            folded = torch.complex(re, im).view(count, -1, n_sub).sum(1).roll(1, -1)
        else:  # Z_r = z_r: the same roll, written in place
            folded = torch.empty(count, n_sub, dtype=torch.promote_types(
                re.dtype, torch.complex64), device=ab.device)
            torch.complex(re[:, :-1], im[:, :-1], out=folded[:, 1:])
            torch.complex(re[:, -1:], im[:, -1:], out=folded[:, :1])
        heights = torch.add(torch.fft.ifft(folded, norm="forward").real, c0[:, None], out=out)
        return heights.clamp_(0.0, float(self.size))

    def coverage(self, heights: torch.Tensor, out: torch.Tensor | None = None,
                 antialias: bool | None = None) -> torch.Tensor:
        """Mask m (n, 1, s, s) from clipped heights (n, s·S) at the sub-column positions.

        Antialias: ``m[i, j] = mean_q clip(h_{j,q} − i, 0, 1)``, computed on the CPU as
        ``1 − #{q: ⌊h_q⌋ ≤ i}/S + Σ_{q: ⌊h_q⌋ = i} frac(h_q)/S`` (two scatters and a
        cumulative sum); on other devices, where a scatter's sums are in no fixed order,
        by the formula itself (:meth:`_coverage_direct`; the same values up to rounding).
        Without antialias: ``m[i, j] = 1{i + ½ < h_j}``. ``out``: an optional (n, 1, s, s)
        tensor to write the mask into. ``antialias`` (default: the family's) selects the
        rule; the contour estimator's search uses the antialiased one, continuous in h,
        on every family.
        """
        n, s, S = heights.shape[0], self.size, self.subcolumns
        if out is None:
            out = torch.empty(n, 1, s, s, dtype=heights.dtype, device=heights.device)
        const = self._constants(heights.device)
        if not (self.antialias if antialias is None else antialias):
            rows = const.rows.to(heights.dtype)
            return out.copy_((rows[:, None] + 0.5 < heights[:, None, :])[:, None])
        if heights.device.type != "cpu":
            return self._coverage_direct(heights, out)
        # heights are >= 0: ⌊h⌋ is the truncation and frac(h) = h − ⌊h⌋
        index = torch.add(const.column_of, heights.long(), alpha=s)  # (row ⌊h⌋, column j)
        count = torch.zeros(n, s + 1, s, dtype=torch.int8)  # #{q: ⌊h_q⌋ = i} ...
        part = torch.zeros(n, s + 1, s, dtype=heights.dtype)
        count.view(n, -1).scatter_add_(1, index, torch.ones_like(index, dtype=torch.int8))
        part.view(n, -1).scatter_add_(1, index, heights.frac().mul_(1.0 / S))
        count.cumsum_(1)  # ... then #{q: ⌊h_q⌋ ≤ i} (≤ S)
        torch.add(part[:, :s], count[:, :s], alpha=-1.0 / S, out=out[:, 0])  # count/S: exact
        return out.add_(1.0)

    def _coverage_direct(self, heights: torch.Tensor, out: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """Antialiased mask (n, 1, s, s) by ``m[i, j] = mean_q clip(h_{j,q} − i, 0, 1)``."""
        n, s, S = heights.shape[0], self.size, self.subcolumns
        rows = self._constants(heights.device).rows.to(heights.dtype)
        m = (heights.view(n, 1, s, S) - rows[:, None, None]).clamp_(0.0, 1.0).mean(-1)
        return m[:, None] if out is None else out.copy_(m[:, None])

    def _constants(self, device) -> _Constants:
        """The constants of ``_draw`` on ``device`` (copied there once)."""
        device = torch.device(device)
        if device not in self._consts:
            self._consts[device] = _Constants(*(t.to(device) for t in self._consts[
                torch.device("cpu")]))
        return self._consts[device]

    def _empty(self, count: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Uninitialised (images, contour, mask) for ``count`` images on ``device``."""
        s, n_sub = self.size, self.size * self.subcolumns
        return (torch.empty(count, 1, s, s, device=device),
                torch.empty(count, n_sub, device=device),
                torch.empty(count, 1, s, s, device=device))

    def _draw(self, generator, count, out=None):
        """Images and latents of ``count`` images on ``generator.device``; ``out``: the
        (images, contour, mask) tensors to write them into (default: new ones)."""
        s = self.size
        images, contour, mask = self._empty(count, generator.device) if out is None else out
        c0, ab = self.draw_contour_coefficients(generator, count)
        heights = self.subcolumn_heights(c0, ab, out=contour)
        self.coverage(heights, out=mask)
        # f1 + i f2 = F⁻¹(√λ ξ), ξ complex white: real and imaginary parts are independent
        # real fields with covariance F⁻¹ diag(λ) F (λ is symmetric in ω)
        xi = torch.randn(count, s, s, 2, generator=generator, device=generator.device)
        xi.view(count, -1).mul_(self._constants(generator.device).field_amp)
        fields = torch.fft.ifft2(torch.view_as_complex(xi), norm="ortho")
        offsets = OFFSET_MEAN + OFFSET_STD * torch.randn(count, 2, 1, 1, generator=generator,
                                                         device=generator.device)
        x = torch.add(fields.real, offsets[:, 0], out=images[:, 0])  # u1 = f1 + a1
        u2 = fields.imag + offsets[:, 1]
        x.sub_(u2).mul_(mask[:, 0]).add_(u2)  # m u1 + (1 − m) u2 = m (u1 − u2) + u2
        return images, {"contour": contour, "mask": mask}

    def sample(self, n: int, seed: int, offset: int = 0, device=None) -> torch.Tensor:
        """:meth:`Distribution.sample`, without keeping the latents (drawn into scratch)."""
        n, seed, offset, device = self._check_sample(n, seed, offset, device)
        return self._take(n, seed, offset, device, latents=False)[0]

    def _take(self, n, seed, offset, device=None, latents=True):
        """:meth:`Distribution._take` with each whole block drawn straight into the output.

        Without ``latents`` the contours and masks of every block go to one block of
        scratch and only the images are returned (with empty latents).
        """
        bs = self.block_size
        if latents:
            images, contour, mask = self._empty(n, device)
        else:
            images, scratch = torch.empty(n, *self.shape, device=device), self._empty(bs, device)
        first, last = offset // bs, (offset + n - 1) // bs
        for b in range(first, last + 1) if n else ():
            lo, hi = max(offset, b * bs), min(offset + n, (b + 1) * bs)  # stream positions
            rows = slice(lo - offset, hi - offset)
            generator = block_generator(seed, b, device=device)
            if hi - lo < bs:  # part of a block: draw it whole, keep the part
                block = self._draw(generator, bs, out=None if latents else scratch)
                part = slice(lo - b * bs, hi - b * bs)
                images[rows] = block[0][part]
                if latents:
                    contour[rows], mask[rows] = block[1]["contour"][part], block[1]["mask"][part]
            elif latents:
                self._draw(generator, bs, out=(images[rows], contour[rows], mask[rows]))
            else:
                self._draw(generator, bs, out=(images[rows], *scratch[1:]))
        return images, ({"contour": contour, "mask": mask} if latents else {})

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

    def rate_law(self) -> dict:
        """SCIENCE.md §5: the MMSE of C^α images decays as (σ²)^{α/(α+1)}; on small images
        the Gaussian region fields dominate, whose Wiener MSE ``mean λσ²/(λ + σ²)`` has
        its own slope (:meth:`field_slope`)."""
        return {"slope": self.alpha / (self.alpha + 1), "label": "theory α/(α+1)",
                "component": "region fields", "component_slope": self.field_slope}

    def field_slope(self, size: int, a: float, b: float) -> float:
        """Log–log slope in σ² on [a, b] of the Wiener MSE of the region fields alone, at
        image side ``size``."""
        lam = field_spectrum(check_int("size", size, low=1), self.beta).numpy().ravel()
        w = [np.mean(lam * s**2 / (lam + s**2)) for s in (a, b)]
        return math.log(w[1] / w[0]) / math.log(b**2 / a**2)

    def contour_region(self, latents, width):
        """Pixels within ``width`` pixels of the image's contour (:func:`contour_band` of
        ``latents["mask"]`` (1, 1, s, s)): bool array (s, s)."""
        return contour_band(latents["mask"][0].cpu().numpy(), width)

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
        return {"oracle-contour": CAlphaOracle(self),
                "estimated-contour": CAlphaContourEstimator(self)}
