"""Figures are cached by content: same data, same key, no redraw; any change redraws."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from theorybench.figures import Panel, cached_figure, figure_key, image_mosaic, plt, stored_key

CALLS = []


def _draw(frame, title):
    CALLS.append(title)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot(frame.x, frame.y)
    ax.set_title(title)
    return fig


draw_line = cached_figure(_draw)


@cached_figure
def draw_nothing(flag):
    return None


def test_same_data_is_not_redrawn_and_changed_data_is(tmp_path):
    CALLS.clear()
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1.0, 4.0, 9.0]})
    path = tmp_path / "line.png"
    assert draw_line(frame, "a", path)
    first = path.read_bytes()
    assert stored_key(path) == figure_key(_draw, (frame, "a"))
    assert draw_line(frame.copy(), "a", path) and CALLS == ["a"]  # equal content: cached
    assert path.read_bytes() == first
    changed = frame.assign(y=[1.0, 4.0, 9.5])
    assert draw_line(changed, "a", path) and CALLS == ["a", "a"]
    assert draw_line(changed, "b", path) and CALLS == ["a", "a", "b"]
    assert stored_key(path) == figure_key(_draw, (changed, "b"))


def test_nothing_to_draw_writes_nothing(tmp_path):
    assert draw_nothing(True, tmp_path / "none.png") is False
    assert not (tmp_path / "none.png").exists()


def test_key_is_canonical_across_processes():
    """Sets and dicts of strings hash the same under any hash seed (no repr of addresses)."""
    code = ("from theorybench.figures import _feed; import hashlib, numpy as np; "
            "h = hashlib.sha256(); _feed(h, ({'b', 'a', 'c'}, {'k': [1.5, 2.0], 'n': None}, "
            "np.arange(3.0), [[1, 2], [3, 4]], [{'x': 1}])); print(h.hexdigest())")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in "12"}
    assert len(keys) == 1


def test_key_refuses_what_it_cannot_hash_faithfully():
    with pytest.raises(TypeError, match="cannot hash a function"):
        figure_key(_draw, (lambda: 1,))


def test_mosaic_refuses_mixed_shapes():
    with pytest.raises(ValueError, match="panels of one"):
        image_mosaic([[Panel(np.zeros((4, 4))), Panel(np.zeros((4, 5)))]])


def test_store_copies_instead_of_drawing(tmp_path):
    """A report rebuilt into a new folder copies the figures its cache already holds."""
    from theorybench.figures import figure_store

    CALLS.clear()
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})
    with figure_store(tmp_path / "store"):
        draw_line(frame, "s", tmp_path / "one" / "line.png")
        draw_line(frame, "s", tmp_path / "two" / "line.png")
    assert CALLS == ["s"]
    assert (tmp_path / "one" / "line.png").read_bytes() == \
        (tmp_path / "two" / "line.png").read_bytes()
    assert [p.name for p in (tmp_path / "store").iterdir()] == \
        [figure_key(_draw, (frame, "s")) + ".png"]
