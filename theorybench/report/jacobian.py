"""The Jacobian section of the report: spectra, adaptive bases, effective dimension, SURE.

Built from stored ``jacobian`` cell records only (``experiments.jacobian_analysis``). Per
study entry: the eigenvalue spectra of the per-σ and universal networks next to the
reference (log y, one panel per σ), the top eigenvectors as images for the first clean
image and its noisy version (one figure per σ), and the effective dimension ``tr J``
against σ with SURE's MSE next to the measured one (SCIENCE.md §6). One table per entry
(trace, eigenvalues above 0.5, tangent-space angles for disks, contour concentration for
C^α), all rows also in ``jacobian.csv``; optionally the Jacobian overlap of two networks
trained on disjoint sets against their training-set size (``jacobian_pairs.csv``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

import datasets_synth

from ..experiments.jacobian_analysis import KIND, PAIR_KIND, SHRINKAGE_LEVEL, jacobian_sigmas
from ..experiments.keys import entry_label
from ..figures import PALETTE, Panel, cached_figure, image_mosaic, plt
from .common import markdown_table, slug, write_csv

ROWS = (("per-sigma", "network (per-σ)"), ("universal", "network (universal)"))
EIG_FLOOR = 1e-4  # eigenvalues below this are drawn at this value on the log axis


def _mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    se = v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else math.nan
    return float(v.mean()), float(se)


SURE_MAX_REL_SE = 0.1  # SURE is shown only where its SE is below this fraction of the MSE


def sure_se(rec: dict, sigma: float) -> float:
    """SE of the mean SURE over the analysed images, as an estimate of their MSE.

    Per image, linearizing f at y (Jacobian with symmetric-part eigenvalues λ), SURE minus
    the measured error ``‖f(y) − x‖²/d`` is ``(σ²(zᵀ(I − 2J)z − tr(I − 2J)) − 2σ⟨b, z⟩)/d``
    with b the bias ``(J − I)x + c``, so its variance over the noise is
    ``(2σ⁴ Σ(1 − 2λ)² + 4σ² ‖b‖²)/d²``, ``‖b‖² ≈ max(0, d·mse − σ² ‖J‖_F²)`` with
    ``‖J‖_F² = Σλ² / (1 − a²/4)``, ``a`` the record's ``asymmetry`` ‖J − Jᵀ‖/‖J‖ (the
    antisymmetric part adds to the noise's error; Σλ² alone where none is stored); for
    f ≈ y, where λ = 1 and b = 0, the SE is σ²√(2/d), the familiar value. The SE of the mean
    over n images is √Σvar/n; with n ≥ 2 the larger of that and the empirical SE of
    (SURE − measured error) is returned. A top-k record (eigenvalues past k stored as
    NaN) has no Σ(1 − 2λ)²: the empirical SE is returned (NaN for one image), with the
    error of its Hutchinson traces (``trace_se`` h, in SURE ``2σ²h/d``) added in full, as
    in the table's ``trace_se``: the images share one set of probes.
    """
    lam = np.atleast_2d(np.asarray(rec["eigenvalues"], dtype=float))
    mse = np.asarray(rec["mse"], dtype=float).reshape(-1)
    n, d = lam.shape
    if n == 0 or mse.size != n:
        return math.nan
    diff = np.asarray(rec["sure_mse"], dtype=float).reshape(-1) - mse
    empirical = float(diff.std(ddof=1) / math.sqrt(n)) if n >= 2 else math.nan
    if np.isnan(lam).any():  # top-k spectrum: the linearized variance is unknown
        hutchinson = np.asarray(rec.get("trace_se", [0.0]), dtype=float)
        return math.hypot(empirical, 2 * float(sigma) ** 2 / d
                          * math.sqrt(float(np.mean(hutchinson**2))))
    s2 = float(sigma) ** 2
    asym = np.asarray(rec.get("asymmetry", np.zeros(n)), dtype=float).reshape(-1)
    frobenius2 = (lam**2).sum(1) / (1 - np.minimum(asym, 2 - 1e-12) ** 2 / 4)
    bias2 = np.maximum(0.0, d * mse - s2 * frobenius2)
    var = (2 * s2**2 * ((1 - 2 * lam) ** 2).sum(1) + 4 * s2 * bias2) / d**2
    se = math.sqrt(var.sum()) / n
    return float(max(se, empirical) if n >= 2 else se)


def sure_cell(row: dict) -> str:
    """The table's SURE cell: the value ± SE, or why it is not shown (SE ≥ 10 % of MSE)."""
    n, se, mse = row["images"], row["sure_se"], row["mse"]
    if row["sure_shown"]:
        return f"{row['sure_mse']:.3g} ± {se:.2g}"
    return (f"not shown ({n} image{'s' if n != 1 else ''} too few: SE {se:.2g} vs MSE "
            f"{mse:.2g})")


