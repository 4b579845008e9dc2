"""The intrinsic-dimension section of ``reports/README.md`` (SCIENCE.md §5).

Built from the stored cells of ``theorybench.experiments.dimension_study`` only: one table
row per k (``dimension.csv``) and one figure of each quantity against k with the line
y = k that the small-σ theory predicts for the MMSE/σ², the optimal Jacobian's count of
eigenvalues near 1 and its trace.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..experiments.dimension_study import STUDY, dimension_rows
from ..figures import PALETTE, cached_figure, plt
from .common import architectures, markdown_table, steps_text, training_steps_text, write_csv

WITHIN = 0.15  # "near k": within 15 % (the test tolerance for the posterior)
COLUMNS = ("k", "sigma", "L/σ²", "L kind", "U/σ²", "U_se", "network/σ²", "network_se",
           "converged", "sigma_jacobian", "optimum kind", "optimum count>0.5", "count>0.5",
           "optimum trace",
           "trace", "optimum angle max°", "angle max°", "angle mean°")


@cached_figure
def _figure(frame: pd.DataFrame):
    fig, (ax_m, ax_j, ax_a) = plt.subplots(1, 3, figsize=(10.5, 3.2))
    k = frame["k"].to_numpy()
    for ax in (ax_m, ax_j):
        ax.plot(k, k, color="0.5", ls=":", lw=0.9, label="y = k")
    ax_m.errorbar(k, frame["U/σ²"], yerr=2 * frame["U_se"], marker="o", ms=3,
                  color=PALETTE[0], label="U: posterior (upper)")
    ax_m.plot(k, frame["L/σ²"], marker="^", ms=4, ls="--", color=PALETTE[2],
              label="L: lower bound (exact for k ≤ 2)")
    if "network/σ²" in frame:
        ax_m.errorbar(k, frame["network/σ²"], yerr=2 * frame["network_se"], marker="s", ms=3,
                      color=PALETTE[3], label="universal network")
    ax_m.set(yscale="log", xlabel="intrinsic dimension k",
             ylabel=f"total MSE / σ² at σ = {frame['sigma'].iloc[0]:.3g}")
    for prefix, color, who in (("optimum ", PALETTE[0], "optimum"), ("", PALETTE[3], "network")):
        if f"{prefix}trace" not in frame:
            continue
        ax_j.plot(k, frame[f"{prefix}count>0.5"], marker="o", ms=3, color=color,
                  label=f"{who}: eigenvalues > 0.5")
        ax_j.plot(k, frame[f"{prefix}trace"], marker="s", ms=3, ls="--", color=color,
                  label=f"{who}: trace")
        ax_a.plot(k, frame[f"{prefix}angle max°"], marker="o", ms=3, color=color,
                  label=f"{who}: largest angle")
    if "angle mean°" in frame:
        ax_a.plot(k, frame["angle mean°"], marker="s", ms=3, ls="--", color=PALETTE[3],
                  label="network: mean angle")
    sigma_j = frame["sigma_jacobian"].iloc[0] if "sigma_jacobian" in frame else float("nan")
    ax_j.set(yscale="log", xlabel="intrinsic dimension k", ylabel=f"Jacobian at σ = {sigma_j:.3g}")
    ax_a.set(xlabel="intrinsic dimension k", ylim=(0, 90),
             ylabel="top-k eigenvectors vs tangent space (°)")
    for ax in (ax_m, ax_j, ax_a):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle("One family at every dimension k: the optimum and the network against y = k",
                 fontsize=9)
    return fig


def _networks(records: list[dict]) -> str:
    """How the study's universal networks were trained ("" when it has none)."""
    nets = [r["spec"] for r in records
            if r["spec"].get("study") == STUDY and r["spec"]["kind"] == "network"]
    if not nets:
        return ""
    t = nets[0]["train"]
    return (f" The networks: {architectures(nets)}, {steps_text(nets)}, batch "
            f"{t['batch_size']}, lr {t['lr']:g}, objective `{t['objective']}`, σ from "
            f"{t['sigma_min']:g} to {t['sigma_max']:g}{training_steps_text(t)}.")


def _ks(flags: pd.Series, frame: pd.DataFrame) -> str:
    """``"k = 1, 3"`` for the rows where ``flags`` holds (``"no k"`` when there are none)."""
    ks = ", ".join(str(k) for k in frame["k"][flags])
    return f"k = {ks}" if ks else "no k"


def _unconverged(frame: pd.DataFrame) -> str:
    """Which networks were still improving when their training stopped ("" when none)."""
    if "converged" not in frame:
        return ""
    bad = frame["converged"] == False  # noqa: E712 (None: not monitored)
    if not bad.any():
        return ""
    return (f" Still improving when training stopped (`converged` False, section Training): "
            f"{_ks(bad, frame)}.")


