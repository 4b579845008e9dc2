"""``BlindShrink``: a blind network whose output shrinks toward μ̂ at large estimated noise.

A blind bias-free network ``r`` is positively homogeneous, so ``f(y) − μ̂ = u − r(u)``
(``u = y − μ̂``) grows like ``‖u‖`` along every ray: at σ ≫ the data's scale, where the
MMSE estimate is close to μ̂ and of the data's size, it must reproduce the noise ``u`` to
a precision of a few per cent (the same wall that EDM's preconditioning removes for the
per-σ networks, which are told σ; :func:`~theorybench.train_config.edm_scales`). A
universal network is not told σ, but it can read it from its input: the finest diagonal
differences of ``u`` are mostly noise (:func:`noise_level`; their median absolute value,
:func:`texture_level`, is the robust estimate of Donoho & Johnstone 1994). This module
wraps ``r`` in EDM's form with that estimate:

    y − f(y) = (1 − a) u + b r(u),   a = σ_d² / (σ_d² + max(0, σ̂(u)² − θ²)),   b = √a,

so ``f(y) = μ̂ + a u − b r(u)``: for ``σ̂ ≤ θ`` (small noise) exactly the residual form
``f(y) = y − r(u)``, homogeneous about μ̂; above, the scalar Wiener shrinkage of a white
signal of variance σ_d² at the excess noise level, plus a correction ``b r(u)`` of the
data's size: with ``b ≈ σ_d/σ̂``, ``r``'s target keeps the input's size σ, as in the
residual form (EDM's ``c_skip = a``, ``c_out/σ = b``). ``σ_d²`` (the mean per-pixel
variance of ``x − μ̂``) and ``θ`` (1.1 × the largest σ̂ of a clean image) are measured
on clean training images by :meth:`BlindShrink.calibrate` and kept as buffers. The map
is still blind (a function of y alone) but homogeneous about μ̂ only where σ̂ ≤ θ; the
Jacobian analysis reports the homogeneity error it has elsewhere.

Where it helps, measured (default preset's universal networks, 2000 steps, seed 0; MSE
with the shrinkage over MSE without, at σ = 0.01, 0.1, 0.44, 0.94, 2): Gaussian field
0.99, 0.96, 0.94, 0.97, 0.79; faces 0.85, 1.14, 1.05, 1.02, 0.81; shuffled faces 0.04,
0.73, 0.77, 0.78, 0.36 — families whose posterior mean at large σ stays near μ̂, where
the universal network now beats the mean image (with the median estimate in place of the
smooth one: within ±15 % of these). Forced on (a prototype, median estimate),
it hurts the geometric families, whose posterior localizes a contour: disks 1.45, 4.40,
3.14, 2.04, 1.23; C^α (α = 2) 1.04, 1.79, 2.30, 1.48, 1.05. Their clean images have no
fine-scale texture (median texture_level / σ_d: disks 0.002, C^α 0.002–0.008, against Gaussian 0.46,
faces 0.17, shuffled 0.78), so the calibration switches the shrinkage off below
``TEXTURE_FRACTION`` = 0.1 and they keep the residual form, bit for bit. Tried and
rejected: θ = max(1.1 max σ̂, 2σ_d) (Gaussian 1.08–1.22 and faces 1.5–1.8 for 0.44 ≤ σ ≤
1.4), b = 1 (disks 15× at σ = 0.44), and a learned scalar gate between the two forms (it
settled at 0.46–0.54 on disks and C^α, still 1.2–1.6× worse: gradient descent does not
find the off switch).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MAD_NORMAL = 0.6744897501960817  # median |N(0, 1)|
THRESHOLD_MARGIN = 1.1  # θ = this × the largest σ̂ of a clean calibration image
TEXTURE_FRACTION = 0.1  # off unless the clean images' median texture_level ≥ this × σ_d


def _diagonal_differences(u: torch.Tensor) -> torch.Tensor:
    """``u[i,j] − u[i+1,j] − u[i,j+1] + u[i+1,j+1]`` flattened per image (n, m): on white
    noise of level σ, N(0, 4σ²) each."""
    if u.dim() != 4 or u.shape[-1] < 2 or u.shape[-2] < 2:
        raise ValueError(f"the noise estimate needs images (n, c, h, w) with h, w >= 2, got "
                         f"{tuple(u.shape)}")
    return (u[..., :-1, :-1] - u[..., 1:, :-1] - u[..., :-1, 1:] + u[..., 1:, 1:]).flatten(1)


def noise_level(u: torch.Tensor) -> torch.Tensor:
    """Blind estimate σ̂ (n,) of the white-noise level of each image u (n, c, h, w): the
    root mean square of its diagonal second differences over 2, i.e. √(σ² + the image's own
    finest-scale energy) (calibrated away by θ). Smooth, and positively homogeneous of
    degree 1 (σ̂(λu) = λ σ̂(u), λ > 0); its gradient is spread over all pixels, so the
    network's Jacobian gains only a small rank-one term (a median's gradient sits on one
    difference: measured, it put an eigenvalue near 19 and an asymmetry of 1.4 into the
    Jacobian of the Gaussian networks at σ = 0.2)."""
    return _diagonal_differences(u).square().mean(dim=1).sqrt() / 2.0


def texture_level(u: torch.Tensor) -> torch.Tensor:
    """Robust σ̂ (n,) of each image u (n, c, h, w): the median absolute diagonal difference
    over 2 · 0.6745 (Donoho & Johnstone 1994, MAD of the finest wavelet coefficients). On a
    piecewise-smooth image it is near 0 (the median ignores the edges); on a textured one
    it measures the texture's finest scale."""
    return _diagonal_differences(u).abs().median(dim=1).values / (2.0 * MAD_NORMAL)


