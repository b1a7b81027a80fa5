"""FastAPI routes under @limit, RateLimit and @cache document what
stanchion does in the generated OpenAPI schema (DocumentedRoute): the
schema validates, and what it documents is what a real request to the
app gets back (httpx's ASGI transport)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from stanchion import Penalty
from stanchion.fastapi import (
    DocumentedRoute,
    RateLimit,
    cache,
    document,
    exception_handlers,
    limit,
)

from ..conftest import FakeClock

RATE = ["RateLimit", "RateLimit-Policy"]
X_RATE = ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]
REFUSAL = ["Cache-Control", "Retry-After", *RATE, *X_RATE]


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 40000)),
        base_url="http://test",
    )


def documented(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI schema, checked against the OpenAPI 3.1 spec."""
    spec = app.openapi()
    validate(spec)
    return spec


def operation(app: FastAPI, path: str, method: str = "get") -> dict[str, Any]:
    op: dict[str, Any] = documented(app)["paths"][path][method]
    return op


def new_app(**kw: Any) -> FastAPI:
    app = FastAPI(**kw)
    app.router.route_class = DocumentedRoute
    return app


def matches(response: httpx.Response, documented: dict[str, Any]) -> None:
    """``response`` is what ``documented`` (one Response Object) says:
    its media type is documented and its body fits that schema and
    equals the example; every documented header is sent, with the
    example's value where there is one."""
    media = response.headers["content-type"].split(";")[0]
    assert media in documented["content"]
    spec = documented["content"][media]
    body = response.json()
    OAS31Validator(spec["schema"]).validate(body)
    if "example" in spec:
        assert body == spec["example"]
    for name, header in documented["headers"].items():
        assert name in response.headers, name
        if "example" in header:
            assert response.headers[name] == str(header["example"]), name


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    yield FakeClock()


# -- routes under @limit -------------------------------------------------------------