def _span(values, lo: int, hi: int) -> str:
    """Eigenvalues ``lo+1 … hi`` of a mean spectrum as ``"first → last"``."""
    part = values[lo:hi]
    return f"{part[0]:.3g} → {part[-1]:.3g}" if len(part) else ""


class _Entry:
    """The Jacobian records of one study entry, by σ: network per mode, and the reference."""

    def __init__(self, label: str, name: str, records: list[dict]):
        self.label, self.name = label, name
        self.sigmas = sorted({float(r["result"]["sigma"]) for r in records})
        self.nets: dict[tuple[str, float], dict] = {}
        self.refs: dict[float, dict] = {}
        self.images: dict[float, dict] = {}
        for r in sorted(records, key=lambda r: r["spec"]["mode"] != "per-sigma"):
            res, sigma = r["result"], float(r["result"]["sigma"])
            self.nets[(r["spec"]["mode"], sigma)] = res["denoisers"]["network"]
            if "reference" in res["denoisers"]:
                self.refs.setdefault(sigma, res["denoisers"]["reference"])
            self.images.setdefault(sigma, {"clean": np.asarray(res["clean0"]),
                                           "noisy": np.asarray(res["noisy0"]),
                                           "shape": res["shape"]})

    def denoisers(self, sigma: float) -> list[tuple[str, dict]]:
        """(label, record) of each denoiser analysed at σ: networks, then the reference."""
        out = [(name, self.nets[(mode, sigma)]) for mode, name in ROWS
               if (mode, sigma) in self.nets]
        if sigma in self.refs:
            ref = self.refs[sigma]
            out.append((f"reference: {ref['name']} ({ref['kind']})", ref))
        return out


def _images_text(counts: list[int]) -> str:
    """How many noisy images each row's values come from (``counts``: the cells' numbers of
    analysed images), and what one image leaves out."""
    if not counts:
        return ""
    if counts == [1]:
        return ("Every value below is that of one noisy image per entry and σ (the cells "
                "analyse one: no standard error, no spread over images). ")
    return (f"Values are means over the analysed images ({', '.join(map(str, counts))} per "
            f"entry and σ; `images` in jacobian.csv). ")


def _row(entry: _Entry, sigma: float, label: str, rec: dict) -> dict:
    """One table row: means over the analysed images."""
    spectrum = np.asarray(rec["eigenvalues"], dtype=float).mean(0)
    trace, trace_se = _mean_se(rec["trace"])
    hutchinson = np.asarray(rec.get("trace_se", []), dtype=float)
    if (hutchinson > 0).any():  # top-k: each image's trace is a Hutchinson estimate
        # The images share one set of probes (jacobian_spectrum's seed), so the estimates'
        # errors e_i may be correlated (ρ): the spread over images holds (1 − ρ) of their
        # variance h², the mean's error has (1 + (n − 1)ρ)/n of it; the difference is at
        # most h² for any ρ ≤ 1, added in full (one image: h alone).
        trace_se = math.sqrt(np.nan_to_num(trace_se) ** 2 + float(np.mean(hutchinson**2)))
    mse, mse_se = _mean_se(rec["mse"])
    sure, _ = _mean_se(rec["sure_mse"])
    se_sure = sure_se(rec, sigma)
    row = {"entry": entry.label, "sigma": sigma, "denoiser": label,
           "images": len(rec["trace"]), "trace": trace, "trace_se": trace_se,
           f"count>{SHRINKAGE_LEVEL:g}": float(np.mean(rec["count_above"])),
           "λ1–5": _span(spectrum, 0, 5), "λ6–10": _span(spectrum, 5, 10),
           "asymmetry": float(np.mean(rec["asymmetry"])),
           # of the networks' homogeneity about μ̂: a reference need not be homogeneous
           "homogeneity_error": (math.nan if label.startswith("reference")
                                 else float(np.mean(rec["homogeneity_error"]))),
           "mse": mse, "mse_se": mse_se, "sure_mse": sure, "sure_se": se_sure,
           "sure_shown": bool(se_sure < SURE_MAX_REL_SE * mse)}  # False when se is NaN
    if "tangent_angles_deg" in rec:
        angles = np.asarray(rec["tangent_angles_deg"], dtype=float)
        row["tangent_max_angle_deg"] = float(angles.max(1).mean())
        row["tangent_mean_angle_deg"] = float(angles.mean())
    if "contour_concentration" in rec:
        row["contour_top_k"] = float(np.mean(rec["contour_concentration"]))
        row["contour_chance"] = float(np.mean(rec["contour_chance"]))
    return row


