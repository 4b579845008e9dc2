"""The section "Across seeds": this run's networks beside other runs of the same study.

Every standard error of a report counts its test images and noise only: each network is
one training. A run at another ``--seed`` draws the training anew (initial weights,
batches, noise, σ) and, for the families that draw them per seed, the test images. At
each σ of the per-σ networks' grid (``rates.csv``, table ``ratio``) two runs' MSE/U
differ by ``z = (r_b − r_a)/√(se_a² + se_b²)`` standard errors. Were the runs to differ
by their test images and noise alone, each z would be about N(0, 1); a training spread τ
per run adds to it, ``E[z²] ≈ 1 + 2τ²/(se_a² + se_b²)``.

Every run is read from its report folder's files (``run.json``, ``rates.csv``,
``kl.csv``, ``training.csv``, and where written ``memorization.csv``, ``dimension.csv``,
``jacobian.csv``, ``machines.csv``) as its report wrote them, this one's too (once
written): the section needs no cell of the other runs, and both sides carry the same
rounding. The studies whose sections quote one training and one draw of images without a
training spread (the memorization sweep, the intrinsic dimension, the Jacobians, the
machines) are set side by side too: across seeds is where their spread shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .common import all_converged, largest, markdown_table, ratio_at, write_csv
from .memorization import finished, generalizes, percent
from .summary import kl_text

STUDY = ("preset", "overrides", "datasets")  # run.json fields two compared runs share
FILES = ("run.json", "rates.csv", "kl.csv", "training.csv")
RATIO_COLUMNS = ["entry", "network", "sigma", "MSE/U", "se(MSE/U)"]
STUDIES = ("memorization", "dimension", "jacobian", "machines")  # optional tables, per run


def _frame(path: Path) -> pd.DataFrame:
    """A CSV file of the report as a DataFrame (empty where the run wrote none)."""
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def run_tables(folder: Path, meta: dict | None = None) -> dict:
    """One run as the section reads it: ``{"folder", "meta", "ratio", "kl", "training",
    "memorization", "dimension", "jacobian", "machines"}``, its run.json dict (``meta``
    where given: this run's, whose run.json a ``--report-only`` rebuild does not write),
    the MSE/U rows of its ``rates.csv`` (:data:`RATIO_COLUMNS`; none without a network) and
    its ``kl.csv``, ``training.csv`` and the tables of :data:`STUDIES` (empty where
    absent)."""
    folder = Path(folder)
    rates = _columns(_frame(folder / "rates.csv"), ["table", *RATIO_COLUMNS])
    ratio = rates[rates["table"] == "ratio"][RATIO_COLUMNS]
    meta = json.loads((folder / "run.json").read_text()) if meta is None else meta
    return {"folder": folder, "meta": meta, "ratio": ratio.reset_index(drop=True),
            "kl": _frame(folder / "kl.csv"), "training": _frame(folder / "training.csv"),
            **{name: _frame(folder / f"{name}.csv") for name in STUDIES}}


def check_compare(here: dict, folders, out: Path) -> None:
    """ValueError (one line) unless every folder of ``folders`` holds the report of a run
    of the same study as the run.json dict ``here`` (:data:`STUDY`: preset, overrides,
    datasets), each at a seed of its own other than ``here``'s, none of them ``out`` (this
    run's report folder, which the run rewrites)."""
    seeds = {here.get("seed", 0): "this run"}
    for folder in map(Path, folders):
        if folder.resolve() == Path(out).resolve():
            raise ValueError(f"--compare {folder}: the folder this run writes (--out); give "
                             f"another run's report folder")
        missing = [name for name in FILES if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"--compare {folder}: not the report folder of a run with "
                             f"networks (no {', '.join(missing)}); give the --out folder of "
                             f"a run of the same study at another seed")
        try:
            other = json.loads((folder / "run.json").read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"--compare {folder}: its run.json is not JSON ({exc}); give "
                             f"the --out folder of a finished run") from exc
        for name in STUDY:
            if here.get(name) != other.get(name):
                raise ValueError(f"--compare {folder}: its run has {name} "
                                 f"{other.get(name)!r}, this one {here.get(name)!r}; compare "
                                 f"runs of the same study (preset, overrides and datasets) "
                                 f"at other seeds")
        seed = other.get("seed", 0)
        if seed in seeds:
            raise ValueError(f"--compare {folder}: seed {seed}, as {seeds[seed]}; compare "
                             f"runs at distinct seeds (--seed)")
        seeds[seed] = str(folder)


def z_scores(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per σ of ``a`` (``ratio`` rows of :func:`run_tables` restricted to one network): σ
    and ``z = (r_b − r_a)/√(se_a² + se_b²)`` against ``b``'s row at that σ (to a relative
    1e-5, the CSVs' 6 digits); z is NaN where ``b`` has no such row or z is not finite (no
    error, or a value missing). ValueError (one line) for a σ listed twice in either."""
    sigma = {}
    for name, run in (("this", a), ("the other", b)):
        sigma[name] = run["sigma"].to_numpy(dtype=float)
        close = np.isclose(sigma[name][:, None], sigma[name][None, :], rtol=1e-5, atol=0)
        twice = close.sum(axis=1) > 1
        if twice.any():
            raise ValueError(f"{name} run lists one network's MSE/U twice at σ = "
                             f"{sigma[name][twice][0]:g} (rates.csv)")
    if not len(b):  # the other run lacks this network
        return pd.DataFrame({"sigma": sigma["this"], "z": np.full(len(a), np.nan)})
    match = np.isclose(sigma["this"][:, None], sigma["the other"][None, :], rtol=1e-5, atol=0)
    found, j = match.any(axis=1), match.argmax(axis=1)
    z = _z(a["MSE/U"], a["se(MSE/U)"], b["MSE/U"].to_numpy()[j], b["se(MSE/U)"].to_numpy()[j])
    return pd.DataFrame({"sigma": sigma["this"], "z": np.where(found, z, np.nan)})


def _worst_small(part: pd.DataFrame) -> str:
    """The largest finite MSE/U over σ ≤ 1 of one network's rows: ``"r ± se at σ = s"``."""
    sigma = part["sigma"].to_numpy(dtype=float)
    ratio = part["MSE/U"].to_numpy(dtype=float)
    k = largest(ratio, np.isfinite(ratio) & (sigma <= 1.0))
    return ratio_at(ratio, part["se(MSE/U)"].to_numpy(dtype=float), sigma, k)


def _kl_value(kl: pd.DataFrame, entry: str, network: str, sigma0: float) -> str:
    """The KL row of ``entry``/``network`` at ``sigma0`` in :func:`~.summary.kl_text`'s
    words."""
    if "sigma0" not in kl:  # no KL row in that run
        return kl_text(None)
    hit = kl[(kl["entry"] == entry) & (kl["network"] == network)
             & np.isclose(kl["sigma0"], sigma0)]
    return kl_text(hit.iloc[0].to_dict() if len(hit) else None)


def _flag_text(value) -> str:
    """A stored convergence flag as the report prints it (``–``: not monitored)."""
    return "–" if pd.isna(value) else str(bool(value))


def _converged(training: pd.DataFrame, entry: str, network: str) -> str:
    """Whether every network of the main study behind ``entry``/``network`` passed the
    convergence check (:func:`~.common.all_converged`, as At a glance reads it: ``"–"``
    where one was not monitored and none is flagged)."""
    if "converged" not in training:
        return "–"
    mine = training[(training["study"] == "main") & (training["entry"] == entry)
                    & (training["network"] == network)]["converged"]
    return _flag_text(all_converged(mine))


def seed_rows(runs: list[dict], sigma0s) -> tuple[list[dict], pd.DataFrame]:
    """The section's table and its z per σ.

    Parameters
    ----------
    runs : :func:`run_tables` dicts, this run first.
    sigma0s : the σ0 of the KL columns (pixel units).

    Returns
    -------
    rows : one dict per entry and network of the first run: the worst MSE/U over σ ≤ 1 of
        each run, the RMS of z over the σ where both runs have a finite one and the
        largest |z| (each other run against the first), the KL bound at each σ0 and the
        convergence flag of each run; values of several runs joined by ``" / "``.
    z : DataFrame (entry, network, seed, sigma, z) of every other run against the first,
        at every σ of the first run's rows (z NaN where :func:`z_scores` has none).
    """
    rows, zs = [], []
    for (entry, network), part in runs[0]["ratio"].groupby(["entry", "network"], sort=False):
        parts = [r["ratio"][(r["ratio"]["entry"] == entry) & (r["ratio"]["network"] == network)]
                 for r in runs]
        row = {"entry": entry, "network": network,
               "worst MSE/U, σ ≤ 1": " / ".join(_worst_small(p) for p in parts)}
        rms, extreme = [], []
        for run, other in zip(runs[1:], parts[1:], strict=True):
            z = z_scores(part, other)
            zs.append(z.assign(entry=entry, network=network, seed=run["meta"].get("seed", 0)))
            z = z.dropna(subset=["z"])
            values = z["z"].to_numpy()
            k = int(np.argmax(np.abs(values))) if len(values) else None
            rms.append("–" if k is None else f"{np.sqrt(np.mean(values**2)):.2f}")
            extreme.append("–" if k is None else
                           f"{values[k]:+.2f} at σ = {z['sigma'].iloc[k]:g}")
        row["RMS z"] = " / ".join(rms)
        row["largest z"] = " / ".join(extreme)
        for s0 in sigma0s:
            row[f"B, σ0 = {s0:g}"] = " / ".join(_kl_value(r["kl"], entry, network, s0)
                                                for r in runs)
        row["converged"] = " / ".join(_converged(r["training"], entry, network) for r in runs)
        rows.append(row)
    columns = ["entry", "network", "seed", "sigma", "z"]
    z = pd.concat(zs, ignore_index=True)[columns] if zs else pd.DataFrame(columns=columns)
    return rows, z


def _columns(table: pd.DataFrame, required, optional=()) -> pd.DataFrame:
    """``table`` where it has every one of ``required`` (with NaN for any of ``optional`` it
    lacks: an older report's table), otherwise an empty frame with both (a run without that
    study: its values read as absent)."""
    if not set(required) <= set(table):
        return pd.DataFrame(columns=[*required, *optional])
    return table.assign(**{c: np.nan for c in optional if c not in table})


def side_by_side(tables: list[pd.DataFrame], keys: list[str], columns: dict) -> list[dict]:
    """One row per row of ``tables[0]``: its ``keys`` values, then per label of
    ``columns`` its ``text(cells)``, where ``cells`` holds each table's row with the same
    ``keys`` values (float keys to a relative 1e-5, the CSVs' 6 digits; None for a table
    without one), the first table's first. Rows with a missing key are left out; a table
    with two rows of one key is refused (ValueError)."""
    tables = [t.dropna(subset=keys) for t in tables]
    for table in tables:
        if table.duplicated(subset=keys).any():
            raise ValueError(f"two rows with the same {', '.join(keys)} in a compared table")
    rows = []
    for _, first in tables[0].iterrows():
        cells = []
        for table in tables:
            same = [np.isclose(table[k].to_numpy(dtype=float), float(first[k]), rtol=1e-5,
                               atol=0) if isinstance(first[k], float)
                    else (table[k] == first[k]).to_numpy() for k in keys]
            hit = table[np.logical_and.reduce(same)]
            cells.append(hit.iloc[0] if len(hit) else None)
        rows.append({**{k: first[k] for k in keys},
                     **{label: text(cells) for label, text in columns.items()}})
    return rows


def _each(text, *needed: str):
    """``text(cell)`` of each run's cell joined by ``" / "``, as a column of
    :func:`side_by_side`: ``—`` for a run without the row, ``–`` where one of the cell's
    ``needed`` values is missing."""
    def joined(cells):
        return " / ".join("—" if c is None else "–" if any(pd.isna(c[n]) for n in needed)
                          else text(c) for c in cells)
    return joined


def _z(a, se_a, b, se_b) -> np.ndarray:
    """``z = (b − a)/√(se_a² + se_b²)``, elementwise (NaN where it is not finite: no
    error, or a value missing)."""
    a, se_a, b, se_b = (np.asarray(v, dtype=float) for v in (a, se_a, b, se_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (b - a) / np.hypot(se_a, se_b)
    return np.where(np.isfinite(z), z, np.nan)


def _z_each(value: str, se: str):
    """Per other run, :func:`_z` of column ``value`` against the first run's (``—`` where
    the other run lacks the row, ``–`` where z is not finite), joined by ``" / "``, as a
    column of :func:`side_by_side`."""
    def text(cells):
        first, parts = cells[0], []
        for c in cells[1:]:
            z = np.nan if c is None else float(_z(first[value], first[se], c[value], c[se]))
            parts.append("—" if c is None else "–" if np.isnan(z) else f"{z:+.2f}")
        return " / ".join(parts)
    return text


SWEEP_COLUMNS = ["entry", "N", "failed", "mem S1", "mem S2", "on S1", "on S2", "cross/train",
                 "cross_cc", "cos_c S1", "cos_c S2"]  # memorization.csv's columns sweep_rows reads


def sweep_rows(runs: list[dict]) -> list[dict]:
    """The memorization sweep of each run side by side: per entry and N of the first run's
    sweep (cells that did not fail), the fraction of the networks' samples (S1 / S2) that
    copy a training image, the fraction that are images of the family (where the family
    fits its parameters), the ratio S2 net / S1 net on S1's images at the table's σ and the
    generalization criterion (:func:`~.memorization.generalizes`, which the section's
    verdict reads at the largest N); values of several runs joined by ``" / "`` (``—``
    where a run lacks that cell, or lacks a sweep table with :data:`SWEEP_COLUMNS`: a run
    without a sweep, or an older report's table)."""
    tables = [finished(_columns(r["memorization"], SWEEP_COLUMNS)) for r in runs]
    rows = side_by_side(tables, ["entry", "N"], {
        "copies S1, S2": _each(lambda c: f"{percent(c['mem S1'])}, {percent(c['mem S2'])}"),
        "images of the family S1, S2": _each(
            lambda c: f"{percent(c['on S1'])}, {percent(c['on S2'])}"),
        "S2 net / S1 net on S1": _each(lambda c: f"{c['cross/train']:.3g}"),
        "generalization criterion": _each(lambda c: "met" if generalizes(c) else "not met")})
    return [{**row, "N": int(row["N"])} for row in rows]


def dimension_seed_rows(runs: list[dict]) -> list[dict]:
    """The intrinsic-dimension study of each run side by side (``dimension.csv``): per k of
    the first run, the universal network's total MSE/σ² at the smallest σ ± its standard
    error, z of each other run against the first, the mean count of its Jacobian's
    eigenvalues above 0.5 at ``sigma_jacobian`` and its convergence flag (``—`` where a run
    lacks the row, ``–`` where it lacks the value)."""
    tables = [_columns(r["dimension"], ["k", "network/σ²", "network_se"],
                       ["count>0.5", "converged"]) for r in runs]
    rows = side_by_side(tables, ["k"], {
        "network/σ²": _each(lambda c: f"{c['network/σ²']:.3g} ± {c['network_se']:.2g}",
                            "network/σ²", "network_se"),
        "z": _z_each("network/σ²", "network_se"),
        "eigenvalues > 0.5": _each(lambda c: f"{c['count>0.5']:.4g}", "count>0.5"),
        "converged": _each(lambda c: _flag_text(c["converged"]))})
    return [{**row, "k": int(row["k"])} for row in rows]


def _spread(column: str):
    """The range of ``column`` over the runs that have the row, divided by its median
    (``–`` for one run, or a median of 0), as a column of :func:`side_by_side`."""
    def text(cells):
        values = np.array([float(c[column]) for c in cells if c is not None])
        values = values[np.isfinite(values)]
        middle = float(np.median(values)) if len(values) else 0.0
        return (f"{(values.max() - values.min()) / middle:.0%}"
                if len(values) > 1 and middle > 0 else "–")
    return text


def jacobian_seed_rows(runs: list[dict]) -> list[dict]:
    """The networks' Jacobians of each run side by side (``jacobian.csv``, the rows of a
    ``network …`` denoiser): per entry, σ and network of the first run, the count of
    eigenvalues above 0.5 and the trace of each run (means over the run's images), and
    each one's range over the runs that have the row divided by their median."""
    tables = [_columns(r["jacobian"], ["entry", "sigma", "denoiser", "count>0.5", "trace"])
              for r in runs]
    tables = [t[t["denoiser"].astype(str).str.startswith("network")] for t in tables]
    return side_by_side(tables, ["entry", "sigma", "denoiser"], {
        "eigenvalues > 0.5": _each(lambda c: f"{c['count>0.5']:.4g}", "count>0.5"),
        "trace": _each(lambda c: f"{c['trace']:.3g}", "trace"),
        "count: range / median": _spread("count>0.5"),
        "trace: range / median": _spread("trace")})


def machine_seed_rows(runs: list[dict]) -> list[dict]:
    """The machines of each run side by side (``machines.csv``): per entry and N of the
    first run, the median r² of the S1 network's samples against the ELS machine's and
    against the S2 network's."""
    tables = [_columns(r["machines"], ["entry", "N", "r2 els", "r2 s2"]) for r in runs]
    rows = side_by_side(tables, ["entry", "N"], {
        "r² S1 net vs ELS": _each(lambda c: f"{c['r2 els']:.3f}", "r2 els"),
        "r² S1 net vs S2 net": _each(lambda c: f"{c['r2 s2']:.3f}", "r2 s2")})
    return [{**row, "N": int(row["N"])} for row in rows]


def z_summary(z: pd.DataFrame) -> str:
    """The z of :func:`seed_rows`, per other run (seed): how many, how many beyond ±2
    against the count N(0, 1) gives (4.55 %), their RMS and the training spread it implies,
    τ ≈ √(RMS² − 1) quoted standard errors (``E[z²] ≈ 1 + 2τ²/(se_a² + se_b²)`` with the
    two runs' errors alike; none seen where RMS ≤ 1), the entry with the largest share of
    Σz² where there are several, and how many σ had no z (NaN); runs joined by ``"; "``."""
    parts = []
    for seed, part in z.groupby("seed", sort=False):
        finite = part.dropna(subset=["z"])
        values = finite["z"].to_numpy(dtype=float)
        if not len(values):
            parts.append(f"seed {seed}: no finite z ({len(part)} σ)")
            continue
        rms = float(np.sqrt(np.mean(values**2)))
        spread = (f"a training spread of about {np.sqrt(rms**2 - 1):.2f} quoted standard "
                  f"errors" if rms > 1 else "no training spread seen beyond the quoted errors")
        text = (f"seed {seed}: {int(np.sum(np.abs(values) > 2))} of {len(values)} z "
                f"beyond ±2 (N(0, 1): about {0.0455 * len(values):.1f}), RMS {rms:.2f}, "
                f"{spread}")
        if "entry" in finite and finite["entry"].nunique() > 1 and np.any(values != 0):
            share = (finite["z"] ** 2).groupby(finite["entry"], sort=False).sum()
            top = share.idxmax()
            text += (f" ({top}: {share[top] / share.sum():.0%} of Σz² from "
                     f"{int((finite['entry'] == top).sum())} of the {len(values)} z)")
        missing = len(part) - len(values)
        if missing:
            text += (f"; {missing} of its {len(part)} σ without a z (a σ one run lacks, or "
                     f"no finite standard error)")
        parts.append(text)
    return "; ".join(parts)


def _absent(runs: list[dict]) -> list[str]:
    """``"entry network (seed s)"`` for each network of another run that this one lacks."""
    here = set(zip(runs[0]["ratio"]["entry"], runs[0]["ratio"]["network"], strict=True))
    return [f"{entry} {network} (seed {run['meta'].get('seed', 0)})" for run in runs[1:]
            for entry, network in dict.fromkeys(zip(run["ratio"]["entry"],
                                                    run["ratio"]["network"], strict=True))
            if (entry, network) not in here]


def seeds_section(out: Path, run_meta: dict, others: list[Path],
                  sigma0s) -> tuple[list[str], str | None]:
    """The section "Across seeds": this run (its report folder ``out``, CSV files written,
    its metadata ``run_meta``) beside the runs whose report folders are ``others``; writes
    ``out/seeds.csv`` (the z per σ; removes a stale one otherwise).

    Returns the section's lines (none without ``others``; a line saying why where they
    cannot be compared) and :func:`z_summary`'s clause (None without a z)."""
    (out / "seeds.csv").unlink(missing_ok=True)
    if not others:
        return [], None
    head = ["## Across seeds", ""]
    try:  # the command line checked it before the run; a folder may have changed since
        check_compare(run_meta, others, out)
    except ValueError as exc:
        return head + [f"Not compared: {exc}.", ""], None
    runs = [run_tables(out, run_meta)] + [run_tables(folder) for folder in others]
    try:  # a rates.csv with one σ twice: said, not raised
        rows, z = seed_rows(runs, sigma0s)
    except ValueError as exc:
        return head + [f"Not compared: {exc}.", ""], None
    if not rows:
        return head + ["Not compared: this run has no network's MSE/U (`rates.csv`).", ""], None
    write_csv(z.dropna(subset=["z"]), out / "seeds.csv")
    summary = z_summary(z) if len(z) else None
    seeds = " / ".join(str(r["meta"].get("seed", 0)) for r in runs)
    described = "; ".join(f"seed {r['meta'].get('seed', 0)}: `{r['folder']}`, commit "
                          f"`{r['meta'].get('commit', '?')}`, {r['meta'].get('date', '?')}"
                          for r in runs)
    absent = _absent(runs)
    try:  # a compared folder's table with two rows of one key: said, not raised
        sweep, studies = sweep_rows(runs), study_lines(runs, seeds)
    except ValueError as exc:
        sweep, studies = [], [f"The other studies not set side by side: {exc}.", ""]
    return [
        *head,
        f"This run beside the same study at other seeds ({described}), each read from its "
        f"report folder's files (`{' '.join(f'--compare {f}' for f in others)}`). Values "
        f"are given per seed in the order {seeds}; `RMS z` and `largest z`, one per other "
        f"run, in the order {seeds.split(' / ', 1)[1]}. Runs at other commits are compared "
        f"as they are: their commits are above (a report rebuilt by newer code from the "
        f"same cells says so in its header). Every standard error of this report "
        "counts the test images and noise only; a run at another seed also draws each "
        "training anew. `RMS z`: over the per-σ networks' grid (`rates.csv`), the root "
        "mean square of z = (r_b − r_a)/√(se_a² + se_b²), the difference of two runs' "
        "MSE/U over its standard error, each other run against this one; `largest z`: its "
        "largest magnitude, with the σ (`seeds.csv`: every z). Runs that differed by "
        "their test images and noise alone would give z about N(0, 1) at each σ; a "
        "training spread τ per run adds to it, E[z²] ≈ 1 + 2τ²/(se_a² + se_b²), so that "
        "√(RMS² − 1) is about τ in units of the quoted error (below the table, per run, "
        "pooled over every network: one entry can carry most of it, named there; standard "
        "errors from 20–64 images are themselves noisy, which alone puts E[z²] a little "
        "above 1, and the fixed test images below pull it down). The z of one network at "
        "several σ, and of an entry's two networks, are "
        "correlated (the same images and noise): their RMS varies more than that of "
        "independent ones. Faces and shuffled faces keep the same 20 test images at every "
        "seed (the fixed split): the images' own spread, part of each standard error, "
        "cancels in r_b − r_a, so their z understate the training's part. The worst MSE/U "
        "here is on the per-σ grid, which a universal network's worst on the dense grid "
        "(At a glance) may exceed; `B, σ0`: the KL bound as in At a glance.", "",
        markdown_table(pd.DataFrame(rows)), "",
        *([f"Over every network ({summary}). The z of one run share its images, noise and "
           "trainings: they are not independent tests.", ""] if summary else []),
        *([f"Not in this run, so not compared: {', '.join(absent)}.", ""] if absent else []),
        *(["The memorization sweep at each seed (section Memorization; the same order of "
           "seeds): the fraction of the two networks' samples that copy a training image, "
           "the fraction that are images of the family (`—`: the family fits no "
           "parameters, or the run has no such cell), the S2 network's MSE over the S1 "
           "network's on the S1 training images and noise at the table's σ "
           "(`cross/train`), and the generalization criterion (the two networks' samples "
           "closer to each other than either network's to its nearest training image; the "
           "section's "
           "verdict reads it at the largest N):", "", markdown_table(pd.DataFrame(sweep)),
           ""] if sweep else []),
        *studies,
    ], summary


def _images_text(runs: list[dict]) -> str:
    """How many images each run's Jacobian rows average (``images`` of ``jacobian.csv``)."""
    counts = sorted({int(n) for r in runs if "images" in r["jacobian"]
                     for n in r["jacobian"]["images"].dropna()})
    if counts == [1]:
        return ("each of one image that the seed draws (the seeds analyse different "
                "images), without an error bar")
    many = "/".join(map(str, counts)) if counts else "the"
    return (f"each a mean over {many} images that the seed draws (the seeds analyse "
            f"different images; the standard errors over them are in each run's "
            f"`jacobian.csv`)")


def study_lines(runs: list[dict], seeds: str) -> list[str]:
    """The intrinsic dimension, the networks' Jacobians and the machines of each run side
    by side (each where the first run has that table): a sentence and a table per study,
    values in the order of ``seeds`` (``"0 / 1 / …"``), z in that of the other runs."""
    others = seeds.split(" / ", 1)[-1]
    lines = []
    for rows, text in (
            (dimension_seed_rows(runs),
             "The intrinsic-dimension study at each seed (section Intrinsic dimension): per "
             "k, the universal network's total MSE/σ² at the smallest σ ± its standard "
             f"error, z of each other run against this one (as above, in the order {others}; "
             "each seed draws its own test images), the mean count of its Jacobian's "
             "eigenvalues above 0.5 at `sigma_jacobian` (over its images) and its "
             "convergence flag"),
            (jacobian_seed_rows(runs),
             "The networks' Jacobians at each seed (section Jacobian eigen-analysis): the "
             f"count of eigenvalues above 0.5 and the trace, {_images_text(runs)}; the "
             "range of each over the seeds divided by its median (`–`: one run, or a "
             "median of 0) measures how much one training and its images move them (a "
             "count at the number of pixels is saturated; the trace still moves)"),
            (machine_seed_rows(runs),
             "The machines at each seed (section What the networks compute): the median r² "
             "between the S1 network's samples and the ELS machine's, and the S2 "
             "network's, from the same noise")):
        if rows:
            lines += [f"{text}; the seeds in the order {seeds}:", "",
                      markdown_table(pd.DataFrame(rows)), ""]
    return lines


__all__ = ["SWEEP_COLUMNS", "check_compare", "dimension_seed_rows", "jacobian_seed_rows",
           "machine_seed_rows", "run_tables", "seed_rows", "seeds_section", "side_by_side",
           "study_lines", "sweep_rows", "z_scores", "z_summary"]
