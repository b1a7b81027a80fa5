"""A pytest plugin for cachetools' own test suite: their ``LRUCache`` and
``TTLCache`` become stanchion.Cache, changed at the constructor only.

Loaded with ``-p cachetools_adapter`` before their test modules import
``from cachetools import LRUCache``. Each class is a thin subclass of
``stanchion.Cache`` whose ``__init__`` maps cachetools' arguments to
stanchion's:

- ``maxsize`` -> ``maxsize`` (``math.inf`` -> None, unbounded); with
  ``getsizeof`` it bounds the total size instead: ``maxsize=None,
  maxweight=maxsize, weigh=getsizeof``;
- ``ttl`` -> ``ttl`` (``math.inf`` -> None, no expiry);
- ``timer`` -> ``clock``, kept as the ``timer`` attribute too, the name
  cachetools code reads it by (stanchion's is ``clock``).

Every other method their tests call is stanchion.Cache's own.
"""

from __future__ import annotations

import math
import time
from typing import Any

import cachetools

import stanchion


def _bound(maxsize: Any) -> Any:
    return None if maxsize == math.inf else maxsize


def _sizes(maxsize: Any, getsizeof: Any) -> dict[str, Any]:
    if getsizeof is None:
        return {"maxsize": _bound(maxsize)}
    return {"maxsize": None, "maxweight": _bound(maxsize), "weigh": getsizeof}


class LRUCache(stanchion.Cache):  # type: ignore[type-arg]
    def __init__(self, maxsize: Any, getsizeof: Any = None) -> None:
        super().__init__(**_sizes(maxsize, getsizeof))


class TTLCache(stanchion.Cache):  # type: ignore[type-arg]
    def __init__(
        self,
        maxsize: Any,
        ttl: Any,
        timer: Any = time.monotonic,
        getsizeof: Any = None,
    ) -> None:
        super().__init__(
            **_sizes(maxsize, getsizeof),
            ttl=None if ttl == math.inf else ttl,
            clock=timer,
        )
        self.timer = timer


cachetools.LRUCache = LRUCache  # type: ignore[misc,assignment]
cachetools.TTLCache = TTLCache  # type: ignore[misc,assignment]
