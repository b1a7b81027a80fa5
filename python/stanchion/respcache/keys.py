"""Key building: what the cache makes of a request's target and headers.

The pure functions that turn a request (ASGI scope, WSGI environ, or the
plain values of any framework) into the parts of a key: the raw path and
query, the origin, the header getters, the forwarded and credential
headers; and :class:`Plan`, the request's key and what it may do.
Nothing here does I/O or keeps state beyond small name tables.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

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
