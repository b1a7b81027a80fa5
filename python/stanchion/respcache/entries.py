"""Entries: what the cache keeps and what it hands back.

:class:`Upstream` is what an adapter got from its app, :class:`Entry` a
stored response (packed as a JSON head plus the raw body for Redis,
weighed in bytes for the in-process bound), :class:`Reply` what an
adapter sends.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Bytes counted per entry beyond the lengths of its strings: the Entry and
# its str/bytes/tuple objects, the table slot, the allocator's rounding.
_ENTRY_OVERHEAD = 640
_HEADER_OVERHEAD = 160  # per stored header: a tuple, two str, a list slot


def content_etag(body: bytes) -> str:
    """The strong ETag of a body: a blake2b digest, so every process and
    host computes the same one."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


#: ``Upstream.native`` of an answer that went to the client as it came
#: (ASGI streams): nothing may replace it, not even a stale entry.
SENT: Any = object()


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
        "store",
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
        #: ``headers`` as ASGI sends them, made on the first hit.
        self.raw: list[tuple[bytes, bytes]] | None = None
        #: ``headers`` as a Django response keeps them (lower-case name
        #: -> (name, value)), made on the first hit (False: they are not
        #: all printable ASCII, so Django's checks must see them).
        self.store: dict[str, tuple[str, str]] | bool | None = None

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


class Reply:
    """What an adapter sends: a response built here (``status``,
    ``headers``, ``body``), or the upstream's own response (``native``)
    with ``headers`` added to it."""

    __slots__ = (
        "body",
        "entry",
        "entry_headers",
        "headers",
        "native",
        "passthrough",
        "status",
    )

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
        #: How many of ``headers`` are ``entry.headers`` as stored: an
        #: adapter may send its encoding of those kept on the entry.
        self.entry_headers = 0
