"""A caching, rate limiting API gateway in front of HTTP services.

``GET /api/users/42?x=1`` goes to ``<an instance of users>/42?x=1``.

- Caching: 200 answers to GET/HEAD are kept ``ttl`` seconds in process
  (a C cache bounded by bytes) or in Redis (shared by every gateway
  process and host), following the HTTP rules of
  ``stanchion.asgi.CacheMiddleware``: never a response with
  ``Set-Cookie``, ``Cache-Control: private/no-store``, nor one to a
  request carrying ``Authorization`` or a cookie (unless
  ``cache_per_user``: then each user has their own entries), keyed on
  method, path, sorted query and the response's ``Vary`` headers.
- Rate limiting: every client address (``trusted_proxies`` names the
  proxies whose ``X-Forwarded-For`` is believed) gets ``rate``; 429s are
  RFC 9457 problem details with ``Retry-After`` and ``RateLimit``
  headers. Cached answers count too: the limit protects the gateway.
- Load spreading: round robin over a service's instances; an instance
  that refused a connection or timed out is skipped for ``cooldown``
  seconds (when every instance is cooling down, the one whose cool-down
  ends first is tried anyway). A refused connection is retried on the
  next instance, whatever the method: nothing reached the service.
- Errors, never cached: connection refused/failed on every instance ->
  502, timeout -> 504, upstream 5xx -> 502 (the upstream's body is not
  shown to clients: it may hold internal details; its status is in the
  problem body, and a 503's ``Retry-After`` is kept); upstream 4xx pass
  through unchanged. Gateway errors are ``application/problem+json``
  with ``Cache-Control: no-store``.

Run:   GATEWAY_SERVICES="users=http://127.0.0.1:9001,http://127.0.0.1:9002" \\
       python examples/gateway/app.py
See examples/gateway/README.md for every setting.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from stanchion.asgi import CacheMiddleware, RateLimitMiddleware

__all__ = ["GatewayApp", "Pool", "create_app", "services_from_env"]

# Hop-by-hop headers (RFC 9110 7.6.1) never cross the gateway; Host and
# Content-Length are set again by the client for the upstream request.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = _HOP | {"host", "content-length"}
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _problem(
    status: int, title: str, detail: str, extra: dict[str, Any] | None = None
) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if extra:
        body.update(extra)
    return Response(
        json.dumps(body).encode(),
        status_code=status,
        media_type="application/problem+json",
        headers={"Cache-Control": "no-store"},
    )


def _check_url(service: str, url: object) -> str:
    if not isinstance(url, str):
        raise TypeError(
            f"services[{service!r}]: URLs must be str, not {type(url).__name__}"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"services[{service!r}]: {url!r} is not an http:// or https:// URL"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            f"services[{service!r}]: {url!r} must not have a query or fragment"
        )
    return url.rstrip("/")


class Pool:
    """The instances of one service: round robin, skipping those that
    failed less than ``cooldown`` seconds ago."""

    def __init__(self, name: str, urls: Iterable[str], cooldown: float) -> None:
        self.name = name
        self.urls = list(urls)
        self.cooldown = cooldown
        self.next = 0
        self.down_until = [0.0] * len(self.urls)
        self.requests = [0] * len(self.urls)
        self.failures = [0] * len(self.urls)

    def order(self, now: float) -> list[int]:
        """Instances to try for one request, best first: the healthy ones
        in round robin order from the next turn, then (only when none is
        healthy) the cooling ones, soonest back first. Advances the turn."""
        n = len(self.urls)
        start = self.next
        self.next = (start + 1) % n
        turns = [(start + i) % n for i in range(n)]
        healthy = [i for i in turns if self.down_until[i] <= now]
        if healthy:
            # The turn goes on from the instance used: otherwise the one
            # after a skipped instance would get the skipped one's share.
            self.next = (healthy[0] + 1) % n
            return healthy
        return sorted(turns, key=lambda i: self.down_until[i])

    def failed(self, i: int, now: float) -> None:
        self.failures[i] += 1
        self.down_until[i] = now + self.cooldown

    def succeeded(self, i: int) -> None:
        self.down_until[i] = 0.0

    def status(self, now: float) -> list[dict[str, Any]]:
        return [
            {
                "url": url,
                "up": self.down_until[i] <= now,
                "requests": self.requests[i],
                "failures": self.failures[i],
            }
            for i, url in enumerate(self.urls)
        ]


class Gateway:
    """The forwarding half: pools and one shared HTTP client."""

    def __init__(
        self,
        pools: dict[str, Pool],
        timeout: float,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.pools = pools
        self.timeout = timeout
        self.transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        # Made on first use as well as at startup, so the app also works
        # where no lifespan runs (httpx.ASGITransport).
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                transport=self.transport,
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def forward(self, request: Request, service: str, path: str) -> Response:
        pool = self.pools.get(service)
        if pool is None:
            return _problem(404, "Not Found", f"No service named {service!r}.")
        headers = [
            (k, v)
            for k, v in request.headers.items()
            if k not in _NOT_FORWARDED and k not in _connection_names(request)
        ]
        peer = request.client.host if request.client else ""
        prior = request.headers.get("x-forwarded-for")
        headers = [(k, v) for k, v in headers if not k.startswith("x-forwarded-")]
        headers += [
            ("x-forwarded-for", f"{prior}, {peer}" if prior else peer),
            ("x-forwarded-proto", request.url.scheme),
            ("x-forwarded-host", request.headers.get("host", "")),
        ]
        body = await request.body()
        query = request.url.query
        tail = "/" + path + ("?" + query if query else "")
        timed_out = False
        for i in pool.order(time.monotonic()):
            upstream = httpx.Request(
                request.method, pool.urls[i] + tail, headers=headers, content=body
            )
            pool.requests[i] += 1
            try:
                reply = await self.client.send(upstream, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # No connection, so nothing reached it: the next may serve.
                pool.failed(i, time.monotonic())
                timed_out = timed_out or isinstance(exc, httpx.ConnectTimeout)
                continue
            except httpx.TimeoutException:
                # The request may have been handled: never sent again.
                pool.failed(i, time.monotonic())
                timed_out = True
                break
            except httpx.TransportError:
                # The connection broke mid-request: it may have been
                # handled, so it is not sent again either.
                pool.failed(i, time.monotonic())
                break
            pool.succeeded(i)
            return await self._answer(service, reply)
        if timed_out:
            return _problem(
                504,
                "Gateway Timeout",
                f"Service {service!r} did not answer in {self.timeout:g} s.",
            )
        return _problem(
            502, "Bad Gateway", f"No instance of service {service!r} could be reached."
        )

    async def _answer(self, service: str, reply: httpx.Response) -> Response:
        if reply.status_code >= 500:
            await reply.aclose()
            extra: dict[str, Any] = {"upstream_status": reply.status_code}
            response = _problem(
                502,
                "Bad Gateway",
                f"Service {service!r} failed to answer this request.",
                extra,
            )
            retry = reply.headers.get("retry-after")
            if reply.status_code == 503 and retry is not None:
                response.headers["Retry-After"] = retry
            return response
        drop = _NOT_FORWARDED | {
            n.strip().lower() for n in reply.headers.get("connection", "").split(",")
        }
        raw = [
            (k.lower(), v)
            for k, v in reply.headers.multi_items()
            if k.lower() not in drop
        ]
        length = reply.headers.get("content-length")
        if length is not None:
            raw.append(("content-length", length))
        # The body goes on as it comes, still content-encoded (aiter_raw):
        # the client asked for that encoding and Content-Length counts it.
        response = StreamingResponse(_relay(reply), status_code=reply.status_code)
        response.raw_headers = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in raw
        ]
        return response


async def _relay(reply: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream body as it comes; the upstream connection goes back to
    the pool when it ends, fails, or the client goes away."""
    try:
        async for chunk in reply.aiter_raw():
            yield chunk
    finally:
        await reply.aclose()


