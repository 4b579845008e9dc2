"""The report's training section: held-out error during training and convergence flags.

Every network of a run stores the held-out MSE measured during its training (fixed images
and noise, ``training._Monitor``) and whether it converged (``training.converged``: its
held-out error fell by at most 5 % over the last 20 % of its steps): the main study's and
the dimension study's network cells, and the two networks of each memorization cell. This
section draws the curves, one figure per main-study entry and one per side study, and
tabulates the flags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..experiments.keys import entry_label
from ..figures import cached_figure, plt
from ..training import monitored_error, tail_drop
from .common import markdown_table, preconditioned, sigma_list, slug


def trained_networks(records: list[dict]) -> list[dict]:
    """Every trained network of ``records``: ``group`` (the figure it is drawn in: the
    entry for main-study networks, the study for side studies), ``study``, ``entry``,
    ``train`` (its TrainConfig dict), ``monitor``, ``converged``, ``preconditioned``,
    ``warm start``."""
    nets = []
    for r in records:
        spec, res = r["spec"], r.get("result")
        if res is None:
            continue
        label = entry_label(spec["dataset"], spec["params"])
        if spec["kind"] == "network":
            study = spec.get("study") or "main"
            nets.append({"group": label if study == "main" else f"{study} study",
                         "study": study, "entry": label, "train": spec["train"],
                         "monitor": res.get("monitor") or {}, "converged": res.get("converged"),
                         "preconditioned": preconditioned(res),
                         "warm start": bool(spec.get("init_key"))})
        elif spec["kind"] == "memorization":
            for i in (1, 2):
                if f"monitor_s{i}" in res:  # records before the sweep monitored: none
                    nets.append({"group": f"memorization sweep, {label}",
                                 "study": "memorization", "entry": f"{label} N={spec['N']} S{i}",
                                 "train": spec["train"], "monitor": res[f"monitor_s{i}"],
                                 "converged": res[f"converged_s{i}"], "preconditioned": False,
                                 "warm start": False})
    return sorted(nets, key=lambda n: n["study"] != "main")  # the main study first (stable)


def training_rows(nets: list[dict]) -> list[dict]:
    """One row per trained network (:func:`trained_networks`): what it was trained with and
    whether it converged."""
    rows = []
    for n in nets:
        t = n["train"]
        drop = tail_drop(n["monitor"])
        rows.append({
            "study": n["study"],
            "entry": n["entry"],
            "network": t["mode"],
            "sigma": t["sigma"] if t["mode"] == "per-sigma" else float("nan"),
            "objective": t.get("objective", "paper"),
            "center": t.get("center", False),
            "preconditioned": n["preconditioned"],
            "warm start": n["warm start"],
            "steps": t["steps"],
            "held-out fall over the last 20 % of steps (%)": (
                float("nan") if drop is None else 100 * drop),
            "converged": n["converged"],
        })
    return rows


@cached_figure
def _figure(group: str, nets: list[dict]):
    universal = [n for n in nets if n["train"]["mode"] == "universal" and n["monitor"].get("step")]
    per_sigma = any(n["train"]["mode"] == "per-sigma" for n in nets)
    fig, axes = plt.subplots(1, 2 if per_sigma else 1, figsize=(9 if per_sigma else 5.5, 3.2),
                             squeeze=False)
    axes = axes[0]
    for n in nets:
        monitor, t = n["monitor"], n["train"]
        if not monitor.get("step"):
            continue
        steps = np.asarray(monitor["step"])
        if t["mode"] == "universal" and len(universal) == 1:
            for s, mse in zip(monitor["sigma"], monitor["mse"], strict=True):
                axes[0].plot(steps, np.asarray(mse) / s**2, label=f"σ={s:g}")
        elif t["mode"] == "universal":  # a side study: one curve per network
            axes[0].plot(steps, monitored_error(monitor), label=n["entry"],
                         linestyle="--" if n["entry"].endswith("S2") else "-")
        else:
            mse = np.asarray(monitor["mse"][0])
            axes[1].plot(steps, mse / mse[-1], label=f"σ={t['sigma']:g}")
    sigmas = sigma_list(universal[0]["monitor"]["sigma"] if universal else [])
    axes[0].set(yscale="log", xlabel="step",
                ylabel="held-out MSE/σ² (per pixel)" if len(universal) == 1 else
                f"held-out mean MSE/σ², σ = {sigmas}",
                title=f"universal — {group}")
    if per_sigma:
        axes[1].set(yscale="log", xlabel="step", ylabel="held-out MSE / final",
                    title="per-σ networks")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=6, ncol=2)
    return fig


def training_section(records: list[dict], out: Path) -> tuple[list[str], list[dict]]:
    """Markdown lines of the training section and its table rows (for ``training.csv``)."""
    nets = trained_networks(records)
    rows = training_rows(nets)
    if not rows:
        return [], []
    lines = ["## Training", "",
             "Held-out MSE during training (fixed held-out images and noise) of every network "
             "of the run (`study`: the main study, and the side studies' networks), and the "
             "flag `converged` = the held-out error (mean of MSE/σ² over the monitored σ) fell "
             "by at most 5 % over the last 20 % of the steps (the table's column: that fall "
             "in percent; negative where the error rose). A network flagged False was "
             "still improving: its numbers measure the training budget. A network whose "
             "held-out error rose at the end passes: the flag asks whether the network was "
             "still improving at the end of its schedule, and a rise (noise, or fitting a "
             "finite training set) gives no sign that it was. The flag reads one "
             "schedule's tail: the learning rate decays to zero over the last steps, so a "
             "network that passes it may still improve with a longer schedule (converged "
             "means converged for this budget); nor does a longer schedule clear it where "
             "the error still falls as a power of the steps, e ∝ t^−a, whose fall over any "
             "schedule's last 20 % is 1 − 0.8^a (`docs/default-preset.md`: the disks "
             "universal network fell by 8.8 % over the last 20 % of 8000 steps and, in the "
             "default preset's bfloat16 run at seed 0, by 7.7 % over those of 28,000). Near "
             "5 % the flag is noisy: the same network on the "
             "same budget can pass at one seed and not at another.", ""]
    groups: dict[str, list[dict]] = {}
    for n in nets:
        groups.setdefault(n["group"], []).append(n)
    for group, mine in groups.items():
        name = f"training_{slug(group)}.png"
        _figure(group, mine, out / name)
        lines += [f"![training curves — {group}]({name})", ""]
    lines += [*convergence_lines(rows), "", markdown_table(pd.DataFrame(rows)), ""]
    return lines, rows


def convergence_lines(rows: list[dict]) -> list[str]:
    """One markdown item per study of :func:`training_rows`: how many of its networks
    are flagged not converged, and which."""
    lines = []
    for study, part in pd.DataFrame(rows).groupby("study", sort=False):
        bad = part[part["converged"] == False]  # noqa: E712 (None: not monitored)
        names = ", ".join(f"{e} {n} σ={s:g}" if n == "per-sigma" else f"{e} {n}"
                          for e, n, s in zip(bad.entry, bad.network, bad.sigma, strict=True))
        lines.append(f"- {study}: not converged: {len(bad)} of {len(part)} networks"
                     + (f" ({names})" if len(bad) else "") + ".")
    return lines
