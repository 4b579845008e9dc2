"""Figures of the report: drawn once, saved atomically, skipped when nothing changed.

A figure is a result like a table: :func:`cached_figure` hashes everything that draws it
(the data passed to the drawing function, the source of the drawing function's module and
of this one, the matplotlib version) into a key written in the PNG's text chunk
``theorybench-key``. When the file at the target path already carries that key the figure
is not drawn again, so rebuilding an unchanged report draws nothing; any change of data or
drawing code changes the key and redraws. Inside :func:`figure_store` every drawn figure is
also kept under its key in a folder (the run's cache): a report rebuilt into another folder
from the same results copies its figures instead of drawing them. The key is canonical
(dicts in insertion order, sets sorted, arrays by dtype, shape and bytes), so it does not
depend on the process's hash seed.

Drawing happens under the report's style (:data:`STYLE`: white axes with a light grid,
small fonts, the colour cycle :data:`PALETTE`) as an ``rc_context``, without touching the
global matplotlib state of the caller.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import math
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402
from PIL import Image  # noqa: E402

from .cache import atomic_write_bytes  # noqa: E402

KEY_FIELD = "theorybench-key"
DPI = 110
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
           "#8c8c8c", "#ccb974", "#64b5cd")  # seaborn's "deep" colours
STYLE = {"axes.facecolor": "white", "axes.edgecolor": "0.8", "axes.grid": True,
         "grid.color": "0.8", "grid.linewidth": 0.6, "axes.linewidth": 0.8,
         "axes.axisbelow": True, "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
         "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8.5, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "legend.fontsize": 7, "xtick.major.size": 0,
         "ytick.major.size": 0, "xtick.minor.size": 0, "ytick.minor.size": 0,
         "lines.linewidth": 1.2, "image.cmap": "gray"}
_OWN_SOURCE = Path(__file__).read_bytes()
_STORE: list[Path] = []  # the folder of the innermost figure_store, if any


def _numeric(values) -> bool:
    """Whether ``values`` (a list or tuple) is a rectangular nest of finite-size numbers (hashed
    as one float array: fast, and equal numbers give equal keys)."""
    if not values or not isinstance(values[0], (float, int, list, tuple)):
        return False
    try:
        return np.asarray(values).dtype.kind in "iuf"
    except ValueError:  # ragged
        return False


def _feed(h, value) -> None:
    """Update the hash ``h`` with a canonical encoding of ``value`` (type-tagged)."""
    if value is None or isinstance(value, (bool, int, str, np.bool_, np.integer)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, (float, np.floating)):
        h.update(f"f:{float(value).hex() if math.isfinite(value) else value};".encode())
    elif isinstance(value, Path):
        h.update(f"path:{value};".encode())
    elif isinstance(value, np.ndarray):
        if value.dtype == object:
            h.update(f"objarray{value.shape}[".encode())
            for item in value.ravel():
                _feed(h, item)
            h.update(b"]")
        else:
            h.update(f"array:{value.dtype.str}{value.shape}:".encode())
            h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, pd.DataFrame):
        h.update(b"frame[")
        _feed(h, list(value.index))
        for column in value.columns:
            _feed(h, column)
            _feed(h, value[column].to_numpy())
        h.update(b"]")
    elif isinstance(value, pd.Series):
        h.update(b"series[")
        _feed(h, list(value.index))
        _feed(h, value.to_numpy())
        h.update(b"]")
    elif isinstance(value, dict):
        h.update(b"dict{")
        for k, v in value.items():
            _feed(h, k)
            _feed(h, v)
        h.update(b"}")
    elif isinstance(value, (list, tuple)) and _numeric(value):
        h.update(f"{type(value).__name__}:".encode())
        _feed(h, np.asarray(value, dtype=float))
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}[".encode())
        for item in value:
            _feed(h, item)
        h.update(b"]")
    elif isinstance(value, (set, frozenset)):
        h.update(b"set[")
        for item in sorted(value, key=repr):
            _feed(h, item)
        h.update(b"]")
    elif hasattr(value, "__array__"):  # torch tensors and other array-likes
        _feed(h, np.asarray(value))
    elif hasattr(value, "__dict__") and not callable(value):
        h.update(f"obj:{type(value).__qualname__}".encode())
        _feed(h, vars(value))
    else:
        raise TypeError(f"cannot hash a {type(value).__name__} into a figure key; valid: "
                        "numbers, strings, arrays, DataFrames, containers, plain data objects")


@functools.cache
def _source(path: str) -> bytes:
    """The bytes of a drawing module's source file (read once per process)."""
    return Path(path).read_bytes()


