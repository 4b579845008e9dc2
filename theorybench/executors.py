"""Executors run independent cells: in this process (default) or as Ray tasks."""

from __future__ import annotations

from tqdm.auto import tqdm

from .experiments.cells import describe, run_cell

EXECUTORS = ("local",)


def run_local(cells: list[dict], cache_root: str, device=None, quiet: bool = False) -> list[dict]:
    """Run every cell in turn (cached cells are loaded); records in the order of ``cells``."""
    records = []
    bar = tqdm(cells, disable=quiet, desc="cells", unit="cell")
    for spec in bar:
        bar.set_postfix_str(describe(spec)[:60])
        record = run_cell(spec, cache_root, device=device, progress=not quiet)
        if "failed" in record:
            tqdm.write(f"FAILED {record['failed']}")
        records.append(record)
    return records


def run_cells(cells, cache_root, executor: str = "local", device=None, quiet=False):
    """Dispatch to the chosen executor."""
    if executor == "local":
        return run_local(cells, cache_root, device=device, quiet=quiet)
    raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
