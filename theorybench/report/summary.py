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

from .common import identity_text, losses_text, markdown_table, ratio_at
from .memorization import finished, generalizes, nearest_text, percent
from .training import convergence_lines


def _nats(value: float) -> str:
    """Three significant digits, whole numbers from 100 on (no exponent)."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def kl_text(row: dict | None) -> str:
    """A KL row as ``"v ± se"`` (ends equal: an exact reference) or ``"[low, high]"``, with
    ``" (c clipped)"`` where the row's ``clipped_nats`` c is positive (MSE − U < 0 set to 0
    at some σ)."""
    if row is None:
        return "–"
    low, high = row["kl_low"], row["kl_high"]
    clipped = row.get("clipped_nats") or 0.0
    note = f" ({_nats(clipped)} clipped)" if math.isfinite(clipped) and clipped > 0 else ""
    if math.isclose(low, high, rel_tol=1e-9):
        return f"{_nats(high)} ± {row['se_high']:.2g}{note}"
    return f"[{_nats(low)}, {_nats(high)}]{note}"


def network_rows(standings: dict[str, list[dict]], kl_rows: list[dict],
                 sigma0s) -> list[dict]:
    """One row per entry and network: worst MSE/U (every σ, σ ≤ 1), where it is no better
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
            row = {"entry": entry, "network": net,
                   "worst MSE/U": ratio_at(st["ratio"], st["se"], st["sigma"], st["worst"]),
                   "worst MSE/U, σ ≤ 1": ratio_at(st["ratio"], st["se"], st["sigma"],
                                                  st["worst_small"]),
                   "better than the identity": identity_text(st),
                   "better than the mean image, σ ≥ 1": losses_text(st["above_mean"])}
            for s0 in sigma0s:
                row[f"B, σ0 = {s0:g}"] = kl_text(kl.get((entry, net, s0)))
            row["converged"] = "–" if st["converged"] is None else st["converged"]
            rows.append(row)
    return rows


def _copies(row) -> str:
    """A sweep row's copies: ``"N = n: S1 / S2 (held-out h)"``."""
    return (f"N = {row['N']}: {percent(row['mem S1'])} / {percent(row['mem S2'])} "
            f"(held-out {percent(row['mem held'])})")


def memorization_rows(table: pd.DataFrame) -> list[dict]:
    """Per entry of the memorization sweep (``memorization.csv``'s rows, less failed
    cells): copies at the smallest N and, at the largest, copies, the generalization
    criterion (the section's verdict: the two networks' samples closer to each other than
    either network's to its nearest training image, median centred cosines) and images of
    the family (the networks S1 / S2, the family's posterior mean sampled alike, real
    held-out images)."""
    rows = []
    for entry, part in table.groupby("entry", sort=False):
        part = finished(part)  # as the section's verdict: the N reached
        if not len(part):
            continue
        first, last = part.loc[part["N"].idxmin()], part.loc[part["N"].idxmax()]
        rows.append({
            "entry": entry,
            "copies, smallest N": _copies(first),
            "copies, largest N": _copies(last),
            "generalizes, largest N": f"{'yes' if generalizes(last) else 'no'} "
                                      f"({last['cross_cc']:.3f} between the networks, "
                                      f"{nearest_text(last)} to their nearest training "
                                      f"image, S1 / S2 net)",
            "images of the family, largest N": (
                "—" if np.isnan(last["on S1"]) else
                f"{percent(last['on S1'])} / {percent(last['on S2'])} (posterior "
                f"{percent(last['on post'])}, held-out {percent(last['on held'])})")})
    return rows


def rate_summary_rows(rates: list[dict]) -> list[dict]:
    """Per family with a rate law (the Rates section's least-squares rows): the slope of
    log MSE against log σ² of each network (± SE), the MMSE's secant slope bracket implied
    by L ≤ MMSE ≤ U, and the law's slope."""
    rows = []
    for r in rates:
        if r["table"] != "slope" or not r["fit"].startswith("LS"):
            continue
        row = {"entry": r["entry"], "σ": f"{r['σ from']:g}–{r['σ to']:g}"}
        for net in ("per-σ net", "universal net"):
            if net in r:
                row[net] = f"{r[net]:.3g} ± {r[f'{net} se']:.2g}"
        row["MMSE bracket"] = f"[{r['MMSE ≥']:.3g}, {r['MMSE ≤']:.3g}]"
        row.update({k: f"{v:.3g}" for k, v in r.items() if k.startswith("theory")})
        rows.append(row)
    return rows


def missing_entries(studies, standings: dict[str, list[dict]]) -> list[str]:
    """What :func:`network_rows` lacks, per study entry (``main.StudyData``) and with why,
    e.g. ``"disks (no stored universal network)"``."""
    missing = []
    for study in studies:
        parts = ([] if study.reference else ["no stored references"]) + [
            f"no stored {net} network" for net, frame in study.networks.items() if frame is None]
        if study.reference and not standings.get(study.label):
            parts.append("no exact or upper reference")
        missing += [f"{study.label} ({', '.join(parts)})"] if parts else []
    return missing


