"""HTTP response caching rules shared by every framework adapter.

The adapters (``stanchion.asgi.CacheMiddleware``, ``stanchion.wsgi.
CacheMiddleware``, the FastAPI, Flask, Django and hug decorators) only
translate their framework's request and response to and from the plain
values used here; every decision is made in :class:`ResponseCache`:

- only GET and HEAD are cached; a HEAD is answered from the GET entry;
- only the configured statuses are stored (200 by default; 5xx and 429
  never);
- never a response with ``Set-Cookie`` or ``Cache-Control: private``,
  ``no-store`` or ``no-cache`` (with or without field names), nor one
  with ``Vary: *``, nor ``Vary: Cookie`` unless the request's identity
  is in the key, nor a ``text/event-stream``, nor one the framework
  marks as a visitor's own (a session read, a CSRF cookie pending), nor
  a streamed body;
- per-client headers (``RateLimit``, ``RateLimit-Policy``,
  ``X-RateLimit-*``, ``Retry-After``) are never stored nor replayed: a
  miss keeps its own, a hit carries none;
- never anything for a request that carries a credential (one of the
  ``identity_headers``: ``Authorization``, ``Proxy-Authorization``,
  ``X-API-Key``, the header of any ``api_key(...)`` rule, or a cookie,
  a session cookie when ``session_cookies`` names them, or WSGI's
  ``REMOTE_USER``), unless
  ``vary_identity`` is on: then the credentials are hashed into the
  key, so each user has their own entries;
- the key is the whole target URI: scheme, authority (the Host; a
  forwarded host only from one of ``trusted_proxies``), the raw path as
  sent and the raw query with its ``&``-separated pieces sorted by name
  (never decoded; a name's repeats keep their order), plus the values
  of the request headers named by the response's ``Vary`` (the Vary
  names are remembered per path and origin). Forwarded host or scheme headers that are not believed are
  hashed into the key too (``X-Forwarded-Prefix`` and
  ``X-Forwarded-Port`` always are), so an app that does believe them
  never has its answer served to others; ``allowed_hosts`` limits
  caching to those hosts;
- a request ``Cache-Control: no-cache`` (or ``max-age=0``, or ``Pragma:
  no-cache``) goes upstream; its answer replaces the stored entry only
  with ``client_refresh=True``;
- answers carry ``Age`` and ``X-Cache: HIT`` or ``MISS``; stored answers
  get a content hash ``ETag`` (blake2b of the body: the same in every
  process) and ``If-None-Match`` gets 304; ``max_age`` adds
  ``Cache-Control: public, max-age=N`` when the response has none;
- concurrent identical misses reach the upstream once (single flight, per
  process); ``stale_while_revalidate`` serves an expired entry while one
  refresh runs in the background, ``stale_if_error`` serves it when the
  upstream fails or answers 5xx.

Entries live in a C :class:`stanchion.Cache` bounded by bytes
(``maxweight``: bodies, headers, keys and Vary records all count), or in
a :class:`stanchion.RedisCache` shared by every process and host.

Key layout (one string, so a path or a path prefix is a key prefix and
invalidates every host and scheme at once)::

    e:<raw path>?<query> <scheme>://<authority>[#<digest>]
    v:<raw path> <scheme>://<authority>          (the Vary names)

The path holds no ``?``, space or ``#``; the query no space nor ``#``
(a ``#`` starts the digest of a query too long to keep); the origin no
space, ``?`` nor ``#``. A part that cannot meet that is not cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote

from . import http as _http
from ._checks import check_int, check_seconds
from ._core import Cache

__all__ = ["Entry", "Plan", "ResponseCache", "Upstream"]

_MISSING: Any = object()
#: ``Upstream.native`` of an answer that went to the client as it came
#: (ASGI streams): nothing may replace it, not even a stale entry.
SENT: Any = object()

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
# Bytes counted per entry beyond the lengths of its strings: the Entry and
# its str/bytes/tuple objects, the table slot, the allocator's rounding.
_ENTRY_OVERHEAD = 640
_HEADER_OVERHEAD = 160  # per stored header: a tuple, two str, a list slot
_VARY_OVERHEAD = 320  # per Vary record: the record, its tuple, the slot

#: Request headers that carry a credential, by default. The header of any
#: ``stanchion.http.api_key(...)`` rule counts too, whatever the setting.
IDENTITY_HEADERS = ("authorization", "proxy-authorization", "cookie", "x-api-key")
#: Counted whatever ``identity_headers`` says.
_ALWAYS_IDENTITY = ("authorization", "proxy-authorization", "cookie")
#: Longest raw path cached; longer ones pass through uncached.
MAX_PATH = 2048
#: Longest raw query kept as is in a key; longer ones are keyed by their
#: digest (the entry is still found, and weighs little).
MAX_QUERY = 512
MAX_HOST = 255

# Characters of a path percent-encoding keeps as they are (RFC 3986
# pchar and "/"); everything else is encoded, as clients do.
_PATH_SAFE = "/:@!$&'()*+,;=~"
# Visible ASCII, less the key's separators: what a raw part may hold.
_RAW_PATH = re.compile(r"/[\x21\x22\x24-\x3e\x40-\x7e]*").fullmatch
_RAW_QUERY = re.compile(r"[\x21\x22\x24-\x7e]*").fullmatch
_HOST = re.compile(
    r"(?:[a-z0-9._~!$&'()*+;=%-]*|\[[0-9a-z:.]+\])(?::[0-9]*)?"
).fullmatch
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*").fullmatch
_DEFAULT_PORT = {"http": ":80", "https": ":443"}
# Forwarded host/scheme headers: believed from a trusted proxy, else
# hashed into the key (the app behind may believe them). The prefix and
# port ones (werkzeug's ProxyFix x_prefix/x_port, Django's
# USE_X_FORWARDED_PORT) change the links an app builds but never the
# authority: always hashed into the key.
_FORWARDED = (
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-forwarded-prefix",
    "x-forwarded-port",
)


def content_etag(body: bytes) -> str:
    """The strong ETag of a body: a blake2b digest, so every process and
    host computes the same one."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def _query_name(piece: str) -> str:
    return piece.partition("=")[0]


