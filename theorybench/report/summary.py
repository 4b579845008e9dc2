"""The report's first section, "At a glance": its headline numbers in one place.

It measures nothing of its own: every number is one of a later section's, gathered so that
a reader sees at once how far each network is from the optimum (worst MSE/U), where it
loses to a trivial denoiser (the identity, the mean image), its KL bound, whether it
converged, and what the memorization sweep found at its smallest and largest N.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .common import markdown_table, ratio_at
from .training import convergence_lines


def _losses(sigmas, everywhere: str) -> str:
    """Where a network is no better than a baseline: the σ, or ``everywhere`` for none."""
    if sigmas is None:
        return "–"
    return "not at σ = " + ", ".join(f"{v:g}" for v in sigmas) if len(sigmas) else everywhere


def _kl(row: dict | None) -> str:
    """A KL row as ``"v ± se"`` (ends equal: an exact reference) or ``"[low, high]"``."""
    if row is None:
        return "–"
    low, high = row["kl_low"], row["kl_high"]
    if math.isclose(low, high, rel_tol=1e-9):
        return f"{high:.3g} ± {row['se_high']:.2g}"
    return f"[{low:.3g}, {high:.3g}]"


def network_rows(standings: dict[str, list[dict]], kl_rows: list[dict],
                 sigma0s) -> list[dict]:
    """One row per entry and network: worst MSE/U (σ ≤ 1, every σ), where it is no better
    than the identity and, at σ ≥ 1, the mean image, the KL interval at each σ0 (nats) and
    its convergence flag.

    Parameters
    ----------
    standings : ``{entry label: main.standing(...)}``, in the report's order.
    kl_rows : the KL table's rows (dicts with ``entry``, ``network``, ``sigma0``,
        ``kl_low``, ``kl_high``, ``se_high``).
    sigma0s : the σ0 of the KL columns (pixel units).
    """
    kl = {(r["entry"], r["network"], r["sigma0"]): r for r in kl_rows}
    rows = []
    for entry, nets in standings.items():
        for st in nets:
            net = st["network"]
            identity = _losses(st["above_identity"], "every σ")
            if st["blind_above_identity"] is not None and len(st["above_identity"]):
                identity += (" (blind optimum: "
                             + _losses(st["blind_above_identity"], "every σ") + ")")
            row = {"entry": entry, "network": net,
                   "worst MSE/U, σ ≤ 1": ratio_at(st["ratio"], st["se"], st["sigma"],
                                                  st["worst_small"]),
                   "worst MSE/U": ratio_at(st["ratio"], st["se"], st["sigma"], st["worst"]),
                   "better than the identity": identity,
                   "better than the mean image, σ ≥ 1": _losses(st["above_mean"], "every σ")}
            for s0 in sigma0s:
                row[f"KL, σ0 = {s0:g}"] = _kl(kl.get((entry, net, s0)))
            row["converged"] = "–" if st["converged"] is None else st["converged"]
            rows.append(row)
    return rows


def _pct(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.0f} %"


def memorization_rows(table: pd.DataFrame) -> list[dict]:
    """Per entry of the memorization sweep (``memorization.csv``'s rows, less failed
    cells): copies at the smallest N and, at the largest, copies and images of the family
    (the networks S1 / S2, the family's posterior mean sampled alike, real held-out
    images)."""
    rows = []
    for entry, part in table.groupby("entry", sort=False):
        part = part[part["failed"].fillna("") == ""]  # as the section's verdict: N reached
        if not len(part):
            continue
        first, last = part.loc[part["N"].idxmin()], part.loc[part["N"].idxmax()]
        rows.append({
            "entry": entry,
            "copies, smallest N": f"N = {first['N']}: {_pct(first['mem S1'])} / "
                                  f"{_pct(first['mem S2'])} (held-out {_pct(first['mem held'])})",
            "copies, largest N": f"N = {last['N']}: {_pct(last['mem S1'])} / "
                                 f"{_pct(last['mem S2'])} (held-out {_pct(last['mem held'])})",
            "images of the family, largest N": (
                "–" if np.isnan(last["on S1"]) else
                f"{_pct(last['on S1'])} / {_pct(last['on S2'])} (posterior "
                f"{_pct(last['on post'])}, held-out {_pct(last['on held'])})")})
    return rows


def summary_section(standings: dict[str, list[dict]], kl_rows: list[dict], sigma0s,
                    training: list[dict], memorization: pd.DataFrame | None,
                    missing: list[str]) -> list[str]:
    """Markdown lines of the "At a glance" section (empty for a run without any network
    of the main study or of the memorization sweep).

    Parameters
    ----------
    standings, kl_rows, sigma0s : as :func:`network_rows`.
    training : the training table's rows (``training.training_rows``).
    memorization : ``memorization.csv``'s table, or None without a sweep.
    missing : what the main study lacks a stored result for (failed or not run), e.g.
        ``"disks (universal)"``, listed under the table.
    """
    rows = network_rows(standings, kl_rows, sigma0s)
    sweep = [] if memorization is None else memorization_rows(memorization)
    if not rows and not sweep:
        return []
    lines = ["## At a glance", ""]
    if rows:
        lines += ["The headline numbers of the sections below, gathered (no measure of this "
                  "section's own). Per entry and network: the worst MSE/U (± its standard "
                  "error) over σ ≤ 1 and over the whole grid (U: the exact MMSE where known, "
                  "else the tightest upper reference; MSE/U = 1 is the MMSE where U is "
                  "exact, below 1 better than every reference), the σ where the network is "
                  "no better than the identity or, at σ ≥ 1, than the mean image, the KL "
                  "bound in nats at each σ0 (`v ± se` where the MMSE is exact, else the "
                  "interval [B_low, B_high]), and the convergence flag (section Training).",
                  "", markdown_table(pd.DataFrame(rows), ".3g"), ""]
    if missing:
        lines += ["No stored result (failed or not run), so not in the table: "
                  + ", ".join(missing) + ".", ""]
    flagged = [r for r in training if r["converged"] is False]
    if flagged:
        lines += ["Networks still improving at the end of their training (their numbers "
                  "measure the training budget):", "", *convergence_lines(
                      [r for r in training if r["study"] in {f["study"] for f in flagged}]),
                  ""]
    if sweep:
        lines += ["Memorization → generalization: the fraction of the two networks' samples "
                  "(S1 / S2) that copy a training image, at the smallest and the largest N, "
                  "and at the largest the fraction that are images of the family (where the "
                  "family can fit its parameters), with the family's posterior mean sampled "
                  "alike and real held-out images as references:", "",
                  markdown_table(pd.DataFrame(sweep)), ""]
    return lines


__all__ = ["memorization_rows", "network_rows", "summary_section"]
