"""An ASGI app behind RateLimitMiddleware with a shared-memory storage,
for tests/web/test_shm_workers.py (run by uvicorn --workers 2). The
storage name comes from SHM_NAME; each response names its worker."""

from __future__ import annotations

import os
from typing import Any

from stanchion._settings import storage_from_url
from stanchion.asgi import RateLimitMiddleware


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})


app = RateLimitMiddleware(
    _hello,
    limit="30/day",
    storage=storage_from_url(f"shm://{os.environ['SHM_NAME']}", lambda s: "storage"),
)
