"""``Concurrency(storage=...)``: the shared storages' concurrency limits."""

from __future__ import annotations

from typing import Any

__all__ = ["make_concurrency"]


def make_concurrency(storage: object, **settings: Any) -> Any:
    """The storage's own concurrency limit for ``storage``."""
    raise TypeError(
        f"unsupported storage {storage!r} for Concurrency: use None (in-process)"
    )
