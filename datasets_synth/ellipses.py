"""``ellipses``: image manifolds of every small dimension k = 1 … 7, one parameterization.

Construction (SCIENCE.md §5: at small σ the MMSE is ≈ kσ² on a k-dimensional manifold).
Each image is one antialiased ellipse on a background, ``x = a_b + (a_f − a_b)·m``, with
the full parameter ``(cx, cy, a, b, θ, a_f, a_b)``: centre, semi-axes, orientation of the
``a`` axis (radians, from the column axis towards the row axis) and the two intensities.
``k`` chooses which coordinates vary; the others are held at fixed values:

====  =============================  ==========================================
k     free coordinates               held fixed
====  =============================  ==========================================
1     cx                             cy = size/2, a = b = r₀, a_f = μ_f, a_b = μ_b
2     cx, cy                         a = b = r₀, both intensities
3     cx, cy, r (a = b = r)          both intensities
4     cx, cy, r, a_f                 a_b = μ_b
5     cx, cy, r, a_f, a_b            (a disk, as the ``disks`` family)
6     cx, cy, a, b, a_f, a_b         θ = 0 (axis-aligned)
7     cx, cy, a, b, θ, a_f, a_b      —
====  =============================  ==========================================

with ``r₀ = (r_min + r_max)/2``. Priors: the centre uniform on ``[r_max, size − r_max]²``
(every shape lies inside the image), ``r``, ``a``, ``b`` uniform on ``[r_min, r_max]``,
``θ`` uniform on ``[0, π/4]``, free intensities ``N(μ, τ²)`` (defaults μ_f = 0.75,
μ_b = 0.25, τ = 0.1: a contrast of about 0.5 also where the intensities are fixed).
An ellipse is also ``(b, a, θ + π/2)`` and ``(a, b, θ + π)``, so θ on ``[0, π/2)`` would
give every ellipse once, but its edges are identified (``θ → π/2`` with ``a, b`` swapped
is ``θ = 0``) and posterior mass near them would split across the box. On ``[0, π/4]``
no two parameters give the same ellipse and no edges meet; the price is half the
orientations: the major axis lies within ``[0, π/4] ∪ [π/2, 3π/4]`` (mod π). Only
circles, a = b, leave θ free.

Coverage: the analytic antialiasing of ``disks`` (``manifolds`` module doc) with the
ellipse's signed distance to first order. In the frame of the axes, ``u, v`` the pixel
centre's offsets and ``q = √((u/a)² + (v/b)²)`` (``q = 1`` on the boundary),

    s = (1 − q) / |∇q| = q (1 − q) / |(u/a², v/b²)|,      n = ∇q / |∇q|,

the tangent half-plane at distance ``s`` with normal ``n`` covers the unit pixel exactly
(``unit_square_coverage``), and ``s`` is moved inward by the mean sagitta ``κ/24`` with
``κ = ab / (a² sin²t + b² cos²t)^{3/2}`` the curvature at the boundary point of
parameter ``t`` (``cos t = u/(aq)``, ``sin t = v/(bq)``). For a circle ``s = r − ρ`` and
``κ = 1/r``: exactly the ``disks`` renderer. Pixels with ``q < 1/4`` (at least 3/4 of the
semi-minor axis inside) are covered fully. Against 64×64 supersampling of the true ellipse
(axes in [2, 4], any angle) the max |error| is ≈ 0.05/min(a, b), as for disks
(``tests/test_ellipses.py`` asserts ≤ 0.06/min(a, b)). Every pixel is computed (no
window): about ``d`` evaluations per image. For k ≤ 5 the shape is a circle and the
family renders with the windowed ``disks`` renderer instead (equal to rounding; for
64–4096 circles 2–11× faster, 4–13× for ``∂m/∂g``: ``bench/bench_disks.py
--denoisers``). The images are *defined* by this renderer.
"""

from __future__ import annotations

import math

import torch

from tbcore.validation import check_int

from .manifolds import (
    ShapeManifold,
    check_shape_prior,
    disk_coverage,
    disk_coverage_jacobian,
    unit_square_coverage,
)
from .references.disks import PartialShapeOracle, ShapePosterior

