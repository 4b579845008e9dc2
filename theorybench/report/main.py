"""Build ``reports/``: tables (markdown + CSV) and figures, from stored cell records only.

Per study entry: a log–log figure of per-pixel MSE against σ (the MMSE bracket as a band,
the networks as lines), where the networks stand against the references and baselines,
their generalization gap (networks trained on a finite set), the KL integrand, a
KL-interval table at several σ0, rate rows (C^α slopes, disks MSE/σ², shuffled against
base) and a row of clean / noisy / denoised images. Every table is also written as CSV.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np
import pandas as pd

import datasets_synth

from ..cache import atomic_write_bytes
from ..experiments.keys import entry_label
from ..figures import PALETTE, Panel, cached_figure, image_mosaic, plt
from ..kl import kl_bound, trapezoid_error_weights, trapezoid_weights
from .common import (
    all_converged,
    architectures,
    bracket,
    closing_inputs,
    curve_frame,
    elsewhere,
    flag,
    identity_text,
    image_size,
    largest,
    losses_text,
    markdown_table,
    objective_law,
    on_grid,
    preconditioned,
    ratio_at,
    slug,
    steps_text,
    training_steps_text,
    write_csv,
)
from .dimension import dimension_section
from .jacobian import jacobian_section
from .machines import machines_section
from .memorization import memorization_section
from .seeds import seeds_section
from .summary import missing_entries, summary_section
from .training import training_section

NETWORKS = ("per-sigma", "universal")
# the MSE figure's baselines, one line style each (all grey: they frame the bracket)
BASELINE_STYLES = {"identity": ":", "mean-image": "-.", "wavelet": (0, (5, 2))}

# The legends of the tables every entry section repeats, written once (section "How to read
# the entries"), each with the key of the table it explains.
LEGENDS = {
    "standing": (
        "**Where the networks stand.** U: the exact MMSE where known, else the tightest upper "
        "reference (the lowest upper bound at σ or at a larger σ, the MMSE not decreasing "
        "with σ, where it is lower by more than twice the standard error of the paired "
        "difference, not by noise; the entry's section says at how many σ it came from a "
        "larger σ; at σ itself likewise, the reference lowest at the most σ unless another is "
        "lower by as much); MSE/U below 1 means better than "
        "every reference; ± its standard error over the test images, paired, by the delta "
        "method. Where a network is no better than the "
        "identity or, at σ ≥ 1, the mean image: those σ and (×r ± se) the largest ratio of "
        "its MSE to that baseline's among them (± its standard error, paired: the same images "
        "and noise). A σ is listed where the measured ratio is at least 1: within about two "
        "standard errors of 1 it is a tie that the test images and noise decide, either way "
        "(\"every σ\" too)."),
    "gap": (
        "**Generalization gap** (entries with a finite training set): each network on the "
        "images it was trained on against the test images, at the per-σ networks' σ (± "
        "standard errors over the images, the two sets independent; `mse.csv`: kinds "
        "`network-train` and `baseline-train`). The ratio test/training mixes what a network "
        "fits of its own images with how much harder the test images are, and no column "
        "here separates the two at small σ. Beside it, baselines on the same training images "
        "and noise (the reference record's `curves_train`), each fitted to those images by "
        "little: the identity (MSE/σ² = 1 in expectation; its two values differ by the two "
        "noises, each the same at every σ: one noise draw per image, scaled by σ; "
        "`test/training, each over the identity`: the network's ratio with each "
        "set's MSE first divided by the identity's on the same images and noise, paired "
        "within each set, so that the two noises' difference cancels and, at small σ, most "
        "of the images' spread: a sharper test/training there), the mean image (its ratio: "
        "the test images' variance about μ̂ against the training images', their difficulty "
        "at large σ; the same at every σ) and the wavelet baseline (one threshold per σ; on "
        "small images most of its error at small σ is noise passed through, so its ratio "
        "there stays near the identity's and says little of the images). Where a network's "
        "MSE/σ² is below the identity's on its training images and above it on the test "
        "images, its loss to the identity comes with a gap between the two sets, as fitting "
        "its training set would produce; harder test images could too."),
    "kl": (
        "**KL bound** (SCIENCE.md §4b; Song et al. 2021, Thm 1), nats, at smoothing level "
        "σ0, for the reverse SDE driven by the network from N(μ̄, σ_max² I), σ_max = the top "
        "of the row's σ grid, μ̄ the constant image at the mean pixel value (SCIENCE.md "
        "§4b's μ̂; not the mean image μ̂ that centred networks subtract): `kl_low` = B_low = "
        "∫ max(0, MSE − U) "
        "σ⁻³ dσ, the lower end of the bound B (not a lower bound on the KL); `kl_high` = "
        "B_high = ∫ max(0, MSE − L) σ⁻³ dσ + `closing`, an upper bound on the smoothed KL up "
        "to the Monte Carlo error (`se_high`) and the quadrature error (`quad_err_high`); "
        "`closing` = E‖x − μ̄‖²/(2σ_max²) ≥ KL(p_σmax ‖ N(μ̄, σ_max² I)) (joint convexity), "
        "or, where `closing_exact`, that KL itself in closed form (`Distribution.start_kl`; "
        "the Gaussian field), then added to `kl_low` too; `se_*` standard errors over the "
        "test images (`se_high` with that of E‖x − μ̄‖² in `closing`; each σ's gap "
        "with the share of its standard error that its clipping at 0 keeps, sd(max(0, X))/se "
        "for X ~ N(gap, se²) at the measured gap: all of it many SE above 0, none far "
        "below); `bits_*` per pixel value; `clipped` (`clipped_nats`): MSE − U < 0 set to 0 "
        "at some σ (what that added "
        "to kl_low; `clipped_max` in kl.csv: the largest U − MSE so set, a total squared "
        "error over the pixels; MSE − L < 0 is set to 0 alike in kl_high, and where noise "
        "puts L above U "
        "kl_high uses U, so kl_low ≤ kl_high). `grid`: σ values integrated (trapezoid in "
        "ln σ: between them the curves are interpolated, not measured); `quad_err_low`, "
        "`quad_err_high`: the estimated quadrature error of each end (the error itself "
        "may have either sign): the integrand h = gap·σ⁻² in u = ln σ, less its straight "
        "line between grid points, integrated over each segment, with h″ linear through "
        "second differences of h, the segments' estimates added in absolute value (no "
        "cancellation between segments credited; each segment's estimate exact where h "
        "is cubic in ln σ, on 4 or more σ; on the per-σ networks' 8 σ a rough guide: for "
        "an integrand steep in ln σ, 0.8–2.3 times the true error in `theorybench.kl`'s "
        "examples; that coarse grid also interpolates between networks: compare the "
        "universal network's rows, integrated on the dense grid); "
        "`–` (NaN in kl.csv) where that end's bound, on the σ the estimate reads (from the "
        "grid σ below σ0 up), takes a value from another σ (U from a larger σ, L from a "
        "smaller: the entry's section says where) or is missing at some of them (U = ∞ above "
        "a reference's grid, L = 0 below it; the high end also where L > U and U jumps), so "
        "that its integrand jumps there: the trapezoid's error at a jump, of the order of "
        "the jump times the segment, is not estimated; `–` also on a grid of 2 σ. "
        "`converged`: every network behind the row passed the convergence check (section "
        "Training)."),
    "blind": (
        "`blind optimum` (KL rows of the entries that have one): the best denoiser that does "
        "not see σ (kind `blind`, the optimum for σ drawn with density ∝ σ⁻³ on the "
        "universal networks' range): at σ0 = σ_min its `kl_high − closing` = ∫ max(0, MSE − "
        "MMSE) σ⁻³ dσ is a floor under the same quantity of every universal network (the "
        "price of not knowing σ), up to the Monte Carlo and quadrature errors of both (it "
        "minimizes the integral over σ, not its trapezoid on this grid); its rows at larger "
        "σ0 are indicative."),
}


def legend_section(used: set[str]) -> list[str]:
    """The section that explains, once, the tables the entry sections share (the keys of
    :data:`LEGENDS` in ``used``, in that order); none where no entry has such a table."""
    shown = [text for key, text in LEGENDS.items() if key in used]
    if not shown:
        return []
    return ["## How to read the entries", "",
            "Every entry section below has the tables this section explains (where the entry "
            "has what they measure).", "", *[line for text in shown for line in (text, "")]]


def network_curve(records: list[dict], field: str = "curve") -> pd.DataFrame | None:
    """The per-σ family (one network per σ, each at its own σ) or a universal curve, from
    the records' ``result[field]`` (``curve``: test images; ``curve_train``: the
    network's training images); None without records."""
    if not records:
        return None
    curves = [r["result"][field] for r in records]
    merged = {key: [v for c in curves for v in c[key]] for key in ("sigma", "mse", "se", "errors")}
    order = np.argsort(merged["sigma"])
    return curve_frame({**{k: [v[i] for i in order] for k, v in merged.items()},
                        "d": curves[0]["d"]})


