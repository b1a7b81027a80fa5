"""The pure rules: what may be stored, and the answers built from it.

:class:`Rules` holds the request side (a request's :class:`Plan`: its
key, whether it is personal, whether it may be stored) and the response
side (whether an answer may be stored, the entry made from it, the reply
for a hit or a miss). It reads the settings of :class:`ResponseCache`
and does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .. import http as _http
from .entries import Entry, Reply, Upstream, content_etag
from .keys import (
    _FORWARDED,
    _RAW_PATH,
    _RAW_QUERY,
    _SCHEME,
    MAX_HOST,
    MAX_PATH,
    Plan,
    _authority,
    _forwarded_pair,
    _host_part,
    _last,
    _session_pairs,
    environ_target,
    escape_path,
    normalize_query,
    scope_header,
    scope_target,
)

_MISSING: Any = object()

#: Response headers never stored nor replayed from an entry.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "age",
        "x-cache",
    }
)
#: Headers that speak to one client (its rate limit): never stored, and
#: a miss keeps the ones its own request got.
_PER_CLIENT = frozenset({"ratelimit", "ratelimit-policy", "retry-after"})
#: Headers a 304 repeats from the full response (RFC 9110 15.4.5).
_NOT_MODIFIED_KEEP = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary"}
)
_NEVER = frozenset({429})


def _directives(value: str | None) -> set[str]:
    if not value:
        return set()
    return {p.strip().lower() for p in value.split(",") if p.strip()}


def _directive_names(value: str) -> set[str]:
    """The directive names of a Cache-Control value, arguments dropped:
    ``private="Set-Cookie, X-Token"`` is ``private`` (RFC 9111 5.2.2.4,
    5.2.2.7: a quoted argument may hold commas)."""
    names: set[str] = set()
    start = 0
    quoted = False
    for i, ch in enumerate(value + ","):
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            name = value[start:i].split("=", 1)[0].strip().lower()
            if name:
                names.add(name)
            start = i + 1
    if quoted:
        # An unterminated quote: read every piece too, so a directive
        # after it (``x="a, private``) is not hidden inside it.
        names |= {p.split("=", 1)[0].strip().lower() for p in value.split(",")}
    return names


def per_client(name: str) -> bool:
    """Whether a response header (lower case) speaks to one client only:
    the rate limit headers and Retry-After."""
    return name in _PER_CLIENT or name.startswith("x-ratelimit-")


def _etag_matches(inm: str, etag: str) -> bool:
    if inm.strip() == "*":
        return True
    weak = etag[2:] if etag.startswith("W/") else etag
    for tag in inm.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == weak:
            return True
    return False


class Rules:
    """The decisions of :class:`ResponseCache` that need its settings but
    no store: planning a request, judging and replying to an answer."""

    ttl: float
    statuses: frozenset[int]
    cache_control: str | None
    swr: float
    sie: float
    vary_identity: bool
    session_cookies: frozenset[str] | None
    identity_headers: frozenset[str]
    _identity_for: tuple[int, tuple[str, ...]]
    allowed_hosts: frozenset[str] | None
    allowed_domains: tuple[str, ...]
    proxies: _http.ClientAddress | None
    client_refresh: bool
    _origins: dict[tuple[str, str], str | None]
    tags_of: Callable[[str], Iterable[str]] | None
    tags: tuple[str, ...]
    clock: Callable[[], float]
    not_modified: int

    # -- the request side ------------------------------------------------------

    def plan(
        self,
        method: str,
        path: str,
        query: str,
        header: Callable[[str], str | None],
        *,
        raw_path: str | None = None,
        scheme: str = "http",
        server: str | None = None,
        peer: str | None = None,
        remote_user: str | None = None,
    ) -> Plan | None:
        """What the cache makes of a request; None when it is not
        cacheable at all (not GET/HEAD). ``path`` is the decoded path
        (given to a ``tags`` function), ``query`` the raw query string,
        ``header`` a function of a lower-case name; ``raw_path`` the path
        as sent (None: ``path`` is encoded again), ``scheme`` the
        connection's, ``server`` the authority to use when the request
        has no Host, ``peer`` the socket peer (for ``trusted_proxies``).
        :func:`scope_target` and :func:`environ_target` give the last four.
        ``remote_user`` the user the web server authenticated (WSGI's
        ``REMOTE_USER``): a credential, like the identity headers.
        """
        if method != "GET" and method != "HEAD":
            return None
        target = raw_path if raw_path is not None else escape_path(path)
        personal = len(target) > MAX_PATH or not _RAW_PATH(target)
        if not _RAW_QUERY(query):
            personal = True
        origin, forged = self._origin(scheme, header, server, peer)
        if origin is None:
            personal = True
            origin = "-"
        creds = "\0remote-user:" + remote_user if remote_user else ""
        for name in self._identity_names():
            value = header(name)
            if value is not None:
                creds += "\0" + name + ":" + value
        cookie = header("cookie")
        if cookie:
            if self.session_cookies is None:
                creds += "\0cookie:" + cookie
            else:
                pairs = _session_pairs(cookie, self.session_cookies)
                if pairs:
                    creds += "\0cookie:" + "; ".join(pairs)
        if creds and not self.vary_identity:
            personal = True
        cc = header("cache-control")
        revalidate = False
        if cc:
            d = _directives(cc)
            revalidate = "no-cache" in d or "max-age=0" in d
        elif header("pragma") == "no-cache":
            revalidate = True
        tags = self.tags if self.tags_of is None else tuple(self.tags_of(path))
        resource = target + " " + origin
        store = not personal and method == "GET"
        if revalidate and not self.client_refresh:
            store = False
        return Plan(
            method,
            path,
            "e:" + target + "?" + normalize_query(query) + " " + origin,
            header,
            personal,
            forged + creds,
            revalidate,
            header("if-none-match"),
            tags,
            resource,
            store,
            bool(creds),
        )

    def plan_scope(
        self, scope: Any, header: Callable[[str], str | None] | None = None
    ) -> Plan | None:
        """:meth:`plan` for an ASGI http scope."""
        raw, scheme, server, peer = scope_target(scope)
        query = scope.get("query_string") or b""
        return self.plan(
            scope["method"],
            scope["path"],
            query if isinstance(query, str) else query.decode("latin-1"),
            scope_header(scope["headers"]) if header is None else header,
            raw_path=raw,
            scheme=scheme,
            server=server,
            peer=peer,
        )

    def plan_environ(
        self,
        environ: Any,
        header: Callable[[str], str | None],
        path: str | None = None,
        full_path: str | None = None,
    ) -> Plan | None:
        """:meth:`plan` for a WSGI environ (or Django's META); ``path``
        the framework's decoded path (default ``PATH_INFO``), ``full_path``
        see :func:`environ_target`."""
        raw, scheme, server, peer = environ_target(environ, full_path)
        return self.plan(
            environ.get("REQUEST_METHOD") or "GET",
            environ.get("PATH_INFO") or "/" if path is None else path,
            environ.get("QUERY_STRING") or "",
            header,
            raw_path=raw,
            scheme=scheme,
            server=server,
            peer=peer,
            remote_user=environ.get("REMOTE_USER"),
        )

    def _identity_names(self) -> tuple[str, ...]:
        """The credential headers (Cookie aside): the setting's, plus
        every ``api_key(...)`` header declared so far."""
        declared = _http._API_KEY_HEADERS
        seen, names = self._identity_for
        if seen != len(declared):
            names = tuple(sorted((self.identity_headers | declared) - {"cookie"}))
            self._identity_for = (len(declared), names)
        return names

    def _origin(
        self,
        scheme: str,
        header: Callable[[str], str | None],
        server: str | None,
        peer: str | None,
    ) -> tuple[str | None, str]:
        """``scheme://authority`` of the request (None when it cannot be
        keyed or its host is not allowed), and the forwarded headers not
        believed, to be hashed into the key."""
        host = proto = None
        believed: tuple[str, ...] = ()
        proxies = self.proxies
        if proxies is not None and (
            proxies.trust_unix if not peer else proxies._trusted(peer)
        ):
            if proxies.header == "forwarded":
                believed = ("forwarded",)
                host, proto = _forwarded_pair(header("forwarded"))
            else:
                believed = ("x-forwarded-host", "x-forwarded-proto")
                host = _last(header("x-forwarded-host"))
                proto = _last(header("x-forwarded-proto"))
        forged = ""
        for name in _FORWARDED:
            if name not in believed:
                value = header(name)
                if value is not None:
                    forged += "\0" + name + ":" + value
        if host is None:
            host = header("host")
            if host is None:
                host = server or ""
        if len(host) > MAX_HOST or (proto is not None and len(proto) > 16):
            return None, forged  # not remembered: it would hold that memory
        pair = (proto or scheme, host)
        origins = self._origins
        origin = origins.get(pair, _MISSING)
        if origin is _MISSING:
            origin = self._origin_of(*pair)
            if len(origins) >= 4096:
                origins.clear()
            origins[pair] = origin
        return origin, forged

    def _origin_of(self, scheme: str, host: str) -> str | None:
        """``scheme://authority``, or None when either is not valid or
        the host is not allowed."""
        scheme = scheme.lower()
        if not _SCHEME(scheme):
            return None
        authority = _authority(scheme, host)
        if authority is None:
            return None
        if self.allowed_hosts is not None:
            name = _host_part(authority)
            if name not in self.allowed_hosts and not any(
                name.endswith(d) or name == d[1:] for d in self.allowed_domains
            ):
                return None
        return scheme + "://" + authority

    def age(self, entry: Entry) -> float:
        return max(0.0, self.clock() - entry.stored_at)

    # -- the response side -----------------------------------------------------

    def storable(
        self, status: int, headers: list[tuple[str, str]]
    ) -> tuple[str, ...] | None:
        """The response's Vary names (lower case, sorted) when it may be
        stored; None when it may not."""
        if status not in self.statuses:
            return None
        vary: list[str] = []
        for k, v in headers:
            name = k.lower()
            if name == "set-cookie":
                return None
            if name == "cache-control":
                d = _directive_names(v)
                if "private" in d or "no-store" in d or "no-cache" in d:
                    return None
            elif name == "content-type":
                if v.split(";", 1)[0].strip().lower() == "text/event-stream":
                    return None
            elif name == "vary":
                for part in v.split(","):
                    part = part.strip().lower()
                    if part == "*":
                        return None
                    if part:
                        vary.append(part)
        return tuple(sorted(set(vary)))

    def make_entry(self, plan: Plan, up: Upstream, vary: tuple[str, ...]) -> Entry:
        assert up.body is not None
        body = up.body
        etag = None
        has_cc = False
        headers: list[tuple[str, str]] = []
        for k, v in up.headers:
            name = k.lower()
            if name in _HOP or name == "content-length" or per_client(name):
                continue
            if name == "etag":
                etag = v
            elif name == "cache-control":
                has_cc = True
            headers.append((k, v))
        if etag is None:
            etag = content_etag(body)
            headers.append(("ETag", etag))
        if not has_cc and self.cache_control is not None:
            headers.append(("Cache-Control", self.cache_control))
        headers.append(("Content-Length", str(len(body))))
        return Entry(
            plan.key(vary),
            plan.resource,
            up.status,
            headers,
            body,
            etag,
            self.clock(),
            plan.tags,
        )

    def hit(self, plan: Plan, entry: Entry, label: str = "HIT") -> Reply:
        """The reply for a request answered from ``entry``."""
        age = str(int(self.age(entry)))
        if plan.inm is not None and _etag_matches(plan.inm, entry.etag):
            self.not_modified += 1
            headers = [
                (k, v) for k, v in entry.headers if k.lower() in _NOT_MODIFIED_KEEP
            ]
            headers += [("Age", age), ("X-Cache", label)]
            return Reply(304, headers, b"", entry=entry)
        headers = [*entry.headers, ("Age", age), ("X-Cache", label)]
        reply = Reply(
            entry.status, headers, b"" if plan.head else entry.body, entry=entry
        )
        reply.entry_headers = len(entry.headers)
        return reply

    def miss(self, plan: Plan, up: Upstream, entry: Entry | None) -> Reply:
        """The reply for a request that went upstream; ``entry`` is what
        was stored from it, if anything."""
        if entry is not None:
            reply = self.hit(plan, entry, "MISS")
            reply.headers += [(k, v) for k, v in up.headers if per_client(k.lower())]
            return reply
        headers = [("X-Cache", "MISS")]
        if up.body is None or up.native is not None:
            return Reply(up.status, headers, b"", native=up.native, passthrough=True)
        return Reply(up.status, [*up.headers, *headers], up.body)

    def fresh(self, entry: Entry) -> bool:
        return self.age(entry) < self.ttl

    def serve_stale_on_error(self, stale: Entry | None) -> bool:
        return (
            stale is not None and self.sie > 0 and self.age(stale) < self.ttl + self.sie
        )

    def accept(self, plan: Plan, up: Upstream) -> Entry | None:
        """The entry to store for an upstream answer, or None."""
        if not plan.store or up.body is None or up.private:
            return None
        vary = self.storable(up.status, up.headers)
        if vary is None:
            return None
        if "cookie" in vary and not plan.credential:
            # The answer depends on cookies this request did not send: the
            # first visit's page, whose session or CSRF cookie a layer
            # outside the cache adds (Django's and Flask's signal).
            return None
        return self.make_entry(plan, up, vary)

    @staticmethod
    def _vary_of(entry: Entry) -> tuple[str, ...]:
        names: list[str] = []
        for k, v in entry.headers:
            if k.lower() == "vary":
                names += [p.strip().lower() for p in v.split(",") if p.strip()]
        return tuple(sorted(set(names)))
