"""Image distributions for theorybench: built-in families and the plugin registry.

    >>> import datasets_synth
    >>> datasets_synth.names()[:3]
    ['gaussian', 'calpha', 'disks']
    >>> x = datasets_synth.get("disks", size=32).sample(8, seed=0)   # (8, 1, 32, 32) float32
"""

from .base import Distribution, FiniteDistribution
from .conformance import check_distribution
from .registry import ENTRY_POINT_GROUP, builtin_names, get, names, register

__all__ = [
    "Distribution",
    "FiniteDistribution",
    "ENTRY_POINT_GROUP",
    "builtin_names",
    "check_distribution",
    "get",
    "names",
    "register",
]
