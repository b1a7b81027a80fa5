"""The web part of ``python -m stanchion demo``: a real FastAPI app, run
in-process through httpx's ASGI transport, and three clients bursting at
it; then a burst queued by a concurrency limit, and an abuser banned by
the penalty box. A simulated clock keeps every figure the same from run
to run (and the burst's requests arrive one at a time, in order)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any


def build_app(clock: Any) -> Any:
    from fastapi import FastAPI

    from .fastapi import RateLimitMiddleware, exception_handlers
    from .http import Plans, api_key

    app = FastAPI(exception_handlers=exception_handlers)

    @app.get("/search")
    async def search(q: str = "") -> dict[str, str]:
        return {"q": q}

    app.add_middleware(
        RateLimitMiddleware,
        limit=Plans(
            {"free": "5/minute", "paid": "20/minute"},
            plan=lambda r: (
                "paid" if r.header("x-api-key") == "bob-paid-key" else "free"
            ),
        ),
        key=api_key("X-API-Key", valid={"bob-paid-key"}),
        trusted_proxies=["10.0.0.0/8"],  # our load balancer; nobody else
        clock=clock,
    )
    return app


CLIENTS = [
    # name, socket peer, headers per request i
    ("alice (free)", "203.0.113.10", lambda i: {}),
    (
        "mallory (spoofs XFF)",
        "198.51.100.66",
        lambda i: {"X-Forwarded-For": f"192.0.2.{i + 1}"},
    ),
    ("bob (paid plan)", "203.0.113.20", lambda i: {"X-API-Key": "bob-paid-key"}),
]


async def _burst(app: Any, peer: str, headers: Any, n: int) -> list[Any]:
    import httpx

    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        return [await c.get("/search", headers=headers(i)) for i in range(n)]


def demo_web(burst: int = 8) -> None:
    t = [1000.0]
    app = build_app(lambda: t[0])
    print("A FastAPI app behind stanchion.asgi.RateLimitMiddleware:")
    print('  free plan "5/minute", paid plan "20/minute", keyed by X-API-Key')
    print("  (else the client address); X-Forwarded-For is believed only from")
    print(
        "  the 10.0.0.0/8 load balancer. Each client sends",
        burst,
        "requests at once.\n",
    )
    rows = []
    for name, peer, headers in CLIENTS:
        responses = asyncio.run(_burst(app, peer, headers, burst))
        last = responses[-1]
        codes = " ".join(str(r.status_code) for r in responses)
        ok = sum(r.status_code == 200 for r in responses)
        rows.append(
            (
                name,
                peer,
                codes,
                f"{ok}/{burst}",
                last.headers.get("ratelimit", "-"),
                last.headers.get("retry-after", "-"),
            )
        )
    headers_row = (
        "client",
        "peer",
        "status codes",
        "ok",
        "last RateLimit",
        "Retry-After",
    )
    widths = [max(len(str(r[i])) for r in [headers_row, *rows]) for i in range(6)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers_row, widths, strict=True))
    print("  " + line)
    print("  " + "-" * len(line))
    for r in rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print()
    print("  mallory forged a new X-Forwarded-For on every request, but her peer")
    print("  is not a trusted proxy: all 8 requests counted against one bucket.")
    print()
    # One full 429 as a client sees it.
    t[0] += 3.0
    r = asyncio.run(_burst(app, "203.0.113.10", lambda i: {}, 1))[0]
    print("  alice, 3 s later, gets:")
    print(f"    HTTP {r.status_code}")
    for k in (
        "content-type",
        "cache-control",
        "retry-after",
        "ratelimit-policy",
        "ratelimit",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ):
        if k in r.headers:
            print(f"    {k}: {r.headers[k]}")
    print(f"    {r.text}")


# -- a burst queued by a concurrency limit ------------------------------------


async def _queued_burst(n: int) -> tuple[list[Any], list[int], list[str]]:
    """``n`` requests at once at a slow endpoint behind ``concurrency=2,
    queue=4``: (the responses, the order the endpoint started them, what
    was in flight and queued as each one arrived)."""
    import httpx
    from fastapi import FastAPI

    from .asgi import RateLimitMiddleware

    started: list[int] = []
    done = asyncio.Event()
    api = FastAPI()

    @api.get("/report")
    async def report(n: int) -> dict[str, int]:
        started.append(n)
        await done.wait()  # a slow report: busy until the burst is in
        return {"report": n}

    app = RateLimitMiddleware(api, limit=None, concurrency=2, queue=4)
    slots = app.rule.slots
    assert slots is not None
    transport = httpx.ASGITransport(app=app, client=("203.0.113.30", 40000))
    seen = []
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        tasks: list[asyncio.Future[Any]] = []
        for i in range(n):
            # One at a time, so arrival order is request order.
            tasks.append(asyncio.ensure_future(c.get("/report", params={"n": i})))
            while (
                slots.in_flight() + slots.queued() + sum(t.done() for t in tasks)
                < i + 1
            ):
                await asyncio.sleep(0)
            seen.append(f"{slots.in_flight()} in flight, {slots.queued()} queued")
        done.set()
        return list(await asyncio.gather(*tasks)), started, seen


def demo_queue(burst: int = 8) -> None:
    print("\nA concurrency limit with a queue: stanchion.asgi.RateLimitMiddleware(")
    print("  app, limit=None, concurrency=2, queue=4). A slow endpoint gets")
    print(f"  {burst} requests at once (request i asks /report?n=i).\n")
    responses, started, seen = asyncio.run(_queued_burst(burst))
    for i, r in enumerate(responses):
        what = "served" if r.status_code == 200 else "refused"
        extra = ""
        if "retry-after" in r.headers:
            extra = f"  Retry-After: {r.headers['retry-after']}"
        print(
            f"  request {i}: on arrival {seen[i]:<24} -> {r.status_code} {what}{extra}"
        )
    print()
    print("  the endpoint started them in this order:", " ".join(map(str, started)))
    print("  2 ran at once, 4 waited and were served in arrival order as slots")
    print("  freed, and the 2 that found the queue full got 503 at once.")


# -- an abuser banned ----------------------------------------------------------


class _Collect(logging.Handler):
    """Keeps the records it is given."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _status(r: Any) -> str:
    """``403(30s)``: a status and its Retry-After, if any."""
    retry = r.headers.get("retry-after")
    return f"{r.status_code}({retry}s)" if retry else str(r.status_code)


