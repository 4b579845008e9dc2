"""The MMSE bracket of the shape manifolds (``disks``, ``ellipses``): oracles (lower) and a
posterior sampler (upper).

Model (``datasets_synth.manifolds.ShapeManifold``): geometry ``g`` (D coordinates, for
disks ``(cx, cy, r)``) uniform on a box, mask ``m(g)`` (d,), intensities
``α = (a_f, a_b) ~ N(μ, Λ)``, ``Λ = diag(τ_f², τ_b²)``, and

    x = A α,   A = [m, 1 − m]  (d × 2),        y = x + σ z.

Given ``g`` this is a Gaussian linear model (SCIENCE.md §5, conditioning). With
``M = σ² Λ⁻¹ + AᵀA`` (2 × 2) and ``e = y − Aμ``:

    E[α | y, g]  = μ + M⁻¹ Aᵀe                                  (posterior mean)
    E[x | y, g]  = A E[α | y, g]
    E‖A(α̂ − α)‖² = σ² tr(M⁻¹ AᵀA)                               (→ 2σ² as σ → 0)
    log p(y | g) = −(‖e‖² − eᵀA M⁻¹ Aᵀe) / (2σ²) − ½ log det M + c(y, σ)

(Woodbury on ``C = σ² I + A Λ Aᵀ``: ``log det C = (d − 2) log σ² + log det Λ + log det M``).
Everything needs only ``m·y``, ``m·1``, ``m·m``, ``1·y`` and ``‖y‖²``. An intensity with
``τ = 0`` is fixed at ``μ`` and its column leaves ``A`` (``L`` = number of free
intensities, 0 to 2: ``M`` is L × L and the oracle's total MSE → Lσ²).

* :class:`ShapeOracle` (``lower``) knows ``g`` and returns ``E[x | y, g]``: MSE ≤ MMSE.
* :class:`PartialShapeOracle` (``lower``, partial oracles, SCIENCE.md §5) knows all of
  ``g`` but the coordinates ``free``; these have a low-dimensional posterior, integrated
  by adaptive quadrature with the intensities analytic: ``E[x | y, known] = Σ_j w_j
  E[x | y, g_j]``, ``w_j ∝ ω_j p(y | g_j)`` (ω_j trapezoid weights; the prior is
  uniform). Exact conditioning on less information, so ``MSE(full oracle) ≤ MSE(partial
  oracle) ≤ MMSE``; total MSE → (len(free) + L)σ². With every coordinate free it *is* the
  MMSE (up to quadrature error). :class:`DisksRadiusOracle` integrates the disk's centre
  on a sub-pixel lattice by convolutions (disks: knows only the radius, → 4σ²).
* :class:`ShapePosterior` (``upper``) sees ``y`` only and approximates
  ``E[x | y] = Σ_k w_k E[x | y, g_k]`` by self-normalised importance sampling over ``g``
  (intensities integrated analytically). Any function of ``y`` is an upper bound on the
  MMSE (SCIENCE.md §5); the sampler is built to make it tight: a quasi-random bank of
  prior geometries (masks precomputed once, one matrix product per batch), the best few
  refined by Levenberg–Marquardt on the marginal likelihood, and a Gaussian-mixture
  proposal (Laplace covariances, inflated) around the refined modes. The final weights are
  ``prior·likelihood / proposal``, with the proposal the mixture of the prior (bank) and
  the local components (deterministic multiple importance sampling, balance heuristic).
"""

from __future__ import annotations

import math

import torch

from tbcore.denoiser import ReferenceDenoiser, sigma_column

# what a shape manifold provides (datasets_synth.manifolds.ShapeManifold; checked by
# attribute, so that this module does not import the families that build it)
SHAPE_MANIFOLD = ("coverage", "coverage_jacobian", "tangent_columns", "geometry_low",
                  "geometry_high", "geometry_names", "intensity_mean", "intensity_std")
# default bound on chunk·nodes·d of the quadrature oracles (float64 elements, 8 MiB per
# array; a renderer holds some thirty such temporaries at once): 1 << 22 made the
# default preset's ellipses(k=7) oracle peak at 1.3–1.5 GB, 1 << 20 at 0.5–0.6 GB, with
# the same bits and times within the machine's run-to-run spread (8–13 s against 12–15 s)
MAX_ELEMENTS = 1 << 20
# the core of a peak: nodes within CORE_NATS of the maximum (±4 sd for a Gaussian) span ≥
# CORE_NODES per axis on a grid that resolves it (spacing ≤ 8/5 = 1.6 sd)
CORE_NATS, CORE_NODES = 8.0, 6
# a window drops the lightest nodes that hold together ≤ TAIL_MASS of a grid's mass (node
# weights without the trapezoid's, which differ by ≤ 2^D): a low-contrast image's sharp
# mode sits on a plateau 14–30 nats below it that spans the box, and a window that keeps
# it never shrinks onto the mode. On a grid that resolves the posterior the mean moves by
# ≤ 2^D·TAIL_MASS times the distance between the means of the kept and dropped parts, per
# window. A narrow peak that falls between the nodes of an under-resolved grid, its nearest
# node ≳ 14 nats down, can be dropped (one ≥ ``threshold`` down could be before); keeping
# nodes within 20 nats (a floor) measured worse: 0.18σ² against 0.06σ² between the default
# 3-D oracle and its doubled grids (``test_known_interval_oracle_quadrature_converged``)
TAIL_MASS = 1e-6


def _check_shape_manifold(owner, dist) -> None:
    if not all(hasattr(dist, name) for name in SHAPE_MANIFOLD):
        raise ValueError(f"{type(owner).__name__} needs a shape manifold (Disks, Ellipses), "
                         f"got {dist!r}")


