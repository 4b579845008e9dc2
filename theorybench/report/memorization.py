"""The memorization → generalization section of ``reports/README.md`` (SCIENCE.md §8).

Built from stored ``memorization`` cell records only (see
``theorybench.experiments.memorization_sweep``). Per distribution: a table with one row per
training-set size N, a figure of the measures against N, an image grid per N (S1 sample,
its nearest training image, S2 sample and empirical-denoiser sample from the same noise),
histograms of the nearest-training and cross-network similarities per N (as the paper's
figure 2), where the family can fit its images the fraction of the sampler's iterates that
are images of the family at each σ (the trace), and a sentence checking the expected
behaviour. All rows also go to ``memorization.csv``, the train/test MSE curves (and the
S2 network's on the S1 images, curve ``cross``) to ``memorization_mse.csv``, the traces to
``memorization_trace.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..cache import canonical_json
from ..experiments.keys import entry_label
from ..figures import PALETTE, Panel, cached_figure, image_mosaic, plt
from ..kl import kl_bound
from ..memorization import COPY_COSINE, COPY_THRESHOLD, MEMORIZED_RATIO, ON_MANIFOLD_FACTOR
from .common import (
    bracket,
    closing_inputs,
    curve_frame,
    image_size,
    markdown_table,
    objective_law,
    slug,
    training_steps_text,
    write_csv,
)

SMALL_N = 10  # "N ≤ 10": the memorization regime checked by the sentence
MEMORIZED_MIN = 0.9  # ≥ 90% of samples memorized (copy criterion) at N ≤ SMALL_N
ON_MANIFOLD_MIN = 0.8  # ≥ 80% of the samples are images of the family at the largest N
TABLES = ("memorization.csv", "memorization_mse.csv", "memorization_trace.csv")  # written
IDENTITY_FRACTION = 0.5  # a network with test MSE ≥ this × σ² barely denoises
GRID_ROWS = 4  # noises shown per image grid
COLUMNS = (("s1", "S1 network"), ("s1_nearest", "nearest in S1"), ("s2", "S2 network"),
           ("empirical", "empirical (S1)"))


def _middle(sigmas) -> int:
    return len(sigmas) // 2


def _reference_for(spec: dict, records: list[dict], n_test: int | None = None) -> dict | None:
    """The reference cell of the same distribution, σ grid, n and seed (paired images);
    ``n_test``: the held-out images the cell used (fewer than ``n_eval`` on a small set)."""
    n = spec["n_eval"] if n_test is None else n_test
    for r in records:
        s = r.get("spec", {})
        if (s.get("kind") == "reference" and "result" in r and s["dataset"] == spec["dataset"]
                and s["params"] == spec["params"] and list(s["sigmas"]) == list(spec["sigmas"])
                and s["n_eval"] == n and s["seed"] == spec["seed"]):
            return r
    return None


def _kl_interval(result: dict, reference: dict | None, sigma0: float):
    """``[B_low, B_high]`` (nats, SCIENCE.md §4b) of the S1 network at ``sigma0`` against the
    reference bracket; B_high includes the closing term when the reference stores the data
    variance."""
    if reference is None or "mse_test" not in result:
        return math.nan, math.nan
    test = curve_frame(result["mse_test"])
    refs, _ = bracket(reference["result"]["curves"])
    if any(len(f) != len(test) for f in refs.values()):
        return math.nan, math.nan
    row = kl_bound(test, refs, sigma0=[sigma0],
                   **closing_inputs(reference["result"], test["sigma"])).table.iloc[0]
    return float(row["kl_low"]), float(row["kl_high"])  # [B_low, B_high] of SCIENCE.md §4b


def _num(value) -> float:
    return math.nan if value is None else float(value)


def stays_down_to(sigmas, fractions, level: float = ON_MANIFOLD_MIN) -> float:
    """The smallest σ of a trace (``sigmas`` decreasing) down to which ``fractions`` stay
    ≥ ``level`` at every σ; NaN when the first already falls below it."""
    lowest = math.nan
    for sigma, fraction in zip(sigmas, fractions, strict=True):
        if fraction < level:
            break
        lowest = sigma
    return lowest


def summary_row(record: dict, reference: dict | None = None) -> dict:
    """One table row (dict) of a memorization record; NaN where a part failed or where an
    old record lacks a measure (records before the copy criterion: ``mem`` is NaN and their
    d1/d2 fraction goes to ``memr``)."""
    spec, res = record["spec"], record["result"]
    sigmas = spec["sigmas"]
    mid = _middle(sigmas)
    row = {"entry": entry_label(spec["dataset"], spec["params"]), "N": spec["N"],
           "K": spec["n_samples"]}
    for role, name in (("s1", "S1"), ("s2", "S2"), ("empirical", "emp")):
        s = res.get("summary", {}).get(role) or {}
        new = "median_copy_cos" in s  # the copy criterion (defined at every N)
        row[f"mem {name}"] = s["memorized_fraction"] if new else math.nan
        # Wilson's interval (not degenerate at 0 and 1)
        row[f"mem {name} lo"] = s["memorized_ci_wilson"][0] if new else math.nan
        row[f"mem {name} hi"] = s["memorized_ci_wilson"][1] if new else math.nan
        row[f"memr {name}"] = _num(s.get("memorized_ratio_fraction") if new
                                   else s.get("memorized_fraction"))
        row[f"memu {name}"] = _num(s.get("memorized_unit_fraction"))
        row[f"cos_c {name}"] = _num(s.get("median_copy_cos"))
        row[f"cos_nn {name}"] = _num(s.get("median_cos_nn"))
        row[f"cos_nn_c {name}"] = _num(s.get("median_cos_nn_centered"))
        row[f"on {name}"] = _num(s.get("on_manifold_fraction"))
        row[f"flat {name}"] = _num(s.get("flat_fraction"))
        row[f"on {name} lo"], row[f"on {name} hi"] = (
            s.get("on_manifold_ci") or (math.nan, math.nan))
    base = (res.get("baseline") or {}).get("summary", {})
    row["mem held"] = _num(base.get("memorized_fraction"))
    row["mem held lo"], row["mem held hi"] = base.get("memorized_ci_wilson") or (math.nan,
                                                                                 math.nan)
    row["n held"] = _num(base.get("n"))
    row["cos_c held"] = _num(base.get("median_copy_cos"))
    row["cos_nn held"] = _num(base.get("median_cos_nn"))
    manifold = (res.get("baseline") or {}).get("manifold", {})
    row["on held"] = _num(manifold.get("clean", {}).get("on_manifold_fraction"))
    row["on held noisy"] = _num(manifold.get("noisy", {}).get("on_manifold_fraction"))
    row["flat held"] = _num(manifold.get("clean", {}).get("flat_fraction"))
    row["sigma_last"] = _num(res.get("manifold", {}).get("sigma_last"))
    trace = res.get("trace", {})
    for role, name in (("s1", "S1"), ("s2", "S2")):
        row[f"down to {name}"] = (stays_down_to(trace["sigma"], trace[role]) if role in trace
                                  else math.nan)
        row[f"trace last {name}"] = trace[role][-1] if role in trace else math.nan
    row["trace last sigma"] = trace["sigma"][-1] if trace else math.nan
    row["trace last held"] = trace["held"][-1] if "held" in trace else math.nan
    post = res.get("posterior_samples") or {}
    row["post denoiser"] = post.get("denoiser", "")
    row["on post"] = _num(post.get("on_manifold_fraction"))
    row["on post lo"], row["on post hi"] = post.get("on_manifold_ci") or (math.nan, math.nan)
    row["flat post"] = _num(post.get("flat_fraction"))
    s1 = res.get("summary", {}).get("s1", {})
    row["cross"] = s1.get("median_cross_cos", math.nan)
    row["cross_cc"] = _num(s1.get("median_cross_copy_cos"))
    row["cross_c"] = s1.get("median_cross_cos_centered", math.nan)
    emp = res.get("summary", {}).get("empirical", {})
    row["cos emp–S1 net"] = emp.get("median_cross_cos", math.nan)
    row["sigma_mid"] = sigmas[mid]
    row["train mse"] = res["mse_train"]["mse"][mid] if "mse_train" in res else math.nan
    row["test mse"] = res["mse_test"]["mse"][mid] if "mse_test" in res else math.nan
    row["test/train"] = row["test mse"] / row["train mse"] if row["train mse"] > 0 else math.nan
    cross = res["mse_cross"]["mse"][mid] if "mse_cross" in res else math.nan
    row["cross/train"] = cross / row["train mse"] if row["train mse"] > 0 else math.nan
    row["kl low"], row["kl high"] = _kl_interval(res, reference, min(sigmas))
    row["sigma0"] = min(sigmas)
    row["failed"] = res.get("failed", "")
    return row


def _sigma(value: float) -> str:
    return "none (below from the first σ)" if math.isnan(value) else f"{value:.3g}"


def _ci(p, lo, hi) -> str:
    return "—" if math.isnan(p) else f"{p:.2f} [{lo:.2f}, {hi:.2f}]"


def _table(frame: pd.DataFrame) -> str:
    sigma_mid, sigma0 = frame["sigma_mid"].iloc[0], frame["sigma0"].iloc[0]
    shown = pd.DataFrame({
        "N": frame["N"],
        "memorized S1 net [95% CI]": [_ci(r["mem S1"], r["mem S1 lo"], r["mem S1 hi"])
                                      for _, r in frame.iterrows()],
        "memorized S2 net": frame["mem S2"],
        "memorized held-out (baseline) [95% CI], images": [
            f"{_ci(r['mem held'], r['mem held lo'], r['mem held hi'])}, "
            f"{'—' if math.isnan(r['n held']) else int(r['n held'])}"
            for _, r in frame.iterrows()],
        "centred cos nearest (S1 net)": frame["cos_c S1"],
        "centred cos nearest (S2 net)": frame["cos_c S2"],
        "centred cos nearest (held-out)": frame["cos_c held"],
        "centred cos S1–S2": frame["cross_cc"],
        "raw cos nearest (S1 net)": frame["cos_nn S1"],
        "raw cos nearest (held-out)": frame["cos_nn held"],
        "d1/d2 < 1/3 (S1 net)": ["— (N = 1)" if n == 1 and math.isnan(v) else f"{v:.4g}"
                                 for n, v in zip(frame["N"], frame["memr S1"], strict=True)],
        f"train MSE σ={sigma_mid:g}": frame["train mse"],
        f"test MSE σ={sigma_mid:g}": frame["test mse"],
        "test/train": frame["test/train"],
        "S2 net / S1 net on S1": frame["cross/train"],
        "memorized empirical": frame["mem emp"],
    })
    if frame["on S1"].notna().any():  # the family can tell its own images (project)
        shown.insert(4, "images of the family S1 net [95% CI]",
                     [_ci(r["on S1"], r["on S1 lo"], r["on S1 hi"]) for _, r in frame.iterrows()])
        shown.insert(5, "images of the family S2 net", frame["on S2"])
        shown.insert(6, "images of the family: held-out clean / at σ_last",
                     [f"{a:.2f} / {b:.2f}" for a, b in zip(frame["on held"],
                                                           frame["on held noisy"], strict=True)])
        shown.insert(7, "flat: S1 net / S2 net / held-out",
                     [f"{a:.2f} / {b:.2f} / {c:.2f}" for a, b, c in
                      zip(frame["flat S1"], frame["flat S2"], frame["flat held"], strict=True)])
        after = shown.columns.get_loc("flat: S1 net / S2 net / held-out") + 1
        if frame["trace last S1"].notna().any():  # the trace of an ODE sampler
            shown.insert(after, f"iterates images of the family (≥ {ON_MANIFOLD_MIN:.0%}) "
                                f"down to σ: S1 / S2 net",
                         [f"{_sigma(a)} / {_sigma(b)}" for a, b in
                          zip(frame["down to S1"], frame["down to S2"], strict=True)])
            after += 1
        if frame["on post"].notna().any():
            shown.insert(after, "posterior mean's samples: images of the family [95% CI] / flat",
                         ["—" if math.isnan(r["on post"]) else
                          f"{_ci(r['on post'], r['on post lo'], r['on post hi'])} / "
                          f"{r['flat post']:.2f}" for _, r in frame.iterrows()])
    if frame["kl high"].notna().any():
        shown[f"KL σ0={sigma0:g} [low, high] nats"] = [
            f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(frame["kl low"], frame["kl high"],
                                                        strict=True)]
    return markdown_table(shown, floatfmt=".4g")


def _trace_text(records: list[dict]) -> str:
    """The intro's sentences on the trace and the posterior mean's samples, for those
    that the records hold."""
    text = ""
    if any("trace" in r["result"] for r in records):
        text += (f" The **trace** follows the samples of an ODE sampler on their way down: at "
                 f"each σ of the sampler's grid but the last, the fraction of the iterates "
                 f"(which still carry noise σ) within {ON_MANIFOLD_FACTOR:g}σ² per pixel of "
                 f"their best fit, against held-out images with noise σ; flat fits count "
                 f"here (the noise hides whether an iterate shows a shape), unlike in the "
                 f"samples' criterion, so the held-out images' trace fraction can exceed "
                 f"their fraction of images of the family.")
    if any("posterior_samples" in r["result"] for r in records):
        text += (" At the largest N the family's posterior mean (an estimate from y alone "
                 "where no exact one exists) is sampled with the same sampler and noises, a "
                 "reference for the networks' fractions.")
    return text


@cached_figure
def _figure_vs_n(frame: pd.DataFrame, label: str):
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    palette = PALETTE
    n = frame["N"].to_numpy()
    for i, (name, text) in enumerate((("S1", "S1 net"), ("S2", "S2 net"),
                                      ("emp", "empirical"))):
        p = frame[f"mem {name}"].to_numpy()
        err = np.abs(np.stack([p - frame[f"mem {name} lo"], frame[f"mem {name} hi"] - p]))
        axes[0].errorbar(n, p, yerr=err, marker="o", ms=4, capsize=3, color=palette[i],
                         label=f"{text}: memorized")
        if name != "emp":
            axes[0].plot(n, frame[f"memr {name}"], ls=":", marker="x", color=palette[i],
                         label=f"{text}: d1/d2 < {MEMORIZED_RATIO:.2g}")
    axes[0].plot(n, frame["mem held"], ls="--", marker="s", ms=4, color="black",
                 label="held-out: memorized")
    if frame["on S1"].notna().any():  # samples that are images of the family
        for i, name in enumerate(("S1", "S2")):
            axes[0].plot(n, frame[f"on {name}"], ls="-.", marker="d", ms=4,
                         color=palette[4 + i], label=f"{name} net: family images")
        axes[0].plot(n, frame["on held"], ls="--", marker="d", ms=4, color="grey",
                     label="held-out: family images")
    axes[0].set(ylabel=f"fraction (memorized: centred cos ≥ {COPY_COSINE:.3g})")
    for col, text, color, style in (("cos_c S1", "nearest training (S1 net)", 0, "-"),
                                    ("cos_c S2", "nearest training (S2 net)", 1, "-"),
                                    ("cross_cc", "S1 net vs S2 net", 2, "-"),
                                    ("cos_c held", "held-out vs nearest S1 image", 7, "--"),
                                    ("cos_nn S1", "raw cosine, nearest (S1 net)", 0, ":"),
                                    ("cross", "raw cosine, S1 vs S2", 2, ":")):
        axes[1].plot(n, frame[col], marker="o", ms=4, ls=style, color=palette[color],
                     label=text)
    axes[1].axhline(COPY_COSINE, color="grey", lw=0.8, ls="-.", label="copy threshold")
    axes[1].set(ylabel="median centred cosine (dotted: raw)")
    sigma_mid = frame["sigma_mid"].iloc[0]
    axes[2].plot(n, frame["train mse"], "o-", color=palette[0], label="train (S1 images)")
    axes[2].plot(n, frame["test mse"], "s-", color=palette[3], label="test (held out)")
    axes[2].set(yscale="log", ylabel=f"MSE per pixel of the S1 network at σ={sigma_mid:g}")
    for ax in axes:
        ax.set(xscale="log", xlabel="training-set size N")
    for ax in axes[1:]:
        ax.legend(fontsize=7)
    # the fractions' nine entries would cover their curves: in a band above them
    axes[0].set(ylim=(-0.03, 1.6), yticks=np.linspace(0, 1, 6))
    axes[0].legend(fontsize=7, loc="upper center", ncol=2)
    fig.suptitle(label, fontsize=9)
    return fig


@cached_figure
def _figure_trace(records: list[dict], label: str):
    """Per N, the fraction of the sampler's iterates that are images of the family at
    their own σ (S1 solid, S2 dashed), with held-out images and, where sampled, the
    posterior mean's iterates as references."""
    usable = [r for r in records if "trace" in r["result"]]
    if not usable:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, r in enumerate(usable):
        trace = r["result"]["trace"]
        color = PALETTE[i % len(PALETTE)]
        ax.plot(trace["sigma"], trace["s1"], "o-", ms=3, color=color,
                label=f"N = {r['spec']['N']}: S1 net")
        ax.plot(trace["sigma"], trace["s2"], "s--", ms=3, color=color, alpha=0.7,
                label=f"N = {r['spec']['N']}: S2 net")
    last = usable[-1]["result"]["trace"]
    if "held" in last:
        ax.plot(last["sigma"], last["held"], ls=":", color="grey", lw=2,
                label="held-out images with noise σ")
    for r in usable:
        if "posterior" in r["result"]["trace"]:
            trace = r["result"]["trace"]
            ax.plot(trace["sigma"], trace["posterior"], ls="-.", color="black",
                    label="posterior mean's iterates")
    ax.axhline(ON_MANIFOLD_MIN, color="grey", lw=0.8)
    ax.set(xscale="log", xlabel="σ of the sampler's iterate (the sampler runs from left to right)",
           ylabel=f"fraction within {ON_MANIFOLD_FACTOR:g}σ² per pixel of the family",
           ylim=(-0.03, 1.03))
    ax.invert_xaxis()
    ax.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{label}: where the samples leave the family", fontsize=9)
    return fig