def demo_ban() -> None:
    from . import Limiter, Penalty
    from .asgi import RateLimitMiddleware

    t = [1000.0]
    limiter = Limiter(
        "5/minute",
        clock=lambda: t[0],
        penalty=Penalty(after=3, within=60, ban=30, factor=2, max_ban=600),
    )

    async def hello(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = RateLimitMiddleware(hello, limiter=limiter)
    print('\nThe penalty box: a limit of "5/minute" with')
    print("  Penalty(after=3, within=60, ban=30, factor=2, max_ban=600): a client")
    print("  refused more than 3 times within 60 s is banned for 30 s, each ban")
    print("  in a row twice as long, at most 600 s. mallory keeps bursting.\n")
    # Each ban is logged once (logger "stanchion", WARNING); counted here.
    logged: list[logging.LogRecord] = []
    handler = _Collect(logged)
    log = logging.getLogger("stanchion")
    log.addHandler(handler)
    propagate, log.propagate = log.propagate, False
    try:
        for when, n in ((0.0, 10), (29.0, 1), (31.0, 8), (92.0, 1)):
            t[0] = 1000.0 + when
            responses = asyncio.run(_burst(app, "198.51.100.66", lambda i: {}, n))
            codes = " ".join(_status(r) for r in responses)
            bans = limiter.bans()
            state = (
                f"banned {bans[0].remaining:g} s more (ban {bans[0].ban_count})"
                if bans
                else "not banned"
            )
            print(f"  t={when:>4.0f}s  {codes}")
            print(f"          limiter.bans(): {state}")
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
    print()
    print("  429 (Retry-After) for the first 3 refusals; the 4th bans: 403 with")
    print("  Retry-After the ban's time left, whatever the rate would allow. The")
    print("  next ban in a row lasts 60 s; after it, mallory is served again.")
    print(f"  {len(logged)} log lines, one per ban; limiter.lift(key) ends one early.")
