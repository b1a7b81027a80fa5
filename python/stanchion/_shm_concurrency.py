"""Concurrency limits shared by the processes of one host, in shared memory.

``stanchion.Concurrency(limit, ..., storage=SharedMemoryStorage("myapp"))``
(or ``storage="shm://myapp"``) returns a :class:`SharedMemoryConcurrency`:
the leases and queue of every key live in a segment named after the
storage and the settings (``/dev/shm/stanchion.myapp@cc-<digest>`` on
Linux), created by the first process and shared by every process that
asks for the same settings (gunicorn or uvicorn workers); other settings
get another segment. ``SharedMemoryStorage.unlink()`` removes it with the
storage's rate-limit segments.

Each slot is a lease naming its owner process and its expiry: a holder
killed with SIGKILL frees its slots at the next attempt of another
process (its pid is gone), one that is stopped or stuck when its lease
expires (``lease`` seconds; ``hold.extend()`` renews it). A queued hold
polls (2 ms, backing off to 100 ms), and keeps its place by doing so: a
waiter that died leaves the queue within 5 seconds. The queue is served
by priority lane, then arrival, as in-process.

Memory: the segment has room for twice ``max_keys`` keys
(``Concurrency(max_keys=...)`` or ``shm://name?max_keys=N``, default 1000;
a ``SharedMemoryStorage``'s own ``max_keys`` sizes its rate limits),
each ``16 + 32 * (limit + queue)`` bytes, in buckets of 8 chosen by the
key's hash; a new key whose bucket is full of live keys is refused with
reason ``"max_keys"`` (rare below ``max_keys`` live keys, likelier as
their number grows past it).
"""

from __future__ import annotations

import hashlib
import itertools
import os

from . import _core
from ._polling import PATIENCE, LeaseHold, PollingConcurrency
from ._shm import SharedMemoryStorage

__all__ = ["SharedMemoryConcurrency"]

DEFAULT_MAX_KEYS = 1000


class _Ids:
    """Lease ids unique on this host: the pid, then a count (restarted in
    a fork's child, whose pid differs)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.base = os.getpid() << 32
        self.count = itertools.count(1)

    def next(self) -> int:
        return self.base | (next(self.count) & 0xFFFFFFFF)


_IDS = _Ids()


class SharedMemoryConcurrency(PollingConcurrency):
    """``stanchion.Concurrency`` across the processes of one host, in
    shared memory: same settings and methods (``hold``, ``ahold``,
    ``acquire``, ``try_acquire``, ``in_flight``, ``queued`` and their
    ``a`` twins), plus ``lease``. Made by ``stanchion.Concurrency(...,
    storage=SharedMemoryStorage(name))`` or ``storage="shm://name"``."""

    __slots__ = ("_lease_ns", "_seg", "max_keys", "storage")

    _instant = True

    def __init__(
        self,
        storage: SharedMemoryStorage,
        limit: int,
        queue: int = 0,
        timeout: float | None = None,
        *,
        priorities: int = 1,
        reserve: int = 0,
        lease: float = 30.0,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if not isinstance(storage, SharedMemoryStorage):
            raise TypeError(
                f"storage must be a SharedMemoryStorage, not {type(storage).__name__}"
            )
        super().__init__(limit, queue, timeout, priorities, reserve, lease)
        _core.Concurrency(1, max_keys=max_keys)  # the same checks
        settings = f"{self.limit}:{self.queue}:{self.priorities}:{self.reserve}"
        digest = hashlib.sha256(f"{settings}:{max_keys}".encode()).hexdigest()[:20]
        self._seg = _core.SharedMemoryConcurrency(
            f"/stanchion.{storage.name}@cc-{digest}",
            self.limit,
            self.queue,
            self.priorities,
            self.reserve,
            max_keys,
        )
        self.storage = storage
        self.max_keys = max_keys
        self._lease_ns = int(self.lease * 1e9)

    def __repr__(self) -> str:
        return (
            f"SharedMemoryConcurrency({self.limit}, queue={self.queue}, "
            f"timeout={self.timeout!r}, lease={self.lease!r}, "
            f"storage={self.storage!r})"
        )

    @property
    def segment(self) -> str:
        """The shm_open name of this limit's segment."""
        name: str = self._seg.name
        return name

    # -- the storage's part of PollingConcurrency: C calls that never do
    # I/O (at most a wait for another process's bucket lock) ------------------

    def _new_id(self) -> int:
        return _IDS.next()

    def _attempt(self, hold: LeaseHold, mode: int) -> int:
        status: int = self._seg._acquire(
            hold.key,
            hold._id,
            hold.priority,
            self._lease_ns,
            int(PATIENCE * 1e9),
            mode,
        )[0]
        return status

    async def _aattempt(self, hold: LeaseHold, mode: int) -> int:
        return self._attempt(hold, mode)

    def _leave(self, hold: LeaseHold) -> None:
        self._seg._release(hold.key, hold._id)

    async def _aleave(self, hold: LeaseHold) -> None:
        self._leave(hold)

    def _extend(self, hold: LeaseHold) -> bool:
        renewed: bool = self._seg._extend(hold.key, hold._id, self._lease_ns)
        return renewed

    async def _aextend(self, hold: LeaseHold) -> bool:
        return self._extend(hold)

    def _counts(self, key: str | bytes | None) -> tuple[int, int]:
        held, queued = self._seg._count(key)
        return int(held), int(queued)

    async def _acounts(self, key: str | bytes | None) -> tuple[int, int]:
        return self._counts(key)