def normalize_query(query: str) -> str:
    """The raw query with its ``&``-separated pieces sorted by name,
    pieces of one name kept in their order (``a=1&a=2`` is not
    ``a=2&a=1``: apps read the first, the last or the list). Nothing is
    decoded: ``q=<b>`` and ``q=%3Cb%3E`` stay apart (an app may reflect
    the raw query). A query longer than ``MAX_QUERY`` becomes ``#`` and
    its digest (a raw query holds no ``#``)."""
    if "&" in query:
        query = "&".join(sorted(query.split("&"), key=_query_name))
    if len(query) > MAX_QUERY:
        digest = hashlib.blake2b(query.encode("latin-1", "replace"), digest_size=16)
        return "#" + digest.hexdigest()
    return query


def escape_path(path: str) -> str:
    """A decoded path percent-encoded as clients send it (UTF-8), for
    servers that do not give the raw one."""
    return quote(path, safe=_PATH_SAFE)


def scope_target(scope: Any) -> tuple[str, str, str | None, str | None]:
    """``(raw path, scheme, server authority, peer)`` of an ASGI http
    scope, for :meth:`ResponseCache.plan`."""
    raw = scope.get("raw_path")
    if raw:
        if not isinstance(raw, str):
            raw = raw.decode("latin-1")
        path = raw.partition("?")[0]
    else:
        path = escape_path(scope["path"])
    server = scope.get("server")
    where = None
    if server:
        where = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    client = scope.get("client")
    return path, scope.get("scheme") or "http", where, client[0] if client else None


def environ_target(
    environ: Any, full_path: str | None = None
) -> tuple[str, str, str | None, str | None]:
    """``(raw path, scheme, server authority, peer)`` of a WSGI environ
    (or Django's META): the path from ``REQUEST_URI`` / ``RAW_URI`` when
    the server gives it, else encoded again: ``full_path`` (the whole
    decoded path, when the framework rewrote the environ's) or
    ``SCRIPT_NAME + PATH_INFO`` (bytes as latin-1, as PEP 3333 has it)."""
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if raw and raw[0] == "/":
        path = raw.partition("?")[0]
    elif full_path is not None:
        path = escape_path(full_path) or "/"
    else:
        full = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        path = quote(full.encode("latin-1", "replace"), safe=_PATH_SAFE) or "/"
    name = environ.get("SERVER_NAME")
    port = environ.get("SERVER_PORT")
    where = None if not name else (f"{name}:{port}" if port else name)
    return (
        path,
        environ.get("wsgi.url_scheme") or "http",
        where,
        environ.get("REMOTE_ADDR") or None,
    )


# Header names as ASGI (bytes) and WSGI (HTTP_*) spell them, worked out
# once per name: the names asked are ours and the responses' Vary names.
_ASGI_NAMES: dict[str, bytes] = {}
_WSGI_NAMES: dict[str, str] = {}
_WSGI_UNPREFIXED = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


def _asgi_name(name: str) -> bytes:
    if len(_ASGI_NAMES) > 1024:
        _ASGI_NAMES.clear()
    raw = _ASGI_NAMES[name] = name.encode("latin-1")
    return raw


def _wsgi_name(name: str) -> str:
    if len(_WSGI_NAMES) > 1024:
        _WSGI_NAMES.clear()
    key = _WSGI_UNPREFIXED.get(name) or "HTTP_" + name.upper().replace("-", "_")
    _WSGI_NAMES[name] = key
    return key


def scope_header(headers: Any) -> Callable[[str], str | None]:
    """A header getter over ASGI ``headers`` (lower-case byte names):
    one pass builds a table on the first call, repeats joined with
    ``", "``."""
    table: dict[bytes, bytes] = {}
    built = False

    def header(name: str) -> str | None:
        nonlocal built
        if not built:
            built = True
            for k, v in headers:
                old = table.get(k)
                table[k] = v if old is None else old + b", " + v
        value = table.get(_ASGI_NAMES.get(name) or _asgi_name(name))
        return None if value is None else value.decode("latin-1")

    return header


def environ_header(environ: Any) -> Callable[[str], str | None]:
    """A header getter over a WSGI environ (lower-case names)."""

    def header(name: str) -> str | None:
        value: str | None = environ.get(_WSGI_NAMES.get(name) or _wsgi_name(name))
        return value

    return header


def _last(value: str | None) -> str | None:
    """The nearest hop's value of a comma-separated forwarded header."""
    if value is None:
        return None
    return value.rpartition(",")[2].strip() or None


def _forwarded_pair(value: str | None) -> tuple[str | None, str | None]:
    """``host=`` and ``proto=`` of the nearest (last) element of an RFC
    7239 ``Forwarded`` header."""
    if not value:
        return None, None
    host = proto = None
    for pair in value.rpartition(",")[2].split(";"):
        name, _, v = pair.partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            v = v[1:-1]
        name = name.strip().lower()
        if name == "host":
            host = v
        elif name == "proto":
            proto = v
    return host, proto


