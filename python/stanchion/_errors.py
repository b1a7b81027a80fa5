"""Exceptions shared by the storages (kept free of optional imports)."""

from __future__ import annotations

__all__ = ["StorageUnavailable"]


class StorageUnavailable(ConnectionError):
    """A shared storage (Redis) could not answer in time.

    Raised only where the caller asked for it (``on_error="raise"``); the
    underlying error is chained as ``__cause__``.
    """
