"""Build ``reports/``: tables (markdown + CSV) and figures, from stored cell records only.

Per study entry: a log–log figure of per-pixel MSE against σ (the MMSE bracket as a band,
the networks as lines), the KL integrand, a KL-interval table at several σ0, rate rows
(C^α slopes, disks MSE/σ², shuffled against base) and a row of clean / noisy / denoised
images. Every table is also written as CSV.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .cache import atomic_write_bytes  # noqa: E402
from .experiments.cells import entry_label  # noqa: E402
from .kl import kl_bound  # noqa: E402

NETWORKS = ("per-sigma", "universal")


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub markdown table (no extra dependency)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "nan" if math.isnan(v) else format(v, floatfmt)
        return str(v)
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def curve_frame(curve: dict) -> pd.DataFrame:
    """A stored curve as an ``mse_curve``-like DataFrame (per-image errors in attrs)."""
    frame = pd.DataFrame({"sigma": curve["sigma"], "mse": curve["mse"], "se": curve["se"],
                          "d": curve["d"]})
    frame.attrs["errors"] = np.asarray(curve["errors"], dtype=float)
    return frame


def _pick(curves: list[pd.DataFrame], best) -> pd.DataFrame:
    """Per σ, the curve whose MSE is best (``np.argmax``/``np.argmin``), errors included."""
    mse = np.stack([c["mse"].to_numpy() for c in curves])
    choice = best(mse, axis=0)
    cols = np.arange(mse.shape[1])
    out = curves[0].copy()
    out["mse"] = mse[choice, cols]
    out["se"] = np.stack([c["se"].to_numpy() for c in curves])[choice, cols]
    errors = np.stack([c.attrs["errors"] for c in curves])
    out.attrs["errors"] = errors[choice, cols]
    return out


def bracket(ref_curves: dict) -> tuple[dict, str]:
    """The tightest MMSE reference: ``{"exact": …}`` or ``{"lower": …, "upper": …}``.

    Lower = the highest lower bound per σ, upper = the lowest upper bound per σ (each is
    a valid bound, so their pointwise max/min are too). Without any lower bound, L = 0
    (the trivial bound MMSE ≥ 0) and the KL's upper end is correspondingly weak.
    """
    frames = {name: curve_frame(c) for name, c in ref_curves.items()}
    kinds = {name: c["kind"] for name, c in ref_curves.items()}
    exact = [frames[n] for n in frames if kinds[n] == "exact"]
    if exact:
        return {"exact": exact[0]}, "exact"
    uppers = [frames[n] for n in frames if kinds[n] == "upper"]
    lowers = [frames[n] for n in frames if kinds[n] == "lower"]
    upper = _pick(uppers, np.argmin)
    if lowers:
        return {"lower": _pick(lowers, np.argmax), "upper": upper}, "bracket"
    zero = upper.copy()
    zero["mse"], zero["se"] = 0.0, 0.0
    zero.attrs["errors"] = np.zeros_like(upper.attrs["errors"])
    return {"lower": zero, "upper": upper}, "upper only (L = 0)"


def network_curve(records: list[dict]) -> pd.DataFrame | None:
    """The per-σ family (one network per σ, each at its own σ) or a universal curve."""
    if not records:
        return None
    curves = [r["result"]["curve"] for r in records]
    merged = {key: [v for c in curves for v in c[key]] for key in ("sigma", "mse", "se", "errors")}
    order = np.argsort(merged["sigma"])
    return curve_frame({**{k: [v[i] for i in order] for k, v in merged.items()},
                        "d": curves[0]["d"]})


def log_slope(sigma, mse, lo: float, hi: float) -> float:
    """Least-squares slope of log MSE against log σ² on σ ∈ [lo, hi] (SCIENCE.md §5)."""
    sigma, mse = np.asarray(sigma), np.asarray(mse)
    keep = (sigma >= lo * (1 - 1e-9)) & (sigma <= hi * (1 + 1e-9))
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(sigma[keep] ** 2), np.log(mse[keep]), 1)[0])


class StudyData:
    """Records of one study entry, grouped: references, per-σ networks, universal network."""

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
        self.examples = [r["result"]["examples"] for r in nets
                         if r["spec"]["train"]["mode"] == "per-sigma"]
        self.seconds = sum(r.get("meta", {}).get("seconds", 0.0) for r in records)


def _figure_mse(study: StudyData, refs: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.2))
    palette = sns.color_palette("deep")
    if "exact" in refs:
        e = refs["exact"]
        ax.plot(e.sigma, e.mse, "k-", lw=2, label="MMSE (exact)")
    else:
        lo, up = refs["lower"], refs["upper"]
        ax.fill_between(up.sigma, np.maximum(lo.mse, 1e-12), up.mse, color="0.8",
                        label="MMSE bracket [L, U]")
        ax.plot(up.sigma, up.mse, "k-", lw=1)
        if lo.mse.max() > 0:
            ax.plot(lo.sigma, lo.mse, "k--", lw=1)
    for name, curve in study.reference["result"]["curves"].items():
        if curve["kind"] == "upper" and name in ("identity", "wavelet"):
            ax.plot(curve["sigma"], curve["mse"], ":", color="0.4", lw=1, label=name)
    for i, net in enumerate(NETWORKS):
        frame = study.networks[net]
        if frame is not None:
            ax.errorbar(frame.sigma, frame.mse, yerr=2 * frame.se, marker="o", ms=3,
                        color=palette[i], label=f"network ({net})")
    ax.set(xscale="log", yscale="log", xlabel="σ (pixel units)", ylabel="MSE per pixel",
           title=study.label)
    ax.legend(fontsize=7)
    _save(fig, path)


def _figure_kl(study: StudyData, integrands: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    palette = sns.color_palette("deep")
    for i, (net, frame) in enumerate(integrands.items()):
        ax.fill_between(frame.sigma, frame.integrand_low, frame.integrand_high, alpha=0.3,
                        color=palette[i])
        ax.plot(frame.sigma, frame.integrand_high, "-o", ms=3, color=palette[i],
                label=f"{net}: (MSE_θ − L)/σ²")
        ax.plot(frame.sigma, frame.integrand_low, "--", color=palette[i],
                label=f"{net}: (MSE_θ − U)/σ²")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xscale="log", xlabel="σ", ylabel="KL density in ln σ (nats)",
           title=f"KL integrand — {study.label}")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=7)
    _save(fig, path)


def _figure_examples(study: StudyData, path: Path) -> bool:
    if not study.examples:
        return False
    chosen = sorted(study.examples, key=lambda e: e["sigma"][0])
    chosen = [chosen[i] for i in sorted({0, len(chosen) // 2, len(chosen) - 1})]
    fig, axes = plt.subplots(1, 1 + 2 * len(chosen), figsize=(1.6 * (1 + 2 * len(chosen)), 1.9))
    clean = np.asarray(chosen[0]["clean"])[0, 0]
    panels = [(clean, "clean")]
    for e in chosen:
        panels += [(np.asarray(e["noisy"][0])[0, 0], f"noisy σ={e['sigma'][0]:.3g}"),
                   (np.asarray(e["denoised"][0])[0, 0], "denoised")]
    lo, hi = np.percentile(clean, [1, 99]) if clean.std() > 0 else (0, 1)
    for ax, (img, title) in zip(axes, panels, strict=True):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:
    from io import BytesIO

    buffer = BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write_bytes(path, frame.to_csv(index=False, float_format="%.6g").encode())


def rate_rows(study: StudyData, refs: dict, preset) -> list[dict]:
    """Rates and summaries of SCIENCE.md §5 for this entry."""
    rows = []
    curves = {f"network ({n})": f for n, f in study.networks.items() if f is not None}
    curves.update({f"MMSE {k}": f for k, f in refs.items() if f["mse"].max() > 0})
    if study.name == "calpha":
        alpha = float(study.params.get("alpha", 2.0))
        for label, f in curves.items():
            rows.append({"entry": study.label, "measure": "slope of log MSE vs log σ²",
                         "curve": label, "value": log_slope(f.sigma, f.mse, *preset.rate_range),
                         "theory": alpha / (alpha + 1)})
    if study.name == "disks":
        for label, f in curves.items():
            k = int(np.argmin(f.sigma.to_numpy()))
            rows.append({"entry": study.label,
                         "measure": f"total MSE/σ² at σ={f.sigma.iloc[k]:.3g}", "curve": label,
                         "value": float(f.mse.iloc[k] * f.d.iloc[k] / f.sigma.iloc[k] ** 2),
                         "theory": 5.0})
    return rows


def shuffled_rows(studies: list[StudyData]) -> list[dict]:
    """Network on shuffled images against its base: same MMSE, different inductive fit."""
    rows = []
    by_label = {s.label: s for s in studies}
    for s in studies:
        if s.name != "shuffled" or s.reference is None:
            continue
        base_params = {k: v for k, v in s.params.items() if k not in ("base", "seed")}
        base = by_label.get(entry_label(s.params.get("base", "faces"), base_params))
        net, base_net = s.networks["per-sigma"], base.networks["per-sigma"] if base else None
        ref, _ = bracket(s.reference["result"]["curves"])
        best = ref.get("exact", ref["upper"])
        if net is None:
            continue
        for i, sigma in enumerate(net.sigma):
            rows.append({"entry": s.label, "sigma": sigma, "network shuffled": net.mse[i],
                         "network base": base_net.mse[i] if base_net is not None else math.nan,
                         "best reference (P f P⁻¹)": best.mse[i],
                         "ratio shuffled/base": net.mse[i] / base_net.mse[i]
                         if base_net is not None else math.nan})
    return rows


def build_report(preset, entries, records: list[dict], out: Path, run_meta: dict) -> Path:
    """Write ``out/README.md`` with every table and figure; return its path."""
    out.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    studies = []
    for name, params in entries:
        mine = [r for r in records
                if r["spec"]["dataset"] == name and r["spec"]["params"] == params]
        studies.append(StudyData(name, params, mine))
    lines = [
        "# theorybench report",
        "",
        f"Preset **{preset.name}** · commit `{run_meta.get('commit', '?')}` · "
        f"date {run_meta.get('date', '?')} · device {run_meta.get('device', '?')} · "
        f"wall time {run_meta.get('wall_seconds', float('nan')):.0f} s for this run "
        f"(compute stored in the cache: {sum(s.seconds for s in studies):.0f} s).",
        "",
        "Regenerate with `python run_all.py --preset " + preset.name + "`; the numbers below "
        "come only from the stored cell results of that run.",
        f"σ grid: {', '.join(f'{s:g}' for s in preset.sigmas)} (pixel units, images in "
        f"about [0, 1]); {preset.n_eval} test images per curve, the same images and noise for "
        f"every denoiser. Networks: {preset.net}, {preset.per_sigma_steps} steps per σ, "
        f"{preset.universal_steps} steps for the universal one (σ = {preset.sigma_max}·u²), "
        f"batch {preset.batch_size}.",
        "",
    ]
    kl_rows, rates, mse_rows = [], [], []
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
        _figure_mse(study, refs, out / f"mse_{s}.png")
        lines += [f"MMSE reference: {how}.", "", f"![MSE against σ](mse_{s}.png)", ""]
        integrands = {}
        for net, frame in study.networks.items():
            if frame is None or len(frame) != len(preset.sigmas):
                continue
            result = kl_bound(frame, refs, sigma0=[x for x in preset.sigma0s
                                                   if preset.sigmas[0] <= x <= preset.sigmas[-1]])
            integrands[net] = result.integrand
            for row in result.table.to_dict("records"):
                kl_rows.append({"entry": study.label, "network": net, "reference": how, **row})
        if integrands:
            _figure_kl(study, integrands, out / f"kl_{s}.png")
            lines += [f"![KL integrand](kl_{s}.png)", ""]
            mine = pd.DataFrame([r for r in kl_rows if r["entry"] == study.label])
            lines += [markdown_table(mine[["network", "sigma0", "kl_low", "kl_high", "se_low",
                                           "se_high", "tail", "bits_low", "bits_high",
                                           "negative_gap"]]), ""]
            if mine["negative_gap"].any():
                lines += ["Flag: the network's MSE falls below the reference upper bound U at "
                          "some σ (negative lower gap, kept unclipped): U is loose there.", ""]
        rates += rate_rows(study, refs, preset)
        if _figure_examples(study, out / f"examples_{s}.png"):
            lines += [f"![clean, noisy, denoised](examples_{s}.png)", ""]
    shuffled = shuffled_rows(studies)
    if rates:
        lines += ["## Rates", "", f"C^α slope fitted on σ ∈ [{preset.rate_range[0]}, "
                  f"{preset.rate_range[1]}]; theory α/(α+1). Disks: total MSE/σ² at the "
                  "smallest σ; manifold theory 5.", "", markdown_table(pd.DataFrame(rates)), ""]
    if shuffled:
        lines += ["## Shuffled against base", "", markdown_table(pd.DataFrame(shuffled)), ""]
    from .report_jacobian import jacobian_section  # they build on this module's helpers
    from .report_memorization import memorization_section

    lines += jacobian_section(records, out)
    lines += memorization_section(records, out)
    for name, rows in (("kl", kl_rows), ("rates", rates), ("shuffled", shuffled),
                       ("mse", mse_rows)):
        if rows:
            _write_csv(pd.DataFrame(rows), out / f"{name}.csv")
    lines += ["## Files", "", "Tables as CSV: " + ", ".join(
        f"`{n}.csv`" for n, r in (("kl", kl_rows), ("rates", rates), ("shuffled", shuffled),
                                   ("mse", mse_rows)) if r)
              + ", `jacobian.csv`, `jacobian_pairs.csv`, `memorization.csv`, "
                "`memorization_mse.csv` (when computed).", ""]
    readme = out / "README.md"
    atomic_write_bytes(readme, "\n".join(lines).encode())
    return readme
