"""The Memcached limiter: ``MemcachedStorage`` and its ``MemcachedLimiter``.

Memcached runs no scripts, so each algorithm is built on one of its
atomic primitives (see the package doc for what is exact and what is
approximate):

* fixed window: one counter per rate and window, ``add`` (with the
  window's expiry) then ``incr``; a hit over a limit gives its ``cost``
  back with ``decr``;
* token bucket and sliding window: all the rates of a client in one
  value, updated by a ``gets``/``cas`` loop (``add`` for a new key).

The decisions are the in-process engine's formulas, in integer
nanoseconds, on each host's wall clock (``time.time_ns``).
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable
from typing import Any

from .. import _core
from .._checks import check_seconds
from .._core import Decision
from .._errors import StorageUnavailable
from .._limiter import ALGORITHMS, ON_ERROR, await_hit, wait_for_hit
from .._outage import _Guard, _Unavailable, _Who
from .._rates import Rate
from .._registry import disabled_now
from .connection import _check_prefix, _Connector, _safe_key

_ALGORITHM_CODES = {"token_bucket": "tb", "fixed_window": "fw", "sliding_window": "sw"}
_LIMITER_MEANWHILE = {
    "allow": "hits are allowed (on_error='allow')",
    "deny": "hits are denied (on_error='deny')",
    "raise": "hits raise StorageUnavailable (on_error='raise')",
}
#: A gets/cas loop that lost this many races in a row refuses the hit
#: (with a retry of one emission interval) rather than spin on.
MAX_CAS = 32
#: Memcached reads an expiry over 30 days as a Unix time.
_RELATIVE_EXPIRY = 30 * 24 * 3600
#: The latest Unix time Memcached holds (31 bits, January 2038); a later
#: one is stored as "already expired", so 0 (no expiry) stands for it.
MAX_EXPIRY = 2**31 - 1
_NS = 1_000_000_000


def _key_bytes(key: object) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return key
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


def _expiry(ns: int, now_ns: int) -> int:
    """Memcached's ``expire`` for something needed ``ns`` from now: whole
    seconds rounded up, plus one (the server's clock ticks in seconds),
    as an absolute Unix time past 30 days; 0 (kept until evicted) past
    the last time Memcached can hold."""
    seconds = -(-ns // _NS) + 1
    if seconds > _RELATIVE_EXPIRY:
        at = now_ns // _NS + seconds
        return at if at <= MAX_EXPIRY else 0
    return seconds


class _Verdict:
    """The binding rate of a decision over several rates, as the
    in-process engine picks it: if all allow, the fewest remaining, then
    the longest reset; if any denies, the denying rate with the longest
    retry. ``full`` is when every rate is back to full (the expiry)."""

    __slots__ = ("ac", "ae", "allowed", "ar", "dc", "de", "dr", "dt", "full")

    def __init__(self) -> None:
        self.allowed = True
        self.ac = self.ar = self.ae = 0
        self.dc = self.dr = self.de = 0
        self.dt = -1
        self.full = 0

    def allow(self, first: bool, c: int, rem: int, reset: int) -> None:
        if first or rem < self.ar or (rem == self.ar and reset > self.ae):
            self.ac, self.ar, self.ae = c, rem, reset
        self.full = max(self.full, reset)

    def deny(self, c: int, rem: int, reset: int, retry: int) -> None:
        self.allowed = False
        if retry > self.dt:
            self.dc, self.dr, self.de, self.dt = c, max(0, rem), reset, retry

    def decision(self) -> Decision:
        if self.allowed:
            return Decision(True, self.ac, self.ar, self.ae / _NS, 0.0)
        return Decision(False, self.dc, self.dr, self.de / _NS, self.dt / _NS)


class MemcachedStorage:
    """Rate limits shared through Memcached: ``Limiter(storage=...)``.

    ``client_or_url``: ``"memcached://host:port"``, ``"host:port"``, a
    pymemcache ``Client`` or ``PooledClient`` (its server and TLS context,
    on connections of our own bounded by ``timeout``), or a ``HashClient`` (used as
    given: ``use_pooling=True``, its ``timeout`` and ``connect_timeout``
    set). ``prefix`` starts every key written; ``timeout`` (seconds)
    bounds each socket operation; ``retry_interval`` spaces the attempts
    while Memcached is down.
    """

    def __init__(
        self,
        client_or_url: object,
        *,
        prefix: str = "stanchion:",
        timeout: float = 0.05,
        retry_interval: float = 0.1,
    ) -> None:
        self._prefix = _check_prefix(prefix)
        self.prefix = prefix
        self.timeout = check_seconds("timeout", timeout, zero_ok=False)
        retry_interval = check_seconds("retry_interval", retry_interval, zero_ok=True)
        self._connector = _Connector(client_or_url, self.timeout, retry_interval)

    def __repr__(self) -> str:
        return f"MemcachedStorage({self._connector.where!r}, prefix={self.prefix!r})"

    def namespaced(self, name: str) -> MemcachedStorage:
        """This storage, on the same connections, writing its keys under
        ``prefix + name``."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("name must not be empty")
        raw = _check_prefix(self.prefix + name)
        twin = object.__new__(MemcachedStorage)
        twin.__dict__.update(self.__dict__)
        twin.prefix = self.prefix + name
        twin._prefix = raw
        return twin

    def make_limiter(
        self,
        rates: list[Rate],
        *,
        algorithm: str,
        burst: int | list[int | None] | None,
        on_error: str,
        penalty: Any = None,
    ) -> MemcachedLimiter:
        """Called by ``stanchion.Limiter(..., storage=self)``."""
        if penalty is not None:
            raise ValueError(
                "penalty is not supported on MemcachedStorage (use the "
                "in-process, shared-memory or Redis storage for bans)"
            )
        return MemcachedLimiter(
            self, rates, algorithm=algorithm, burst=burst, on_error=on_error
        )

    def close(self) -> None:
        """Close the connections (new ones open on next use)."""
        self._connector.close()

    async def aclose(self) -> None:
        self._connector.close()


class MemcachedLimiter:
    """A limiter whose state lives in Memcached; made by
    ``stanchion.Limiter(..., storage=MemcachedStorage(...))``.

    Same methods as ``stanchion.Limiter``: ``hit``/``peek``/``reset``/
    ``acquire`` and ``ahit``/``apeek``/``areset``/``aacquire`` (run in
    the loop's default executor). ``reset()`` without a key is not
    possible: Memcached cannot list keys."""

    def __init__(
        self,
        storage: MemcachedStorage,
        rates: list[Rate],
        *,
        algorithm: str,
        burst: int | list[int | None] | None = None,
        on_error: str = "allow",
    ) -> None:
        if not isinstance(storage, MemcachedStorage):
            raise TypeError(
                f"storage must be a MemcachedStorage, not {type(storage).__name__}"
            )
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if burst is not None and algorithm != "token_bucket":
            raise ValueError("burst applies to algorithm='token_bucket' only")
        # The in-process engine validates and compiles the rates: per
        # rate (capacity, period_ns, interval_ns, tolerance_ns).
        probe = _core.Limiter(rates, algorithm, burst, 1, None)
        self._limits: tuple[tuple[int, int, int, int], ...] = probe.limits
        self.max_cost: int = probe.max_cost
        self.storage = storage
        self._connector = storage._connector
        self.rates = tuple(rates)
        self.algorithm = algorithm
        self.on_error = on_error
        self.penalty = None
        ident = hashlib.blake2b(repr(self._limits).encode(), digest_size=5).hexdigest()
        self._head = (
            storage._prefix + f"{_ALGORITHM_CODES[algorithm]}:{ident}:".encode()
        )
        n = len(self._limits)
        words = {"token_bucket": 1, "fixed_window": 0, "sliding_window": 3}[algorithm]
        self._struct = struct.Struct(f"<{1 + n * words}q")
        self._min_cap = min(c for c, _, _, _ in self._limits)
        wait = min(1.0, min(float(r[1]) for r in rates))
        self._deny = Decision(False, self._min_cap, 0, wait, wait)
        #: The clock, integer ns since the epoch (tests set a fake one).
        self._clock: Callable[[], int] = time.time_ns
        self._who = _Who("stanchion rate limiter", _LIMITER_MEANWHILE[on_error])
        self._guard = _Guard(self._connector, self._who)
        self._io: Callable[..., Decision] = (
            self._fixed_window if algorithm == "fixed_window" else self._cas
        )

    def __repr__(self) -> str:
        rates = ";".join(str(r) for r in self.rates)
        return (
            f"MemcachedLimiter({rates!r}, algorithm={self.algorithm!r}, "
            f"storage={self.storage!r})"
        )

    # -- arguments and answers ---------------------------------------------------

    def _cost(self, cost: object) -> int:
        if type(cost) is int and 1 <= cost <= self.max_cost:
            return cost
        if isinstance(cost, bool) or not isinstance(cost, int):
            raise TypeError(f"cost must be an int, not {type(cost).__name__}")
        if cost < 1:
            raise ValueError(f"cost must be >= 1, got {cost!r}")
        if cost > self.max_cost:
            raise ValueError(
                f"cost {cost!r} can never be allowed: the smallest capacity of "
                f"this limiter's rates is {self.max_cost}"
            )
        return int(cost)

    def _conclude(self, reply: Any, cost: int) -> Decision:
        if isinstance(reply, _Unavailable):
            if self.on_error == "allow":
                return Decision(True, self._min_cap, self._min_cap - cost, 0.0, 0.0)
            if self.on_error == "deny":
                return self._deny
            raise StorageUnavailable(
                f"Memcached at {self._connector.where} is unavailable"
            ) from reply.cause
        assert isinstance(reply, Decision)
        return reply

    def _window_key(self, kb: bytes, i: int, idx: int) -> bytes:
        return _safe_key(self._head, kb + b":%d:%d" % (i, idx))

    # -- fixed window: add + incr, decr to give back ------------------------------

    def _fixed_window(
        self, client: Any, kb: bytes, cost: int, commit: bool
    ) -> Decision:
        now = self._clock()
        windows = []
        for i, (c, period, _, _) in enumerate(self._limits):
            idx, e = divmod(now, period)
            windows.append((c, period - e, self._window_key(kb, i, idx)))
        counts: list[int] = []
        if not commit:
            got = client.get_many([k for _, _, k in windows])
            counts = [int(got.get(k) or 0) + cost for _, _, k in windows]
        else:
            for _, end_in, k in windows:
                counts.append(self._incr(client, k, cost, _expiry(end_in, now)))
        v = _Verdict()
        for i, ((c, end_in, _), n) in enumerate(zip(windows, counts, strict=True)):
            if n <= c:
                v.allow(i == 0, c, c - n, end_in)
            else:
                before = n - cost
                v.deny(c, c - before, end_in if before > 0 else 0, end_in)
        if commit and not v.allowed:
            # A refused hit spends nothing: give every counter back.
            for _, _, k in windows:
                client.decr(k, cost, noreply=False)
        return v.decision()

    @staticmethod
    def _incr(client: Any, key: bytes, cost: int, expire: int) -> int:
        """The window's count after adding ``cost``: ``incr``, or ``add``
        of a new counter with the window's expiry (``incr`` again when
        another client added it first)."""
        for _ in range(MAX_CAS):
            n = client.incr(key, cost, noreply=False)
            if n is not None:
                return int(n)
            if client.add(key, b"%d" % cost, expire=expire, noreply=False):
                return cost
        raise OSError("Memcached counter vanished repeatedly")

    # -- token bucket and sliding window: gets + cas --------------------------------

    def _cas(self, client: Any, kb: bytes, cost: int, commit: bool) -> Decision:
        key = _safe_key(self._head, kb)
        unpack = self._struct.unpack
        for _ in range(MAX_CAS):
            value, token = client.gets(key)
            now = self._clock()
            state: tuple[int, ...] | None = None
            if value is not None and len(value) == self._struct.size:
                state = unpack(value)
                # A state written by a host whose clock is ahead: time
                # never runs backwards for a key.
                now = max(now, state[0])
            v, out = self._step(state, now, cost)
            if not commit or not v.allowed:
                return v.decision()
            data = self._struct.pack(now, *out)
            expire = _expiry(v.full, now)
            if token is None:
                if client.add(key, data, expire=expire, noreply=False):
                    return v.decision()
            elif client.cas(key, data, token, expire=expire, noreply=False):
                return v.decision()
        # Lost every race: refuse, to be tried again shortly.
        interval = min(i for _, _, i, _ in self._limits)
        wait = max(interval, 1_000_000) / _NS
        return Decision(False, self._min_cap, 0, wait, wait)

    def _step(
        self, state: tuple[int, ...] | None, now: int, cost: int
    ) -> tuple[_Verdict, list[int]]:
        """The decision on ``state`` at ``now`` (ns), and the state words
        to write if it allows (the in-process engine's formulas)."""
        v = _Verdict()
        out: list[int] = []
        if self.algorithm == "token_bucket":
            for i, (c, _, interval, tolerance) in enumerate(self._limits):
                d = max(0, state[1 + i] - now) if state is not None else 0
                nd = d + cost * interval
                if nd <= tolerance:
                    v.allow(i == 0, c, (tolerance - nd) // interval, nd)
                else:
                    v.deny(c, (tolerance - d) // interval, d, nd - tolerance)
                out.append(now + nd)
            return v, out
        for i, (limit, period, _, _) in enumerate(self._limits):
            idx, e = divmod(now, period)
            prev = cur = 0
            if state is not None:
                si = state[1 + 3 * i]
                if si == idx:
                    prev, cur = state[2 + 3 * i], state[3 + 3 * i]
                elif si == idx - 1:
                    prev = state[3 + 3 * i]
            x = limit - cur - cost
            wp = prev * (period - e)
            ok = x >= 0 and wp <= x * period
            if ok:
                cur += cost
                retry = 0
            elif x >= 0:
                # Wait in this window until prev's weight has shrunk.
                retry = period - (x * period) // prev - e
            else:
                # Wait for the next window, where cur becomes prev.
                q = ((limit - cost) * period) // cur
                retry = (period - e) + (period - q if q < period else 0)
            weight = -(-wp // period)
            left = max(0, limit - cur - weight)
            if cur > 0:
                reset = (period - e) + period
            elif prev > 0:
                reset = period - e
            else:
                reset = 0
            if ok:
                v.allow(i == 0, limit, left, reset)
            else:
                v.deny(limit, left, reset, retry)
            out += (idx, prev, cur)
        return v, out

    # -- blocking ---------------------------------------------------------------

    def _decide(self, key: object, cost: object, commit: bool) -> Decision:
        kb = _key_bytes(key)
        c = self._cost(cost)
        if disabled_now():  # stanchion.testing.disabled()
            return Decision(True, self._min_cap, self._min_cap)
        conn = self._connector
        reply = self._guard.call(conn.run, self._io, kb, c, commit)
        return self._conclude(reply, c)

    def hit(self, key: str | bytes, /, cost: int = 1) -> Decision:
        """Consume ``cost`` from every rate for ``key`` if all allow it;
        otherwise consume nothing."""
        return self._decide(key, cost, True)

    def peek(self, key: str | bytes, /, cost: int = 1) -> Decision:
        """The Decision ``hit`` would return now, consuming nothing."""
        return self._decide(key, cost, False)

    def _delete(self, client: Any, kb: bytes) -> None:
        if self.algorithm != "fixed_window":
            client.delete(_safe_key(self._head, kb), noreply=False)
            return
        now = self._clock()
        keys = [
            self._window_key(kb, i, now // period)
            for i, (_, period, _, _) in enumerate(self._limits)
        ]
        client.delete_many(keys, noreply=False)

    def _reset_key(self, key: str | bytes | None) -> bytes:
        if key is None:
            raise NotImplementedError(
                "Memcached cannot list keys: reset one key at a time "
                "(reset(key)), or let the keys expire"
            )
        return _key_bytes(key)

    def _reset_done(self, reply: Any) -> None:
        if isinstance(reply, _Unavailable) and self.on_error == "raise":
            raise StorageUnavailable(
                f"Memcached at {self._connector.where} is unavailable"
            ) from reply.cause

    def reset(self, key: str | bytes | None = None) -> None:
        """Forget one key (back to full)."""
        kb = self._reset_key(key)
        self._reset_done(self._guard.call(self._connector.run, self._delete, kb))

    def acquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision:
        """Hit, waiting while denied. With a ``timeout`` (seconds), raises
        RateLimitExceeded as soon as the wait would exceed it."""
        return wait_for_hit(self.hit, key, cost, timeout)

    # -- asyncio: the same calls in the loop's executor ----------------------------

    async def _adecide(self, key: object, cost: object, commit: bool) -> Decision:
        kb = _key_bytes(key)
        c = self._cost(cost)
        if disabled_now():
            return Decision(True, self._min_cap, self._min_cap)
        conn = self._connector
        reply = await self._guard.acall(conn.arun, self._io, kb, c, commit)
        return self._conclude(reply, c)

    async def ahit(self, key: str | bytes, cost: int = 1) -> Decision:
        return await self._adecide(key, cost, True)

    async def apeek(self, key: str | bytes, cost: int = 1) -> Decision:
        return await self._adecide(key, cost, False)

    async def areset(self, key: str | bytes | None = None) -> None:
        kb = self._reset_key(key)
        conn = self._connector
        self._reset_done(await self._guard.acall(conn.arun, self._delete, kb))

    async def aacquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision:
        return await await_hit(self.ahit, key, cost, timeout)
