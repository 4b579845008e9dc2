"""``kl_bound``: the σ⁻³-weighted MSE gap integrated into a bound on the smoothed KL
(SCIENCE.md §4, §4b).

For any network f_θ, let q be the law of the reverse SDE driven by f_θ and started at the
samplers' Gaussian ``π = N(μ̂, σ_max² I)``, μ̂ the constant image at the data's mean pixel
value (:func:`theorybench.data_stats.data_variance`; not the mean image that centred
networks subtract). The score-matching bound (Song, Durkan, Murray, Ermon 2021, "Maximum
likelihood training of score-based diffusion models", Thm 1), with Tweedie turning the
score error into
``E‖f_θ − f*‖² = MSE − MMSE``, gives (total MSE, nats)

    KL(p_σ0 ‖ q_σ0) ≤ B = KL(p_σmax ‖ π) + ∫_{σ0}^{σmax} (MSE(f_θ, σ) − MMSE(σ)) σ^{-3} dσ,

and by joint convexity of KL (``p_σmax`` is a mixture of ``N(x, σ_max² I)``, ``π`` the
same mixture of ``N(μ̂, σ_max² I)``)

    KL(p_σmax ‖ π) ≤ closing = E‖x − μ̂‖² / (2 σ_max²).

σ_max is the largest σ of the grid the curves are on. With a bracket ``L ≤ MMSE ≤ U``:

    B_low  = ∫_{σ0}^{σmax} max(0, MSE − U) σ^{-3} dσ            ≤ B ≤
    B_high = ∫_{σ0}^{σmax} max(0, MSE − L) σ^{-3} dσ + closing.

``B_high`` is an upper bound on the smoothed KL up to the Monte Carlo error of the curves
and of E‖x − μ̂‖² (both in ``se_high``) and the quadrature error of the grid integral
(estimated in ``quad_err_high``, below). ``B_low`` is the lower end of the bound B, not a lower
bound on the KL. A family that knows ``K = KL(p_σmax ‖ π)`` in closed form
(``Distribution.start_kl``: the Gaussian field, where convexity overstates it by
``½ Σ ln(1 + λ_k/σ_max²)``, 4.8 of its 5.1 nats at 32×32 and σ_max = 2) gives B's first
term exactly: ``closing = K``, added to both ends.

The true gap ``MSE − MMSE`` is ≥ 0 at every σ, so a negative ``MSE − U`` only
says U is loose there (or is noise): it is clipped to 0 per σ and flagged with its size;
no negative KL is ever reported. ``MSE − L ≥ MSE − MMSE`` is clipped alike (a negative
value is noise), and at a σ where the measured L exceeds U (a bracket inverted by Monte
Carlo noise, within the 3 standard errors :func:`kl_bound` accepts) B_high uses U, the
larger gap: ``B_low ≤ B_high`` always. An exact MMSE is the bracket L = U and gives
``B_low = B_high`` (unclipped, Monte Carlo noise at σ where the network is near optimal
would put B_high below B_low).

Integrals are ``∫ gap(σ) σ^{-2} d(ln σ)``: the integrand ``h(u) = gap(e^u) e^{−2u}`` is
integrated in ``u = ln σ`` over the curves' grid with the trapezoid rule (the
piecewise-linear interpolant of h, so σ0 may fall between grid points). For a model that
is the exact posterior mean of a density q at every σ and is started from q_σmax, the
integral up to ∞ is the KL itself (§4); beyond the grid that identity needs the gap up to
∞, which is not measured, hence the closing term instead. The curves are measured on the
grid only, so the integral between grid points is an interpolation: its error, of either
sign, is the integral of ``h − line``, the integrand less its straight line between grid
points, ``h[u_j, u_{j+1}, u] (u − u_j)(u − u_{j+1})`` on the segment ``[u_j, u_{j+1}]``
(a full segment of width δ and constant h'': ``−h'' δ³/12``, the trapezoid rule's error).
:func:`trapezoid_error_weights` estimates it on each segment with h'' linear there, through
the second divided differences of the two nearest inner grid points: exact for an ``h``
cubic in ``ln σ`` on any grid of at least 4 points, uneven ones and a σ0 between grid
points included (on 3 points h'' is one constant: exact for a quadratic).
``quad_err_low`` and ``quad_err_high`` add each end's segment estimates in absolute value:
the segments' errors may cancel, but where h'' changes sign between segments (a noisy
integrand, or one clipped at 0) each estimate is rough, and crediting their cancellation
gave estimates up to about 180 times smaller than this sum on the committed report's
noisier rows (where the segments' estimates, extrapolated on the end segments, keep one
sign, the sum is the signed estimate's size).

The estimate assumes an integrand smooth between grid points. Where an end's bound is a
value taken from another σ (a reference stored on a coarser grid, or a monotone envelope),
its integrand jumps, and the trapezoid's error there, of the order of the jump times the
segment, is not in it. On the end segments h'' is extrapolated, so for an integrand that
changes by a large factor per grid step the estimate is rough: for ``e^{−3u}`` on 8 points
over [0.01, 2] it is 0.79 of the true error from the lowest σ, 2.3 times it from the 4th,
and from a σ0 inside the top segment it can have the wrong sign and be many times off (a
small error there, where σ⁻² is smallest); for ``e^{−1.5u}``, 0.96 and 1.22. Richardson's
``|I − I_½|/3`` on every other point would need each coarse segment split into two equal
ones, which a grid of an even number of points cannot give (one segment stays whole, its
error dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.special import ndtr

from tbcore.validation import check_float


@dataclass
class KLResult:
    """Output of :func:`kl_bound` (SCIENCE.md §4b).

    table : one row per σ0: ``sigma0``; ``kl_low`` = B_low (nats, ≥ 0: the lower end of the
        bound B, gaps clipped at 0); ``kl_high`` = B_high (nats: the upper bound on the
        smoothed KL, up to ``se_high`` and ``quad_err_high``; grid integral of the gaps to L
        clipped at 0 + ``closing``; the grid integral alone when ``closing`` is NaN, i.e.
        no data variance was given, and then not certified);
        ``closing`` (``E‖x − μ̂‖²/(2σ_max²)``, or the exact ``start_kl``; nats, NaN when
        unknown); ``closing_exact`` (bool: ``closing`` is the exact ``start_kl``, in
        ``kl_low`` too); ``se_low``,
        ``se_high`` (standard errors, nats: of the grid integrals, and in ``se_high`` of the
        convexity closing term too, from ``data_variance_se``); ``quad_err_low``,
        ``quad_err_high`` (nats: the estimated quadrature error of each end's grid integral,
        its segments' estimates added in absolute value, module docstring; NaN on a grid of
        fewer than 3 points);
        ``bits_low``,
        ``bits_high`` (bits per pixel value: nats / (d ln 2)); ``clipped`` (bool: MSE − U < 0
        was clipped to 0 at some σ of the integral); ``clipped_nats`` (what the clipping
        added to ``kl_low``, nats; the rarer clipping of MSE − L < 0 in ``kl_high`` is not
        counted there); ``clipped_max`` (largest clipped ``U − MSE``, total
        squared error; 0 when nothing was clipped).
    integrand : one row per grid σ: ``sigma``, ``gap_low`` (MSE − U, unclipped), ``gap_high``
        (MSE − L; MSE − U where the measured L exceeds U), ``clipped``
        (``max(0, U − MSE)``), all total squared error (per-pixel × d); ``integrand_low``
        (``max(0, gap_low)·σ⁻²``), ``integrand_high`` (``max(0, gap_high)·σ⁻²``), the
        densities in ln σ that are integrated.
    """

    table: pd.DataFrame
    integrand: pd.DataFrame


def closing_term(data_variance: float, sigma_max: float) -> float:
    """Bound ``E‖x − μ̂‖² / (2σ_max²) ≥ KL(p_σmax ‖ N(μ̂, σ_max² I))`` in nats (SCIENCE.md §4b).

    ``data_variance`` is ``E‖x − μ̂‖²`` summed over the pixels of one image.
    """
    data_variance = float(data_variance)
    if not (math.isfinite(data_variance) and data_variance >= 0):
        raise ValueError(f"data_variance must be a finite number >= 0, got {data_variance}")
    return data_variance / (2.0 * float(sigma_max) ** 2)


def trapezoid_weights(u: np.ndarray, u0: float) -> np.ndarray:
    """Weights c with ``Σ c_i h_i = ∫_{u0}^{u_max}`` of the piecewise-linear interpolant of h.

    ``u`` is increasing; ``u0`` must lie in ``[u[0], u[-1]]``.
    """
    c = np.zeros(len(u))
    for j in range(len(u) - 1):  # one term per grid segment: O(len(sigmas)), not a hot path
        a, b = max(u[j], u0), u[j + 1]
        if b <= a:
            continue
        delta = u[j + 1] - u[j]
        c[j] += ((u[j + 1] - a) ** 2 - (u[j + 1] - b) ** 2) / (2 * delta)
        c[j + 1] += ((b - u[j]) ** 2 - (a - u[j]) ** 2) / (2 * delta)
    return c


def trapezoid_error_weights(u: np.ndarray, u0: float) -> np.ndarray:
    """Weights Q, one row per grid segment (``(len(u) − 1, len(u))``), with ``Q[j] @ h`` ≈
    the error of the trapezoid rule (:func:`trapezoid_weights`) on the part of segment j
    above u0, exactly for h cubic: ``Q.sum(0) @ h`` ≈ ``∫_{u0}^{u_max} h − Σ c_i h_i``.

    On the segment ``[u_j, u_{j+1}]`` (width δ), ``h(u) − line(u) =
    h[u_j, u_{j+1}, u] (u − u_j)(u − u_{j+1})``, and for a cubic
    ``2 h[u_j, u_{j+1}, u] = h″((u_j + u_{j+1} + u)/3)``. h″ is taken linear on each
    segment, through the second divided differences ``D_i = 2 h[u_{i−1}, u_i, u_{i+1}]``
    (``= h″`` at ``(u_{i−1} + u_i + u_{i+1})/3`` for a cubic) of the two inner points
    nearest the segment: its own end points where both are inside the grid, else the two
    nearest (an end segment: extrapolated); constant on a grid of 3 points (exact then for
    h quadratic only). ``u`` is
    increasing, of at least 3 points; ``u0`` in ``[u[0], u[-1]]``.
    """
    n = len(u)
    if n < 3:
        raise ValueError(f"trapezoid_error_weights needs at least 3 grid points, got {n}")
    delta = np.diff(u)
    inner = np.arange(1, n - 1)
    left, right, span = delta[inner - 1], delta[inner], u[inner + 1] - u[inner - 1]
    second = np.zeros((n - 2, n))  # second[i − 1] @ h = D_i
    second[inner - 1, inner - 1] = 2 / (left * span)
    second[inner - 1, inner] = -2 / (left * right)
    second[inner - 1, inner + 1] = 2 / (right * span)
    at = (u[inner - 1] + u[inner] + u[inner + 1]) / 3  # where D_i is h″ for a cubic
    first = np.clip(np.arange(n - 1), 1, max(n - 3, 1)) - 1  # segment j: rows first, first + 1
    d_first = second[first]
    slope = np.zeros((n - 1, n))  # h‴ @ h on each segment (0 with one inner point)
    if n > 3:
        slope = (second[first + 1] - d_first) / (at[first + 1] - at[first])[:, None]
    a = np.clip(u0, u[:-1], u[1:]) - u[:-1]  # the part of each segment above u0, from u_j
    # with t = u − u_j: h − line = ½ (D_first + h‴ (u_j + δ/3 − at_first + t/3)) t (t − δ)
    offset = u[:-1] + delta / 3 - at[first]

    def moments(t):  # ∫_0^t s (s − δ) ds and ∫_0^t s² (s − δ) ds
        return t**3 / 3 - delta * t**2 / 2, t**4 / 4 - delta * t**3 / 3

    (m0_b, m1_b), (m0_a, m1_a) = moments(delta), moments(a)
    m0, m1 = m0_b - m0_a, m1_b - m1_a
    return 0.5 * (m0[:, None] * d_first + (m0 * offset + m1 / 3)[:, None] * slope)


def _weighted(weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``weights @ rows`` over the σ that carry weight (rows (n_σ, ...)): a σ of weight 0,
    where a curve may be ±inf, adds 0, not NaN."""
    used = weights != 0
    return weights[used] @ rows[used]


