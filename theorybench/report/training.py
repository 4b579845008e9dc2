"""The report's training section: held-out error during training and convergence flags.

Every network cell stores the held-out MSE measured during its training (fixed images and
noise, ``training._Monitor``) and whether it converged (``training.converged``: its
held-out error fell by at most 5 % over the last 20 % of its steps). This section draws
the curves, one figure per study entry, and tabulates the flags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..experiments.keys import entry_label
from ..figures import cached_figure, plt
from .common import markdown_table, preconditioned, slug


def training_rows(records: list[dict]) -> list[dict]:
    """One row per stored network cell: what it was trained with and whether it converged."""
    rows = []
    for r in records:
        if r["spec"]["kind"] != "network" or "result" not in r:
            continue
        t, res = r["spec"]["train"], r["result"]
        monitor = res.get("monitor") or {}
        drop = float("nan")
        if len(monitor.get("step", [])) >= 2:
            sig = np.asarray(monitor["sigma"], dtype=float)[:, None]
            err = (np.asarray(monitor["mse"], dtype=float) / sig**2).mean(0)
            steps = np.asarray(monitor["step"], dtype=float)
            start = int(np.argmin(np.abs(steps - 0.8 * steps[-1])))
            drop = float(1 - err[-1] / err[start])
        rows.append({
            "entry": entry_label(r["spec"]["dataset"], r["spec"]["params"]),
            "network": t["mode"],
            "sigma": t["sigma"] if t["mode"] == "per-sigma" else float("nan"),
            "objective": t.get("objective", "paper"),
            "center": t.get("center", False),
            "preconditioned": preconditioned(res),
            "warm start": bool(r["spec"].get("init_key")),
            "steps": t["steps"],
            "held-out drop, last 20 %": drop,
            "converged": res.get("converged"),
        })
    return rows


@cached_figure
def _figure(label: str, nets: list[dict]):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for r in nets:
        monitor = r["result"].get("monitor") or {}
        if not monitor.get("step"):
            continue
        t = r["spec"]["train"]
        steps = np.asarray(monitor["step"])
        if t["mode"] == "universal":
            for s, mse in zip(monitor["sigma"], monitor["mse"], strict=True):
                axes[0].plot(steps, np.asarray(mse) / s**2, label=f"σ={s:g}")
        else:
            mse = np.asarray(monitor["mse"][0])
            axes[1].plot(steps, mse / mse[-1], label=f"σ={t['sigma']:g}")
    axes[0].set(yscale="log", xlabel="step", ylabel="held-out MSE/σ² (per pixel)",
                title=f"universal — {label}")
    axes[1].set(yscale="log", xlabel="step", ylabel="held-out MSE / final",
                title="per-σ networks")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=6, ncol=2)
    return fig


def training_section(records: list[dict], out: Path) -> tuple[list[str], list[dict]]:
    """Markdown lines of the training section and its table rows (for ``training.csv``)."""
    rows = training_rows(records)
    if not rows:
        return [], []
    lines = ["## Training", "",
             "Held-out MSE during training (fixed held-out images and noise), and the flag "
             "`converged` = the held-out error (mean of MSE/σ² over the monitored σ) fell by "
             "at most 5 % over the last 20 % of the steps. A network flagged False was still "
             "improving: its numbers measure the training budget.", ""]
    nets: dict[str, list[dict]] = {}
    for r in records:
        if r["spec"]["kind"] == "network" and "result" in r:
            nets.setdefault(entry_label(r["spec"]["dataset"], r["spec"]["params"]), []).append(r)
    for label, mine in nets.items():
        name = f"training_{slug(label)}.png"
        _figure(label, mine, out / name)
        lines += [f"![training curves — {label}]({name})", ""]
    frame = pd.DataFrame(rows)
    bad = frame[frame["converged"] == False]  # noqa: E712 (None: not monitored)
    lines += [f"Not converged: {len(bad)} of {len(frame)} networks"
              + (": " + ", ".join(f"{e} {n} σ={s:g}" if n == "per-sigma" else f"{e} {n}"
                                  for e, n, s in zip(bad.entry, bad.network, bad.sigma,
                                                     strict=True)) if len(bad) else "") + ".",
              "", markdown_table(frame), ""]
    return lines, rows
