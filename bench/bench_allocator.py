"""The workers' malloc settings: one reference cell's time and page faults with glibc's
default thresholds against the run's workers' (``theorybench.executors.MALLOC_ENV``).

Each setting computes the same cell (a reference cell of the default preset, fewer test
images; nothing is written) in a fresh process with one torch thread, ``--repeats`` times
alternately; medians. The ratio is the workers' settings' wall time over the default's
(goal < 1). Linux (glibc) only: elsewhere the variables do nothing.

    python bench/bench_allocator.py [--cell "references of calpha(alpha=4.0)"] [--n-eval 16]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from theorybench.executors import MALLOC_ENV  # noqa: E402


def child(description: str, n_eval: int) -> None:
    """Compute the cell in this process; print wall, user, system seconds and faults."""
    import torch

    from theorybench.cli import study_entries
    from theorybench.experiments.cells import compute_reference, describe
    from theorybench.experiments.presets import PRESETS
    from theorybench.experiments.study import study_cells

    torch.set_num_threads(1)
    preset = PRESETS["default"]
    cells = study_cells(preset, study_entries(preset, None), None, 0)
    chosen = [c for c in cells if c["kind"] == "reference" and describe(c) == description]
    if not chosen:
        valid = sorted({describe(c) for c in cells if c["kind"] == "reference"})
        raise SystemExit(f"no reference cell {description!r}; valid: {valid}")
    spec = dict(chosen[0], n_eval=n_eval)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    compute_reference(spec)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall": wall, "user": after.ru_utime - before.ru_utime,
                      "system": after.ru_stime - before.ru_stime,
                      "faults": after.ru_minflt - before.ru_minflt}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", default="references of calpha(alpha=4.0)")
    parser.add_argument("--n-eval", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.cell, args.n_eval)
    default = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    settings = {"glibc default": default, "workers' (MALLOC_ENV)": {**default, **MALLOC_ENV}}
    runs = {name: [] for name in settings}
    command = [sys.executable, __file__, "--child", "--cell", args.cell,
               "--n-eval", str(args.n_eval)]
    for _ in range(args.repeats):
        for name, env in settings.items():
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.cell}, {args.n_eval} test images, one thread; medians of {args.repeats}:")
    medians = {}
    for name, results in runs.items():
        medians[name] = {k: statistics.median(r[k] for r in results) for k in results[0]}
        m = medians[name]
        print(f"  {name:24s} {m['wall']:6.1f} s wall (user {m['user']:.1f}, system "
              f"{m['system']:.1f}), {m['faults'] / 1e6:.2f} M minor page faults")
    first, second = medians.values()
    print(f"ratio (workers' / default wall time, goal < 1): {second['wall'] / first['wall']:.2f}")


if __name__ == "__main__":
    main()