INNER_Q = 0.25  # pixels with q below this are fully inside (s ≥ 3b/4 − κ/24 > √½ px)
_FREE = {  # k → (free geometry coordinates, free intensities (a_f, a_b))
    1: (("cx",), (False, False)),
    2: (("cx", "cy"), (False, False)),
    3: (("cx", "cy", "r"), (False, False)),
    4: (("cx", "cy", "r"), (True, False)),
    5: (("cx", "cy", "r"), (True, True)),
    6: (("cx", "cy", "a", "b"), (True, True)),
    7: (("cx", "cy", "a", "b", "theta"), (True, True)),
}


def ellipse_coverage(ellipses: torch.Tensor, size: int) -> torch.Tensor:
    """Fraction of each pixel covered by each ellipse (module doc).

    Parameters
    ----------
    ellipses : tensor (N, 5) ``(cx, cy, a, b, θ)`` in pixel units / radians, or
        (N, size, size, 5) with one copy per pixel (for per-pixel derivatives).
    size : int   image side in pixels.

    Returns
    -------
    tensor (N, size, size), the input's dtype, values in [0, 1]; differentiable (C¹).
    """
    if ellipses.shape[-1] != 5 or ellipses.dim() not in (2, 4):
        raise ValueError(f"ellipses must have shape (N, 5) or (N, {size}, {size}, 5), got "
                         f"{tuple(ellipses.shape)}")
    p = ellipses[:, None, None, :] if ellipses.dim() == 2 else ellipses
    cx, cy, a, b, theta = p.unbind(-1)  # (N, 1, 1) or (N, size, size)
    centres = torch.arange(size, dtype=ellipses.dtype, device=ellipses.device) + 0.5
    dx, dy = centres - cx, centres[:, None] - cy  # columns, rows
    c, s = torch.cos(theta), torch.sin(theta)
    u, v = c * dx + s * dy, c * dy - s * dx  # offsets along the a and b axes
    inner = ((u / a).square() + (v / b).square()) < INNER_Q ** 2
    u = torch.where(inner, a.expand_as(u), u)  # a boundary point: finite everywhere below
    v = torch.where(inner, torch.zeros_like(v), v)
    q = torch.sqrt((u / a).square() + (v / b).square())
    gu, gv = u / a.square(), v / b.square()  # q ∇q in the axes' frame
    norm = torch.sqrt(gu.square() + gv.square())
    # a² sin²t + b² cos²t with cos t = u/(aq), sin t = v/(bq)
    spread = ((a * v / b).square() + (b * u / a).square()) / q.square()
    distance = q * (1 - q) / norm - a * b / spread.pow(1.5) / 24  # minus the mean sagitta
    cover = unit_square_coverage(distance, (c * gu - s * gv).abs() / norm,
                                 (s * gu + c * gv).abs() / norm)
    return torch.where(inner, torch.ones_like(cover), cover)