def _log_mean_se(vectors, coefs) -> float:
    """SE of ``Σ c_k log mean(e_k)`` over the test images (delta method).

    ``vectors``: per-image errors ``e_k`` (n,) of the means; those of one length are paired
    (same images and noise for every curve of an entry: their covariance is used), else
    treated as independent. NaN with fewer than 2 images or a non-positive/infinite mean.
    """
    vectors = [np.asarray(v, dtype=float) for v in vectors]
    means = np.array([v.mean() for v in vectors]) if vectors else np.array([])
    if (not vectors or min(v.size for v in vectors) < 2 or not np.all(np.isfinite(means))
            or np.any(means <= 0) or not all(np.all(np.isfinite(v)) for v in vectors)):
        return math.nan
    grad = np.asarray(coefs, dtype=float) / means
    if len({v.size for v in vectors}) == 1:
        cov = np.atleast_2d(np.cov(np.stack(vectors), ddof=1)) / vectors[0].size
        return float(math.sqrt(max(grad @ cov @ grad, 0.0)))
    return float(math.sqrt(sum(g**2 * v.var(ddof=1) / v.size
                               for g, v in zip(grad, vectors, strict=True))))


def ratio_se(num, den) -> np.ndarray | None:
    """Standard error (n_σ,) of the ratio of mean errors ``r = mean(num)/mean(den)`` per σ,
    from per-image errors (n_σ, n) on the same images and noise (paired): ``r`` times the
    SE of ``log r`` (:func:`_log_mean_se`, delta method). None when the two are not paired
    (absent, or of different shapes) or hold fewer than 2 images; NaN where a mean is 0 or
    infinite."""
    if num is None or den is None:
        return None
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if num.shape != den.shape or num.ndim != 2 or num.shape[1] < 2:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num.mean(1) / den.mean(1)
    return np.array([r * _log_mean_se([a, b], [1.0, -1.0])
                     for r, a, b in zip(ratio, num, den, strict=True)])


def log_slope(sigma, mse, lo: float, hi: float, errors=None) -> dict:
    """Least-squares slope of log MSE against log σ² on σ ∈ [lo, hi] (SCIENCE.md §5).

    Returns ``{"slope", "se", "se_fit", "points", "lo", "hi"}``: ``se`` is the standard error
    from the test images (delta method: slope = Σ w_i log m_i with the least-squares weights
    w, m_i the mean over images of ``errors[i]`` (len(sigma), n), whose covariance across
    σ — same images and noise at every σ — is used; NaN without ``errors``); ``se_fit`` the
    classical residual SE ``s/√Σ(x − x̄)²`` (≥ 3 points), which measures how far the curve
    is from a power law on the window (curvature), not noise. Points with MSE ≤ 0 or
    infinite (bounds extended beyond their grid) are left out; ``lo``/``hi`` are the
    σ actually used.
    """
    sigma, mse = np.asarray(sigma, dtype=float), np.asarray(mse, dtype=float)
    keep = ((sigma >= lo * (1 - 1e-9)) & (sigma <= hi * (1 + 1e-9)) & np.isfinite(mse)
            & (mse > 0))
    out = {"slope": math.nan, "se": math.nan, "se_fit": math.nan, "points": int(keep.sum()),
           "lo": math.nan, "hi": math.nan}
    if keep.sum() < 2:
        return out
    x, y = np.log(sigma[keep] ** 2), np.log(mse[keep])
    w = (x - x.mean()) / np.sum((x - x.mean()) ** 2)  # slope = w @ y
    slope = float(w @ y)
    out.update(slope=slope, lo=float(sigma[keep].min()), hi=float(sigma[keep].max()))
    if keep.sum() >= 3:
        resid = y - (y.mean() + slope * (x - x.mean()))
        out["se_fit"] = float(math.sqrt(resid @ resid / (keep.sum() - 2)
                                        / np.sum((x - x.mean()) ** 2)))
    if errors is not None:
        errors = np.asarray(errors, dtype=float)[keep]
        out["se"] = _log_mean_se(list(errors), w)
    return out


def secant_bracket(lower: pd.DataFrame, upper: pd.DataFrame, sigma_a: float,
                   sigma_b: float) -> dict:
    """Bracket on the secant slope of log MMSE vs log σ² over [σa, σb] from L ≤ MMSE ≤ U.

    ``[(log L(σb) − log U(σa)), (log U(σb) − log L(σa))] / (log σb² − log σa²)``, each end
    with its SE over the test images (delta method, paired errors). NaN where L ≤ 0 or U is
    infinite. ``lower``/``upper``: curves with per-image errors in attrs, both σ on their grid.
    """
    low_f, up_f = on_grid(lower, [sigma_a, sigma_b]), on_grid(upper, [sigma_a, sigma_b])
    span = math.log(sigma_b**2) - math.log(sigma_a**2)
    L, U = low_f["mse"].to_numpy(), up_f["mse"].to_numpy()
    eL, eU = low_f.attrs["errors"], up_f.attrs["errors"]
    with np.errstate(divide="ignore", invalid="ignore"):
        low = (math.log(L[1]) - math.log(U[0])) / span if L[1] > 0 and U[0] < np.inf else math.nan
        high = (math.log(U[1]) - math.log(L[0])) / span if L[0] > 0 and U[1] < np.inf else math.nan
    return {"low": float(low), "high": float(high),
            "se_low": _log_mean_se([eL[1], eU[0]], [1 / span, -1 / span]),
            "se_high": _log_mean_se([eU[1], eL[0]], [1 / span, -1 / span])}


class StudyData:
    """Records of one study entry, grouped: references, per-σ networks, universal network,
    and, with a finite training set, the networks' and the control baselines' curves on it."""

    def __init__(self, name: str, params: dict, records: list[dict]):
        self.name, self.params = name, params
        self.label = entry_label(name, params)
        self.reference = next((r for r in records if r["spec"]["kind"] == "reference"
                               and "result" in r), None)
        nets = [r for r in records if r["spec"]["kind"] == "network" and "result" in r]
        self.failed = [r["failed"] for r in records  # analyses list theirs in their sections
                       if "failed" in r and r["spec"]["kind"] in ("reference", "network")]
        self.networks = {mode: network_curve([r for r in nets
                                               if r["spec"]["train"]["mode"] == mode])
                         for mode in NETWORKS}
        trained = [r for r in nets if r["result"].get("curve_train")]  # finite training sets
        self.on_training_images = {
            mode: network_curve([r for r in trained if r["spec"]["train"]["mode"] == mode],
                                "curve_train") for mode in NETWORKS}
        stored = self.reference["result"].get("curves_train", {}) if self.reference else {}
        self.controls_on_training_images = {name: curve_frame(c) for name, c in stored.items()}
        self.examples = [r["result"]["examples"] for r in nets
                         if r["spec"]["train"]["mode"] == "per-sigma"]
        flags = {mode: [r["result"].get("converged") for r in nets
                        if r["spec"]["train"]["mode"] == mode] for mode in NETWORKS}
        self.converged = {mode: all_converged(f) for mode, f in flags.items()}
        self.recipes = {mode: [_recipe(r) for r in nets if r["spec"]["train"]["mode"] == mode]
                        for mode in NETWORKS}


PER_NETWORK = {"sigma", "seed", "monitor_sigmas"}  # settings each network of a kind sets apart


def _recipe(record: dict) -> dict:
    """How one network cell was trained, as :func:`recipe_differences` compares it: its
    training settings but :data:`PER_NETWORK`, its architecture (``net``), whether it
    started from another network (``warm start``), whether it was trained in the
    preconditioned form and its blind shrinkage's calibrated threshold (where it has one);
    each value as sorted JSON."""
    spec = record["spec"]
    settings = {k: v for k, v in spec["train"].items() if k not in PER_NETWORK}
    settings.update(net=spec.get("net"), **{"warm start": bool(spec.get("init_key")),
                                        "preconditioned": preconditioned(record["result"])})
    if "shrink_threshold" in record["result"]:  # blind shrinkage's θ, calibrated per family
        settings["shrink threshold"] = record["result"]["shrink_threshold"]
    return {k: json.dumps(v, sort_keys=True) for k, v in settings.items()}


