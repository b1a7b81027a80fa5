"""examples/outbound/search.py in process, through FastAPI's test client,
against a real loopback provider and a broken one."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import httpx
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "outbound"


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    # search.py builds its app from the environment when imported.
    monkeypatch.setenv(
        "OUTBOUND_PROVIDERS", json.dumps([["x", "http://127.0.0.1:9", "1/second"]])
    )
    monkeypatch.delenv("REDIS_URL", raising=False)
    for name in ("search", "providers"):
        sys.modules.pop(name, None)
    yield importlib.import_module("search")
    for name in ("search", "providers"):
        sys.modules.pop(name, None)


@pytest.fixture
def maintenance_page() -> Iterator[str]:
    """A provider answering 200 with an HTML page, not JSON."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>down for maintenance</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


async def test_a_200_that_is_not_json_falls_back(
    example: ModuleType, maintenance_page: str
) -> None:
    # A provider's maintenance page with status 200 is not an answer: the
    # next provider answers the search (it was a 500 of the service).
    from providers import FakeProvider

    # Started and stopped off the event loop: it runs one of its own.
    good = await asyncio.to_thread(FakeProvider("good", 100, 1).start)
    try:
        app = example.create_app(
            [
                ("broken", maintenance_page, "100/second"),
                ("good", good.url, "100/second"),
            ]
        )
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://search"
            ) as client,
        ):
            r = await client.get("/search", params={"q": "x"})
        assert r.status_code == 200, r.text
        assert good.requests == 1
        stats = app.state.pool.stats()["providers"]
        assert stats["broken"]["failures"] == 1
        assert stats["good"]["successes"] == 1
    finally:
        await asyncio.to_thread(good.stop)