class Ellipses(ShapeManifold):
    """One antialiased ellipse on a background, with ``k`` free parameters (module doc).

    Parameters
    ----------
    k : int in [1, 7]        intrinsic dimension (which coordinates vary; module table).
    size : int >= 8          image side in pixels (default 16).
    r_min, r_max : float     range of r, a, b: ``2 <= r_min < r_max < size/2``
                             (defaults ``size/8``, ``size/4``, at least 2).
    fg_mean, fg_std : float  foreground intensity ``N(μ_f, τ_f²)`` (0.75, 0.1).
    bg_mean, bg_std : float  background intensity ``N(μ_b, τ_b²)`` (0.25, 0.1).

    Latents: ``{"params": (count, D + 2)}`` float64 rows ``(free geometry…, a_f, a_b)``,
    D = 1 … 5 (``geometry_names``); a fixed intensity holds its mean.
    """

    name = "ellipses"

    def __init__(self, k: int = 7, size: int = 16, r_min: float | None = None,
                 r_max: float | None = None, fg_mean: float = 0.75, fg_std: float = 0.1,
                 bg_mean: float = 0.25, bg_std: float = 0.1):
        k = check_int("k", k, low=1, high=7)
        params = check_shape_prior(size, r_min, r_max, fg_mean, fg_std, bg_mean, bg_std,
                                   floor=2.0)
        super().__init__(k=k, **params)
        self.r_min, self.r_max = params["r_min"], params["r_max"]
        names, free = _FREE[k]
        if not any(free) and params["fg_mean"] == params["bg_mean"]:
            raise ValueError(f"fg_mean and bg_mean must differ for k <= 3 (both intensities "
                             f"fixed: the ellipse would be invisible), got {fg_mean} for both")
        self.geometry_names, self.k, self.intrinsic_dim = names, k, k
        # a circle (k <= 5): which of the disks renderer's (cx, cy, r) are free
        self._disk_columns = ([("cx", "cy", "r").index(n) for n in names]
                              if set(names) <= {"cx", "cy", "r"} else None)
        self.intensity_std = tuple(t if f else 0.0 for t, f in
                                   zip((params["fg_std"], params["bg_std"]), free, strict=True))
        size, r_min, r_max = self.size, self.r_min, self.r_max
        self.r_fixed = (r_min + r_max) / 2  # r₀ where the size is held fixed
        box = {"cx": (r_max, size - r_max), "cy": (r_max, size - r_max),
               "r": (r_min, r_max), "a": (r_min, r_max), "b": (r_min, r_max),
               "theta": (0.0, math.pi / 4)}
        self.geometry_low = torch.tensor([box[n][0] for n in names], dtype=torch.float64)
        self.geometry_high = torch.tensor([box[n][1] for n in names], dtype=torch.float64)

    def ellipse(self, geometry: torch.Tensor) -> torch.Tensor:
        """Full ellipse parameters (..., 5) ``(cx, cy, a, b, θ)`` of geometries (..., D)."""
        cols = dict(zip(self.geometry_names, geometry.unbind(-1), strict=True))
        cx = cols["cx"]
        cy = cols.get("cy", torch.full_like(cx, self.size / 2))
        a = cols.get("r", cols.get("a", torch.full_like(cx, self.r_fixed)))
        b = cols.get("r", cols.get("b", torch.full_like(cx, self.r_fixed)))
        return torch.stack([cx, cy, a, b, cols.get("theta", torch.zeros_like(cx))], -1)

    def coverage(self, geometry):
        if self._disk_columns is not None:  # (cx, cy, a) = (cx, cy, r): a disk
            return disk_coverage(self.ellipse(geometry)[:, :3], self.size)
        return ellipse_coverage(self.ellipse(geometry), self.size)

    def coverage_jacobian(self, geometry):
        """Coverage and ``∂m/∂g`` (N, D, size, size): for circles the disks renderer's
        (its columns of the free coordinates), else autograd with one copy of the
        geometry per pixel (each pixel's coverage depends on its own copy only)."""
        if self._disk_columns is not None:
            m, jac = disk_coverage_jacobian(self.ellipse(geometry)[:, :3], self.size)
            return m, jac[:, self._disk_columns]
        n, dims, size = len(geometry), geometry.shape[1], self.size
        with torch.enable_grad():
            leaves = (geometry.detach()[:, None, None, :].expand(n, size, size, dims)
                      .clone().requires_grad_(True))
            cover = ellipse_coverage(self.ellipse(leaves), size)
            (grad,) = torch.autograd.grad(cover.sum(), leaves)
        return cover.detach(), grad.permute(0, 3, 1, 2)

    def reference_denoisers(self):
        if self.geometry_dim <= 2:  # quadrature over the whole geometry: the MMSE (exact kind)
            whole = PartialShapeOracle(self, free=tuple(range(self.geometry_dim)))
            return {"posterior-quadrature": whole, "posterior": ShapePosterior(self)}
        # knows all but the centre: a lower bound, total MSE → (2 + L)σ² at small σ
        return {"oracle-shape": PartialShapeOracle(self, free=(0, 1)),
                "posterior": ShapePosterior(self)}
