"""Real face images: ``faces`` (the 100 LFW faces scikit-image ships) and ``faces-folder``.

Both are finite data sets with a fixed seeded train/test split (``split_seed`` 0, 20%
held out): ``split="train"`` and ``split="test"`` are disjoint, ``"all"`` is both. The
stream of a seed is a seeded permutation of the chosen split (sampling without
replacement, so ``n`` may not exceed the split's size).

The optimum for real faces is unknown: the empirical (memorizing) denoiser of the
training split, evaluated on the test split, is an upper bound on the MMSE; no lower
bound is known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tbcore.validation import check_choice, check_int

from .base import FiniteDistribution
from .references.empirical import EmpiricalDenoiser

SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.2
FLOAT_MARGIN = 0.01  # floating-point files may overshoot [0, 1] by this much (clipped)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".gif", ".webp")


def split_indices(total: int, split: str) -> torch.Tensor:
    """Indices of ``split`` in a data set of ``total`` images (fixed seeded permutation)."""
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(0))
    n_test = max(1, round(TEST_FRACTION * total))
    return {"train": perm[n_test:], "test": perm[:n_test], "all": perm}[split].sort().values


class _SplitImages(FiniteDistribution):
    """A finite image set with a train/test split; subclasses provide ``_all_images``."""

    value_range = (0.0, 1.0)
    mmse_note = "real images: no lower bound on the MMSE is known"

    def _set_images(self, all_images: torch.Tensor, split: str) -> None:
        self._all_images = all_images
        self.images = all_images[split_indices(len(all_images), split)]
        self.num_images = len(self.images)
        self.shape = tuple(self.images.shape[1:])

    def train_images(self) -> torch.Tensor:
        """The training split (N_train, 1, h, w), whatever split this instance samples."""
        return self._all_images[split_indices(len(self._all_images), "train")]

    def reference_denoisers(self):
        if self.params["split"] != "test":
            return {}  # memorizing the training split is no bound on held-in images

        return {"empirical-train": EmpiricalDenoiser(self.train_images(), kind="upper")}


class Faces(_SplitImages):
    """The 100 face images of ``skimage.data.lfw_subset()`` (25×25 grayscale in [0, 1]).

    Parameters
    ----------
    split : {"train", "test", "all"}   80 training faces, 20 test faces, or all 100.
    """

    name = "faces"

    def __init__(self, split: str = "train"):
        from skimage.data import lfw_subset

        split = check_choice("split", split, SPLITS)
        super().__init__(split=split)
        faces = torch.from_numpy(lfw_subset()[:100].astype(np.float32))[:, None]
        self._set_images(faces, split)


def load_folder(path: str | Path, size: int) -> torch.Tensor:
    """Every image of a folder as (N, 1, size, size) float32 in [0, 1]: grayscale (an
    alpha channel composited on white), centre-cropped to a square, resized with
    antialiasing. Integer files are scaled by their type's range (8 or 16 bits);
    floating-point files must hold values in [0, 1] (within ``FLOAT_MARGIN``; a file in
    [0, 255] is refused, not clipped to white); values outside [0, 1] after resizing are
    clipped. Files are read in sorted order."""
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.io import imread
    from skimage.transform import resize
    from skimage.util import img_as_float64

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(
            f"faces-folder path must be an existing folder of images, got {str(path)!r}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"faces-folder path {str(path)!r} holds no images "
                         f"(valid suffixes: {', '.join(IMAGE_SUFFIXES)})")
    images = []
    for file in files:  # I/O bound: one decode per file, done once per instance
        # integers scaled by their type's range (uint8 by 255, uint16 by 65535), before the
        # colour conversions, which expect [0, 1]; floating-point files must already be there
        raw = imread(file)
        if np.issubdtype(raw.dtype, np.floating):
            lo, hi = float(np.min(raw)), float(np.max(raw))
            if not (-FLOAT_MARGIN <= lo and hi <= 1 + FLOAT_MARGIN):
                raise ValueError(f"faces-folder file {file.name!r} holds floating-point values "
                                 f"in [{lo:.4g}, {hi:.4g}]; floating-point images must lie in "
                                 f"[0, 1] (integer files are scaled by their type's range)")
        img = img_as_float64(raw)
        if img.ndim == 3:
            img = rgb2gray(rgba2rgb(img) if img.shape[-1] == 4 else img[..., :3])
        h, w = img.shape
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = img[top:top + side, left:left + side]
        images.append(resize(crop, (size, size), anti_aliasing=True))
    return torch.from_numpy(np.clip(np.stack(images), 0.0, 1.0).astype(np.float32))[:, None]


class FacesFolder(_SplitImages):
    """Every image of a local folder (e.g. CelebA), grayscale, centre-cropped, resized.

    Parameters
    ----------
    path : str               folder holding image files (png, jpg, ...).
    size : int >= 8          output side in pixels (default 32).
    split : {"train", "test", "all"}   fixed seeded 80/20 split (default "train").
    """

    name = "faces-folder"

    def __init__(self, path: str | None = None, size: int = 32, split: str = "train"):
        if path is None:
            raise ValueError("faces-folder needs path=<folder of images>")
        size = check_int("size", size, low=8)
        split = check_choice("split", split, SPLITS)
        images = load_folder(path, size)
        if len(images) < 2:
            raise ValueError(f"faces-folder needs at least 2 images for a train/test split, "
                             f"{str(path)!r} holds {len(images)}")
        super().__init__(path=str(path), size=size, split=split)
        self._set_images(images, split)