def recipe_differences(a: StudyData, b: StudyData) -> list[str]:
    """How the networks of two entries were trained differently, per kind of network: each
    setting of :func:`_recipe` that both record and whose values differ (``"universal
    steps 2000 against 4000"``: the values each entry's networks took), the count trained
    in the preconditioned form where it differs, and a kind only one entry has."""
    out = []
    for mode in NETWORKS:
        mine, theirs = a.recipes[mode], b.recipes[mode]
        if bool(mine) != bool(theirs):
            out.append(f"{mode} networks in one only")
        if not mine or not theirs:
            continue
        for key in sorted(set.intersection(*(set(r) for r in mine + theirs)) - {"preconditioned"}):
            va, vb = ({r[key] for r in recipes} for recipes in (mine, theirs))
            if va != vb:
                out.append(f"{mode} {key} {_values(va)} against {_values(vb)}")
        pa, pb = (sum(r["preconditioned"] == "true" for r in recipes)
                  for recipes in (mine, theirs))
        if pa != pb:
            out.append(f"{mode} preconditioned {pa} of {len(mine)} against {pb} of "
                       f"{len(theirs)}")
    return out


def _values(values: set[str]) -> str:
    """A setting's JSON values, numbers in numeric order, joined by ``" / "``."""
    def order(v):
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)
    return " / ".join(sorted(values, key=order))


@cached_figure
def _figure_mse(study: StudyData, refs: dict):
    fig, ax = plt.subplots(figsize=(6, 4.2))
    palette = PALETTE
    if "exact" in refs:
        e = refs["exact"]
        ax.plot(e.sigma, e.mse, "k-", lw=2, label="MMSE (exact)")
    else:
        lo, up = refs["lower"], refs["upper"]
        ax.fill_between(up.sigma, np.maximum(lo.mse, 1e-12), up.mse, color="0.8",
                        label="MMSE bracket [L, U]")
        ax.plot(up.sigma, up.mse, "k-", lw=1, label="U (tightest upper reference)")
        if lo.mse.max() > 0:
            ax.plot(lo.sigma, lo.mse, "k--", lw=1, label="L (tightest lower reference)")
    for name, curve in study.reference["result"]["curves"].items():
        if curve["kind"] == "upper" and name in BASELINE_STYLES:
            ax.plot(curve["sigma"], curve["mse"], linestyle=BASELINE_STYLES[name], color="0.45",
                    lw=1, label=name)
        elif curve["kind"] == "blind":
            ax.plot(curve["sigma"], curve["mse"], linestyle=(0, (3, 1, 1, 1, 1, 1)), color="0.2",
                    lw=1.2, label=f"{name} (optimal without σ)")
    for i, net in enumerate(NETWORKS):
        frame = study.networks[net]
        if frame is not None:
            ax.errorbar(frame.sigma, frame.mse, yerr=2 * frame.se, marker="o", ms=3,
                        color=palette[i], label=f"network ({net})")
    ax.set(xscale="log", yscale="log", xlabel="σ (pixel units)", ylabel="MSE per pixel",
           title=study.label)
    ax.legend(fontsize=7)
    return fig


@cached_figure
def _figure_kl(study: StudyData, integrands: dict):
    fig, ax = plt.subplots(figsize=(6, 3.6))
    palette = PALETTE
    for i, (net, frame) in enumerate(integrands.items()):
        ax.fill_between(frame.sigma, frame.integrand_low, frame.integrand_high, alpha=0.3,
                        color=palette[i])
        ax.plot(frame.sigma, frame.integrand_high, "-o", ms=3, color=palette[i],
                label=f"{net}: (MSE_θ − L)/σ²")
        ax.plot(frame.sigma, frame.integrand_low, "--", color=palette[i],
                label=f"{net}: max(0, MSE_θ − U)/σ²")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xscale="log", xlabel="σ", ylabel="KL density in ln σ (nats)",
           title=f"KL integrand — {study.label}")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=7)
    return fig


