"""The serving flow: :class:`ResponseCache` and :class:`CacheFront`.

:class:`ResponseCache` takes the settings, holds the store and the
counters, and runs a request through the rules of :class:`Rules`:
lookup, answer from the cache or call the upstream (once at a time per
key: single flight), store, and refresh stale entries in the background.
:class:`CacheFront` is what the ASGI and WSGI middleware share.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote

from .. import http as _http
from .._checks import check_int, check_seconds
from .._core import Cache
from .._registry import track
from .entries import SENT, Entry, Reply, Upstream
from .flights import CALL, Flight, Steps, _LoopFlight, _ThreadFlight, arun, run
from .keys import (
    _ALWAYS_IDENTITY,
    _HOST,
    _PATH_SAFE,
    IDENTITY_HEADERS,
    Plan,
    _host_part,
    _names,
    normalize_query,
)
from .rules import _NEVER, Rules
from .stores import Store, _LocalStore, _MemcachedStore, _RedisStore, _weigh


class ResponseCache(Rules):
    """The response cache rules and store; see :mod:`stanchion.respcache`.

    ``ttl`` seconds an answer stays fresh; ``backend`` None (a C Cache in
    this process of at most ``maxweight`` bytes), a ``stanchion.Cache``
    of your own (give it ``maxweight`` and ``weigh``), or a
    ``stanchion.RedisCache`` (shared); ``statuses`` the statuses stored;
    ``max_age`` adds ``Cache-Control: public, max-age=N``;
    ``stale_while_revalidate`` / ``stale_if_error`` seconds past ``ttl``
    an entry may still be served; ``max_body`` bytes buffered per response
    (larger ones pass through uncached); ``identity_headers`` the request
    headers that carry a credential (default ``IDENTITY_HEADERS``;
    Authorization, Proxy-Authorization, Cookie and each ``api_key(...)``
    header count whatever it says): a request with one is personal, never
    answered from nor kept in the shared cache; ``vary_identity`` keys
    entries by those credentials instead of refusing them;
    ``session_cookies`` names the cookies that identify a user (None: any
    cookie does); ``allowed_hosts`` the host names cached (``".example.com"``
    for the domain and its subdomains; None: any); ``trusted_proxies``
    (addresses and CIDR ranges, or a ``stanchion.http.ClientAddress``)
    the peers whose forwarded host and scheme are believed;
    ``client_refresh`` lets a request's ``Cache-Control: no-cache``
    replace the stored entry (off: that client alone gets a fresh answer);
    ``tags`` strings (or a function of the request's path returning
    them) to invalidate entries by; ``clock`` a function returning
    seconds (tests).
    """

    def __init__(
        self,
        *,
        ttl: float = 60.0,
        backend: Any = None,
        statuses: Iterable[int] = (200,),
        max_age: int | None = None,
        maxweight: int = 64 * 1024 * 1024,
        max_body: int = 1024 * 1024,
        stale_while_revalidate: float = 0.0,
        stale_if_error: float = 0.0,
        vary_identity: bool = False,
        session_cookies: Iterable[str] | None = None,
        identity_headers: Iterable[str] = IDENTITY_HEADERS,
        allowed_hosts: Iterable[str] | None = None,
        trusted_proxies: Iterable[str] | _http.ClientAddress = (),
        client_refresh: bool = False,
        tags: Iterable[str] | Callable[[str], Iterable[str]] = (),
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.ttl = check_seconds("ttl", ttl, zero_ok=False)
        if isinstance(statuses, (str, bytes)) or not isinstance(statuses, Iterable):
            raise TypeError("statuses must be an iterable of ints")
        st = frozenset(statuses)
        for s in st:
            check_int("statuses", s, 100)
            if s >= 500 or s in _NEVER or s > 599:
                raise ValueError(
                    f"statuses must not include {s}: 5xx and 429 are never cached"
                )
        self.statuses = st
        if max_age is not None:
            check_int("max_age", max_age, 0)
        self.max_age = max_age
        self.cache_control = None if max_age is None else f"public, max-age={max_age}"
        check_int("maxweight", maxweight, 1)
        self.max_body = check_int("max_body", max_body, 0)
        self.swr = check_seconds(
            "stale_while_revalidate", stale_while_revalidate, zero_ok=True
        )
        self.sie = check_seconds("stale_if_error", stale_if_error, zero_ok=True)
        if not isinstance(vary_identity, bool):
            raise TypeError(
                f"vary_identity must be a bool, not {type(vary_identity).__name__}"
            )
        self.vary_identity = vary_identity
        if session_cookies is None:
            self.session_cookies: frozenset[str] | None = None
        else:
            if isinstance(session_cookies, str) or not isinstance(
                session_cookies, Iterable
            ):
                raise TypeError(
                    "session_cookies must be an iterable of cookie names or None"
                )
            names = frozenset(session_cookies)
            if not all(isinstance(n, str) and n for n in names):
                raise TypeError("session_cookies must hold non-empty str names")
            self.session_cookies = names
        self.identity_headers = frozenset(
            _names("identity_headers", identity_headers)
        ) | frozenset(_ALWAYS_IDENTITY)
        self._identity_for: tuple[int, tuple[str, ...]] = (-1, ())
        if allowed_hosts is None:
            self.allowed_hosts: frozenset[str] | None = None
            self.allowed_domains: tuple[str, ...] = ()
        else:
            hosts = _names("allowed_hosts", allowed_hosts)
            for h in hosts:
                # "*", a port or a URL would match no request: nothing
                # cached, silently.
                if "*" in h or not _HOST(h.lstrip(".")) or _host_part(h) != h:
                    raise ValueError(
                        "allowed_hosts holds host names (any port), or "
                        f"'.example.com' for a domain and its subdomains: {h!r}"
                    )
            self.allowed_hosts = frozenset(h for h in hosts if h[0] != ".")
            self.allowed_domains = tuple(h for h in hosts if h[0] == ".")
        if isinstance(trusted_proxies, _http.ClientAddress):
            proxies = trusted_proxies
        else:
            proxies = _http.ClientAddress(trusted_proxies)
        self.proxies = proxies if proxies.has_proxies else None
        if not isinstance(client_refresh, bool):
            raise TypeError(
                f"client_refresh must be a bool, not {type(client_refresh).__name__}"
            )
        self.client_refresh = client_refresh
        self._origins: dict[tuple[str, str], str | None] = {}
        if callable(tags):
            self.tags_of: Callable[[str], Iterable[str]] | None = tags
            self.tags: tuple[str, ...] = ()
        else:
            if isinstance(tags, str) or not isinstance(tags, Iterable):
                raise TypeError(
                    "tags must be an iterable of str or a function of the path"
                )
            self.tags = tuple(tags)
            if not all(isinstance(t, str) and t for t in self.tags):
                raise TypeError("tags must be non-empty str")
            self.tags_of = None
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning seconds")
        self.clock: Callable[[], float] = clock or time.time
        # Entries are kept past their freshness for the stale options.
        self.keep = self.ttl + max(self.swr, self.sie)
        if backend is None:
            self.store: Store = _LocalStore(
                Cache(None, None, clock, maxweight=maxweight, weigh=_weigh)
            )
        elif isinstance(backend, Cache):
            self.store = _LocalStore(backend)
        elif type(backend).__name__ == "RedisCache" and hasattr(backend, "namespace"):
            self.store = _RedisStore(backend)
        elif type(backend).__name__ == "MemcachedCache" and hasattr(
            backend, "namespace"
        ):
            self.store = _MemcachedStore(backend)
        else:
            raise TypeError(
                "backend must be None, a stanchion.Cache, a stanchion.RedisCache "
                f"or a stanchion.MemcachedCache, not {type(backend).__name__}"
            )
        self.hits = self.misses = self.stale = self.stores = self.not_modified = 0
        self.flights: dict[str, Any] = {}
        self.refreshing: set[str] = set()
        self._refresh_lock = threading.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        track(self)

    def _set_clock(self, clock: Callable[[], float] | None) -> None:
        """stanchion.testing's fake clock (None: back to ``time.time``);
        clear the entries first, their times are the old clock's."""
        self.clock = clock or time.time

    # -- storage (sync) --------------------------------------------------------

    def lookup(self, plan: Plan) -> Entry | None:
        vary = self.store.get_vary(plan.resource)
        if vary is None:
            return None
        entry: Entry | None = self.store.get(plan.key(vary))
        return entry

    def put(self, entry: Entry) -> None:
        self.stores += 1
        self.store.put(entry, self._vary_of(entry), self.keep)

    async def alookup(self, plan: Plan) -> Entry | None:
        vary = await self.store.aget_vary(plan.resource)
        if vary is None:
            return None
        entry: Entry | None = await self.store.aget(plan.key(vary))
        return entry

    async def aput(self, entry: Entry) -> None:
        self.stores += 1
        await self.store.aput(entry, self._vary_of(entry), self.keep)

    # -- the whole flow, for adapters that call their upstream as a function ---
    #
    # serve and aserve are thin shells: a lookup, the pure decision of
    # _served, then the steps of a miss (_miss) or of a refresh (_refresh),
    # written once as generators that flights.run does blocking and
    # flights.arun under asyncio.

    def serve(
        self,
        plan: Plan,
        upstream: Callable[[], Upstream],
        background: Callable[[], Upstream] | None = None,
    ) -> Reply:
        """Answer ``plan`` (blocking): from the cache, or by calling
        ``upstream`` (at most once at a time per key in this process).
        ``background`` is a variant of ``upstream`` safe to call from
        another thread, for stale-while-revalidate."""
        entry = None if plan.personal or plan.revalidate else self.lookup(plan)
        if entry is not None:
            reply, refresh = self._served(plan, entry, background is not None)
            if refresh and self._refresh_begin(entry.key):
                assert background is not None
                steps = self._refresh(plan, entry.key)
                args = (steps, background, self.put)
                threading.Thread(target=run, args=args, daemon=True).start()
            if reply is not None:
                return reply
        return run(self._miss(plan, entry, _ThreadFlight), upstream, self.put)

    async def aserve(
        self,
        plan: Plan,
        upstream: Callable[[], Awaitable[Upstream]],
        background: Callable[[], Awaitable[Upstream]] | None = None,
    ) -> Reply:
        """``serve`` for asyncio: single flight through a future per key,
        stale-while-revalidate through a task."""
        entry = None if plan.personal or plan.revalidate else await self.alookup(plan)
        if entry is not None:
            reply, refresh = self._served(plan, entry, background is not None)
            if refresh and self._refresh_begin(entry.key):
                assert background is not None
                steps = self._refresh(plan, entry.key)
                task = asyncio.get_running_loop().create_task(
                    arun(steps, background, self.aput)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if reply is not None:
                return reply
        return await arun(self._miss(plan, entry, _LoopFlight), upstream, self.aput)

    # -- the steps, shared by serve and aserve ---------------------------------

    def _miss(
        self, plan: Plan, stale: Entry | None, flight: Callable[[], Flight]
    ) -> Steps[Reply]:
        """A request the cache does not answer. When its answer may be
        stored, identical requests share one upstream call (single
        flight): the first leads, the others wait for it (when they can:
        a thread for a thread's flight, a task for one of its own loop's)
        and answer from what it stored, or go upstream on their own."""
        self.misses += 1
        if not plan.store:
            return (yield from self._fetch(plan, stale))
        fkey = plan.base + "\0" + plan.identity
        mine = flight()
        other = self.flights.setdefault(fkey, mine)
        if other is not mine:
            if mine.can_join(other):
                joined = self._joined(plan, (yield other))
                if joined is not None:
                    return joined
            return (yield from self._fetch(plan, stale))
        entry = None
        try:
            # Another flight may have landed between this request's lookup
            # and its taking the lead: answer from it rather than call the
            # upstream again. Only in process, where a lookup is no I/O,
            # and not for a client's refresh (no-cache), which goes upstream.
            again = None if self.store.shared or plan.revalidate else self.lookup(plan)
            if again is not None and again is not stale and self.age(again) < self.ttl:
                joined = self._joined(plan, again)
                if joined is not None:
                    entry = again
                    return joined
            reply = yield from self._fetch(plan, stale)
            entry = reply.entry
            return reply
        finally:
            if self.flights.get(fkey) is mine:
                del self.flights[fkey]
            mine.land(entry)

    def _fetch(self, plan: Plan, stale: Entry | None) -> Steps[Reply]:
        """Call the upstream, store what may be kept, and close the
        upstream's response unless it goes to the client."""
        try:
            up = yield CALL
        except Exception as exc:
            return self._failed(plan, stale, exc)
        reply, entry, done = self._settle(plan, up, stale)
        try:
            if entry is not None:
                yield entry
        finally:
            if done:
                _close(up.native)
        return reply

    def _refresh(self, plan: Plan, key: str) -> Steps[None]:
        """A background refresh of ``key`` (begun by _refresh_begin): its
        answer is stored when it may be, and goes to nobody."""
        try:
            up = yield CALL
            try:
                entry = self._refreshed(plan, up)
                if entry is not None:
                    yield entry
            finally:
                _close(up.native)
        except Exception:
            pass  # the stale entry stays until it expires
        finally:
            self._refresh_end(key)

    # -- decisions shared by serve and aserve ----------------------------------

    def _served(
        self, plan: Plan, entry: Entry, can_refresh: bool
    ) -> tuple[Reply | None, bool]:
        """What a stored entry answers: a hit while fresh; a hit and a
        background refresh while within stale-while-revalidate (when the
        caller can refresh); else nothing (it is only a stale fallback)."""
        age = self.age(entry)
        if age < self.ttl:
            self.hits += 1
            return self.hit(plan, entry), False
        if age < self.ttl + self.swr and can_refresh:
            self.hits += 1
            self.stale += 1
            # A HEAD's refresh would run the app for nothing (its answer
            # is not stored): only a request that may store refreshes.
            return self.hit(plan, entry), plan.store
        return None, False

    def _joined(self, plan: Plan, entry: Entry | None) -> Reply | None:
        """A hit from what another caller's flight stored, when that is
        this request's variant (its Vary headers may differ)."""
        if entry is not None and entry.key == plan.key(self._vary_of(entry)):
            self.misses -= 1
            self.hits += 1
            return self.hit(plan, entry)
        return None

    def _stale_on_error(self, plan: Plan, stale: Entry | None) -> Reply | None:
        """The stale entry as the answer to a failed upstream, when
        stale-if-error allows it."""
        if not self.serve_stale_on_error(stale):
            return None
        assert stale is not None
        self.stale += 1
        return self.hit(plan, stale)

    def _failed(self, plan: Plan, stale: Entry | None, exc: Exception) -> Reply:
        """The answer when the upstream raised: the stale entry, or the
        exception again."""
        fallback = self._stale_on_error(plan, stale)
        if fallback is None:
            raise exc
        return fallback

    def _settle(
        self, plan: Plan, up: Upstream, stale: Entry | None
    ) -> tuple[Reply, Entry | None, bool]:
        """What an upstream answer becomes: the reply, the entry to store
        (or None), and whether the upstream's own response object is done
        with (it is unless the reply passes it through to the client)."""
        if up.status >= 500 and up.native is not SENT:
            fallback = self._stale_on_error(plan, stale)
            if fallback is not None:
                return fallback, None, True
        entry = self.accept(plan, up)
        reply = self.miss(plan, up, entry)
        return reply, entry, reply.native is not up.native

    def _refreshed(self, plan: Plan, up: Upstream) -> Entry | None:
        """What a background refresh stores (its answer goes to nobody)."""
        return self.accept(plan, up)

    # -- background refreshes ---------------------------------------------------

    def _refresh_begin(self, key: str) -> bool:
        """Count a refresh of ``key`` in flight (False: one already is)."""
        with self._refresh_lock:
            if key in self.refreshing:
                return False
            self.refreshing.add(key)
            return True

    def _refresh_end(self, key: str) -> None:
        with self._refresh_lock:
            self.refreshing.discard(key)
            if not self.refreshing:
                self._refresh_lock.notify_all()

    def wait_refreshes(self, timeout: float | None = None) -> bool:
        """Block until no background refresh (stale-while-revalidate) is
        in flight, or ``timeout`` seconds pass; True when none is. Not
        from the event loop whose tasks refresh: ``await_refreshes``."""
        if timeout is not None:
            check_seconds("timeout", timeout, zero_ok=True)
        with self._refresh_lock:
            return self._refresh_lock.wait_for(lambda: not self.refreshing, timeout)

    async def await_refreshes(self) -> None:
        """Wait for this event loop's background refreshes to finish."""
        loop = asyncio.get_running_loop()
        mine = [t for t in self._tasks if t.get_loop() is loop]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)

    # -- management ------------------------------------------------------------

    def invalidate(
        self,
        path: str | None = None,
        *,
        query: str | None = None,
        prefix: str | None = None,
        tag: str | None = None,
    ) -> int:
        """Forget entries: every variant of one ``path`` (or, with
        ``query``, that path and query: its variants by Vary/identity
        too), every path starting with ``prefix``, or every entry stored
        with ``tag``; for every host and scheme. Returns how many keys
        were removed.

        ``path`` and ``prefix`` are the path as clients send it (the
        whole path, a mount prefix or ``SCRIPT_NAME`` included),
        percent-encoded: characters a URL path cannot hold as they are
        get encoded as clients encode them (``/café`` is
        ``/caf%C3%A9``). ``query`` is the raw query string; the order
        of its ``&``-separated pieces does not matter."""
        given = [x for x in (path, prefix, tag) if x is not None]
        if len(given) != 1:
            raise TypeError("give exactly one of path=, prefix=, tag=")
        if not isinstance(given[0], str) or not given[0]:
            raise TypeError("path, prefix and tag must be non-empty str")
        if query is not None and path is None:
            raise TypeError("query= goes with path=")
        if query is not None and not isinstance(query, str):
            raise TypeError(f"query must be a str, not {type(query).__name__}")
        if tag is not None:
            return int(self.store.delete_tag(tag))
        where = given[0]
        what = "path" if path is not None else "prefix"
        if where[0] != "/":
            # "api/items" or "https://host/items" would silently match
            # nothing: keys hold the path only, as sent, from its "/".
            raise ValueError(
                f"{what} must start with '/' (the path as clients send it, "
                f"without scheme or host): {where!r}"
            )
        if "?" in where or "#" in where:
            raise ValueError(
                f"{what} must not hold '?' or '#' (give the query as query=): {where!r}"
            )
        where = quote(where, safe=_PATH_SAFE + "%")
        if prefix is not None:
            n = int(self.store.delete_prefix("e:" + where))
            return n + int(self.store.delete_prefix("v:" + where))
        if query is not None:
            base = "e:" + where + "?" + normalize_query(query) + " "
            return int(self.store.delete_prefix(base))
        n = int(self.store.delete_prefix("e:" + where + "?"))
        return n + int(self.store.delete_prefix("v:" + where + " "))

    def clear(self) -> None:
        """Forget every entry."""
        self.store.clear()

    def close(self) -> None:
        """Close the backend's blocking connections (Redis)."""
        self.store.close()

    async def aclose(self) -> None:
        """Wait for this event loop's background refreshes, then close the
        backend's asyncio connections made on this loop (Redis). Call it
        before the loop ends (an ASGI app's lifespan shutdown does)."""
        await self.await_refreshes()
        await self.store.aclose()

    def stats(self) -> dict[str, int]:
        """Counts since start: hits (stale ones included), misses, stale
        (stale answers served), stores, not_modified (304 answers)."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "stale": self.stale,
            "stores": self.stores,
            "not_modified": self.not_modified,
        }


def _close(native: Any) -> None:
    close = getattr(native, "close", None)
    if close is not None:
        close()


class CacheFront:
    """What the ASGI and WSGI cache middleware share: the wrapped app, the
    path prefixes they cache (None: every path), the ResponseCache and its
    management (``invalidate``, ``clear``, ``stats``)."""

    def __init__(self, app: Any, /, *, paths: Any = None, **settings: Any) -> None:
        if paths is not None:
            if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
                raise TypeError("paths must be a list of path prefixes")
            paths = tuple(paths)
        self.app = app
        self.paths: tuple[str, ...] | None = paths
        self.cache = ResponseCache(**settings)

    def invalidate(self, path: str | None = None, **kw: Any) -> int:
        return self.cache.invalidate(path, **kw)

    def clear(self) -> None:
        self.cache.clear()

    def stats(self) -> dict[str, int]:
        return self.cache.stats()