def _per_sigma_se(spread: np.ndarray, paired: bool) -> np.ndarray:
    """Per σ, the standard error of a gap: from its per-image values (n_σ, n_images) when
    paired, else ``spread`` is already that standard error (n_σ,)."""
    if not paired:
        return spread
    n = spread.shape[1]
    finite = np.isfinite(spread).all(axis=1)  # a σ with U = +inf has no gap to spread
    out = np.full(len(spread), np.nan)
    if n > 1:
        out[finite] = spread[finite].std(axis=1, ddof=1) / math.sqrt(n)
    return out


def _clipped_spread(gap: np.ndarray, se: np.ndarray) -> np.ndarray:
    """``sd(max(0, X))/se`` for ``X ~ N(gap, se²)``, per σ: how much of a gap's standard
    error survives the clipping at 0. With ``z = gap/se``, ``E max(0, X)/se = zΦ(z) + φ(z)``
    and ``E max(0, X)²/se² = (1 + z²)Φ(z) + zφ(z)``; → 1 for z ≫ 1, 0.584 at z = 0, → 0
    for z ≪ −1. A standard error of 0 (or unknown) gives the step ``gap ≥ 0``."""
    step = (gap >= 0).astype(float)
    ok = np.isfinite(se) & (se > 0) & np.isfinite(gap)
    z = np.divide(gap, se, out=np.zeros_like(step), where=ok)
    inner = np.clip(z, -8.0, 8.0)  # beyond, within 1e-8 of 0 and 1
    cdf, pdf = ndtr(inner), np.exp(-0.5 * inner**2) / math.sqrt(2 * math.pi)
    var = (1 + inner**2) * cdf + inner * pdf - (inner * cdf + pdf) ** 2
    share = np.where(z < -8.0, 0.0, np.where(z > 8.0, 1.0, np.sqrt(np.clip(var, 0.0, 1.0))))
    return np.where(ok, share, step)


