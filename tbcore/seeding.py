"""Seeding: the one rule by which every random stream of the project is seeded.

Randomness is addressed, never global: a use of a seed is named by ``(seed, stream,
index)`` (e.g. a distribution's block of images, a training run's noise), and its
generator is seeded by ``SeedSequence([seed, stream, index])``.
"""

from __future__ import annotations

import numpy as np
import torch


def derived_seed(seed: int, stream: int, index: int = 0, bits: int = 32) -> int:
    """The seed of one use of ``seed``: ``SeedSequence([seed, stream, index])`` as an integer
    of 32 or 64 bits (the first one or two 32-bit words). The one rule by which every
    random stream of the project is seeded (:func:`block_generator` uses it).

    SeedSequence splits a seed of 2³² or more into 32-bit words and ignores trailing zero
    words within its 4-word pool, so ``(lo + 2³²·hi, stream, 0)`` is the use
    ``(lo, hi, stream)``: the project's reserved seeds (2⁴⁰ + 17, 2⁴¹ + s, 2⁴²) alias
    streams 256, 512 and 1024 of small seeds, which no use takes
    (``tests/test_seeding.py`` checks the stream constants), and a run's seed stays below
    2³² (``run_all.py`` refuses more)."""
    words = np.random.SeedSequence([seed, stream, index]).generate_state(bits // 32, np.uint32)
    return int(words[0]) if bits == 32 else int(words[0]) << 32 | int(words[1])


def block_generator(seed: int, block: int, stream: int = 0, device=None) -> torch.Generator:
    """A torch generator for block ``block`` of ``seed`` (``stream`` separates uses),
    seeded with ``derived_seed(seed, stream, block, bits=64)``.

    On the CPU unless ``device`` names another; each device type has its own random
    stream, so the same seed gives other numbers there (with the same law).
    """
    generator = torch.Generator() if device is None else torch.Generator(device=device)
    return generator.manual_seed(derived_seed(seed, stream, block, bits=64))
