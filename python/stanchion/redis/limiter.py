"""The Redis limiter: ``RedisStorage`` and the ``RedisLimiter`` it makes.

A decision is one EVALSHA of the algorithm's Lua script (``scripts``),
with the client key as the state key's hash tag, the compiled rates as
arguments and, for a hit, a deadline in the server's clock past which
the server applies nothing. When Redis fails the limiter answers by its
``on_error`` policy.
"""

from __future__ import annotations

import copy
import hashlib
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as _RedisTimeoutError

from .. import _core
from .._checks import check_seconds
from .._core import Decision
from .._errors import StorageUnavailable
from .._limiter import ALGORITHMS, ON_ERROR, await_hit, wait_for_hit
from .._penalty import Ban, Penalty, check_penalty, log_ban
from .._rates import Rate
from .._registry import disabled_now, track
from .._sync import at_once, run_at_once
from .connections import _Connector
from .links import _glob_escape, _SyncLink
from .outage import _Guard, _Unavailable, _Who
from .scripts import BAN_STATE, LIFT, SCRIPTS

_ALGORITHM_CODES = {"token_bucket": "tb", "fixed_window": "fw", "sliding_window": "sw"}


def _key_bytes(key: object) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    raise TypeError(f"key must be str or bytes, not {type(key).__name__}")


_LIMITER_MEANWHILE = {
    "allow": "hits are allowed (on_error='allow')",
    "deny": "hits are denied (on_error='deny')",
    "raise": "hits raise StorageUnavailable (on_error='raise')",
}
# =============================================================================
# The storage and its limiter
# =============================================================================


