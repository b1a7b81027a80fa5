"""Bucket keys of client addresses, packed to fit the in-process
table's inline key size."""

from __future__ import annotations

import hashlib
import ipaddress

from .address import _parse_ip

#
# Most buckets are keyed on the client address, so its key is kept within
# the in-process table's inline size (16 bytes, KT_INLINE in
# src/keytable.h), where "scope\x1f203.0.113.7" would need a heap copy:
#
#   kind (1 byte) + scope tag (7 bytes) + IPv4 address (4 bytes)    = 12
#   kind (1 byte) + scope tag (7 bytes) + IPv6 /64 network (8 bytes) = 16
#
# The kind byte (0xff, 0xfe) never occurs in UTF-8, so these bytes keys
# equal no str key's encoding in any storage. The tag is a hash of the
# scope (and, for IPv6, of the prefix length, so networks of different
# sizes never share a key); two scopes of one process never share a tag
# (a colliding scope keeps str keys). Other identities keep the str form
# "scope\x1fidentity".

#: Most address keys (and plans) a rule remembers (then it starts afresh).
MAX_ADDRESS_KEYS = 1024
#: Most scope tags registered in one process.
MAX_SCOPE_TAGS = 65536
_SCOPE_TAGS: dict[bytes, str] = {}
#: The IPv6 prefix length of each IPv6 tag (for describe_key).
_V6_PREFIXES: dict[bytes, int] = {}


def _scope_tags(scope: str, v6_prefix: int) -> tuple[bytes | None, bytes | None]:
    """The (IPv4, IPv6) key heads of ``scope``, or (None, None) when they
    are taken by another scope (or too many scopes exist): str keys then."""
    data = scope.encode("utf-8", "surrogatepass")
    tag4 = b"\xff" + hashlib.blake2b(data, digest_size=7, person=b"ipv4").digest()
    person = b"ipv6/%d" % v6_prefix
    tag6 = b"\xfe" + hashlib.blake2b(data, digest_size=7, person=person).digest()
    for tag in (tag4, tag6):
        if tag not in _SCOPE_TAGS and len(_SCOPE_TAGS) >= MAX_SCOPE_TAGS:
            return None, None
        if _SCOPE_TAGS.setdefault(tag, scope) != scope:
            return None, None
    _V6_PREFIXES[tag6] = v6_prefix
    return tag4, tag6


def describe_key(key: object) -> str | None:
    """What a packed address key stands for, for a log line: ``client
    203.0.113.7 (scope 'api')`` or ``client 2001:db8::/64 (scope
    'api')``; None for any other key."""
    if not isinstance(key, bytes) or len(key) < 9 or key[0] not in (0xFF, 0xFE):
        return None
    tag, rest = key[:8], key[8:]
    scope = _SCOPE_TAGS.get(tag)
    if scope is None:
        return None
    if key[0] == 0xFF:
        if len(rest) != 4:
            return None
        client = str(ipaddress.IPv4Address(rest))
    else:
        bits = _V6_PREFIXES.get(tag)
        if bits is None or len(rest) != (bits + 7) // 8:
            return None
        network = ipaddress.IPv6Address(rest.ljust(16, b"\0"))
        client = f"{network}/{bits}"
    return f"client {client} (scope {scope!r})"


def _pack_address(
    addr: str, tag4: bytes | None, tag6: bytes | None, v6_prefix: int
) -> bytes | None:
    """The bytes key of a client address (a peer such as ``"203.0.113.7"``
    or ``"2001:db8::1"``, or a network name such as ``"2001:db8::/64"``),
    or None when ``addr`` is no IP address."""
    if tag4 is None or tag6 is None:
        return None
    base, slash, bits = addr.partition("/")
    if slash and bits != str(v6_prefix):
        return None
    ip = _parse_ip(base)
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv4Address):
        return None if slash else tag4 + ip.packed
    shift = 128 - v6_prefix
    network = (int(ip) >> shift) << shift
    return tag6 + network.to_bytes(16, "big")[: (v6_prefix + 7) // 8]
