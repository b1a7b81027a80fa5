"""Pauses shared by every process that shares a storage.

A pause is "do not call this provider for the next N seconds", learnt
from one answer (a 429 with ``Retry-After``) and obeyed by every caller
that shares the storage; a claim is "exactly one caller may do this now"
(the half-open probe of a circuit breaker). ``pauses_for(storage)`` gives
the storage's own table:

* ``None``: :class:`MemoryPauses`, this process only.
* a ``SharedMemoryStorage``: :class:`ShmPauses`, every process of the host,
  in one small segment beside the storage's limits
  (``/dev/shm/stanchion.<name>@pauses``, listed by ``segments()`` and
  removed by ``unlink()`` with them).
* a ``RedisStorage``: :class:`RedisPauses`, every process of every host,
  in keys ``<prefix>pause:<key>`` and ``<prefix>claim:<key>`` that expire
  by themselves, on the server's clock.

Each has ``pause(key, seconds)`` (at least that long from now; a longer
pause already there is kept), ``remaining(key)`` (seconds left, 0.0 when
not paused), ``claim(key, seconds)`` (True for exactly one caller until
``seconds`` pass or ``release(key)``) and ``release(key)`` (ends the
key's claim, whoever holds it), and the asyncio twins ``apause``,
``aremaining``, ``aclaim`` and ``arelease``. Pauses and claims of one
key are independent. Each ``pauses_for`` call gives a new table object:
in-process, share the object to share the pauses. A key is any str;
``seconds`` a finite number from 0 to 1e9 (a pause of 0 does nothing, a
claim needs more than 0); anything else raises TypeError or ValueError
before any state changes.

Pauses are advisory. Memory is bounded: an in-process or shared-memory
table that is full forgets the entries closest to expiring (a forgotten
claim can then be claimed again). When Redis is down or slower than the
storage's timeout, ``remaining`` answers 0.0, ``pause`` does nothing and
``claim`` answers True, logged once per outage like the limiters', never
raising.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import heapq
import math
import mmap
import os
import stat
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "MemoryPauses",
    "Pauses",
    "RedisPauses",
    "ShmPauses",
    "pauses_for",
]

# The longest pause or claim taken: about 31 years (nanoseconds stay far
# inside 64 bits, milliseconds inside Redis's PX).
MAX_SECONDS = 1e9


# =============================================================================
# Arguments
# =============================================================================


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, not {type(key).__name__}")
    return key


def _check_seconds(seconds: object, *, zero_ok: bool) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(
            f"seconds must be a number of seconds, not {type(seconds).__name__}"
        )
    if seconds > MAX_SECONDS:  # before isfinite: an int past float's range
        raise ValueError(f"seconds must be at most {MAX_SECONDS:g}, got {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(
            f"seconds must be a finite number of seconds {bound}, got {seconds!r}"
        )
    return float(seconds)


def _check_clock(clock: object) -> Callable[[], float] | None:
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be callable, not {type(clock).__name__}")
    return clock


def _key_bytes(key: str) -> bytes:
    # Any str is a key, lone surrogates included.
    return key.encode("utf-8", "surrogatepass")


# =============================================================================
# The protocol
# =============================================================================


@runtime_checkable
class Pauses(Protocol):
    """Pauses and claims shared through a storage (see the module doc)."""

    def pause(self, key: str, seconds: float) -> None: ...
    def remaining(self, key: str) -> float: ...
    def claim(self, key: str, seconds: float) -> bool: ...
    def release(self, key: str) -> None: ...
    async def apause(self, key: str, seconds: float) -> None: ...
    async def aremaining(self, key: str) -> float: ...
    async def aclaim(self, key: str, seconds: float) -> bool: ...
    async def arelease(self, key: str) -> None: ...


class _AtOnce:
    """The asyncio twins of a table whose calls never wait for I/O (at
    most for a lock held for microseconds): the blocking calls."""

    def pause(self, key: str, seconds: float) -> None:
        raise NotImplementedError

    def remaining(self, key: str) -> float:
        raise NotImplementedError

    def claim(self, key: str, seconds: float) -> bool:
        raise NotImplementedError

    def release(self, key: str) -> None:
        raise NotImplementedError

    async def apause(self, key: str, seconds: float) -> None:
        self.pause(key, seconds)

    async def aremaining(self, key: str) -> float:
        return self.remaining(key)

    async def aclaim(self, key: str, seconds: float) -> bool:
        return self.claim(key, seconds)

    async def arelease(self, key: str) -> None:
        self.release(key)


# =============================================================================
# In-process
# =============================================================================


class MemoryPauses(_AtOnce):
    """Pauses of this process, thread-safe. ``clock``: monotonic seconds
    (tests pass a fake one; default ``time.monotonic``). ``max_keys``
    bounds the table: expired entries are dropped as it grows, and past
    ``max_keys`` the entries closest to expiring are forgotten."""

    def __init__(
        self, *, clock: Callable[[], float] | None = None, max_keys: int = 100_000
    ) -> None:
        _check_clock(clock)
        if isinstance(max_keys, bool) or not isinstance(max_keys, int):
            raise TypeError(f"max_keys must be an int, not {type(max_keys).__name__}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self._clock: Callable[[], float] = clock or time.monotonic
        self.max_keys = max_keys
        self._lock = threading.RLock()  # a finalizer may call it
        # key -> [pause until, claim until], in clock seconds.
        self._table: dict[str | bytes, list[float]] = {}
        self._sweep_at = 64

    def __repr__(self) -> str:
        return f"MemoryPauses(max_keys={self.max_keys})"

    def __len__(self) -> int:
        return len(self._table)

    def _now(self) -> float:
        now = self._clock()
        if isinstance(now, bool) or not isinstance(now, (int, float)):
            raise TypeError(f"clock() must return seconds, not {type(now).__name__}")
        if not -1e300 < now < 1e300:  # NaN, infinities, ints past float's range
            raise ValueError(f"clock() must return finite seconds, got {now!r}")
        return float(now)

    @staticmethod
    def _slot(key: str) -> str | bytes:
        """The table's key: long keys by a digest, so an entry's size is
        bounded whatever the keys."""
        if len(key) <= 256:
            return key
        return hashlib.blake2b(_key_bytes(key), digest_size=16).digest()

    def _entry_locked(self, slot: str | bytes, now: float) -> list[float]:
        entry = self._table.get(slot)
        if entry is not None:
            return entry
        table = self._table
        if len(table) >= self._sweep_at:
            for k in [k for k, e in table.items() if max(e) <= now]:
                del table[k]
            self._sweep_at = max(64, 2 * len(table))
        if len(table) >= self.max_keys:
            # Full of live entries: forget an eighth, closest to expiring
            # first, so the next inserts are cheap.
            excess = len(table) - self.max_keys + 1 + self.max_keys // 8
            for k, _ in heapq.nsmallest(excess, table.items(), key=lambda i: max(i[1])):
                del table[k]
        entry = table[slot] = [0.0, 0.0]
        return entry

    def pause(self, key: str, seconds: float) -> None:
        slot = self._slot(_check_key(key))
        s = _check_seconds(seconds, zero_ok=True)
        now = self._now()
        if s == 0:
            return
        with self._lock:
            entry = self._entry_locked(slot, now)
            entry[0] = max(entry[0], now + s)

    def remaining(self, key: str) -> float:
        if not self._table:  # nothing paused or claimed: the common case
            _check_key(key)
            return 0.0
        slot = self._slot(_check_key(key))
        now = self._now()
        with self._lock:
            entry = self._table.get(slot)
            if entry is None:
                return 0.0
            if max(entry) <= now:
                del self._table[slot]
                return 0.0
            return max(0.0, entry[0] - now)

    def claim(self, key: str, seconds: float) -> bool:
        slot = self._slot(_check_key(key))
        s = _check_seconds(seconds, zero_ok=False)
        now = self._now()
        with self._lock:
            entry = self._table.get(slot)
            if entry is not None and entry[1] > now:
                return False
            entry = self._entry_locked(slot, now)
            entry[1] = now + s
            return True

    def release(self, key: str) -> None:
        slot = self._slot(_check_key(key))
        now = self._now()
        with self._lock:
            entry = self._table.get(slot)
            if entry is None:
                return
            entry[1] = 0.0
            if entry[0] <= now:
                del self._table[slot]


# =============================================================================
# Shared memory: every process of one host
# =============================================================================

_SHM_DIR = "/dev/shm"
_MAGIC = b"stPAUSES"
_VERSION = 1
_HEADER = struct.Struct("<8sIIII16s")  # magic, version, buckets, ways, ready, salt
_HEADER_SIZE = 64
_SLOT = struct.Struct("<QqqQ")  # key hash (0: free), pause until, claim until (ns)
_BUCKETS = 256
_WAYS = 16

# Serializes the reopening after fork of every ShmPauses; new in each
# child (the parent's may have been held by a thread that fork left out).
_FORK_LOCK = threading.Lock()


def _new_fork_lock() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()


# The open tables: before a fork each opens the file once more, in the
# parent, for the child's own lock (a child may no longer be allowed to
# open it: a server's workers drop their privileges after the fork).
_TABLES: weakref.WeakSet[ShmPauses] = weakref.WeakSet()


def _spares_before_fork() -> None:
    for table in list(_TABLES):
        table._open_spare()


def _spares_after_fork_in_parent() -> None:
    for table in list(_TABLES):
        table._close_spare()


os.register_at_fork(
    before=_spares_before_fork,
    after_in_parent=_spares_after_fork_in_parent,
    after_in_child=_new_fork_lock,
)


def pauses_segment(storage: Any) -> str:
    """The shm_open name of a ``SharedMemoryStorage``'s pauses: one of
    its segments (``@`` then a word no policy digest spells)."""
    return f"/stanchion.{storage.name}@pauses"


class ShmPauses(_AtOnce):
    """Pauses of every process of one host, in a segment of ``storage``
    (a ``SharedMemoryStorage``) created by the first process that needs
    it. 4096 entries, in 256 buckets of 16 chosen by a keyed hash of the
    key; a key whose bucket is full of live entries replaces the one
    closest to expiring. Time is CLOCK_MONOTONIC, shared by the processes
    of the host; ``clock`` (tests): monotonic seconds, the same in every
    process sharing the segment.

    Each call takes the segment's lock (``flock``, for microseconds): a
    process killed while holding it releases it; one stopped while
    holding it (SIGSTOP) makes the others wait until it continues. After
    ``storage.unlink()`` the tables already open keep the old segment;
    tables made afterwards share a new one."""

    def __init__(
        self, storage: Any, *, clock: Callable[[], float] | None = None
    ) -> None:
        from ._shm import SharedMemoryStorage

        if not isinstance(storage, SharedMemoryStorage):
            raise TypeError(
                f"storage must be a SharedMemoryStorage, not {type(storage).__name__}"
            )
        clock = _check_clock(clock)
        self.storage = storage
        self.segment = pauses_segment(storage)
        self._path = os.path.join(_SHM_DIR, self.segment[1:])
        if clock is None:
            self._now_ns: Callable[[], int] = time.monotonic_ns
        else:
            self._now_ns = lambda: _clock_ns(clock)
        self._bucket = struct.Struct("<" + "QqqQ" * _WAYS)
        self._size = _HEADER_SIZE + _BUCKETS * self._bucket.size
        self._fd = -1
        self._spare = -1  # the file opened once more for a forked child
        self._map: mmap.mmap | None = None
        self._open()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        _TABLES.add(self)

    def __repr__(self) -> str:
        return f"ShmPauses({self.storage!r})"

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Unmap the segment (it stays for the other processes); later
        calls raise ValueError."""
        m, self._map = getattr(self, "_map", None), None
        if m is not None:
            m.close()
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)
        self._close_spare()

    # -- opening -------------------------------------------------------------

    def _open(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self._path, flags, 0o600)
        try:
            # One opener at a time; the kernel drops the lock of a process
            # that dies, so a creator killed mid-way is simply redone.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._map = self._attach(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._salt = self._map[24:40]

    def _attach(self, fd: int) -> mmap.mmap:
        """The segment's mapping, created or checked; under its flock."""
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"shared memory {self.segment} is not a regular file")
        size = info.st_size
        if size == 0:
            return self._create(fd)
        if size < _HEADER_SIZE:
            raise ValueError(
                f"shared memory {self.segment} exists and is not a stanchion "
                f"pauses segment ({size} bytes)"
            )
        m = mmap.mmap(fd, size)
        try:
            magic, version, buckets, ways, ready, _ = _HEADER.unpack_from(m, 0)
            if magic in (_MAGIC, bytes(8)) and ready != 1:
                # Its creator died before finishing: redo it.
                m.close()
                return self._create(fd)
            if magic != _MAGIC:
                raise ValueError(
                    f"shared memory {self.segment} exists and is not a stanchion "
                    "pauses segment"
                )
            if (version, buckets, ways, size) != (
                _VERSION,
                _BUCKETS,
                _WAYS,
                self._size,
            ):
                raise ValueError(
                    f"shared memory {self.segment} has another layout (version "
                    f"{version}, {buckets} buckets of {ways}, {size} bytes) than "
                    f"this stanchion's (version {_VERSION}, {_BUCKETS} buckets of "
                    f"{_WAYS}, {self._size} bytes): unlink the storage's segments"
                )
        except BaseException:
            if not m.closed:
                m.close()
            raise
        return m

    def _create(self, fd: int) -> mmap.mmap:
        os.ftruncate(fd, 0)  # a half-made segment starts again from zeros
        os.ftruncate(fd, self._size)
        m = mmap.mmap(fd, self._size)
        salt = os.urandom(16)
        _HEADER.pack_into(m, 0, _MAGIC, _VERSION, _BUCKETS, _WAYS, 0, salt)
        _HEADER.pack_into(m, 0, _MAGIC, _VERSION, _BUCKETS, _WAYS, 1, salt)
        return m

    # -- the lock ------------------------------------------------------------

    def _after_fork(self) -> None:
        """In a forked child: its own open file, so that its flock and the
        parent's exclude each other (a flock belongs to an open file,
        which fork shares), and its own thread lock. Once per child, even
        when its threads race here."""
        with _FORK_LOCK:
            if self._pid != os.getpid():
                self._reopen()

    def _reopen(self) -> None:
        self._lock = threading.Lock()
        # The file the parent opened for this child before the fork;
        # else opened now (when the fork skipped the hooks).
        fd, self._spare = self._spare, -1
        if fd < 0:
            try:
                fd = os.open(f"/proc/self/fd/{self._fd}", os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        os.close(self._fd)
        self._fd = fd
        self._pid = os.getpid()

    def _open_spare(self) -> None:
        """Before a fork: the open file the child will lock with (once
        this process has its own, a child not yet reopened has to take
        it first: its spare is shared with the child to come)."""
        if getattr(self, "_fd", -1) < 0:
            return
        try:
            if self._pid != os.getpid():
                self._after_fork()
            if self._spare < 0:
                self._spare = os.open(
                    f"/proc/self/fd/{self._fd}", os.O_RDWR | os.O_CLOEXEC
                )
        except OSError:
            pass  # the child opens it itself, if it can

    def _close_spare(self) -> None:
        fd, self._spare = getattr(self, "_spare", -1), -1
        if fd >= 0:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[mmap.mmap]:
        m = self._map
        if m is None:
            raise ValueError(f"{self!r} is closed")
        if self._pid != os.getpid():
            self._after_fork()
        # A flock does not exclude the threads of one process (they share
        # the open file): the thread lock does.
        with self._lock:
            fcntl.flock(self._fd, how)
            try:
                yield m
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    # -- slots -----------------------------------------------------------------

    def _hash(self, key: str) -> int:
        """The key's 64-bit hash (never 0, which marks a free slot), keyed
        by the segment's random salt so that keys cannot be chosen to
        crowd one bucket."""
        digest = hashlib.blake2b(_key_bytes(key), digest_size=8, key=self._salt)
        return int.from_bytes(digest.digest(), "little") or 1

    def _find(self, m: mmap.mmap, h: int) -> tuple[int, tuple[int, ...], int]:
        """The bucket's offset, its words, and the slot of ``h`` (-1)."""
        off = _HEADER_SIZE + (h % _BUCKETS) * self._bucket.size
        words = self._bucket.unpack_from(m, off)
        for i in range(_WAYS):
            if words[4 * i] == h:
                return off, words, i
        return off, words, -1

    @staticmethod
    def _free(words: tuple[int, ...], now: int) -> int:
        """The slot for a new key: a free or expired one, else the one
        closest to expiring."""
        best = 0
        best_end = None
        for i in range(_WAYS):
            h, paused, claimed, _ = words[4 * i : 4 * i + 4]
            end = max(paused, claimed)
            if h == 0 or end <= now:
                return i
            if best_end is None or end < best_end:
                best, best_end = i, end
        return best

    def pause(self, key: str, seconds: float) -> None:
        _check_key(key)
        s = _check_seconds(seconds, zero_ok=True)
        if s == 0:
            return
        now = self._now_ns()
        until = now + math.ceil(s * 1e9)
        h = self._hash(key)
        with self._locked(fcntl.LOCK_EX) as m:
            off, words, i = self._find(m, h)
            if i < 0:
                i = self._free(words, now)
                _SLOT.pack_into(m, off + i * _SLOT.size, h, until, 0, 0)
                return
            paused, claimed = words[4 * i + 1], words[4 * i + 2]
            if paused < until:
                _SLOT.pack_into(m, off + i * _SLOT.size, h, until, claimed, 0)

    def remaining(self, key: str) -> float:
        _check_key(key)
        now = self._now_ns()
        h = self._hash(key)
        with self._locked(fcntl.LOCK_SH) as m:
            _, words, i = self._find(m, h)
        if i < 0:
            return 0.0
        return max(0, words[4 * i + 1] - now) / 1e9

    def claim(self, key: str, seconds: float) -> bool:
        _check_key(key)
        s = _check_seconds(seconds, zero_ok=False)
        now = self._now_ns()
        until = now + math.ceil(s * 1e9)
        h = self._hash(key)
        with self._locked(fcntl.LOCK_EX) as m:
            off, words, i = self._find(m, h)
            if i < 0:
                i = self._free(words, now)
                _SLOT.pack_into(m, off + i * _SLOT.size, h, 0, until, 0)
                return True
            paused, claimed = words[4 * i + 1], words[4 * i + 2]
            if claimed > now:
                return False
            _SLOT.pack_into(m, off + i * _SLOT.size, h, paused, until, 0)
            return True

    def release(self, key: str) -> None:
        _check_key(key)
        now = self._now_ns()
        h = self._hash(key)
        with self._locked(fcntl.LOCK_EX) as m:
            off, words, i = self._find(m, h)
            if i < 0:
                return
            paused = words[4 * i + 1]
            if paused > now:
                _SLOT.pack_into(m, off + i * _SLOT.size, h, paused, 0, 0)
            else:
                _SLOT.pack_into(m, off + i * _SLOT.size, 0, 0, 0, 0)


def _clock_ns(clock: Callable[[], float]) -> int:
    now = clock()
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise TypeError(f"clock() must return seconds, not {type(now).__name__}")
    if not 0 <= now < 9e9:  # NaN and infinities too
        raise ValueError(f"clock() must return finite seconds >= 0, got {now!r}")
    return int(now * 1e9)


# =============================================================================
# Redis: every process of every host
# =============================================================================

# Keep the later expiry: set the key for ARGV[1] ms unless it already
# lives longer. PTTL is -2 for a missing key, -1 for one without expiry
# (not one of ours: it is taken over).
_PAUSE_SCRIPT = b"""
local ms = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
  return ms
end
return left
"""
_PAUSE_SHA = hashlib.sha1(_PAUSE_SCRIPT).hexdigest()


class RedisPauses:
    """Pauses of every process of every host, in ``storage`` (a
    ``RedisStorage``): ``<prefix>pause:<key>`` lives as long as the pause
    (PTTL is the time left), ``<prefix>claim:<key>`` as long as the claim
    (SET NX PX). The server's clock is the only one; times are whole
    milliseconds, rounded up. Uses the storage's connections, timeout and
    outage state; see the module doc for what an outage does."""

    def __init__(self, storage: Any) -> None:
        from .redis import RedisStorage
        from .redis.outage import _Guard, _Who

        if not isinstance(storage, RedisStorage):
            raise TypeError(
                f"storage must be a RedisStorage, not {type(storage).__name__}"
            )
        self.storage = storage
        self._connector = storage._connector
        self._guard = _Guard(
            self._connector,
            _Who(
                "stanchion upstream pauses",
                "pauses are neither seen nor kept, and every claim is granted",
            ),
        )
        prefix = storage.prefix.encode()
        self._pause_head = prefix + b"pause:"
        self._claim_head = prefix + b"claim:"

    def __repr__(self) -> str:
        return f"RedisPauses({self.storage!r})"

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, math.ceil(seconds * 1000))

    @staticmethod
    def _answered(reply: Any) -> bool:
        from .redis.outage import _Unavailable

        return not isinstance(reply, _Unavailable)

    # -- the script ------------------------------------------------------------

    async def _pause_script(
        self, call: Callable[..., Any], rkey: bytes, ms: int
    ) -> Any:
        from redis.exceptions import NoScriptError

        try:
            return await call("EVALSHA", _PAUSE_SHA, 1, rkey, ms)
        except NoScriptError:
            return await call("EVAL", _PAUSE_SCRIPT, 1, rkey, ms)

    # -- blocking ----------------------------------------------------------------

    def pause(self, key: str, seconds: float) -> None:
        from ._sync import at_once, run_at_once

        rkey = self._pause_head + _key_bytes(_check_key(key))
        s = _check_seconds(seconds, zero_ok=True)
        if s == 0:
            return
        link = self._connector.sync_link()
        ms = self._ms(s)
        self._guard.call(
            lambda: run_at_once(self._pause_script(at_once(link.call), rkey, ms))
        )

    def remaining(self, key: str) -> float:
        rkey = self._pause_head + _key_bytes(_check_key(key))
        link = self._connector.sync_link()
        return _left(self._guard.call(link.call, "PTTL", rkey), self._answered)

    def claim(self, key: str, seconds: float) -> bool:
        rkey = self._claim_head + _key_bytes(_check_key(key))
        ms = self._ms(_check_seconds(seconds, zero_ok=False))
        link = self._connector.sync_link()
        reply = self._guard.call(link.call, "SET", rkey, b"1", "NX", "PX", ms)
        return reply is not None if self._answered(reply) else True

    def release(self, key: str) -> None:
        rkey = self._claim_head + _key_bytes(_check_key(key))
        link = self._connector.sync_link()
        self._guard.call(link.call, "UNLINK", rkey)

    # -- asyncio -----------------------------------------------------------------

    async def apause(self, key: str, seconds: float) -> None:
        rkey = self._pause_head + _key_bytes(_check_key(key))
        s = _check_seconds(seconds, zero_ok=True)
        if s == 0:
            return
        link = self._connector.async_link
        await self._guard.acall(self._pause_script, link.call, rkey, self._ms(s))

    async def aremaining(self, key: str) -> float:
        rkey = self._pause_head + _key_bytes(_check_key(key))
        link = self._connector.async_link
        reply = await self._guard.acall(link.call, "PTTL", rkey)
        return _left(reply, self._answered)

    async def aclaim(self, key: str, seconds: float) -> bool:
        rkey = self._claim_head + _key_bytes(_check_key(key))
        ms = self._ms(_check_seconds(seconds, zero_ok=False))
        link = self._connector.async_link
        reply = await self._guard.acall(link.call, "SET", rkey, b"1", "NX", "PX", ms)
        return reply is not None if self._answered(reply) else True

    async def arelease(self, key: str) -> None:
        rkey = self._claim_head + _key_bytes(_check_key(key))
        link = self._connector.async_link
        await self._guard.acall(link.call, "UNLINK", rkey)