def figure_key(draw, args: tuple) -> str:
    """Hex key of drawing ``draw(*args)`` (see the module docstring)."""
    h = hashlib.sha256()
    h.update(_OWN_SOURCE)
    h.update(_source(inspect.getsourcefile(draw)))
    h.update(f"{draw.__qualname__};matplotlib {matplotlib.__version__};".encode())
    _feed(h, args)
    return h.hexdigest()


def stored_key(path: Path) -> str | None:
    """The key in the PNG at ``path``, or None (no file, not a PNG, no key)."""
    try:
        with Image.open(path) as image:
            return image.info.get(KEY_FIELD)
    except (OSError, ValueError):
        return None


MARGINS = {"left": 0.9, "right": 0.15, "bottom": 0.5, "top": 0.5, "wspace": 0.95,
           "hspace": 0.75}  # inches around and between subplots


def fixed_layout(fig) -> None:
    """Place the subplots of ``fig`` with the fixed :data:`MARGINS` (in inches): room for tick
    labels, axis labels, titles and a suptitle, without the text-measuring passes of
    tight or constrained layout (most of a figure's drawing time). Figures without a subplot
    grid (mosaics) are left alone."""
    specs = [ax.get_subplotspec() for ax in fig.axes if ax.get_subplotspec() is not None]
    if not specs:
        return
    rows, cols = specs[0].get_gridspec().get_geometry()
    width, height = fig.get_size_inches()
    m = MARGINS
    ax_w = (width - m["left"] - m["right"] - (cols - 1) * m["wspace"]) / cols
    ax_h = (height - m["bottom"] - m["top"] - (rows - 1) * m["hspace"]) / rows
    fig.subplots_adjust(left=m["left"] / width, right=1 - m["right"] / width,
                        bottom=m["bottom"] / height, top=1 - m["top"] / height,
                        wspace=m["wspace"] / ax_w, hspace=m["hspace"] / ax_h)


def drop_invisible_minor_ticks(fig) -> None:
    """Remove the minor ticks of log axes spanning at least a decade: :data:`STYLE` draws
    no tick marks and no minor grid, and matplotlib labels minor ticks only on spans under
    a decade, so they are invisible there, yet they cost most of a plot's drawing time
    (a tick object each, laid out and measured)."""
    for ax in fig.axes:
        for axis, (low, high) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            if axis.get_scale() == "log" and min(low, high) > 0 and \
                    abs(math.log10(high / low)) >= 1:
                axis.set_minor_locator(NullLocator())


def save_figure(fig, path: Path, key: str | None = None) -> bytes:
    """Lay out ``fig`` (:func:`fixed_layout`, :func:`drop_invisible_minor_ticks`) and write
    it as a PNG at ``path`` atomically (with ``key`` in its text chunk); close it. Returns
    the PNG's bytes."""
    fixed_layout(fig)
    drop_invisible_minor_ticks(fig)
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI,
                metadata={KEY_FIELD: key} if key is not None else None)
    plt.close(fig)
    png = buffer.getvalue()
    atomic_write_bytes(Path(path), png)
    return png