@cached_figure
def _figure_grid(record: dict, label: str):
    examples = record["result"].get("examples")
    if not examples:
        return None
    images = {k: np.asarray(v) for k, v in examples.items()}
    rows = min(GRID_ROWS, len(images["s1"]))
    per = record["result"]["per_sample"]
    stack = np.concatenate([images[c][:rows].ravel() for c, _ in COLUMNS])
    lo, hi = np.percentile(stack, [1, 99])
    hi = hi if hi > lo else lo + 1
    grid = []
    for r in range(rows):
        c, cross = ("copy_cos", "cross_copy_cos") if "copy_cos" in per["s1"] else (
            "cos_nn_centered", "cross_cos_centered")
        notes = {"s1": f"cos nn {per['s1']['cos_nn'][r]:.2f}/c {per['s1'][c][r]:.3f}",
                 "s1_nearest": f"d1/d2 {per['s1']['ratio'][r]:.2f}",
                 "s2": f"cos S1–S2 {per['s1']['cross_cos'][r]:.2f}/c "
                       f"{per['s1'][cross][r]:.3f}",
                 "empirical": f"c nn {per['empirical'].get(c, [math.nan] * (r + 1))[r]:.3f}"}
        row = []
        for key, title in COLUMNS:
            img = images[key][r]
            text = (f"{title}\n" if r == 0 else "\n") + notes[key]
            row.append(Panel(img[0], text, "gray", lo, hi) if img.shape[0] == 1 else
                       Panel(((np.moveaxis(img, 0, -1) - lo) / (hi - lo)), text))  # colour
        grid.append(row)
    return image_mosaic(grid, title=f"{label}, N = {record['spec']['N']}", inches=1.5,
                        title_lines=2)


