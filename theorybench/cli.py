"""``python run_all.py``: options → study cells → executor → cache → reports."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import datasets_synth
from datasets_synth.registry import get_factory, registered_in_process
from tbcore.validation import resolve_device

from .cache import Cache, atomic_write_bytes
from .executors import EXECUTORS, ExecutorUnavailable, check_executor, run_cells
from .experiments.cells import KINDS
from .experiments.keys import cell_key
from .experiments.presets import PRESETS
from .experiments.study import start_order, study_cells
from .training import has_bf16_units

# A run's seed is one 32-bit word: seeds >= 2³² are the project's reserved ones (training
# images 2⁴¹ + seed, monitor 2⁴², calibration 2⁴⁰ + 17), and a larger --seed would draw
# its test images from another run's training stream (tbcore.seeding: word aliasing).
RUN_SEED_LIMIT = 2**32 - 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_all.py",
        description="Reproduce theorybench's tables and figures: MMSE brackets, networks "
                    "trained at each σ, KL bounds, rates.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="study size: smoke (1–2 min), default (2-core CPU: 21–32 min "
                             "with bfloat16 units, about 1 h 45 min without), gpu (one GPU, "
                             "~6 min), paper (one GPU, days)")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=JSON",
                        help="replace one preset field, e.g. universal_steps=50 or "
                             "'net={\"arch\": \"unet\", \"channels\": 8}' (repeatable)")
    parser.add_argument("--kinds", default=None,
                        help="comma-separated cell kinds to compute (default: all), e.g. "
                             "reference: the CPU work of a preset, to carry to a GPU machine")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated distribution names (default: every built-in "
                             "entry of the preset and every plugin)")
    parser.add_argument("--out", default="reports", help="report folder (default: reports)")
    parser.add_argument("--cache", default=".cache/theorybench",
                        help="result cache folder (default: .cache/theorybench)")
    parser.add_argument("--compare", action="append", default=[], metavar="DIR",
                        help="the report folder (--out) of a run of the same study at another "
                             "--seed: the report adds a section setting its networks beside "
                             "this run's (repeatable)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the reports from stored results, compute nothing")
    parser.add_argument("--list", action="store_true",
                        help="print every registered distribution and exit")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    parser.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local (this process) or ray (one Ray task per cell; needs the "
                             "extra 'ray')")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray "
                             "instance); --executor ray only")
    parser.add_argument("--jobs", type=int, default=None,
                        help="local worker processes, one cell each (default: CPU count); "
                             "--executor local only (Ray schedules by its cluster's resources)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (it may datasets_synth.register() "
                             "distributions; repeatable)")
    return parser


def import_plugins(modules: list[str]) -> None:
    """Import each ``--plugin`` module (its registrations take effect in this process)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken plugin: one line, not a traceback
            raise ValueError(f"--plugin {module}: cannot import it ({type(exc).__name__}: "
                             f"{exc}); it must be importable (on PYTHONPATH)") from exc


def default_params(name: str, preset) -> dict:
    """Parameters of an entry not listed in the preset: the preset's image size when the
    family's factory takes ``size``, else none (its own defaults)."""
    try:
        signature = inspect.signature(get_factory(name))
    except (TypeError, ValueError):
        return {}
    takes = "size" in signature.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    return {"size": preset.size} if takes else {}


def _json_kind(value) -> str:
    """The JSON type of a preset value: the kind an override of it must have."""
    for kind, types in (("a boolean", bool), ("a number", (int, float)), ("a string", str),
                        ("a list", (list, tuple)), ("an object", dict)):
        if isinstance(value, types):
            return kind
    return "null"