def _left(reply: Any, answered: Callable[[Any], bool]) -> float:
    """Seconds left from a PTTL reply (0.0 unanswered, missing, or
    without expiry)."""
    if not answered(reply) or not isinstance(reply, int) or reply <= 0:
        return 0.0
    return reply / 1000.0


# =============================================================================
# The storage's table
# =============================================================================


def pauses_for(storage: object, *, clock: Callable[[], float] | None = None) -> Pauses:
    """The pauses shared through ``storage``: ``None`` (this process), a
    ``SharedMemoryStorage`` (the host) or a ``RedisStorage`` (every host).
    ``clock`` (tests): monotonic seconds, for the in-process and
    shared-memory tables; Redis has the server's clock only."""
    _check_clock(clock)
    if storage is None:
        return MemoryPauses(clock=clock)
    from ._shm import SharedMemoryStorage

    if isinstance(storage, SharedMemoryStorage):
        return ShmPauses(storage, clock=clock)
    # A RedisStorage exists only once stanchion.redis is imported: never
    # import redis-py here for another object.
    redis_module = sys.modules.get("stanchion.redis")
    if redis_module is not None and isinstance(storage, redis_module.RedisStorage):
        if clock is not None:
            raise ValueError(
                "clock applies to the in-process and shared-memory pauses "
                "only: Redis decides on the server's clock"
            )
        return RedisPauses(storage)
    raise TypeError(
        f"unsupported storage {storage!r} for pauses: use None (in-process), "
        "a stanchion.SharedMemoryStorage or a stanchion.redis.RedisStorage"
    )
