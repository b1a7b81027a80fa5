"""Per-host budgets for httpx clients: a transport that stays inside the
rate limits of the hosts an app calls.

::

    import httpx
    import stanchion.httpx

    client = httpx.Client(
        transport=stanchion.httpx.LimitedTransport(
            rates={"api.example.com": "350 per 30 seconds;10/second"},
        )
    )

Each host gets a :class:`~stanchion._budget.Budget` named
``"host:<host>"`` (``"host:<host>:<port>"`` for a ``host:port`` key), so
every transport and every process given the same ``storage`` shares it:
the host's rates (paced: no interval of a rate's length ever holds more
requests than its count), the pauses its answers ask for (``Retry-After``,
``RateLimit`` / ``X-RateLimit-*`` headers, a bare 429's doubling back-off)
and a circuit breaker (``failures`` failed requests in a row pause the host
for ``cooldown`` seconds, then one probe request at a time tries it).

Before a request the transport takes one request's worth of the host's
budget, sleeping up to ``wait`` seconds for it; past that it raises
:class:`HostRateLimited` (or answers a 429 of its own, ``on_limit=
"response"``) without sending anything. After the response's status and
headers arrive (the body is not read: streaming works) it tells the
budget how the request went. It never retries a request.

Hosts: a key of ``rates`` is a host (``"api.example.com"``: any port) or a
host and port (``"api.example.com:8443"``, which wins over the bare host).
Hosts compare as httpx normalises them: case-insensitive, international
names in their IDNA form, IPv6 addresses in brackets (``"[::1]:8080"``),
and further as one host: a name's trailing dot dropped, an IPv6 address
compressed (``[0:0::1]`` is ``[::1]``), an IPv4 one dotted (``127.1`` is
``127.0.0.1``); a
request without a port has its scheme's default (80 for http, 443 for
https). Other hosts get the ``default`` rates, one budget per host and
non-default port; with ``default=None`` they are not rate limited, but
with ``learn=True`` they still get the pauses their answers ask for (no
breaker). At most ``max_hosts`` of these are tracked at once, the least
recently used dropped first; a dropped host loses only this process's
count of its failures in a row (its rates and pauses live in the
storage, one limiter per distinct rates and one pauses table for all the
hosts, each bounded in size itself; in process, the hosts of ``rates``
have a pauses table of their own, which no number of other hosts fills).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import math
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from ._budget import _MAX_SECONDS, Budget, _count, _positive
from ._core import Decision
from ._limiter import Limiter, RateLimiter, RateLimitExceeded
from ._pauses import pauses_for
from ._rates import Rate, normalize_rates

__all__ = ["AsyncLimitedTransport", "HostRateLimited", "LimitedTransport"]

ON_LIMIT = ("raise", "response")
# A host that may be an IPv4 address in one of inet_aton's forms.
_NUMERIC = re.compile(r"[0-9a-fx.]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A rates key: a host name or address, or an IPv6 address in brackets,
# then an optional port. The host itself is checked by httpx.URL.
_HOST_KEY = re.compile(r"(\[[0-9A-Za-z:.%]+\]|[^\s:/?#@\[\]\\]+)(?::([0-9]{1,5}))?")


class HostRateLimited(httpx.TransportError, RateLimitExceeded):
    """A request not sent: its host had no budget within the transport's
    ``wait``. Both an ``httpx.TransportError`` (so ``except
    httpx.HTTPError`` catches it) and a ``stanchion.RateLimitExceeded``.

    ``host``: the budget's host (``"api.example.com"`` or
    ``"api.example.com:8443"``); ``retry_after``: seconds after which the
    host may have budget again; ``request``: the httpx request.
    """

    def __init__(
        self, host: str, retry_after: float, *, request: httpx.Request, limit: int = 0
    ) -> None:
        # Not super().__init__: httpx's and stanchion's constructors take
        # different arguments; set what each base's attributes need.
        Exception.__init__(self, _refusal(host, retry_after))
        self.request = request
        self.host = host
        self.decision = Decision(False, limit, 0, retry_after, retry_after)
        self.retry_after = self.decision.retry_after


def _refusal(host: str, retry_after: float) -> str:
    return (
        f"no budget for {host} now (its rates, a pause it asked for or its "
        f"circuit breaker): retry after {retry_after:.3f}s"
    )


def _default_ok(response: httpx.Response) -> bool:
    code = response.status_code
    return code != 429 and code < 500


def _check_rate(what: str, rate: object) -> int:
    """Check a host's rate as Budget takes it; the smallest count (0 for
    "auto"), for the Decision of a refusal."""
    if rate == "auto":
        return 0
    try:
        rates = normalize_rates(rate)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{what}: {e}") from None
    return max(1, int(min(r.limit for r in rates)))


def _authority(host: str, port: int | None) -> str:
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def _normal_host(host: str) -> str:
    """One spelling per host: lowercase, without a fully qualified name's
    trailing dot, an IPv6 address in its compressed form."""
    host = host.lower()
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return host
    host = host.rstrip(".") or host
    if _NUMERIC.fullmatch(host):
        # An IPv4 address as the resolver reads it: 127.1, 2130706433,
        # 0x7f.0.0.1 all connect to 127.0.0.1.
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return host
    return host


def _parse_host(key: object) -> tuple[str, int | None]:
    """(host, port) of a ``rates`` key, normalised as httpx does a URL's."""
    if not isinstance(key, str):
        raise TypeError(f"rates keys must be str, not {type(key).__name__}")
    m = _HOST_KEY.fullmatch(key)
    host = None
    if m is not None:
        try:
            host = httpx.URL(f"http://{m[1]}/").raw_host.decode("ascii")
        except (httpx.InvalidURL, UnicodeError):
            host = None
    if not host:
        raise ValueError(
            "rates keys must be a host ('api.example.com') or host:port "
            f"('api.example.com:8443'), got {key!r}"
        )
    port = None if m is None or m[2] is None else int(m[2])
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {key!r}")
    return _normal_host(host), port


