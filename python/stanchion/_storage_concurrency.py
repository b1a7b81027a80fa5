"""``Concurrency(storage=...)``: the shared storages' concurrency limits."""

from __future__ import annotations

from typing import Any

__all__ = ["make_concurrency"]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _unsupported(storage: object) -> TypeError:
    return TypeError(
        f"unsupported storage {storage!r} for Concurrency: use None "
        "(in-process), a SharedMemoryStorage or shm:// URL, or a "
        "RedisStorage, Redis URL or redis-py client"
    )


def make_concurrency(
    storage: object,
    *,
    max_keys: int | None,
    on_error: str | None,
    name: str = "default",
    **settings: Any,
) -> Any:
    """The storage's own concurrency limit for ``storage``: a
    ``SharedMemoryConcurrency`` for a ``SharedMemoryStorage`` or a
    ``shm://name`` URL, a ``RedisConcurrency`` for a ``RedisStorage``, a
    ``redis://`` (or ``rediss://``, ``unix://``) URL or a redis-py
    client."""
    from ._shm import SharedMemoryStorage

    if isinstance(storage, str):
        if storage.startswith("shm://"):
            from ._settings import _shm_storage

            shm = _shm_storage(storage, "storage")
            if max_keys is None and "?" in storage:  # shm://name?max_keys=N
                max_keys = shm.max_keys
            storage = shm
        elif not storage.startswith(_REDIS_SCHEMES):
            raise ValueError(
                f"unsupported storage URL {storage!r} for Concurrency: use "
                "shm://, redis://, rediss:// or unix://"
            )
    elif type(storage).__module__.split(".")[0] not in ("redis", "stanchion"):
        raise _unsupported(storage)
    if isinstance(storage, SharedMemoryStorage):
        if on_error is not None:
            raise ValueError(
                "on_error applies to Redis only: shared memory never fails"
            )
        from ._shm_concurrency import DEFAULT_MAX_KEYS, SharedMemoryConcurrency

        shared = SharedMemoryConcurrency(
            storage,
            max_keys=DEFAULT_MAX_KEYS if max_keys is None else max_keys,
            **settings,
        )
        shared.name = name
        return shared
    if max_keys is not None:
        raise ValueError("max_keys does not apply to Redis (keys expire there)")
    from .redis import RedisStorage
    from .redis.concurrency import RedisConcurrency

    if not isinstance(storage, RedisStorage):
        if type(storage).__module__.split(".")[0] == "stanchion":
            raise _unsupported(storage)
        storage = RedisStorage(storage)
    redis = RedisConcurrency(
        storage, on_error="allow" if on_error is None else on_error, **settings
    )
    redis.name = name
    return redis
