"""The response cache: HTTP response caching shared by every adapter.

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

from .entries import SENT, Entry, Reply, Upstream, content_etag
from .keys import (
    IDENTITY_HEADERS,
    MAX_HOST,
    MAX_PATH,
    MAX_QUERY,
    Plan,
    environ_header,
    environ_target,
    escape_path,
    normalize_query,
    scope_header,
    scope_target,
)
from .rules import Rules, per_client
from .serving import CacheFront, ResponseCache
from .stores import Store

__all__ = [
    "IDENTITY_HEADERS",
    "MAX_HOST",
    "MAX_PATH",
    "MAX_QUERY",
    "SENT",
    "CacheFront",
    "Entry",
    "Plan",
    "Reply",
    "ResponseCache",
    "Rules",
    "Store",
    "Upstream",
    "content_etag",
    "environ_header",
    "environ_target",
    "escape_path",
    "normalize_query",
    "per_client",
    "scope_header",
    "scope_target",
]
