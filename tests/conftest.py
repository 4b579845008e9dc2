"""Shared fixtures: one torch thread, a small folder of images for ``faces-folder``, one
full smoke run for the end-to-end tests (kept in one test process: see
:func:`pytest_collection_modifyitems`)."""

import json

import numpy as np
import pytest

from theorybench.cli import main
from theorybench.executors import torch_threads


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """The tests that use the session's smoke run go to one pytest-xdist worker (group
    ``smoke``, with ``--dist loadgroup``), which then computes that run once, not once per
    worker (about a minute each on 2 cores)."""
    for item in items:
        if "smoke_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("smoke"))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One torch thread for every test, as the executors give every cell: the same bits
    as a run, and no OpenMP contention when the 2 cores are shared with other jobs."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Six small PNG/JPEG images of mixed sizes and modes (gray, RGB, RGBA)."""
    from skimage.io import imsave

    folder = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    shapes = [(40, 30), (30, 40, 3), (36, 36, 4), (50, 20), (33, 33, 3), (64, 48)]
    for i, shape in enumerate(shapes):
        img = (rng.random(shape) * 255).astype(np.uint8)
        if len(shape) == 3 and shape[2] == 4:
            img[..., 3] = 255
        imsave(folder / f"img{i}.{'jpg' if i == 4 else 'png'}", img, check_contrast=False)
    (folder / "notes.txt").write_text("not an image")
    return folder


def build(name, image_folder):
    """A distribution with default parameters (faces-folder gets the test folder)."""
    import datasets_synth

    if name == "faces-folder":
        return datasets_synth.get(name, path=str(image_folder), size=16)
    return datasets_synth.get(name)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One run of the whole smoke preset (seed 0), shared by the end-to-end tests: (out,
    cache, run.json of that run). Tests may run the preset again into ``out`` (the same
    tables) but must not change the cache's results."""
    base = tmp_path_factory.mktemp("smoke")
    out, cache = base / "reports", base / "cache"
    assert main(["--preset", "smoke", "--out", str(out), "--cache", str(cache), "--quiet"]) == 0
    return out, cache, json.loads((out / "run.json").read_text())


def entry_lines(path, entries: tuple[str, ...]) -> list[str]:
    """Header and the rows of ``entries`` of a report CSV (its first column is the entry)."""
    lines = path.read_text().splitlines()
    keep = tuple(f"{e}," for e in entries)
    return [lines[0], *(line for line in lines[1:] if line.startswith(keep))]

