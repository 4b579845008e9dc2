"""``disks``: one antialiased disk on a background, a 5-dimensional image manifold.

Construction (SCIENCE.md §5, "a disk image family ... has k = 5"). Each image has five
parameters ``θ = (cx, cy, r, a_f, a_b)``:

* centre ``(cx, cy) ~ U([r_max, s − r_max]²)`` (``s`` = size; the box does not depend on
  ``r``, so the geometry prior is the product of three uniforms and every disk lies inside
  the image);
* radius ``r ~ U(r_min, r_max)``;
* foreground and background intensities ``a_f ~ N(μ_f, τ_f²)``, ``a_b ~ N(μ_b, τ_b²)``,
  independent (defaults ``μ = 0.5``, ``τ = 0.2``).

The image is ``x = a_f·m + a_b·(1 − m)``, where ``m`` (the *mask*) is the fraction of each
pixel covered by the disk. ``x`` is linear in the two intensities given the geometry
``g = (cx, cy, r)``, so with the Gaussian intensity prior the posterior given ``y`` and
``g`` is Gaussian in closed form (``datasets_synth.references.disks``). Values are therefore
unbounded: ``value_range = (−inf, inf)`` (about 98% of values lie in [0, 1]).

Coordinates are continuous pixel units, origin at the image's top-left corner, ``cx``
along columns, ``cy`` along rows: pixel ``(i, j)`` is the square ``[j, j+1] × [i, i+1]``.

Coverage (analytic antialiasing). For a pixel centre ``p`` at distance ``ρ`` from the disk
centre, let ``s = r − ρ`` be the signed distance to the circle (> 0 inside) and
``n = (p − c)/ρ`` the outward normal. The disk is replaced by its tangent half-plane at
the nearest boundary point, ``{q : n·(q − p) ≤ s}``, whose coverage of the unit pixel is
exact: the CDF of ``n·u`` for ``u`` uniform on ``[−½, ½]²``, i.e. of the sum of two
uniforms of widths ``a = max(|n_x|, |n_y|)`` and ``b = min(...)``. With ``t = |s|``:

    G(t) = ½ + t/a                       for t ≤ (a − b)/2
         = 1 − ((a + b)/2 − t)² / (2ab)  for (a − b)/2 ≤ t ≤ (a + b)/2
         = 1                             beyond,          m = ½ + sign(s)(G(t) − ½),

a piecewise-quadratic function of ``s`` and of the normal's direction, C¹ in
``(cx, cy, r)``. Curvature: the circle bends away from its tangent by ``u²/(2r)`` at a
lateral offset ``u``; since ``E[u_⊥²] = 1/12`` over the unit square in every direction,
the half-plane is moved inward by the mean sagitta, i.e. ``r`` is replaced by
``r − 1/(24r)`` (smooth in ``r``). Without that shift edge pixels are over-covered (max
error ≈ 0.11/r, total area +π/12 pixel); with it, against 64×64 supersampling: max
|error| ≈ 0.052/r (0.013 at ``r = 4``, 0.007 at ``r = 8``), rms over edge pixels
≈ 0.012/r; disk area error ≈ 0.003 px² on average over positions, up to ≈ 0.05 px² for
one disk at ``r = 4`` (``tests/test_disks.py`` asserts max ``<= 0.06/r``). The images
are *defined* by this renderer: every bound in ``theorybench`` refers to it, not to ideal
disks.

Cost: only a window of ``2⌈r⌉ + 4`` pixels around each disk is computed; inside it the
pixels with ``|s| ≥ √½`` are 0 or 1 and the formula runs only on the edge band (about
``2√2·πr`` pixels), which is then pasted into the image. About 10 µs per 32×32 image on
one core; ``bench/bench_disks.py`` measures it.
"""

from __future__ import annotations

import math

import torch

from tbcore.validation import check_float, check_int

from .base import Distribution
from .references.disks import DisksRadiusOracle, PartialShapeOracle, ShapeOracle, ShapePosterior

HALF_DIAGONAL = math.sqrt(0.5)  # beyond this |s| a pixel is fully in or out
RENDER_CHUNK = 256  # disks rendered per vectorised pass


def disk_coverage(geometry: torch.Tensor, size: int) -> torch.Tensor:
    """Fraction of each pixel covered by each disk (tangent half-plane rule, module doc).

    Parameters
    ----------
    geometry : tensor (N, 3)   ``(cx, cy, r)`` in pixel units, ``r >= 1``; any float dtype.
    size : int                 image side in pixels.

    Returns
    -------
    tensor (N, size, size), geometry's dtype, values in [0, 1]; differentiable with
    respect to ``geometry`` (autograd), C¹.
    """
    m, _ = _coverage(geometry, size, jacobian=False)
    return m