class _LinearGaussian:
    """The closed forms of the module doc for one image and many geometries.

    Inputs are broadcastable float64 tensors: ``my = m·y``, ``p = m·1``, ``q = m·m``
    (per geometry), ``sy = 1·y``, ``yy = ‖y‖²``, ``s2 = σ²`` (per image), ``d`` pixels.
    An intensity with ``τ = 0`` is fixed at its mean: its column leaves ``A`` and ``M``
    (``M`` is then 1 × 1, or empty: ``α̂ = μ``, ``log p(y|g) = −‖e‖²/(2σ²)``).
    """

    def __init__(self, mean, std):
        self.mu_f, self.mu_b = (float(v) for v in mean)
        self.free_f, self.free_b = (float(t) > 0 for t in std)
        # Λ⁻¹ of the free intensities (a fixed one has no prior precision: it is known)
        self.prec_f = float(std[0]) ** -2 if self.free_f else math.inf
        self.prec_b = float(std[1]) ** -2 if self.free_b else math.inf

    def solve(self, my, p, q, sy, yy, s2, d):
        """Return ``(α̂_f, α̂_b, log p(y|g) + c, tr(M⁻¹AᵀA))``, each broadcast to one shape."""
        # AᵀA = [[q, p − q], [p − q, d − 2p + q]]
        g11, g12, g22 = q, p - q, d - 2 * p + q
        # Aᵀy = (m·y, 1·y − m·y); Aᵀe = Aᵀy − AᵀA μ
        v1 = my - g11 * self.mu_f - g12 * self.mu_b
        v2 = (sy - my) - g12 * self.mu_f - g22 * self.mu_b
        # ‖e‖² = ‖y‖² − 2 μᵀAᵀy + μᵀAᵀAμ
        ee = (yy - 2 * (self.mu_f * my + self.mu_b * (sy - my))
              + self.mu_f ** 2 * g11 + 2 * self.mu_f * self.mu_b * g12 + self.mu_b ** 2 * g22)
        if not (self.free_f and self.free_b):
            return self._solve_fixed(v1, v2, ee, g11, g22, s2)
        m11, m12, m22 = s2 * self.prec_f + g11, g12, s2 * self.prec_b + g22  # M = σ²Λ⁻¹ + AᵀA
        det = m11 * m22 - m12 * m12
        w1, w2 = (m22 * v1 - m12 * v2) / det, (m11 * v2 - m12 * v1) / det  # M⁻¹ Aᵀe
        loglik = -(ee - (v1 * w1 + v2 * w2)) / (2 * s2) - 0.5 * torch.log(det)
        trace = (m22 * g11 - 2 * m12 * g12 + m11 * g22) / det  # tr(M⁻¹ AᵀA)
        return self.mu_f + w1, self.mu_b + w2, loglik, trace

    def inverse(self, p, q, s2, d):
        """``M⁻¹`` as the entries ``(a₀₀, a₀₁, a₁₁)`` of a 2 × 2 matrix over ``(a_f, a_b)``,
        zero in the row and column of a fixed intensity (``Cov[x|y,g] = σ² A M⁻¹ Aᵀ``
        with ``A = [m, 1 − m]``); ``p = m·1``, ``q = m·m`` per geometry."""
        g11, g12, g22 = q, p - q, d - 2 * p + q
        zero = torch.zeros_like(g11 * s2)
        if self.free_f and self.free_b:
            m11, m22 = s2 * self.prec_f + g11, s2 * self.prec_b + g22
            det = m11 * m22 - g12 * g12
            return m22 / det, -g12 / det, m11 / det
        if self.free_f:
            return 1 / (s2 * self.prec_f + g11), zero, zero
        if self.free_b:
            return zero, zero, 1 / (s2 * self.prec_b + g22)
        return zero, zero, zero

    def _solve_fixed(self, v1, v2, ee, g11, g22, s2):
        """``solve`` with one or both intensities fixed (A keeps the free column only)."""
        v1, v2, ee, g11, g22, s2 = torch.broadcast_tensors(v1, v2, ee, g11, g22, s2)
        zero = torch.zeros_like(ee)
        w1 = w2 = explained = log_m = trace = zero
        if self.free_f:  # M = σ²/τ_f² + m·m
            m11 = s2 * self.prec_f + g11
            w1, explained, log_m, trace = v1 / m11, v1 * v1 / m11, torch.log(m11), g11 / m11
        elif self.free_b:  # M = σ²/τ_b² + (1 − m)·(1 − m)
            m22 = s2 * self.prec_b + g22
            w2, explained, log_m, trace = v2 / m22, v2 * v2 / m22, torch.log(m22), g22 / m22
        loglik = -(ee - explained) / (2 * s2) - 0.5 * log_m
        return self.mu_f + w1, self.mu_b + w2, loglik, trace


def _true_geometry(oracle, latents, n) -> torch.Tensor:
    """The geometry columns (n, D) float64 of ``latents["params"]`` (n, D + 2)."""
    width = oracle.dist.geometry_dim + 2
    if latents is None or "params" not in latents:
        raise ValueError(f"{type(oracle).__name__} needs latents={{'params': (n, {width})}} "
                         f"from {type(oracle.dist).__name__}")
    params = latents["params"]
    if params.dim() != 2 or params.shape[0] != n or params.shape[1] != width:
        raise ValueError(f"latents['params'] must have shape ({n}, {width}), got "
                         f"{tuple(params.shape)}")
    return params[:, :width - 2].double()


def _weight_diagnostics(w_bank, w_loc) -> dict:
    """Effective sample size of the importance weights and the weight of the local draws."""
    all_w = torch.cat([w_bank, w_loc], 1)
    return {"ess": 1 / all_w.square().sum(1), "local_mass": w_loc.sum(1)}


def _mask_moments(masks, y):
    """``(m·y, m·1, m·m)`` (n, K) of masks (n, K, d) against their images y (n, d): one
    batched product for the first two and a fused norm for the third (a sixth of the time
    of three passes that materialise ``m²``)."""
    both = masks @ torch.stack([y, torch.ones_like(y)], 2)  # (n, K, 2)
    return both[..., 0], both[..., 1], torch.linalg.vector_norm(masks, dim=2).square()


def _profile(dist, model, y, s2, sy, yy, geometry):
    """Masks, their derivatives and the intensity-profiled fit at geometries (B, D), one per
    image y (B, d): ``[m (B, d), ∂m/∂g (B, D, d), α̂_f, α̂_b (B, 1), log p(y | g) (B,)]``."""
    m, jm = dist.coverage_jacobian(geometry)
    m, jm = m.flatten(1), jm.flatten(2)
    a_f, a_b, loglik, _ = model.solve((m * y).sum(1, keepdim=True), m.sum(1, keepdim=True),
                                      m.square().sum(1, keepdim=True), sy, yy, s2, y.shape[1])
    return [m, jm, a_f, a_b, loglik.squeeze(1)]


def _profiled_curvature(dist, model, y, s2, m, jm, a_f, a_b):
    """Gauss–Newton curvature (B, D, D) of ``−log p(y | g)`` in the geometry, with the free
    intensities profiled out (Schur complement of ``JᵀJ/σ² + Λ⁻¹``), and its gradient
    (B, D) at the intensities' optimum; ``jm`` (B, D, d) are the mask derivatives."""
    dims = jm.shape[1]
    jx = dist.tangent_columns(m, jm, a_f, a_b)  # ∂x/∂θ (B, D + L, d)
    precisions = [p for free, p in ((model.free_f, model.prec_f), (model.free_b, model.prec_b))
                  if free]
    hess = jx @ jx.transpose(1, 2) / s2[:, :, None]  # Gauss–Newton JᵀJ/σ²
    for i, precision in enumerate(precisions):
        hess[:, dims + i, dims + i] += precision
    resid = y - (a_b + (a_f - a_b) * m)
    grad = -(jx[:, :dims] @ resid[:, :, None]).squeeze(2) / s2
    if not precisions:
        return hess, grad
    h_marg = hess[:, :dims, :dims] - hess[:, :dims, dims:] @ torch.linalg.solve(
        hess[:, dims:, dims:], hess[:, dims:, :dims])
    return h_marg, grad


def _levenberg_marquardt(evaluate, curvature, x, low, high, prior_precision, steps: int,
                         lam: float, lam_min: float):
    """Maximize ``log p(y | g)`` from ``x`` (B, D) inside the box [low, high].

    ``evaluate(x)`` returns a list of per-image tensors ending with the log-likelihood
    (B,); ``curvature(state)`` the Gauss–Newton ``(H (B, D, D), gradient (B, D))`` of its
    negative. Steps are damped by ``λ·(diag H + prior_precision)`` (Marquardt), accepted
    when they raise the likelihood (λ/3) and refused otherwise (λ·5). Returns the final
    ``(x, state)``.
    """
    state = evaluate(x)
    lam = torch.full((len(x),), lam, dtype=x.dtype)
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    for _ in range(steps):
        h_marg, grad = curvature(state)
        damp = h_marg.diagonal(dim1=1, dim2=2) + prior_precision
        system = h_marg + lam[:, None, None] * damp[:, :, None] * eye
        x_new = (x - torch.linalg.solve(system, grad)).clamp(low, high)
        trial = evaluate(x_new)
        better = trial[-1] > state[-1]
        x = torch.where(better[:, None], x_new, x)
        state = [torch.where(better.view(-1, *[1] * (new.dim() - 1)), new, old)
                 for new, old in zip(trial, state, strict=True)]
        lam = torch.where(better, lam / 3, lam * 5).clamp(lam_min, 1e6)
    return x, state


