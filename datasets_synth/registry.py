"""Name → factory registry: built-in families, in-process registrations and plugins.

A plugin is a package declaring an entry point in the group ``theorybench.distributions``
whose value is a callable taking keyword parameters and returning a Distribution::

    [options.entry_points]
    theorybench.distributions =
        stripes = my_package:Stripes

``register(name, factory)`` does the same from running code.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from .base import Distribution

ENTRY_POINT_GROUP = "theorybench.distributions"

_BUILTIN: dict[str, str] = {
    "gaussian": "datasets_synth.gaussian:GaussianField",
    "calpha": "datasets_synth.calpha:CAlpha",
    "disks": "datasets_synth.manifolds:Disks",
    "ellipses": "datasets_synth.ellipses:Ellipses",
    "faces": "datasets_synth.faces:Faces",
    "faces-folder": "datasets_synth.faces:FacesFolder",
    "shuffled": "datasets_synth.shuffle:Shuffled",
}
_REGISTERED: dict[str, Callable[..., Distribution]] = {}


def register(name: str, factory: Callable[..., Distribution]) -> None:
    """Register ``factory(**params) -> Distribution`` under ``name`` for this process."""
    if not isinstance(name, str) or not name or not callable(factory):
        raise ValueError("register(name, factory) needs a non-empty name and a callable factory")
    _REGISTERED[name] = factory


def registered_in_process(name: str) -> bool:
    """True if ``name`` comes from :func:`register` (unknown to other processes)."""
    return name in _REGISTERED


def _plugins() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every available distribution: built-ins first, then registered and plugin names."""
    extra = sorted((set(_REGISTERED) | set(_plugins())) - set(_BUILTIN))
    return list(_BUILTIN) + extra


def builtin_names() -> list[str]:
    """The families shipped with theorybench."""
    return list(_BUILTIN)


def _load(target: str) -> Callable[..., Distribution]:
    module, attr = target.split(":")
    return getattr(__import__(module, fromlist=[attr]), attr)


def get_factory(name: str) -> Callable[..., Distribution]:
    """The factory registered under ``name`` (ValueError listing valid names otherwise)."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        return _load(_BUILTIN[name])
    plugins = _plugins()
    if name in plugins:
        try:
            return plugins[name].load()
        except Exception as exc:  # a broken plugin must not take the registry down
            raise ValueError(
                f"distribution plugin {name!r} ({plugins[name].value}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    raise ValueError(f"unknown distribution {name!r}; valid names: {', '.join(names())}")


def get(name: str, **params) -> Distribution:
    """Build the distribution ``name`` with keyword ``params`` (validated by the family)."""
    factory = get_factory(name)
    try:
        dist = factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for distribution {name!r}: {exc}") from exc
    if not isinstance(dist, Distribution):
        raise ValueError(
            f"distribution factory {name!r} returned {type(dist).__name__}, not a Distribution"
        )
    return dist
