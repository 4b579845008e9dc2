"""The common core that ``datasets_synth`` and ``theorybench`` both import (and that imports
neither): argument checks and the device argument (``validation``), the one seeding rule
(``seeding``) and the one denoiser interface with what reference denoisers declare on top
of it (``denoiser``).

Layers, each importing only those above it::

    tbcore          validation, seeding, the denoiser interface
    datasets_synth  distributions and their own reference denoisers (``references``)
    theorybench     networks, training, measurements, experiments, reports
"""

from .denoiser import KINDS, ReferenceDenoiser, sigma_column
from .seeding import block_generator, derived_seed
from .validation import check_choice, check_float, check_int, check_seed, resolve_device

__all__ = [
    "KINDS",
    "ReferenceDenoiser",
    "block_generator",
    "check_choice",
    "check_float",
    "check_int",
    "check_seed",
    "derived_seed",
    "resolve_device",
    "sigma_column",
]