class RedisStorage:
    """Rate limits shared through Redis: pass it as ``Limiter(storage=...)``.

    ``client_or_url``: a ``redis.Redis``, ``redis.asyncio.Redis``,
    ``redis.cluster.RedisCluster`` or ``redis.asyncio.cluster.RedisCluster``
    client, or a ``redis://`` / ``rediss://`` / ``unix://`` URL (which gives
    both blocking and asyncio methods). ``prefix`` starts every key it
    writes; ``timeout`` (seconds) bounds each decision; ``retry_interval``
    (seconds) spaces the attempts while Redis is down.
    """

    def __init__(
        self,
        client_or_url: object,
        *,
        prefix: str = "stanchion:",
        timeout: float = 0.05,
        retry_interval: float = 0.1,
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if "{" in prefix or "}" in prefix:
            raise ValueError(
                f"prefix must not contain '{{' or '}}' (hash tags), got {prefix!r}"
            )
        timeout = check_seconds("timeout", timeout, zero_ok=False)
        retry_interval = check_seconds("retry_interval", retry_interval, zero_ok=True)
        self.prefix = prefix
        self.timeout = timeout
        self._connector = _Connector(client_or_url, timeout, retry_interval)

    def __repr__(self) -> str:
        return f"RedisStorage({self._connector.where!r}, prefix={self.prefix!r})"

    def namespaced(self, name: str) -> RedisStorage:
        """This storage, on the same connections, writing its keys under
        ``prefix + name``: limiters that must count apart (a dry run's
        and the enforcing one's, with the same rates) use one each."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not name or "{" in name or "}" in name:
            raise ValueError(
                f"name must be non-empty, without '{{' or '}}', got {name!r}"
            )
        twin = copy.copy(self)
        twin.prefix = self.prefix + name
        return twin

    def make_limiter(
        self,
        rates: list[Rate],
        *,
        algorithm: str,
        burst: int | list[int | None] | None,
        on_error: str,
        penalty: Penalty | None = None,
    ) -> RedisLimiter:
        """Called by ``stanchion.Limiter(..., storage=self)``."""
        return RedisLimiter(
            self,
            rates,
            algorithm=algorithm,
            burst=burst,
            on_error=on_error,
            penalty=penalty,
        )

    def close(self) -> None:
        """Close the blocking connections (new ones open on next use)."""
        self._connector.close()

    async def aclose(self) -> None:
        """Close this event loop's asyncio connections."""
        await self._connector.aclose()


def _script_params(
    limits: tuple[tuple[int, int, int, int], ...], rates: list[Rate], algorithm: str
) -> list[tuple[int, int, int]]:
    """The scripts' (capacity, a, b) per rate, from the in-process engine's
    compiled rates (``_core.Limiter.limits``): the token bucket's interval
    and tolerance in ns, a window's period in us and in ns."""
    out = []
    for (capacity, period_ns, interval_ns, tolerance_ns), rate in zip(
        limits, rates, strict=True
    ):
        if algorithm == "token_bucket":
            out.append((capacity, interval_ns, tolerance_ns))
        elif period_ns % 1000:
            raise ValueError(
                f"rate {Rate(*rate)}: a window period must be a whole number of "
                "microseconds with Redis storage"
            )
        else:
            out.append((capacity, period_ns // 1000, period_ns))
    return out


class RedisLimiter:
    """A limiter whose state lives in Redis; made by
    ``stanchion.Limiter(..., storage=RedisStorage(...))``.

    Same methods as ``stanchion.Limiter``: ``hit``/``peek``/``reset``/
    ``acquire`` (blocking client or URL) and ``ahit``/``apeek``/``areset``/
    ``aacquire`` (asyncio client or URL). With a ``penalty``, bans live in
    Redis (every worker and host sees them), decided in the hit's script;
    ``bans``/``get_ban``/``lift`` and ``abans``/``aget_ban``/``alift``.
    """

    __slots__ = (
        "__weakref__",
        "_connector",
        "_deny",
        "_guard",
        "_head",
        "_min_cap",
        "_nkeys",
        "_params",
        "_pscan",
        "_scan",
        "_script_clock",
        "_sha",
        "_src",
        "_tail",
        "_who",
        "algorithm",
        "max_cost",
        "on_error",
        "penalty",
        "rates",
        "storage",
    )

    def __init__(
        self,
        storage: RedisStorage,
        rates: list[Rate],
        *,
        algorithm: str,
        burst: int | list[int | None] | None = None,
        on_error: str = "allow",
        penalty: Penalty | None = None,
    ) -> None:
        check_penalty(penalty)
        if not isinstance(storage, RedisStorage):
            raise TypeError(
                f"storage must be a RedisStorage, not {type(storage).__name__}"
            )
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if burst is not None and algorithm != "token_bucket":
            raise ValueError("burst applies to algorithm='token_bucket' only")
        # The in-process engine validates and compiles rates and bursts
        # (one owner of those rules and messages); the scripts take its
        # compiled form, and it is then dropped.
        probe = _core.Limiter(rates, algorithm, burst, 1, None)
        compiled = _script_params(probe.limits, list(rates), algorithm)

        self.storage = storage
        self._connector = storage._connector
        self.rates = tuple(rates)
        self.algorithm = algorithm
        self.on_error = on_error
        self.max_cost: int = probe.max_cost
        self._src, self._sha = SCRIPTS[algorithm]
        params: list[bytes] = []
        for triple in compiled:
            params.extend(str(v).encode() for v in triple)
        self._params = tuple(params)
        ident = hashlib.blake2b(b" ".join(params), digest_size=5).hexdigest()
        code = _ALGORITHM_CODES[algorithm]
        prefix = storage.prefix.encode()
        self._head = prefix + b"{"
        self._tail = f"}}:{code}:{ident}".encode()
        self._scan = _glob_escape(prefix) + b"{*" + _glob_escape(self._tail)
        self._min_cap = min(c for c, _, _ in compiled)
        self.penalty = penalty
        self._nkeys = 1
        self._pscan = self._scan + b":pn"
        if penalty is not None:
            # The scripts keep time in us: the penalty's spans are rounded
            # to the us (at least 1).
            after, within_ns, ban_ns, factor, max_ns = penalty.compiled()
            ban_us = max(1, round(ban_ns / 1000))
            self._params += tuple(
                str(v).encode()
                for v in (
                    after,
                    max(1, round(within_ns / 1000)),
                    ban_us,
                    repr(factor),
                    max(ban_us, round(max_ns / 1000)),
                    self._min_cap,
                )
            )
            self._nkeys = 2
        shortest = min(float(r[1]) for r in rates)
        wait = min(1.0, shortest)
        self._deny = Decision(False, self._min_cap, 0, wait, wait)
        self._script_clock: Callable[[], int] | None = None
        self._who = _Who("stanchion rate limiter", _LIMITER_MEANWHILE[on_error])
        self._guard = _Guard(self._connector, self._who)
        track(self)

    def __repr__(self) -> str:
        rates = ";".join(str(r) for r in self.rates)
        return (
            f"RedisLimiter({rates!r}, algorithm={self.algorithm!r}, "
            f"storage={self.storage!r})"
        )

    # -- arguments -----------------------------------------------------------

    def _key(self, key: object) -> bytes:
        return self._head + _key_bytes(key) + self._tail

    def _keys(self, key: object) -> tuple[bytes, ...]:
        """The script's keys: the rate state, and the penalty record
        (same hash tag) when there is a penalty."""
        rkey = self._head + _key_bytes(key) + self._tail
        if self._nkeys == 1:
            return (rkey,)
        return (rkey, rkey + b":pn")

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

    def _args(
        self, rkey: tuple[bytes, ...], cost: int, commit: bytes, sent: float
    ) -> tuple[Any, ...]:
        """The script's arguments for a call sent at ``sent`` (monotonic
        seconds). A hit carries a deadline: the server time at which its
        caller gives up (sent + timeout), in the server's clock by the
        connector's ``skew`` (never later than the true one). A hit that reaches the server after that
        (queued behind a stall, sent before a pause and read on resume)
        is not applied: its caller already got the on_error answer."""
        clock = self._script_clock
        if clock is not None:
            return (*rkey, int(clock()), cost, commit, *self._params)
        skew = self._connector.skew
        if skew is not None and commit == b"1":
            # An int: hiredis packs one faster than a float's repr.
            deadline = int(sent * 1e6 + skew + self._connector.timeout_us)
            return (*rkey, b"", cost, deadline, *self._params)
        return (*rkey, b"", cost, commit, *self._params)

    # -- answers -------------------------------------------------------------

    def _late(self, reply: Any, sent: float) -> bool:
        """Learn the server's clock from an answer to a call sent at
        ``sent``; True when the hit arrived past its deadline, yet its
        caller is still here: the deadline was wrong, not late (the
        server's clock stepped, or another server answers since a
        failover), so it is sent once more with the corrected clock."""
        conn = self._connector
        if not conn.deadlines:
            return False
        # The script read the server's clock between the send and now, so
        # the clocks' offset lies in [server - now, server - sent]. The
        # deadline uses the lower end, the largest seen: never late, so a
        # hit is never applied after its caller gave up (at worst it is
        # refused in the last round trip of its timeout). An upper end
        # below the estimate proves the server's clock went back, and a
        # hit refused while its caller waits that it went forward (or a
        # failover): start again from this answer.
        server = reply[-1]
        low = server - time.monotonic() * 1e6
        late = reply[0] == -1
        skew = conn.skew
        if late or skew is None or low > skew or server - sent * 1e6 < skew:
            conn.skew = low
        return bool(late)

    def _conclude(self, reply: Any, cost: int, key: object = None) -> Decision:
        """The Decision for a script's reply, or by the on_error policy
        when Redis did not answer. A reply of seven items is a banned
        key's refusal; one of eight started a ban of ``key``: logged
        here, once."""
        if isinstance(reply, _Unavailable):
            if self.on_error == "allow":
                return Decision(True, self._min_cap, self._min_cap - cost, 0.0, 0.0)
            if self.on_error == "deny":
                return self._deny
            raise StorageUnavailable(
                f"Redis at {self._connector.where} is unavailable"
            ) from reply.cause
        if len(reply) > 6:
            if len(reply) == 8:
                log_ban(key, reply[5] / 1e9, reply[6])
            return Decision(False, reply[1], 0, reply[3] / 1e9, reply[4] / 1e9, True)
        return Decision(
            reply[0] == 1, reply[1], reply[2], reply[3] / 1e9, reply[4] / 1e9
        )

    def _reset_done(self, reply: Any) -> None:
        if isinstance(reply, _Unavailable) and self.on_error == "raise":
            raise StorageUnavailable(
                f"Redis at {self._connector.where} is unavailable"
            ) from reply.cause

    # -- blocking ------------------------------------------------------------

    def _exchange(
        self, link: _SyncLink, rkey: tuple[bytes, ...], cost: int, commit: bytes
    ) -> Any:
        """:meth:`_aexchange` over a blocking link: every call it awaits
        is done at once, so it never suspends."""
        return run_at_once(self._aexchange(at_once(link.call), rkey, cost, commit))

    def _decide(self, key: object, cost: object, commit: bytes) -> Decision:
        rkey = self._keys(key)
        c = self._cost(cost)
        if disabled_now():
            return Decision(True, self._min_cap, self._min_cap)
        link = self._connector.sync_link()
        reply = self._guard.call(self._exchange, link, rkey, c, commit)
        return self._conclude(reply, c, key)

    def hit(self, key: str | bytes, /, cost: int = 1) -> Decision:
        """Consume ``cost`` from every rate for ``key`` if all allow it;
        otherwise consume nothing."""
        return self._decide(key, cost, b"1")

    def peek(self, key: str | bytes, /, cost: int = 1) -> Decision:
        """The Decision ``hit`` would return now, consuming nothing."""
        return self._decide(key, cost, b"0")

    def reset(self, key: str | bytes | None = None) -> None:
        """Forget one key (back to full), or every key of this limiter."""
        link = self._connector.sync_link()
        if key is None:
            reply = self._guard.call(link.scan_delete, self._scan)
            if not isinstance(reply, _Unavailable) and self.penalty is not None:
                reply = self._guard.call(link.scan_delete, self._pscan)
        else:
            reply = self._guard.call(link.call, "UNLINK", *self._keys(key))
        self._reset_done(reply)

    def acquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision:
        """Hit, waiting while denied. With a ``timeout`` (seconds), raises
        RateLimitExceeded as soon as the wait would exceed it."""
        return wait_for_hit(self.hit, key, cost, timeout)

    # -- asyncio: the same steps, awaiting the I/O -----------------------------

    async def _aexchange(
        self,
        call: Callable[..., Awaitable[Any]],
        rkey: tuple[bytes, ...],
        cost: int,
        commit: bytes,
        again: bool = False,
    ) -> Any:
        """One decision's script call through ``call`` (a link's): the
        script by its SHA, or by its source where the server lacks it, and
        once more if a hit was refused as late while its caller waits."""
        sent = time.monotonic()
        args = self._args(rkey, cost, commit, sent)
        try:
            reply = await call("EVALSHA", self._sha, self._nkeys, *args)
        except NoScriptError:
            reply = await call("EVAL", self._src, self._nkeys, *args)
        if self._late(reply, sent):
            if again:
                raise _RedisTimeoutError("Redis ran the hit after its deadline")
            return await self._aexchange(call, rkey, cost, commit, True)
        return reply

    async def _adecide(self, key: object, cost: object, commit: bytes) -> Decision:
        rkey = self._keys(key)
        c = self._cost(cost)
        if disabled_now():
            return Decision(True, self._min_cap, self._min_cap)
        link = self._connector.async_link
        reply = await self._guard.acall(self._aexchange, link.call, rkey, c, commit)
        return self._conclude(reply, c, key)

    async def ahit(self, key: str | bytes, cost: int = 1) -> Decision:
        return await self._adecide(key, cost, b"1")

    async def apeek(self, key: str | bytes, cost: int = 1) -> Decision:
        return await self._adecide(key, cost, b"0")

    async def areset(self, key: str | bytes | None = None) -> None:
        link = self._connector.async_link
        if key is None:
            reply = await self._guard.acall(link.scan_delete, self._scan)
            if not isinstance(reply, _Unavailable) and self.penalty is not None:
                reply = await self._guard.acall(link.scan_delete, self._pscan)
        else:
            reply = await self._guard.acall(link.call, "UNLINK", *self._keys(key))
        self._reset_done(reply)

    async def aacquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision:
        """Like ``acquire``, sleeping with asyncio (never blocks the loop)."""
        return await await_hit(self.ahit, key, cost, timeout)

    # -- the penalty box: list, inspect and lift bans ---------------------------
    #
    # These raise StorageUnavailable when Redis does not answer, whatever
    # on_error says (that policy is for hits): a ban list must not look
    # empty because Redis is down.

    def _pkey(self, key: object) -> bytes:
        return self._key(key) + b":pn"

    def _key_of(self, pkey: bytes) -> bytes:
        """The client key inside a penalty record's Redis key."""
        return pkey[len(self._head) : -len(self._tail) - 3]

    def _state_args(self, pkey: bytes) -> tuple[Any, ...]:
        clock = self._script_clock
        now = b"" if clock is None else int(clock())
        return (pkey, now)

    def _ban(self, key: object, reply: Any, listing: bool) -> Ban | None:
        """A Ban from the state script's reply (``None`` when the record
        holds nothing now, or, when ``listing``, holds no ban now)."""
        p = self.penalty
        if p is None or len(reply) < 2:
            return None
        now = reply[0]
        window, strikes, until, bans, last = struct.unpack("<5d", reply[1])
        within = max(1, round(p.within * 1e6))
        left = max(0, until - now)
        if not (bans > 0 and now < until + max(last, within)):
            bans = 0
        if not (strikes > 0 and now - window < within):
            strikes = 0
        if left == 0 and (listing or (bans == 0 and strikes == 0)):
            return None
        return Ban(key, left / 1e6, int(bans), int(strikes))  # type: ignore[arg-type]

    def _admin(self, reply: Any) -> Any:
        if isinstance(reply, _Unavailable):
            raise StorageUnavailable(
                f"Redis at {self._connector.where} is unavailable"
            ) from reply.cause
        return reply

    def _state_call(
        self,
        call: Callable[..., Any],
        pkey: bytes,
        script: tuple[bytes, bytes] = BAN_STATE,
    ) -> Any:
        src, sha = script
        args = self._state_args(pkey)
        try:
            return call("EVALSHA", sha, 1, *args)
        except NoScriptError:
            return call("EVAL", src, 1, *args)

    async def _astate_call(
        self,
        call: Callable[..., Awaitable[Any]],
        pkey: bytes,
        script: tuple[bytes, bytes] = BAN_STATE,
    ) -> Any:
        src, sha = script
        args = self._state_args(pkey)
        try:
            return await call("EVALSHA", sha, 1, *args)
        except NoScriptError:
            return await call("EVAL", src, 1, *args)

    def get_ban(self, key: str | bytes) -> Ban | None:
        """The key's penalty state (``Ban.remaining`` 0.0 when not banned
        now), or None when it has none. ``Ban.key`` is as given."""
        pkey = self._pkey(key)
        if self.penalty is None:
            return None
        link = self._connector.sync_link()
        reply = self._admin(self._guard.call(self._state_call, link.call, pkey))
        return self._ban(key, reply, False)

    def bans(self) -> list[Ban]:
        """The keys banned now (``Ban.key`` as bytes), on every host."""
        if self.penalty is None:
            return []
        link = self._connector.sync_link()
        pkeys = self._admin(self._guard.call(link.scan_keys, self._pscan))
        out = []
        for pkey in pkeys:
            reply = self._admin(self._guard.call(self._state_call, link.call, pkey))
            ban = self._ban(self._key_of(pkey), reply, True)
            if ban is not None:
                out.append(ban)
        return out

    def lift(self, key: str | bytes) -> bool:
        """Forget the key's ban, ban count and counted refusals, for every
        host. True when the key was banned. One script reads and deletes
        the record: a hit of another client lands before it (its ban is
        lifted, and reported) or after it (its ban stays)."""
        pkey = self._pkey(key)
        if self.penalty is None:
            return False
        link = self._connector.sync_link()
        reply = self._admin(self._guard.call(self._state_call, link.call, pkey, LIFT))
        ban = self._ban(key, reply, False)
        return ban is not None and ban.banned

    async def aget_ban(self, key: str | bytes) -> Ban | None:
        pkey = self._pkey(key)
        if self.penalty is None:
            return None
        link = self._connector.async_link
        reply = self._admin(await self._guard.acall(self._astate_call, link.call, pkey))
        return self._ban(key, reply, False)

    async def abans(self) -> list[Ban]:
        if self.penalty is None:
            return []
        link = self._connector.async_link
        pkeys = self._admin(await self._guard.acall(link.scan_keys, self._pscan))
        out = []
        for pkey in pkeys:
            reply = self._admin(
                await self._guard.acall(self._astate_call, link.call, pkey)
            )
            ban = self._ban(self._key_of(pkey), reply, True)
            if ban is not None:
                out.append(ban)
        return out

    async def alift(self, key: str | bytes) -> bool:
        pkey = self._pkey(key)
        if self.penalty is None:
            return False
        link = self._connector.async_link
        reply = self._admin(
            await self._guard.acall(self._astate_call, link.call, pkey, LIFT)
        )
        ban = self._ban(key, reply, False)
        return ban is not None and ban.banned
