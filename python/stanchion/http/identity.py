"""Identity helpers: key functions (:func:`api_key`,
:func:`authenticated_user`) and how a long or unusual identity is
turned into a bucket name."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Container
from typing import Any, TypeAlias

from .request import MAX_IDENTITY, Request, SettingError

KeyFunc: TypeAlias = Callable[[Request], Any]


#: Lower-case names of the headers ``api_key(...)`` rules read: credentials
#: the response cache treats as identity (``identity_headers``).
_API_KEY_HEADERS: set[str] = set()


def _digest(value: str | bytes) -> str:
    """A fixed-size name for a long or unusual identity. Raw bytes are
    hashed as they are (two different byte strings are two clients), in
    their own domain, so they never meet a str's encoding."""
    if isinstance(value, bytes):
        return hashlib.blake2b(value, digest_size=16, person=b"bytes").hexdigest()
    data = value.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def api_key(
    header: str = "X-API-Key",
    *,
    valid: Callable[[str], Any] | Container[str],
) -> KeyFunc:
    """Key requests by an API key header, but only keys that ``valid``
    accepts: a set (or frozenset, dict, any container other than a
    string) of the valid keys, looked up on every request so it may
    change at run time, or a plain (not async) function ``key -> bool``.
    A missing, unknown or invalid key counts against the client address,
    exactly like a request without one, so inventing keys buys nothing.
    Valid keys are hashed (raw keys never reach a shared store)."""
    if not isinstance(header, str) or not header:
        raise SettingError("key", "api_key() needs a header name")
    check: Callable[[str], Any]
    if isinstance(valid, (str, bytes)) or not (
        callable(valid) or isinstance(valid, Container)
    ):
        raise SettingError(
            "key",
            "api_key(valid=...) takes a set of the valid keys or a function "
            f"key -> bool, not {type(valid).__name__}",
        )
    if callable(valid):
        if inspect.iscoroutinefunction(valid):
            raise SettingError(
                "key", "api_key(valid=...) must be a plain function, not async"
            )
        check = valid
    else:
        check = valid.__contains__
    name = header.lower()
    _API_KEY_HEADERS.add(name)

    def key(request: Request) -> str | None:
        value = request.header(name)
        if not value:
            return None
        ok = check(value)
        if ok is not True and inspect.isawaitable(ok):
            if inspect.iscoroutine(ok):
                ok.close()
            raise TypeError(
                "api_key(valid=...) returned an awaitable; give a plain function"
            )
        return "apikey:" + _digest(value) if ok else None

    key.__qualname__ = f"api_key({header!r})"
    return key


def authenticated_user(attribute: str | None = None) -> KeyFunc:
    """Key requests by the authenticated user (``request.user``: Django's
    user, Starlette's ``scope["user"]``, falcon's ``context.user``, or
    what a Flask ``user`` getter returns); anonymous requests fall back
    to the client address. ``attribute`` picks the user field to key on
    (default: ``pk``, ``id``, ``identity`` or ``username``, first found)."""

    def key(request: Request) -> str | None:
        user = request.user
        if user is None or getattr(user, "is_authenticated", True) is False:
            return None
        if attribute is not None:
            ident = getattr(user, attribute, None)
        else:
            ident = None
            for name in ("pk", "id", "identity", "username"):
                ident = getattr(user, name, None)
                if ident is not None:
                    break
            if ident is None and isinstance(user, (str, int)):
                ident = user
        return None if ident is None or ident == "" else f"user:{ident}"

    # Adapters whose user needs loading first (Django's async auser()) look
    # for this mark.
    key.needs_user = True  # type: ignore[attr-defined]
    return key


def _safe_identity(ident: str | bytes) -> str:
    """A long or non-ASCII identity as something the table can hold
    cheaply: kept when short and valid UTF-8 (and not starting with the
    "#" of a hash), else hashed; bytes are always hashed."""
    if isinstance(ident, str) and len(ident) <= MAX_IDENTITY and ident[:1] != "#":
        try:
            ident.encode("utf-8")
            return ident
        except UnicodeEncodeError:
            pass
    return "#" + _digest(ident)