class ShapeOracle(ReferenceDenoiser):
    """``E[x | y, g]`` given the true geometry of a shape manifold: a lower bound on the MMSE.

    Parameters
    ----------
    dist : ShapeManifold   the distribution (``Disks``, ``Ellipses``): renderer and priors.

    Called as ``oracle(y (n,1,s,s), sigma, latents={"params": (n, D + 2)})``; only the
    geometry columns are used. Total MSE ``σ² tr(M⁻¹AᵀA) → Lσ²`` as σ → 0, L the number
    of free intensities (2 for disks: 2-D Gaussian regression; 0: the oracle is exact).
    """

    kind = "lower"
    oracle = True

    def __init__(self, dist):
        super().__init__("lower")
        _check_shape_manifold(self, dist)
        self.dist = dist
        free = sum(dist.free_intensities)
        self.description = (f"posterior mean given the true geometry ({free}-D Gaussian "
                            f"regression on the intensities)")
        self._model = _LinearGaussian(dist.intensity_mean, dist.intensity_std)

    def __call__(self, y, sigma, latents=None):
        s2 = sigma_column(sigma, y).double().view(-1, 1) ** 2
        g = _true_geometry(self, latents, y.shape[0]).to(y.device)
        m = self.dist.coverage(g).flatten(1)  # (n, d)
        flat = y.flatten(1).double()
        a_f, a_b, _, _ = self._model.solve(
            (m * flat).sum(1, keepdim=True), m.sum(1, keepdim=True),
            m.square().sum(1, keepdim=True), flat.sum(1, keepdim=True),
            flat.square().sum(1, keepdim=True), s2, flat.shape[1])
        return (a_b + (a_f - a_b) * m).view_as(y).to(y.dtype)  # E[x|y,g] = A E[α|y,g]

    def expected_total_mse(self, geometry: torch.Tensor, sigma: float) -> torch.Tensor:
        """Exact ``E‖x̂ − x‖² = σ² tr(M⁻¹AᵀA)`` (total, not per pixel) for geometries (n, D)."""
        m = self.dist.coverage(geometry.double()).flatten(1)
        s2 = torch.full((len(m), 1), float(sigma) ** 2, dtype=torch.float64)
        zero = torch.zeros_like(s2)
        *_, trace = self._model.solve(zero, m.sum(1, keepdim=True), m.square().sum(1, keepdim=True),
                                      zero, zero, s2, m.shape[1])
        return (s2 * trace).squeeze(1)