def disk_coverage_jacobian(geometry: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coverage ``m`` (N, size, size) and its derivatives ``∂m/∂(cx, cy, r)`` (N, 3, size, size).

    The derivatives are exact for the renderer (per-pixel autograd on the edge band only;
    interior and exterior pixels have zero derivative). Not itself differentiable.
    """
    with torch.no_grad():
        return _coverage(geometry.detach(), size, jacobian=True)


def _coverage(geometry, size, jacobian):
    """Coverage (N, size, size) and, with ``jacobian``, ∂m/∂(cx, cy, r) (N, 3, size, size)
    (else None), rendered ``RENDER_CHUNK`` disks at a time (cache-sized pieces: one pass
    over many disks is ~3x slower) and pasted into preallocated images."""
    if geometry.dim() != 2 or geometry.shape[1] != 3:
        raise ValueError(f"geometry must have shape (N, 3), got {tuple(geometry.shape)}")
    n, pixels = len(geometry), size * size
    parts = [slice(start, start + RENDER_CHUNK) for start in range(0, n, RENDER_CHUNK)]
    if geometry.requires_grad:  # out of place, for autograd
        rows = [geometry.new_zeros(0, pixels)]
        for part in parts:
            windows, target, _ = _render_windows(geometry[part], size, False)
            rows.append(geometry.new_zeros(len(windows), pixels).scatter(1, target, windows))
        return torch.cat(rows).view(n, size, size), None
    m = geometry.new_zeros(n, pixels)
    jac = geometry.new_zeros(3, n, pixels) if jacobian else None
    for part in parts:
        windows, target, jac_windows = _render_windows(geometry[part], size, jacobian)
        m[part].scatter_(1, target, windows)
        for axis in range(3 if jacobian else 0):
            jac[axis, part].scatter_(1, target, jac_windows[axis])
    return (m.view(n, size, size),
            None if jac is None else jac.view(3, n, size, size).transpose(0, 1))


def _render_windows(geometry, size, jacobian):
    """One chunk of disks (n, 3) on w×w windows that hold them: ``(coverage (n, w²),
    target (n, w²), derivatives (3, n, w²) or None)``, ``target`` the flat image position
    of each window pixel."""
    cx, cy, r = geometry.unbind(1)
    r_eff = r - 1 / (24 * r)  # mean sagitta correction (module doc)
    n, dtype, device = len(geometry), geometry.dtype, geometry.device
    half = int(math.ceil(float(r.detach().max()))) + 1
    w = min(2 * half + 2, size)  # the whole image if too big
    steps = torch.arange(w, device=device)
    with torch.no_grad():
        col0 = (cx.detach().floor() - half).clamp(0, size - w).long()  # window origins (n,)
        row0 = (cy.detach().floor() - half).clamp(0, size - w).long()
    dx = (col0[:, None] + steps).to(dtype) + 0.5 - cx[:, None]  # (n, w): pixel-centre offsets
    dy = (row0[:, None] + steps).to(dtype) + 0.5 - cy[:, None]
    with torch.no_grad():
        d2 = dy[:, :, None].square() + dx[:, None, :].square()  # ρ² (n, w, w)
        inside = d2 <= (r_eff - HALF_DIAGONAL).clamp(min=0).square()[:, None, None]  # m = 1
        band = torch.logical_xor(d2 < (r_eff + HALF_DIAGONAL).square()[:, None, None], inside)
        flat = torch.nonzero(band.view(-1)).squeeze(1)  # edge pixels, flat index k·w² + i·w + j
        k, ij = flat.div(w * w, rounding_mode="floor"), flat.remainder(w * w)
        i, j = ij.div(w, rounding_mode="floor"), ij.remainder(w)
        target = (row0 * size + col0)[:, None] + (steps[:, None] * size + steps).view(-1)
    m = inside.view(torch.uint8).to(dtype).view(-1)
    if not jacobian:
        cov = _half_plane_coverage(dx[k, j], dy[k, i], r_eff[k])
        return m.index_put((flat,), cov).view(n, w * w), target, None
    with torch.enable_grad():
        leaves = [v.detach().requires_grad_(True) for v in (dx[k, j], dy[k, i], r[k])]
        cov = _half_plane_coverage(leaves[0], leaves[1], leaves[2] - 1 / (24 * leaves[2]))
        grads = torch.autograd.grad(cov.sum(), leaves)  # per pixel: each cov has its own inputs
    jac = torch.zeros(3, n * w * w, dtype=dtype, device=device)
    for axis, (grad, sign) in enumerate(zip(grads, (-1.0, -1.0, 1.0), strict=True)):
        jac[axis].index_put_((flat,), sign * grad)  # ∂dx/∂cx = ∂dy/∂cy = −1
    return (m.index_put((flat,), cov.detach()).view(n, w * w), target,
            jac.view(3, n, w * w))


def _half_plane_coverage(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Exact coverage of the unit square at offset (dx, dy) by the tangent half-plane."""
    rho = torch.sqrt(dx.square() + dy.square())
    s = r - rho  # signed distance to the circle, > 0 inside
    return unit_square_coverage(s, dx.abs() / rho, dy.abs() / rho)


def unit_square_coverage(s: torch.Tensor, nx: torch.Tensor, ny: torch.Tensor) -> torch.Tensor:
    """Coverage of a unit pixel by the half-plane ``{q : n·(q − p) ≤ s}`` (module doc).

    ``s``: signed distance from the pixel centre ``p`` to the boundary (> 0 inside);
    ``(nx, ny)``: absolute components of the unit outward normal. Broadcastable tensors;
    piecewise quadratic in ``s``, C¹.
    """
    a, b = torch.maximum(nx, ny), torch.minimum(nx, ny)  # widths of the two uniforms
    t = s.abs()
    w = ((a + b) / 2 - t).clamp(min=0).minimum(b)  # ramp: distance to the support's end
    g_ramp = 1 - w.square() / (2 * a * b).clamp(min=1e-30)  # CDF of a trapezoid, quadratic part
    g_flat = 0.5 + t / a  # linear part
    g = torch.where(t < (a - b) / 2, g_flat, g_ramp)
    return 0.5 + torch.sign(s) * (g - 0.5)


def check_shape_prior(size, r_min, r_max, fg_mean, fg_std, bg_mean, bg_std,
                      floor: float) -> dict:
    """The validated parameters of a shape manifold: ``size >= 8``, a size range
    ``floor <= r_min < r_max < size/2`` (defaults ``max(floor, size/8)`` and
    ``max(r_min + 1, size/4)``, or halfway from r_min to size/2 where that is not below
    size/2), finite intensity means and positive standard deviations."""
    size = check_int("size", size, low=8)
    r_min = check_float("r_min", max(floor, size / 8) if r_min is None else r_min, low=floor)
    if r_min >= size / 2:
        raise ValueError(f"r_min must be in [{floor}, {size / 2}) (below size/2, with room "
                         f"for r_max), got {r_min}")
    if r_max is None:
        r_max = max(r_min + 1, size / 4)
        r_max = r_max if r_max < size / 2 else (r_min + size / 2) / 2
    r_max = check_float("r_max", r_max, low=r_min, low_open=True)
    if r_max >= size / 2:
        raise ValueError(f"r_max must be in ({r_min}, {size / 2}) (size/2), got {r_max}")
    return {"size": size, "r_min": r_min, "r_max": r_max,
            "fg_mean": check_float("fg_mean", fg_mean),
            "fg_std": check_float("fg_std", fg_std, low=0.0, low_open=True),
            "bg_mean": check_float("bg_mean", bg_mean),
            "bg_std": check_float("bg_std", bg_std, low=0.0, low_open=True)}


class ShapeManifold(Distribution):
    """One antialiased shape on a uniform background: ``x = a_b + (a_f − a_b)·m(g)``.

    The common frame of the shape manifolds (``disks``, ``ellipses``): a geometry ``g``
    (D coordinates, uniform on the box ``[geometry_low, geometry_high]``) gives the mask
    ``m(g)`` (the pixel coverage); the foreground and background intensities are
    independent Gaussians ``N(μ_f, τ_f²)``, ``N(μ_b, τ_b²)``, or fixed at ``μ`` where
    ``τ = 0``. The image manifold has dimension ``k = D + (number of τ > 0)``, and given
    ``g`` the image is linear in the free intensities, which the reference denoisers of
    ``datasets_synth.references.disks`` integrate in closed form.

    Subclasses pass their parameters to ``__init__`` (at least ``size``, ``fg_mean``,
    ``bg_mean``; :func:`check_shape_prior` validates those of a sized shape), set
    ``geometry_names``, ``intrinsic_dim``, ``intensity_std``, ``geometry_low`` /
    ``geometry_high`` (D,) float64, and define :meth:`coverage` and
    :meth:`coverage_jacobian` (README: "Add a distribution"). Latents:
    ``{"params": (count, D + 2)}`` float64 rows ``(g…, a_f, a_b)`` (the float32 values the
    image was rendered from; a fixed intensity holds its value).
    """

    block_size = 256
    draws_on_device = True
    geometry_names: tuple[str, ...] = ()  # the D geometry coordinates

    def __init__(self, **params):
        super().__init__(**params)
        self.size = params["size"]
        self.shape = (1, self.size, self.size)
        self.value_range = (-math.inf, math.inf)
        self.intensity_mean = (params["fg_mean"], params["bg_mean"])  # (μ_f, μ_b)
        self._fitter = None  # the posterior behind project(), made on first use

    @property
    def geometry_dim(self) -> int:
        """D, the number of geometry coordinates."""
        return len(self.geometry_names)

    @property
    def free_intensities(self) -> tuple[bool, bool]:
        """Whether ``a_f`` and ``a_b`` vary (τ > 0): the manifold's linear directions."""
        return tuple(t > 0 for t in self.intensity_std)

    def geometry_from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """Map points of the unit cube (N, D) to geometries (N, D) (uniform → prior)."""
        lo, hi = self.geometry_low.to(u), self.geometry_high.to(u)
        return lo + (hi - lo) * u

    # -- rendering -----------------------------------------------------------------------
    def coverage(self, geometry: torch.Tensor) -> torch.Tensor:
        """Pixel coverage (N, size, size) of geometries (N, D); differentiable, C¹."""
        raise NotImplementedError

    def coverage_jacobian(self, geometry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coverage (N, size, size) and its derivatives ``∂m/∂g`` (N, D, size, size)."""
        raise NotImplementedError

    def mask(self, geometry: torch.Tensor) -> torch.Tensor:
        """Pixel coverage ``m`` (n, 1, size, size) of geometries (n, D).

        Differentiable in ``geometry``; dtype follows ``geometry``.
        """
        return self.coverage(geometry).unsqueeze(1)

    def render(self, params: torch.Tensor) -> torch.Tensor:
        """Images ``a_f·m + a_b·(1 − m)`` (n, 1, size, size) of ``params`` (n, D + 2).

        Rows are ``(g…, a_f, a_b)`` in pixel / intensity units. Differentiable in
        ``params``; dtype follows ``params``.
        """
        width = self.geometry_dim + 2
        if params.dim() != 2 or params.shape[1] != width:
            raise ValueError(f"params must have shape (n, {width}), got {tuple(params.shape)}")
        m = self.mask(params[:, :self.geometry_dim])
        a_f, a_b = params[:, -2, None, None, None], params[:, -1, None, None, None]
        return a_b + (a_f - a_b) * m

    def tangent_space(self, latents):
        """Tangent vectors ``∂x/∂θ`` (d, k) float64 at the image of ``latents["params"]``
        (1, D + 2).

        ``x = a_b + (a_f − a_b)·m(g)`` gives the columns ``(a_f − a_b)·∂m/∂g_j`` (the
        geometry, :meth:`coverage_jacobian`), then ``m`` and ``1 − m`` for the free
        intensities: their span is the tangent space of the k-dimensional image manifold
        at that image (SCIENCE.md §5–6).
        """
        theta = latents["params"].detach().reshape(1, self.geometry_dim + 2).double()
        m, jm = self.coverage_jacobian(theta[:, :self.geometry_dim])
        return self.tangent_columns(m.flatten(1), jm.flatten(2), theta[:, -2:-1],
                                    theta[:, -1:])[0].T

    def tangent_columns(self, m, jm, a_f, a_b) -> torch.Tensor:
        """``∂x/∂θ`` (B, k, d) over the free coordinates for B images: masks ``m`` (B, d),
        their derivatives ``jm`` (B, D, d) and intensities ``a_f``, ``a_b`` (B, 1); the
        rows ``(a_f − a_b)·∂m/∂g_j``, then ``m`` (if ``a_f`` is free) and ``1 − m`` (if
        ``a_b`` is)."""
        columns = [(a_f - a_b)[:, :, None] * jm]
        for free, column in zip(self.free_intensities, (m, 1 - m), strict=True):
            if free:
                columns.append(column[:, None])
        return torch.cat(columns, 1)

    def _draw(self, generator, count):
        device = generator.device  # the tensors are made where the generator is
        dims = self.geometry_dim
        u = torch.rand(count, dims, generator=generator, dtype=torch.float64, device=device)
        z = torch.randn(count, 2, generator=generator, dtype=torch.float64, device=device)
        mean = torch.tensor(self.intensity_mean, dtype=torch.float64, device=device)
        std = torch.tensor(self.intensity_std, dtype=torch.float64, device=device)
        params = torch.cat([self.geometry_from_unit(u), mean + std * z], 1).float()
        m = self.coverage(params[:, :dims])  # float32 rendering
        a = params[:, dims:]
        images = torch.addcmul(a[:, 1, None, None], a[:, 0, None, None] - a[:, 1, None, None], m)
        return images.unsqueeze(1), {"params": params.double()}  # exactly what was drawn

    def project(self, images, sigma):
        """The best image of the family for each image (the posterior's own geometry fit:
        ``ShapePosterior.fit``; its bank is built once per instance)."""
        if self._fitter is None:
            self._fitter = ShapePosterior(self)
        return self._fitter.fit(images, sigma)[0]


class Disks(ShapeManifold):
    """One antialiased disk on a uniform background; 5 parameters per image (module doc).

    Parameters
    ----------
    size : int >= 8          image side in pixels (default 32).
    r_min, r_max : float     radius range, ``1 <= r_min < r_max < size/2``
                             (defaults ``size/8``, ``size/4``).
    fg_mean, fg_std : float  foreground intensity prior ``N(μ_f, τ_f²)`` (0.5, 0.2).
    bg_mean, bg_std : float  background intensity prior ``N(μ_b, τ_b²)`` (0.5, 0.2).

    Latents: ``{"params": (count, 5)}`` float64 rows ``(cx, cy, r, a_f, a_b)`` (the float32
    values the image was rendered from).
    """

    name = "disks"
    geometry_names = ("cx", "cy", "r")
    # the paper's network on disks (80×80): its Jacobian's eigenvalues at σ = 0.04
    published_jacobian = {"source": "Kadkhodaie et al. (ICLR 2024), network on 80×80 disks",
                          "sigma": 0.04, "first": (1.18, 0.95), "next": (0.67, 0.28)}

    def __init__(self, size: int = 32, r_min: float | None = None, r_max: float | None = None,
                 fg_mean: float = 0.5, fg_std: float = 0.2, bg_mean: float = 0.5,
                 bg_std: float = 0.2):
        params = check_shape_prior(size, r_min, r_max, fg_mean, fg_std, bg_mean, bg_std,
                                   floor=1.0)
        super().__init__(**params)
        self.r_min, self.r_max = params["r_min"], params["r_max"]
        self.intrinsic_dim = 5
        self.intensity_std = (params["fg_std"], params["bg_std"])  # (τ_f, τ_b)

    # -- geometry prior ------------------------------------------------------------------
    @property
    def geometry_low(self) -> torch.Tensor:
        """Lower corner of the uniform geometry prior, (3,) float64: (r_max, r_max, r_min)."""
        return torch.tensor([self.r_max, self.r_max, self.r_min], dtype=torch.float64)

    @property
    def geometry_high(self) -> torch.Tensor:
        """Upper corner, (3,) float64: (size − r_max, size − r_max, r_max)."""
        hi = self.size - self.r_max
        return torch.tensor([hi, hi, self.r_max], dtype=torch.float64)

    def coverage(self, geometry):
        return disk_coverage(geometry, self.size)

    def coverage_on(self, geometry: torch.Tensor, size: int) -> torch.Tensor:
        """Coverage (N, size, size) of disks (N, 3) on a canvas of another side (the
        radius oracle's sub-pixel templates)."""
        return disk_coverage(geometry, size)

    def coverage_jacobian(self, geometry):
        return disk_coverage_jacobian(geometry, self.size)

    def reference_denoisers(self):
        # four lower bounds (2σ², 3σ², 4σ² and the MMSE's 5σ² at small σ; the report keeps
        # the highest per σ); the last knows only which quarter of [r_min, r_max] holds r
        # its 3-D quadrature takes ~0.3 s per 32×32 image and σ: affordable on the dense σ
        # grid, where the bracket between the coarse points needs it (a lower bound only
        # extends upwards in σ from the point where it was computed)
        quarter = PartialShapeOracle(self, free=(0, 1, 2), intervals={2: 4}, coarse=17,
                                     points=16, costly=False)
        return {
            "oracle-geometry": ShapeOracle(self),
            "oracle-centre": PartialShapeOracle(self, free=(2,)),  # knows the centre
            "oracle-radius": DisksRadiusOracle(self),
            "oracle-radius-quarter": quarter,
            "posterior": ShapePosterior(self),
        }
