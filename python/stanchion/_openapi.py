"""OpenAPI descriptions of what a rule or a response cache adds to a
route: the responses (429 and its kin, 304) and response headers, as
entries of a FastAPI route's ``responses`` (OpenAPI 3.1 Response
Objects keyed by status).

Everything here is read off the rule or the cache itself: the header
families it sends, whether allowed responses get them, whether it can
refuse at all (dry run), ban (403) or run out of slots (503), and an
example of the 429 made by the rule's own renderer from a decision of
a throwaway limiter on the same rates."""

from __future__ import annotations

import json
from typing import Any

from ._core import Decision
from ._limiter import Limiter
from .http import PROBLEM_TYPE, Rule, Verdict, problem_json

Responses = dict[int | str, dict[str, Any]]

#: The body stanchion's 429 (and 403, 503) carries: RFC 9457 problem details.
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {
            "type": "string",
            "format": "uri-reference",
            "description": (
                f"{PROBLEM_TYPE} for a rate limit (the IETF RateLimit "
                "draft's quota-exceeded type), about:blank otherwise."
            ),
        },
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}

#: FastAPI's own body for an HTTPException (a RateLimited raised by a
#: dependency, without stanchion's exception handlers).
DETAIL_SCHEMA: dict[str, Any] = {
    "title": "HTTPException",
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"type": "string"}},
}

_INT = {"type": "integer"}
_STR = {"type": "string"}

_RATE_HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit": {
        "description": (
            'The quota left: "<policy>";r=<remaining>;t=<seconds until it '
            "grows> (IETF RateLimit header fields draft)."
        ),
        "schema": _STR,
    },
    "RateLimit-Policy": {
        "description": (
            'The limit\'s policies: "<policy>";q=<quota>;w=<window seconds>, '
            "one per rate."
        ),
        "schema": _STR,
    },
    "X-RateLimit-Limit": {
        "description": "Requests allowed in a burst (the most restrictive rate's).",
        "schema": _INT,
    },
    "X-RateLimit-Remaining": {
        "description": "Requests left now.",
        "schema": _INT,
    },
    "X-RateLimit-Reset": {
        "description": "Seconds until the quota is full again.",
        "schema": _INT,
    },
}
_RETRY_AFTER = {
    "description": "Seconds to wait before the request may succeed.",
    "schema": _INT,
}
_NO_STORE = {
    "description": "no-store: a refusal is never cached.",
    "schema": {"type": "string", "enum": ["no-store"]},
}


def _header(name: str, values: dict[str, str]) -> dict[str, Any]:
    spec = dict(_RATE_HEADERS.get(name) or _RETRY_AFTER)
    value = values.get(name)
    if value is not None:
        spec["example"] = int(value) if spec["schema"] is _INT else value
    return spec


