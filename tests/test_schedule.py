"""The executors: a cell starts after the cells it reads, otherwise in list order; the
workers start with the allocator settings."""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from theorybench.executors import MALLOC_ENV, Schedule, _environment, _ready, worker_environment
from theorybench.experiments.cells import cell_dependencies
from theorybench.experiments.keys import cell_key


def cell(name, **keys):
    return {"kind": "reference", "dataset": "gaussian", "params": {}, "name": name, **keys}


def test_dependencies_are_the_key_fields():
    spec = {"kind": "jacobian", "network_key": "abc", "init_key": None, "other": "x"}
    assert cell_dependencies(spec) == {"abc"}


def test_cells_wait_for_their_inputs_and_otherwise_keep_list_order():
    uni = cell("universal")
    cells = [cell("reference"), uni, cell("per-sigma", init_key=cell_key(uni)),
             cell("memorization"),
             cell("jacobian", network_key=cell_key(cell("per-sigma", init_key=cell_key(uni))))]
    schedule = Schedule(cells, range(len(cells)))
    assert schedule.take(2) == [0, 1]
    assert schedule.take(5) == [3]  # 2 waits for 1, 4 for 2
    schedule.finish(0)
    assert schedule.take(5) == []
    schedule.finish(1)
    assert schedule.take(5) == [2]
    schedule.finish(2)
    assert schedule.take(1) == [4] and len(schedule) == 0


def test_inputs_outside_the_run_are_met_and_cycles_are_refused():
    a = cell("a")
    cells = [cell("b", init_key=cell_key(a))]  # a is stored (not in todo): b may start
    assert Schedule(cells, [0]).take(1) == [0]
    looped = [cell("p", init_key="K1"), cell("q", init_key="K0")]
    schedule = Schedule(looped, [0, 1])
    schedule._needs = {0: {1}, 1: {0}}  # a cycle, as a corrupted spec list could make
    with pytest.raises(RuntimeError, match="dependency cycle"):
        _ready(schedule, 1)


def test_every_cell_of_a_study_has_a_registered_kind():
    """The smoke study's cells all dispatch through cells.KINDS (compute, describe, gpu);
    the kinds that run networks ask Ray for a GPU, the references do not; an unknown kind
    is refused with one line naming the valid ones."""
    from theorybench.experiments.cells import KINDS, describe, kind_of
    from theorybench.experiments.presets import PRESETS
    from theorybench.experiments.study import study_cells

    preset = PRESETS["smoke"]
    cells = study_cells(preset, list(preset.datasets), None, seed=0)
    assert {c["kind"] for c in cells} == set(KINDS)
    for c in cells:
        assert kind_of(c).name == c["kind"] and describe(c)
    assert {name for name, kind in KINDS.items() if not kind.gpu} == {"reference"}
    with pytest.raises(ValueError, match=r"unknown cell kind 'nope'; valid: \['jacobian'"):
        describe({"kind": "nope", "dataset": "gaussian", "params": {}})


def test_the_longest_networks_start_first_and_the_report_keeps_the_study_order(tmp_path,
                                                                              monkeypatch):
    """A main-study universal network trained longer than the preset's
    ``universal_steps`` (its family's ``universal_steps_by_family``) is handed to the
    executor first (its per-σ networks wait for it); the records reach the report in the
    study's order all the same."""
    import theorybench.cli as cli
    import theorybench.report as report
    from theorybench.experiments.presets import PRESETS
    from theorybench.experiments.study import start_order, study_cells

    preset = PRESETS["smoke"]
    cells = study_cells(preset, list(preset.datasets), None, seed=0)
    assert start_order(cells, preset) == list(range(len(cells)))  # none trains longer
    started, reported = [], []
    run_cells, build_report = cli.run_cells, report.build_report
    monkeypatch.setattr(cli, "run_cells", lambda cells, *a, **k: started.extend(cells)
                        or run_cells(cells, *a, **k))
    monkeypatch.setattr(report, "build_report", lambda p, e, records, *a, **k: reported.extend(
        records) or build_report(p, e, records, *a, **k))
    assert cli.main(["--preset", "smoke", "--datasets", "gaussian,disks", "--kinds",
                     "reference,network", "--override", 'universal_steps_by_family={"disks": 20}',
                     "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"),
                     "--quiet"]) == 0
    first = started[0]
    assert (first["dataset"], first["train"]["mode"], first["train"]["steps"]) == \
        ("disks", "universal", 20)
    main = [r["spec"] for r in reported if not r["spec"].get("study")]
    assert [(c["dataset"], c["kind"]) for c in main[:2]] == [("gaussian", "reference"),
                                                             ("gaussian", "network")]
    assert len(reported) == len(started)


def test_workers_start_with_the_allocator_settings_unless_the_environment_has_its_own(
        monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    variables = worker_environment()
    assert variables == {"MALLOC_MMAP_THRESHOLD_": MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"],
                         "MALLOC_TRIM_THRESHOLD_": "12345"}
    with _environment(variables), ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as pool:
        seen = [pool.submit(os.getenv, name).result() for name in sorted(variables)]
    assert seen == [variables[name] for name in sorted(variables)]
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ  # restored after the block
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"