@cached_figure
def _figure_spectra(entry: _Entry):
    palette = PALETTE
    fig, axes = plt.subplots(1, len(entry.sigmas), figsize=(3.4 * len(entry.sigmas), 3.0),
                             squeeze=False)
    for ax, sigma in zip(axes[0], entry.sigmas, strict=True):
        for i, (label, rec) in enumerate(entry.denoisers(sigma)):
            spectrum = np.asarray(rec["eigenvalues"], dtype=float).mean(0)
            color = "k" if label.startswith("reference") else palette[i]
            ax.plot(np.arange(1, len(spectrum) + 1), np.maximum(spectrum, EIG_FLOOR), "-",
                    color=color, lw=1.3, label=label)
        ax.axhline(SHRINKAGE_LEVEL, color="0.6", lw=0.6, ls=":")
        ax.set(yscale="log", xscale="log", xlabel="index", title=f"σ = {sigma:.3g}",
               ylim=(EIG_FLOOR / 2, None))
    axes[0, 0].set_ylabel("eigenvalue of (J + Jᵀ)/2")
    axes[0, -1].legend(fontsize=6)
    fig.suptitle(f"Jacobian spectra — {entry.label}", fontsize=9)
    return fig


@cached_figure
def _figure_vectors(entry: _Entry, sigma: float):
    image = entry.images[sigma]
    clean = image["clean"][0]
    lo, hi = np.percentile(clean, [1, 99]) if clean.std() > 0 else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1
    rows, labels = [], []
    for label, rec in entry.denoisers(sigma):
        row = [Panel(clean, "clean", "gray", lo, hi),
               Panel(image["noisy"][0], "noisy", "gray", lo, hi),
               Panel(np.asarray(rec["output0"])[0], "f(y)", "gray", lo, hi)]
        values = np.asarray(rec["eigenvalues"][0])
        for j, v in enumerate(np.asarray(rec["eigenvectors0"])):
            a = np.abs(v).max() or 1.0
            row.append(Panel(v[0], f"λ{j + 1}={values[j]:.2f}", "RdBu_r", -a, a))
        rows.append(row)
        labels.append(label.replace(": ", ":\n"))
    return image_mosaic(rows, labels, f"Top eigenvectors at σ = {sigma:.3g} (first image) — "
                                      f"{entry.label}")


@cached_figure
def _figure_trace(entry: _Entry, rows: list[dict]):
    palette = PALETTE
    frame = pd.DataFrame(rows)
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for i, (label, part) in enumerate(frame.groupby("denoiser", sort=False)):
        color = "k" if label.startswith("reference") else palette[i]
        ax_t.errorbar(part.sigma, part.trace, yerr=2 * part.trace_se.fillna(0), marker="o",
                      ms=3, color=color, label=label)
        ax_s.errorbar(part.sigma, part.mse, yerr=2 * part.mse_se.fillna(0), marker="o", ms=3,
                      color=color, label=f"{label}: measured")
        positive = part[part.sure_shown & (part.sure_mse > 0)]  # too noisy: not drawn
        ax_s.plot(positive.sigma, positive.sure_mse, marker="x", ms=5, ls="--", color=color,
                  label=f"{label}: SURE")
    ax_t.set(xscale="log", yscale="log", xlabel="σ", ylabel="tr J (effective dimension)")
    ax_s.set(xscale="log", yscale="log", xlabel="σ", ylabel="MSE per pixel (noisy SURE not shown)",
             ylim=(frame.mse.min() / 10, None))
    ax_t.legend(fontsize=6)
    ax_s.legend(fontsize=5)
    fig.suptitle(f"Effective dimension and SURE — {entry.label}", fontsize=9)
    return fig


TABLE_COLUMNS = ("sigma", "denoiser", "trace", f"count>{SHRINKAGE_LEVEL:g}", "λ1–5", "λ6–10",
                 "asymmetry", "homogeneity_error", "mse", "SURE")


