"""FastAPI with stanchion: a per-minute limit for every request (more for
paid API keys), plus a daily quota on one expensive route.

Run:  python examples/fastapi_app.py      (serves http://127.0.0.1:8000)
Try:  curl -i http://127.0.0.1:8000/hello
      curl -i -H "X-API-Key: paid-demo" http://127.0.0.1:8000/report
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from stanchion.fastapi import RateLimitMiddleware, exception_handlers, limit
from stanchion.http import Plans, Request, api_key

PAID_KEYS = {"paid-demo"}
# The API keys this service issued (here from the environment); any other
# key is limited like no key at all, per client address.
API_KEYS = PAID_KEYS | set(filter(None, os.environ.get("API_KEYS", "").split(",")))


def plan_of(request: Request) -> str:
    return "paid" if request.header("x-api-key") in PAID_KEYS else "free"


app = FastAPI(title="stanchion example", exception_handlers=exception_handlers)
app.add_middleware(
    RateLimitMiddleware,
    limit=Plans({"free": "60/minute", "paid": "600/minute"}, plan=plan_of),
    # Clients without a known key are limited per address.
    key=api_key("X-API-Key", valid=API_KEYS),
    exempt_paths=["/health", "/docs", "/openapi.json"],
    # Behind a reverse proxy, name it so X-Forwarded-For is believed:
    trusted_proxies=os.environ.get("TRUSTED_PROXIES", "").split(",")
    if os.environ.get("TRUSTED_PROXIES")
    else (),
)


@app.get("/hello")
async def hello(name: str = "world") -> dict[str, str]:
    return {"hello": name}


@app.get("/report")
@limit("20/day", key=api_key("X-API-Key", valid=API_KEYS), scope="reports")
async def report() -> dict[str, str]:
    """An expensive report: 20 per API key (or address) per day."""
    return {"report": "ready"}


@app.get("/health")
def health() -> str:
    return "ok"


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