def _grid_text(sigmas: np.ndarray) -> str:
    """A σ grid in a few words: its size and ends."""
    if not len(sigmas):
        return "no σ"
    return f"{len(sigmas)} σ from {sigmas.min():.4g} to {sigmas.max():.4g}"


def _checked(curve: pd.DataFrame, sigmas: np.ndarray, label: str) -> pd.DataFrame:
    grid = curve["sigma"].to_numpy()
    if grid.shape != sigmas.shape or not np.allclose(grid, sigmas):
        if grid.shape == sigmas.shape:
            i = int(np.argmax(~np.isclose(grid, sigmas)))
            where = f"σ = {grid[i]:.4g} where the network has {sigmas[i]:.4g}"
        else:
            where = f"{_grid_text(grid)} against {_grid_text(sigmas)}"
        raise ValueError(f"kl_bound: the {label} curve is not on the network's σ grid "
                         f"({where}); measure both with mse_curve on the same sigmas")
    nan = np.isnan(curve["mse"].to_numpy(dtype=float))
    if nan.any():
        raise ValueError(f"kl_bound: the {label} curve has no MSE (NaN) at σ = {grid[nan][0]:.4g}")
    negative = curve["mse"].to_numpy(dtype=float) < 0
    if negative.any():
        raise ValueError(f"kl_bound: the {label} curve has a negative MSE at σ = "
                         f"{grid[negative][0]:.4g} (an MSE is ≥ 0)")
    return curve