def summary_section(standings: dict[str, list[dict]], kl_rows: list[dict], sigma0s,
                    training: list[dict], memorization: pd.DataFrame | None,
                    missing: list[str], rates: list[dict],
                    seeds: str | None = None) -> list[str]:
    """Markdown lines of the "At a glance" section (empty for a run without any network
    of the main study or of the memorization sweep).

    Parameters
    ----------
    standings, kl_rows, sigma0s : as :func:`network_rows`.
    training : the training table's rows (``training.training_rows``).
    memorization : ``memorization.csv``'s table, or None without a sweep.
    missing : what the table lacks, with why, e.g. ``"disks (no stored universal
        network)"``, listed under it.
    rates : the Rates section's rows (:func:`rate_summary_rows` takes its slopes).
    seeds : the section "Across seeds"' count of its z (``seeds.z_summary``), or None
        without a compared run.
    """
    rows = network_rows(standings, kl_rows, sigma0s)
    sweep = [] if memorization is None else memorization_rows(memorization)
    if not rows and not sweep:
        return []
    lines = ["## At a glance", ""]
    if rows:
        lines += ["The headline numbers of the sections below, gathered (no measure of this "
                  "section's own). Per entry and network: the worst MSE/U (± its standard "
                  "error) over the whole grid and over σ ≤ 1 (U: the exact MMSE where known, "
                  "else the tightest upper reference; MSE/U = 1 is the MMSE where U is "
                  "exact, below 1 better than every reference), the σ where the network is "
                  "no better than the identity or, at σ ≥ 1, than the mean image (×r ± se: "
                  "the largest ratio of the two MSEs there, ± its paired standard error; "
                  "measured ratios, so a σ within noise of 1 may fall either side), the "
                  "bound B on the KL in nats at each σ0 (`B, σ0`: `v ± se` where the MMSE is "
                  "exact, else [B_low, B_high], whose upper end bounds the KL and whose lower "
                  "end does not bound it from below; per-σ rows integrate the gap between "
                  "the σ of separate networks, which no one sampler uses; standard errors of "
                  "the ends: `kl.csv`; `(c clipped)`: at some σ the network's MSE is below "
                  "U, where B_low counts 0 instead of the negative gap, c nats in all "
                  "(`clipped_nats`): a U loose there, or a network better than every "
                  "reference; B_low of two rows compare only where both were integrated "
                  "against U measured at their own σ: a row on the dense grid takes U "
                  "between the stored σ of a reference kept on a coarser grid from the "
                  "next stored σ, a looser U that lowers B_low with or without clipping; "
                  "the entry's section says at how many σ), "
                  "and the convergence flag (section Training); "
                  "`–`: not available (the entry's section says why).",
                  "", markdown_table(pd.DataFrame(rows), ".3g"), ""]
    if seeds:
        lines += [f"Across seeds (section Across seeds: the networks' MSE/U against the same "
                  f"study's at another seed, z = their difference over its standard error; "
                  f"the z of one run are correlated): {seeds}. The standard errors above "
                  f"count the test images and noise only: the values above are this seed's, "
                  f"and the section gives each network's at every seed.", ""]
    if missing:
        lines += ["Not in the table (a cell failed or not run, or no bound): " + ", ".join(missing)
                  + ".", ""]
    slopes = rate_summary_rows(rates)
    if slopes:
        lines += ["Rates (section Rates): the slope of log MSE against log σ² on the window "
                  "of the least-squares fit, per network (± SE), the MMSE's secant slope "
                  "bracket implied by L ≤ MMSE ≤ U, and the law's slope:", "",
                  markdown_table(pd.DataFrame(slopes)), ""]
    flagged = [r for r in training if r["converged"] is False]
    if flagged:
        lines += ["Networks still improving at the end of their training (their numbers "
                  "measure the training budget):", "", *convergence_lines(
                      [r for r in training if r["study"] in {f["study"] for f in flagged}]),
                  ""]
    if sweep:
        lines += ["Memorization → generalization: the fraction of the two networks' samples "
                  "(S1 / S2) that copy a training image, at the smallest and the largest N; "
                  "at the largest, whether they generalize (the section's criterion) and the "
                  "fraction that are images of the family (where the family can fit its "
                  "parameters), with the family's posterior mean sampled alike and real "
                  "held-out images as references:", "",
                  markdown_table(pd.DataFrame(sweep)), ""]
    return lines


__all__ = ["kl_text", "memorization_rows", "missing_entries", "network_rows",
           "rate_summary_rows", "summary_section"]