class _Host:
    """One host's budget, and how its requests settle."""

    __slots__ = ("authority", "breaker", "budget", "limit")

    def __init__(self, authority: str, budget: Budget, limit: int, breaker: bool):
        self.authority = authority
        self.budget = budget
        self.limit = limit  # the smallest rate's count, 0 for none
        self.breaker = breaker  # False: only the host's own pauses


class _Hosts:
    """A transport's settings and its hosts' budgets: what the sync and
    asyncio transports share. Thread-safe."""

    def __init__(
        self,
        rates: Mapping[str, object] | None,
        default: object,
        storage: object,
        wait: float,
        on_limit: str,
        ok: Callable[[httpx.Response], bool] | None,
        failures: int,
        cooldown: float,
        max_pause: float,
        learn: bool,
        max_hosts: int,
    ) -> None:
        if rates is None:
            rates = {}
        if not isinstance(rates, Mapping):
            raise TypeError(
                f"rates must be a mapping of host to rates, not {type(rates).__name__}"
            )
        self.wait = _positive("wait", wait, zero_ok=True)
        if not isinstance(on_limit, str):
            raise TypeError(f"on_limit must be a str, not {type(on_limit).__name__}")
        if on_limit not in ON_LIMIT:
            raise ValueError(
                f"on_limit must be 'raise' or 'response', got {on_limit!r}"
            )
        if ok is not None and not callable(ok):
            raise TypeError(f"ok must be callable, not {type(ok).__name__}")
        if inspect.iscoroutinefunction(ok) or inspect.iscoroutinefunction(
            getattr(ok, "__call__", None)  # noqa: B004  # the method, if any
        ):
            # Its coroutine would be true: every response a success.
            raise TypeError("ok must be a plain function returning a bool, not async")
        if not isinstance(learn, bool):
            raise TypeError(f"learn must be a bool, not {type(learn).__name__}")
        self.budget_options: dict[str, Any] = {
            "failures": _count("failures", failures),
            "cooldown": _positive("cooldown", cooldown, most=_MAX_SECONDS),
            "max_pause": _positive("max_pause", max_pause, most=_MAX_SECONDS),
        }
        self.max_hosts = _count("max_hosts", max_hosts)
        self.default_limit = (
            None if default is None else _check_rate("default", default)
        )
        fixed: dict[tuple[str, int | None], tuple[str, object, int]] = {}
        for key, rate in rates.items():
            host, port = _parse_host(key)
            if (host, port) in fixed:
                raise ValueError(f"rates name the host {key!r} twice")
            limit = _check_rate(f"rates[{key!r}]", rate)
            fixed[host, port] = (_authority(host, port), rate, limit)
        # One pauses table and one limiter per distinct rates for all the
        # hosts (each its own key in them): a shared-memory storage opens a
        # file for each, Redis shares its connections.
        self.pauses = pauses_for(storage)
        # In process, the hosts outside rates (any number of them, named
        # by whoever gives the URLs) get a table of their own: filling it
        # does not forget the pauses of the hosts in rates.
        self.other_pauses = self.pauses if storage is not None else pauses_for(None)
        self.storage = storage
        self.limiters: dict[tuple[Rate, ...], RateLimiter] = {}
        self.default = default
        self.on_limit = on_limit
        self.ok = _default_ok if ok is None else ok
        self.learn = learn
        # The hosts of `rates`, made now (their number is the user's); the
        # others on first use, at most max_hosts, least recently used first
        # out.
        self.fixed = {
            where: _Host(name, self._budget(name, rate, self.pauses), limit, True)
            for where, (name, rate, limit) in fixed.items()
        }
        self.others: OrderedDict[tuple[str, int | None], _Host] = OrderedDict()
        self.lock = threading.Lock()

    def _budget(self, authority: str, rate: object, pauses: Any) -> Budget:
        if rate is not None and rate != "auto":
            rates = tuple(normalize_rates(rate))
            limiter = self.limiters.get(rates)
            if limiter is None:
                # Paced, as Budget paces its own (burst=1).
                limiter = Limiter(list(rates), burst=1, storage=self.storage)
                self.limiters[rates] = limiter
            rate = limiter
        return Budget("host:" + authority, rate, pauses=pauses, **self.budget_options)

    def host_of(self, url: httpx.URL) -> _Host | None:
        """The request's host budget; None to send it as it is."""
        host = _normal_host(url.raw_host.decode("ascii"))
        port = url.port
        if self.fixed:
            known = self.fixed.get((host, port or _DEFAULT_PORTS.get(url.scheme)))
            if known is None:
                known = self.fixed.get((host, None))
            if known is not None:
                return known
        if self.default is None and not self.learn:
            return None
        where = (host, port)
        with self.lock:
            other = self.others.get(where)
            if other is not None:
                self.others.move_to_end(where)
                return other
            authority = _authority(host, port)
            if self.default is None:
                budget = self._budget(authority, None, self.other_pauses)
                other = _Host(authority, budget, 0, False)
            else:
                assert self.default_limit is not None
                budget = self._budget(authority, self.default, self.other_pauses)
                other = _Host(authority, budget, self.default_limit, True)
            self.others[where] = other
            if len(self.others) > self.max_hosts:
                self.others.popitem(last=False)
            return other

    def refuse(
        self, request: httpx.Request, host: _Host, retry_after: float
    ) -> httpx.Response:
        """A request that found no budget in time: raise, or the 429 of
        ``on_limit="response"``."""
        if self.on_limit == "raise":
            raise HostRateLimited(
                host.authority, retry_after, request=request, limit=host.limit
            )
        return httpx.Response(
            429,
            headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
            text=_refusal(host.authority, retry_after) + "\n",
            request=request,
        )

    def answered(self, host: _Host, response: httpx.Response) -> dict[str, Any]:
        """settle()'s arguments for a response (its status and headers)."""
        ok = self.ok(response) if host.breaker else True
        return {"ok": ok, "answer": response if self.learn else None}

    def failed(self, host: _Host, error: BaseException) -> dict[str, Any] | None:
        """settle()'s arguments for a request that raised; None to abandon
        it: cancelled or interrupted (no word on the host), or not sent (a
        wrapped transport's HostRateLimited)."""
        if not isinstance(error, Exception) or isinstance(error, HostRateLimited):
            return None
        return {
            "ok": not host.breaker,
            "error": error if self.learn else None,
        }