def apply_overrides(preset, overrides: list[str]):
    """The preset with ``FIELD=JSON`` replacements (JSON lists become tuples), each of the
    JSON type of the value it replaces (a number for a number, an object for a dict...);
    ``size`` also sets the ``size`` of every entry of ``datasets`` that has one, and
    ``universal_steps`` empties ``universal_steps_by_family`` and ``net`` empties
    ``net_by_family``, unless those fields are overridden too. The preset checks the
    result (``Preset``)."""
    fields = [f.name for f in dataclasses.fields(preset)]
    changes = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields or key == "name":
            raise ValueError(f"--override needs FIELD=JSON with FIELD one of "
                             f"{', '.join(f for f in fields if f != 'name')}; got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            hint = (f"; a string is quoted, e.g. --override '{key}=\"{raw}\"'"
                    if raw and raw[0] not in "\"[{" else "")
            raise ValueError(f"--override {key}: {raw!r} is not JSON ({exc.msg}){hint}") from exc
        want = _json_kind(getattr(preset, key))
        if want != "null" and _json_kind(value) != want:
            raise ValueError(f"--override {key} must be {want} (as the preset's "
                             f"{json.dumps(getattr(preset, key))[:60]}), got {raw!r}")
        changes[key] = tuple(value) if isinstance(value, list) else value
    if "universal_steps" in changes and "universal_steps_by_family" not in changes:
        changes["universal_steps_by_family"] = {}  # one budget for every universal network
    if "net" in changes and "net_by_family" not in changes:
        changes["net_by_family"] = {}  # one network for every family
    if "size" in changes and "datasets" not in changes:  # the entries follow the image side
        changes["datasets"] = tuple((name, {**params, "size": changes["size"]})
                                    if "size" in params else (name, params)
                                    for name, params in preset.datasets)
    return dataclasses.replace(preset, **changes) if changes else preset


def list_distributions() -> str:
    """One line per registered distribution (:meth:`Distribution.describe`), or why it
    cannot be built or described."""
    lines = []
    for name in datasets_synth.names():
        try:
            lines.append(datasets_synth.get(name).describe())
        except ValueError as exc:
            lines.append(f"{name:14s} ({exc})")
        except (AttributeError, TypeError) as exc:  # a subclass that skipped super().__init__
            lines.append(f"{name:14s} (breaks the Distribution contract: "
                         f"{type(exc).__name__}: {exc})")
    return "\n".join(lines)


def study_entries(preset, datasets: str | None) -> list[tuple[str, dict]]:
    """(name, params) entries: the preset's built-ins (filtered), then plugins and other
    asked-for names with :func:`default_params`."""
    builtin = set(datasets_synth.builtin_names())
    plugins = [n for n in datasets_synth.names() if n not in builtin]
    entries = list(preset.datasets) + [(n, default_params(n, preset)) for n in plugins]
    if datasets is None:
        return entries
    wanted = [w.strip() for w in datasets.split(",") if w.strip()]
    if not wanted:
        raise ValueError("--datasets needs at least one name")
    valid = datasets_synth.names()
    for w in wanted:
        if w not in valid:
            raise ValueError(f"unknown distribution {w!r}; valid names: {', '.join(valid)}")
    chosen = [e for e in entries if e[0] in wanted]
    chosen += [(w, default_params(w, preset)) for w in wanted
               if w not in {e[0] for e in chosen}]
    return chosen


def check_entries(entries) -> None:
    """Build and conformance-check every entry before computing anything. A family that
    breaks the contract in a way the check does not name (an error inside the base class,
    e.g. a subclass ``__init__`` that skips ``super().__init__(**params)``, or latents that
    are not a dict) is refused in one line too, with the error it raised."""
    for name, params in entries:
        try:
            dist = datasets_synth.get(name, **params)
            datasets_synth.check_distribution(dist)
            dist.describe()  # the report's line for it: needs the base class's attributes
        except ValueError as exc:
            raise ValueError(f"distribution {name!r}: {exc}") from exc
        except (AttributeError, TypeError, IndexError, KeyError) as exc:
            raise ValueError(f"distribution {name!r} breaks the Distribution contract "
                             f"({type(exc).__name__}: {exc}); its __init__ must call "
                             f"super().__init__(**params) and _draw return (images, latents) "
                             f"with latents a dict (README: Add a distribution)") from exc


def check_out(out: Path) -> None:
    """ValueError (one line) unless the report folder ``out`` is a writable folder or can
    be made one (its nearest existing parent is): checked before any cell, not after the
    run; nothing is created."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the report")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {out}: {existing} is a file; give a folder for the report")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} cannot be written ({existing}); give a folder you "
                         f"can write")


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "theorybench",
                                "datasets_synth"], cwd=root, text=True, capture_output=True
                               ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def describe_device(device: torch.device) -> str:
    """The device in words for the report header, e.g. ``cpu (Intel Xeon …, 2 CPUs)`` or
    ``cuda (NVIDIA H200)``: results are bitwise reproducible on one machine, not across
    processors, so the reader needs to know which one."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info
                     if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{device} ({model}, {len(os.sched_getaffinity(0))} CPUs)"


