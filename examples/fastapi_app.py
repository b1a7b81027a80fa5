"""FastAPI with stanchion: a per-minute limit for every request (more for
paid API keys), a queue for bursts with capacity kept for paid clients
and health checks, a daily quota on one expensive route, and a penalty
box on login.

Run:  python examples/fastapi_app.py      (serves http://127.0.0.1:8000)
Try:  curl -i http://127.0.0.1:8000/hello
      curl -i -H "X-API-Key: paid-demo" http://127.0.0.1:8000/report
      for i in $(seq 8); do curl -s -o /dev/null -w "%{http_code} " -X POST http://127.0.0.1:8000/login; done
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from stanchion import Penalty
from stanchion.fastapi import (
    DocumentedRoute,
    RateLimitMiddleware,
    exception_handlers,
    limit,
)
from stanchion.http import Plans, Request, api_key

PAID_KEYS = {"paid-demo"}
# The API keys this service issued (here from the environment); any other
# key is limited like no key at all, per client address.
API_KEYS = PAID_KEYS | set(filter(None, os.environ.get("API_KEYS", "").split(",")))


def env_list(name: str) -> list[str]:
    return [v for v in os.environ.get(name, "").split(",") if v]


def plan_of(request: Request) -> str:
    return "paid" if request.header("x-api-key") in PAID_KEYS else "free"


def lane_of(request: Request) -> int:
    """Load shedding: paid clients and health checks are lane 1."""
    return 1 if request.path == "/health" or plan_of(request) == "paid" else 0


app = FastAPI(title="stanchion example", exception_handlers=exception_handlers)
# /docs shows each limited route's 429 (and 403 for login's bans) with
# the rate limit headers.
app.router.route_class = DocumentedRoute
app.add_middleware(
    RateLimitMiddleware,
    limit=Plans({"free": "60/minute", "paid": "600/minute"}, plan=plan_of),
    # Clients without a known key are limited per address.
    key=api_key("X-API-Key", valid=API_KEYS),
    exempt_paths=["/health", "/docs", "/openapi.json"],
    # At most 64 requests in the app at once, 256 more waiting (10 s at
    # most, else 503 with Retry-After); 8 slots kept for lane 1, which
    # also goes first in the queue and takes a free client's place in a
    # full one.
    concurrency=64,
    queue=256,
    queue_timeout=10,
    priorities=2,
    reserve=8,
    priority=lane_of,
    # Addresses and CIDR blocks never limited / always refused (403).
    allow=env_list("ALLOW"),
    deny=env_list("DENY"),
    # Behind a reverse proxy, name it so X-Forwarded-For is believed:
    trusted_proxies=env_list("TRUSTED_PROXIES"),
)


@app.get("/hello")
async def hello(name: str = "world") -> dict[str, str]:
    return {"hello": name}


@app.get("/report")
@limit("20/day", key=api_key("X-API-Key", valid=API_KEYS), scope="reports")
async def report() -> dict[str, str]:
    """An expensive report: 20 per API key (or address) per day."""
    return {"report": "ready"}


@app.post("/login")
@limit(
    "5/minute",
    scope="login",
    # Refused more than 3 times within a minute: banned (403 with
    # Retry-After) for 5 minutes, then 10, 20, ... at most a day.
    penalty=Penalty(after=3, within=60, ban=300, factor=2, max_ban=86400),
)
async def login() -> dict[str, bool]:
    return {"ok": True}


@app.get("/health")
def health() -> str:
    return "ok"


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
