"""The web part of ``python -m stanchion demo``: a real FastAPI app, run
in-process through httpx's ASGI transport, and three clients bursting at
it. A simulated clock keeps every figure the same from run to run."""

from __future__ import annotations

import asyncio
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
