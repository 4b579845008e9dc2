"""``--executor ray`` on a real local Ray cluster gives the local executor's tables, bit for bit.

A Ray instance with 2 CPUs is started in this process (``ray.init``, no dashboard) and
shut down at the end. The smoke preset runs on it through ``theorybench.cli.main`` (a
subset of the entries, for time), then through ``python run_all.py --ray-address`` as a
second driver connecting to the same cluster; the CSV tables and the stored records must
equal those of the session's local run of the whole preset (conftest ``smoke_run``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import entry_lines

from theorybench.cli import main

ray = pytest.importorskip("ray")
# one local ray cluster at a time: every test of this module in the pytest-xdist worker of
# the smoke-run tests (conftest)
pytestmark = pytest.mark.xdist_group("smoke")

ROOT = Path(__file__).resolve().parents[1]
DATASETS = "gaussian,faces"  # 20 cells: reference, networks and Jacobian analyses of each
ENTRIES = ("gaussian", "faces")  # their rows in the tables
TABLES = ("mse.csv", "kl.csv")


def smoke(out: Path, cache: Path, *extra: str) -> dict:
    """Run the smoke preset on DATASETS; return run.json."""
    assert main(["--preset", "smoke", "--datasets", DATASETS, "--out", str(out), "--cache",
                 str(cache), "--quiet", *extra]) == 0
    return json.loads((out / "run.json").read_text())


def results(cache: Path) -> dict:
    """Stored cell results by file name (the run metadata left out)."""
    return {p.name: json.loads(p.read_text())["result"] for p in cache.glob("*/*.json")}


@pytest.fixture(scope="module")
def cluster():
    from theorybench.executors import ray_runtime_env

    address = os.environ.pop("RAY_ADDRESS", None)  # a new local cluster, whatever the shell
    ray.init(num_cpus=2, include_dashboard=False, runtime_env=ray_runtime_env(),
             logging_level="ERROR", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    if address is not None:
        os.environ["RAY_ADDRESS"] = address


@pytest.fixture
def local_run(smoke_run):
    """The session's local smoke run of every entry (conftest): (out, cache, run.json)."""
    return smoke_run


def test_ray_run_equals_local_run(cluster, local_run, tmp_path):
    local_out, local_cache, _ = local_run
    meta = smoke(tmp_path / "out", tmp_path / "cache", "--executor", "ray")
    assert meta["cells"] == meta["computed"] == 20
    for name in TABLES:
        assert entry_lines(tmp_path / "out" / name, ENTRIES) == \
            entry_lines(local_out / name, ENTRIES), name
    ours, theirs = results(tmp_path / "cache"), results(local_cache)
    assert ours == {name: theirs[name] for name in ours}  # every stored value, bit for bit
    # the workers wrote the cache: a second run (local executor) finds every cell there
    again = smoke(tmp_path / "again", tmp_path / "cache")
    assert again["computed"] == 0


def test_second_driver_through_ray_address(cluster, local_run, tmp_path):
    """``python run_all.py --executor ray --ray-address HOST:PORT`` joins the running cluster."""
    local_out, _, _ = local_run
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="")
    proc = subprocess.run([sys.executable, str(ROOT / "run_all.py"), "--preset", "smoke",
                           "--datasets", "faces", "--executor", "ray", "--ray-address", cluster,
                           "--out", str(out), "--cache", str(cache), "--quiet"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["computed"] == 10
    assert entry_lines(out / "mse.csv", ("faces",)) == entry_lines(local_out / "mse.csv",
                                                                   ("faces",))


def test_importing_theorybench_does_not_import_ray():
    code = ("import sys, theorybench, theorybench.cli, theorybench.executors, theorybench.report;"
            "sys.exit('ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_ray_refuses_what_the_cluster_cannot_run(cluster, tmp_path):
    """Nothing is submitted (and nothing hangs) when no node can run the cells."""
    import torch

    from theorybench.executors import ExecutorUnavailable, run_cells
    from theorybench.experiments.cells import build_cells
    from theorybench.experiments.presets import PRESETS

    cells = build_cells(PRESETS["smoke"], [("gaussian", {"size": 16})], 0)[:2]
    with pytest.raises(ExecutorUnavailable, match="threads per cell must be <= the CPUs"):
        run_cells(cells, tmp_path / "cache", executor="ray", threads=64, quiet=True)
    if not torch.cuda.is_available() and not ray.cluster_resources().get("GPU"):
        with pytest.raises(ExecutorUnavailable, match="the Ray cluster has no GPU"):
            run_cells(cells, tmp_path / "cache", executor="ray", device="cuda", quiet=True)
    assert list((tmp_path / "cache").rglob("*.json")) == []