def kl_bound(network: pd.DataFrame, references: dict[str, pd.DataFrame], sigma0=None,
             data_variance: float | None = None, start_kl: float | None = None,
             data_variance_se: float | None = None) -> KLResult:
    """Bound on the smoothed KL between the data and the network's model, as
    ``[B_low, B_high]`` (module docstring, SCIENCE.md §4b).

    Parameters
    ----------
    network : DataFrame from :func:`theorybench.mse_curve`: ``sigma``, ``mse`` (per pixel),
        ``se``, ``d``; ``attrs["errors"]`` (per-image errors) when available.
    references : ``{"exact": curve}`` or ``{"lower": curve, "upper": curve}`` on the same
        σ grid (same images and noise for paired standard errors).
    sigma0 : float or sequence, smoothing levels within the grid (default: every grid σ).
    data_variance : float or None, ``E‖x − μ̂‖²`` (summed over the pixels of one image)
        around the constant image μ̂ of the samplers' start ``N(μ̂, σ_max² I)``, σ_max = the
        grid's largest σ. It gives the closing term ``data_variance / (2σ_max²)`` of
        ``kl_high``; None leaves ``closing`` NaN and ``kl_high`` without it (not certified).
    start_kl : float or None, ``KL(p_σmax ‖ N(μ̂, σ_max² I))`` exactly (nats, ≥ 0;
        ``Distribution.start_kl`` at the grid's largest σ and μ̂): the closing term of both
        ``kl_low`` and ``kl_high`` instead of the convexity bound from ``data_variance``.
    data_variance_se : float or None, the standard error of ``data_variance``: its share of
        the convexity closing term's error, ``data_variance_se / (2σ_max²)``, is added to
        ``se_high`` in quadrature (None: not included).

    Returns
    -------
    KLResult. With paired per-image errors the standard errors are those of the per-image
    integrals (exact for the linear estimator), each σ's term scaled by
    ``sd(max(0, X))/se`` for its gap ``X ~ N(gap, se²)`` at the measured gap (a plug-in:
    the clipping's share of that σ's standard error; scaling each σ's per-image gaps by it
    keeps their correlation across σ, an approximation, conservative for positively
    correlated gaps): a σ clipped by many standard errors adds nothing to them, one within
    noise of 0 about a third of its variance;
    otherwise the curves' standard errors are combined assuming full correlation across σ
    (conservative).

    Raises
    ------
    ValueError (one line) for missing references, curves on different σ grids or with a NaN
    or negative MSE, σ0 outside the grid, a bad ``data_variance``, ``data_variance_se`` or
    ``start_kl``, or a lower curve above the upper curve by more than 3 standard errors
    (``3·(se_L + se_U)``, valid for any correlation) at some σ.
    """
    if "exact" in references:
        low_ref = high_ref = references["exact"]
    elif {"lower", "upper"} <= set(references):
        low_ref, high_ref = references["upper"], references["lower"]
    else:
        raise ValueError("references must hold 'exact' or both 'lower' and 'upper' curves, got "
                         f"{sorted(references)}")
    order = np.argsort(network["sigma"].to_numpy())
    sig = network["sigma"].to_numpy()[order]
    if len(sig) < 2:
        raise ValueError(f"kl_bound needs at least two σ values, got {len(sig)}")
    if np.any(np.diff(sig) <= 0):
        raise ValueError(f"kl_bound needs distinct σ values, got σ = "
                         f"{sig[:-1][np.diff(sig) <= 0][0]:.4g} twice")
    d = int(network["d"].iloc[0])
    raw = {"net": network, "low": low_ref, "high": high_ref}
    orders = {k: np.argsort(c["sigma"].to_numpy(), kind="stable") for k, c in raw.items()}
    names = {"net": "network", "low": "upper" if "upper" in references else "exact",
             "high": "lower" if "lower" in references else "exact"}
    curves = {k: _checked(c.iloc[orders[k]], sig, names[k]) for k, c in raw.items()}
    mse = {k: c["mse"].to_numpy() * d for k, c in curves.items()}  # total squared error
    se = {k: c["se"].to_numpy() * d for k, c in curves.items()}
    excess = mse["high"] - mse["low"]  # L − U, > 0 where the bracket is inverted
    finite = np.isfinite(mse["low"])  # U = +inf above a coarse reference grid bounds nothing
    scale = np.abs(mse["low"][finite]).max() if finite.any() else 0.0
    bad = excess > 3 * (se["high"] + se["low"]) + 1e-12 * scale
    if np.any(bad):
        raise ValueError(f"kl_bound: the lower curve exceeds the upper curve by more than 3 "
                         f"standard errors at σ = {sig[bad][0]:.4g} (swapped 'lower'/'upper'?)")
    exact = start_kl is not None
    if exact:
        closing = check_float("start_kl", start_kl, low=0.0)
    else:
        closing = math.nan if data_variance is None else closing_term(data_variance, sig[-1])
    closing_se = 0.0
    if data_variance_se is not None:
        data_variance_se = check_float("data_variance_se", data_variance_se, low=0.0)
    if not exact and data_variance is not None and data_variance_se is not None:
        closing_se = closing_term(data_variance_se, sig[-1])  # linear in data_variance
    inverted = excess > 0  # L > U by noise (accepted above): B_high takes U, the larger gap
    gap_low = mse["net"] - mse["low"]
    gap_high = mse["net"] - np.where(inverted, mse["low"], mse["high"])
    kept_low = np.maximum(gap_low, 0.0)  # the true gap is >= 0 (§4b): clip MSE − U
    kept_high = np.maximum(gap_high, 0.0)  # and MSE − L >= MSE − MMSE: alike
    # U = +inf (no upper bound at that σ, e.g. above a coarse reference grid) bounds nothing
    # there: B_low gains 0 and nothing counts as clipped
    clipped = np.where(np.isfinite(mse["low"]), np.maximum(-gap_low, 0.0), 0.0)
    u = np.log(sig)
    inv_s2 = sig ** -2.0
    errors = {k: c.attrs.get("errors") for k, c in raw.items()}
    paired = all(e is not None for e in errors.values()) and len(
        {e.shape for e in errors.values()}) == 1

    if paired:  # per-image gaps (n_σ, n_images): each σ0's integrals, then their SE
        e_net = errors["net"][orders["net"]] * d
        spread = {side: e_net - errors[side][orders[side]] * d for side in ("low", "high")}
    else:  # per-σ standard errors of the gaps, integrated as they are
        spread = {side: np.sqrt(se["net"] ** 2 + se[side] ** 2) for side in ("low", "high")}
    spread["high"] = np.where(inverted.reshape(-1, *[1] * (spread["high"].ndim - 1)),
                              spread["low"], spread["high"])
    # the clipping max(0, ·) in the standard errors: each σ's gap scaled by the share of
    # its standard error that survives the clipping, at the measured gap (1 for a gap many
    # standard errors above 0, 0.58 at 0, → 0 where U is loose by many of them)
    surviving = {side: _clipped_spread(gap, _per_sigma_se(spread[side], paired))
                 for side, gap in (("low", gap_low), ("high", gap_high))}

    sigma0 = sig if sigma0 is None else np.atleast_1d(np.asarray(sigma0, dtype=float))
    rows = []
    for s0 in sigma0:
        if not (sig[0] * (1 - 1e-9) <= s0 <= sig[-1] * (1 + 1e-9)):
            raise ValueError(f"sigma0 must lie in the grid [{sig[0]:.4g}, {sig[-1]:.4g}], got {s0}")
        c = trapezoid_weights(u, math.log(s0)) * inv_s2
        weights = {side: c * surviving[side] for side in ("low", "high")}
        integral_high = float(_weighted(c, kept_high))
        quad = {"low": math.nan, "high": math.nan}
        if len(sig) >= 3:  # the interpolation's error, from h'' (module docstring)
            q = trapezoid_error_weights(u, math.log(s0)) * inv_s2
            quad = {side: sum(abs(float(_weighted(segment, kept))) for segment in q)
                    for side, kept in (("low", kept_low), ("high", kept_high))}
        row = {"sigma0": float(s0),
               "kl_low": float(_weighted(c, kept_low)) + (closing if exact else 0.0),
               "kl_high": integral_high + (closing if math.isfinite(closing) else 0.0),
               "closing": closing, "closing_exact": exact}
        for side in ("low", "high"):
            integral = _weighted(weights[side], spread[side])
            row[f"se_{side}"] = float(integral.std(ddof=1) / math.sqrt(integral.size)
                                      if paired else integral)
        row["se_high"] = math.hypot(row["se_high"], closing_se)
        row["quad_err_low"], row["quad_err_high"] = quad["low"], quad["high"]
        row["bits_low"] = row["kl_low"] / (d * math.log(2))
        row["bits_high"] = row["kl_high"] / (d * math.log(2))
        used = c > 0
        row["clipped_nats"] = float(_weighted(c, clipped))
        row["clipped"] = bool(row["clipped_nats"] > 0)
        row["clipped_max"] = float(clipped[used].max()) if used.any() else 0.0
        rows.append(row)
    # no rows when no σ0 was asked (e.g. a partial run's per-σ grid holds none of them)
    table = pd.DataFrame(rows, columns=["sigma0", "kl_low", "kl_high", "closing",
                                        "closing_exact", "se_low",
                                        "se_high", "quad_err_low", "quad_err_high",
                                        "bits_low", "bits_high",
                                        "clipped",
                                        "clipped_nats", "clipped_max"])
    integrand = pd.DataFrame({"sigma": sig, "gap_low": gap_low, "gap_high": gap_high,
                              "clipped": clipped, "integrand_low": kept_low * inv_s2,
                              "integrand_high": kept_high * inv_s2})
    return KLResult(table=table, integrand=integrand)


