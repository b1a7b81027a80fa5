"""Connections to Memcached, its outage state, and keys it can store.

``_Connector`` turns what the user gave (a ``memcached://host:port`` URL,
``host:port``, a pymemcache ``Client``/``PooledClient``, or a
``HashClient`` over several servers) into one thread-safe pymemcache
client whose every socket operation is bounded by ``timeout``, and
carries the outage state (``stanchion._outage``) shared by every limiter
and cache on it. Memcached has no asyncio client here: the asyncio
methods run the same blocking calls in the loop's default executor, so
the loop itself never waits on the network.

Memcached keys are at most 250 bytes of printable ASCII without spaces;
``_safe_key`` stores any other key as a fixed-length hash of it, never
failing on a key.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

try:
    from pymemcache.client.base import Client, PooledClient
    from pymemcache.client.hash import HashClient
    from pymemcache.exceptions import MemcacheServerError, MemcacheUnknownError
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "stanchion.memcached needs pymemcache: pip install 'stanchion[memcached]'"
    ) from exc

from .._outage import _Outage, _Unavailable

logger = logging.getLogger("stanchion.memcached")

#: Errors that mean "Memcached could not answer": socket errors (refused,
#: reset, timed out) and the server's errors and unexpected closes.
_FAILURES: tuple[type[BaseException], ...] = (
    MemcacheServerError,
    MemcacheUnknownError,
    OSError,
)

_T = TypeVar("_T")

# -- keys ------------------------------------------------------------------------

#: The longest key Memcached stores.
MAX_KEY = 250
#: Bytes a Memcached key may hold: printable ASCII, no space.
_KEY_BYTES = frozenset(range(0x21, 0x7F))
#: Marks a hashed key body (a key body stored as it is never starts so).
_HASHED = b"#"


def _safe_key(prefix: bytes, body: bytes) -> bytes:
    """``prefix + body`` when Memcached can store it as it is (at most
    250 bytes, printable ASCII, no space or control byte, no ``#`` in
    ``body``); otherwise ``prefix + "#"`` and a 40-digit hash of
    ``body``, so no key is ever refused and two bodies never share a key.
    A body holding ``#`` anywhere is hashed too: a namespace's prefix is
    its parent's plus ``name:``, and the parent's body ``name:#...``
    must not reach the namespace's hashed keys or its ``#generation``."""
    key = prefix + body
    if len(key) <= MAX_KEY and _HASHED not in body and _KEY_BYTES.issuperset(key):
        return key
    return prefix + _HASHED + hashlib.blake2b(body, digest_size=20).hexdigest().encode()


def _check_prefix(prefix: object) -> bytes:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    raw = prefix.encode("utf-8")
    if len(raw) > 100 or not _KEY_BYTES.issuperset(raw):
        raise ValueError(
            "prefix must be at most 100 characters of printable ASCII without "
            f"spaces (Memcached keys), got {prefix!r}"
        )
    return raw


# -- connections -----------------------------------------------------------------


def _parse_server(url: str) -> tuple[str, int]:
    rest = url[len("memcached://") :] if url.startswith("memcached://") else url
    rest = rest.rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, "11211"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"unsupported Memcached address {url!r}: use memcached://host:port "
            "or host:port"
        )
    return host, int(port)


class _Connector(_Outage):
    """One Memcached client (thread-safe) and the server's outage state."""

    service = "Memcached"
    logger = logger
    failures = _FAILURES

    def __init__(
        self, client_or_url: object, timeout: float, retry_interval: float
    ) -> None:
        super().__init__(retry_interval)
        self.timeout = timeout
        c = client_or_url
        settings: dict[str, Any] = {
            "connect_timeout": timeout,
            "timeout": timeout,
            "no_delay": True,
            "default_noreply": False,
        }
        if isinstance(c, str):
            server = _parse_server(c)
            self.client: Any = PooledClient(server, **settings)
            self.where = f"{server[0]}:{server[1]}"
        elif isinstance(c, (Client, PooledClient)):
            # Our own connections to its server, bounded by our timeout,
            # storing bytes (its serializer is its own business), over
            # its transport: its TLS context and socket module.
            server = c.server
            self.client = PooledClient(
                server,
                tls_context=c.tls_context,
                socket_module=c.socket_module,
                **settings,
            )
            self.where = (
                f"{server[0]}:{server[1]}" if isinstance(server, tuple) else str(server)
            )
        elif isinstance(c, HashClient):
            # Several servers: used as given, with its own timeouts and
            # retry settings, so they must be safe here: calls come from
            # several threads (the loop's executor, a threaded server),
            # and one socket per server would mix their replies up; and
            # a call with no timeout would hang a request on a stalled
            # server instead of following on_error.
            if not c.use_pooling:
                raise ValueError(
                    "a HashClient used from several threads needs "
                    "use_pooling=True (one socket per server mixes up the "
                    "replies of concurrent calls)"
                )
            unbounded = [
                name
                for name in ("connect_timeout", "timeout")
                if c.default_kwargs.get(name) is None
            ]
            if unbounded:
                raise ValueError(
                    f"give the HashClient {' and '.join(unbounded)}= (seconds): "
                    "it is used as given, and without them a stalled server "
                    "hangs the request instead of following on_error"
                )
            self.client = c
            self.where = ",".join(sorted(c.clients))
        else:
            raise TypeError(
                "expected a memcached://host:port URL, host:port, or a pymemcache "
                f"Client, PooledClient or HashClient, not {type(c).__name__}"
            )

    def run(self, io: Callable[..., _T], *args: Any) -> _T:
        """``io(client, *args)``, blocking."""
        return io(self.client, *args)

    async def arun(self, io: Callable[..., _T], *args: Any) -> _T | _Unavailable:
        """``io(client, *args)`` in the loop's default executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, functools.partial(self._queued, self.epoch, io, *args)
        )

    def _queued(
        self, epoch: int, io: Callable[..., _T], *args: Any
    ) -> _T | _Unavailable:
        """``io(client, *args)`` in an executor thread, unless an outage
        began while the call waited for its thread (the executor has a
        few; many calls on a stalled server would each wait a timeout in
        turn): then unavailable at once, as a call not sent."""
        if self.epoch != epoch and self.down_since is not None:
            return _Unavailable(self.last_error)
        return io(self.client, *args)

    def close(self) -> None:
        self.client.close()
