"""The section "Across seeds": this run's networks beside other runs of the same study.

Every standard error of a report counts its test images and noise only: each network is
one training. A run at another ``--seed`` draws the training anew (initial weights,
batches, noise, σ) and, for the families that draw them per seed, the test images. At
each σ of the per-σ networks' grid (``rates.csv``, table ``ratio``) two runs' MSE/U
differ by ``z = (r_b − r_a)/√(se_a² + se_b²)`` standard errors. Were the runs to differ
by their test images and noise alone, each z would be about N(0, 1) (its RMS over the grid
about 1; the z of one network at several σ are correlated, sharing images and noise, so
their RMS varies more than that of independent ones); beyond that, z measures what the
training's randomness adds to the quoted errors.

Each run is read from its own report folder (``run.json``, ``rates.csv``, ``kl.csv``,
``training.csv``), as its report wrote them: the section needs no cell of the other run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .common import markdown_table, ratio_at, write_csv
from .summary import kl_text

STUDY = ("preset", "overrides", "datasets")  # run.json fields two compared runs share
FILES = ("run.json", "rates.csv", "kl.csv", "training.csv")


def run_tables(folder: Path, meta: dict, rates: pd.DataFrame, kl: pd.DataFrame,
               training: pd.DataFrame) -> dict:
    """One run as the section reads it: ``{"folder", "meta", "ratio", "kl", "training"}``,
    its run.json dict, the MSE/U table of its rates (entry, network, σ, MSE/U and its SE),
    its KL and training tables (the frames of ``rates.csv``, ``kl.csv``, ``training.csv``)."""
    columns = ["entry", "network", "sigma", "MSE/U", "se(MSE/U)"]
    ratio = (rates[rates["table"] == "ratio"][columns] if set(columns) <= set(rates)
             else pd.DataFrame(columns=columns))  # no network: no ratio rows
    return {"folder": Path(folder), "meta": meta, "ratio": ratio.reset_index(drop=True),
            "kl": kl, "training": training}


def read_run(folder: Path) -> dict:
    """:func:`run_tables` of a run's report folder (its run.json and CSV files).
    ValueError naming what is missing when the folder lacks one of :data:`FILES`."""
    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"--compare {folder}: not the report folder of a run with networks "
                         f"(no {', '.join(missing)}); give the --out folder of a run of the "
                         f"same study at another seed")
    return run_tables(folder, json.loads((folder / "run.json").read_text()),
                      *(pd.read_csv(folder / f"{name}.csv") for name in ("rates", "kl",
                                                                          "training")))


def check_comparable(here: dict, folder) -> None:
    """ValueError (one line) unless ``folder`` holds the report of a run of the same study
    as the run.json dict ``here`` (:data:`STUDY`: preset, overrides, datasets) at another
    seed."""
    other = read_run(folder)["meta"]
    for name in STUDY:
        if here.get(name) != other.get(name):
            raise ValueError(f"--compare {folder}: its run has {name} {other.get(name)!r}, "
                             f"this one {here.get(name)!r}; compare runs of the same study "
                             f"(preset, overrides and datasets) at other seeds")
    if here.get("seed", 0) == other.get("seed", 0):
        raise ValueError(f"--compare {folder}: the same seed ({here.get('seed', 0)}) as this "
                         f"run; compare runs at other seeds (--seed)")


def z_scores(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per σ where both runs have one network's MSE/U (``ratio`` tables of :func:`read_run`
    restricted to that network): σ and ``z = (r_b − r_a)/√(se_a² + se_b²)``."""
    both = a.merge(b, on="sigma", suffixes=("_a", "_b"))
    spread = np.sqrt(both["se(MSE/U)_a"] ** 2 + both["se(MSE/U)_b"] ** 2)
    return pd.DataFrame({"sigma": both["sigma"],
                         "z": (both["MSE/U_b"] - both["MSE/U_a"]) / spread})


def _worst_small(part: pd.DataFrame) -> str:
    """The largest MSE/U over σ ≤ 1 of one network's rows: ``"r ± se at σ = s"``."""
    sigma = part["sigma"].to_numpy()
    ratio = part["MSE/U"].to_numpy()
    small = np.flatnonzero(sigma <= 1.0)
    k = int(small[np.argmax(ratio[small])]) if len(small) else None
    return ratio_at(ratio, part["se(MSE/U)"].to_numpy(), sigma, k)


def _kl_value(kl: pd.DataFrame, entry: str, network: str, sigma0: float) -> str:
    """The KL row of ``entry``/``network`` at ``sigma0`` in :func:`~.summary.kl_text`'s
    words."""
    if "sigma0" not in kl:  # no KL row in that run
        return kl_text(None)
    hit = kl[(kl["entry"] == entry) & (kl["network"] == network)
             & np.isclose(kl["sigma0"], sigma0)]
    return kl_text(hit.iloc[0].to_dict() if len(hit) else None)