def _connection_names(request: Request) -> set[str]:
    value = request.headers.get("connection")
    if not value:
        return set()
    return {n.strip().lower() for n in value.split(",")}


def create_app(
    services: dict[str, list[str]],
    *,
    cache_backend: Any = None,
    ttl: float = 60,
    rate: str = "100/second",
    rate_storage: Any = None,
    timeout: float = 10.0,
    cooldown: float = 5.0,
    cache_per_user: bool = False,
    trusted_proxies: Iterable[str] = (),
    transport: httpx.AsyncBaseTransport | None = None,
) -> GatewayApp:
    """The gateway as an ASGI app.

    ``services`` maps a service name (the first path segment after
    ``/api/``) to the base URLs of its instances. ``cache_backend``: None
    (in process), a ``stanchion.Cache`` or a ``stanchion.RedisCache``;
    ``ttl`` seconds an answer is served from the cache. ``rate`` is each
    client's limit, kept in ``rate_storage`` (None: in process; a
    ``stanchion.RedisStorage`` to share it). ``timeout`` seconds for each
    upstream call; ``cooldown`` seconds a failed instance is skipped.
    ``cache_per_user`` caches requests with ``Authorization`` or cookies
    under their own identity instead of not at all. ``transport`` is
    httpx's, for tests.
    """
    if not isinstance(services, dict) or not services:
        raise TypeError("services must be a non-empty dict of name -> list of URLs")
    pools: dict[str, Pool] = {}
    for name, urls in services.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(
                f"service names must be non-empty str without '/': {name!r}"
            )
        if isinstance(urls, str) or not isinstance(urls, (list, tuple)) or not urls:
            raise TypeError(f"services[{name!r}] must be a non-empty list of URLs")
        pools[name] = Pool(name, [_check_url(name, u) for u in urls], 0.0)
    for what, value in (("timeout", timeout), ("cooldown", cooldown)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{what} must be a number of seconds")
        if not value > 0 or value == float("inf"):
            raise ValueError(f"{what} must be a finite number of seconds > 0")
    for pool in pools.values():
        pool.cooldown = float(cooldown)
    gateway = Gateway(pools, float(timeout), transport)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await gateway.aclose()
        if rate_storage is not None:
            await rate_storage.aclose()

    api = FastAPI(title="stanchion gateway", lifespan=lifespan, openapi_url=None)

    @api.api_route("/api/{service}/{path:path}", methods=_METHODS)
    async def forward(request: Request, service: str, path: str) -> Response:
        return await gateway.forward(request, service, path)

    @api.get("/health")
    async def health() -> dict[str, Any]:
        now = time.monotonic()
        return {
            "services": {name: pool.status(now) for name, pool in pools.items()},
            "cache": cache.stats(),
        }

    cache = CacheMiddleware(
        api,
        paths=["/api/"],
        ttl=ttl,
        backend=cache_backend,
        vary_identity=cache_per_user,
    )
    # Outermost, so the rate limit is decided before the cache is read.
    limited = RateLimitMiddleware(
        cache,
        limit=rate,
        storage=rate_storage,
        scope="gateway",
        exempt_paths=["/health"],
        trusted_proxies=trusted_proxies,
    )
    return GatewayApp(limited, api, gateway, cache)


class GatewayApp:
    """The ASGI app ``create_app`` returns: the middleware stack, with the
    FastAPI app (``api``), the pools (``gateway.pools``) and the response
    cache (``cache.invalidate(prefix="/api/users/")``, ``cache.stats()``)
    at hand."""

    def __init__(
        self, asgi: Any, api: FastAPI, gateway: Gateway, cache: CacheMiddleware
    ) -> None:
        self.asgi = asgi
        self.api = api
        self.gateway = gateway
        self.cache = cache

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)


