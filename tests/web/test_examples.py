"""The framework examples (examples/*.py): each one's rate limit, penalty
box and queue settings as a client meets them, through the framework's
own test client. (Load on examples/fastapi_app.py: test_load.py.)"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from werkzeug.test import Client

from stanchion.asgi import RateLimitMiddleware as AsgiMiddleware
from stanchion.http import Request

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # hug finds its API through the module
    spec.loader.exec_module(module)
    return module


def statuses(responses: list[Any]) -> list[str]:
    """``403(300)``: each status with its Retry-After, if any."""
    out = []
    for r in responses:
        status = getattr(r, "status_code", None)
        retry = r.headers.get("Retry-After")
        out.append(f"{status}({retry})" if retry else str(status))
    return out


def test_fastapi_example() -> None:
    m = load("fastapi_app")

    async def go() -> tuple[list[Any], list[Any], Any]:
        transport = httpx.ASGITransport(app=m.app, client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            hello = [await c.get("/hello"), await c.get("/health")]
            logins = [await c.post("/login") for _ in range(10)]
            other = await c.get("/hello")
        return hello, logins, other

    hello, logins, other = asyncio.run(go())
    assert statuses(hello) == ["200", "200"]
    # 5 a minute, 3 refusals tolerated: the 4th refusal bans for 300 s.
    assert statuses(logins) == ["200"] * 5 + ["429(12)"] * 3 + ["403(300)"] * 2
    assert logins[-1].headers["content-type"] == "application/problem+json"
    # The ban is the login limit's: the rest of the API still answers.
    assert other.status_code == 200
    # The queue: the middleware's slots, paid clients and health checks
    # in the upper lane.
    mw = m.app.middleware_stack
    while not isinstance(mw, AsgiMiddleware):
        mw = mw.app
    slots = mw.rule.slots
    assert (slots.limit, slots.queue, slots.timeout) == (64, 256, 10.0)
    assert (slots.priorities, slots.reserve) == (2, 8)
    paid = Request("GET", "/hello", {"x-api-key": "paid-demo"}.get)
    assert [mw.rule.lane(r) for r in (paid, Request("GET", "/hello"))] == [1, 0]
    assert mw.rule.lane(Request("GET", "/health")) == 1


def test_flask_example() -> None:
    m = load("flask_app")
    c = m.app.test_client()
    env = {"REMOTE_ADDR": "203.0.113.9"}
    logins = [c.post("/login", environ_base=env) for _ in range(8)]
    assert statuses(logins) == ["200"] * 3 + ["429(20)"] * 3 + ["403(300)"] * 2
    assert c.get("/", environ_base=env).status_code == 200
    assert c.get("/health", environ_base=env).status_code == 200
    assert c.get("/api/items", environ_base=env).status_code == 200
    # The report's queue, as declared (holding the slots is the
    # extension's part, tested with it).
    (spec,) = m.limits._view_limits[m.app.view_functions["report"]]
    assert spec.settings == {"concurrency": 2, "queue": 8, "queue_timeout": 10}
    assert c.get("/report", environ_base=env).status_code == 200


def test_hug_example() -> None:
    m = load("hug_app")
    c = Client(m.api.http.server())

    def get(path: str, ip: str, **headers: str) -> Any:
        r = c.get(path, environ_base={"REMOTE_ADDR": ip}, headers=headers)
        r.get_data()
        r.close()  # as a WSGI server does: the concurrency slot is given back
        return r

    r = get("/users", "203.0.113.9")
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "public, max-age=3600"
    assert r.json == list(m.USERS.values())
    assert r.headers["X-Cache"] == "MISS"
    assert get("/users", "203.0.113.9").headers["X-Cache"] == "HIT"
    assert get("/user/2", "203.0.113.9").json == {"id": 2, "name": "Grace"}
    assert get("/user/9", "203.0.113.9").status_code == 404
    # /user/{user_id}: 30 a minute per client.
    free = [get("/user/1", "203.0.113.50").status_code for _ in range(32)]
    assert free == [200] * 30 + [429] * 2
    # More for paying clients: 60 a minute free, 600 paid (the middleware).
    free = statuses([get("/users", "203.0.113.60") for _ in range(75)])
    assert free[:60] == ["200"] * 60
    # ... then 10 refusals tolerated, and a ban of 60 s.
    assert free[60:70] == ["429(1)"] * 10
    assert free[70:] == ["403(60)"] * 5
    paid = [
        get("/users", "203.0.113.61", **{"X-API-Key": "paid-demo"}) for _ in range(100)
    ]
    assert {r.status_code for r in paid} == {200}
    mw = next(
        x for x in m.api.http.middleware if type(x).__name__ == "RateLimitMiddleware"
    )
    slots = mw.rule.slots
    assert (slots.limit, slots.queue, slots.timeout) == (16, 64, 10.0)
    assert slots.stats()["in_flight"] == 0


DJANGO_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import django_app
    from django.test import Client
    c = Client(REMOTE_ADDR="203.0.113.9")
    out = []
    for _ in range(11):
        r = c.get("/search")
        out.append(f"{r.status_code}({r.headers['Retry-After']})"
                   if "Retry-After" in r.headers else str(r.status_code))
    print(" ".join(out))
    print(c.get("/").status_code, c.get("/report").status_code)
    """
)


def test_django_example() -> None:
    # A process of its own: the example configures Django's settings.
    proc = subprocess.run(
        [sys.executable, "-c", DJANGO_SCRIPT, str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    searches, rest = proc.stdout.splitlines()
    assert searches.split() == ["200"] * 5 + ["429(12)"] * 3 + ["403(300)"] * 3
    assert rest == "200 200"
    check = subprocess.run(
        [sys.executable, str(EXAMPLES / "django_app.py"), "check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert "no issues" in check.stdout
