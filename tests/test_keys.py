"""Cell keys change with the source of every module a cell's result depends on, and only
with those: a cached result is never reused after its code changed."""

from pathlib import Path

import pytest

from theorybench.experiments.keys import cell_key


def spec(kind: str, dataset: str, **params) -> dict:
    return {"kind": kind, "dataset": dataset, "params": params}


# (the file edited, specs whose key must change, specs whose key must not)
CASES = [
    ("datasets_synth/manifolds.py",  # ellipses builds on the shape manifolds
     [spec("network", "ellipses", k=2), spec("reference", "disks")], []),
    ("datasets_synth/faces.py",  # shuffled faces reads its base's images
     [spec("network", "shuffled", base="faces"), spec("reference", "shuffled", base="faces")],
     []),
    ("theorybench/kl.py",  # the bound is integrated by the report, from stored curves
     [], [spec(kind, "gaussian") for kind in ("reference", "network", "jacobian")]),
    ("theorybench/data_stats.py",  # the reference cells store its data_variance
     [spec("reference", "gaussian")],
     [spec(kind, "gaussian") for kind in ("network", "jacobian", "memorization")]),
    ("theorybench/evaluation.py",  # the analyses draw the evaluation's noise
     [spec("jacobian", "gaussian"), spec("jacobian-pair", "disks")], []),
    ("theorybench/experiments/memorization_sweep.py",  # the pair analysis loads its networks
     [spec("jacobian-pair", "disks"), spec("machines", "disks")], [spec("network", "disks")]),
    ("theorybench/report/main.py", [],  # drawing a report changes no result
     [spec(kind, "gaussian") for kind in ("reference", "network", "jacobian", "memorization")]),
]


@pytest.mark.parametrize("edited, changed, unchanged", CASES, ids=[c[0] for c in CASES])
def test_editing_a_module_changes_exactly_the_keys_of_its_cells(edited, changed, unchanged,
                                                                  monkeypatch):
    before = [cell_key(s) for s in changed + unchanged]
    read = Path.read_bytes

    def edited_read(path: Path) -> bytes:
        data = read(path)
        return data + b"\n# edited\n" if path.as_posix().endswith(edited) else data

    monkeypatch.setattr(Path, "read_bytes", edited_read)
    after = [cell_key(s) for s in changed + unchanged]
    assert [a != b for a, b in zip(after, before, strict=True)] == \
        [True] * len(changed) + [False] * len(unchanged)


def test_an_edit_during_a_run_fails_the_cells_it_touches_and_stores_none_of_them(
        tmp_path, monkeypatch):
    """The executors hand each cell the key computed at the run's start. Editing
    training.py while the universal network trains fails that cell (its checkpoint
    removed) and the per-σ networks that start from it, each with a message; nothing is
    stored under a key of the edited code. A record stored under the start key is used."""
    import dataclasses

    from theorybench.executors import run_local
    from theorybench.experiments import cells
    from theorybench.experiments.presets import PRESETS

    specs = cells.build_cells(PRESETS["smoke"], [("gaussian", {"size": 16})], 0)
    network = cells.KINDS["network"]
    read = Path.read_bytes

    def edited_read(path: Path) -> bytes:
        data = read(path)
        return data + b"\n# edited\n" if path.as_posix().endswith("training.py") else data

    def compute_then_edit(spec, *args):
        result = network.compute(spec, *args)
        if spec["train"]["mode"] == "universal":  # the edit lands while the run goes on
            monkeypatch.setattr(Path, "read_bytes", edited_read)
        return result

    monkeypatch.setitem(cells.KINDS, "network",
                        dataclasses.replace(network, compute=compute_then_edit))
    records = run_local(specs, str(tmp_path), quiet=True, jobs=1)
    moved = "its code hashes to another key than the run computed at its start"
    assert "failed" not in records[0]  # the reference cell does not hash training.py
    assert all(moved in r["failed"] for r in records[1:]) and len(records) == 2 + 4
    assert not list((tmp_path / "artifacts").glob("*.pt"))
    assert len(list(tmp_path.rglob("*.json"))) == 1

    monkeypatch.undo()
    again = run_local(specs, str(tmp_path), quiet=True, jobs=1)
    assert not any("failed" in r for r in again) and again[0]["cached"]
    universal = specs[1]
    monkeypatch.setattr(Path, "read_bytes", edited_read)  # stored under the start key: used
    assert cells.run_cell(universal, str(tmp_path), key=again[1]["key"])["cached"]
