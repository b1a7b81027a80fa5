"""Apps limited on a shared-memory storage, for
tests/web/test_shm_workers.py: ``app`` is FastAPI behind the ASGI
middleware (run by uvicorn --workers 2), ``flask_app`` Flask with the
extension (run by gunicorn -w 2). Both take the segment's name from
SHM_NAME and allow 30 requests a day; every response, 429s included,
names its worker in X-Worker (set outside the limit)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from flask import Flask, Response

from stanchion.asgi import RateLimitMiddleware
from stanchion.flask import Stanchion

URL = f"shm://{os.environ['SHM_NAME']}"

WORKER = (b"x-worker", str(os.getpid()).encode())


class NameTheWorker:
    """Outermost: adds X-Worker to every response start."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def named(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), WORKER]
            await send(message)

        await self.app(scope, receive, named)


app = FastAPI()
app.add_middleware(RateLimitMiddleware, limit="30/day", storage=URL)  # type: ignore[arg-type]
app.add_middleware(NameTheWorker)  # type: ignore[arg-type]


@app.get("/", response_class=PlainTextResponse)
async def hello() -> str:
    return str(os.getpid())


flask_app = Flask(__name__)
flask_app.config["STANCHION_STORAGE_URL"] = URL
flask_app.config["STANCHION_DEFAULT_LIMIT"] = "30/day"
Stanchion(flask_app)


@flask_app.after_request
def name_the_worker(response: Response) -> Response:
    response.headers["X-Worker"] = str(os.getpid())
    return response


@flask_app.get("/")
def flask_hello() -> str:
    return str(os.getpid())