@cached_figure
def _figure_examples(examples: list[dict]):
    if not examples:
        return None
    chosen = sorted(examples, key=lambda e: e["sigma"][0])
    chosen = [chosen[i] for i in sorted({0, len(chosen) // 2, len(chosen) - 1})]
    clean = np.asarray(chosen[0]["clean"])[0, 0]
    lo, hi = np.percentile(clean, [1, 99]) if clean.std() > 0 else (0, 1)
    hi = hi if hi > lo else lo + 1
    panels = [Panel(clean, "clean", "gray", lo, hi)]
    for e in chosen:
        panels += [Panel(np.asarray(e["noisy"][0])[0, 0], f"noisy σ={e['sigma'][0]:.3g}",
                         "gray", lo, hi),
                   Panel(np.asarray(e["denoised"][0])[0, 0], "denoised", "gray", lo, hi)]
    return image_mosaic([panels], inches=1.3)


def standing(study: StudyData, refs: dict) -> list[dict]:
    """Where each network of an entry stands on its σ grid, as numbers: one dict per
    network with ``network``, ``sigma`` (its grid, pixel units), ``ratio`` (MSE/U per σ;
    U: the exact MMSE where known, else the tightest upper reference, as in the KL bracket;
    below 1 the network beats every reference, which only an upper U allows), ``se`` (its
    standard error per σ, paired images, or None), ``worst`` and ``worst_small`` (the
    indices of the largest finite ratio over the grid and over σ ≤ 1, None without one),
    where it is no better than a baseline (:func:`losses`): ``above_identity``,
    ``above_mean`` (σ ≥ 1 only: the mean image, the large-σ limit of the MMSE; None
    without that baseline or without σ ≥ 1), and, for the universal network of an entry
    with the blind optimum (kind ``blind``), ``blind_above_identity``, where that optimum
    is no better than the identity either (a blind denoiser cannot do better there; else
    None), ``train_above_identity``, where on its own training images it is no better than
    the identity on the same images and noise (the reference's ``curves_train``; None
    without them); ``converged``, its training's flag (None: not monitored). A network
    without a stored curve (a failed cell) has no dict."""
    upper = refs.get("exact", refs.get("upper"))
    if upper is None:
        return []
    curves = study.reference["result"]["curves"]
    baselines = {n: curve_frame(curves[n]) for n in ("identity", "mean-image") if n in curves}
    blind = [curve_frame(c) for c in curves.values() if c.get("kind") == "blind"]
    identity_train = study.controls_on_training_images.get("identity")
    rows = []
    for net, frame in study.networks.items():
        if frame is None:
            continue
        grid, mse = frame["sigma"].to_numpy(), frame["mse"].to_numpy()
        bound = on_grid(upper, grid)
        ratio = mse / bound["mse"].to_numpy()
        finite = np.isfinite(ratio)
        row = {"network": net, "sigma": grid, "ratio": ratio,
               "se": ratio_se(frame.attrs.get("errors"), bound.attrs.get("errors")),
               "worst": largest(ratio, finite),
               "worst_small": largest(ratio, finite & (grid <= 1)),
               "above_identity": None, "above_mean": None, "blind_above_identity": None,
               "train_above_identity": None, "converged": study.converged.get(net)}
        train = study.on_training_images.get(net)
        if train is not None and identity_train is not None:
            row["train_above_identity"] = losses(train, identity_train)
        for name, where, key in (("identity", np.ones(len(grid), dtype=bool), "above_identity"),
                                 ("mean-image", grid >= 1.0, "above_mean")):
            if name in baselines and where.any():
                row[key] = losses(frame, baselines[name], where)
                if name == "identity" and net == "universal" and blind:
                    row["blind_above_identity"] = losses(on_grid(blind[0], grid),
                                                         baselines[name])
        rows.append(row)
    return rows


def paired_ratio(frame: pd.DataFrame,
                 baseline: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """The ratio of the curve ``frame``'s MSE to ``baseline``'s at each σ of ``frame``
    (``baseline``: a curve on the same images and noise whose grid holds those σ; ValueError
    otherwise) and its standard error (:func:`ratio_se`, paired; None without per-image
    errors)."""
    base = on_grid(baseline, frame["sigma"].to_numpy())
    return (frame["mse"].to_numpy() / base["mse"].to_numpy(),
            ratio_se(frame.attrs.get("errors"), base.attrs.get("errors")))


def losses(frame: pd.DataFrame, baseline: pd.DataFrame, where=None) -> dict:
    """Where the curve ``frame`` is no better than ``baseline`` (:func:`paired_ratio`),
    among the σ of the mask ``where`` (None: all): ``{"sigma", "ratio", "se"}``, the σ
    (pixel units), the ratio of the two MSEs there and its standard error (None without
    per-image errors)."""
    grid = frame["sigma"].to_numpy()
    ratio, se = paired_ratio(frame, baseline)
    lose = ratio >= 1.0
    if where is not None:
        lose &= where
    return {"sigma": grid[lose], "ratio": ratio[lose], "se": None if se is None else se[lose]}


def _at(frame: pd.DataFrame, sigma: float) -> tuple[float, float] | None:
    """(mse, se) of a curve at ``sigma`` (None where it has no value there)."""
    hit = frame[np.isclose(frame["sigma"], sigma)]
    return None if hit.empty else (float(hit["mse"].iloc[0]), float(hit["se"].iloc[0]))


def _ratio(test: tuple[float, float], train: tuple[float, float]) -> str:
    """``test/train ± SE`` of two independent (mse, se) values (delta method)."""
    ratio = test[0] / train[0]
    return f"{ratio:.4g} ± {ratio * math.hypot(test[1] / test[0], train[1] / train[0]):.2g}"


def _versus(frame: pd.DataFrame, baseline: pd.DataFrame,
            sigma: float) -> tuple[float, float] | None:
    """(ratio, se) of ``frame``'s MSE over ``baseline``'s at ``sigma`` (:func:`paired_ratio`);
    None where either lacks that σ or per-image errors."""
    try:
        ratio, se = paired_ratio(on_grid(frame, [sigma]), baseline)
    except ValueError:
        return None
    return None if se is None else (float(ratio[0]), float(se[0]))


def generalization_rows(study: StudyData, sigmas) -> list[dict]:
    """Per network trained on a finite set and σ of ``sigmas`` on its grid: per-pixel
    MSE/σ² on its training images and on the test images, and their ratio test/training,
    each as ``value ± standard error`` (the two curves are independent: images and noise
    apart; the ratio's SE by the delta method); then, from the reference cell's
    ``curves_train`` (the control baselines on the same training images and noise as the
    network's), the identity's MSE/σ² on both sets, the network's ratio test/training
    with each set's MSE first divided by the identity's on the same images and noise
    (paired within each set: the two noises' difference cancels, and at small σ most of
    the images' spread), and each other control's ratio test/training (what each
    measures: ``cells.CONTROLS``)."""
    controls = {name: (curve_frame(study.reference["result"]["curves"][name]), train)
                for name, train in study.controls_on_training_images.items()}
    rows = []
    for net, train in study.on_training_images.items():
        test = study.networks.get(net)
        if train is None or test is None:
            continue
        for sigma in train["sigma"]:
            on_test, on_train = _at(test, sigma), _at(train, sigma)
            if on_test is None or not np.isclose(sigmas, sigma).any():
                continue
            s2 = sigma**2
            row = {"network": net, "σ": sigma,
                   "MSE/σ², training images": f"{on_train[0] / s2:.4g} ± {on_train[1] / s2:.2g}",
                   "MSE/σ², test images": f"{on_test[0] / s2:.4g} ± {on_test[1] / s2:.2g}",
                   "test/training": _ratio(on_test, on_train)}
            for name, (c_test, c_train) in controls.items():
                a, b = _at(c_test, sigma), _at(c_train, sigma)
                if a is None or b is None:
                    continue
                if name == "identity":
                    row["identity MSE/σ², training / test images"] = (f"{b[0] / s2:.4g} / "
                                                                      f"{a[0] / s2:.4g}")
                    paired = _versus(test, c_test, sigma), _versus(train, c_train, sigma)
                    if None not in paired:
                        row["test/training, each over the identity"] = _ratio(*paired)
                else:
                    row[f"{name} test/training"] = _ratio(a, b)
            rows.append(row)
    return rows


def standing_rows(standings: list[dict]) -> list[dict]:
    """The table of :func:`standing`'s dicts: per network its worst MSE/U (± SE, at σ),
    over the grid and over σ ≤ 1, and where it is no better than the identity (with the
    blind optimum's, where the entry has one, and its own on its training images) or, for
    σ ≥ 1, than the mean image (:func:`~.common.losses_text`)."""
    rows = []
    for st in standings:
        ratio, se, grid = st["ratio"], st["se"], st["sigma"]
        row = {"network": st["network"], "worst MSE/U": ratio_at(ratio, se, grid, st["worst"])}
        if st["worst_small"] is not None:
            row["worst MSE/U, σ ≤ 1"] = ratio_at(ratio, se, grid, st["worst_small"])
        if st["above_identity"] is not None:
            row["better than the identity"] = identity_text(st)
        if st["above_mean"] is not None:
            row["better than the mean image, σ ≥ 1"] = losses_text(st["above_mean"])
        rows.append(row)
    return rows


def _jumps(row: dict, bounds: dict, grid: np.ndarray) -> dict:
    """``quad_err_low``/``quad_err_high`` set to NaN where that end's integrand may jump on
    the σ its estimate reads (every σ of non-zero weight in :func:`~theorybench.kl.
    trapezoid_weights` or :func:`~theorybench.kl.trapezoid_error_weights` from σ0): its bound
    (U for the low end, L for the high end, an exact MMSE for both) holds a value taken from
    another σ there (:func:`~.common.elsewhere`), or no bound at some of those σ and one at
    others (U = ∞ above a reference's grid, L = 0 below it); the high end also where U's
    integrand jumps and L > U (B_high takes U there). The estimate does not cover a jump
    (:mod:`theorybench.kl`)."""
    u, u0 = np.log(grid), math.log(row["sigma0"])
    read = trapezoid_weights(u, u0) != 0
    if len(grid) >= 3:
        read |= (trapezoid_error_weights(u, u0) != 0).any(axis=0)

    def jumps(name: str, absent) -> bool:
        bound = bounds.get(name, bounds.get("exact"))
        if bound is None:
            return False
        gone = absent(bound["mse"].to_numpy())[read]
        return bool(elsewhere(bound)[read].any() or (gone.any() and not gone.all()))

    low = jumps("upper", lambda mse: ~np.isfinite(mse))
    high = jumps("lower", lambda mse: mse == 0)
    if low and {"lower", "upper"} <= set(bounds):
        high |= bool((bounds["lower"]["mse"] > bounds["upper"]["mse"]).to_numpy()[read].any())
    return {f"quad_err_{side}": math.nan for side, jump in (("low", low), ("high", high))
            if jump}


def _own_values(bound: pd.DataFrame) -> pd.DataFrame:
    """A bound with NaN MSE at the σ where its value was measured at another σ
    (:func:`~.common.elsewhere`): a slope through such a value measures no estimator, and
    two σ sharing one value would give a slope of 0 ± 0; the bound's secant bracket keeps
    every value."""
    borrowed = elsewhere(bound)
    if not borrowed.any():
        return bound
    out = bound.copy()
    out.loc[borrowed, "mse"] = math.nan
    return out


def rate_rows(study: StudyData, refs: dict, preset) -> list[dict]:
    """Rates and summaries of SCIENCE.md §5 for this entry, as rows of several tables.

    Every row has a ``table`` key: ``"slope"`` (a family with a ``rate_law``, e.g. C^α: per
    curve, the least-squares slope of log MSE vs log σ² on ``preset.rate_range`` and the
    local secant slope on each interval of the coarse grid, each ± its SE over the test
    images by the delta method of :func:`log_slope` (the references through their own values
    only, :func:`_own_values`; no window slope for a curve that lacks one of the window's σ);
    the MMSE secant bracket implied by
    L ≤ MMSE ≤ U, :func:`secant_bracket`; the law's slope, α/(α+1), and its component's,
    the Wiener slope of the region fields alone), ``"note"`` (whether the law's slope is
    reachable on this window),
    ``"ratio"`` (every entry: MSE/U and MSE/L of each network per σ of the coarse grid, SE
    by the delta method with paired images) and ``"manifold"`` (a family of intrinsic
    dimension k < d, as disks: total MSE/σ² at the smallest σ against k).
    """
    rows = []
    nets = {n: f for n, f in study.networks.items() if f is not None}
    ref_curves = study.reference["result"]["curves"] if study.reference else {}
    if "per-sigma" in nets:  # the coarse grid: where every curve has genuine values
        grid = nets["per-sigma"]["sigma"].to_numpy()
    else:
        grid = np.asarray(min((c["sigma"] for c in ref_curves.values()), key=len,
                              default=[]), dtype=float)
    lower = refs.get("exact", refs.get("lower"))
    upper = refs.get("exact", refs.get("upper"))

    def aligned(frame):
        try:
            return on_grid(frame, grid)
        except ValueError:
            return None

    def log_ratio(a, b, i):
        m, r = float(a["mse"].iloc[i]), float(b["mse"].iloc[i])
        if not (0 < r < math.inf) or m <= 0:
            return math.nan, math.nan
        se = _log_mean_se([a.attrs["errors"][i], b.attrs["errors"][i]], [1.0, -1.0])
        return m / r, m / r * se

    lo_ref, up_ref = aligned(lower), aligned(upper)
    for net, frame in nets.items():
        f = aligned(frame)
        if f is None or lo_ref is None:
            continue
        for i, sig in enumerate(grid):
            ru, su = log_ratio(f, up_ref, i)
            rl, sl = log_ratio(f, lo_ref, i)
            rows.append({"table": "ratio", "entry": study.label, "network": net, "sigma": sig,
                         "MSE/U": ru, "se(MSE/U)": su, "MSE/L": rl, "se(MSE/L)": sl})
    law = datasets_synth.get(study.name, **study.params).rate_law()
    if law is not None and len(grid) >= 2 and lo_ref is not None:
        from ..experiments.presets import PRESETS

        theory, field_slope = law["slope"], law["component_slope"]
        theory_col, field_col = law["label"], f"{law['component']} Wiener"
        curves = {"per-σ net": aligned(nets["per-sigma"]) if "per-sigma" in nets else None,
                  "universal net": aligned(nets["universal"]) if "universal" in nets else None}
        curves.update({"MMSE": _own_values(lo_ref)} if "exact" in refs
                      else {"L": _own_values(lo_ref), "U": _own_values(up_ref)})
        curves = {k: v for k, v in curves.items() if v is not None}

        paper = int(PRESETS["paper"].size)

        lo, hi = preset.rate_range
        inside = grid[(grid >= lo * (1 - 1e-9)) & (grid <= hi * (1 + 1e-9))]
        spans = ([("window", inside[0], inside[-1])] if len(inside) >= 2 else []) + [
            ("local", a, b) for a, b in zip(grid[:-1], grid[1:], strict=True)]
        size = int(study.params.get("size", lower["d"].iloc[0] ** 0.5))
        window = None
        for kind, a, b in spans:
            row = {"table": "slope", "entry": study.label,
                   "fit": f"LS, {len(inside)} σ" if kind == "window" else "secant",
                   "σ from": a, "σ to": b}
            for label, f in curves.items():
                res = log_slope(f["sigma"], f["mse"], a, b, f.attrs["errors"])
                if kind == "window" and res["points"] < len(inside):
                    res = {**res, "slope": math.nan, "se": math.nan, "se_fit": math.nan}
                row[label], row[f"{label} se"] = res["slope"], res["se"]
                if kind == "window":
                    row[f"{label} se_fit"] = res["se_fit"]
            br = secant_bracket(lo_ref, up_ref, a, b)
            row.update({"MMSE ≥": br["low"], "se ≥": br["se_low"], "MMSE ≤": br["high"],
                        "se ≤": br["se_high"], theory_col: theory,
                        field_col: field_slope(size, a, b)})
            rows.append(row)
            window = row if kind == "window" else window
        if window is not None:
            a, b = window["σ from"], window["σ to"]
            low = window["MMSE ≥"] - 2 * np.nan_to_num(window["se ≥"])
            high = window["MMSE ≤"] + 2 * np.nan_to_num(window["se ≤"])
            where = (f"On σ ∈ [{a:.3g}, {b:.3g}] the MMSE secant slope is in "
                     f"[{window['MMSE ≥']:.3g}, {window['MMSE ≤']:.3g}]")
            if low <= theory <= high:
                note = f"{where}, which contains the {theory_col} = {theory:.3g}."
                if low <= window[field_col] <= high:
                    note += (f" It also contains the Wiener slope of the {law['component']} "
                             f"alone, {window[field_col]:.3g}: on this window the bracket does "
                             f"not tell the law from that estimator's rate.")
            elif low > theory:
                note = (f"{where}: above the {theory_col} = {theory:.3g} on this window "
                        f"(where the pixel grid is resolved the slope tends to 1, SCIENCE.md "
                        f"§5).")
            else:
                note = (f"{where}: below the {theory_col} = {theory:.3g}, unreachable at "
                        f"this image size ({size}×{size}), where the {law['component']} "
                        f"dominate the MSE: their own Wiener slope on this window is "
                        f"{window[field_col]:.3g}.")
                if size < paper:
                    note += (f" Larger images move toward it (preset paper, {paper}×{paper}: "
                             f"the fields' Wiener slope there is {field_slope(paper, a, b):.3g}"
                             f"); no run at a larger size has been measured.")
            rows.append({"table": "note", "entry": study.label, "note": note})
    dim = study.reference["result"].get("intrinsic_dim") if study.reference else None
    if dim is not None and refs and dim < int(next(iter(refs.values())).d.iloc[0]):
        # a manifold of dimension k < d: total MSE/σ² → k at small σ (SCIENCE.md §5)
        for label, f in {**{f"network ({n})": f for n, f in nets.items()},
                         **{f"MMSE {k}": f for k, f in refs.items() if f["mse"].max() > 0}}.items():
            k = int(np.argmin(f.sigma.to_numpy()))
            scale = float(f.d.iloc[k] / f.sigma.iloc[k] ** 2)
            rows.append({"table": "manifold", "entry": study.label,
                         "measure": f"total MSE/σ² at σ={f.sigma.iloc[k]:.3g}", "curve": label,
                         "value": float(f.mse.iloc[k]) * scale,
                         "se": float(f.se.iloc[k]) * scale, "theory": float(dim)})
    return rows


def base_studies(studies: list[StudyData]) -> dict:
    """``{label: study of its base}`` for each entry whose distribution is a conjugate of
    another studied one (``Distribution.reference_base``: shuffled faces → faces)."""
    dists = {s.label: datasets_synth.get(s.name, **s.params) for s in studies}
    by_dist = {repr(d): label for label, d in dists.items()}
    by_label = {s.label: s for s in studies}
    out = {}
    for label, dist in dists.items():
        base = dist.reference_base()
        if base is not None and repr(base) in by_dist:
            out[label] = by_label[by_dist[repr(base)]]
    return out


def shuffled_rows(studies: list[StudyData]) -> list[dict]:
    """Network on shuffled images against its base: same MMSE, different inductive fit.

    ``U`` is a family's best reference per σ (the exact MMSE when known, else its lowest
    upper bound, at σ or a larger σ: :func:`~theorybench.report.common.bracket`). Every
    reference of the shuffled family is ``P f P⁻¹`` of one of the base's, so ``U shuffled``
    = ``U base`` up to the Monte Carlo error of the noise (drawn in shuffled pixel
    coordinates), which can also make the two take U from different σ; the networks' ratio
    is the inductive-bias cost.
    One row per σ of the shuffled network, matched by σ value (NaN where the base network
    or a reference lacks that σ).
    """
    def best(study):
        if study is None or study.reference is None:
            return {}
        ref, _ = bracket(study.reference["result"]["curves"])
        frame = ref["exact"] if "exact" in ref else ref["upper"]
        return dict(zip(frame["sigma"].round(12), frame["mse"], strict=True))

    def by_sigma(frame):
        return {} if frame is None else dict(zip(frame["sigma"].round(12), frame["mse"],
                                                 strict=True))

    rows = []
    bases = base_studies(studies)
    for s in studies:
        if s.label not in bases or s.reference is None or s.networks["per-sigma"] is None:
            continue
        base = bases[s.label]
        net = by_sigma(s.networks["per-sigma"])
        base_net = by_sigma(base.networks["per-sigma"] if base else None)
        u_shuffled, u_base = best(s), best(base)
        for sigma, mse in net.items():
            other = base_net.get(sigma, math.nan)
            rows.append({"entry": s.label, "sigma": sigma, "network shuffled": mse,
                         "network base": other, "ratio shuffled/base": mse / other,
                         "U shuffled": u_shuffled.get(sigma, math.nan),
                         "U base": u_base.get(sigma, math.nan)})
    return rows


def _recipes_text(studies: list[StudyData]) -> str:
    """:func:`recipe_differences` of each shuffled entry against its base, as a clause
    (``" (shuffled(base=faces) against faces: universal steps 2000 against 4000)"``; ``"
    (here the same for both)"`` where the recipes agree)."""
    bases = base_studies(studies)
    parts = [f"{s.label} against {bases[s.label].label}: {', '.join(diff)}"
             for s in studies if bases.get(s.label) is not None
             for diff in [recipe_differences(s, bases[s.label])] if diff]
    return f" ({'; '.join(parts)})" if parts else " (here the same for both)"


def _borrowed_text(refs: dict) -> str:
    """Where the bracket's ends were measured at another σ (:func:`~.common.elsewhere`), and
    why: ``"; U from a larger σ at 21 of 29 σ (0.0121–1.66: 21 stored on a coarser grid, 0
    by the monotone envelope; the MMSE does not decrease with σ)"``, ``""`` where nowhere."""
    parts = []
    for side, word in (("upper", "U from a larger σ"), ("lower", "L from a smaller σ")):
        curve = refs.get(side)
        if curve is None:
            continue
        moved = elsewhere(curve)
        if moved.any():
            sigma = curve["sigma"].to_numpy()[moved]
            envelope = flag(curve, "borrowed")
            coarse, envelope = int(np.sum(moved & ~envelope)), int(np.sum(envelope))
            parts.append(f"{word} at {int(moved.sum())} of {len(moved)} σ "
                         f"({sigma.min():.3g}–{sigma.max():.3g}: {coarse} stored on a coarser "
                         f"grid, {envelope} by the monotone envelope; the MMSE does not "
                         f"decrease with σ)")
    return "".join(f"; {p}" for p in parts)


def _clipping_cause(how: str) -> str:
    """Why an MSE fell below U (the true gap to the MMSE is ≥ 0), given the bracket's kind
    (:func:`~theorybench.report.common.bracket`'s ``how``)."""
    if how == "exact":
        return ("U is the exact MMSE, which no estimator beats in expectation: the test "
                "images' sampling noise (or the reference's quadrature error)")
    return "U is loose there, or it is the test images' sampling noise"


def _interpolated_clipping(curves: dict, integrands: dict[str, pd.DataFrame], how: str) -> str:
    """Where clipping falls between the stored σ of an upper reference (or an exact MMSE,
    which is one there: :func:`~theorybench.report.common.bracket`) kept on a coarser grid
    (:func:`~theorybench.report.common.extend_monotone`): there U is a value stored at a
    larger σ, so the clipping measures that extension, not the network. Nothing where the
    bracket is an exact MMSE measured at every σ (``how == "exact"``): it is U there."""
    if how == "exact":
        return ""
    dense = max(len(frame) for frame in integrands.values())
    coarse = {name: np.asarray(c["sigma"]) for name, c in curves.items()
              if c["kind"] in ("upper", "exact") and len(c["sigma"]) < dense}
    if not coarse:
        return ""
    stored = np.concatenate(list(coarse.values()))
    counts = {}
    for net, frame in integrands.items():
        where = frame["sigma"].to_numpy()[frame["clipped"].to_numpy() > 0]
        between = sum(not np.isclose(stored, s, rtol=1e-6).any() for s in where)
        if between:
            counts[net] = f"{net}: {between} of the {len(where)} clipped σ"
    if not counts:
        return ""
    names = ", ".join(f"`{n}` ({len(g)} σ)" for n, g in coarse.items())
    return (f" Clipped σ between the stored σ of upper references kept on a coarser grid "
            f"({names}): {'; '.join(counts.values())}. Between stored σ, U is a value stored "
            f"at a larger σ (the MMSE does not decrease with σ), a valid but loose "
            f"bound: there kl_low drops because U is loose, not because the network is "
            f"good, so it does not compare with a kl_low integrated on U's own stored σ.")


def study_header(records: list[dict]) -> list[str]:
    """What the stored cells were run with (grids, test images, networks, objectives)."""
    done = [r for r in records if r["spec"]["kind"] == "reference" and "result" in r]
    refs = [r["spec"] for r in done]
    nets = [r["spec"] for r in records if r["spec"]["kind"] == "network" and "result" in r]
    lines = []
    if refs:
        sizes = {entry_label(r["spec"]["dataset"], r["spec"]["params"]):
                 image_size(next(iter(r["result"]["curves"].values()))["d"])
                 for r in done if not r["spec"].get("study")}  # the main study's entries
        dense = max((r["sigmas"] for r in refs), key=len)
        coarse = sorted({t["train"]["sigma"] for t in nets if t["train"]["mode"] == "per-sigma"})
        n_eval = sorted({(r["dataset"], r["n_eval"]) for r in refs})
        lines.append(
            f"MSE curves of references and universal networks on {len(dense)} σ from "
            f"{dense[0]:g} to {dense[-1]:g} (pixel units, images in about [0, 1]); per-σ "
            f"networks at {', '.join(f'{s:g}' for s in coarse)}. Test images per curve "
            f"(the same images and noise for every denoiser of an entry): "
            + ", ".join(f"{name} {n}" for name, n in dict(n_eval).items()) + ". Image size "
            "in the entry sections (pixels; d, their number, in every total MSE, trace and "
            "bit rate): "
            + ", ".join(f"{name} {size}" for name, size in sorted(sizes.items())) + ".")
    for mode in NETWORKS:  # the main study's networks only (not the dimension study's)
        mine = [t for t in nets if t["train"]["mode"] == mode and not t.get("study")]
        if not mine:
            continue
        t = mine[0]["train"]
        objective = t.get("objective", "paper")
        precond = sum(preconditioned(r["result"]) for r in records
                      if r["spec"]["kind"] == "network" and "result" in r
                      and r["spec"]["train"]["mode"] == mode)
        warm = bool(mine[0].get("init_key"))
        law = objective_law(t)
        lines.append(
            f"{mode} networks: {architectures(mine)}, {steps_text(mine)}, batch {t['batch_size']}, "
            f"lr {t['lr']:g}, objective `{objective}`"
            + (f" ({law})" if mode == "universal" else "")
            + (", mean image subtracted" if t.get("center") else "")
            + training_steps_text(t)
            + (", started from the universal network" if warm else "")
            + (f"; {precond} of the {len(mine)} preconditioned (the training table says "
               f"which): f(y) = μ̂ + c_skip (y − μ̂) − c_out r(y − μ̂) with EDM's c_skip = "
               f"σ_d²/(σ² + σ_d²), c_out = σσ_d/√(σ² + σ_d²), σ_d = "
               f"{t.get('sigma_data', 0.25):g}"
               + ("; a network took this form where it started closer to the images "
                  "(the lower MSE on the first training images at its σ) than the "
                  "residual form, and then started from the universal network with its "
                  "output layer zeroed, i.e. from the scalar shrinkage μ̂ + c_skip (y − μ̂)"
                  if warm else "")
               if precond else "")
            + (shrink_sentence(records) if mode == "universal" else "")
            + ".")
    return lines


def shrink_sentence(records: list[dict]) -> str:
    """Where the main study's universal networks' blind shrinkage acts (its θ per entry)
    and where the calibration switched it off (data without fine-scale texture); "" when
    none was built with ``NetConfig.shrink``."""
    on, off = [], []
    for r in records:
        spec = r["spec"]
        if spec["kind"] == "network" and spec["train"]["mode"] == "universal" \
                and spec["net"].get("shrink") and not spec.get("study"):
            label = entry_label(spec["dataset"], spec["params"])
            theta = r.get("result", {}).get("shrink_threshold")
            if theta:
                on.append(f"{label} (θ = {theta:.3g})")
            else:
                off.append(label)
    if not on and not off:
        return ""
    return ("; blind shrinkage (theorybench.blind_shrink): f(y) = μ̂ + a (y − μ̂) − √a "
            "r(y − μ̂) with a = σ_d²/(σ_d² + max(0, σ̂² − θ²)), σ̂ the noise level read "
            "from the input (the RMS of its finest diagonal differences, over 2), acting on "
            + (", ".join(on) or "none") + "; switched off (no fine-scale texture in the "
            "clean images: the residual form at every σ) on " + (", ".join(off) or "none")
            + "; the per-σ networks keep their start's form unless preconditioned")


def shuffled_kl_rows(studies: list[StudyData], sigma0s) -> list[dict]:
    """The networks' KL bounds, shuffled − base: ``∫ (MSE_shuffled − MSE_base) σ⁻³ dσ``.

    The MMSE of the two families is identical (SCIENCE.md §5), so it cancels: the difference
    of the two networks' KL gaps needs no bracket (the integral is still the trapezoid on
    the networks' grid). Image k and noise k of the
    shuffled family are ``P x_k`` and ``P z_k`` (``evaluation_noise``), so the per-image
    errors are paired and the standard error is that of the per-image integrals.
    """
    rows = []
    bases = base_studies(studies)
    for s in studies:
        base = bases.get(s.label)
        for mode in NETWORKS if base else ():
            a, b = s.networks[mode], base.networks[mode]
            if a is None or b is None or len(a) != len(b) or not np.allclose(a.sigma, b.sigma):
                continue
            sig, d = a.sigma.to_numpy(), int(a.d.iloc[0])
            diff = (a.attrs["errors"] - b.attrs["errors"]) * d  # (σ, n) total squared error
            if diff.shape[1] < 2:
                continue
            for s0 in [x for x in sigma0s if sig[0] <= x <= sig[-1]]:
                per_image = (trapezoid_weights(np.log(sig), math.log(s0)) * sig**-2.0) @ diff
                rows.append({"entry": s.label, "network": mode, "sigma0": s0,
                             "bound shuffled − bound base (nats)": float(per_image.mean()),
                             "se": float(per_image.std(ddof=1) / math.sqrt(per_image.size))})
    return rows


def rerun_command(preset_name: str, run_meta: dict, compare=(), out: Path | None = None) -> str:
    """The ``run_all.py`` command line of the study that ``run_meta`` describes: its preset,
    ``--plugin`` modules, seed (when not 0), datasets (when chosen) and overrides, its
    report folder ``out``
    (unless ``reports``, run_all.py's default, so that rerunning one seed's report does not
    overwrite another's) and the report folders it was compared with (``compare``),
    shell-quoted."""
    words = ["python", "run_all.py", "--preset", preset_name]
    for module in run_meta.get("plugins") or []:
        words += ["--plugin", module]
    if out is not None and Path(out).as_posix() != "reports":
        words += ["--out", str(out)]
    if run_meta.get("seed"):
        words += ["--seed", str(run_meta["seed"])]
    if run_meta.get("datasets"):
        words += ["--datasets", run_meta["datasets"]]
    for override in run_meta.get("overrides") or []:
        words += ["--override", override]
    for folder in compare:
        words += ["--compare", str(folder)]
    return shlex.join(words)


def _from_cache(records: list[dict], run_meta: dict) -> str:
    """The header's clause on the cells a run found stored, computed before it (by code of
    the same source, their keys say), with the span of every record's date ("" when the
    run computed them all or did not count)."""
    stored = len(records) - run_meta.get("computed", len(records))
    if stored <= 0:
        return ""
    dates = sorted(r["meta"]["date"] for r in records if r.get("meta", {}).get("date"))
    span = f"; the {len(dates)} cells' records are dated {dates[0]} to {dates[-1]}" if dates else ""
    return (f"; the other {stored} read from the cache, computed before this run by code "
            f"of the same source (their keys){span}")


def build_report(preset, entries, records: list[dict], out: Path, run_meta: dict,
                 compare: tuple[Path, ...] = ()) -> Path:
    """Write ``out/README.md`` with every table and figure; return its path. ``compare``:
    the report folders of runs of the same study at other seeds, set beside this one in
    the section "Across seeds" (:mod:`.seeds`)."""
    out.mkdir(parents=True, exist_ok=True)
    studies = []
    for name, params in entries:  # side studies (tagged "study") have their own sections
        mine = [r for r in records if not r["spec"].get("study")
                and r["spec"]["dataset"] == name and r["spec"]["params"] == params]
        studies.append(StudyData(name, params, mine))
    wall = run_meta.get("wall_seconds")
    lines = [
        "# theorybench report",
        "",
        f"Preset **{preset.name}** · seed {run_meta.get('seed', 0)} · "
        f"commit `{run_meta.get('commit', '?')}` · "
        + (f"report rebuilt from the stored cells by commit `{run_meta['report_commit']}` · "
           if run_meta.get("report_commit") not in (None, run_meta.get("commit")) else "")
        + f"date {run_meta.get('date', '?')} · device {run_meta.get('device', '?')} · "
        + (f"wall time {wall:.0f} s for this run " if wall is not None else
           "wall time not recorded: report rebuilt from the stored cells ")
        + f"(compute of its {len(records)} cells, as stored in the cache: "
        f"{sum(r.get('meta', {}).get('seconds', 0.0) for r in records):.0f} s"
        + (f"; {run_meta['computed']} of them computed by this run" if "computed" in run_meta
           else "") + _from_cache(records, run_meta) + ").",
        "",
        *([f"**Incomplete:** {run_meta['missing']} cells of this preset have no stored result "
           f"(failed, a run cut short, --kinds, or not run yet): their rows and figures are "
           f"missing below.", ""]
          if run_meta.get("missing") else []),
        f"Regenerate with `{rerun_command(preset.name, run_meta, compare, out)}`; the "
        "numbers below come only from the stored cell results of that run"
        + (" (section Across seeds: also from the compared runs' report files)" if compare
           else "") + ".",
        *study_header(records),
        "",
    ]
    kl_rows, rates, mse_rows, standings, used = [], [], [], {}, set()
    header = len(lines)  # the summary goes here, once every section has its numbers
    for study in studies:
        lines += [f"## {study.label}", ""]
        if study.failed:
            lines += [f"- **failed cell**: {msg}" for msg in study.failed] + [""]
        if study.reference is None:
            lines += ["No stored reference curves for this entry.", ""]
            continue
        refs, how = bracket(study.reference["result"]["curves"])
        s = slug(study.label)
        for name, curve in study.reference["result"]["curves"].items():
            for i, sig in enumerate(curve["sigma"]):
                mse_rows.append({"entry": study.label, "denoiser": name, "kind": curve["kind"],
                                 "sigma": sig, "mse": curve["mse"][i], "se": curve["se"][i]})
        for net, frame in study.networks.items():
            if frame is not None:
                for row in frame.itertuples():
                    mse_rows.append({"entry": study.label, "denoiser": f"network ({net})",
                                     "kind": "network", "sigma": row.sigma, "mse": row.mse,
                                     "se": row.se})
        trained = [(f"network ({net}), training images", "network-train", frame)
                   for net, frame in study.on_training_images.items() if frame is not None]
        trained += [(f"{name}, training images", "baseline-train", frame)
                    for name, frame in study.controls_on_training_images.items()]
        for denoiser, kind, frame in trained:
            for row in frame.itertuples():
                mse_rows.append({"entry": study.label, "denoiser": denoiser, "kind": kind,
                                 "sigma": row.sigma, "mse": row.mse, "se": row.se})
        _figure_mse(study, refs, out / f"mse_{s}.png")
        lines += [f"MMSE reference: {how}{_borrowed_text(refs)}.", "",
                  f"![MSE against σ](mse_{s}.png)", ""]
        standings[study.label] = standing(study, refs)
        if standings[study.label]:
            used.add("standing")
            lines += ["Where the networks stand (section How to read the entries):",
                      "", markdown_table(pd.DataFrame(standing_rows(standings[study.label]))),
                      ""]
        gap = generalization_rows(study, preset.sigmas)
        if gap:
            used.add("gap")
            counts = sorted({len(f.attrs["errors"][0])
                             for f in study.on_training_images.values() if f is not None})
            lines += [f"Generalization gap: each network on the {', '.join(map(str, counts))} "
                      f"images it was trained on (noise drawn apart from the test images') "
                      f"against the {len(study.networks[gap[0]['network']].attrs['errors'][0])} "
                      "test images, at the per-σ networks' σ (section How to read the "
                      "entries):", "",
                      markdown_table(pd.DataFrame(gap), ".4g"), ""]
        integrands, kl_errors = {}, []
        blind = {f"{name} (blind optimum)": curve_frame(c)
                 for name, c in study.reference["result"]["curves"].items()
                 if c["kind"] == "blind"}
        for net, frame in {**study.networks, **blind}.items():
            if frame is None or len(frame) < 2:
                continue
            grid = frame["sigma"].to_numpy()  # per-σ: the coarse grid; universal: the dense
            bounds = {k: on_grid(f, grid) for k, f in refs.items()}
            try:
                result = kl_bound(frame, bounds,
                                  sigma0=[x for x in preset.sigma0s if grid[0] <= x <= grid[-1]],
                                  **closing_inputs(study.reference["result"], grid))
            except ValueError as exc:  # e.g. an inverted bracket: say so, keep the report
                kl_errors.append(f"- **KL not computed** for network {net}: {exc}")
                continue
            integrands[net] = result.integrand
            for row in result.table.to_dict("records"):
                kl_rows.append({"entry": study.label, "network": net, "reference": how,
                                "grid": len(grid), **row, **_jumps(row, bounds, grid),
                                "converged": study.converged.get(net)})
        lines += [*kl_errors, ""] if kl_errors else []
        if integrands:
            used |= {"kl", "blind"} if blind else {"kl"}
            _figure_kl(study, integrands, out / f"kl_{s}.png")
            lines += [f"![KL integrand](kl_{s}.png)", ""]
            mine = pd.DataFrame([r for r in kl_rows if r["entry"] == study.label])
            lines += [
                "KL bound, nats, at smoothing level σ0 (section How to read the entries); "
                "σ_max, the top of each row's σ grid: "
                + ", ".join(f"{n}: {float(f.sigma.max()):g}" for n, f in integrands.items())
                + ".",
                "", markdown_table(mine[["network", "grid", "sigma0", "kl_low", "kl_high",
                                          "closing", "closing_exact", "se_low",
                                          "se_high", "quad_err_low", "quad_err_high",
                                          "bits_low",
                                          "bits_high", "clipped", "clipped_nats",
                                          "converged"]]), ""]
            if mine[mine["network"].isin(NETWORKS)]["clipped"].any():
                clipping = ", ".join(mine[mine["network"].isin(NETWORKS)
                                          & mine["clipped"]]["network"].unique())
                lines += [f"Flag ({clipping}): the network's MSE falls below the reference "
                          "upper bound U at "
                          "some σ; MSE − U was clipped to 0 there (`clipped_nats` nats in all); "
                          f"the true gap is ≥ 0: {_clipping_cause(how)}."
                          + _interpolated_clipping(study.reference["result"]["curves"],
                                                   integrands, how), ""]
            blind_clipped = mine[~mine["network"].isin(NETWORKS) & mine["clipped"]]
            if len(blind_clipped):
                lines += [f"Flag ({', '.join(blind_clipped['network'].unique())}): the blind "
                          "optimum's MSE falls below U at some σ; MSE − U was clipped to 0 "
                          f"there (`clipped_nats` nats in all): {_clipping_cause(how)}.", ""]
            if mine["closing"].isna().any():
                lines += ["Flag: the reference record stores no data variance (computed before "
                          "it was recorded): the closing term is missing, so `kl_high` is the "
                          "grid integral only and not a certified bound. Recompute the "
                          "reference cell to add it.", ""]
        rates += rate_rows(study, refs, preset)
        if _figure_examples(study.examples, out / f"examples_{s}.png"):
            lines += [f"![clean, noisy, denoised](examples_{s}.png)", ""]
    lines[header:header] = legend_section(used)
    shuffled = shuffled_rows(studies)
    if rates:
        lines += ["## Rates", "", f"Families with a rate law (`Distribution.rate_law`; C^α: "
                  f"α/(α+1)): slope of log MSE against log σ², least squares on "
                  f"σ ∈ [{preset.rate_range[0]}, {preset.rate_range[1]}] (`LS`; `rates.csv` "
                  "adds `se_fit` from its residuals: curvature, not noise) and secant on each "
                  "interval of the "
                  "coarse grid; `se`: SE over the test images (delta method, the images' "
                  "errors paired across σ and curves; the references' slopes use their own "
                  "values only, none taken from another σ by monotonicity, and a curve "
                  "without a value at every σ of the window has no LS slope). `MMSE ≥`/"
                  "`MMSE ≤`: the secant slope "
                  "of the MMSE implied by L ≤ MMSE ≤ U, (log L(σb) − log U(σa))/(log σb² − "
                  "log σa²) and (log U(σb) − log L(σa))/(…); `<component> Wiener`: the "
                  "slope of the Wiener MSE of the part that dominates small images alone "
                  "(C^α: the Gaussian region fields). Then per "
                  "network and σ: MSE/U and MSE/L (± SE, paired images): MSE/MMSE ≤ MSE/L, "
                  "and MSE/U < 1 where the network beats the best reference estimator. "
                  "Manifolds (intrinsic dimension k below the pixel count, e.g. disks: "
                  "k = 5): total MSE/σ² at the smallest σ; theory k.", ""]
        frame = pd.DataFrame(rates)
        for table in ("slope", "note", "ratio", "manifold"):
            part = frame[frame["table"] == table].drop(columns="table").dropna(axis=1, how="all")
            part = part[[c for c in part if not c.endswith("se_fit")]]  # in rates.csv only
            if len(part):
                lines += ([f"- {e}: {n}" for e, n in zip(part["entry"], part["note"],
                                                          strict=True)]
                          if table == "note" else
                          [markdown_table(part.astype(object).where(part.notna(), ""), ".3g")])
                lines += [""]
    if shuffled:
        lines += ["## Shuffled against base", "",
                  "Per-σ networks on the pixel-shuffled family against its base's per-σ "
                  "networks, at each σ of their grid (per-pixel MSE; `U`: each family's "
                  "tightest upper reference, the same MMSE on both, SCIENCE.md §5). The "
                  "two families' networks follow the study's recipe, whose settings adapt "
                  "per family" + _recipes_text(studies) + ": the "
                  "ratio measures the cost of the convolutional inductive bias on "
                  "shuffled pixels together with those differences.", "",
                  markdown_table(pd.DataFrame(shuffled)), ""]
        shuffled_kl = shuffled_kl_rows(studies, preset.sigma0s)
        if shuffled_kl:
            lines += ["The same MMSE on both families cancels in the difference of the "
                      "networks' KL bounds (their MSE gaps over the MMSE, integrated), "
                      "∫ (MSE_shuffled − MSE_base) σ⁻³ dσ from σ0: no "
                      "bracket, paired image by image (same images and noise, permuted); the "
                      "integral is the trapezoid on the network's grid, an estimate between "
                      "the per-σ networks' σ as in the KL tables.", "",
                      markdown_table(pd.DataFrame(shuffled_kl)), ""]

    study = [r for r in records if not r["spec"].get("study")]  # not a side study's cells
    training_lines, training = training_section(records, out)  # every network of the run
    lines += training_lines
    lines += jacobian_section(study, out)
    # the memorization sweep, with its own reference cells
    memorization_lines, memorization = memorization_section(records, out)
    lines += memorization_lines
    lines += machines_section(records, out)
    lines += dimension_section(records, out)
    for name, rows in (("kl", kl_rows), ("rates", rates), ("shuffled", shuffled),
                       ("mse", mse_rows), ("training", training)):
        if rows:
            write_csv(pd.DataFrame(rows), out / f"{name}.csv")
        else:  # not an earlier report's table beside this one
            (out / f"{name}.csv").unlink(missing_ok=True)
    seed_lines, seed_summary = seeds_section(out, run_meta, list(compare), preset.sigma0s)
    lines += seed_lines
    lines[header:header] = summary_section(standings, kl_rows, preset.sigma0s, training,
                                           memorization, missing_entries(studies, standings),
                                           rates, seed_summary)
    lines += ["## Files", "", "Tables as CSV: " + ", ".join(
        f"`{n}.csv`" for n, r in (("kl", kl_rows), ("rates", rates), ("shuffled", shuffled),
                                   ("mse", mse_rows), ("training", training)) if r)
              + ", `jacobian.csv`, `jacobian_pairs.csv`, `memorization.csv`, "
                "`memorization_mse.csv`, `machines.csv`, `dimension.csv` (when computed)"
              + (", `seeds.csv`" if (out / "seeds.csv").exists() else "") + ".", ""]
    readme = out / "README.md"
    atomic_write_bytes(readme, "\n".join(lines).encode())
    return readme
