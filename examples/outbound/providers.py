"""Loopback fake search providers that enforce their own rate limits.

Each ``FakeProvider`` is a small HTTP/1.1 server (keep-alive, stdlib only)
on 127.0.0.1 that answers ``GET /search?q=...`` with a JSON body naming the
provider and the query, and refuses with 429 above its limit: ``limit``
answers of 200 per ``window`` seconds, counted as a sliding log (never more
than ``limit`` in any ``window``-second interval) or in fixed windows
aligned to the provider's first start. Refused requests cost nothing.

An advertising provider (the default) sends ``Retry-After`` on its 429s and
``RateLimit``, ``RateLimit-Policy`` and ``X-RateLimit-Limit/Remaining/Reset``
on every answer; a silent one (``advertise=False``) sends a bare 429.

Run some from the command line::

    python examples/outbound/providers.py --provider a:350/30 \\
        --provider b:300/30:silent --provider c:400/30:fixed

Each ``--provider`` is ``NAME:LIMIT/WINDOW`` followed by any of the options
``:silent``, ``:fixed``, ``:latency=SECONDS`` and ``:port=PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from urllib.parse import parse_qs, urlsplit

KINDS = ("sliding", "fixed")
_MAX_HEAD = 16 * 1024  # bytes of request line and headers


class FakeProvider:
    """A search provider on 127.0.0.1 allowing ``limit`` requests per
    ``window`` seconds; see the module docstring.

    ``start()`` binds (``port=0``: a free port) and serves from a thread of
    its own; ``stop()`` closes the listening socket and drops every open
    connection, as a crashed provider would; ``restart()`` serves again on
    the same port. The limit's state and the counters (``requests`` to
    /search, ``served`` for the 200s, ``refused`` for the 429s and
    ``connections``) carry over a restart. ``clock`` (seconds, monotonic)
    is for tests.
    """

    def __init__(
        self,
        name: str,
        limit: int,
        window: float,
        *,
        kind: str = "sliding",
        advertise: bool = True,
        latency: float = 0.0,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, not {limit!r}")
        if not isinstance(window, (int, float)) or not (
            0 < window < math.inf
        ):  # rejects NaN too
            raise ValueError(f"window must be a number of seconds > 0, not {window!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be 'sliding' or 'fixed', not {kind!r}")
        if not isinstance(latency, (int, float)) or not (0 <= latency < math.inf):
            raise ValueError(f"latency must be seconds >= 0, not {latency!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ValueError(f"port must be 0..65535, not {port!r}")
        self.name = name
        self.limit = limit
        self.window = float(window)
        self.kind = kind
        self.advertise = advertise
        self.latency = float(latency)
        self.port = port
        self._clock = clock
        self.requests = 0
        self.connections = 0  # accepted, over the provider's life
        self.served = 0
        self.refused = 0
        # The limit's state: the times of the 200s in the last window
        # (sliding), or the current window's number and count (fixed).
        self._log: collections.deque[float] = collections.deque()
        self._origin: float | None = None
        self._window_index = -1
        self._window_count = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        q, w = Fraction(self.limit), Fraction(self.window).limit_denominator(1000)
        if w.denominator != 1:  # RateLimit-Policy wants whole seconds
            f = (q / w).limit_denominator(10**6)
            q, w = Fraction(f.numerator), Fraction(max(1, f.denominator))
        self._policy = f'"{self.name}";q={int(q)};w={int(w)}'

    # -- life cycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT`` (known once started)."""
        if not self.port:
            raise RuntimeError("the provider has no port until start()")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> FakeProvider:
        """Bind and serve from a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError(f"provider {self.name!r} is already running")
        if self._origin is None:
            self._origin = self._clock()
        loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(
                    self._connection,
                    "127.0.0.1",
                    self.port,
                    reuse_address=True,
                    limit=_MAX_HEAD,
                    backlog=1024,
                )
            )
        except BaseException:
            loop.close()
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"provider-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket and drop every connection at once."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
        self._loop = self._thread = self._server = None

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        # The connections' tasks see their sockets gone and end.
        me = asyncio.current_task()
        await asyncio.gather(
            *(t for t in asyncio.all_tasks() if t is not me), return_exceptions=True
        )
        await self._server.wait_closed()

    def restart(self) -> FakeProvider:
        """``stop()``, then serve again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        mode = "" if self.advertise else ", silent"
        return (
            f"<FakeProvider {self.name} {self.limit} per {self.window:g} s "
            f"{self.kind}{mode} port={self.port}>"
        )

    # -- the limit -------------------------------------------------------------

    def _decide(self) -> tuple[bool, int, float, float]:
        """Count one request: (allowed, remaining, seconds until the
        window is whole again, seconds until the next request may pass)."""
        now = self._clock()
        with self._lock:
            self.requests += 1
            if self.kind == "sliding":
                log = self._log
                cut = now - self.window
                while log and log[0] <= cut:
                    log.popleft()
                allowed = len(log) < self.limit
                if allowed:
                    log.append(now)
                remaining = self.limit - len(log)
                reset = log[-1] + self.window - now if log else 0.0
                retry = 0.0 if remaining else log[0] + self.window - now
            else:
                assert self._origin is not None
                index = int((now - self._origin) // self.window)
                if index != self._window_index:
                    self._window_index, self._window_count = index, 0
                allowed = self._window_count < self.limit
                if allowed:
                    self._window_count += 1
                remaining = self.limit - self._window_count
                reset = self._origin + (index + 1) * self.window - now
                retry = 0.0 if remaining else reset
            if allowed:
                self.served += 1
            else:
                self.refused += 1
        return allowed, remaining, reset, retry

    def _limit_headers(
        self, allowed: bool, remaining: int, reset: float, retry: float
    ) -> list[tuple[str, str]]:
        if not self.advertise:
            return []
        reset_s = math.ceil(reset)
        retry_s = max(1, math.ceil(retry))
        out = []
        if not allowed:
            out.append(("Retry-After", str(retry_s)))
        out += [
            ("RateLimit-Policy", self._policy),
            (
                "RateLimit",
                f'"{self.name}";r={remaining};t={reset_s if allowed else retry_s}',
            ),
            ("X-RateLimit-Limit", str(self.limit)),
            ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", str(reset_s)),
        ]
        return out

    # -- HTTP/1.1 --------------------------------------------------------------

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writers.add(writer)
        self.connections += 1
        try:
            while await self._exchange(reader, writer):
                pass
        except (
            ConnectionError,
            ValueError,  # a bad Content-Length
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection is to close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise
            return False  # the client closed between requests
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, 400, [], b"bad request line\n", close=True)
            return False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length:
            await reader.readexactly(length)
        conn = headers.get("connection", "").lower()
        close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
        url = urlsplit(target)
        if url.path != "/search":
            await self._send(writer, 404, [], b'{"error": "not found"}', close=close)
            return not close
        if method not in ("GET", "HEAD"):
            extra = [("Allow", "GET, HEAD")]
            await self._send(writer, 405, extra, b'{"error": "GET only"}', close=close)
            return not close
        allowed, remaining, reset, retry = self._decide()
        if self.latency:
            await asyncio.sleep(self.latency)
        extra = self._limit_headers(allowed, remaining, reset, retry)
        if allowed:
            query = parse_qs(url.query).get("q", [""])[0]
            body = json.dumps(
                {
                    "provider": self.name,
                    "query": query,
                    "results": [
                        {"title": f"{query} ({self.name} #{i})"} for i in (1, 2)
                    ],
                }
            ).encode()
            status = 200
        else:
            body = b'{"error": "too many requests"}' if self.advertise else b""
            status = 429
        await self._send(
            writer, status, extra, body, close=close, head=method == "HEAD"
        )
        return not close

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        extra: list[tuple[str, str]],
        body: bytes,
        *,
        close: bool,
        head: bool = False,
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "")
        reason = reason or {405: "Method Not Allowed", 429: "Too Many Requests"}[status]
        lines = [f"HTTP/1.1 {status} {reason}"]
        if body:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
        if close:
            lines.append("Connection: close")
        lines += [f"{k}: {v}" for k, v in extra]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head:
            writer.write(body)
        await writer.drain()


