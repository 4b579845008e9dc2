"""Crash safety: kill and resume, damaged records, two runs on one cache, diverging cells.

Every run here is the smoke preset on a subset of its entries, checked against the
session's uninterrupted run of the whole preset (conftest ``smoke_run``): the subset's rows
of the CSV tables must be byte-identical.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import entry_lines

import datasets_synth
from datasets_synth.registry import _REGISTERED
from theorybench.cache import Cache
from theorybench.cli import main
from theorybench.training import TRAIN_DATA_SEED

ROOT = Path(__file__).resolve().parents[1]
DATASETS = "gaussian,faces"  # per entry: 1 reference + 5 networks + 4 Jacobian analyses
ENTRIES = ("gaussian", "faces")
CELLS = 20
TABLES = ("mse.csv", "kl.csv")


def command(out: Path, cache: Path, datasets: str = DATASETS) -> list[str]:
    return ["--preset", "smoke", "--datasets", datasets, "--out", str(out), "--cache", str(cache),
            "--quiet"]


def script(out: Path, cache: Path) -> list[str]:
    return [sys.executable, str(ROOT / "run_all.py"), *command(out, cache)]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def meta(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def records(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/*.json"))


def assert_same_tables(out: Path, reference: Path) -> None:
    for name in TABLES:
        assert entry_lines(out / name, ENTRIES) == entry_lines(reference / name, ENTRIES), name


def assert_all_records_valid(cache: Path) -> None:
    store = Cache(cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a damaged record would warn
        for path in records(cache):
            assert store.load(path.parent.name, path.stem) is not None, path


LINUX_PROC = Path("/proc/self/stat").exists()  # process tables are read from Linux /proc


def _processes() -> dict[int, tuple[int, str]]:
    """Every live process: pid → (parent pid, state letter), from Linux /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we read
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (its workers and their helpers)."""
    table, found, frontier = _processes(), set(), {pid}
    while frontier:
        frontier = {p for p, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie has ended)."""
    table = _processes()
    return {p for p in pids if p in table and table[p][1] != "Z"}


@pytest.fixture
def reference(smoke_run):
    """The session's uninterrupted run of the whole smoke preset: (out, cache)."""
    return smoke_run[:2]