class _Deadline:
    """When waiting for a budget must stop: ``wait`` seconds after the
    first refusal."""

    __slots__ = ("end", "wait")

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.end: float | None = None

    def reached(self, delay: float) -> bool:
        """Whether a wait of ``delay`` seconds would pass the deadline."""
        now = time.monotonic()
        if self.end is None:
            self.end = now + self.wait
        return now + delay > self.end


class _Options:
    """The constructor of both transports: ``_kind`` is the transports
    one wraps, ``_make`` its default one."""

    _kind: type
    _make: Callable[[], Any]

    def __init__(
        self,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        *,
        rates: Mapping[str, object] | None = None,
        default: object = None,
        storage: object = None,
        wait: float = 10.0,
        on_limit: str = "raise",
        ok: Callable[[httpx.Response], bool] | None = None,
        failures: int = 5,
        cooldown: float = 30.0,
        max_pause: float = 3600.0,
        learn: bool = True,
        max_hosts: int = 1024,
    ) -> None:
        if transport is not None and not isinstance(transport, self._kind):
            if self._kind is httpx.BaseTransport:
                hint = "AsyncLimitedTransport wraps asyncio ones"
            else:
                hint = "LimitedTransport wraps blocking ones"
            raise TypeError(
                f"transport must be an httpx.{self._kind.__name__}, not "
                f"{type(transport).__name__} ({hint})"
            )
        self._hosts = _Hosts(
            rates,
            default,
            storage,
            wait,
            on_limit,
            ok,
            failures,
            cooldown,
            max_pause,
            learn,
            max_hosts,
        )
        self._transport: Any = self._make() if transport is None else transport

    def budget(self, url: httpx.URL | str) -> Budget | None:
        """The budget requests to ``url`` go through (None: they are sent
        as they are), e.g. for ``budget(url).state()``."""
        host = self._hosts.host_of(httpx.URL(url))
        return None if host is None else host.budget