def _converged(training: pd.DataFrame, entry: str, network: str) -> str:
    """Whether every network of the main study behind ``entry``/``network`` passed the
    convergence check (``"–"`` where none was monitored)."""
    if "converged" not in training:
        return "–"
    mine = training[(training["study"] == "main") & (training["entry"] == entry)
                    & (training["network"] == network)]["converged"].dropna()
    return "–" if not len(mine) else str(bool(mine.astype(bool).all()))


def seed_rows(runs: list[dict], sigma0s) -> tuple[list[dict], pd.DataFrame]:
    """The section's table and its z per σ.

    Parameters
    ----------
    runs : :func:`read_run` dicts, this run first.
    sigma0s : the σ0 of the KL columns (pixel units).

    Returns
    -------
    rows : one dict per entry and network of the first run: the worst MSE/U over σ ≤ 1 of
        each run, the RMS of z over the σ both runs share and the largest |z| (each other
        run against the first), the KL bound at each σ0 and the convergence flag of each
        run; values of several runs joined by ``" / "``.
    z : DataFrame (entry, network, seed, sigma, z) of every other run against the first.
    """
    first = runs[0]
    rows, zs = [], []
    for (entry, network), part in first["ratio"].groupby(["entry", "network"], sort=False):
        parts = [r["ratio"][(r["ratio"]["entry"] == entry) & (r["ratio"]["network"] == network)]
                 for r in runs]
        row = {"entry": entry, "network": network,
               "worst MSE/U, σ ≤ 1": " / ".join(_worst_small(p) for p in parts)}
        rms, largest = [], []
        for run, other in zip(runs[1:], parts[1:], strict=True):
            z = z_scores(part, other)
            zs.append(z.assign(entry=entry, network=network, seed=run["meta"].get("seed", 0)))
            if len(z):
                k = int(np.argmax(np.abs(z["z"].to_numpy())))
                rms.append(f"{np.sqrt(np.mean(z['z'] ** 2)):.2f}")
                largest.append(f"{z['z'].iloc[k]:+.2f} at σ = {z['sigma'].iloc[k]:g}")
            else:
                rms.append("–")
                largest.append("–")
        row["RMS z"] = " / ".join(rms)
        row["largest z"] = " / ".join(largest)
        for s0 in sigma0s:
            row[f"KL, σ0 = {s0:g}"] = " / ".join(_kl_value(r["kl"], entry, network, s0)
                                                for r in runs)
        row["converged"] = " / ".join(_converged(r["training"], entry, network) for r in runs)
        rows.append(row)
    columns = ["entry", "network", "seed", "sigma", "z"]
    z = pd.concat(zs, ignore_index=True)[columns] if zs else pd.DataFrame(columns=columns)
    return rows, z


def seeds_section(this: dict, others: list[Path], sigma0s) -> list[str]:
    """The section "Across seeds": this run (a :func:`run_tables` dict, its ``folder`` the
    report's) beside the runs whose report folders are ``others``; writes ``seeds.csv``
    (the z per σ) into this run's folder. Empty without ``others``."""
    if not others:
        return []
    for folder in others:
        check_comparable(this["meta"], folder)
    runs = [this] + [read_run(folder) for folder in others]
    rows, z = seed_rows(runs, sigma0s)
    if not rows:
        return []
    write_csv(z, this["folder"] / "seeds.csv")
    seeds = " / ".join(str(r["meta"].get("seed", 0)) for r in runs)
    described = "; ".join(f"seed {r['meta'].get('seed', 0)}: `{r['folder']}`, commit "
                          f"`{r['meta'].get('commit', '?')}`, {r['meta'].get('date', '?')}"
                          for r in runs)
    return ["## Across seeds", "",
            f"This run beside the same study at other seeds ({described}), each read from "
            f"its own report folder (`{' '.join(f'--compare {f}' for f in others)}`). Values "
            "are given per seed in the order "
            f"{seeds}. Every standard error of this report counts the test images and "
            "noise only; a run at another seed also draws each training anew. `RMS z`: "
            "over the per-σ networks' grid (`rates.csv`), the root mean square of z = "
            "(r_b − r_a)/√(se_a² + se_b²), the difference of two runs' MSE/U over its "
            "standard error, each other run against this one; `largest z`: its largest "
            "magnitude, with the σ (`seeds.csv`: every z). Runs that differed by their "
            "test images and noise alone would give z about N(0, 1) at each σ (an RMS about "
            "1; the z of one network at several σ are correlated, sharing images and noise, "
            "so their RMS varies more than that of independent ones); beyond that, z "
            "measures what the training's randomness adds. Faces and shuffled faces keep "
            "the same 20 test images at every seed (the fixed split): their z compare "
            "trainings and noise on the same images. The worst MSE/U here is on the "
            "per-σ grid, which a universal network's worst on the dense grid (At a "
            "glance) may exceed.", "",
            markdown_table(pd.DataFrame(rows)), ""]


__all__ = ["check_comparable", "read_run", "run_tables", "seed_rows", "seeds_section",
           "z_scores"]