async def test_limit_documents_the_429_it_sends(clock: FakeClock) -> None:
    app = new_app()

    @app.get("/items")
    @limit("2/minute", scope="items", clock=clock)
    async def items() -> dict[str, int]:
        return {"n": 1}

    op = operation(app, "/items")
    refused = op["responses"]["429"]
    assert list(refused["headers"]) == REFUSAL
    assert list(refused["content"]) == ["application/problem+json"]
    problem = refused["content"]["application/problem+json"]
    assert problem["schema"]["required"] == ["type", "title", "status", "detail"]
    assert (
        problem["example"]["detail"] == "Rate limit of 2 exceeded; retry in 30 seconds."
    )
    assert refused["headers"]["RateLimit-Policy"]["example"] == '"items";q=2;w=60'
    ok = op["responses"]["200"]
    assert list(ok["headers"]) == RATE + X_RATE
    assert ok["description"] == "Successful Response"  # FastAPI's own, kept

    async with client(app) as c:
        answers = [await c.get("/items") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    for name in RATE + X_RATE:
        assert name in answers[0].headers
    matches(answers[2], refused)


async def test_header_settings_are_followed(clock: FakeClock) -> None:
    app = new_app()

    @app.get("/retry-only")
    @limit("1/second", headers=["retry-after"], clock=clock)
    def retry_only() -> dict[str, int]:
        return {}

    @app.get("/quiet")
    @limit("1/second", headers_on_allowed=False, clock=clock)
    def quiet() -> dict[str, int]:
        return {}

    @app.get("/dry")
    @limit("1/second", dry_run=True, clock=clock)
    def dry() -> dict[str, int]:
        return {}

    spec = documented(app)["paths"]
    retry = spec["/retry-only"]["get"]["responses"]
    assert list(retry["429"]["headers"]) == ["Cache-Control", "Retry-After"]
    assert "headers" not in retry["200"]
    quiet_r = spec["/quiet"]["get"]["responses"]
    assert "headers" not in quiet_r["200"]
    assert list(quiet_r["429"]["headers"]) == REFUSAL
    dry_r = spec["/dry"]["get"]["responses"]
    assert "429" not in dry_r  # a dry run never refuses
    assert list(dry_r["200"]["headers"]) == RATE + X_RATE

    async with client(app) as c:
        await c.get("/retry-only")
        r = await c.get("/retry-only")
        matches(r, retry["429"])
        assert "ratelimit" not in r.headers
        assert [(await c.get("/dry")).status_code for _ in range(3)] == [200] * 3


async def test_route_responses_win_and_status_codes_follow(clock: FakeClock) -> None:
    app = new_app()

    @app.post(
        "/orders",
        status_code=201,
        responses={429: {"description": "Slow down."}},
    )
    @limit("1/minute", clock=clock)
    async def order() -> dict[str, int]:
        return {"id": 1}

    responses = operation(app, "/orders", "post")["responses"]
    assert responses["429"]["description"] == "Slow down."
    assert list(responses["429"]["headers"]) == REFUSAL
    assert list(responses["201"]["headers"]) == RATE + X_RATE
    assert "200" not in responses


async def test_bans_and_concurrency_are_documented(clock: FakeClock) -> None:
    app = new_app()

    @app.get("/login")
    @limit("1/minute", clock=clock, penalty=Penalty(after=1, within=60, ban=600))
    async def login() -> dict[str, int]:
        return {}

    @app.get("/report")
    @limit("10/second", concurrency=1, clock=clock)
    async def report() -> dict[str, int]:
        return {}

    spec = documented(app)["paths"]
    banned = spec["/login"]["get"]["responses"]["403"]
    assert "Retry-After" in banned["headers"]
    assert "application/problem+json" in banned["content"]
    assert "503" in spec["/report"]["get"]["responses"]
    assert "403" not in spec["/report"]["get"]["responses"]

    async with client(app) as c:
        codes = [(await c.get("/login")).status_code for _ in range(3)]
        assert codes == [200, 429, 403]
        r = await c.get("/login")
        OAS31Validator(
            banned["content"]["application/problem+json"]["schema"]
        ).validate(r.json())
        assert "retry-after" in r.headers


async def test_generator_endpoint_raises_through_the_handlers(clock: FakeClock) -> None:
    app = new_app()

    @app.get("/stream")
    @limit("1/minute", clock=clock)
    def stream() -> Iterator[str]:
        yield "a"

    # Not validated whole: FastAPI documents a streamed 200 with OpenAPI
    # 3.2's itemSchema, which a 3.1 validator refuses.
    refused = app.openapi()["paths"]["/stream"]["get"]["responses"]["429"]
    assert set(refused["content"]) == {"application/problem+json", "application/json"}
    async with client(app) as c:
        await c.get("/stream")
        r = await c.get("/stream")
    assert r.status_code == 429
    assert r.json() == refused["content"]["application/json"]["example"]


# -- the RateLimit dependency ------------------------------------------------------------


@pytest.mark.parametrize("handlers", [False, True])
async def test_dependency_documents_both_bodies(
    clock: FakeClock, handlers: bool
) -> None:
    app = new_app(exception_handlers=exception_handlers if handlers else None)
    guard = RateLimit("2/second", clock=clock)

    @app.get("/search", dependencies=[Depends(guard)])
    def search(q: str = "") -> dict[str, str]:
        return {"q": q}

    refused = operation(app, "/search")["responses"]["429"]
    assert list(refused["content"]) == ["application/problem+json", "application/json"]
    assert list(refused["headers"]) == REFUSAL
    # The example names the route's own scope, as the requests get it.
    policy = refused["headers"]["RateLimit-Policy"]["example"]
    assert policy == f'"{search.__module__}.{search.__qualname__}";q=2;w=1'

    async with client(app) as c:
        answers = [await c.get("/search") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    media = answers[2].headers["content-type"]
    assert media == ("application/problem+json" if handlers else "application/json")
    matches(answers[2], refused)


async def test_dependency_in_a_parameter_and_on_a_router(clock: FakeClock) -> None:
    app = new_app()
    router = APIRouter(
        route_class=DocumentedRoute,
        dependencies=[Depends(RateLimit("5/minute", scope="api", clock=clock))],
    )

    @router.get("/a")
    def a() -> dict[str, int]:
        return {}

    @app.get("/b")
    def b(_: None = Depends(RateLimit("3/minute", scope="b", clock=clock))) -> dict:
        return {}

    app.include_router(router, prefix="/api")
    # Dependencies of the inclusion: through FastAPI's own responses=.
    inner = APIRouter(route_class=DocumentedRoute)

    @inner.get("/c")
    def in_c_route() -> dict[str, int]:
        return {}

    guard = RateLimit("1/second", scope="c", clock=clock)
    app.include_router(
        inner,
        prefix="/in",
        dependencies=[Depends(guard)],
        responses=guard.openapi_responses(),
    )
    spec = documented(app)["paths"]
    c_429 = spec["/in/c"]["get"]["responses"]["429"]
    assert list(spec["/in/c"]["get"]["responses"]["200"]["headers"]) == RATE + X_RATE
    a_429 = spec["/api/a"]["get"]["responses"]["429"]
    assert a_429["headers"]["RateLimit-Policy"]["example"] == '"api";q=5;w=60'
    b_429 = spec["/b"]["get"]["responses"]["429"]
    assert b_429["headers"]["RateLimit-Policy"]["example"] == '"b";q=3;w=60'
    async with client(app) as c:
        answers = [await c.get("/api/a") for _ in range(6)]
        in_c = [await c.get("/in/c") for _ in range(2)]
    assert answers[-1].status_code == 429
    matches(answers[-1], a_429)
    assert in_c[-1].status_code == 429
    matches(in_c[-1], c_429)


# -- routes under @cache --------------------------------------------------------------


async def test_cache_documents_its_headers_and_the_304(clock: FakeClock) -> None:
    app = new_app()

    @app.get("/page")
    @cache(ttl=60, max_age=30, clock=clock)
    async def page() -> dict[str, int]:
        return {"n": 1}

    op = operation(app, "/page")
    ok = op["responses"]["200"]
    assert list(ok["headers"]) == ["X-Cache", "Age", "ETag", "Cache-Control"]
    not_modified = op["responses"]["304"]
    assert list(not_modified["headers"]) == ["X-Cache", "Age", "ETag", "Cache-Control"]
    assert "content" not in not_modified
    assert op["parameters"] == [
        {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "description": "An ETag of a cached answer: 304 when it is still current.",
            "schema": {"type": "string"},
        }
    ]

    async with client(app) as c:
        miss = await c.get("/page")
        clock.advance(5)
        hit = await c.get("/page")
        etag = hit.headers["etag"]
        again = await c.get("/page", headers={"if-none-match": etag})
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    for r in (miss, hit, again):
        for name in ok["headers"]:
            assert name in r.headers, name
    assert hit.headers["age"] == "5"
    assert (
        hit.headers["cache-control"]
        == ok["headers"]["Cache-Control"]["schema"]["example"]
    )
    assert again.status_code == 304 and again.content == b""


async def test_limit_over_cache_documents_both(clock: FakeClock) -> None:
    app = new_app()

    @app.get("/both")
    @limit("1/minute", clock=clock)
    @cache(ttl=60, statuses=(200,), clock=clock)
    async def both(if_none_match: str | None = Header(None)) -> dict[str, int]:
        return {}

    op = operation(app, "/both")
    assert list(op["responses"]["200"]["headers"]) == [
        "X-Cache",
        "Age",
        "ETag",
        *RATE,
        *X_RATE,
    ]
    assert "429" in op["responses"] and "304" in op["responses"]
    # The endpoint declares If-None-Match itself: not twice.
    names = [p["name"].lower() for p in op["parameters"]]
    assert names == ["if-none-match"]


def test_other_routes_are_untouched() -> None:
    def build(route_class: Any) -> FastAPI:
        app = FastAPI()
        app.router.route_class = route_class

        @app.get("/plain", responses={404: {"description": "Missing"}})
        def plain(x: int = 0) -> dict[str, int]:
            return {"x": x}

        @app.post("/made", status_code=201)
        async def made() -> dict[str, int]:
            return {}

        return app

    from fastapi.routing import APIRoute

    ours = documented(build(DocumentedRoute))
    assert json.dumps(ours, sort_keys=True) == json.dumps(
        build(APIRoute).openapi(), sort_keys=True
    )


async def test_document_after_the_routes_are_added(clock: FakeClock) -> None:
    """document(app) documents routes added before it, those of a plain
    APIRouter included into the app among them, and those added after;
    other routes come out as FastAPI documents them; twice is once; a
    schema generated before is made again."""

    def build(documenting: bool) -> FastAPI:
        app = FastAPI()
        router = APIRouter(prefix="/v1")

        @router.get("/items")
        @limit("2/minute", scope="items", clock=clock)
        async def items() -> dict[str, int]:
            return {"n": 1}

        @app.get("/plain")
        def plain(x: int = 0) -> dict[str, int]:
            return {"x": x}

        app.include_router(router)
        if documenting:
            app.openapi()  # generated before: made again
            document(app)
            document(app)

        @app.get("/later")
        @cache(ttl=30)
        async def later() -> dict[str, int]:
            return {"n": 2}

        return app

    app = build(True)
    spec = documented(app)
    refused = spec["paths"]["/v1/items"]["get"]["responses"]["429"]
    assert list(refused["headers"]) == REFUSAL
    assert refused["headers"]["RateLimit-Policy"]["example"] == '"items";q=2;w=60'
    later = spec["paths"]["/later"]["get"]
    assert "304" in later["responses"]
    names = [p["name"] for p in later.get("parameters", [])]
    assert names.count("If-None-Match") == 1
    plain = build(False).openapi()["paths"]["/plain"]
    assert json.dumps(spec["paths"]["/plain"], sort_keys=True) == json.dumps(
        plain, sort_keys=True
    )
    async with client(app) as c:
        answers = [await c.get("/v1/items") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    matches(answers[2], refused)
    with pytest.raises(TypeError, match="FastAPI app or an APIRouter"):
        document(object())


async def test_plans_and_own_responses(clock: FakeClock) -> None:
    """A rate chosen per request has no one example, but the schema
    holds; a rule's own response function gives its own media type."""
    from stanchion.http import Plans, Reply

    app = new_app()

    @app.get("/plan")
    @limit(
        Plans({"free": "1/minute", "pro": "9/minute"}, plan=lambda r: None), clock=clock
    )
    async def plan() -> dict[str, int]:
        return {}

    def text(request: Any, decision: Any) -> Reply:
        return Reply(429, b"slow down", "text/plain")

    @app.get("/text")
    @limit("1/minute", response=text, clock=clock)
    async def text_route() -> dict[str, int]:
        return {}

    spec = documented(app)["paths"]
    plan_429 = spec["/plan"]["get"]["responses"]["429"]
    media = plan_429["content"]["application/problem+json"]
    assert "example" not in media
    assert "example" not in plan_429["headers"]["RateLimit"]
    text_429 = spec["/text"]["get"]["responses"]["429"]
    assert text_429["content"] == {"text/plain": {"example": "slow down"}}
    async with client(app) as c:
        await c.get("/plan")
        refused = await c.get("/plan")
        await c.get("/text")
        refused_text = await c.get("/text")
    assert refused.status_code == 429
    matches(refused, plan_429)
    assert refused_text.text == "slow down"
    assert refused_text.headers["content-type"].startswith("text/plain")
