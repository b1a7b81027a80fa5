"""The old import path of the response cache, kept working.

Everything moved to :mod:`stanchion.respcache` (``ResponseCache`` and the
rules, entries, stores and serving flow it is made of). This module gives
the public names, and any private one of those modules by attribute
lookup (code written against the old path reached for some).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .respcache import *  # noqa: F403
from .respcache import __all__ as __all__
from .respcache import entries, flights, keys, rules, serving, stores

_PARTS: tuple[ModuleType, ...] = (entries, flights, keys, rules, serving, stores)


def __getattr__(name: str) -> Any:
    for part in _PARTS:
        if name in part.__dict__:
            return part.__dict__[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