@cached_figure
def _figure_histograms(records: list[dict], label: str):
    """Per N, histograms of nearest-training and cross-network cosines (centred, raw), with
    the held-out images' nearest-training cosines as the baseline."""
    usable = [r for r in records if "per_sample" in r["result"]
              and "copy_cos" in r["result"]["per_sample"].get("s1", {})]
    if not usable:
        return None
    fig, axes = plt.subplots(2, len(usable), figsize=(2.6 * len(usable), 4.6), squeeze=False,
                             sharey="row")
    palette = PALETTE
    for row, (near, cross, held, name) in enumerate(
            (("copy_cos", "cross_copy_cos", "copy_cos", "centred cosine"),
             ("cos_nn", "cross_cos", "cos_nn", "raw cosine"))):
        values = [np.asarray(r["result"]["per_sample"]["s1"][c]) for r in usable
                  for c in (near, cross)]
        values += [np.asarray(r["result"]["baseline"]["per_sample"][held]) for r in usable
                   if held in (r["result"].get("baseline") or {}).get("per_sample", {})]
        low = float(min(v.min() for v in values))
        bins = np.linspace(min(low, 0.9), 1.0, 30)
        for ax, r in zip(axes[row], usable, strict=True):
            per = r["result"]["per_sample"]["s1"]
            base = (r["result"].get("baseline") or {}).get("per_sample", {}).get(held)
            weights = None
            if base is not None:  # scaled to the samples' count
                weights = np.full(len(base), len(per[near]) / len(base))
                ax.hist(np.clip(base, bins[0], 1.0), bins=bins, weights=weights,
                        histtype="step", color="black", label="held-out vs nearest S1 image")
            ax.hist(np.clip(per[near], bins[0], 1.0), bins=bins, alpha=0.6, color=palette[0],
                    label="S1 sample vs nearest S1 image")
            ax.hist(np.clip(per[cross], bins[0], 1.0), bins=bins, alpha=0.6, color=palette[2],
                    label="S1 sample vs S2 sample")
            if row == 0:
                ax.axvline(COPY_COSINE, color="grey", lw=0.8, ls="-.")
            ax.set(title=f"N = {r['spec']['N']}", xlabel=name)
        axes[row, 0].set_ylabel("samples")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(label, fontsize=8)
    return fig


