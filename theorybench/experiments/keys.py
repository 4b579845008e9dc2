"""Cell identity: content keys, labels and the declaration of a cell kind.

The base of ``experiments``: the kind modules (``memorization_sweep``, ``machines_sweep``,
``jacobian_analysis``) and ``cells`` (which assembles them into the registry
:data:`cells.KINDS`) import this module and nothing imports them back, so the package
has no import circle.

``cell_key(spec)`` hashes the spec together with the source code of the components the
cell runs (``COMPONENTS[kind]``, this module, ``tbcore``, the ``datasets_synth`` families
and the distribution's own module), so editing a component recomputes the cells that
depend on it (and, for a family, those of the other families too: a conservative choice
that cannot miss one family building on another).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datasets_synth.registry import get_factory

from ..cache import digest


@dataclass(frozen=True)
class CellKind:
    """What the harness needs to know of a kind of cell.

    Attributes
    ----------
    name : str        the spec's ``kind``.
    compute : callable ``(spec, cache, key, device, progress) -> result dict`` (a result
                      with ``"failed"`` is reported and not stored).
    describe : callable ``(spec) -> str``, one line for progress bars and errors.
    gpu : bool        the cell runs networks: on Ray it asks for a GPU when the run has
                      one (the others run on the CPU).
    artifacts : tuple of str   suffixes of the side files it writes
                      (``cache.artifact_path(key, suffix)``, e.g. a checkpoint): a stored
                      record whose side files are gone is computed again.

    Dependencies are declared in the specs themselves: every ``*_key`` field names a cell
    whose stored result this one reads (:func:`cells.cell_dependencies`).
    """

    name: str
    compute: Callable[..., dict]
    describe: Callable[[dict], str]
    gpu: bool
    artifacts: tuple[str, ...] = ()


class MissingCheckpoint(RuntimeError):
    """A cell needs the checkpoint of another cell, which is not stored (not run, or failed)."""



_DENOISERS = ("theorybench.denoisers", "datasets_synth.references")
_TRAINING = ("theorybench.evaluation", "theorybench.networks", "theorybench.blind_shrink",
             "theorybench.train_config", "theorybench.training", "theorybench.denoisers.network")
_JACOBIAN = ("theorybench.jacobian", "theorybench.evaluation",
             "theorybench.experiments.jacobian_analysis",
             "theorybench.experiments.memorization_sweep")
COMPONENTS = {  # every module whose code a kind's result depends on, beyond code_version's
    "reference": ("theorybench.evaluation", "theorybench.data_stats", *_DENOISERS,
                  "theorybench.experiments.cells"),
    "network": (*_TRAINING, "theorybench.experiments.cells"),
    "jacobian": (*_JACOBIAN, *_DENOISERS),
    "jacobian-pair": _JACOBIAN,
    "memorization": (*_TRAINING, "theorybench.sampling", "theorybench.memorization",
                     *_DENOISERS, "theorybench.experiments.memorization_sweep"),
    "machines": (*_TRAINING, "theorybench.sampling", "theorybench.memorization", *_DENOISERS,
                 "theorybench.experiments.memorization_sweep",
                 "theorybench.experiments.machines_sweep"),
}


def _source_hash(module: str) -> str:
    """SHA-256 of a module's source (all files of a package)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return "unknown"
    origin = Path(spec.origin)
    files = [origin]
    if origin.name == "__init__.py":  # a package: its modules, not editors' lock files
        files = sorted(f for f in origin.parent.glob("*.py")
                       if not f.name.startswith(".") and f.is_file())
    h = hashlib.sha256()
    for file in files:
        h.update(file.read_bytes())
    return h.hexdigest()


def code_version(spec: dict) -> dict:
    """Source hashes of the components a cell runs: its kind's, ``tbcore``, every built-in
    family (one may build on another: ``shuffled`` on its base, ``ellipses`` on
    ``manifolds``) and the module of its distribution's factory (a plugin's)."""
    factory = get_factory(spec["dataset"])
    modules = [*COMPONENTS[spec["kind"]], "theorybench.experiments.keys", "tbcore",
               "datasets_synth", factory.__module__]
    return {m: _source_hash(m) for m in dict.fromkeys(modules)}


def cell_key(spec: dict) -> str:
    """Content address of a cell: its spec and the code that computes it."""
    return digest({"spec": spec, "code": code_version(spec)})


def entry_label(name: str, params: dict) -> str:
    """A readable label for a study entry, e.g. ``calpha(alpha=2.0)``."""
    shown = {k: v for k, v in params.items() if k not in ("size", "split")}
    inner = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"{name}({inner})" if inner else name


def curve_record(frame) -> dict:
    """A :func:`~theorybench.evaluation.mse_curve` frame as a JSON-serializable record
    (its per-image errors included, for paired statistics)."""
    return {"sigma": frame["sigma"].tolist(), "mse": frame["mse"].tolist(),
            "se": frame["se"].tolist(), "d": int(frame["d"].iloc[0]),
            "errors": frame.attrs["errors"].tolist()}