def chosen_kinds(text: str) -> set[str]:
    """The cell kinds named by ``--kinds`` (comma-separated); ValueError naming the valid
    ones for an unknown or empty list."""
    kinds = {w.strip() for w in text.split(",") if w.strip()}
    unknown = sorted(kinds - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"--kinds must name cell kinds among {sorted(KINDS)}, got {text!r}")
    return kinds


def record_devices(records: list[dict]) -> str:
    """The devices and hosts the records' cells ran on, e.g. ``cpu on vm, cuda on gpu1``
    (cells of a run can come from several machines: carried references, a Ray cluster)."""
    metas = [r["meta"] for r in records if "meta" in r]
    return ", ".join(sorted({f"{m.get('device', '?')} on {m.get('host', '?')}"
                             for m in metas})) or "?"


def stored_run_meta(preset, args, records: list[dict], meta_path: Path) -> dict:
    """The run metadata of a ``--report-only`` rebuild: the ``run.json`` in the output
    folder when it is that of a run of the same preset, overrides, seed, datasets and
    plugins (a run.json without a seed is seed 0's, one without plugins imported none),
    else what the stored cells say (a run cut short writes none): the study's options, the
    devices and hosts of the cells, the date of the last one; no wall time."""
    study = study_options(preset, args)
    unset = {"seed": 0, "plugins": []}  # what a run.json written before the field meant
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(name, unset.get(name)) == value for name, value in study.items()):
            return {**meta, **study}
    last = max((r.get("meta", {}).get("date", "") for r in records), default="")
    return {**study, "commit": git_commit(), "device": record_devices(records),
            "date": last or "?"}


FLOAT32 = 'precision="fp32"'  # the override native_precision adds


def _sets_precision(overrides: list[str]) -> bool:
    """Whether one of ``overrides`` (``FIELD=JSON``) chooses the preset's precision."""
    return any(item.partition("=")[0] == "precision" for item in overrides)


def native_precision(preset, overrides: list[str], device: torch.device,
                     executor: str) -> tuple[list[str], str | None]:
    """The overrides a run computes with, and the note to print (None: unchanged).

    A preset whose networks train with a bfloat16 forward (``precision="bf16"``), run by
    the local executor on a device without bfloat16 units (``training.has_bf16_units``
    False), gets ``precision="fp32"`` added, unless an override sets the precision: there
    bfloat16 is emulated, and a training step of the default preset took 626 ms against
    72–93 ms in float32 (compiled, one thread, 2-core AMD EPYC with AVX2 only, 2026-12-07;
    ``bench/bench_training.py``). The run's ``run.json`` and the report's command line
    carry the added override, so the study is named as computed (a ``--report-only``
    rebuild takes it from there: :func:`rebuild_overrides`).
    """
    if (preset.precision != "bf16" or _sets_precision(overrides) or executor != "local"
            or has_bf16_units(device) is not False):
        return overrides, None
    note = (f"note: this {device.type} has no bfloat16 units (emulated bfloat16 is several "
            f"times slower than float32): running with --override 'precision=\"fp32\"' "
            f"(--override 'precision=\"bf16\"' keeps bfloat16)")
    return [*overrides, FLOAT32], note


def rebuild_overrides(args, meta_path: Path) -> list[str]:
    """The overrides a ``--report-only`` rebuild reads the cells with: ``args.override``,
    plus the precision :func:`native_precision` added to the run whose ``run.json`` is
    ``meta_path`` (the same preset, seed and datasets, its overrides those of ``args``
    and that one), unless ``args`` sets the precision."""
    if _sets_precision(args.override):
        return args.override
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return args.override
    same = ((meta.get("preset"), meta.get("seed", 0), meta.get("datasets"))
            == (args.preset, args.seed, args.datasets))
    added = [*args.override, FLOAT32]
    return added if same and meta.get("overrides") == added else args.override