def services_from_env(text: str) -> dict[str, list[str]]:
    """``"users=http://a:1,http://b:1;orders=http://c:1"`` as a dict."""
    services: dict[str, list[str]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, urls = part.partition("=")
        if not sep:
            raise ValueError(f"GATEWAY_SERVICES: {part!r} is not name=url[,url...]")
        services[name.strip()] = [u.strip() for u in urls.split(",") if u.strip()]
    if not services:
        raise ValueError("GATEWAY_SERVICES names no service")
    return services


def main() -> None:
    import uvicorn

    env = os.environ
    services = services_from_env(
        env.get("GATEWAY_SERVICES", "echo=http://127.0.0.1:9001")
    )
    cache_backend: Any = None
    rate_storage: Any = None
    redis_url = env.get("REDIS_URL")
    if redis_url:
        from stanchion.redis import RedisCache, RedisStorage

        cache_backend = RedisCache(redis_url, prefix="gateway:cache:")
        rate_storage = RedisStorage(redis_url, prefix="gateway:limits:")
    proxies = env.get("TRUSTED_PROXIES", "")
    app = create_app(
        services,
        cache_backend=cache_backend,
        ttl=float(env.get("GATEWAY_TTL", "60")),
        rate=env.get("GATEWAY_RATE", "100/second"),
        rate_storage=rate_storage,
        timeout=float(env.get("GATEWAY_TIMEOUT", "10")),
        cooldown=float(env.get("GATEWAY_COOLDOWN", "5")),
        cache_per_user=env.get("GATEWAY_CACHE_PER_USER", "") == "1",
        trusted_proxies=[p for p in proxies.split(",") if p],
    )
    uvicorn.run(
        app,
        host=env.get("HOST", "127.0.0.1"),
        port=int(env.get("PORT", "8000")),
    )


if __name__ == "__main__":
    main()