def _count(n) -> str:
    """``"the n "`` for a known count of images, ``""`` for NaN (an older record)."""
    return "" if n is None or math.isnan(n) else f"the {int(n)} "


def percent(value) -> str:
    """A fraction as a whole percentage (``—`` for None or NaN)."""
    return "—" if value is None or math.isnan(value) else f"{value:.0%}"


def generalizes(row, prefix: str = "cos_c", cross: str = "cross_cc") -> bool:
    """The generalization criterion on a :func:`summary_row`: the two networks' samples are
    closer to each other (median centred cosine, ``cross``) than either network's samples
    are to their nearest image of its own training set (``prefix`` S1 and S2; the raw
    cosines with ``"cos_nn"``, ``"cross"``): neither network is singled out.
    Not met where a cosine is missing (NaN)."""
    return bool(row[cross] > np.max([row[f"{prefix} S1"], row[f"{prefix} S2"]]))


def nearest_text(row, prefix: str = "cos_c", digits: int = 3) -> str:
    """``"a / b"``: the two networks' median cosines to their nearest training image."""
    return f"{row[f'{prefix} S1']:.{digits}f} / {row[f'{prefix} S2']:.{digits}f}"


def _trend(values: np.ndarray) -> str:
    """How a sequence moves: at every step, or only from first to last."""
    steps = np.diff(values)
    if len(steps) == 0:
        return "one value"
    if (steps > 0).all() or (steps < 0).all():
        return f"{'rising' if steps[0] > 0 else 'falling'} at every step"
    net = "up" if values[-1] > values[0] else "down" if values[-1] < values[0] else "level"
    return f"not monotone ({net} from first to last)"