class LimitedTransport(_Options, httpx.BaseTransport):
    """An httpx transport that applies per-host budgets to every request
    (see the module doc). ``transport``: the one that sends the requests
    (default ``httpx.HTTPTransport()``).

    ``rates``: ``{host or "host:port": rates}`` in any notation
    ``Limiter`` takes, or ``"auto"``; ``default``: the rates of other
    hosts (None: not limited). ``storage``: shares the budgets (None: this
    transport only; ``SharedMemoryStorage``, ``RedisStorage``). ``wait``:
    the longest a request waits for its budget, in seconds (0: never);
    then ``on_limit="raise"`` raises :class:`HostRateLimited` and
    ``"response"`` answers a 429 with ``Retry-After``. ``ok(response)``:
    whether a response is a success for the breaker (default: neither 429
    nor 5xx); ``failures`` in a row pause the host for ``cooldown``
    seconds; ``max_pause`` caps a pause a host asks for. ``learn=False``
    ignores what answers ask for (the breaker still counts failures).
    ``max_hosts``: hosts not in ``rates`` tracked at once.
    """

    _kind = httpx.BaseTransport
    _make = httpx.HTTPTransport

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        hosts = self._hosts
        host = hosts.host_of(request.url)
        if host is None:
            return self._transport.handle_request(request)  # type: ignore[no-any-return]
        deadline = _Deadline(hosts.wait)
        while delay := host.budget.take():
            if deadline.reached(delay):
                return hosts.refuse(request, host, delay)
            time.sleep(delay)
        response = None
        try:
            response = self._transport.handle_request(request)
            outcome = hosts.answered(host, response)
        except BaseException as e:
            if response is not None:  # ok() raised: nobody will read it
                response.close()
            failed = hosts.failed(host, e)
            if failed is None:
                host.budget.abandon()
            else:
                host.budget.settle(**failed)
            raise
        host.budget.settle(**outcome)
        return response  # type: ignore[no-any-return]

    def close(self) -> None:
        self._transport.close()


class AsyncLimitedTransport(_Options, httpx.AsyncBaseTransport):
    """:class:`LimitedTransport` for ``httpx.AsyncClient``: ``transport``
    defaults to ``httpx.AsyncHTTPTransport()``; waits sleep with asyncio."""

    _kind = httpx.AsyncBaseTransport
    _make = httpx.AsyncHTTPTransport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        hosts = self._hosts
        host = hosts.host_of(request.url)
        if host is None:
            return await self._transport.handle_async_request(request)  # type: ignore[no-any-return]
        deadline = _Deadline(hosts.wait)
        while delay := await host.budget.atake():
            if deadline.reached(delay):
                return hosts.refuse(request, host, delay)
            await asyncio.sleep(delay)
        response = None
        try:
            response = await self._transport.handle_async_request(request)
            outcome = hosts.answered(host, response)
        except BaseException as e:
            if response is not None:  # ok() raised: nobody will read it
                await response.aclose()
            failed = hosts.failed(host, e)
            if failed is None:
                await host.budget.aabandon()
            else:
                await host.budget.asettle(**failed)
            raise
        await host.budget.asettle(**outcome)
        return response  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self._transport.aclose()