def dimension_section(records: list[dict], out_dir: Path) -> list[str]:
    """Lines of the section (empty when the run has no dimension study); writes
    ``dimension.csv`` and ``dimension.png`` into ``out_dir``."""
    rows = dimension_rows(records)
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    write_csv(frame, out_dir / "dimension.csv")
    _figure(frame, out_dir / "dimension.png")
    shown = frame[[c for c in COLUMNS if c in frame]]
    family = next(r["spec"]["dataset"] for r in records if r["spec"].get("study") == STUDY)
    lines = [
        "## Intrinsic dimension", "",
        f"`{family}` images with k = {', '.join(str(k) for k in frame['k'])} free parameters "
        f"(the family's parameter k; `datasets_synth`). At small σ the MMSE denoiser "
        "projects onto the k-dimensional "
        "tangent space (SCIENCE.md §5): total MMSE/σ² → k and the optimal Jacobian has k "
        "eigenvalues near 1. `L/σ²`, `U/σ²`: the bracket at the smallest σ (total MSE over "
        "the pixels / σ²; `L` is the family's exact posterior mean where it has one, "
        "otherwise its best lower bound, an oracle: `L kind` says which); "
        "`network/σ²`: one universal network per k at the same σ and test images; at "
        "`sigma_jacobian`, the Jacobian's eigenvalues above 0.5, its trace and the "
        "principal angles between its top-k eigenvectors and the true tangent space "
        "(mean over images; 0° = the same space), for the network and for a posterior "
        "estimator (`optimum …`: its Cov[x|y]/σ², Tweedie, from the reference estimator "
        "that knows its posterior moments, of kind `optimum kind`: the optimum where "
        "`exact`, else a stand-in whose count can fall below k, such as the "
        "importance-sampled posterior behind U; an exact `L kind` computed by quadrature "
        "gives no Jacobian, so the optimum columns can be a stand-in where L is exact)."
        + _networks(records), "",
        "![MSE/σ² and Jacobian against k](dimension.png)", "",
        markdown_table(shown.astype(object).where(shown.notna(), ""), ".3g"), "",
    ]
    if "U/σ²" in frame:
        lines += [_posterior_verdict(frame) + _inverted(frame), ""]
    if "network/σ²" in frame and "count>0.5" in frame:
        lines += [_network_verdict(frame) + _unconverged(frame), ""]
    return lines


def _posterior_verdict(frame: pd.DataFrame) -> str:
    """The posterior's U/σ² against k, per k: within ``WITHIN`` of k, and where twice its
    standard error exceeds that tolerance (the test cannot resolve it)."""
    near = (frame["U/σ²"] - frame["k"]).abs() <= WITHIN * frame["k"]
    resolved = 2 * frame["U_se"] <= WITHIN * frame["k"]
    return (f"Posterior U/σ² within {WITHIN:.0%} of k for {_ks(near, frame)}"
            + (f"; outside for {_ks(~near, frame)}" if (~near).any() else "")
            + (f" (for {_ks(~resolved, frame)} twice its standard error exceeds {WITHIN:.0%} "
               f"of k: the test does not resolve it)" if (~resolved).any() else "") + ".")


def _inverted(frame: pd.DataFrame) -> str:
    """Where the table's L/σ² lies above its U/σ², and by how much relative to U ("" where
    nowhere): two estimates on the same images, each a bound only up to its numerical
    error."""
    if "L/σ²" not in frame:
        return ""
    above = frame["L/σ²"] > frame["U/σ²"]
    if not above.any():
        return ""
    gap = frame["L/σ²"] - frame["U/σ²"]
    excess = (gap / frame["U/σ²"].abs())[above]
    exact = "L kind" in frame and set(frame["L kind"][above]) == {"exact"}
    how = (" (L the exact posterior by quadrature, U importance-sampled: two estimates of "
           "the same MMSE)" if exact else "")
    paired = ""
    se = frame["L−U_se"][above] if "L−U_se" in frame else pd.Series(dtype=float)
    if len(se) and (se > 0).all():  # NaN or 0 (one image) gives no z
        z = gap[above] / se
        span = f"{z.min():.2g}" if len(z) == 1 else f"{z.min():.2g}–{z.max():.2g}"
        paired = (f", by {span} paired standard errors of L − U (`L−U_se` in "
                  f"`dimension.csv`: the same images and noise)")
    return (f" L/σ² lies above U/σ² for {_ks(above, frame)}, by at most {excess.max():.2g} "
            f"of U{how}{paired}: both are measured on the same finite set of images, on "
            f"which an estimator that is optimal in expectation can lose to another by "
            f"chance, and each bounds the MMSE only up to that sampling error and its "
            f"numerical one.")


def _network_verdict(frame: pd.DataFrame) -> str:
    """The networks against the optimum, per k, from the table's numbers: MSE within
    ``WITHIN`` of U at the smallest σ, and the count of Jacobian eigenvalues above 0.5 equal
    to the optimum's (±0.5, means over images) at ``sigma_jacobian``."""
    ratio = frame["network/σ²"] / frame["U/σ²"]
    close = (ratio - 1).abs() <= WITHIN
    text = (f"At σ = {frame['sigma'].iloc[0]:.3g} the universal networks' MSE is "
            f"{ratio.min():.3g}–{ratio.max():.3g}× U (within {WITHIN:.0%} of U for "
            f"{_ks(close, frame)})")
    if "optimum count>0.5" in frame and "sigma_jacobian" in frame:
        same = (frame["count>0.5"] - frame["optimum count>0.5"]).abs() <= 0.5
        text += (f"; at σ = {frame['sigma_jacobian'].iloc[0]:.3g} their Jacobians keep "
                 f"{frame['count>0.5'].min():.3g}–{frame['count>0.5'].max():.3g} eigenvalues "
                 f"above 0.5 against the optimum's "
                 f"{frame['optimum count>0.5'].min():.3g}–"
                 f"{frame['optimum count>0.5'].max():.3g} (the same count for "
                 f"{_ks(same, frame)})")
    if close.any():
        return (text + f". The law MSE/σ² ≈ k is tested on a network for "
                f"{_ks(close, frame)}.")
    return (text + ": on this training budget no network reaches the small-σ regime where "
            "the law MSE/σ² ≈ k could be tested on a network.")
