"""A search service in front of rate-limited providers.

``GET /search?q=...`` asks one provider with budget left (most budget
left first), falls back to the next when one fails or answers non-200,
and answers 503 with ``Retry-After`` when none can answer within the
deadline. Every process started with the same ``REDIS_URL`` shares the
providers' budgets, pauses and cool-downs.

Configuration (environment):

- ``OUTBOUND_PROVIDERS``: JSON list of ``[name, base_url, rate]``, e.g.
  ``[["a", "http://127.0.0.1:9001", "340 per 30 seconds"]]``;
- ``REDIS_URL``: where the budgets live (unset: in this process only);
- ``OUTBOUND_DEADLINE`` (seconds, default 1): the longest a search waits
  for a provider's budget;
- ``OUTBOUND_COOLDOWN`` (seconds, default 5): how long a provider that
  keeps failing is skipped before one search tries it again.

Run: ``uvicorn search:app`` from this directory (``run.py`` starts the
whole scene: providers, Redis, two of these, the load).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

import stanchion


def create_app(
    providers: list[tuple[str, str, str]],
    *,
    storage: Any = None,
    deadline: float = 1.0,
    cooldown: float = 5.0,
) -> FastAPI:
    # One connection pool for every provider; a provider that hangs costs
    # a search at most its own timeout, and the search moves on.
    client = httpx.AsyncClient(timeout=min(2.0, deadline + 0.5))

    def asker(base: str) -> Any:
        async def ask(q: str) -> httpx.Response:
            r = await client.get(base + "/search", params={"q": q})
            if r.status_code == 200:
                # A 200 that is not JSON (a maintenance page) raises: a
                # failure, and the next provider answers the search.
                r.json()
            return r

        return ask

    pool = stanchion.Pool(
        [
            stanchion.Provider(
                name, asker(url), rate=rate, storage=storage, cooldown=cooldown
            )
            for name, url, rate in providers
        ],
        strategy="least_used",
        timeout=deadline,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)
    app.state.pool = pool

    @app.get("/search")
    async def search(q: str, response: Response) -> Any:
        # Server-Timing: how long this service held the search (what the
        # deadline bounds), apart from any wait before it was accepted.
        start = time.perf_counter()
        try:
            answer = await pool.acall(q)
        except stanchion.PoolExhausted as e:
            return JSONResponse(
                {"error": "no provider can answer now", "retry_after": e.retry_after},
                status_code=503,
                headers={
                    "Retry-After": str(max(1, math.ceil(e.retry_after))),
                    "Server-Timing": _timing(start),
                },
            )
        response.headers["Server-Timing"] = _timing(start)
        return answer.json()

    @app.get("/health")
    async def health() -> Any:
        return {"providers": {p.name: p.state() for p in pool.providers}}

    return app


def _timing(start: float) -> str:
    return f"search;dur={1000 * (time.perf_counter() - start):.1f}"


def _from_environment() -> FastAPI:
    providers = [
        tuple(p) for p in json.loads(os.environ.get("OUTBOUND_PROVIDERS", "[]"))
    ]
    storage = None
    if os.environ.get("REDIS_URL"):
        from stanchion.redis import RedisStorage

        storage = RedisStorage(os.environ["REDIS_URL"], prefix="outbound:", timeout=0.5)
    return create_app(
        providers,  # type: ignore[arg-type]
        storage=storage,
        deadline=float(os.environ.get("OUTBOUND_DEADLINE", "1")),
        cooldown=float(os.environ.get("OUTBOUND_COOLDOWN", "5")),
    )


app = _from_environment()