def test_sigkill_mid_run_then_resume(reference, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(script(out, cache), env=env(), cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while len(records(cache)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
    workers = descendants(proc.pid) if LINUX_PROC else set()
    assert workers or not LINUX_PROC, "the run has no worker processes to check"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    log.close()
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30  # the workers end with their driver
    while running(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(workers), f"processes left by the killed run: {running(workers)}"
    done = len(records(cache))
    assert 2 <= done < CELLS
    assert not out.exists() or not (out / "mse.csv").exists()
    assert_all_records_valid(cache)  # whatever the kill interrupted left no damaged record

    assert main(command(out, cache)) == 0
    resumed = meta(out)
    assert resumed["cells"] == CELLS
    assert 0 < resumed["computed"] <= CELLS - done  # only the unfinished cells
    assert_same_tables(out, reference[0])


def test_damaged_records_are_discarded_and_recomputed(reference, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    shutil.copytree(reference[1] / "artifacts", cache / "artifacts")  # network checkpoints
    for path in records(reference[1]):  # the records of this run's entries
        if json.loads(path.read_text())["spec"]["dataset"] in ENTRIES:
            (cache / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, cache / path.parent.name / path.name)
    assert len(records(cache)) == CELLS
    truncated, altered, replaced = records(cache)[:3]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    record = json.loads(altered.read_text())
    record["result"]["curve" if "curve" in record["result"] else "curves"] = {}
    altered.write_text(json.dumps(record))  # valid JSON, stale checksum
    replaced.write_text("[1, 2, 3]")  # valid JSON, not a record
    with pytest.warns(UserWarning, match="discarded, it will be recomputed") as caught:
        assert main(command(out, cache)) == 0
    damaged = {str(p) for p in (truncated, altered, replaced)}
    warned = {m for w in caught for m in damaged if m in str(w.message)}
    assert warned == damaged
    assert meta(out)["computed"] == 3
    assert_all_records_valid(cache)
    assert_same_tables(out, reference[0])


def test_a_record_without_its_checkpoint_is_recomputed(reference, tmp_path):
    """A network whose checkpoint is gone is trained again (the cells that start from it or
    analyse it would otherwise fail on every run); the rest stays cached."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    shutil.copytree(reference[1], cache)
    universal = [p for p in records(cache) if (lambda r: r["spec"]["kind"] == "network"
                 and r["spec"]["dataset"] == "gaussian"
                 and r["spec"]["train"]["mode"] == "universal")(json.loads(p.read_text()))]
    assert len(universal) == 1
    checkpoint = cache / "artifacts" / f"{universal[0].stem}.pt"
    checkpoint.unlink()
    assert main(command(out, cache)) == 0
    assert meta(out)["computed"] == 1 and meta(out)["failed"] == 0 and checkpoint.exists()
    assert_same_tables(out, reference[0])


def test_two_runs_share_one_cache(reference, tmp_path):
    cache = tmp_path / "cache"
    outs = [tmp_path / "out1", tmp_path / "out2"]
    logs = [tmp_path / "run1.log", tmp_path / "run2.log"]
    procs = []
    for out, log in zip(outs, logs, strict=True):
        with log.open("w") as handle:
            procs.append(subprocess.Popen(script(out, cache), env=env(), cwd=tmp_path,
                                          stdout=handle, stderr=subprocess.STDOUT))
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    for out in outs:
        assert_same_tables(out, reference[0])
    assert len(records(cache)) == CELLS
    assert_all_records_valid(cache)
    leftovers = [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


class Boom(datasets_synth.Distribution):
    """Noise-free test images, but one infinite pixel in every training image
    (the training stream uses seeds >= TRAIN_DATA_SEED): training loss is NaN at step 0."""

    name, value_range = "boom", (0.0, 1.0)

    def __init__(self):
        super().__init__()
        self.shape = (1, 16, 16)

    def _draw(self, generator, count):
        return torch.rand(count, 1, 16, 16, generator=generator), {}

    def _take(self, n, seed, offset):
        images, latents = super()._take(n, seed, offset)
        if seed >= TRAIN_DATA_SEED:
            images[:, 0, 0, 0] = float("inf")
        return images, latents


def test_diverging_cells_fail_alone(tmp_path, monkeypatch, capsys):
    from datasets_synth.gaussian import GaussianField

    monkeypatch.setitem(_REGISTERED, "boom", Boom)
    monkeypatch.setitem(_REGISTERED, "calm", lambda: GaussianField(size=16))  # runs after boom
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert main(command(out, cache, "boom,calm")) == 1  # the report is written, the run failed
    printed = capsys.readouterr()
    # the universal training fails; the 4 per-σ networks warm-started from it and the 4
    # Jacobian analyses of their checkpoints fail for want of a checkpoint
    assert "(20 cells, 9 failed)" in printed.out
    lines = (out / "README.md").read_text().splitlines()
    failed = [line for line in lines if line.startswith("- **failed cell**")]
    assert len(failed) == 9
    diverged = [line for line in failed if "training loss is nan" in line]
    assert len(diverged) == 1 and "universal network on boom" in diverged[0]
    orphans = [line for line in failed if "network it starts from" in line]
    assert len(orphans) == 4
    for sigma in ("σ=0.02", "σ=0.07368", "σ=0.2714", "σ=1"):
        assert sum(sigma + ")" in line and "network on boom" in line for line in orphans) == 1
    assert sum("no checkpoint" in line for line in failed) == 8
    assert printed.out.count("FAILED per-sigma network on boom") == 4
    assert printed.out.count("FAILED universal network on boom") == 1
    stored = [json.loads(p.read_text())["spec"] for p in records(cache)]
    assert sorted((s["kind"], s["dataset"]) for s in stored) == sorted(
        [("reference", "boom"), ("reference", "calm")] + [("network", "calm")] * 5
        + [("jacobian", "calm")] * 4)
    assert meta(out)["computed"] == 11  # 2 references + 5 calm networks + 4 analyses
    # nothing poisoned was stored: the next run tries the failed cells again (and only them)
    assert main(command(tmp_path / "out2", cache, "boom,calm")) == 1
    assert meta(tmp_path / "out2")["computed"] == 0
    assert "(20 cells, 9 failed)" in capsys.readouterr().out
