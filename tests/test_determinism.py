"""Same seed, same machine: two runs of the smoke preset give byte-identical tables.

The two runs use separate caches (so both compute every cell) and separate interpreters:
one in this process, one in a subprocess started at the same time (each cell uses one
thread, so the two share the 2 cores). Another seed must change the numbers.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from theorybench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def args(out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--preset", "smoke", "--out", str(out), "--cache", str(cache), "--quiet", *extra]


def stored_results(cache: Path) -> dict:
    return {p.relative_to(cache).as_posix(): json.loads(p.read_text())["result"]
            for p in cache.glob("*/*.json")}


def test_two_runs_same_seed_byte_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = tmp_path / "other.log"
    with log.open("w") as handle:
        other = subprocess.Popen([sys.executable, str(ROOT / "run_all.py"),
                                  *args(b / "out", b / "cache", "--seed", "0")], env=env,
                                 cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT)
    assert main(args(a / "out", a / "cache", "--seed", "0")) == 0
    assert other.wait(timeout=600) == 0, log.read_text()[-3000:]
    for run in (a, b):
        meta = json.loads((run / "out" / "run.json").read_text())
        assert meta["computed"] == meta["cells"] >= 30  # every cell computed in both runs
    tables = sorted(p.name for p in (a / "out").glob("*.csv"))
    assert tables == sorted(p.name for p in (b / "out").glob("*.csv"))
    assert {"mse.csv", "kl.csv", "rates.csv", "shuffled.csv"} <= set(tables)
    for name in tables:
        assert (a / "out" / name).read_bytes() == (b / "out" / name).read_bytes(), name
    assert stored_results(a / "cache") == stored_results(b / "cache")  # to the last bit


def test_another_seed_changes_the_numbers(tmp_path):
    tables = {}
    for seed in ("0", "1"):
        out = tmp_path / f"out{seed}"
        assert main(args(out, tmp_path / "cache", "--datasets", "faces", "--seed", seed)) == 0
        tables[seed] = (out / "mse.csv").read_text()
    assert tables["0"].splitlines()[0] == tables["1"].splitlines()[0]
    assert tables["0"] != tables["1"]
