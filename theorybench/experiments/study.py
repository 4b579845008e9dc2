"""The whole study of a preset as one list of cells, in the order the executors start them.

The main study (:func:`cells.build_cells`: references and networks of every entry), the
memorization sweep with its own reference cells, Jacobian pairs and LS/ELS machines
(:func:`sweep_cells`), the Jacobian analyses of the study's networks and the
intrinsic-dimension study (:func:`dimension_cells`). Every setting comes from the preset;
``--datasets`` (``datasets``: comma-separated names, or None for all) filters the side
studies as it filters the entries.
"""

from __future__ import annotations

import datasets_synth

from .cells import build_cells
from .dimension_study import build_dimension_cells
from .jacobian_analysis import build_jacobian_cells, build_pair_cells, jacobian_sigmas
from .machines_sweep import build_machine_cells
from .memorization_sweep import STUDY as MEMORIZATION_STUDY
from .memorization_sweep import build_memorization_cells


def study_cells(preset, entries, datasets: str | None, seed: int) -> list[dict]:
    """Every cell of a run: long independent cells first, the short analyses of stored
    networks last (the executors start cells in this order once their inputs exist, after
    :func:`start_order`'s leaders). The sweep leads: its machines (minutes each) wait for
    its networks, and would otherwise end the run on one busy worker."""
    cells = sweep_cells(preset, datasets, seed) + build_cells(preset, entries, seed)
    analyses = build_jacobian_cells(cells, jacobian_sigmas(preset.sigmas),
                                    preset.jacobian_images, seed)
    dimension = dimension_cells(preset, datasets, seed)
    cells += [c for c in dimension if c["kind"] != "jacobian"] + analyses
    return cells + [c for c in dimension if c["kind"] == "jacobian"]


def start_order(cells: list[dict], preset) -> list[int]:
    """The order (indices into ``cells``) in which a run hands the cells to its executor:
    the main study's universal networks that train longer than ``preset.universal_steps``
    (``universal_steps_by_family``) first, since their per-σ networks wait for them and
    would otherwise end the run on one busy worker, then the others in list order. The
    report reads the records in the order of ``cells``."""
    def leads(c: dict) -> bool:
        return (c["kind"] == "network" and not c.get("study")
                and c["train"]["mode"] == "universal"
                and c["train"]["steps"] > preset.universal_steps)

    return sorted(range(len(cells)), key=lambda i: not leads(cells[i]))  # stable


def sweep_cells(preset, datasets: str | None, seed: int) -> list[dict]:
    """The memorization sweep's cells, its own reference cells (the bracket on its held-out
    images), the Jacobian comparison of each network pair and, with ``machines``, the
    LS/ELS machines beside each pair."""
    m = preset.memorization
    entries = [e for e in m.get("entries", ()) if _chosen(e[0], datasets)]
    if not entries:
        return []
    cells = build_memorization_cells(
        entries, m["sizes"], m["net"], m["steps"], m["batch_size"], m.get("lr", preset.lr),
        sigma_max=m.get("sigma_max", 1.0), n_samples=m["n_samples"], sigmas=preset.sigmas,
        n_eval=m["n_eval"], sampler=m["sampler"], seed=seed, objective=m.get("objective", "paper"),
        center=m.get("center", False),
        monitor_sigmas=[x for x in preset.monitor_sigmas if x <= m.get("sigma_max", 1.0)],
        compile=preset.compile, precision=preset.precision,
        posterior_samples=m.get("posterior_samples", False))
    pair_sigma = [m.get("pair_sigma", preset.sigmas[len(preset.sigmas) // 2])]
    references = []  # the MMSE bracket on the sweep's held-out images, at the σ grid
    for name, params in entries:
        size = datasets_synth.get(name, **params).num_images
        n_eval = m["n_eval"] if size is None else min(m["n_eval"], size)
        references.append({"kind": "reference", "dataset": name, "params": dict(params),
                           "sigmas": list(preset.sigmas), "n_eval": n_eval, "seed": seed,
                           "study": MEMORIZATION_STUDY})
    analyses = build_pair_cells(cells, pair_sigma, preset.jacobian_images, seed)
    machines = m.get("machines")
    if machines:
        analyses += build_machine_cells(
            cells, machines["patches"], machines["n_samples"], machines["n_calibration"],
            preset.sigmas, machines.get("boundary", "crop"))
    return references + cells + analyses


def dimension_cells(preset, datasets: str | None, seed: int) -> list[dict]:
    """The intrinsic-dimension study's cells, unless ``--datasets`` leaves its family out."""
    if not _chosen(preset.dimensions.get("family"), datasets):
        return []
    return build_dimension_cells(preset, seed)


def _chosen(name: str | None, datasets: str | None) -> bool:
    """Whether ``--datasets`` (comma-separated names, None: all) includes ``name``."""
    return datasets is None or name in {w.strip() for w in datasets.split(",")}