@cached_figure
def _figure_pairs(frame: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for entry, rows in frame.groupby("entry"):
        for sigma, part in rows.groupby("sigma"):
            line = ax.errorbar(part.n_train, part.overlap, yerr=2 * part.overlap_se.fillna(0),
                               marker="o", ms=3, label=f"{entry} σ={sigma:.3g}")
        # k/d differs between image sizes: each family's own, in its colour
        ax.axhline(rows.chance.iloc[0], color=line[0].get_color(), ls=":", lw=0.8,
                   label=f"chance (k/d), {entry}")
    ax.set(xscale="log", ylim=(0, 1.02), xlabel="training-set size N",
           ylabel="top-k eigenvector overlap (mean cos²)")
    ax.legend(fontsize=6)
    return fig


def _pair_section(pairs: list[dict], out_dir: Path) -> tuple[list[str], list[dict]]:
    """Overlap of the top eigenvectors of two networks trained on disjoint sets, against N."""
    rows = []
    for p in pairs:
        for i, sigma in enumerate(p["sigma"]):
            overlap, overlap_se = _mean_se(p["overlap"][i])
            distance, _ = _mean_se(p["jacobian_distance"][i])
            rows.append({"entry": p["label"], "n_train": p["N"], "sigma": sigma,
                         "k": p["k"], "overlap": overlap, "overlap_se": overlap_se,
                         "chance": p["chance"], "jacobian_distance": distance})
    if not rows:
        return [], []
    frame = pd.DataFrame(rows).sort_values(["entry", "sigma", "n_train"])
    _figure_pairs(frame, out_dir / "jacobian_pairs.png")
    lines = ["### Two networks trained on disjoint sets", "",
             "Overlap of the spans of the top-k eigenvectors of their Jacobians at the same "
             "noisy input (`k`; mean cos² of the principal angles; 1 = same span, `chance` = "
             "k/d for random spans); `jacobian_distance`: ‖J_a − J_b‖/‖J_a‖ (Frobenius; "
             "estimated from random probes above the exact size).", "",
             "![Jacobian overlap against N](jacobian_pairs.png)", "",
             markdown_table(frame[["entry", "n_train", "sigma", "k", "overlap", "chance",
                                   "jacobian_distance"]]), ""]
    return lines, frame.to_dict("records")


def jacobian_section(records: list[dict], out_dir) -> list[str]:
    """Markdown lines of the Jacobian section; figures and CSV written into ``out_dir``.

    Parameters
    ----------
    records : stored cell records (``{"spec", "result", …}``); those of kind ``jacobian``
        and ``jacobian-pair`` with a result are used, failed ones are listed; other kinds
        are ignored.
    out_dir : folder of the report (created if needed).

    Returns
    -------
    list of markdown lines (empty when there is nothing to show).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = [r for r in records if r.get("spec", {}).get("kind") in (KIND, PAIR_KIND)]
    failed = [r["failed"] for r in mine if "failed" in r]
    done = [r for r in mine if "result" in r and r["spec"]["kind"] == KIND]
    pairs = [r["result"] for r in mine if "result" in r and r["spec"]["kind"] == PAIR_KIND]
    if not done and not pairs and not failed:
        return []
    lines = ["## Jacobian eigen-analysis", "",
             "At a noisy image y the denoiser acts as the linear map J = ∇f(y) (exactly, "
             "f(y) = J y, for a bias-free network, and f(y) − μ̂ = J (y − μ̂) for one centred "
             "on its mean image μ̂; not where the blind shrinkage acts, whose factor depends "
             "on y: `homogeneity_error`, ‖J (y − μ̂) − (f(y) − μ̂)‖ / ‖f(y) − μ̂‖, is of "
             "order 1 there, and J, its eigenvalues and tr J then describe the map's "
             "linearization at y, not f itself; given for the networks only, `–` for the "
             "references); the eigenvectors "
             "of its symmetric part are the adaptive basis, the eigenvalues the shrinkage, "
             "tr J the effective dimension (SCIENCE.md §6). Columns: `count>0.5` the "
             "number of eigenvalues of the symmetric part (J + Jᵀ)/2 above 0.5; `λ1–5`, "
             "`λ6–10` its "
             "eigenvalues of those ranks, the first → the last; `asymmetry` ‖J − Jᵀ‖/‖J‖ "
             "(Frobenius norms; 0 for an MMSE denoiser, whose Jacobian is symmetric). "
             "SURE estimates the MSE from y alone: "
             "(‖f(y) − y‖² − dσ² + 2σ² tr J)/d, shown ± the SE of SURE − measured error "
             "only where that SE (over the noise, from the linearized f; over images too "
             "when there are several) is "
             f"below {SURE_MAX_REL_SE:.0%} of the measured MSE: one image of d pixels gives "
             "an SE near σ²√(2/d), too large where f shrinks strongly. "
             + _images_text(sorted({int(r["spec"]["n_images"]) for r in done}))
             + "References: "
             "exact posterior mean (Gaussian), posterior mixture Cov[x|y]/σ² (disks), oracle "
             "given the true contour (C^α, an oracle: lower bound).", ""]
    lines += [f"- **failed cell**: {msg}" for msg in failed] + ([""] if failed else [])
    groups: dict[str, list[dict]] = {}
    names: dict[str, str] = {}
    for r in done:
        label = entry_label(r["spec"]["dataset"], r["spec"]["params"])
        groups.setdefault(label, []).append(r)
        names[label] = r["spec"]["dataset"]
    all_rows = []
    for label, recs in groups.items():
        entry = _Entry(label, names[label], recs)
        s = slug(label)
        rows = [_row(entry, sigma, name, rec) for sigma in entry.sigmas
                for name, rec in entry.denoisers(sigma)]
        all_rows += rows
        _figure_spectra(entry, out_dir / f"jacobian_spectra_{s}.png")
        _figure_trace(entry, rows, out_dir / f"jacobian_trace_{s}.png")
        lines += [f"### {label}", "", f"![Jacobian spectra](jacobian_spectra_{s}.png)", ""]
        for i, sigma in enumerate(entry.sigmas):
            _figure_vectors(entry, sigma, out_dir / f"jacobian_vectors_{s}_{i}.png")
            lines += [f"![Top eigenvectors, σ={sigma:.3g}](jacobian_vectors_{s}_{i}.png)"]
        lines += ["", f"![tr J and SURE](jacobian_trace_{s}.png)", ""]
        frame = pd.DataFrame(rows)
        frame["SURE"] = [sure_cell(r) for r in rows]
        columns = list(TABLE_COLUMNS)
        if "tangent_max_angle_deg" in frame:
            columns += ["tangent_max_angle_deg", "tangent_mean_angle_deg"]
        if "contour_top_k" in frame:
            columns += ["contour_top_k", "contour_chance"]
        lines += [markdown_table(frame[columns]), ""]
        dist = datasets_synth.get(entry.name, **recs[0]["spec"]["params"])
        p, k = dist.published_jacobian, dist.intrinsic_dim
        if p and k:
            # the analysis's own rule: the σ analysed nearest in log σ
            nearest = jacobian_sigmas(frame["sigma"].unique(), targets=(p["sigma"],))[0]
            lines += [f"Published ({p['source']}, σ = {p['sigma']}; the nearest σ analysed "
                      f"here: {nearest:.3g}): λ1–{k} = "
                      f"{p['first'][0]}–{p['first'][1]}, λ{k + 1}–{2 * k} = {p['next'][0]}–"
                      f"{p['next'][1]}; the optimum keeps {k} eigenvalues near 1 (the tangent "
                      "space).", ""]
        if "tangent_max_angle_deg" in frame:
            lines += ["Angles: principal angles between the top-k eigenvectors and the true "
                      "k-dimensional tangent space ∂x/∂θ: `tangent_max_angle_deg` the largest "
                      "of the k, `tangent_mean_angle_deg` their mean (over the images analysed).",
                      ""]
        if "contour_top_k" in frame:
            band = recs[0]["spec"]["band"]
            top_k = recs[0]["spec"]["top_k"]
            lines += ["Contour concentration: fraction of the energy of each top eigenvector "
                      f"within {band:g} pixels of the true contour (mean over the top {top_k} "
                      "eigenvectors and the images analysed), against the fraction of pixels "
                      "there (chance).", ""]
    if all_rows:
        write_csv(pd.DataFrame(all_rows), out_dir / "jacobian.csv")
        lines += ["Jacobian table as CSV: `jacobian.csv`.", ""]
    if pairs:
        pair_lines, pair_rows = _pair_section(pairs, out_dir)
        lines += pair_lines
        if pair_rows:
            write_csv(pd.DataFrame(pair_rows), out_dir / "jacobian_pairs.csv")
    return lines


__all__ = ["jacobian_section"]
