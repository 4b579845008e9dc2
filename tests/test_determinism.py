"""Same seed, same machine: two runs of the smoke preset give byte-identical tables.

The two runs use separate caches (so both compute every cell) and separate interpreters:
the session's smoke run in this process (conftest ``smoke_run``) and one in a subprocess.
Another seed must change the numbers.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from theorybench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def args(out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--preset", "smoke", "--out", str(out), "--cache", str(cache), "--quiet", *extra]


def stored_results(cache: Path) -> dict:
    return {p.relative_to(cache).as_posix(): json.loads(p.read_text())["result"]
            for p in cache.glob("*/*.json")}


def test_two_runs_same_seed_byte_identical(smoke_run, tmp_path):
    a_out, a_cache, a_meta = smoke_run
    b = tmp_path / "b"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"),
                           *args(b / "out", b / "cache", "--seed", "0")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    b_meta = json.loads((b / "out" / "run.json").read_text())
    for meta in (a_meta, b_meta):
        assert meta["computed"] == meta["cells"] >= 30  # every cell computed in both runs
    tables = sorted(p.name for p in a_out.glob("*.csv"))
    assert tables == sorted(p.name for p in (b / "out").glob("*.csv"))
    assert {"mse.csv", "kl.csv", "rates.csv", "shuffled.csv"} <= set(tables)
    for name in tables:
        assert (a_out / name).read_bytes() == (b / "out" / name).read_bytes(), name
    assert stored_results(a_cache) == stored_results(b / "cache")  # to the last bit


def test_another_seed_changes_the_numbers(smoke_run, tmp_path):
    out = tmp_path / "out1"
    assert main(args(out, tmp_path / "cache", "--datasets", "faces", "--seed", "1")) == 0
    seed0 = pd.read_csv(smoke_run[0] / "mse.csv")
    seed0 = seed0[seed0.entry == "faces"].reset_index(drop=True)
    seed1 = pd.read_csv(out / "mse.csv")
    assert list(seed0.columns) == list(seed1.columns)
    assert seed0[["denoiser", "sigma"]].equals(seed1[["denoiser", "sigma"]])
    assert not np.allclose(seed0.mse, seed1.mse)