def study_options(preset, args) -> dict:
    """What names the study a run computed, for its run.json and the report's command
    line: the preset, its overrides, the seed, the chosen datasets (None: all) and the
    ``--plugin`` modules it imported."""
    return {"preset": preset.name, "overrides": args.override, "seed": args.seed,
            "datasets": args.datasets, "plugins": args.plugin}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import_plugins(args.plugin)
    except ValueError as exc:
        parser.error(str(exc))
    if args.list:
        print(list_distributions())
        return 0
    start = time.perf_counter()
    try:
        preset = apply_overrides(PRESETS[args.preset], args.override)
        if not 0 <= args.seed <= RUN_SEED_LIMIT:
            raise ValueError(f"--seed must be an integer in [0, {RUN_SEED_LIMIT}], got "
                             f"{args.seed}")
        if args.jobs is not None and args.executor == "ray":
            raise ValueError("--jobs is for --executor local; Ray runs as many cells at once "
                             "as its cluster's resources allow")
        if args.jobs is None:
            args.jobs = os.cpu_count() or 1
        if args.jobs < 1:
            raise ValueError(f"--jobs must be an integer >= 1, got {args.jobs}")
        check_executor(args.executor, args.ray_address)
        device = resolve_device(args.device)
        if args.executor == "local" and device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but CUDA is not available; "
                             "valid: auto, cpu")
        if args.report_only:  # the precision its run added, as its run.json has it
            args.override = rebuild_overrides(args, Path(args.out) / "run.json")
        else:
            args.override, note = native_precision(preset, args.override, device,
                                                   args.executor)
            if note:
                print(note, file=sys.stderr)
        preset = apply_overrides(PRESETS[args.preset], args.override)
        entries = study_entries(preset, args.datasets)
        check_entries(entries)
        if any(registered_in_process(name) for name, _ in entries):
            if args.executor == "ray":
                raise ValueError("distributions added with register() exist only in this "
                                 "process; Ray workers need an installed entry-point plugin")
            if args.jobs > 1:
                print("note: a distribution added with register() exists only in this "
                      "process: its cells run one at a time (--jobs 1); an installed "
                      "entry-point plugin runs in parallel", file=sys.stderr)
            args.jobs = 1  # register()ed factories exist only in this process
        cells = study_cells(preset, entries, args.datasets, args.seed)
        study_size = len(cells)
        if args.kinds is not None:
            kinds = chosen_kinds(args.kinds)
            cells = [c for c in cells if c["kind"] in kinds]
        if args.report_only and not Path(args.cache).is_dir():
            raise ValueError(f"--report-only: no cache folder {args.cache!r}; run without "
                             f"--report-only first")
        check_out(Path(args.out))
        cache = Cache(args.cache)
        if args.compare:  # checked before a long run, not after it
            from .report.seeds import check_compare

            check_compare(study_options(preset, args), args.compare, Path(args.out))
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out)
    meta_path = out / "run.json"
    # the code the run starts with is the code it reports with and the commit it records:
    # an edit or a commit in the checkout during a long run reaches neither
    from .figures import figure_store
    from .report import build_report

    commit = git_commit()
    if args.report_only:
        records = [r for r in (cache.load(c["kind"], cell_key(c)) for c in cells) if r]
        if not records:
            parser.error(f"--report-only: nothing stored in {args.cache} for preset "
                         f"{preset.name!r}; run without --report-only first")
        # the report's own code may be newer than the run's: the header names both
        run_meta = {**stored_run_meta(preset, args, records, meta_path),
                    "report_commit": commit}
    else:
        try:
            order = start_order(cells, preset)
            started = run_cells([cells[i] for i in order], args.cache,
                                executor=args.executor,
                                device=device if args.executor == "local" else args.device,
                                quiet=args.quiet, ray_address=args.ray_address,
                                jobs=args.jobs)
            records = [record for _, record in sorted(zip(order, started, strict=True),
                                                      key=lambda pair: pair[0])]
        except ExecutorUnavailable as exc:
            parser.error(str(exc))
        run_meta = {**study_options(preset, args), "commit": commit,
                    "device": describe_device(device) if args.executor == "local" else
                    record_devices(records),
                    "executor": args.executor, "failed": sum("failed" in r for r in records),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "wall_seconds": time.perf_counter() - start,
                    "cells": len(cells), "computed": sum(not r.get("cached", True)
                                                         for r in records),
                    "kinds": args.kinds}
    run_meta["missing"] = study_size - len(records)  # the study's cells without a record
    if not args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(meta_path, json.dumps(run_meta, indent=1).encode())
    with figure_store(Path(args.cache) / "figures"):  # figures kept by content, as results
        readme = build_report(preset, entries, records, out, run_meta,
                              compare=tuple(Path(f) for f in args.compare))
    failed = [r["failed"] for r in records if "failed" in r]
    print(f"wrote {readme} ({len(records)} cells, {len(failed)} failed) in "
          f"{time.perf_counter() - start:.1f} s")
    return 1 if failed else 0  # the report is written either way; scripts see the failure


if __name__ == "__main__":
    sys.exit(main())
