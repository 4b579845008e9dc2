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
    ("theorybench/kl.py",  # the reference cells store kl.data_variance
     [spec("reference", "gaussian")], [spec("network", "gaussian")]),
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


def test_a_cell_whose_code_changed_after_the_run_started_fails_and_stores_nothing(
        tmp_path, monkeypatch):
    """The executors hand each cell the key computed at the run's start: a cell whose
    hashed source changed since (before or while it computes) fails; results of other
    code are never stored under that key, nor under one its readers do not know."""
    from theorybench.experiments import cells
    from theorybench.experiments.presets import PRESETS

    spec = cells.build_cells(PRESETS["smoke"], [("gaussian", {"size": 16})], 0)[0]
    key = cell_key(spec)
    before = cells.run_cell(spec, str(tmp_path), key="0" * 64)  # edited before it starts
    assert "changed on disk after the run started" in before["failed"]
    moved = iter([key, "1" * 64])  # edited while it computes
    monkeypatch.setattr(cells, "cell_key", lambda s: next(moved))
    during = cells.run_cell(spec, str(tmp_path), key=key)
    assert "changed on disk after the run started" in during["failed"]
    assert not list(tmp_path.rglob("*.json"))
    monkeypatch.undo()
    kept = cells.run_cell(spec, str(tmp_path), key=key)  # unchanged: computed and stored
    assert "failed" not in kept and kept["key"] == key and list(tmp_path.rglob("*.json"))
