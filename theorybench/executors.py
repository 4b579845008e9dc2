"""Executors run independent cells: in this process (default) or as Ray tasks.

Every executor goes through :func:`~theorybench.experiments.cells.run_cell`, which loads a
cell's record from the cache or computes and stores it (atomically, with a checksum), so
the records, hence the tables, do not depend on the executor, and a run killed at any
moment loses at most the cells in flight. The driver computes every cell's key once, at
the start, and hands it to the cell: a cell whose hashed source was edited during the run
fails with a message (run again) rather than storing results that the cells reading it
cannot find, or that mix two versions of the code. (When this module starts Ray, its
workers hash and run the copy of the sources shipped at the start: edits to the checkout
do not reach them.)

Order: a cell starts once every cell it reads (``cells.cell_dependencies``: the universal
network a per-σ network starts from, the networks a Jacobian cell analyses) has finished;
there is no barrier between kinds of cells. Cells free to start go in the order of the
cell list (:class:`Schedule`).

``ray``: each missing cell is one Ray task (``num_gpus=1`` on a CUDA run when its kind
runs networks: ``CellKind.gpu`` of :data:`experiments.cells.KINDS`),
on the cluster at ``ray_address`` (or ``RAY_ADDRESS``), else on a local Ray instance
started for the run and shut down after it. Workers write into the cache directory, which
must be the same path on every node (shared storage); the driver gathers the records.
When this module starts the Ray session itself, it ships the driver's ``tbcore``,
``datasets_synth`` and ``theorybench`` sources to the workers (``runtime_env``
``py_modules``), so workers run exactly the driver's code; other packages (torch,
plugins) must be installed on every node. Ray is optional: it is imported only when
``executor="ray"`` is asked for.

Threads: both executors run each cell with the same number of torch intra-op CPU threads
(``threads``, default 1; a Ray task reserves as many CPUs). CPU reductions split their
work by thread count, so this number changes results in the last bits (about 1e-8
relative); fixing it makes the tables byte-identical whatever the executor. One thread
per cell is also the fast choice for these small networks: cells run in parallel on Ray,
and on a busy 2-core machine two threads per training step were measured 10-70x slower
than one (OpenMP threads waiting on each other).

Memory: glibc's malloc hands a freed block above its mmap threshold (adaptive, at most
32 MB) and a free heap top above its trim threshold back to the system at once, so a cell
that allocates and frees large tensors in a loop takes a page fault on every page of every
reuse: 17 % of a C^α reference cell's time went to the kernel (13 M minor faults; 172 M
in a default run, 254 s of system time). The local workers and the Ray workers this module
starts therefore run with both thresholds raised (:data:`MALLOC_ENV`, mallopt(3); a value
already in the environment wins; no effect with another C library), and return their free
memory after each cell (``malloc_trim``), so that a worker does not hold one cell's peak
through the next. The PyTorch performance tuning guide makes the same point for CPU runs
(replace the default allocator); these two settings need no extra library.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tbcore.validation import check_int, resolve_device

from .cache import Cache
from .experiments.cells import cell_dependencies, describe, kind_of, run_cell, stored_record
from .experiments.keys import cell_key

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install 'theorybench[ray]' (or: pip install ray)"
CELL_THREADS = 1  # torch intra-op threads per cell (see the module docstring)
# "auto", "local", host:port (IPv4, name or [IPv6]) or a Ray Client URL ray://host:port
RAY_ADDRESS = re.compile(r"^(auto|local|(ray://)?([\w.\-]+|\[[0-9a-fA-F:]+\]):\d{1,5})$")
# glibc malloc of the worker processes (module docstring): blocks up to 1 GiB from the heap,
# and up to 1 GiB of free heap top kept for reuse
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
_C_LIBRARY = ctypes.CDLL(None) if os.name == "posix" else None  # this process's C library


class ExecutorUnavailable(ValueError):
    """The executor cannot start (Ray missing, cluster unreachable, no GPU); nothing ran."""


def check_executor(executor: str, ray_address: str | None = None) -> None:
    """Refuse an executor that cannot run here, before anything is computed or written.

    Raises
    ------
    ExecutorUnavailable (a ValueError)   unknown executor, Ray not installed, a malformed
        ``ray_address``, or ``ray_address`` given to the local executor.
    """
    if executor not in EXECUTORS:
        raise ExecutorUnavailable(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if executor == "local":
        if ray_address is not None:
            raise ExecutorUnavailable("--ray-address is only used with --executor ray")
        return
    _import_ray()
    if ray_address is not None and not RAY_ADDRESS.match(ray_address):
        raise ExecutorUnavailable(f"--ray-address must be 'auto', 'local', host:port or "
                                  f"ray://host:port, got {ray_address!r}")


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Schedule:
    """Which of the cells to compute may start, in which order.

    Parameters
    ----------
    cells : list of cell specs.
    todo : indices of the cells to compute (the others are stored, or not part of the run:
        a dependency on them is met).
    keys : the cells' keys as the run computed them at its start (default: computed here).

    ``take(count)`` hands out up to ``count`` cells whose dependencies have all finished,
    in list order (``build_cells`` lists the long independent cells early, the short
    analyses last, which keeps the workers' tails short); ``finish(i)`` releases the cells
    waiting for cell ``i`` (finished, failed or not: a cell whose dependency failed runs
    and records its own failure). ``len()`` counts the cells not yet handed out.
    """

    def __init__(self, cells: list[dict], todo, keys: list[str] | None = None) -> None:
        if keys is None:
            keys = [cell_key(spec) for spec in cells]
        index = {keys[i]: i for i in todo}
        self._needs = {i: {index[k] for k in cell_dependencies(cells[i]) if k in index}
                       for i in todo}
        self._waiting = sorted(todo)

    def __len__(self) -> int:
        return len(self._waiting)

    def take(self, count: int) -> list[int]:
        chosen = [i for i in self._waiting if not self._needs[i]][:max(count, 0)]
        self._waiting = [i for i in self._waiting if i not in chosen]
        return chosen

    def finish(self, i: int) -> None:
        for needs in self._needs.values():
            needs.discard(i)


def worker_environment() -> dict[str, str]:
    """The environment variables the workers start with: :data:`MALLOC_ENV`, where this
    process's environment does not set them already."""
    return {name: os.environ.get(name, value) for name, value in MALLOC_ENV.items()}


@contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """Set ``variables`` in ``os.environ`` for the block (processes started in it inherit
    them), then restore the previous values."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _free_heap() -> None:
    """Return the free heap to the system (glibc ``malloc_trim``; nothing elsewhere)."""
    trim = getattr(_C_LIBRARY, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _exit_with_driver() -> None:
    """Initializer of the local worker processes: end the worker when the driver ends.

    A driver killed outright (SIGKILL, the OOM killer) runs no clean-up, and its pool's
    workers, blocked on a queue whose other end they hold themselves, would otherwise
    live on, each holding its memory; a worker killed mid-cell leaves no damaged record
    (records are written atomically), so the next run recomputes that cell.
    """
    driver = multiprocessing.parent_process()
    if driver is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([driver.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-driver", daemon=True).start()


def _cell(spec: dict, cache_root, device, threads: int, progress: bool, key: str) -> dict:
    """Body of one cell, wherever it runs (this process, a local worker, a Ray task): load
    or compute it with ``threads`` torch threads, then return the free heap."""
    try:
        with torch_threads(threads):
            return run_cell(spec, cache_root, device=device, progress=progress, key=key)
    finally:
        _free_heap()


def run_local(cells: list[dict], cache_root, device=None, quiet: bool = False,
              threads: int = CELL_THREADS, jobs: int = 1) -> list[dict]:
    """Run the cells on this machine; records in the order of ``cells``.

    ``jobs == 1``: one cell after another in this process (with per-training progress
    bars). ``jobs > 1``: that many worker processes (``spawn``), each cell in one of them
    with ``threads`` torch threads, started with :func:`worker_environment`; results are the
    same bits as with ``jobs == 1``.
    """
    records: list[dict | None] = [None] * len(cells)
    keys = [cell_key(spec) for spec in cells]  # the code at the run's start
    bar = tqdm(total=len(cells), disable=quiet, desc="cells", unit="cell")

    def finish(i: int, record: dict) -> None:
        if "failed" in record:
            tqdm.write(f"FAILED {record['failed']}")
        records[i] = record
        bar.update(1)

    if jobs == 1:
        schedule = Schedule(cells, range(len(cells)), keys)
        while len(schedule):
            for i in _ready(schedule, 1):
                bar.set_postfix_str(describe(cells[i])[:60])
                finish(i, _cell(cells[i], cache_root, device, threads, not quiet, keys[i]))
                schedule.finish(i)
    else:
        cache, missing = Cache(cache_root), []
        for i, spec in enumerate(cells):  # stored cells are loaded (and checked) right here
            stored = stored_record(cache, spec, keys[i])
            if stored is None:
                missing.append(i)
            else:
                finish(i, stored)
        schedule, running = Schedule(cells, missing, keys), {}
        context = multiprocessing.get_context("spawn")
        with _environment(worker_environment()), ProcessPoolExecutor(
                max_workers=jobs, mp_context=context, initializer=_exit_with_driver) as pool:
            while len(schedule) or running:  # keep exactly `jobs` cells in flight
                for i in _ready(schedule, jobs - len(running), busy=bool(running)):
                    running[pool.submit(_cell, cells[i], cache_root, device, threads,
                                        False, keys[i])] = i
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i = running.pop(future)
                    finish(i, future.result())
                    schedule.finish(i)
    bar.close()
    return records


def _ready(schedule: Schedule, count: int, busy: bool = False) -> list[int]:
    """``schedule.take(count)``; RuntimeError if nothing can start while nothing runs (a
    dependency cycle: cannot happen for cells of ``build_cells``)."""
    chosen = schedule.take(count)
    if not chosen and not busy and len(schedule):
        raise RuntimeError(f"{len(schedule)} cells wait for each other (dependency cycle)")
    return chosen


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ExecutorUnavailable(f"--executor ray needs Ray, which is not installed: "
                                  f"{RAY_INSTALL}") from exc
    return ray


def ray_runtime_env() -> dict:
    """The job ``runtime_env`` that ships this checkout's packages to the Ray workers."""
    import datasets_synth
    import tbcore
    import theorybench

    return {"py_modules": [tbcore, datasets_synth, theorybench],
            "env_vars": worker_environment()}


def _ray_device(ray, device, threads: int) -> tuple[str, int]:
    """(device of the network cells on the workers, GPUs each of them requests).

    ``None``/"auto": CUDA when a node has a GPU, else CPU; "cuda[:i]": one GPU per cell (a
    task sees its GPU as ``cuda``), refused when no node has one; "cpu". Refuses
    ``threads`` larger than every node's CPUs (such tasks would wait forever).
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if cpus < threads:
        raise ExecutorUnavailable(f"threads per cell must be <= the CPUs of a Ray node "
                                  f"({cpus:g}), got {threads}")
    name = "auto" if device is None else str(device)
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    if name == "auto":
        return ("cuda", 1) if gpus >= 1 else ("cpu", 0)
    kind = resolve_device(name).type
    if kind == "cuda":
        if gpus < 1:
            raise ExecutorUnavailable("--device cuda was asked for but the Ray cluster has no "
                                      "GPU; valid: auto, cpu")
        return "cuda", 1
    if kind != "cpu":
        raise ExecutorUnavailable(f"--executor ray runs cells on auto, cpu or cuda, got {name!r}")
    return "cpu", 0


def _ray_cell(spec: dict, cache_root: str, device: str, threads: int, key: str) -> dict:
    """Body of one Ray task: load or compute the cell, store it in the shared cache."""
    return _cell(spec, cache_root, device, threads, False, key)


def run_ray(cells: list[dict], cache_root, device=None, quiet: bool = False,
            ray_address: str | None = None, threads: int = CELL_THREADS) -> list[dict]:
    """Run the missing cells as Ray tasks; records in the order of ``cells``.

    Parameters
    ----------
    cells : list of cell specs (``build_cells``).
    cache_root : path of the cache, shared by the driver and every worker.
    device : "auto"/None, "cpu", "cuda" or a torch.device: where network cells train.
    quiet : bool   no progress bar and no worker logs on the driver's terminal.
    ray_address : cluster address; None uses ``RAY_ADDRESS``, else a local Ray instance.
        An already initialized Ray session (``ray.init`` by the caller) is used as it is.
    threads : torch CPU threads per cell; each task reserves as many Ray CPUs.

    Cells already in the cache are loaded by the driver and not submitted. The first task
    that raises cancels the others and re-raises (the cells finished so far are stored).
    """
    ray = _import_ray()
    root = str(Path(cache_root).resolve())  # workers do not share the driver's cwd
    cache = Cache(root)
    keys = [cell_key(spec) for spec in cells]  # the code at the run's start
    records: list[dict | None] = [stored_record(cache, spec, key)
                                  for spec, key in zip(cells, keys, strict=True)]
    missing = [i for i, r in enumerate(records) if r is None]
    if not missing:
        return records
    started = not ray.is_initialized()
    if started:
        address = ray_address or os.environ.get("RAY_ADDRESS") or None
        try:
            ray.init(address=address, runtime_env=ray_runtime_env(), include_dashboard=False,
                     logging_level=logging.WARNING, log_to_driver=not quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ExecutorUnavailable(f"cannot start or reach Ray at "
                                      f"{address or 'a new local instance'}: {exc}") from exc
    bar = None
    pending: dict = {}
    try:
        device_name, gpus = _ray_device(ray, device, threads)
        task = ray.remote(_ray_cell)
        schedule = Schedule(cells, missing, keys)

        def submit() -> None:  # every cell free to start: Ray queues them on the cluster
            for i in _ready(schedule, len(schedule), busy=bool(pending)):
                spec = cells[i]
                on_device = kind_of(spec).gpu  # the kinds that run networks
                ref = task.options(num_cpus=threads, num_gpus=1 if on_device and gpus else 0,
                                   name=describe(spec)[:120]).remote(
                    spec, root, device_name if on_device else "cpu", threads, keys[i])
                pending[ref] = i

        submit()
        bar = tqdm(total=len(cells), initial=len(cells) - len(missing), disable=quiet,
                   desc="cells (ray)", unit="cell")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as exc:
                    if hasattr(exc, "add_note"):
                        exc.add_note(f"in Ray task: {describe(cells[i])}")
                    raise
                if "failed" in record:
                    tqdm.write(f"FAILED {record['failed']}")
                records[i] = record
                bar.update(1)
                schedule.finish(i)
            submit()
    finally:
        for ref in pending:
            ray.cancel(ref)
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()
    return records


def run_cells(cells, cache_root, executor: str = "local", device=None, quiet: bool = False,
              ray_address: str | None = None, threads: int = CELL_THREADS,
              jobs: int = 1) -> list[dict]:
    """Run ``cells`` with the chosen executor; one record per cell, in order.

    A cell that reads another cell's results starts after it (:class:`Schedule`).

    Parameters
    ----------
    executor : "local" (this machine) or "ray".
    device : where network cells train: None/"auto", "cpu", "cuda" or a torch.device.
    ray_address : the Ray cluster (executor "ray" only).
    threads : int >= 1, torch CPU threads per cell (same value → same bits on any executor).
    jobs : int >= 1, local worker processes (executor "local" only).
    """
    check_executor(executor, ray_address)
    threads = check_int("threads", threads, low=1)
    jobs = check_int("jobs", jobs, low=1)
    if executor == "local":
        if isinstance(device, str):
            device = resolve_device(device)
        if isinstance(device, torch.device) and device.type == "cuda" and \
                not torch.cuda.is_available():
            raise ExecutorUnavailable("device cuda was asked for but CUDA is not available; "
                                      "valid: auto, cpu")
    if executor == "ray":
        return run_ray(cells, cache_root, device=device, quiet=quiet, ray_address=ray_address,
                       threads=threads)
    return run_local(cells, cache_root, device=device, quiet=quiet, threads=threads, jobs=jobs)