def _authority(scheme: str, host: str) -> str | None:
    """``host`` (a Host header value) as a key part: lower case, without
    the scheme's default port; None when it is not a valid authority."""
    host = host.lower()
    if len(host) > MAX_HOST or not _HOST(host):
        return None
    default = _DEFAULT_PORT.get(scheme)
    if default is not None and host.endswith(default):
        host = host[: -len(default)]
    elif host.endswith(":"):
        host = host[:-1]
    return host


def _host_part(authority: str) -> str:
    if authority.startswith("["):
        return authority[: authority.find("]") + 1]
    return authority.partition(":")[0]


def _session_pairs(cookie: str, names: frozenset[str]) -> list[str]:
    """The ``name=value`` pieces of a Cookie header whose name is one of
    ``names``, names stripped as the frameworks strip them (``sid =x``
    is ``sid``). Commas split too (joined HTTP/2 cookie fields), which
    only ever finds more."""
    found = []
    for piece in re.split("[;,]", cookie):
        name, sep, value = piece.partition("=")
        if sep and name.strip() in names:
            found.append(name.strip() + "=" + value.strip())
    return sorted(found)


def _names(setting: str, names: Any) -> list[str]:
    """A setting's list of names (headers, hosts), lower case."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(f"{setting} must be an iterable of str, not {names!r}")
    out = []
    for n in names:
        if not isinstance(n, str) or not n.strip():
            raise TypeError(f"{setting} must hold non-empty str, not {n!r}")
        out.append(n.strip().lower())
    return out


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


class Upstream:
    """What an adapter got from the app or view: the status, headers (name,
    value) as str, the whole body, and the framework's own response
    object (``native``) for passing through uncached. ``body`` is None when
    the response was not buffered (a stream, or past the size limit).
    ``private`` is True when the framework says the answer is one
    visitor's: a session was read or written, or a CSRF cookie is due
    (set by a layer outside the cache, after it stored the page)."""

    __slots__ = ("body", "headers", "native", "private", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes | None,
        native: Any = None,
        private: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.native = native
        self.private = private

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(found) if found else None


class Entry:
    """A stored response. ``headers`` already hold the ETag, the
    Content-Length and the outgoing Cache-Control."""

    __slots__ = (
        "body",
        "etag",
        "headers",
        "key",
        "path",
        "raw",
        "status",
        "stored_at",
        "tags",
    )

    def __init__(
        self,
        key: str,
        path: str,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        etag: str,
        stored_at: float,
        tags: tuple[str, ...],
    ) -> None:
        self.key = key
        self.path = path
        self.status = status
        self.headers = headers
        self.body = body
        self.etag = etag
        self.stored_at = stored_at
        self.tags = tags
        self.raw: list[tuple[bytes, bytes]] | None = None  # ASGI's encoding

    def pack(self) -> bytes:
        head = json.dumps(
            [
                self.key,
                self.path,
                self.status,
                self.headers,
                self.etag,
                self.stored_at,
                list(self.tags),
            ],
            separators=(",", ":"),
        ).encode()
        return head + b"\n" + self.body

    @classmethod
    def unpack(cls, data: bytes) -> Entry | None:
        head, sep, body = data.partition(b"\n")
        if not sep:
            return None
        try:
            key, path, status, headers, etag, stored_at, tags = json.loads(head)
        except ValueError:
            return None
        return cls(
            key,
            path,
            int(status),
            [(k, v) for k, v in headers],
            body,
            etag,
            float(stored_at),
            tuple(tags),
        )

    def weight(self) -> int:
        """Bytes this entry holds in memory: its strings (the key too)
        plus the objects around them."""
        return (
            len(self.body)
            + len(self.key)
            + len(self.path)
            + len(self.etag)
            + sum(len(k) + len(v) + _HEADER_OVERHEAD for k, v in self.headers)
            + sum(len(t) + 64 for t in self.tags)
            + _ENTRY_OVERHEAD
        )


class Plan:
    """What the cache makes of one request.

    ``base`` is the entry key without its Vary digest, ``resource`` the
    raw path and origin the Vary names are remembered under; ``personal``
    says the shared cache may neither answer nor keep this request's
    answer (a credential, a host not allowed, a target that cannot be
    keyed); ``store`` whether its answer may be stored."""

    __slots__ = (
        "base",
        "credential",
        "head",
        "header",
        "identity",
        "inm",
        "method",
        "path",
        "personal",
        "resource",
        "revalidate",
        "store",
        "tags",
    )

    def __init__(
        self,
        method: str,
        path: str,
        base: str,
        header: Callable[[str], str | None],
        personal: bool,
        identity: str,
        revalidate: bool,
        inm: str | None,
        tags: tuple[str, ...],
        resource: str = "",
        store: bool | None = None,
        credential: bool = False,
    ) -> None:
        self.method = method
        self.head = method == "HEAD"
        self.path = path
        self.base = base  # "e:<raw path>?<query> <scheme>://<authority>"
        self.resource = resource  # "<raw path> <scheme>://<authority>"
        self.header = header
        self.personal = personal  # not answered from nor kept in the cache
        # Hashed into the key: the credentials (vary_identity) and the
        # forwarded headers that are not believed.
        self.identity = identity
        # A credential was sent (and, being cached, is in ``identity``).
        self.credential = credential
        self.revalidate = revalidate
        self.store = not self.head and not personal if store is None else store
        self.inm = inm
        self.tags = tags

    def key(self, vary: tuple[str, ...]) -> str:
        """The entry key for the Vary names stored for this resource."""
        if not vary and not self.identity:
            return self.base
        h = hashlib.blake2b(digest_size=16)
        for name in vary:
            h.update(name.encode("latin-1", "replace") + b"\0")
            value = self.header(name) or ""
            h.update(value.encode("utf-8", "surrogatepass") + b"\0")
        h.update(self.identity.encode("utf-8", "surrogatepass"))
        return self.base + "#" + h.hexdigest()


# ---------------------------------------------------------------------------
# Storage: the C cache in this process, or Redis
# ---------------------------------------------------------------------------


class _VaryRecord:
    """The Vary names stored for one resource, and what they weigh (the
    key included)."""

    __slots__ = ("names", "weight")

    def __init__(self, key: str, names: tuple[str, ...]) -> None:
        self.names = names
        self.weight = len(key) + sum(len(n) + 64 for n in names) + _VARY_OVERHEAD


class _LocalStore:
    """Entries and per-resource Vary names in a C Cache bounded by bytes.
    An entry heavier than the whole bound is not kept."""

    shared = False

    def __init__(self, cache: Cache[str, Any]) -> None:
        self.cache = cache

    def get_vary(self, path: str) -> tuple[str, ...] | None:
        record = self.cache.get("v:" + path)
        return None if record is None else record.names

    def get(self, key: str) -> Entry | None:
        return self.cache.get(key)

    def put(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None:
        vkey = "v:" + entry.path
        record = self.cache.get(vkey)
        if record is None or record.names != vary:
            record = _VaryRecord(vkey, vary)
        bound = self.cache.maxweight
        if bound is not None and entry.weight() + record.weight > bound:
            return  # it would push its own Vary record out
        try:
            self.cache.set(vkey, record, ttl)
            self.cache.set(entry.key, entry, ttl)
        except ValueError:
            pass  # heavier than the bound by the cache's own weigh

    def delete(self, key: str) -> bool:
        return self.cache.pop(key, _MISSING) is not _MISSING

    def delete_where(self, match: Callable[[str, Any], bool]) -> int:
        doomed = [k for k, v in self.cache.items() if match(k, v)]
        return sum(1 for k in doomed if self.cache.pop(k, _MISSING) is not _MISSING)

    def delete_prefix(self, prefix: str) -> int:
        """Delete the keys (``e:`` entries, ``v:`` Vary records) that
        start with ``prefix``."""
        return self.delete_where(lambda k, _: k.startswith(prefix))

    def delete_tag(self, tag: str) -> int:
        return self.delete_where(lambda k, v: isinstance(v, Entry) and tag in v.tags)

    def clear(self) -> None:
        self.cache.clear()

    def close(self) -> None:
        pass  # nothing held outside this process

    async def aclose(self) -> None:
        pass

    async def aget_vary(self, path: str) -> tuple[str, ...] | None:
        return self.get_vary(path)

    async def aget(self, key: str) -> Entry | None:
        return self.cache.get(key)

    async def aput(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None:
        self.put(entry, vary, ttl)


class _RedisStore:
    """Entries in Redis (through a ``stanchion.RedisCache``, its
    connections and outage handling), packed as JSON head + raw body, so
    no pickle is ever loaded from the server. Tags are Redis sets of the
    keys stored under them."""

    shared = True

    def __init__(self, cache: Any) -> None:
        self.rc = cache.namespace("http")

    def _k(self, key: str) -> bytes:
        return bytes(self.rc._raw_key(key))

    @staticmethod
    def _vary(data: Any) -> tuple[str, ...] | None:
        if data is None:
            return None
        text = bytes(data).decode()
        return tuple(text.split(",")) if text else ()

    def _put_cmds(
        self, entry: Entry, vary: tuple[str, ...], ttl: float
    ) -> list[tuple[Any, ...]]:
        px = max(1, math.ceil(ttl * 1000))
        rkey = self._k(entry.key)
        cmds: list[tuple[Any, ...]] = [
            ("SET", self._k("v:" + entry.path), ",".join(vary).encode(), "PX", px),
            ("SET", rkey, entry.pack(), "PX", px),
        ]
        for tag in entry.tags:
            tkey = self._k("t:" + tag)
            cmds.append(("SADD", tkey, rkey))
            cmds.append(("PEXPIRE", tkey, px))
        return cmds

    def get_vary(self, path: str) -> tuple[str, ...] | None:
        return self._vary(self.rc._command("GET", self._k("v:" + path)))

    def get(self, key: str) -> Entry | None:
        data = self.rc._command("GET", self._k(key))
        return None if data is None else Entry.unpack(bytes(data))

    def put(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None:
        for cmd in self._put_cmds(entry, vary, ttl):
            self.rc._command(*cmd)

    def delete(self, key: str) -> bool:
        n = self.rc._command("UNLINK", self._k(key))
        return n is not None and int(n) > 0

    def delete_prefix(self, prefix: str) -> int:
        return int(self.rc._delete_raw_prefix(self._k(prefix)))

    def delete_tag(self, tag: str) -> int:
        tkey = self._k("t:" + tag)
        members = self.rc._command("SMEMBERS", tkey)
        n = 0
        if members:
            n = int(self.rc._command("UNLINK", *members) or 0)
        self.rc._command("UNLINK", tkey)
        return n

    def clear(self) -> None:
        self.rc.clear()

    def close(self) -> None:
        self.rc.close()

    async def aclose(self) -> None:
        await self.rc.aclose()

    async def aget_vary(self, path: str) -> tuple[str, ...] | None:
        return self._vary(await self.rc._acommand("GET", self._k("v:" + path)))

    async def aget(self, key: str) -> Entry | None:
        data = await self.rc._acommand("GET", self._k(key))
        return None if data is None else Entry.unpack(bytes(data))

    async def aput(self, entry: Entry, vary: tuple[str, ...], ttl: float) -> None:
        for cmd in self._put_cmds(entry, vary, ttl):
            await self.rc._acommand(*cmd)


# ---------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------


class Reply:
    """What an adapter sends: a response built here (``status``,
    ``headers``, ``body``), or the upstream's own response (``native``)
    with ``headers`` added to it."""

    __slots__ = ("body", "entry", "headers", "native", "passthrough", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        entry: Entry | None = None,
        native: Any = None,
        passthrough: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.entry = entry
        self.native = native
        self.passthrough = passthrough


class ResponseCache:
    """The response cache rules and store; see the module docstring.

    ``ttl`` seconds an answer stays fresh; ``backend`` None (a C Cache in
    this process of at most ``maxweight`` bytes), a ``stanchion.Cache``
    of your own (give it ``maxweight`` and ``weigh``), or a
    ``stanchion.RedisCache`` (shared); ``statuses`` the statuses stored;
    ``max_age`` adds ``Cache-Control: public, max-age=N``;
    ``stale_while_revalidate`` / ``stale_if_error`` seconds past ``ttl``
    an entry may still be served; ``max_body`` bytes buffered per response
    (larger ones pass through uncached); ``identity_headers`` the request
    headers that carry a credential (default ``IDENTITY_HEADERS``;
    Authorization, Proxy-Authorization, Cookie and each ``api_key(...)``
    header count whatever it says): a request with one is personal, never
    answered from nor kept in the shared cache; ``vary_identity`` keys
    entries by those credentials instead of refusing them;
    ``session_cookies`` names the cookies that identify a user (None: any
    cookie does); ``allowed_hosts`` the host names cached (``".example.com"``
    for the domain and its subdomains; None: any); ``trusted_proxies``
    (addresses and CIDR ranges, or a ``stanchion.http.ClientAddress``)
    the peers whose forwarded host and scheme are believed;
    ``client_refresh`` lets a request's ``Cache-Control: no-cache``
    replace the stored entry (off: that client alone gets a fresh answer);
    ``tags`` strings (or a function of the request's path returning
    them) to invalidate entries by; ``clock`` a function returning
    seconds (tests).
    """

    def __init__(
        self,
        *,
        ttl: float = 60.0,
        backend: Any = None,
        statuses: Iterable[int] = (200,),
        max_age: int | None = None,
        maxweight: int = 64 * 1024 * 1024,
        max_body: int = 1024 * 1024,
        stale_while_revalidate: float = 0.0,
        stale_if_error: float = 0.0,
        vary_identity: bool = False,
        session_cookies: Iterable[str] | None = None,
        identity_headers: Iterable[str] = IDENTITY_HEADERS,
        allowed_hosts: Iterable[str] | None = None,
        trusted_proxies: Iterable[str] | _http.ClientAddress = (),
        client_refresh: bool = False,
        tags: Iterable[str] | Callable[[str], Iterable[str]] = (),
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.ttl = check_seconds("ttl", ttl, zero_ok=False)
        if isinstance(statuses, (str, bytes)) or not isinstance(statuses, Iterable):
            raise TypeError("statuses must be an iterable of ints")
        st = frozenset(statuses)
        for s in st:
            check_int("statuses", s, 100)
            if s >= 500 or s in _NEVER or s > 599:
                raise ValueError(
                    f"statuses must not include {s}: 5xx and 429 are never cached"
                )
        self.statuses = st
        if max_age is not None:
            check_int("max_age", max_age, 0)
        self.max_age = max_age
        self.cache_control = None if max_age is None else f"public, max-age={max_age}"
        check_int("maxweight", maxweight, 1)
        self.max_body = check_int("max_body", max_body, 0)
        self.swr = check_seconds(
            "stale_while_revalidate", stale_while_revalidate, zero_ok=True
        )
        self.sie = check_seconds("stale_if_error", stale_if_error, zero_ok=True)
        if not isinstance(vary_identity, bool):
            raise TypeError(
                f"vary_identity must be a bool, not {type(vary_identity).__name__}"
            )
        self.vary_identity = vary_identity
        if session_cookies is None:
            self.session_cookies: frozenset[str] | None = None
        else:
            if isinstance(session_cookies, str) or not isinstance(
                session_cookies, Iterable
            ):
                raise TypeError(
                    "session_cookies must be an iterable of cookie names or None"
                )
            names = frozenset(session_cookies)
            if not all(isinstance(n, str) and n for n in names):
                raise TypeError("session_cookies must hold non-empty str names")
            self.session_cookies = names
        self.identity_headers = frozenset(
            _names("identity_headers", identity_headers)
        ) | frozenset(_ALWAYS_IDENTITY)
        self._identity_for: tuple[int, tuple[str, ...]] = (-1, ())
        if allowed_hosts is None:
            self.allowed_hosts: frozenset[str] | None = None
            self.allowed_domains: tuple[str, ...] = ()
        else:
            hosts = _names("allowed_hosts", allowed_hosts)
            for h in hosts:
                # "*", a port or a URL would match no request: nothing
                # cached, silently.
                if "*" in h or not _HOST(h.lstrip(".")) or _host_part(h) != h:
                    raise ValueError(
                        "allowed_hosts holds host names (any port), or "
                        f"'.example.com' for a domain and its subdomains: {h!r}"
                    )
            self.allowed_hosts = frozenset(h for h in hosts if h[0] != ".")
            self.allowed_domains = tuple(h for h in hosts if h[0] == ".")
        if isinstance(trusted_proxies, _http.ClientAddress):
            proxies = trusted_proxies
        else:
            proxies = _http.ClientAddress(trusted_proxies)
        self.proxies = proxies if proxies.has_proxies else None
        if not isinstance(client_refresh, bool):
            raise TypeError(
                f"client_refresh must be a bool, not {type(client_refresh).__name__}"
            )
        self.client_refresh = client_refresh
        self._origins: dict[tuple[str, str], str | None] = {}
        if callable(tags):
            self.tags_of: Callable[[str], Iterable[str]] | None = tags
            self.tags: tuple[str, ...] = ()
        else:
            if isinstance(tags, str) or not isinstance(tags, Iterable):
                raise TypeError(
                    "tags must be an iterable of str or a function of the path"
                )
            self.tags = tuple(tags)
            if not all(isinstance(t, str) and t for t in self.tags):
                raise TypeError("tags must be non-empty str")
            self.tags_of = None
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a callable returning seconds")
        self.clock: Callable[[], float] = clock or time.time
        # Entries are kept past their freshness for the stale options.
        self.keep = self.ttl + max(self.swr, self.sie)
        if backend is None:
            self.store: Any = _LocalStore(
                Cache(None, None, clock, maxweight=maxweight, weigh=_weigh)
            )
        elif isinstance(backend, Cache):
            self.store = _LocalStore(backend)
        elif type(backend).__name__ == "RedisCache" and hasattr(backend, "namespace"):
            self.store = _RedisStore(backend)
        else:
            raise TypeError(
                "backend must be None, a stanchion.Cache or a stanchion.RedisCache, "
                f"not {type(backend).__name__}"
            )
        self.hits = self.misses = self.stale = self.stores = self.not_modified = 0
        self.flights: dict[str, Any] = {}
        self.refreshing: set[str] = set()
        self._refresh_lock = threading.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()

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
        return Reply(
            entry.status, headers, b"" if plan.head else entry.body, entry=entry
        )

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

    # -- storage (sync) --------------------------------------------------------

    def lookup(self, plan: Plan) -> Entry | None:
        vary = self.store.get_vary(plan.resource)
        if vary is None:
            return None
        entry: Entry | None = self.store.get(plan.key(vary))
        return entry

    def put(self, entry: Entry) -> None:
        self.stores += 1
        self.store.put(entry, self._vary_of(entry), self.keep)

    async def alookup(self, plan: Plan) -> Entry | None:
        vary = await self.store.aget_vary(plan.resource)
        if vary is None:
            return None
        entry: Entry | None = await self.store.aget(plan.key(vary))
        return entry

    async def aput(self, entry: Entry) -> None:
        self.stores += 1
        await self.store.aput(entry, self._vary_of(entry), self.keep)

    @staticmethod
    def _vary_of(entry: Entry) -> tuple[str, ...]:
        names: list[str] = []
        for k, v in entry.headers:
            if k.lower() == "vary":
                names += [p.strip().lower() for p in v.split(",") if p.strip()]
        return tuple(sorted(set(names)))

    # -- the whole flow, for adapters that call their upstream as a function ---
    #
    # serve and aserve are the same steps; each decision between two I/O
    # calls is one of the pure methods below (_served, _joined, _settle,
    # _failed), so the blocking and the asyncio paths cannot drift.

    def serve(
        self,
        plan: Plan,
        upstream: Callable[[], Upstream],
        background: Callable[[], Upstream] | None = None,
    ) -> Reply:
        """Answer ``plan`` (blocking): from the cache, or by calling
        ``upstream`` (at most once at a time per key in this process).
        ``background`` is a variant of ``upstream`` safe to call from
        another thread, for stale-while-revalidate."""
        stale = None
        if not plan.personal and not plan.revalidate:
            entry = self.lookup(plan)
            if entry is not None:
                reply, refresh = self._served(plan, entry, background is not None)
                if refresh:
                    assert background is not None
                    self._refresh_thread(plan, entry.key, background)
                if reply is not None:
                    return reply
                stale = entry
        self.misses += 1
        if not plan.store:
            return self._call(plan, upstream, stale)
        return self._flight(plan, upstream, stale)

    async def aserve(
        self,
        plan: Plan,
        upstream: Callable[[], Awaitable[Upstream]],
        background: Callable[[], Awaitable[Upstream]] | None = None,
    ) -> Reply:
        """``serve`` for asyncio: single flight through a future per key,
        stale-while-revalidate through a task."""
        stale = None
        if not plan.personal and not plan.revalidate:
            entry = await self.alookup(plan)
            if entry is not None:
                reply, refresh = self._served(plan, entry, background is not None)
                if refresh:
                    assert background is not None
                    self._refresh_task(plan, entry.key, background)
                if reply is not None:
                    return reply
                stale = entry
        self.misses += 1
        if not plan.store:
            return await self._acall(plan, upstream, stale)
        return await self._aflight(plan, upstream, stale)

    # -- decisions shared by serve and aserve ----------------------------------

    def _served(
        self, plan: Plan, entry: Entry, can_refresh: bool
    ) -> tuple[Reply | None, bool]:
        """What a stored entry answers: a hit while fresh; a hit and a
        background refresh while within stale-while-revalidate (when the
        caller can refresh); else nothing (it is only a stale fallback)."""
        age = self.age(entry)
        if age < self.ttl:
            self.hits += 1
            return self.hit(plan, entry), False
        if age < self.ttl + self.swr and can_refresh:
            self.hits += 1
            self.stale += 1
            # A HEAD's refresh would run the app for nothing (its answer
            # is not stored): only a request that may store refreshes.
            return self.hit(plan, entry), plan.store
        return None, False

    def _joined(self, plan: Plan, entry: Entry | None) -> Reply | None:
        """A hit from what another caller's flight stored, when that is
        this request's variant (its Vary headers may differ)."""
        if entry is not None and entry.key == plan.key(self._vary_of(entry)):
            self.misses -= 1
            self.hits += 1
            return self.hit(plan, entry)
        return None

    def _stale_on_error(self, plan: Plan, stale: Entry | None) -> Reply | None:
        """The stale entry as the answer to a failed upstream, when
        stale-if-error allows it."""
        if not self.serve_stale_on_error(stale):
            return None
        assert stale is not None
        self.stale += 1
        return self.hit(plan, stale)

    def _failed(self, plan: Plan, stale: Entry | None, exc: Exception) -> Reply:
        """The answer when the upstream raised: the stale entry, or the
        exception again."""
        fallback = self._stale_on_error(plan, stale)
        if fallback is None:
            raise exc
        return fallback

    def _settle(
        self, plan: Plan, up: Upstream, stale: Entry | None
    ) -> tuple[Reply, Entry | None, bool]:
        """What an upstream answer becomes: the reply, the entry to store
        (or None), and whether the upstream's own response object is done
        with (it is unless the reply passes it through to the client)."""
        if up.status >= 500 and up.native is not SENT:
            fallback = self._stale_on_error(plan, stale)
            if fallback is not None:
                return fallback, None, True
        entry = self.accept(plan, up)
        reply = self.miss(plan, up, entry)
        return reply, entry, reply.native is not up.native

    def _refreshed(self, plan: Plan, up: Upstream) -> Entry | None:
        """What a background refresh stores (its answer goes to nobody)."""
        return self.accept(plan, up)

    def _call(
        self, plan: Plan, upstream: Callable[[], Upstream], stale: Entry | None
    ) -> Reply:
        try:
            up = upstream()
        except Exception as exc:
            return self._failed(plan, stale, exc)
        reply, entry, done = self._settle(plan, up, stale)
        try:
            if entry is not None:
                self.put(entry)
        finally:
            if done:
                _close(up.native)
        return reply

    async def _acall(
        self,
        plan: Plan,
        upstream: Callable[[], Awaitable[Upstream]],
        stale: Entry | None,
    ) -> Reply:
        try:
            up = await upstream()
        except Exception as exc:
            return self._failed(plan, stale, exc)
        reply, entry, done = self._settle(plan, up, stale)
        try:
            if entry is not None:
                await self.aput(entry)
        finally:
            if done:
                _close(up.native)
        return reply

    # -- single flight and background refresh ----------------------------------

    def _flight(
        self, plan: Plan, upstream: Callable[[], Upstream], stale: Entry | None
    ) -> Reply:
        fkey = plan.base + "\0" + plan.identity
        mine = _ThreadFlight()
        other = self.flights.setdefault(fkey, mine)
        if other is not mine:
            other.done.wait()
            joined = self._joined(plan, other.entry)
            if joined is not None:
                return joined
            return self._call(plan, upstream, stale)
        try:
            reply = self._call(plan, upstream, stale)
            mine.entry = reply.entry
            return reply
        finally:
            self.flights.pop(fkey, None)
            mine.done.set()

    async def _aflight(
        self,
        plan: Plan,
        upstream: Callable[[], Awaitable[Upstream]],
        stale: Entry | None,
    ) -> Reply:
        fkey = plan.base + "\0" + plan.identity
        other = self.flights.get(fkey)
        if isinstance(other, asyncio.Future) and not other.done():
            if other.get_loop() is not asyncio.get_running_loop():
                # Another event loop's flight cannot be awaited here: an
                # async view called from sync code (Django under WSGI)
                # runs in an event loop of its own per request.
                return await self._acall(plan, upstream, stale)
            joined = self._joined(plan, await asyncio.shield(other))
            if joined is not None:
                return joined
            return await self._acall(plan, upstream, stale)
        mine: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self.flights[fkey] = mine
        entry = None
        try:
            reply = await self._acall(plan, upstream, stale)
            entry = reply.entry
            return reply
        finally:
            if self.flights.get(fkey) is mine:
                del self.flights[fkey]
            mine.set_result(entry)

    def _refresh_begin(self, key: str) -> bool:
        """Count a refresh of ``key`` in flight (False: one already is)."""
        with self._refresh_lock:
            if key in self.refreshing:
                return False
            self.refreshing.add(key)
            return True

    def _refresh_end(self, key: str) -> None:
        with self._refresh_lock:
            self.refreshing.discard(key)
            if not self.refreshing:
                self._refresh_lock.notify_all()

    def _refresh_thread(
        self, plan: Plan, key: str, background: Callable[[], Upstream]
    ) -> None:
        if not self._refresh_begin(key):
            return

        def run() -> None:
            try:
                up = background()
                try:
                    entry = self._refreshed(plan, up)
                    if entry is not None:
                        self.put(entry)
                finally:
                    _close(up.native)
            except Exception:
                pass  # the stale entry stays until it expires
            finally:
                self._refresh_end(key)

        threading.Thread(target=run, daemon=True).start()

    def _refresh_task(
        self, plan: Plan, key: str, upstream: Callable[[], Awaitable[Upstream]]
    ) -> None:
        if not self._refresh_begin(key):
            return

        async def run() -> None:
            try:
                up = await upstream()
                try:
                    entry = self._refreshed(plan, up)
                    if entry is not None:
                        await self.aput(entry)
                finally:
                    _close(up.native)
            except Exception:
                pass  # the stale entry stays until it expires
            finally:
                self._refresh_end(key)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wait_refreshes(self, timeout: float | None = None) -> bool:
        """Block until no background refresh (stale-while-revalidate) is
        in flight, or ``timeout`` seconds pass; True when none is. Not
        from the event loop whose tasks refresh: ``await_refreshes``."""
        if timeout is not None:
            check_seconds("timeout", timeout, zero_ok=True)
        with self._refresh_lock:
            return self._refresh_lock.wait_for(lambda: not self.refreshing, timeout)

    async def await_refreshes(self) -> None:
        """Wait for this event loop's background refreshes to finish."""
        loop = asyncio.get_running_loop()
        mine = [t for t in self._tasks if t.get_loop() is loop]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)

    # -- management ------------------------------------------------------------

    def invalidate(
        self,
        path: str | None = None,
        *,
        query: str | None = None,
        prefix: str | None = None,
        tag: str | None = None,
    ) -> int:
        """Forget entries: every variant of one ``path`` (or, with
        ``query``, that path and query: its variants by Vary/identity
        too), every path starting with ``prefix``, or every entry stored
        with ``tag``; for every host and scheme. Returns how many keys
        were removed.

        ``path`` and ``prefix`` are the path as clients send it (the
        whole path, a mount prefix or ``SCRIPT_NAME`` included),
        percent-encoded: characters a URL path cannot hold as they are
        get encoded as clients encode them (``/café`` is
        ``/caf%C3%A9``). ``query`` is the raw query string; the order
        of its ``&``-separated pieces does not matter."""
        given = [x for x in (path, prefix, tag) if x is not None]
        if len(given) != 1:
            raise TypeError("give exactly one of path=, prefix=, tag=")
        if not isinstance(given[0], str) or not given[0]:
            raise TypeError("path, prefix and tag must be non-empty str")
        if query is not None and path is None:
            raise TypeError("query= goes with path=")
        if query is not None and not isinstance(query, str):
            raise TypeError(f"query must be a str, not {type(query).__name__}")
        if tag is not None:
            return int(self.store.delete_tag(tag))
        where = given[0]
        what = "path" if path is not None else "prefix"
        if where[0] != "/":
            # "api/items" or "https://host/items" would silently match
            # nothing: keys hold the path only, as sent, from its "/".
            raise ValueError(
                f"{what} must start with '/' (the path as clients send it, "
                f"without scheme or host): {where!r}"
            )
        if "?" in where or "#" in where:
            raise ValueError(
                f"{what} must not hold '?' or '#' (give the query as query=): "
                f"{where!r}"
            )
        where = quote(where, safe=_PATH_SAFE + "%")
        if prefix is not None:
            n = int(self.store.delete_prefix("e:" + where))
            return n + int(self.store.delete_prefix("v:" + where))
        if query is not None:
            base = "e:" + where + "?" + normalize_query(query) + " "
            return int(self.store.delete_prefix(base))
        n = int(self.store.delete_prefix("e:" + where + "?"))
        return n + int(self.store.delete_prefix("v:" + where + " "))

    def clear(self) -> None:
        """Forget every entry."""
        self.store.clear()

    def close(self) -> None:
        """Close the backend's blocking connections (Redis)."""
        self.store.close()

    async def aclose(self) -> None:
        """Wait for this event loop's background refreshes, then close the
        backend's asyncio connections made on this loop (Redis). Call it
        before the loop ends (an ASGI app's lifespan shutdown does)."""
        await self.await_refreshes()
        await self.store.aclose()

    def stats(self) -> dict[str, int]:
        """Counts since start: hits (stale ones included), misses, stale
        (stale answers served), stores, not_modified (304 answers)."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "stale": self.stale,
            "stores": self.stores,
            "not_modified": self.not_modified,
        }


class _ThreadFlight:
    __slots__ = ("done", "entry")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: Entry | None = None


def _weigh(value: Any) -> int:
    if isinstance(value, Entry):
        return value.weight()
    if isinstance(value, _VaryRecord):
        return value.weight
    return 64


def _close(native: Any) -> None:
    close = getattr(native, "close", None)
    if close is not None:
        close()


class CacheFront:
    """What the ASGI and WSGI cache middleware share: the wrapped app, the
    path prefixes they cache (None: every path), the ResponseCache and its
    management (``invalidate``, ``clear``, ``stats``)."""

    def __init__(self, app: Any, /, *, paths: Any = None, **settings: Any) -> None:
        if paths is not None:
            if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
                raise TypeError("paths must be a list of path prefixes")
            paths = tuple(paths)
        self.app = app
        self.paths: tuple[str, ...] | None = paths
        self.cache = ResponseCache(**settings)

    def invalidate(self, path: str | None = None, **kw: Any) -> int:
        return self.cache.invalidate(path, **kw)

    def clear(self) -> None:
        self.cache.clear()

    def stats(self) -> dict[str, int]:
        return self.cache.stats()