def _families(rule: Rule) -> list[str]:
    """The rate limit header names ``rule`` sends (Retry-After apart)."""
    names: list[str] = []
    if rule._send_ietf:
        names += ["RateLimit", "RateLimit-Policy"]
    if rule._send_x:
        names += ["X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]
    return names


def example_refusal(rule: Rule) -> tuple[int, dict[str, str], bytes] | None:
    """The 429 ``rule`` sends a client that used its quota: status,
    headers and body, rendered by the rule from a decision of a fresh
    limiter on the rule's rates (None when the rate depends on the
    request, or the rule answers with a function that needs one)."""
    info = rule._fixed
    if info is None or not info.rates:
        return None
    try:
        algorithm = getattr(info.limiter, "algorithm", "token_bucket")
        lim = Limiter(list(info.rates), algorithm=algorithm, clock=lambda: 0.0)
        lim.hit("example", cost=min(info.capacities))
        d: Decision = lim.hit("example")
        if d.allowed:
            return None
        status, headers, body = Verdict(rule, d, info, True, None).reply()
    except Exception:  # a response function of the user's that needs a request
        return None
    return status, dict(headers), body


def _allowed_headers(rule: Rule) -> dict[str, Any]:
    if not rule.headers_on_allowed:
        return {}
    return {name: _RATE_HEADERS[name] for name in _families(rule)}


def _refusal_content(
    content_type: str, example: bytes | None, raised: bool
) -> dict[str, Any]:
    """The content of a refusal: stanchion's problem+json (or what the
    rule's response function sends); for a refusal ``raised`` as a
    ``RateLimited`` through FastAPI's handlers, FastAPI's own
    ``{"detail": ...}`` too (without ``stanchion.fastapi.exception_handlers``)."""
    content: dict[str, Any] = {}
    if content_type == "application/problem+json":
        media: dict[str, Any] = {"schema": PROBLEM_SCHEMA}
        if example is not None:
            media["example"] = json.loads(example)
        content[content_type] = media
    elif example is not None:
        content[content_type] = {"example": example.decode("utf-8", "replace")}
    else:
        content[content_type] = {}
    if raised:
        content["application/json"] = {
            "schema": DETAIL_SCHEMA,
            "example": {"detail": "Too Many Requests"},
        }
    return content


def rule_responses(rule: Rule, success: int | str, *, raised: bool) -> Responses:
    """What ``rule`` adds to a route whose success status is ``success``:
    the 429 (unless the rule is in dry run) with its body and headers,
    403 when it bans (``ban_status``) or has a deny list, 503 when a
    global concurrency limit can run out of slots, and the rate limit
    headers on ``success`` when allowed responses get them. ``raised``:
    refusals go through FastAPI's exception handlers (a dependency)."""
    out: Responses = {}
    families = _families(rule)
    example = example_refusal(rule)
    values = example[1] if example is not None else {}
    allowed = _allowed_headers(rule)
    if allowed:
        out[success] = {"headers": allowed}
    if rule.dry_run:
        return out
    content_type = values.get("Content-Type", "application/problem+json")
    if example is None and rule._response is not problem_json:
        content_type = "*/*"
    headers: dict[str, Any] = {"Cache-Control": _NO_STORE}
    if rule._send_retry:
        headers["Retry-After"] = _header("Retry-After", values)
    for name in families:
        headers[name] = _header(name, values)
    out[429] = {
        "description": (
            "Too Many Requests: the client used its quota of this rate limit"
            + (
                "."
                if not raised
                else " (problem+json with stanchion.fastapi.exception_handlers, "
                "else FastAPI's {detail})."
            )
        ),
        "headers": headers,
        "content": _refusal_content(
            content_type, example[2] if example is not None else None, raised
        ),
    }
    bans = rule.limiters.penalty is not None and rule.ban_status == 403
    if bans or rule.access.deny:
        out[403] = {
            "description": (
                "Forbidden: the client is banned for a while (Retry-After) "
                "or its address is on the deny list."
            ),
            "headers": {"Retry-After": _RETRY_AFTER} if bans else {},
            "content": _refusal_content("application/problem+json", None, raised),
        }
    if rule.slots is not None and not rule.slots_per_client:
        out[503] = {
            "description": "Service Unavailable: no request slot freed up in time.",
            "headers": {"Retry-After": _RETRY_AFTER, "Cache-Control": _NO_STORE},
            "content": _refusal_content("application/problem+json", None, False),
        }
    return out


def cache_responses(cache: Any, success: int | str) -> Responses:
    """What a response cache (``stanchion.respcache.ResponseCache``) adds
    to a route whose success status is ``success``: ``X-Cache`` (on
    every answer), and when ``success`` is a stored status ``Age``,
    ``ETag`` and (with ``max_age``) ``Cache-Control``; and the 304
    answered to an ``If-None-Match`` that names the stored ETag."""
    stored: dict[str, Any] = {
        "X-Cache": {
            "description": "HIT: answered from the cache; MISS: from the route.",
            "schema": {"type": "string", "enum": ["HIT", "MISS"]},
        },
        "Age": {
            "description": "Seconds since the stored answer was made.",
            "schema": _INT,
        },
        "ETag": {
            "description": "The stored answer's validator (a hash of its body).",
            "schema": _STR,
        },
    }
    if cache.cache_control is not None:
        stored["Cache-Control"] = {
            "description": "How long shared caches and browsers may keep it.",
            "schema": {"type": "string", "example": cache.cache_control},
        }
    if int(success) not in cache.statuses:
        return {success: {"headers": {"X-Cache": stored["X-Cache"]}}}
    return {
        success: {"headers": stored},
        304: {
            "description": (
                "Not Modified: If-None-Match names the stored answer's ETag."
            ),
            "headers": dict(stored),
        },
    }


IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "An ETag of a cached answer: 304 when it is still current.",
    "schema": {"type": "string"},
}


def merge(into: Responses, more: Responses) -> None:
    """``more`` merged into ``into``: what ``into`` already says (the
    route's own ``responses=``) wins; headers and media types add up."""
    for status, spec in more.items():
        key: int | str = status
        # The route may name it "429" or 429.
        for k in (status, str(status)):
            if k in into:
                key = k
        into[key] = _merged(into.get(key, {}), spec)


def _merged(mine: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    out = dict(mine)
    for k, v in more.items():
        if k not in out:
            out[k] = v
        elif isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = _merged(out[k], v)
    return out