def gaussian_kl(lam_p: torch.Tensor, lam_q: torch.Tensor, sigma0: float) -> float:
    """Closed-form ``KL(N(0, C_p + σ0²I) ‖ N(0, C_q + σ0²I))`` in nats for covariances with
    the same eigenvectors: ``Σ ½ (r − 1 − ln r)``, ``r = (λ + σ0²)/(λ' + σ0²)`` (SCIENCE.md §4)."""
    r = (lam_p.double() + sigma0**2) / (lam_q.double() + sigma0**2)
    return float((0.5 * (r - 1 - torch.log(r))).sum())


SELECTION_Z = 2.0  # one Monte Carlo bound replaces another only where better by this many SE


def beyond_noise(diff: np.ndarray) -> np.ndarray:
    """Whether paired per-image differences (images on the last axis) have a mean above
    ``SELECTION_Z`` standard errors of that mean: a gain that is not Monte Carlo noise.
    NaN differences (inf − inf) are never significant."""
    with np.errstate(invalid="ignore"):
        se = diff.std(axis=-1, ddof=1) / math.sqrt(diff.shape[-1])
        return diff.mean(axis=-1) > SELECTION_Z * se


def _pick(curves: list[pd.DataFrame], side: str) -> pd.DataFrame:
    """Per σ, the tightest of several bounds on one side (``"upper"``: the lowest, ``"lower"``:
    the highest) without selecting Monte Carlo noise, errors included.

    The primary curve is the tightest at the most σ (the first on ties); at each σ another
    replaces it only where it is tighter by more than ``SELECTION_Z`` standard errors of
    their paired difference (per-image errors on the same images and noise), and then the
    tightest of those does (among several that each beat the primary, a smaller selection
    of noise remains). Taking the plain minimum of several noisy estimates of nearly equal
    bounds would bias it by their noise (the winner's curse). A primary value that is not
    finite (no bound at that σ) gives way to any finite one. Curves without per-image errors
    (``attrs["errors"]``, σ × images) are compared by their values alone, and the result
    then has no per-image errors either; with a single image, by their values too. Per-σ
    flags ``attrs["extended"]`` (a value taken from another σ of a coarser grid, see
    ``report.common.extend_monotone``) follow the chosen curve (a curve without them
    counts as measured at every σ).
    """
    sign = 1.0 if side == "upper" else -1.0
    mse = sign * np.stack([c["mse"].to_numpy(dtype=float) for c in curves])  # lower: −L
    if np.isnan(mse).any():
        raise ValueError(f"tightest_references: a {side} curve has no MSE (NaN) at σ = "
                         f"{curves[0]['sigma'].to_numpy()[np.isnan(mse).any(0)][0]:.4g}")
    cols = np.arange(mse.shape[1])
    primary = int(np.bincount(np.argmin(mse, axis=0), minlength=len(curves)).argmax())
    stored = [c.attrs.get("errors") for c in curves]
    errors = (np.stack([np.asarray(e, dtype=float) for e in stored])
              if all(e is not None for e in stored) else None)
    allowed = np.ones_like(mse, dtype=bool)
    if errors is not None and errors.ndim == 3 and errors.shape[2] >= 2:
        with np.errstate(invalid="ignore"):  # inf − inf: NaN, never significant
            diff = sign * (errors[primary] - errors)  # (curves, σ, images): > 0 where tighter
        allowed = beyond_noise(diff) | (~np.isfinite(mse[primary]) & np.isfinite(mse))
        allowed[primary] = True
    choice = np.argmin(np.where(allowed, mse, np.inf), axis=0)
    out = curves[0].copy()
    out.attrs.pop("errors", None)
    out["mse"] = sign * mse[choice, cols]
    out["se"] = np.stack([c["se"].to_numpy() for c in curves])[choice, cols]
    if errors is not None:
        out.attrs["errors"] = errors[choice, cols]
    if any("extended" in c.attrs for c in curves):  # a curve without them: measured
        out.attrs["extended"] = np.stack([np.asarray(c.attrs.get("extended", np.zeros(
            len(c), dtype=bool)), dtype=bool) for c in curves])[choice, cols]
    return out


