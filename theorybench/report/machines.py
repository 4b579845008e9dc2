"""The "what do the networks compute" section: the LS and ELS machines beside the networks.

Built from stored ``machines`` records (``experiments.machines_sweep``), the memorization
records they belong to (the S1 network's test MSE) and the sweep's reference records (the
MMSE bracket on the same held-out images). Per distribution: a table with one row per
training-set size N, a figure (agreement against N, MSE against N at one σ, the
calibrated patch side against σ) and an image grid at the largest N. Rows go to
``machines.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import atomic_write_bytes, canonical_json
from ..experiments.keys import entry_label
from ..experiments.memorization_sweep import STUDY
from ..figures import PALETTE, Panel, cached_figure, image_mosaic, plt
from .common import bracket, markdown_table, slug

ANCHOR_R2 = (0.94, 0.96)  # Kamb & Ganguli (2025): median r², ELS vs trained CNNs/UNets
ROLES = (("empirical", "empirical"), ("ls", "LS"), ("els", "ELS"), ("s2", "S2 network"))
GRID_ROWS = 4


def _bracket_at(refs: dict, sigma: float) -> dict:
    """``L``, ``L se``, ``U``, ``U se`` per pixel at σ from the bracket's curves ``refs``
    (:func:`report.bracket`: an exact MMSE is both ends; NaN where absent)."""
    out = {k: math.nan for k in ("L", "L se", "U", "U se")}
    for side, name in (("lower", "L"), ("upper", "U")):
        frame = refs.get(side, refs.get("exact"))
        hit = None if frame is None else frame[np.isclose(frame["sigma"], sigma)]
        if hit is not None and len(hit):
            out[name], out[f"{name} se"] = float(hit["mse"].iloc[0]), float(hit["se"].iloc[0])
    return out


def _curve_at(curve: dict | None, sigma: float) -> float:
    if not curve:
        return math.nan
    sig = np.asarray(curve["sigma"])
    hit = np.flatnonzero(np.isclose(sig, sigma))
    return float(curve["mse"][hit[0]]) if len(hit) else math.nan


def machine_rows(machines: list[dict], memorization: dict, references: dict) -> pd.DataFrame:
    """One row per machines record: agreement with the S1 network's samples (median and
    quartiles of r²; median r), each denoiser's MSE at the smallest and the middle σ of
    the grid, the bracket there, and the calibrated patch sides."""
    rows = []
    brackets = {key: bracket(r["result"]["curves"])[0] for key, r in references.items()}
    for r in machines:
        spec, res = r["spec"], r["result"]
        row = {"entry": entry_label(spec["dataset"], spec["params"]), "N": spec["N"],
               "K": spec["n_samples"]}
        for role, _ in ROLES:
            a = res["agreement"][role]
            row[f"r2 {role}"] = a["r2"]["median"]
            row[f"r2 {role} q1"], row[f"r2 {role} q3"] = a["r2"]["q1"], a["r2"]["q3"]
            row[f"r {role}"] = a["r"]["median"]
        mem = memorization.get((canonical_json([spec["dataset"], spec["params"]]), spec["N"]))
        refs = brackets.get(canonical_json([spec["dataset"], spec["params"]]), {})
        sigmas = sorted(spec["sigmas"])
        for tag, sigma in (("lo", sigmas[0]), ("mid", sigmas[len(sigmas) // 2])):
            row[f"sigma_{tag}"] = sigma
            row[f"network {tag}"] = _curve_at(mem["result"].get("mse_test") if mem else None,
                                              sigma)
            for role in ("empirical", "ls", "els"):
                row[f"{role} {tag}"] = _curve_at(res.get("mse", {}).get(role), sigma)
            for name, value in _bracket_at(refs, sigma).items():  # "L", "L se", ...
                side, *se = name.split()
                row[" ".join([side, tag, *se])] = value
        for name in ("ls", "els"):
            sched = res["schedule"][name]
            row[f"P {name}"] = f"{sched[0]}→{sched[-1]}"
        rows.append(row)
    return pd.DataFrame(rows)


def calibrated_gap(result: dict) -> dict:
    """Per machine, the per-pixel MSE between its output and the network's along the
    network's path at each grid σ, at the calibrated patch side (its least score)."""
    return {name: [scores[str(side)][i] for i, side in enumerate(result["schedule"][name])]
            for name, scores in result["scores"].items()}


