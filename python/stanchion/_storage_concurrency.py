"""``Concurrency(storage=...)``: the shared storages' concurrency limits."""

from __future__ import annotations

from typing import Any

__all__ = ["make_concurrency"]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def make_concurrency(storage: object, **settings: Any) -> Any:
    """The storage's own concurrency limit for ``storage``: a
    ``RedisConcurrency`` for a ``RedisStorage``, a ``redis://`` (or
    ``rediss://``, ``unix://``) URL or a redis-py client."""
    if isinstance(storage, str):
        if storage.startswith("shm://"):
            raise ValueError(
                "Concurrency does not support shared memory (shm://) yet: use "
                "None (one process) or Redis"
            )
        if not storage.startswith(_REDIS_SCHEMES):
            raise ValueError(
                f"unsupported storage URL {storage!r} for Concurrency: use a "
                "redis://, rediss:// or unix:// URL"
            )
    elif type(storage).__module__.split(".")[0] not in ("redis", "stanchion"):
        raise TypeError(
            f"unsupported storage {storage!r} for Concurrency: use None "
            "(in-process), a RedisStorage, a Redis URL or a redis-py client"
        )
    from .redis import RedisStorage
    from .redis.concurrency import RedisConcurrency

    if not isinstance(storage, RedisStorage):
        if type(storage).__module__.split(".")[0] == "stanchion":
            raise TypeError(
                f"unsupported storage {storage!r} for Concurrency: use None "
                "(in-process), a RedisStorage, a Redis URL or a redis-py client"
            )
        storage = RedisStorage(storage)
    settings.pop("max_keys", None)
    return RedisConcurrency(storage, **settings)