def tightest_references(frames: dict[str, pd.DataFrame],
                        kinds: dict[str, str]) -> tuple[dict[str, pd.DataFrame], str]:
    """The references :func:`kl_bound` takes, from MSE curves of reference denoisers.

    Parameters
    ----------
    frames : ``{name: mse_curve frame}`` on one σ grid (same images and noise).
    kinds : ``{name: kind}`` (``exact``, ``lower``, ``upper`` or ``blind``; see
        ``tbcore.denoiser``).

    Returns
    -------
    ``({"exact": curve}, "exact")`` when an exact MMSE exists; otherwise
    ``({"lower": L, "upper": U}, how)`` with, per σ, U the lowest upper bound and L the
    highest lower bound (each a valid bound, so their pointwise min/max are too), another
    curve than the one tightest at the most σ taken only where it is tighter by more than
    ``SELECTION_Z`` standard errors of the paired difference (:func:`_pick`: no selection of
    Monte Carlo noise);
    ``how`` = ``"bracket"``, or ``"upper only (L = 0)"`` without any lower bound (the
    trivial MMSE ≥ 0; the KL's upper end is then correspondingly weak). ``blind`` curves
    are not bounds on the MMSE and are ignored.
    """
    exact = [frames[n] for n in frames if kinds[n] == "exact"]
    if exact:
        return {"exact": exact[0]}, "exact"
    uppers = [frames[n] for n in frames if kinds[n] == "upper"]
    lowers = [frames[n] for n in frames if kinds[n] == "lower"]
    if not uppers:
        raise ValueError(f"no exact or upper reference among {sorted(frames)}")
    upper = _pick(uppers, "upper")
    if lowers:
        return {"lower": _pick(lowers, "lower"), "upper": upper}, "bracket"
    zero = upper.copy()
    zero["mse"], zero["se"] = 0.0, 0.0
    zero.attrs.pop("extended", None)  # measured nowhere
    if "errors" in upper.attrs:
        zero.attrs["errors"] = np.zeros_like(upper.attrs["errors"])
    return {"lower": zero, "upper": upper}, "upper only (L = 0)"


def mmse_references(dist, sigmas, n: int = 256, seed: int = 0,
                    progress: bool = False) -> tuple[dict[str, pd.DataFrame], str]:
    """The best MMSE references of ``dist`` on ``sigmas``, ready for :func:`kl_bound`.

    Evaluates every reference denoiser of the distribution (its own and the baselines,
    ``theorybench.reference_denoisers``) with :func:`theorybench.mse_curve` on the same
    ``n`` images and noise as a curve of yours with the same ``n`` and ``seed`` (so the
    KL's standard errors are paired), and keeps the tightest (:func:`tightest_references`).
    Returns ``(references, how)``.
    """
    from .denoisers import reference_denoisers
    from .evaluation import mse_curve

    refs = reference_denoisers(dist)
    frames = {name: mse_curve(den, dist, sigmas, n=n, seed=seed, progress=progress)
              for name, den in refs.items()}
    return tightest_references(frames, {name: den.kind for name, den in refs.items()})