class BlindShrink(nn.Module):
    """``u ↦ (1 − a) u + b r(u)``, the residual ``y − f(y)`` of the form above.

    Attributes
    ----------
    inner : nn.Module        the bias-free network r.
    threshold : tensor ()    θ (pixel units); +inf until calibrated (the residual form).
    variance : tensor ()     σ_d², the data's mean per-pixel variance about μ̂.
    active : bool            whether the shrinkage acts anywhere (θ finite: calibrated on
                             textured data). A host-side copy of ``isfinite(θ)``, kept in
                             step by every method that writes θ and by ``load_state_dict``,
                             so that ``forward`` never reads a device tensor (a
                             device-to-host sync per training and sampler step on a GPU).
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("threshold", torch.tensor(float("inf")))
        self.register_buffer("variance", torch.tensor(1.0))
        self.active = False

    def _set_threshold(self, theta: float) -> None:
        self.threshold.fill_(theta)
        self.active = math.isfinite(theta)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.active = bool(torch.isfinite(self.threshold))

    def reset_parameters(self) -> None:
        """Uncalibrated: θ = +inf (a = b = 1, the residual form) and σ_d² = 1."""
        with torch.no_grad():
            self._set_threshold(float("inf"))
            self.variance.fill_(1.0)

    @torch.no_grad()
    def calibrate(self, u_clean: torch.Tensor) -> None:
        """Set σ_d² = mean of ``u_clean²`` and θ = 1.1 × the largest σ̂ of a clean image
        from clean centred training images ``u_clean = x − μ̂`` (n, c, h, w): clean images
        keep the residual form. θ = ∞ (the residual form everywhere) when the median
        :func:`texture_level` of the clean images is below ``TEXTURE_FRACTION`` σ_d: see the
        module's measurements."""
        variance = u_clean.double().pow(2).mean()
        self.variance.fill_(float(variance))
        if float(texture_level(u_clean).median()) < TEXTURE_FRACTION * float(variance.sqrt()):
            self._set_threshold(float("inf"))
            return
        self._set_threshold(THRESHOLD_MARGIN * float(noise_level(u_clean).max()))

    def shrinkage(self, u: torch.Tensor) -> torch.Tensor:
        """``a`` (n, 1, 1, 1) in (0, 1] of each image u (n, c, h, w)."""
        excess = (noise_level(u).square() - self.threshold.square()).clamp(min=0.0)
        return (self.variance / (self.variance + excess)).view(-1, 1, 1, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.inner(u)
        a = self.shrinkage(u)
        return (1.0 - a) * u + a.sqrt() * self.inner(u)


def shrink_threshold(net: nn.Module) -> float | None:
    """θ of a network whose blind shrinkage acts (pixel units), else None."""
    return float(net.threshold) if isinstance(net, BlindShrink) and net.active else None