def _table(frame: pd.DataFrame) -> str:
    shown = pd.DataFrame({"N": frame["N"]})
    for role, text in ROLES:
        shown[f"r² S1 net vs {text} [q1, q3]"] = [
            f"{m:.3f} [{a:.3f}, {b:.3f}]" for m, a, b in
            zip(frame[f"r2 {role}"], frame[f"r2 {role} q1"], frame[f"r2 {role} q3"],
                strict=True)]
    tag = "lo"
    sigma = frame[f"sigma_{tag}"].iloc[0]
    for col, text in (("network", "S1 net"), ("empirical", "empirical"), ("ls", "LS"),
                      ("els", "ELS")):
        shown[f"{text} MSE/U σ={sigma:g}"] = frame[f"{col} {tag}"] / frame[f"U {tag}"]
    shown["P LS (first→last step of the path)"] = frame["P ls"]
    shown["P ELS"] = frame["P els"]
    return markdown_table(shown, ".3g")


@cached_figure
def _figure(frame: pd.DataFrame, schedules: dict, gaps: dict, grid: list, label: str):
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    n = frame["N"].to_numpy()
    for i, (role, text) in enumerate(ROLES):
        med = frame[f"r2 {role}"].to_numpy()
        err = np.abs(np.stack([med - frame[f"r2 {role} q1"], frame[f"r2 {role} q3"] - med]))
        axes[0].errorbar(n, med, yerr=err, marker="o", ms=4, capsize=3, color=PALETTE[i],
                         label=f"S1 net vs {text}")
    axes[0].axhspan(*ANCHOR_R2, color="grey", alpha=0.3,
                    label="Kamb & Ganguli: ELS vs trained CNNs")
    axes[0].set(ylabel="r² per image (median, quartiles)", ylim=(-0.03, 1.03))
    for i, (col, text) in enumerate((("network", "S1 network"), ("empirical", "empirical"),
                                     ("ls", "LS"), ("els", "ELS"))):
        axes[1].plot(n, frame[f"{col} lo"] / frame["U lo"], marker="o", ms=4,
                     color=PALETTE[i], label=text)
    axes[1].plot(n, frame["L lo"] / frame["U lo"], ls="--", color="black",
                 label="L/U (the MMSE lies in [L/U, 1])")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set(yscale="log", ylabel=f"held-out MSE / U at σ={frame['sigma_lo'].iloc[0]:g}")
    for ax in axes[:2]:
        ax.set(xscale="log", xlabel="training-set size N")
        ax.legend(fontsize=7)
    for j, (n_value, sched) in enumerate(sorted(schedules.items())):
        for name, style in (("ls", "-"), ("els", "--")):
            axes[2].plot(grid[:len(sched[name])], sched[name], ls=style, marker=".",
                         color=PALETTE[j % len(PALETTE)],
                         label=f"N={n_value} {name.upper()}")
    axes[2].set(xscale="log", xlabel="σ along the sampler's grid", ylabel="calibrated patch P")
    axes[2].legend(fontsize=6, ncol=2)
    for j, (n_value, gap) in enumerate(sorted(gaps.items())):
        for name, style in (("ls", "-"), ("els", "--")):
            sig = np.asarray(grid[:len(gap[name])])
            axes[3].plot(sig, np.asarray(gap[name]) / sig ** 2, ls=style, marker=".",
                         color=PALETTE[j % len(PALETTE)], label=f"N={n_value} {name.upper()}")
    axes[3].set(xscale="log", yscale="log", xlabel="σ along the sampler's grid",
                ylabel="‖f_machine − f_net‖² / (d σ²) on the path")
    axes[3].legend(fontsize=6, ncol=2)
    fig.suptitle(label, fontsize=9)
    return fig


@cached_figure
def _figure_grid(record: dict, label: str):
    images = {k: np.asarray(v) for k, v in record["result"]["examples"].items()}
    columns = (("s1", "S1 network"), *ROLES)
    rows = min(GRID_ROWS, len(images["s1"]))
    stack = np.concatenate([images[c][:rows].ravel() for c, _ in columns])
    lo, hi = np.percentile(stack, [1, 99])
    hi = hi if hi > lo else lo + 1
    per = record["result"]["per_sample"]
    grid = []
    for i in range(rows):
        row = []
        for key, title in columns:
            note = "" if key == "s1" else f"r² {per[key][i] ** 2:.2f}"
            text = (f"{title}\n" if i == 0 else "\n") + note
            img = images[key][i]
            row.append(Panel(img[0], text, "gray", lo, hi) if img.shape[0] == 1 else
                       Panel(np.clip((np.moveaxis(img, 0, -1) - lo) / (hi - lo), 0, 1), text))
        grid.append(row)
    return image_mosaic(grid, title=f"{label}, N = {record['spec']['N']}: same noise per row",
                        inches=1.5, title_lines=2)