def finished(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a ``memorization.csv`` table whose cell did not fail (``failed`` empty:
    ``""`` as built, NaN as read back from the CSV)."""
    failed = table["failed"]
    return table[failed.isna() | (failed.astype(str) == "")]


def verdict(frame: pd.DataFrame) -> str:
    """The honest sentence: memorization at N = 1 and at every N ≤ 10, generalization at
    the largest N."""
    ok = finished(frame).sort_values("N")
    if ok.empty:
        return "No memorization cell finished; nothing to conclude."
    parts = []
    small = ok[ok["N"] <= SMALL_N]
    if small.empty:
        parts.append(f"No N ≤ {SMALL_N} was run, so the memorization regime is not checked.")
    else:
        # the lower of the two networks', NaN (not met) where one is missing
        mem = small[["mem S1", "mem S2"]].min(axis=1, skipna=False)
        cos = small[["cos_c S1", "cos_c S2"]].min(axis=1, skipna=False)
        held = small["mem held"] if "mem held" in small else pd.Series(math.nan, small.index)
        listing = "; ".join(f"N = {n}: {percent(m)} memorized (held-out images: {percent(h)}), "
                            f"median centred cosine {c:.3f}"
                            for n, m, h, c in zip(small["N"], mem, held, cos, strict=True))
        criterion = (f"≥ {MEMORIZED_MIN:.0%} of both networks' samples copies, i.e. centred "
                     f"cosine to the nearest training image above {COPY_COSINE:.3g}")
        if (small["N"] == 1).any():
            one = mem[small["N"] == 1].iloc[0]
            parts.append(f"Memorization at N = 1 ({criterion}): "
                         f"**{'met' if one >= MEMORIZED_MIN else 'not met'}** ({percent(one)}).")
        met = bool((mem >= MEMORIZED_MIN).all())
        parts.append(f"At every N ≤ {SMALL_N}, the talk's memorization regime (the same "
                     f"criterion): **{'met' if met else 'not met'}** ({listing}; fractions and "
                     f"cosines are the lower of the two networks').")
    last = ok.iloc[-1]
    gen = generalizes(last)
    gen_raw = generalizes(last, "cos_nn", "cross")
    parts.append(f"At the largest N reached, N = {last['N']}, the median centred cosine "
                 f"between the two networks' samples is {last['cross_cc']:.3f} against "
                 f"{nearest_text(last)} to their nearest training image (S1 / S2 net; real "
                 f"held-out images against S1: {last['cos_c held']:.3f}): the generalization "
                 f"criterion, above both, is **{'met' if gen else 'not met'}** (raw cosines, "
                 f"dominated by the shared mean: {last['cross']:.6f} against "
                 f"{nearest_text(last, 'cos_nn', 6)}, "
                 f"{'met' if gen_raw else 'not met'}). Memorized: {percent(last['mem S1'])} of "
                 f"{_count(last.get('K', math.nan))}S1 samples against "
                 f"{percent(last['mem held'])} of {_count(last.get('n held', math.nan))}real "
                 f"held-out images.")
    if not math.isnan(last.get("on S1", math.nan)):
        on = np.min([last["on S1"], last["on S2"]])  # NaN (not met) where one is missing
        parts.append(f"Images of the family at N = {last['N']} (best fit of the family's "
                     f"parameters within {ON_MANIFOLD_FACTOR:g}σ_last² per pixel, σ_last = "
                     f"{last['sigma_last']:g}, and not flat): {percent(last['on S1'])} of S1 "
                     f"and {percent(last['on S2'])} of S2 samples (real held-out images: "
                     f"{percent(last['on held'])} clean, {percent(last['on held noisy'])} at "
                     f"σ_last); ≥ {ON_MANIFOLD_MIN:.0%} for both networks: "
                     f"**{'met' if on >= ON_MANIFOLD_MIN else 'not met'}**. Flat (fit within "
                     f"that tolerance of a constant image): {percent(last['flat S1'])} of S1 "
                     f"and {percent(last['flat S2'])} of S2 samples, "
                     f"{percent(last['flat held'])} of real held-out images.")
        if not math.isnan(last.get("on post", math.nan)):
            parts.append(f"For reference, the family's posterior mean (`{last['post denoiser']}`)"
                         f", sampled the same way from the same noises: {percent(last['on post'])} "
                         f"images of the family [{last['on post lo']:.2f}, "
                         f"{last['on post hi']:.2f}], {percent(last['flat post'])} flat: what a "
                         f"denoiser at about the MMSE reaches with this sampler, these noises "
                         f"and this criterion.")
    if not math.isnan(last.get("trace last S1", math.nan)):
        parts.append(f"Along the sampler's way down at N = {last['N']}, the networks' iterates "
                     f"are images of the family seen at their own σ (within "
                     f"{ON_MANIFOLD_FACTOR:g}σ² per pixel of their best fit) for ≥ "
                     f"{ON_MANIFOLD_MIN:.0%} of the samples down to σ = "
                     f"{_sigma(last['down to S1'])} (S1) and {_sigma(last['down to S2'])} "
                     f"(S2); at the last recorded σ (the grid's last but one; its last is "
                     f"the final denoising's), "
                     f"{last['trace last sigma']:.3g}, {percent(last['trace last S1'])} and "
                     f"{percent(last['trace last S2'])} are (held-out images with that noise: "
                     f"{percent(last['trace last held'])}).")
    denoises = last["test mse"] < IDENTITY_FRACTION * last["sigma_mid"] ** 2
    if gen and not denoises:
        parts.append(f"Caveat: at N = {last['N']} the S1 network's test MSE at σ = "
                     f"{last['sigma_mid']:g} is {last['test mse']:.3g}, not below "
                     f"{IDENTITY_FRACTION:g}σ² (the identity's MSE is σ²): the networks barely "
                     f"denoise, so their agreement reflects the shared noise more than a "
                     f"learned density.")
    if not gen:
        diff = (ok["cross_cc"] - ok[["cos_c S1", "cos_c S2"]].max(axis=1, skipna=False)).to_numpy()
        steps = ", ".join(f"{d:+.3f} (N = {n})" for n, d in zip(ok["N"], diff, strict=True))
        parts.append(f"Cross minus the larger nearest-training centred cosine (S1 or S2 net) "
                     f"over N (the criterion needs it > 0): {steps}; {_trend(diff)}. Larger "
                     f"N and longer training (the paper preset) are the documented path to "
                     f"the transition.")
    if (ok["mem emp"] < 1).any():
        parts.append("Note: the empirical denoiser's samples are not all memorized (one "
                     "possible cause, not checked here: the sampler stops at a σ_min too large "
                     "to resolve the training images).")
    return " ".join(parts)


def _against_identity(group: list[dict]) -> str:
    """The S1 networks' test MSE at the smallest σ of their curves over the identity's
    (σ² per pixel, in expectation), per N: where a sampler ends, a network above 1 adds
    error to the image it is handed (``""`` without test curves)."""
    curves = [(r["spec"]["N"], r["result"]["mse_test"]) for r in group
              if r["result"].get("mse_test")]
    if not curves:
        return ""
    lowest = [float(np.min(c["sigma"])) for _, c in curves]
    same = len(set(lowest)) == 1
    ratios = []
    for (n, c), sigma in zip(curves, lowest, strict=True):
        k = int(np.argmin(c["sigma"]))
        ratios.append(f"N = {n}{'' if same else f' (σ = {sigma:g})'}: "
                      f"{c['mse'][k] / sigma**2:.3g}")
    where = f"At σ = {lowest[0]:g}" if same else "At the smallest σ"
    return (f" {where} of their test curves, the S1 networks' MSE over σ², the identity's "
            f"expected MSE: {', '.join(ratios)} (above 1: the network adds error to the "
            f"image it is handed; the samplers end near there).")


def memorization_section(records: list[dict], out_dir) -> tuple[list[str], pd.DataFrame | None]:
    """Markdown lines of the memorization section; writes its figures and CSVs in out_dir.

    Parameters
    ----------
    records : list of cell records (any kinds; ``memorization`` ones are used, and a
        ``reference`` record on the same σ grid, n and seed adds a KL interval per N).
    out_dir : folder of the report (created if needed).

    Returns
    -------
    lines : list of str
        The section's lines (a level-2 title, then one level-3 part per distribution);
        empty when there is no memorization record.
    table : DataFrame or None
        ``memorization.csv``'s table (one row per distribution and N; None without a
        record).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mine = [r for r in records if r.get("spec", {}).get("kind") == "memorization"
            and "result" in r]
    if not mine:
        for name in TABLES:  # not an earlier report's tables beside this one
            (out / name).unlink(missing_ok=True)
        return [], None
    # entries in the order of the study's cells (not of their computation dates)
    groups: dict[str, dict[int, dict]] = {
        canonical_json([r["spec"]["dataset"], r["spec"]["params"]]): {} for r in mine}
    for r in sorted(mine, key=lambda r: r.get("meta", {}).get("date", "")):
        # one record per (distribution, N): the latest when code changes left several
        groups[canonical_json([r["spec"]["dataset"], r["spec"]["params"]])][r["spec"]["N"]] = r
    first = mine[0]["spec"]
    sampler = first["sampler"]
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in sampler.items() if k != "method")
    lines = ["## Memorization → generalization", "",
             f"Two universal networks ({first['net']['arch']}, {first['train']['steps']} steps, "
             f"batch {first['train']['batch_size']}, objective "
             f"`{first['train'].get('objective', 'paper')}`: {objective_law(first['train'])}"
             f"{training_steps_text(first['train'])}) "
             f"per training-set size N, trained on disjoint sets S1 and S2, sampled from the "
             f"same {first['n_samples']} noises with the {sampler['method']} sampler "
             f"({shown}; an auto mean is the pixel mean of held-out images); "
             f"the empirical denoiser of S1 is the pure-memorization baseline. A sample is "
             f"**memorized** (a copy) when the distance between its centred unit direction "
             f"and the nearest centred unit direction of a training image is below "
             f"t = {COPY_THRESHOLD:g}, i.e. centred cosine above 1 − t²/2 = {COPY_COSINE:.3g}; "
             f"centred = unit-normalized, minus the mean of the cell's unit-normalized "
             f"held-out images (a mean image), unit-normalized again. The criterion is "
             f"defined at every N, N = 1 included, and ignores the image's scale (a "
             f"bias-free network reproduces a training image only up to a scale): all constant "
             f"images are then one image, and images of low contrast nearly so, so such images "
             f"count as copies of each other (on disks, whose real images include near-constant "
             f"ones, part of the held-out baseline). Fractions carry Wilson 95% intervals "
             f"(in the table for the S1 network's and the held-out images', with the "
             f"held-out count, which can differ from the samples'; all in "
             f"`memorization.csv`). "
             f"Baseline: "
             f"the same measures for the cell's real held-out images against S1 (their "
             f"novelty is the data's own; each is centred on the mean of the *other* "
             f"held-out images, so that none sets its own centring, and a lone one on its "
             f"own pixel mean). d1/d2 < 1/3 (nearest "
             f"over second-nearest training image) is shown for N ≥ 2 only. Where the "
             f"family can fit its own parameters (disks: 5), a sample is an **image of the "
             f"family** when its squared distance "
             f"to the best fit is at most {ON_MANIFOLD_FACTOR:g}σ_last² per pixel (σ_last: "
             f"the sampler's last noise level; a real image seen at σ_last sits at about "
             f"σ_last²) and it is not **flat**, i.e. its fit's squared distance to the "
             f"nearest constant image, per pixel, is above the same tolerance (a fit within "
             f"it of a constant image, such as a disk of equal inside and outside "
             f"intensity, shows no shape), with held-out images, clean and at σ_last, as "
             f"baselines.{_trace_text(mine)} Cosines "
             f"are medians over samples; raw cosines carry little information on families "
             f"with a strong mean. Train/test MSE: the S1 network on S1 images and on "
             f"held-out images; their ratio also carries any difference in difficulty "
             f"between the two sets. S2 net / S1 net on S1: the S2 network's MSE on the "
             f"same S1 images and noise over the S1 network's (at the same σ): what the S1 "
             f"network fits of its own images, free of that difference (two networks that "
             f"generalize give 1). KL σ0 [low, high]: the S1 network's KL bound [B_low, "
             f"B_high] (section How to read the entries) on its held-out curve, integrated "
             f"on the sweep's σ grid from its smallest σ up to its largest, for the reverse "
             f"SDE from N(μ̄, σ_max² I) at that largest σ (B_high with the closing term "
             f"where the reference stores the data variance): a bound for that process, not "
             f"for the {sampler['method']} sampler above, with its own start and steps.",
             ""]
    rows, curves, traces = [], [], []
    for by_n in groups.values():
        group = [by_n[n] for n in sorted(by_n)]
        spec = group[0]["spec"]
        label = entry_label(spec["dataset"], spec["params"])
        s = "mem-" + slug(label)
        reference = _reference_for(spec, records, group[0]["result"].get("n_test"))
        frame = pd.DataFrame([summary_row(r, reference) for r in group])
        rows.append(frame)
        for r in group:
            for which in ("mse_train", "mse_test", "mse_cross"):
                c = r["result"].get(which)
                if c:
                    curves += [{"entry": label, "N": r["spec"]["N"], "curve": which[4:],
                                "sigma": sig, "mse": m, "se": e}
                               for sig, m, e in zip(c["sigma"], c["mse"], c["se"], strict=True)]
        stored = [r["result"][w] for r in group for w in ("mse_test", "mse_train")
                  if r["result"].get(w)]
        lines += [f"### {label}", "",
                  *([f"{image_size(stored[0]['d'])} images.{_against_identity(group)}", ""]
                    if stored else []),
                  _table(frame), ""]
        failed = [f for f in frame["failed"] if f]
        lines += [f"- **failed cell**: {msg}" for msg in failed] + ([""] if failed else [])
        notes = {r["result"].get("ratio_note") for r in group} - {None}
        lines += [f"({note}.)" for note in sorted(notes)] + ([""] if notes else [])
        means = sorted({round(r["result"]["sampler"]["mean"], 4) for r in group
                        if "sampler" in r["result"]})
        lines += [verdict(frame) + (f" Sampler start mean: {means[0]:g}." if len(means) == 1
                                    else ""), ""]
        if len(frame) > 0:
            _figure_vs_n(frame, label, out / f"{s}-vs-n.png")
            lines += [f"![measures against N]({s}-vs-n.png)", ""]
        if _figure_histograms(group, label, out / f"{s}-hist.png"):
            lines += [f"![similarity histograms]({s}-hist.png)", ""]
        if _figure_trace(group, label, out / f"{s}-trace.png"):
            lines += [f"![where the samples leave the family]({s}-trace.png)", ""]
        for r in group:
            trace = r["result"].get("trace", {})
            traces += [{"entry": label, "N": r["spec"]["N"], "series": role, "sigma": sig,
                        "fraction": f}
                       for role in ("s1", "s2", "held", "posterior") if role in trace
                       for sig, f in zip(trace["sigma"], trace[role], strict=True)]
        grids = [f"![N = {r['spec']['N']}]({s}-n{r['spec']['N']}.png)" for r in group
                 if _figure_grid(r, label, out / f"{s}-n{r['spec']['N']}.png")]
        if grids:
            lines += ["Same noise per row; columns: " + ", ".join(t for _, t in COLUMNS) + " "
                  "(cosines: plain, to the image shown, the nearest in distance / c centred, "
                  "the copy criterion's, to the nearest training image in its sense, which "
                  "may be another).",
                      "", " ".join(grids), ""]
    table = pd.concat(rows, ignore_index=True)
    for name, frame in zip(TABLES, (table, pd.DataFrame(curves), pd.DataFrame(traces)),
                           strict=True):
        if len(frame):
            write_csv(frame, out / name)
        else:
            (out / name).unlink(missing_ok=True)
    lines += ["Tables as CSV: `memorization.csv` (one row per distribution and N)"
              + (", `memorization_mse.csv` (train/test MSE per σ, and `cross`: the S2 network "
                 "on the S1 images)" if curves else "")
              + (", `memorization_trace.csv` (the fraction of the sampler's iterates that are "
                 "images of the family, per σ)" if traces else "") + ".", ""]
    return lines, table


__all__ = ["generalizes", "memorization_section", "percent", "stays_down_to", "summary_row",
           "verdict"]
