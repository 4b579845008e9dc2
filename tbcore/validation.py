"""Argument checks shared by every package: each returns the value or raises a one-line
ValueError that names what is valid."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int, or raise ValueError naming the valid range."""
    valid = _range_text(low, high)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer {valid}, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {valid}, got {value}")
    return value


def check_float(
    name: str, value: Any, low: float | None = None, high: float | None = None,
    low_open: bool = False,
) -> float:
    """Return ``value`` as a finite float in the range, or raise ValueError naming it."""
    lo = "(" if low_open else "["
    valid = f"in {lo}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number {valid}, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        raise ValueError(f"{name} must be a finite number {valid}, got {value}")
    return value


def check_choice(name: str, value: Any, choices) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is True or False (not 1, 0 or another stand-in: a flag that
    is part of a cell key must have one spelling), else raise ValueError."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_seed(seed: Any) -> int:
    """A seed is a non-negative integer (numpy's SeedSequence accepts no less)."""
    return check_int("seed", seed, low=0)


def _range_text(low, high) -> str:
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}"
    return ""


def resolve_device(device) -> torch.device:
    """``None``/"auto" → CUDA if available, else CPU; anything else as torch.device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:i]' or a torch.device, "
                         f"got {device!r}") from exc