# -- command line --------------------------------------------------------------


def parse_spec(spec: str) -> FakeProvider:
    """A provider from ``NAME:LIMIT/WINDOW[:silent][:fixed][:latency=S][:port=P]``."""
    parts = spec.split(":")
    if len(parts) < 2 or "/" not in parts[1]:
        raise ValueError(f"expected NAME:LIMIT/WINDOW[:options], not {spec!r}")
    limit_text, _, window_text = parts[1].partition("/")
    try:
        limit, window = int(limit_text), float(window_text)
    except ValueError:
        raise ValueError(f"bad LIMIT/WINDOW in {spec!r}") from None
    options: dict[str, object] = {}
    for opt in parts[2:]:
        key, _, value = opt.partition("=")
        try:
            if opt == "silent":
                options["advertise"] = False
            elif opt in KINDS:
                options["kind"] = opt
            elif key == "latency" and value:
                options["latency"] = float(value)
            elif key == "port" and value:
                options["port"] = int(value)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"bad option {opt!r} in {spec!r}") from None
    return FakeProvider(parts[0], limit, window, **options)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run loopback fake search providers until interrupted."
    )
    parser.add_argument(
        "--provider",
        action="append",
        required=True,
        metavar="NAME:LIMIT/WINDOW[:OPTIONS]",
        help="e.g. a:350/30, b:300/30:silent, c:400/30:fixed:latency=0.02:port=8001",
    )
    args = parser.parse_args(argv)
    try:
        providers = [parse_spec(s) for s in args.provider]
    except ValueError as e:
        parser.error(str(e))
    # SIGTERM stops them as Ctrl-C does (background jobs of a shell
    # ignore SIGINT); both are handled from before the first provider
    # starts, so a signal sent once its address is printed stops them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started: list[FakeProvider] = []
    try:
        for p in providers:
            p.start()
            started.append(p)
            mode = "advertised" if p.advertise else "silent"
            print(
                f"{p.name}: {p.url}/search?q=...  ({p.limit} per {p.window:g} s, "
                f"{p.kind}, {mode})",
                flush=True,
            )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for p in started:
            p.stop()
            print(f"{p.name}: {p.served} served, {p.refused} refused", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
