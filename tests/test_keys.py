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