class PartialShapeOracle(ReferenceDenoiser):
    """``E[x | y, known geometry coordinates]`` by adaptive quadrature over the free ones.

    The free coordinates (``free``: indices into the geometry, D = len(free)) are uniform
    on the prior box and independent of the known ones, so their posterior density is
    ``∝ p(y | g)`` on the box, with the intensities integrated analytically
    (``_LinearGaussian``). The posterior mean ``Σ_j w_j E[x | y, g_j]``, ``w_j ∝ ω_j p(y | g_j)``
    (trapezoid weights ``ω_j``, log-sum-exp) is computed per image on one of three grids:

    1. *coarse*: a uniform tensor grid over the whole box (``_coarse``). Its nodes within
       ``threshold`` nats of the best one, less the lightest that hold together ≤
       ``TAIL_MASS`` of the mass, widened by one node per side, give a window. If the
       nodes within ``threshold`` extend over ≥ ¾·``points`` nodes per axis and those
       within ``CORE_NATS`` of the best sit at ≥ ``CORE_NODES`` positions per axis, the
       peak is resolved (broad posterior, large σ or low contrast; spacing ≲ 1.3 posterior
       standard deviations for a Gaussian peak with ``points`` = 16, ≲ 0.7 with 32) and
       the coarse trapezoid rule is the answer.
    2. *Laplace*: otherwise (a sharp peak) Levenberg–Marquardt from the best node gives the
       mode and the Gauss–Newton curvature ``H`` of ``−log p(y | g)``; a grid of ``points``
       per axis on ``mode ± κ √diag(H⁻¹)`` (κ = √(2·threshold) + 2), cut to the box,
       spaced ≲ 1.3 posterior standard deviations. It is accepted if it resolves
       the peak (as above), the log-likelihood on its faces inside the box is
       ``threshold`` below its maximum and every retained coarse node lies within one
       coarse spacing of it. (Not cut to the coarse window: where the coarse grid does not
       resolve a sharp peak, that window understates the peak's extent. So cut, the
       default preset's 3-D oracle sent about half of its 32×32 images at σ = 0.01 to the
       fallback, whose grids start from that window: on one image of the seed-1 test set
       its estimate lay 20σ² from that of grids twice as fine, which the Laplace grid
       matches to 1e-9σ²; on the others within 0.03σ².)
    3. *fallback*, for the rest: successive uniform grids of ``points`` per axis, each on
       the thresholded window of the previous one, ``levels`` times from the coarse window
       (windows shrink by about (points − 1)/2 per level until the peak is resolved).

    ``last_diagnostics["path"]`` holds 0/1/2 per image (coarse, Laplace, fallback).
    Accuracy is checked by doubling every grid (``tests/test_disks.py``). Known limit: a
    low-contrast image at σ ≳ 0.1 can have a posterior with several narrow modes spread
    over the box; no window shrinks and the fallback ends unresolved. With the default
    preset's 3-D oracle on 40 32×32 images, doubling every grid moved one image by 0.32σ²
    at σ = 0.1 and one by 0.72σ² at σ = 0.3, and their mean by 0.027σ² (of 5.6σ²) and
    0.006σ²; at σ ≤ 0.045 by ≤ 0.013σ² per image.

    *Known intervals* (``intervals = {i: B}``): the oracle also knows which of B equal
    intervals of its prior range holds the free coordinate i. The prior is uniform on a
    box, so given the interval the coordinate is uniform on it: the same quadrature on the
    smaller box. This conditions on a coarsening of the geometry, so the MSE lies between
    that of the oracle knowing the coordinate (B → ∞) and that of the oracle not knowing
    it (B = 1), and stays ≤ MMSE (SCIENCE.md §5, partial oracles). Where the posterior
    of the coordinate is much narrower than an interval (small σ) the interval is
    almost never informative and the MSE approaches the MMSE; this is what makes the
    disks bracket tight at small σ.

    Parameters
    ----------
    dist : ShapeManifold  the distribution (renderer, geometry box, intensity prior).
    free : tuple of int   the unknown geometry coordinates (indices into the D of ``dist``).
    coarse : int          nodes per axis of the coarse grid over the box.
    points : int          nodes per axis of the Laplace and fallback grids.
    levels : int          fallback levels.
    threshold : float     nats below the maximum at which nodes are dropped (and those
                          above it that hold ≤ ``TAIL_MASS`` of the mass together).
    lm_steps : int        Levenberg–Marquardt iterations.
    max_elements : int    bound on chunk·nodes·d (memory, float64 elements; default
                          ``MAX_ELEMENTS``, 2²⁰); with every coordinate free a call also
                          holds one coarse grid's masks (coarse^D · d) per box it meets.
    intervals : dict      ``{free coordinate: B}``: the oracle knows which of B equal
                          intervals of the prior range holds that coordinate (default none).
    costly : bool or None evaluate on the study's coarse σ grid only (default: with 3 or
                          more free coordinates).

    Called as ``oracle(y, sigma, latents={"params": (n, D + 2)})``; uses the known
    coordinates (and intervals) only. Total MSE → (len(free) + L)σ² at small σ (L free
    intensities). With every coordinate free and no interval known it knows nothing: its
    kind is then ``exact`` (the MMSE estimator up to quadrature error) and it is called
    without latents.
    """

    kind = "lower"
    oracle = True
    differentiable = False

    def __init__(self, dist, free: tuple[int, ...], coarse: int = 33, points: int = 32,
                 levels: int = 4, threshold: float = 30.0, lm_steps: int = 8,
                 max_elements: int = MAX_ELEMENTS, intervals: dict[int, int] | None = None,
                 costly: bool | None = None):
        super().__init__("lower")
        for name, value, low in (("coarse", coarse, 3), ("points", points, 3),
                                 ("levels", levels, 1), ("lm_steps", lm_steps, 1),
                                 ("max_elements", max_elements, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(threshold, (int, float)) and 10 <= threshold <= 300):
            raise ValueError(f"threshold must be a number in [10, 300], got {threshold!r}")
        _check_shape_manifold(self, dist)
        free = tuple(free)
        if not free or len(set(free)) != len(free) or not all(
                isinstance(i, int) and 0 <= i < dist.geometry_dim for i in free):
            raise ValueError(f"free must be distinct geometry indices in [0, "
                             f"{dist.geometry_dim}), got {free!r}")
        intervals = dict(intervals or {})
        if not all(i in free and not isinstance(b, bool) and isinstance(b, int) and b >= 1
                   for i, b in intervals.items()):
            raise ValueError(f"intervals must map free coordinates {free!r} to integers "
                             f">= 1, got {intervals!r}")
        self.dist, self.free, self.coarse, self.intervals = dist, free, coarse, intervals
        names = [dist.geometry_names[i] for i in free]
        self.description = (f"posterior mean given the true geometry but "
                            f"{', '.join(names)} ({len(free)}-D quadrature over them)")
        if intervals:
            known = ", ".join(f"which of {b} equal intervals holds "
                              f"{dist.geometry_names[i]}" for i, b in intervals.items())
            self.description += f", knowing {known}"
        elif len(free) == dist.geometry_dim:  # knows nothing: E[x | y], by quadrature
            self.kind, self.oracle = "exact", False
            self.description = (f"posterior mean by {len(free)}-D quadrature over the whole "
                                f"geometry (exact up to quadrature error)")
        self.points, self.levels, self.lm_steps = points, levels, lm_steps
        self.threshold, self.max_elements = float(threshold), max_elements
        # by default a 3-D quadrature (thousands of masks per image; ~0.3 s per 32×32 image
        # and σ) is evaluated by the study on the coarse σ grid only
        self.costly = len(free) >= 3 if costly is None else bool(costly)
        self.kappa = math.sqrt(2 * self.threshold) + 2
        # a grid resolves the peak when ≥ this many nodes per axis are within `threshold`
        # (spacing ≲ 1.3 posterior standard deviations for a Gaussian peak) and ≥
        # `core_nodes` within CORE_NATS of the maximum: a sharp mode on a broad plateau
        # (low contrast) passes the first test alone (spacing ≤ 1.6 sd for a Gaussian)
        self.resolved = max(3, math.ceil(0.75 * points))
        self.core_nodes = min(CORE_NODES, self.resolved)
        self._model = _LinearGaussian(dist.intensity_mean, dist.intensity_std)
        idx = list(self.free)
        self.low, self.high = dist.geometry_low[idx], dist.geometry_high[idx]  # (D,)
        self.prior_precision = 12 / (self.high - self.low) ** 2  # LM damping floor
        self.last_diagnostics: dict[str, torch.Tensor] = {}
        self._box_masks: dict | None = None  # during a call: coarse-grid masks per box

    # -- the estimator ---------------------------------------------------------------------
    def __call__(self, y, sigma, latents=None):
        s2 = sigma_column(sigma, y).double().view(-1, 1).cpu() ** 2
        flat = y.detach().flatten(1).double().cpu()
        if flat.shape[1] != self.dist.d:
            raise ValueError(f"y must have shape (n, 1, {self.dist.size}, {self.dist.size}), "
                             f"got {tuple(y.shape)}")
        g = (_true_geometry(self, latents, len(flat)).cpu() if self.oracle else
             torch.zeros(len(flat), self.dist.geometry_dim, dtype=torch.float64))
        chunk = max(1, self.max_elements // (self._grid_nodes() * flat.shape[1]))
        # with every coordinate free the coarse grid depends on its box only (the prior
        # box, or one per known interval): its masks are rendered once per box and call
        self._box_masks = {} if len(self.free) == self.dist.geometry_dim else None
        try:
            parts = [self._estimate(flat[i:i + chunk], s2[i:i + chunk], g[i:i + chunk])
                     for i in range(0, len(flat), chunk)]
        finally:
            self._box_masks = None
        self.last_diagnostics = {"path": torch.cat([p[1] for p in parts])}
        x_hat = torch.cat([p[0] for p in parts])
        return x_hat.view_as(y).to(device=y.device, dtype=y.dtype)

    def _box(self, g):
        """The box (lo, hi), each (n, D), over the free coordinates that the oracle's
        knowledge leaves to the posterior: the prior box, cut to the known interval of each
        coordinate of ``intervals`` (g (n, D_all): the true geometry)."""
        lo, hi = self.low.expand(len(g), -1).clone(), self.high.expand(len(g), -1).clone()
        for a, coord in enumerate(self.free):
            count = self.intervals.get(coord)
            if count:
                width = (self.high[a] - self.low[a]) / count
                cell = ((g[:, coord] - self.low[a]) / width).floor().clamp(0, count - 1)
                lo[:, a] = self.low[a] + cell * width
                hi[:, a] = lo[:, a] + width
        return lo, hi

    def _estimate(self, y, s2, g):
        """Posterior mean for a chunk: y (n, d), s2 (n, 1), true geometry g (n, D)."""
        n, dims = len(y), len(self.free)
        box_lo, box_hi = self._box(g)
        # axes (n, D, R), loglik (n, R^D)
        axes, loglik, log_w, mean = self._coarse(y, s2, g, box_lo, box_hi)
        r = axes.shape[2]
        first, last, lo, hi = self._window(axes, loglik, box_lo, box_hi)
        path = torch.full((n,), 2, dtype=torch.long)
        out = torch.zeros_like(y)
        # resolved, and (if the last node is short of the box) clear of the box's end
        coarse = self._resolved(axes, loglik) & (
            (last < r - 1) | (axes[:, :, -1] >= box_hi - 1e-9)).all(1)
        if bool(coarse.any()):  # 1. resolved on the coarse grid
            idx = coarse.nonzero().squeeze(1)
            out[idx] = mean(torch.softmax(loglik[idx] + log_w, 1), idx)
            path[idx] = 0
        rest = (~coarse).nonzero().squeeze(1)
        if len(rest):  # 2. Laplace window around the mode
            best = loglik[rest].argmax(1)
            start = torch.stack([axes[rest, a, i] for a, i in enumerate(_unravel(best, r, dims))],
                                1)
            mode, sd = self._levenberg_marquardt(y[rest], s2[rest], g[rest], start,
                                                 box_lo[rest], box_hi[rest])
            w_lo = torch.maximum(mode - self.kappa * sd, box_lo[rest])
            w_hi = torch.minimum(mode + self.kappa * sd, box_hi[rest])
            step = axes[rest, :, 1] - axes[rest, :, 0]  # coarse spacing (n', D)
            kept_lo = axes[rest].gather(2, first[rest, :, None]).squeeze(2)
            kept_hi = axes[rest].gather(2, last[rest, :, None]).squeeze(2)
            inside = ((kept_lo >= w_lo - step) & (kept_hi <= w_hi + step)
                      & (w_hi > w_lo)).all(1)
            fine = self._grid(y[rest], s2[rest], g[rest], w_lo, w_hi, self.points)
            ok = inside & ~self._open_faces(fine[1], w_lo, w_hi, box_lo[rest], box_hi[rest]) \
                & self._resolved(fine[0], fine[1])
            done = rest[ok]
            out[done] = self._mean(*_rows(fine[1:-1], ok), fine[-1])
            path[done] = 1
            rest = rest[~ok]
        # 3. successive thresholded windows from the coarse one, until resolved
        lo, hi = lo[rest], hi[rest]
        for level in range(self.levels):
            if not len(rest):
                break
            fine = self._grid(y[rest], s2[rest], g[rest], lo, hi, self.points)
            first, last, lo, hi = self._window(fine[0], fine[1])
            done = self._resolved(fine[0], fine[1]) | (level == self.levels - 1)
            out[rest[done]] = self._mean(*_rows(fine[1:-1], done), fine[-1])
            rest, lo, hi = rest[~done], lo[~done], hi[~done]
        return out, path

    # -- pieces --------------------------------------------------------------------------
    def _grid_nodes(self) -> int:
        """Nodes of the largest grid whose masks are held at once (memory ∝ nodes·d)."""
        return max(self.coarse, self.points) ** len(self.free)

    def _coarse(self, y, s2, g, low, high):
        """Coarse grid over the whole box [low, high] (n, D): ``(axes (n, D, R), loglik
        (n, R^D), log trapezoid weights (R^D,), mean(w (n', R^D), idx) -> (n', d))``, idx
        (n',) sorted distinct indices of the images whose mean is taken."""
        return self._explicit_coarse(y, s2, g, self.coarse, low, high)

    def _explicit_coarse(self, y, s2, g, r, low, high):
        """``_coarse`` from rendered masks: r nodes per axis over the box [low, high]."""
        axes, loglik, a_f, a_b, masks, log_w = self._grid(y, s2, g, low, high, r, boxed=True)

        def mean(w, idx):  # idx sorted and distinct: every image when as many
            chosen = masks if len(idx) == len(masks) else masks[idx]  # masks shared: no copy
            return ((w * a_b[idx]).sum(1, keepdim=True)
                    + ((w * (a_f - a_b)[idx])[:, None, :] @ chosen).squeeze(1))

        return axes, loglik, log_w, mean

    def _resolved(self, axes, loglik):
        """True per image (n,) where the grid resolves the peak (see ``resolved``): the
        nodes within ``threshold`` of the maximum extend over ≥ ``resolved`` nodes per axis,
        and those within CORE_NATS sit at ≥ ``core_nodes`` positions per axis (a count, so
        that narrow peaks one node wide each do not pass together)."""
        first, last, *_ = self._window(axes, loglik, tail=0.0)
        n, dims, r = axes.shape
        core = (loglik >= loglik.amax(1, keepdim=True) - CORE_NATS).view(n, *[r] * dims)
        counts = torch.stack([_along(core, a).sum(1) for a in range(dims)], 1)
        return ((last - first + 1) >= self.resolved).all(1) & (counts >= self.core_nodes).all(1)

    def _window(self, axes, loglik, low=None, high=None, tail=None):
        """Nodes within ``threshold`` of the maximum, less the lightest that hold together
        ≤ ``tail`` (default TAIL_MASS) of the mass: first / last index per axis (n, D), and
        the window one node wider on each side, lo / hi (n, D) in pixel units; where the
        retained nodes reach the grid's first / last node the window reaches ``low`` /
        ``high`` (n, D) (default: that node)."""
        n, dims, r = axes.shape
        tail = TAIL_MASS if tail is None else tail
        kept = loglik >= loglik.amax(1, keepdim=True) - self.threshold
        if tail > 0:
            w, order = torch.softmax(loglik, 1).sort(1)
            kept = kept.scatter(1, order, kept.gather(1, order) & (w.cumsum(1) > tail))
        kept = kept.view(n, *[r] * dims)
        first, last = [], []
        for a in range(dims):
            along = _along(kept, a)
            first.append(along.int().argmax(1))
            last.append(r - 1 - along.flip(1).int().argmax(1))
        first, last = torch.stack(first, 1), torch.stack(last, 1)
        lo = axes.gather(2, (first - 1).clamp(min=0)[:, :, None]).squeeze(2)
        hi = axes.gather(2, (last + 1).clamp(max=r - 1)[:, :, None]).squeeze(2)
        if low is not None:
            lo = torch.where(first == 0, low, lo)
        if high is not None:
            hi = torch.where(last == r - 1, high, hi)
        return first, last, lo, hi

    def _grid(self, y, s2, g, lo, hi, r, boxed=False):
        """Explicit uniform grid of r nodes per axis on [lo, hi] (n, D): ``(axes (n, D, r),
        loglik (n, r^D), α̂_f, α̂_b (n, r^D), masks (n, r^D, d), log weights (r^D,))``.
        ``boxed``: a grid over a box of :meth:`_box`, whose masks a call may share."""
        n, d = y.shape
        dims = len(self.free)
        axes = lo[:, :, None] + (hi - lo)[:, :, None] * torch.linspace(0, 1, r, dtype=y.dtype)
        index = _unravel(torch.arange(r ** dims), r, dims)
        geometry = g[:, None, :].repeat(1, r ** dims, 1)
        for a, coord in enumerate(self.free):
            geometry[:, :, coord] = axes[:, a, index[a]]
        if boxed and self._box_masks is not None:  # the grid is a function of (lo, hi, r)
            keys = [(r, *row) for row in torch.cat([lo, hi], 1).tolist()]
            for key, grid in zip(keys, geometry, strict=True):
                if key not in self._box_masks:
                    self._box_masks[key] = self.dist.coverage(grid).reshape(-1, d)
            masks = (self._box_masks[keys[0]].expand(n, -1, -1) if len(set(keys)) == 1
                     else torch.stack([self._box_masks[key] for key in keys]))
        else:
            masks = self.dist.coverage(geometry.view(-1, g.shape[1])).reshape(n, -1, d)
        a_f, a_b, loglik, _ = self._model.solve(
            *_mask_moments(masks, y), y.sum(1, keepdim=True), y.square().sum(1, keepdim=True),
            s2, d)
        return axes, loglik, a_f, a_b, masks, _trapezoid([r] * dims, 0.0)

    @staticmethod
    def _mean(loglik, a_f, a_b, masks, log_w):
        """``Σ_j w_j (α̂_b,j + (α̂_f,j − α̂_b,j) m_j)`` with ``w = softmax(loglik + log ω)``."""
        w = torch.softmax(loglik + log_w, 1)
        return (w * a_b).sum(1, keepdim=True) + ((w * (a_f - a_b))[:, None, :] @ masks).squeeze(1)

    def _open_faces(self, loglik, lo, hi, low, high):
        """True where a face of the grid inside the box [low, high] (n, D) is within
        ``threshold`` of the maximum (mass may lie outside the window), per image (n,)."""
        n, dims = lo.shape
        r = round(loglik.shape[1] ** (1 / dims))
        grid = loglik.view(n, *[r] * dims) - loglik.amax(1).view(n, *[1] * dims)
        bad = torch.zeros(n, dtype=torch.bool)
        tol = 1e-9
        for a in range(dims):
            for face, inner in ((0, lo[:, a] > low[:, a] + tol),
                                (r - 1, hi[:, a] < high[:, a] - tol)):
                top = grid.select(1 + a, face).reshape(n, -1).amax(1)
                bad |= inner & (top > -self.threshold)
        return bad

    def _levenberg_marquardt(self, y, s2, g, start, low, high):
        """Mode of ``log p(y | g)`` over the free coordinates (α profiled out) in the box
        [low, high] (n, D), from ``start`` (n, D), and the posterior standard deviations
        ``√diag(H⁻¹)`` (n, D), with
        ``H`` the Gauss–Newton curvature (Schur complement over the intensities)."""
        free = list(self.free)
        sy, yy = y.sum(1, keepdim=True), y.square().sum(1, keepdim=True)

        def evaluate(x):
            full = g.clone()
            full[:, free] = x
            state = _profile(self.dist, self._model, y, s2, sy, yy, full)
            state[1] = state[1][:, free]
            return state

        def curvature(state):
            return _profiled_curvature(self.dist, self._model, y, s2, *state[:-1])

        x, state = _levenberg_marquardt(evaluate, curvature, start, low, high,
                                        self.prior_precision, self.lm_steps, 1e-3, 1e-9)
        h_marg, _ = curvature(state)
        cov = torch.linalg.inv(h_marg + 1e-12 * torch.eye(len(free), dtype=x.dtype))
        return x, cov.diagonal(dim1=1, dim2=2).clamp(min=0).sqrt()


def _along(mask: torch.Tensor, axis: int) -> torch.Tensor:
    """A grid's mask (n, r, …, r) (D axes after the first) on one axis (n, r): whether any
    node of each position along ``axis`` is set."""
    dims = mask.dim() - 1
    return mask.any(dim=[1 + b for b in range(dims) if b != axis]) if dims > 1 else mask


def _rows(tensors, keep: torch.Tensor) -> list[torch.Tensor]:
    """The rows ``keep`` (n,) bool of each tensor; the tensors themselves where every row is
    kept (a grid's masks, (n, r^D, d), are not copied)."""
    return list(tensors) if bool(keep.all()) else [t[keep] for t in tensors]


def _unravel(flat_index, r, dims):
    """Per-axis node indices of flat indices into an r^D tensor grid ('ij' order)."""
    return list(torch.unravel_index(flat_index, (r,) * dims))


def _trapezoid(sizes, end_extra: float):
    """log trapezoid weights ``[½, 1, …, 1, ½ + end_extra]`` per axis, summed over a tensor
    grid of ``sizes`` nodes per axis, flattened ('ij')."""
    logs = []
    for r in sizes:
        w = torch.ones(int(r), dtype=torch.float64)
        w[0], w[-1] = 0.5, 0.5 + end_extra
        logs.append(w.log())
    out = logs[0]
    for extra in logs[1:]:
        out = (out[:, None] + extra[None, :]).reshape(-1)
    return out


class DisksRadiusOracle(PartialShapeOracle):
    """``E[x | y, radius]``: knows ``r``, integrates the centre (2-D quadrature).

    A lower bound on the MMSE, above :class:`ShapeOracle`; total MSE → 4σ² at small σ.

    The coarse grid is the lattice of centres ``low + (a, b)/K`` over the whole box: the
    masks of centres one pixel apart are translates of each other, so ``m·y``, ``m·1`` and
    ``m·m`` at every node are K² cross-correlations of the image with the K² sub-pixel
    templates (one grouped ``conv2d``), and ``Σ_j c_j m_j`` one transposed convolution.
    If the box width is not a multiple of 1/K the last sliver (< 1/K) is integrated with
    the last node's value (weight ``½ + sliver·K``).

    Parameters as :class:`PartialShapeOracle` (``free = (cx, cy)``), with
    ``subdivisions`` (K) instead of ``coarse``. Uses ``r`` only.
    """

    def __init__(self, dist, subdivisions: int = 4, points: int = 16, levels: int = 5,
                 threshold: float = 30.0, lm_steps: int = 8, max_elements: int = MAX_ELEMENTS):
        if isinstance(subdivisions, bool) or not isinstance(subdivisions, int) \
                or subdivisions < 1:
            raise ValueError(f"subdivisions must be an integer >= 1, got {subdivisions!r}")
        if not callable(getattr(dist, "coverage_on", None)):  # disks render at any size
            raise ValueError(f"DisksRadiusOracle needs a Disks distribution, got {dist!r}")
        self.subdivisions = subdivisions
        super().__init__(dist, (0, 1), points=points, levels=levels, threshold=threshold,
                         lm_steps=lm_steps, max_elements=max_elements)
        lo, hi, k = float(self.low[0]), float(self.high[0]), subdivisions
        self._nodes = math.floor(k * (hi - lo) + 1e-9) + 1  # lattice nodes per axis
        self._sliver = (hi - lo) * k - (self._nodes - 1)  # box beyond the last node, in steps
        self._pad = math.ceil(self.dist.r_max) + 2  # template canvas: centre at pad + frac
        self._canvas = 2 * self._pad + 2

    def _grid_nodes(self):  # the lattice holds K² templates, not one mask per node
        return max(self.points ** 2, self.subdivisions ** 2)

    def _coarse(self, y, s2, g, low, high):  # the prior box (no known interval)
        import torch.nn.functional as F

        if self._nodes < 3:  # a box narrower than two lattice steps: render the nodes
            return self._explicit_coarse(y, s2, g, 3, low, high)
        n, d = y.shape
        size, k, pad, canvas, nodes = (self.dist.size, self.subdivisions, self._pad,
                                       self._canvas, self._nodes)
        lo = float(self.low[0])
        # node a sits at lo + a/K = base + (a // K), base = lo + (a % K)/K = floor + frac
        phase = torch.arange(nodes) % k
        base = lo + torch.arange(k, dtype=torch.float64) / k
        whole = base.floor()
        frac = base - whole
        shift = whole[phase].long() + torch.arange(nodes) // k - pad  # template offset t
        t_min, t_max = int(shift.min()), int(shift.max())
        span = t_max - t_min + 1  # correlation outputs per axis
        start = min(t_min, 0)  # padded frame: rows start … start + extent − 1
        extent = max(t_max + canvas, size) - start
        # templates: disk of radius r at (pad + frac_x, pad + frac_y) on the canvas (n, K, K)
        geometry = torch.empty(n, k, k, 3, dtype=torch.float64)
        geometry[..., 0] = pad + frac[None, None, :]  # cx varies along the last phase axis
        geometry[..., 1] = pad + frac[None, :, None]
        geometry[..., 2] = g[:, 2, None, None]
        templates = self.dist.coverage_on(geometry.view(-1, 3), canvas).view(
            n * k * k, 1, canvas, canvas)
        frame = torch.zeros(n, extent, extent, dtype=torch.float64)
        frame[:, -start:-start + size, -start:-start + size] = y.view(n, size, size)
        inside = torch.zeros(1, 1, extent, extent, dtype=torch.float64)
        inside[..., -start:-start + size, -start:-start + size] = 1
        o = t_min - start  # output index of offset t_min

        def correlate(image, weight):  # (n, K, K, span, span): rows = cy offset, cols = cx
            out = F.conv2d(image, weight, groups=n)[0]
            return out.view(n, k, k, *out.shape[1:])[..., o:o + span, o:o + span]

        my = correlate(frame[None], templates)
        ones = inside.expand(1, n, extent, extent)
        p, q = correlate(ones, templates), correlate(ones, templates.square())
        rel = shift - t_min
        # node (a, b) = (cx index, cy index) ↔ [phase[b], phase[a], rel[b], rel[a]]
        pick = (phase[None, :], phase[:, None], rel[None, :], rel[:, None])  # (a, b) → 'ij'

        def at_nodes(t):
            return t[(slice(None),) + pick].reshape(n, nodes * nodes)

        sy, yy = y.sum(1, keepdim=True), y.square().sum(1, keepdim=True)
        a_f, a_b, loglik, _ = self._model.solve(at_nodes(my), at_nodes(p), at_nodes(q),
                                                sy, yy, s2, d)
        positions = lo + torch.arange(nodes, dtype=torch.float64) / k
        axes = positions.expand(n, 2, nodes)
        log_w = _trapezoid([nodes, nodes], self._sliver)

        def mean(w, idx):
            m = len(idx)
            coef = torch.zeros(m, k, k, span, span, dtype=torch.float64)
            coef[(slice(None),) + pick] = (w * (a_f - a_b)[idx]).view(m, nodes, nodes)
            sel = templates.view(n, k * k, 1, canvas, canvas)[idx].reshape(-1, 1, canvas,
                                                                           canvas)
            img = F.conv_transpose2d(coef.view(1, m * k * k, span, span), sel, groups=m)[0]
            img = img[:, -start - o:-start - o + size, -start - o:-start - o + size]
            return (w * a_b[idx]).sum(1, keepdim=True) + img.reshape(m, d)

        return axes, loglik, log_w, mean


class ShapePosterior(ReferenceDenoiser):
    """``E[x | y]`` for a shape manifold by importance sampling over the geometry: an upper
    bound.

    Parameters
    ----------
    dist : ShapeManifold  the distribution (``Disks``, ``Ellipses``): renderer and priors.
    bank_size : int       prior geometries in the precomputed bank (scrambled Sobol).
    n_local : int         proposal draws per image around the refined modes.
    n_starts : int        bank candidates refined by Levenberg–Marquardt per image.
    lm_steps : int        Levenberg–Marquardt iterations.
    inflation : float     scale of the Laplace covariances in the proposal (> 1).
    chunk : int           images processed together (memory ~ chunk·n_local·d·8 bytes).
    seed : int            seeds the bank and the proposal's base points (a fixed function
                          of y for given settings).

    After each call ``last_diagnostics`` holds per-image ``ess`` (effective sample size of
    the weights) and ``local_mass`` (weight carried by the local draws).
    """

    kind = "upper"
    oracle = False
    description = "importance-sampled posterior mean over the shape's geometry (sees y only)"

    def __init__(self, dist, bank_size: int = 8192, n_local: int = 256, n_starts: int = 3,
                 lm_steps: int = 12, inflation: float = 1.3, chunk: int = 16, seed: int = 0):
        super().__init__("upper")
        for name, value, low in (("bank_size", bank_size, 1), ("n_local", n_local, 1),
                                 ("n_starts", n_starts, 1), ("lm_steps", lm_steps, 0),
                                 ("chunk", chunk, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(inflation, (int, float)) and 1.0 <= inflation < 10):
            raise ValueError(f"inflation must be a number in [1, 10), got {inflation!r}")
        _check_shape_manifold(self, dist)
        self.dist, self.dims = dist, dist.geometry_dim
        self.bank_size, self.n_local = bank_size, n_local
        self.n_starts, self.lm_steps = min(n_starts, bank_size), lm_steps
        self.inflation, self.chunk, self.seed = float(inflation), chunk, seed
        self._model = _LinearGaussian(dist.intensity_mean, dist.intensity_std)
        self.low, self.high = dist.geometry_low, dist.geometry_high  # prior box (D,)
        self.log_volume = float(torch.log(self.high - self.low).sum())  # −log prior density
        self.prior_precision = 12 / (self.high - self.low) ** 2  # 1/Var of the uniform prior
        self._bank = None
        self.last_diagnostics: dict[str, torch.Tensor] = {}

    # -- precomputation -------------------------------------------------------------------
    def _build(self):
        """Bank geometries (K, D), masks (K, d) and their sums; proposal base points."""
        sobol = torch.quasirandom.SobolEngine(self.dims, scramble=True, seed=self.seed)
        geometry = self.dist.geometry_from_unit(sobol.draw(self.bank_size, dtype=torch.float64))
        masks = self.dist.coverage(geometry).flatten(1)
        base = torch.quasirandom.SobolEngine(self.dims, scramble=True, seed=self.seed + 1)
        u = base.draw(self.n_local, dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
        normals = math.sqrt(2) * torch.erfinv(2 * u - 1)  # Sobol points → N(0, I_D)
        self._bank = {"g": geometry, "m": masks, "p": masks.sum(1), "q": masks.square().sum(1),
                      "z": normals}

    # -- likelihood pieces ----------------------------------------------------------------
    def _solve(self, my, p, q, sy, yy, s2, d):
        return self._model.solve(my, p, q, sy, yy, s2, d)

    def _log_prior(self, g):
        """log of the uniform prior density at g (..., D): −log V inside the box, −inf out."""
        inside = ((g >= self.low) & (g <= self.high)).all(-1)
        return torch.where(inside, -self.log_volume, -math.inf)

    def _masks(self, g):
        return self.dist.coverage(g.reshape(-1, self.dims)).flatten(1)

    def _refine(self, y, s2, g):
        """Levenberg–Marquardt on −log p(y | g) (α profiled out) for B starts.

        y (B, d), s2 (B, 1), g (B, D). Returns refined g (B, D), the marginal GN Hessian
        of −log p(y | g) in g (B, D, D) and log p(y | g) (B,).
        """
        sy, yy = y.sum(1, keepdim=True), y.square().sum(1, keepdim=True)

        def evaluate(g):
            return _profile(self.dist, self._model, y, s2, sy, yy, g)

        def curvature(state):
            return _profiled_curvature(self.dist, self._model, y, s2, *state[:-1])

        g, state = _levenberg_marquardt(evaluate, curvature, g, self.low, self.high,
                                        self.prior_precision, self.lm_steps, 1e-2, 1e-6)
        h_marg, _ = curvature(state)
        return g, h_marg, state[-1]

    @staticmethod
    def _mixture_logpdf(points, means, chol, logw):
        """log Σ_c w_c N(points; means_c, L_c L_cᵀ): points (n, K, D), means (n, C, D),
        chol (n, C, D, D), logw (n, C) → (n, K)."""
        dims = chol.shape[-1]
        eye = torch.eye(dims, dtype=chol.dtype).expand_as(chol)
        chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)  # L⁻¹ (n, C, D, D)
        # z = L⁻¹(p − μ) = L⁻¹p − L⁻¹μ, as one batched product over all K points
        z = chol_inv @ points.transpose(1, 2)[:, None] - chol_inv @ means[..., None]
        log_det = chol.diagonal(dim1=2, dim2=3).log().sum(-1)  # (n, C)
        logn = -0.5 * z.square().sum(2) - (log_det + dims / 2 * math.log(2 * math.pi))[:, :, None]
        return torch.logsumexp(logw[:, :, None] + logn, 1)

    # -- the estimator ---------------------------------------------------------------------
    def __call__(self, y, sigma, latents=None):
        s2 = sigma_column(sigma, y).double().view(-1, 1).cpu() ** 2
        if self._bank is None:
            self._build()
        flat = y.detach().flatten(1).double().cpu()
        if flat.shape[1] != self.dist.d:
            raise ValueError(f"y must have shape (n, 1, {self.dist.size}, {self.dist.size}), "
                             f"got {tuple(y.shape)}")
        parts = [self._estimate(flat[i:i + self.chunk], s2[i:i + self.chunk])
                 for i in range(0, len(flat), self.chunk)]
        self.last_diagnostics = {key: torch.cat([p[1][key] for p in parts])
                                 for key in ("ess", "local_mass")}
        x_hat = torch.cat([p[0] for p in parts])
        return x_hat.view_as(y).to(device=y.device, dtype=y.dtype)

    def _modes(self, y, s2, sy, yy):
        """Steps 1–2 of the estimator for a chunk y (n, d) float64, s2 (n, 1), with its sums
        ``sy = 1·y``, ``yy = ‖y‖²`` (n, 1): the bank's intensities and log-likelihoods
        (n, K) each, and the best ``n_starts`` bank geometries of each image refined by
        Levenberg–Marquardt (``_refine``'s outputs, n·J rows, image-major)."""
        bank, j = self._bank, self.n_starts
        # 1. bank of prior geometries: one matrix product for m·y
        bf, bb, bank_ll, _ = self._solve(y @ bank["m"].T, bank["p"], bank["q"], sy, yy, s2,
                                         y.shape[1])
        # 2. refine the best n_starts bank geometries of each image
        top = bank_ll.topk(j, dim=1).indices  # (n, J)
        refined = self._refine(y.repeat_interleave(j, 0), s2.repeat_interleave(j, 0),
                               bank["g"][top].reshape(-1, self.dims))
        return (bf, bb, bank_ll), refined

    def _sample(self, y, s2):
        """The weighted sample of geometries for a chunk y (n, d) float64, s2 (n, 1):
        ``{"w_bank" (n, K_b), "w_loc" (n, K_l): normalized weights; "bf", "bb" (n, K_b),
        "lf", "lb" (n, K_l): α̂ given each geometry; "m_loc" (n, K_l, d): local masks}``
        (the bank's masks are ``self._bank["m"]``)."""
        bank, j = self._bank, self.n_starts
        n, d = y.shape
        sy, yy = y.sum(1, keepdim=True), y.square().sum(1, keepdim=True)
        (bf, bb, bank_ll), (g_star, h_marg, ll_star) = self._modes(y, s2, sy, yy)
        # 3. Laplace proposal: N(g*, c²(H + prior precision)⁻¹), plus a 3× wider component
        cov = torch.linalg.inv(h_marg + torch.diag(self.prior_precision))
        dims = self.dims
        chol = torch.linalg.cholesky(cov).view(n, j, dims, dims)
        log_evidence = (ll_star + 0.5 * torch.logdet(cov)).view(n, j)  # Laplace, per mode
        mode_w = 0.8 * torch.softmax(log_evidence, 1) + 0.2 / j
        scales = torch.tensor([self.inflation, 3 * self.inflation], dtype=y.dtype)
        scale_w = torch.tensor([0.8, 0.2], dtype=y.dtype)
        means = g_star.view(n, j, 1, dims).expand(n, j, 2, dims).reshape(n, 2 * j, dims)
        chols = (chol[:, :, None] * scales[:, None, None]).reshape(n, 2 * j, dims, dims)
        weights = (mode_w[:, :, None] * scale_w).reshape(n, 2 * j)
        # 4. local draws, stratified over the components, from fixed Sobol normals
        k = self.n_local
        positions = (torch.arange(k, dtype=y.dtype) + 0.5) / k
        comp = torch.searchsorted(weights.cumsum(1), positions.expand(n, k).contiguous())
        comp = comp.clamp(max=2 * j - 1)  # (n, K_l)
        pick = torch.arange(n)[:, None]
        g_loc = means[pick, comp] + (chols[pick, comp] @ bank["z"][None, :, :, None]).squeeze(-1)
        m_loc = self._masks(g_loc).view(n, k, d)
        lf, lb, loc_ll, _ = self._solve(*_mask_moments(m_loc, y), sy, yy, s2, d)
        # 5. weights prior·likelihood / proposal, proposal = (K_b·prior + K_l·q_local)/(K_b + K_l)
        kb = self.bank_size
        log_mix = torch.log(weights)
        log_share = (math.log(kb / (kb + k)), math.log(k / (kb + k)))

        def log_weight(g, loglik):
            log_prior = self._log_prior(g)
            log_q = torch.logaddexp(log_share[0] + log_prior,
                                    log_share[1] + self._mixture_logpdf(g, means, chols, log_mix))
            return torch.where(torch.isfinite(log_prior), log_prior + loglik - log_q, -math.inf)

        lw_bank = log_weight(bank["g"].expand(n, kb, dims), bank_ll)
        lw_loc = log_weight(g_loc, loc_ll)
        norm = torch.logsumexp(torch.cat([lw_bank, lw_loc], 1), 1, keepdim=True)
        return {"w_bank": torch.exp(lw_bank - norm), "w_loc": torch.exp(lw_loc - norm),
                "bf": bf, "bb": bb, "lf": lf, "lb": lb, "m_loc": m_loc}

    def _estimate(self, y, s2):
        """Posterior mean for a chunk: y (n, d) float64, s2 (n, 1). Returns (x̂, diagnostics)."""
        sample = self._sample(y, s2)
        w_bank, w_loc, bf, bb, lf, lb, m_loc = (sample[key] for key in (
            "w_bank", "w_loc", "bf", "bb", "lf", "lb", "m_loc"))
        # 6. E[x|y] = Σ_k w_k (α̂_b,k + (α̂_f,k − α̂_b,k) m_k)
        level = (w_bank * bb).sum(1, keepdim=True) + (w_loc * lb).sum(1, keepdim=True)
        x_hat = level + (w_bank * (bf - bb)) @ self._bank["m"] \
            + ((w_loc * (lf - lb))[:, None, :] @ m_loc).squeeze(1)
        return x_hat, _weight_diagnostics(w_bank, w_loc)

    def moments(self, y: torch.Tensor, sigma: float) -> dict:
        """Posterior mean ``E[x|y]`` and the MMSE Jacobian ``Cov[x|y]/σ²`` at one image.

        Tweedie (SCIENCE.md §6): ``∇E[x|y] = Cov[x|y]/σ²``. Over this estimator's weighted
        sample of geometries ``g_k`` (law of total covariance, with ``Cov[x|y,g] =
        σ² A M⁻¹ Aᵀ`` from the module doc)

            J = Σ_k w_k A_k M_k⁻¹ A_kᵀ + Σ_k w_k (x̂_k − x̂)(x̂_k − x̂)ᵀ / σ²,

        which is also the exact Jacobian of the weighted estimate with the sample held
        fixed. Weights below 1e-12 of the largest are dropped (they do not change J).

        Parameters
        ----------
        y : tensor with d elements (one image), pixel units;  sigma : float > 0.

        Returns
        -------
        dict: ``mean`` (d,) float64, ``jacobian`` (d, d) float64 (symmetric, PSD),
        ``ess`` and ``local_mass`` (floats, as ``last_diagnostics``).
        """
        if not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ValueError(f"sigma must be a number > 0, got {sigma!r}")
        flat = y.detach().reshape(1, -1).double().cpu()
        if flat.shape[1] != self.dist.d:
            raise ValueError(f"y must hold one image of {self.dist.d} pixels, got "
                             f"{tuple(y.shape)}")
        if self._bank is None:
            self._build()
        s2 = float(sigma) ** 2
        sample = self._sample(flat, torch.full((1, 1), s2, dtype=torch.float64))
        diagnostics = _weight_diagnostics(sample["w_bank"], sample["w_loc"])
        w = torch.cat([sample["w_bank"], sample["w_loc"]], 1)[0]
        masks = torch.cat([self._bank["m"], sample["m_loc"][0]])
        a_f = torch.cat([sample["bf"], sample["lf"]], 1)[0]
        a_b = torch.cat([sample["bb"], sample["lb"]], 1)[0]
        keep = w > 1e-12 * w.max()
        w, masks, a_f, a_b = w[keep] / w[keep].sum(), masks[keep], a_f[keep], a_b[keep]
        x_k = a_b[:, None] + (a_f - a_b)[:, None] * masks  # E[x | y, g_k]
        mean = w @ x_k
        # A M⁻¹ Aᵀ = c₁ m mᵀ + c₂ (m 1ᵀ + 1 mᵀ) + c₃ 1 1ᵀ with A = [m, 1 − m], (a_ij) = M⁻¹
        a00, a01, a11 = self._model.inverse(masks.sum(1), masks.square().sum(1),
                                            torch.tensor(s2, dtype=torch.float64), flat.shape[1])
        c1, c2, c3 = a00 - 2 * a01 + a11, a01 - a11, a11
        side = (w * c2) @ masks
        within = (masks * (w * c1)[:, None]).T @ masks + side[:, None] + side[None, :] \
            + (w * c3).sum()
        spread = (x_k - mean) * w.sqrt()[:, None]
        jacobian = within + spread.T @ spread / s2
        return {"mean": mean, "jacobian": 0.5 * (jacobian + jacobian.T),
                "ess": float(diagnostics["ess"][0]),
                "local_mass": float(diagnostics["local_mass"][0])}

    # -- the best shape ---------------------------------------------------------------------
    def fit(self, images: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The closest image of the family to each image: its parameter fit.

        The geometry maximizes the intensity-profiled likelihood ``p(y | g)`` at noise
        level ``sigma`` over the prior box (the estimator's own bank search and
        Levenberg–Marquardt refinement, the best of ``n_starts`` modes); the intensities
        are the posterior means given that geometry (the prior's pull is ``σ²/τ²`` of a
        pixel's weight: negligible at small σ).

        Parameters
        ----------
        images : tensor (n, 1, size, size)
        sigma : float > 0    noise level assumed in ``images`` (pixel units).

        Returns
        -------
        fitted : tensor like ``images``   the rendered best shapes ``a_b + (a_f − a_b)·m``.
        params : tensor (n, D + 2) float64    their ``(g…, a_f, a_b)``.
        """
        if not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ValueError(f"sigma must be a number > 0, got {sigma!r}")
        flat = images.detach().flatten(1).double().cpu()
        if images.dim() != 4 or flat.shape[1] != self.dist.d:
            raise ValueError(f"images must have shape (n, 1, {self.dist.size}, "
                             f"{self.dist.size}), got {tuple(images.shape)}")
        if self._bank is None:
            self._build()
        j, rows = self.n_starts, []
        for i in range(0, len(flat), self.chunk):
            y = flat[i:i + self.chunk]
            n, d = y.shape
            s2 = torch.full((n, 1), float(sigma) ** 2, dtype=y.dtype)
            sy, yy = y.sum(1, keepdim=True), y.square().sum(1, keepdim=True)
            _, (g, _, loglik) = self._modes(y, s2, sy, yy)
            g = g.view(n, j, self.dims)[torch.arange(n), loglik.view(n, j).argmax(1)]
            m = self._masks(g)
            a_f, a_b, _, _ = self._solve((m * y).sum(1, keepdim=True), m.sum(1, keepdim=True),
                                         m.square().sum(1, keepdim=True), sy, yy, s2, d)
            rows.append(torch.cat([g, a_f, a_b], 1))
        params = torch.cat(rows)
        fitted = self.dist.render(params).to(device=images.device, dtype=images.dtype)
        return fitted, params
