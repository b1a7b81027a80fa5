"""What the caches on a shared server (Redis, Memcached) have in common:
the canonical encoding of keys (the same in every process) and the value
serializers."""

from __future__ import annotations

import hashlib
import json
import pickle
from typing import Any, Protocol


class Serializer(Protocol):
    def dumps(self, value: Any, /) -> bytes | str: ...
    def loads(self, data: bytes, /) -> Any: ...


class _Pickle:
    @staticmethod
    def dumps(value: Any) -> bytes:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    loads = staticmethod(pickle.loads)


class _Json:
    @staticmethod
    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        return json.loads(data)


_MISSING: Any = object()

# Cache keys: str and bytes keys are stored as they are (readable in
# redis-cli); any other key, such as the tuples @cached builds from a
# call's arguments, as a 0x00 byte and a canonical encoding of its value,
# which every process computes alike (hash() and repr() do not). A str or
# bytes key that itself starts with 0x00 is encoded too, so two different
# keys never share a stored key. Long encodings are replaced by a SHA-256.
_LONG_KEY = 256


def _encode(value: object, out: bytearray, owner: str) -> None:
    if isinstance(value, str):
        b = value.encode()
        out += b"s%d:" % len(b)
        out += b
    elif isinstance(value, bool):
        out += b"T" if value else b"F"
    elif isinstance(value, int):
        out += b"i%d;" % value
    elif isinstance(value, tuple):
        out += b"t%d:" % len(value)
        for item in value:
            _encode(item, out, owner)
    elif isinstance(value, bytes):
        out += b"b%d:" % len(value)
        out += value
    elif value is None:
        out += b"N"
    elif isinstance(value, float):
        out += b"f" + value.hex().encode() + b";"
    elif isinstance(value, frozenset):
        parts = []
        for item in value:
            buf = bytearray()
            _encode(item, buf, owner)
            parts.append(bytes(buf))
        out += b"z%d:" % len(parts)
        for part in sorted(parts):
            out += part
    elif type(value) is object:
        # A bare object() is @cached's marker between positional and
        # keyword arguments (typed=True keys hold types, below).
        out += b"K"
    elif isinstance(value, type):
        out += f"y{value.__module__}.{value.__qualname__};".encode()
    else:
        raise TypeError(
            f"{owner} keys must be str, bytes, int, float, bool, None, or tuples "
            f"and frozensets of them, not {type(value).__name__} (give @cached a "
            "key= function that returns a str)"
        )


def _cache_key(key: object, owner: str) -> bytes:
    """``key`` as a shared cache stores it; ``owner`` names the cache in
    the error for a key it cannot encode."""
    if isinstance(key, str):
        b = key.encode()
        if not b.startswith(b"\x00"):
            return b
    elif isinstance(key, bytes) and not key.startswith(b"\x00"):
        return bytes(key)
    elif type(key) is object:
        raise TypeError(
            f"{owner} keys must be str, bytes, int, float, bool, None, or tuples "
            "and frozensets of them, not object"
        )
    out = bytearray(b"\x00")
    _encode(key, out, owner)
    if len(out) > _LONG_KEY:
        return b"\x00h" + hashlib.sha256(out).hexdigest().encode()
    return bytes(out)


def _serializer(serializer: object) -> Any:
    """The serializer named or given: ``"pickle"``, ``"json"``, or an
    object with ``dumps`` and ``loads``."""
    if isinstance(serializer, str):
        if serializer not in ("pickle", "json"):
            raise ValueError(
                "serializer must be 'pickle', 'json' or an object with "
                f"dumps/loads, got {serializer!r}"
            )
        return _Pickle if serializer == "pickle" else _Json
    if callable(getattr(serializer, "dumps", None)) and callable(
        getattr(serializer, "loads", None)
    ):
        return serializer
    raise TypeError(
        "serializer must be 'pickle', 'json' or an object with dumps and loads "
        f"methods, not {type(serializer).__name__}"
    )
