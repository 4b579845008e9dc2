"""``kl_bound``: the σ⁻³-weighted MSE gap integrated into a smoothed KL (SCIENCE.md §4).

    KL(p_σ0 ‖ q_σ0) = ∫_{σ0}^{∞} ( MSE(f_θ, σ) − MMSE(σ) ) σ^{-3} dσ      (total MSE, nats)
                    = ∫_{ln σ0}^{∞} gap(σ) σ^{-2} d(ln σ).

The integrand ``h(u) = gap(e^u) e^{−2u}`` is integrated in ``u = ln σ`` over the stored grid
with the trapezoid rule (the piecewise-linear interpolant of h, so σ0 may fall between grid
points). Beyond the largest σ of the grid the gap is bounded by its value there, held
constant (``∫_{σmax}^∞ g σ^{-3} dσ = g / (2 σmax²)``); that bound is reported, not hidden.

With a bracket ``L ≤ MMSE ≤ U`` the gap lies in ``[MSE_θ − U, MSE_θ − L]`` and so does the
KL. Gaps are kept with their sign: a network below an upper bound gives a negative lower
gap, which is flagged, never clipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


@dataclass
class KLResult:
    """Output of :func:`kl_bound`.

    table : one row per σ0: ``sigma0``, ``kl_low``, ``kl_high`` (nats, integral over the
        grid), ``tail`` (bound on the part beyond the grid, nats), ``se_low``, ``se_high``
        (standard errors, nats), ``bits_low``, ``bits_high`` (bits per pixel value:
        nats / (d ln 2)), ``negative_gap`` (the lower gap is < 0 somewhere above σ0).
    integrand : one row per grid σ: ``sigma``, ``gap_low``, ``gap_high`` (total squared
        error, i.e. per-pixel × d), ``integrand_low``, ``integrand_high`` (gap·σ⁻², the
        density in ln σ).
    """

    table: pd.DataFrame
    integrand: pd.DataFrame


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


def _checked(curve: pd.DataFrame, sigmas: np.ndarray, label: str) -> pd.DataFrame:
    if not np.allclose(curve["sigma"].to_numpy(), sigmas):
        raise ValueError(f"kl_bound: the {label} curve is not on the network's σ grid")
    return curve


def kl_bound(network: pd.DataFrame, references: dict[str, pd.DataFrame], sigma0=None
             ) -> KLResult:
    """Smoothed KL between the data and the network's model, as an interval.

    Parameters
    ----------
    network : DataFrame from :func:`theorybench.mse_curve`: ``sigma``, ``mse`` (per pixel),
        ``se``, ``d``; ``attrs["errors"]`` (per-image errors) when available.
    references : ``{"exact": curve}`` or ``{"lower": curve, "upper": curve}`` on the same
        σ grid (same images and noise for paired standard errors).
    sigma0 : float or sequence, smoothing levels within the grid (default: every grid σ).

    Returns
    -------
    KLResult. With paired per-image errors the standard errors are those of the per-image
    integrals (exact for the linear estimator); otherwise the curves' standard errors are
    combined assuming full correlation across σ (conservative).
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
    if len(sig) < 2 or np.any(np.diff(sig) <= 0):
        raise ValueError("kl_bound needs at least two distinct σ values")
    d = int(network["d"].iloc[0])
    curves = {"net": network, "low": low_ref, "high": high_ref}
    for label, curve in curves.items():
        curves[label] = _checked(curve.iloc[np.argsort(curve["sigma"].to_numpy())], sig, label)
    mse = {k: c["mse"].to_numpy() * d for k, c in curves.items()}  # total squared error
    se = {k: c["se"].to_numpy() * d for k, c in curves.items()}
    gap_low, gap_high = mse["net"] - mse["low"], mse["net"] - mse["high"]
    u = np.log(sig)
    inv_s2 = sig ** -2.0
    errors = {k: c.attrs.get("errors") for k, c in curves.items()}
    paired = all(e is not None for e in errors.values()) and len(
        {e.shape for e in errors.values()}) == 1

    sigma0 = sig if sigma0 is None else np.atleast_1d(np.asarray(sigma0, dtype=float))
    rows = []
    for s0 in sigma0:
        if not (sig[0] * (1 - 1e-9) <= s0 <= sig[-1] * (1 + 1e-9)):
            raise ValueError(f"sigma0 must lie in the grid [{sig[0]:.4g}, {sig[-1]:.4g}], got {s0}")
        c = trapezoid_weights(u, math.log(s0)) * inv_s2
        row = {"sigma0": float(s0), "kl_low": float(c @ gap_low), "kl_high": float(c @ gap_high)}
        if paired:  # per-image integrals, then their standard error
            e_net = errors["net"][order] * d
            for side in ("low", "high"):
                per_image = c @ (e_net - errors[side][np.argsort(curves[side]["sigma"])] * d)
                row[f"se_{side}"] = float(per_image.std(ddof=1) / math.sqrt(per_image.size))
        else:
            for side in ("low", "high"):
                row[f"se_{side}"] = float(c @ np.sqrt(se["net"] ** 2 + se[side] ** 2))
        row["tail"] = float(max(abs(gap_low[-1]), abs(gap_high[-1])) / (2 * sig[-1] ** 2))
        row["bits_low"] = row["kl_low"] / (d * math.log(2))
        row["bits_high"] = row["kl_high"] / (d * math.log(2))
        row["negative_gap"] = bool(np.any(gap_low[sig >= s0] < 0))
        rows.append(row)
    table = pd.DataFrame(rows)[["sigma0", "kl_low", "kl_high", "tail", "se_low", "se_high",
                                "bits_low", "bits_high", "negative_gap"]]
    integrand = pd.DataFrame({"sigma": sig, "gap_low": gap_low, "gap_high": gap_high,
                              "integrand_low": gap_low * inv_s2,
                              "integrand_high": gap_high * inv_s2})
    return KLResult(table=table, integrand=integrand)


def gaussian_kl(lam_p: torch.Tensor, lam_q: torch.Tensor, sigma0: float) -> float:
    """Closed-form ``KL(N(0, C_p + σ0²I) ‖ N(0, C_q + σ0²I))`` in nats for covariances with
    the same eigenvectors: ``Σ ½ (r − 1 − ln r)``, ``r = (λ + σ0²)/(λ' + σ0²)`` (SCIENCE.md §4)."""
    r = (lam_p.double() + sigma0**2) / (lam_q.double() + sigma0**2)
    return float((0.5 * (r - 1 - torch.log(r))).sum())