@dataclass(frozen=True)
class Panel:
    """One image of a mosaic: ``image`` (h, w) mapped through ``cmap`` from [vmin, vmax], or
    (h, w, 3) RGB in [0, 1] (then cmap and the window are ignored); ``title`` above it."""

    image: np.ndarray
    title: str = ""
    cmap: str = "gray"
    vmin: float = 0.0
    vmax: float = 1.0

    def rgb(self) -> np.ndarray:
        image = np.asarray(self.image, dtype=float)
        if image.ndim == 3:
            return image.clip(0.0, 1.0)
        norm = Normalize(self.vmin, self.vmax, clip=True)
        return colormaps[self.cmap](norm(image))[..., :3]


def image_mosaic(rows: list[list[Panel]], row_labels: list[str] | None = None,
                 title: str = "", inches: float = 1.0, title_lines: int = 1):
    """A figure of images in a grid, drawn as ONE RGB image on one axes (a grid of subplots
    costs a layout pass and an axes per panel; this costs one image and the texts).

    rows : list of rows of :class:`Panel`, all of the same (h, w); rows may be shorter.
    row_labels : one label per row, written left of it (None: no label column).
    title : figure title; inches : side of one panel; title_lines : lines per panel title.
    """
    shapes = {p.image.shape[:2] for row in rows for p in row}
    if len(shapes) != 1:
        raise ValueError(f"image_mosaic needs panels of one (h, w); got {sorted(shapes)}")
    (h, w), = shapes
    gap = max(1, h // 16)
    band = math.ceil(0.13 * h * title_lines)  # title room above each row, in pixels
    left = round(1.0 * w) if row_labels else 0
    top = math.ceil(0.25 * h) if title else 0
    n_cols = max(len(row) for row in rows)
    width = left + n_cols * (w + gap)
    height = top + len(rows) * (h + band + gap)
    canvas = np.ones((height, width, 3))
    fig = plt.figure(figsize=(width / w * inches, height / h * inches))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    for r, row in enumerate(rows):
        y = top + r * (h + band + gap) + band
        for c, panel in enumerate(row):
            x = left + c * (w + gap)
            canvas[y:y + h, x:x + w] = panel.rgb()
            ax.text(x + w / 2, y - 0.5, panel.title, ha="center", va="bottom", fontsize=6)
        if row_labels:
            ax.text(left - gap, y + h / 2, row_labels[r], ha="right", va="center", fontsize=6)
    ax.imshow(canvas, extent=(0, width, height, 0), interpolation="nearest", aspect="auto")
    if title:
        ax.text(width / 2, 1, title, ha="center", va="top", fontsize=8)
    ax.set(xlim=(0, width), ylim=(height, 0))
    ax.axis("off")
    return fig


@contextlib.contextmanager
def figure_store(folder: Path):
    """Within this context, keep every figure drawn by a :func:`cached_figure` function as
    ``folder/<key>.png`` and copy one found there instead of drawing it."""
    _STORE.append(Path(folder))
    try:
        yield
    finally:
        _STORE.pop()


def cached_figure(draw):
    """Decorate ``draw(*data) -> Figure | None`` into ``f(*data, path) -> bool``.

    The decorated function draws (under :data:`STYLE`) and saves to ``path`` unless the
    PNG there already carries this drawing's key; it returns whether a figure exists at
    ``path`` (False when ``draw`` returned None: nothing to draw).
    """

    @functools.wraps(draw)
    def wrapper(*args) -> bool:
        *data, path = args
        key = figure_key(draw, tuple(data))
        if stored_key(path) == key:
            return True
        kept = _STORE[-1] / f"{key}.png" if _STORE else None
        if kept is not None and stored_key(kept) == key:
            atomic_write_bytes(Path(path), kept.read_bytes())
            return True
        with matplotlib.rc_context(STYLE):
            fig = draw(*data)
            if fig is None:
                return False
            png = save_figure(fig, path, key)
        if kept is not None:
            atomic_write_bytes(kept, png)
        return True

    return wrapper


__all__ = ["PALETTE", "Panel", "cached_figure", "figure_key", "figure_store", "image_mosaic",
           "plt", "save_figure", "stored_key"]
