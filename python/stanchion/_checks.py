"""Argument checks shared by the settings of several modules: each
raises TypeError or ValueError naming the setting, before any state
changes."""

from __future__ import annotations

import math

__all__ = ["check_int", "check_seconds"]


def check_seconds(name: str, value: object, *, zero_ok: bool) -> float:
    """``value`` as float seconds: finite, > 0 (or >= 0 with zero_ok)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds, not {type(value).__name__}"
        )
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}"
        )
    return float(value)


def check_int(name: str, value: object, low: int) -> int:
    """``value`` as an int (not a bool) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value