def machines_section(records: list[dict], out_dir) -> list[str]:
    """Markdown lines of the section (empty without ``machines`` records); writes its
    figures and ``machines.csv`` in ``out_dir``."""
    out = Path(out_dir)
    mine = [r for r in records if r.get("spec", {}).get("kind") == "machines"
            and "result" in r and "agreement" in r["result"]]
    if not mine:
        return []
    memorization = {(canonical_json([r["spec"]["dataset"], r["spec"]["params"]]),
                     r["spec"]["N"]): r for r in records
                    if r.get("spec", {}).get("kind") == "memorization" and "result" in r}
    references = {canonical_json([r["spec"]["dataset"], r["spec"]["params"]]): r
                  for r in records if r.get("spec", {}).get("kind") == "reference"
                  and r["spec"].get("study") == STUDY and "result" in r}
    first = mine[0]["spec"]
    lines = ["## What the networks compute: local and equivariant machines", "",
             f"For each memorization cell, the optimal denoisers of S1 under locality (LS: "
             f"each pixel is the posterior mean of its centre given the P×P noisy patch "
             f"around it, over the training patches at the same place) and under locality "
             f"and translation equivariance (ELS: over the training patches of every "
             f"place), Kamb & Ganguli (ICML 2025); boundary rule `{first['boundary']}` "
             f"(`theorybench/denoisers/local.py`). The patch side P is calibrated per σ "
             f"of the sampler's grid along the S1 network's own sampling path (first "
             f"{first['n_calibration']} noises; candidates {first['patches']}): the P "
             f"whose output is closest to the network's. Then the S1 network, the "
             f"empirical denoiser of S1, both machines and the S2 network sample from the "
             f"same {first['n_samples']} noises. Agreement per image: r, the Pearson "
             f"correlation of two samples' pixels (each centred on its own pixel mean; the "
             f"Memorization section's centred cosine subtracts a mean image instead), and "
             f"r²; the anchor "
             f"reports the median r² between the ELS machine and trained convolutional "
             f"networks, {ANCHOR_R2[0]}–{ANCHOR_R2[1]} (0.77 with attention). MSE/U: "
             f"held-out MSE over the estimator upper bound U of the MMSE, on the same "
             f"images and noise where the held-out images are the family's own draws or "
             f"its test split (a finite set without one: its unused training images, and "
             f"U from the reference cell's images); MMSE/U lies between L/U and 1.", ""]
    frames = []
    by_entry: dict[str, list[dict]] = {}
    for r in mine:
        by_entry.setdefault(canonical_json([r["spec"]["dataset"], r["spec"]["params"]]),
                            []).append(r)
    for group in by_entry.values():
        group.sort(key=lambda r: r["spec"]["N"])
        label = entry_label(group[0]["spec"]["dataset"], group[0]["spec"]["params"])
        frame = machine_rows(group, memorization, references)
        frames.append(frame)
        s = "machines-" + slug(label)
        lines += [f"### {label}", "", _table(frame), ""]
        best = frame.iloc[-1]
        closest = max(ROLES[:3], key=lambda rt: best[f"r2 {rt[0]}"])
        tied = [text for role, text in ROLES[:3] if role != closest[0]
                and best[f"r2 {role} q3"] >= best[f"r2 {closest[0]} q1"]]
        overlap = (f", its quartiles overlapping those of the {' and '.join(tied)} "
                   f"machine's over {best['K']} samples" if tied else "")
        lines += [f"At N = {best['N']}, the S1 network's samples agree most among the three "
                  f"machines, by the median, with the {closest[1]} machine's (median r² "
                  f"{best[f'r2 {closest[0]}']:.3f}{overlap}); the "
                  f"ELS machine's median r² is {best['r2 els']:.3f} against the anchor's "
                  f"{ANCHOR_R2[0]}–{ANCHOR_R2[1]}, and the two networks' (S1 vs S2) "
                  f"{best['r2 s2']:.3f}.", ""]
        schedules = {r["spec"]["N"]: r["result"]["schedule"] for r in group}
        gaps = {r["spec"]["N"]: calibrated_gap(r["result"]) for r in group}
        if _figure(frame, schedules, gaps, group[-1]["result"]["sigma_grid"], label,
                   out / f"{s}.png"):
            lines += [f"![agreement, MSE and patch size]({s}.png)", ""]
        if _figure_grid(group[-1], label, out / f"{s}-grid.png"):
            lines += [f"![samples from the same noise]({s}-grid.png)", ""]
    atomic_write_bytes(out / "machines.csv",
                       pd.concat(frames).to_csv(index=False).encode())
    lines += ["Table as CSV: `machines.csv` (agreement r² quartiles and median r per role, "
              "MSE at the smallest and middle σ with the bracket, patch schedules).", ""]
    return lines
