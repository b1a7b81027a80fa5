"""The HTTP layer shared by every framework adapter.

A :class:`Rule` says which requests are limited, at what rate, keyed on
what, and what the client is told. The adapters (``stanchion.asgi``,
``stanchion.fastapi``, ``stanchion.wsgi``, ``stanchion.flask``,
``stanchion.django``, ``stanchion.hug``) turn their framework's request
into a :class:`Request` view, ask the rule for a :class:`Verdict`, and
turn the verdict into headers or a 429 response.

Client identity
    The socket peer by default. ``X-Forwarded-For`` (or RFC 7239
    ``Forwarded``) is read only when the peer is one of
    ``trusted_proxies``, from the right, skipping trusted hops: the first
    address that is not a trusted proxy is the client. A malformed entry
    stops the walk at the last trusted hop, so forged or garbled headers
    all land in the proxy's own bucket and a spoofer gains nothing. IPv6
    clients are grouped by their /64 (``ipv6_prefix``), since one host
    usually owns a whole /64.

    ``Forwarded`` is read as RFC 7239 writes it: comma-separated
    elements of ``;``-separated ``name=value`` pairs, names in any case,
    values a token or a quoted string (``for="[2001:db8::17]:4711"``).
    Only ``for=`` counts; its node is an IPv4 address or a bracketed
    IPv6 address, with an optional port (a number or an obfuscated
    ``_port``). An element whose ``for=`` is ``unknown``, obfuscated
    (``_hidden``), missing or repeated ends the walk like a malformed
    one, and a header that does not parse as a whole (an unterminated
    quote, a stray character) counts as garbled from the right end, so
    the request stays in the trusted proxy's bucket.

Empty identity
    A key function that returns ``None`` or ``""`` falls back to the
    client address (a missing API key is limited per address, never in
    one shared bucket). If the address is unknown too (no peer, e.g. a
    Unix socket without a trusted proxy), ``unidentified`` decides:
    ``"deny"`` (default) answers 429 without ``Retry-After``; ``"allow"``
    lets the request through unlimited; ``"share"`` puts every such
    request in one bucket named ``<unidentified>``. ``"allow"`` and
    ``"share"`` log a warning the first time they apply.
"""

from __future__ import annotations

import hashlib
import inspect
import ipaddress
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping
from fractions import Fraction
from typing import Any, NamedTuple, TypeAlias, Union

from ._core import Decision, RateHeaders
from ._limiter import Limiter
from ._rates import Rate, normalize_rates

__all__ = [
    "HEADER_FAMILIES",
    "ClientAddress",
    "LimiterCache",
    "Plans",
    "Reply",
    "Request",
    "Rule",
    "SettingError",
    "Verdict",
    "api_key",
    "authenticated_user",
    "problem_json",
]

log = logging.getLogger("stanchion.http")

#: Header families a rule can send: the IETF draft fields (``RateLimit``
#: and ``RateLimit-Policy``), the common ``X-RateLimit-*`` trio, and
#: ``Retry-After`` (on 429 only).
HEADER_FAMILIES = ("ratelimit", "x-ratelimit", "retry-after")

#: Longest identity kept as is; longer ones (and ones that are not valid
#: UTF-8) are replaced by a hash, so a huge header cannot bloat the table.
MAX_IDENTITY = 200
#: Most forwarded hops examined (right to left) before giving up.
MAX_HOPS = 16
#: Longest peer or client name remembered in the per-address tables. A
#: peer is not always an address: uvicorn's --proxy-headers with
#: --forwarded-allow-ips='*' makes the client's own X-Forwarded-For text
#: the peer, up to the server's header limit.
MAX_ADDRESS = 64
#: Distinct rates a LimiterCache keeps before dropping the least used.
MAX_LIMITERS = 1024

PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
NS = 1_000_000_000

RateSpec: TypeAlias = Union[str, Rate, "list[str | Rate]", Any]


class SettingError(ValueError):
    """A bad setting, found when the rule is built (not on a request).

    ``setting`` is the keyword the value was given as; adapters re-raise
    with their own name for it (``STANCHION_DEFAULT_LIMIT``, ...)."""

    def __init__(self, setting: str, reason: str) -> None:
        self.setting = setting
        self.reason = reason
        super().__init__(f"{setting}: {reason}")


# -- the request as the rules see it -------------------------------------------


class Request:
    """A framework's request as the rules see it.

    ``native`` is the framework's own object (ASGI scope or Starlette
    request, WSGI environ, Flask or Django request, falcon request), for
    key functions that need more. ``client`` is the client address after
    the trusted-proxy walk, ``key`` the identity the rule settled on
    (both set while a rule decides, so a rate or cost function can use
    them). Adapters subclass it to read headers and the user their way.
    """

    __slots__ = ("_getter", "_user", "client", "key", "method", "native", "path")

    def __init__(
        self,
        method: str,
        path: str,
        get_header: Callable[[str], str | None] | None = None,
        native: Any = None,
        user: Callable[[], Any] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self._getter = get_header
        self.native = native
        self._user = user
        self.client: str | None = None
        self.key: str | None = None

    def _header(self, name: str) -> str | None:
        """Header ``name`` (lower case); adapters override this."""
        return self._getter(name) if self._getter is not None else None

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), repeated fields joined
        with ``", "``; ``None`` when absent."""
        return self._header(name.lower())

    @property
    def user(self) -> Any:
        """The authenticated user as the framework knows it, or ``None``."""
        return self._user() if self._user is not None else None

    def __repr__(self) -> str:
        return f"<stanchion.http.Request {self.method} {self.path!r}>"


# -- client address ------------------------------------------------------------


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a forwarded entry: bare, ``v4:port``, ``[v6]`` or
    ``[v6]:port``; ``None`` when it is anything else."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    try:
        return _canonical(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text[0] == "[":
        end = text.find("]")
        rest = text[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text, port = text.split(":")
        if not port.isdigit():
            return None
    else:
        return None
    try:
        return _canonical(ipaddress.ip_address(text))
    except ValueError:
        return None


def _canonical(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class ClientAddress:
    """Resolves the client address of a request: the socket peer, or,
    when the peer is a trusted proxy, the first untrusted hop of the
    forwarded header read from the right.

    ``trusted_proxies``: addresses and CIDR ranges (``"10.0.0.0/8"``),
    plus ``"unix"`` to trust a peer-less connection (a Unix socket).
    ``header``: ``"X-Forwarded-For"`` (default) or ``"Forwarded"``;
    configure the one your proxy writes, since the other one passes
    through from the client untouched.
    """

    def __init__(
        self,
        trusted_proxies: Iterable[str] = (),
        *,
        header: str = "X-Forwarded-For",
        ipv6_prefix: int = 64,
    ) -> None:
        if isinstance(trusted_proxies, str):
            trusted_proxies = [trusted_proxies]
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.trust_unix = False
        for item in trusted_proxies:
            if not isinstance(item, str):
                raise SettingError(
                    "trusted_proxies",
                    f"expected address or CIDR strings, got {type(item).__name__}",
                )
            if item == "unix":
                self.trust_unix = True
                continue
            try:
                nets.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise SettingError(
                    "trusted_proxies", f"{item!r} is not an IP address or CIDR range"
                ) from None
        self.networks = tuple(nets)
        if not isinstance(header, str) or header.lower() not in (
            "x-forwarded-for",
            "forwarded",
        ):
            raise SettingError(
                "forwarded_header",
                f"must be 'X-Forwarded-For' or 'Forwarded', got {header!r}",
            )
        self.header = header.lower()
        if (
            isinstance(ipv6_prefix, bool)
            or not isinstance(ipv6_prefix, int)
            or not 1 <= ipv6_prefix <= 128
        ):
            raise SettingError(
                "ipv6_prefix", f"must be an int from 1 to 128, got {ipv6_prefix!r}"
            )
        self.ipv6_prefix = ipv6_prefix
        self._trusted_cache: dict[str, bool] = {}
        self._v6_cache: dict[str, str] = {}

    @property
    def has_proxies(self) -> bool:
        return bool(self.networks) or self.trust_unix

    def __call__(
        self, peer: str | None, get_header: Callable[[str], str | None]
    ) -> str:
        """The client address, or ``""`` when it cannot be known."""
        if not self.has_proxies:
            return self._name(peer) if peer else ""
        if not peer:
            if not self.trust_unix:
                return ""
        elif not self._trusted(peer):
            return self._name(peer)
        value = get_header(self.header)
        current = peer or ""
        if not value:
            return self._name(current) if current else ""
        if self.header == "forwarded":
            hops: Iterable[Any] = _forwarded_hops(value)
        else:
            hops = map(_parse_ip, reversed(value.rsplit(",", MAX_HOPS)))
        for ip in hops:
            if ip is None:
                break  # garbled: keep the last hop we could trust
            text = str(ip)
            if not self._trusted(text):
                return self._name(text)
            current = text
        return self._name(current) if current else ""

    def _trusted(self, addr: str) -> bool:
        cache = self._trusted_cache
        hit = cache.get(addr)
        if hit is not None:
            return hit
        ip = _parse_ip(addr)
        ok = ip is not None and any(ip in net for net in self.networks)
        if len(addr) > MAX_ADDRESS:
            return ok  # no address: not remembered (see MAX_ADDRESS)
        if len(cache) >= 4096:
            cache.clear()
        cache[addr] = ok
        return ok

    def _name(self, addr: str) -> str:
        """The bucket name for an address: IPv4 as is, IPv6 as its
        network of ``ipv6_prefix`` bits (one host usually owns a /64)."""
        if ":" not in addr or len(addr) > MAX_ADDRESS:
            return addr
        cache = self._v6_cache
        name = cache.get(addr)
        if name is None:
            ip = _parse_ip(addr)
            if ip is None:
                name = addr
            elif isinstance(ip, ipaddress.IPv4Address):
                name = str(ip)
            else:
                net = ipaddress.IPv6Network((ip, self.ipv6_prefix), strict=False)
                name = str(net) if self.ipv6_prefix < 128 else str(ip)
            if len(cache) >= 4096:
                cache.clear()
            cache[addr] = name
        return name


# RFC 7239 section 4 (with RFC 9110's token and quoted-string): one
# forwarded-pair or an empty one, then its separator. Each piece matches
# in exactly one way, so a failed match of a long header stays linear.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_FWD_ITEM = rf"[ \t]*(?:({_TOKEN})=({_TOKEN}|{_QUOTED})[ \t]*)?([;,])"
_FWD_HEADER = re.compile(rf"(?:{_FWD_ITEM})*")
_FWD_ITEMS = re.compile(_FWD_ITEM)
# A node (RFC 7239 section 6): IPv4, or IPv6 in brackets, then an
# optional port, a number or an obfuscated ``_name``.
_FWD_NODE = re.compile(
    r"(?:([0-9.]{7,15})|\[([0-9A-Fa-f:.]{2,45})\])(?::(?:[0-9]{1,5}|_[0-9A-Za-z._-]+))?"
)
#: Most parameters read in one ``Forwarded`` element.
MAX_PAIRS = 16


def _forwarded_hops(
    value: str,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address | None]:
    """The ``for=`` address of each element of a ``Forwarded`` header,
    rightmost first (at most ``MAX_HOPS + 1`` of them), ``None`` for an
    element that names no usable address; ``[None]`` when the header
    does not parse."""
    value += ","  # every item then ends with its separator
    if _FWD_HEADER.fullmatch(value) is None:
        return [None]
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address | None] = []
    names: set[str] = set()
    node: str | None = None
    ok = True
    items = _FWD_ITEMS.findall(value)
    # Read from the right; an item with "," ends an element, so meeting
    # one closes the element on its right (read just before).
    for name, val, sep in reversed(items):
        if sep == ",":
            if names:
                out.append(_forwarded_node(node) if ok else None)
                if len(out) > MAX_HOPS:
                    return out
            names = set()
            node = None
            ok = True
        if not name:
            continue  # an empty pair or element: nothing to read
        name = name.lower()
        if name in names or len(names) >= MAX_PAIRS:
            ok = False  # a repeated parameter makes the element invalid
        names.add(name)
        if name == "for":
            node = val
    if names:
        out.append(_forwarded_node(node) if ok else None)
    return out


def _forwarded_node(
    value: str | None,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of a ``for=`` value, or ``None`` when it is missing,
    ``unknown``, obfuscated or not a node."""
    if value is None:
        return None
    if value[:1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    m = _FWD_NODE.fullmatch(value)
    if m is None:
        return None
    v4, v6 = m.groups()
    try:
        if v4 is not None:
            return ipaddress.IPv4Address(v4)
        return _canonical(ipaddress.IPv6Address(v6))
    except ValueError:
        return None


# -- identity helpers ----------------------------------------------------------

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


# -- limiters per distinct rate ------------------------------------------------


class _RateInfo:
    """What the headers need to know about one limiter's rates."""

    __slots__ = ("capacities", "limiter", "max_cost", "rates", "windows")

    def __init__(
        self, limiter: Any, rates: tuple[Rate, ...], capacities: tuple[int, ...]
    ):
        self.limiter = limiter
        self.rates = rates
        self.capacities = capacities
        # The largest cost one hit may ask (None: the limiter does not say).
        self.max_cost: int | None = getattr(limiter, "max_cost", None)
        # (q, w) per rate for RateLimit-Policy: whole quota over whole
        # seconds, scaling the window when the rate is fractional.
        windows = []
        for r in rates:
            if float(r.limit).is_integer() and float(r.period).is_integer():
                windows.append((int(r.limit), int(r.period)))
            else:
                f = (Fraction(r.limit) / Fraction(r.period)).limit_denominator(10**6)
                windows.append((f.numerator, max(1, f.denominator)))
        self.windows = tuple(windows)


class LimiterCache:
    """One limiter per distinct rate (and algorithm), shared by every rule
    that uses it, at most ``maxsize`` of them (least recently used dropped
    first: its clients start afresh)."""

    def __init__(
        self,
        *,
        algorithm: str = "token_bucket",
        storage: Any = None,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] | None = None,
        maxsize: int = MAX_LIMITERS,
    ) -> None:
        self.algorithm = algorithm
        self.storage = storage
        self.max_keys = max_keys
        self.clock = clock
        self.maxsize = maxsize
        self._by_rate: OrderedDict[tuple[Any, ...], _RateInfo] = OrderedDict()
        # Build one limiter now so a bad algorithm/max_keys/storage fails
        # at startup, not on the first request.
        try:
            Limiter("1/second", algorithm=algorithm, max_keys=max_keys, clock=clock)
        except (TypeError, ValueError) as exc:
            raise SettingError("algorithm/max_keys", str(exc)) from None

    def get(self, spec: RateSpec, setting: str = "limit") -> _RateInfo:
        if isinstance(spec, str):
            cache_key: tuple[Any, ...] = (spec,)
        elif isinstance(spec, list):
            cache_key = tuple(spec)
        elif isinstance(spec, tuple):
            cache_key = (spec,)
        else:
            return self._wrap(spec, setting)
        info = self._by_rate.get(cache_key)
        if info is not None:
            self._by_rate.move_to_end(cache_key)
            return info
        try:
            rates = tuple(normalize_rates(spec))
            limiter = Limiter(
                list(rates),
                algorithm=self.algorithm,
                storage=self.storage,
                max_keys=self.max_keys,
                clock=self.clock,
            )
        except (TypeError, ValueError) as exc:
            raise SettingError(setting, f"bad rate {spec!r}: {exc}") from None
        info = _RateInfo(limiter, rates, tuple(_capacity(r) for r in rates))
        self._by_rate[cache_key] = info
        if len(self._by_rate) > self.maxsize:
            self._by_rate.popitem(last=False)
        return info

    def _wrap(self, limiter: Any, setting: str) -> _RateInfo:
        """A limiter object given directly (a Limiter, RedisLimiter, ...)."""
        if not callable(getattr(limiter, "hit", None)):
            raise SettingError(
                setting,
                "expected a rate string such as '10/second', a list of rates or "
                f"a limiter, not {type(limiter).__name__}",
            )
        key = ("limiter", id(limiter))
        info = self._by_rate.get(key)
        if info is None or info.limiter is not limiter:
            rates = tuple(getattr(limiter, "rates", ()) or ())
            info = _RateInfo(limiter, rates, tuple(_capacity(r) for r in rates))
            self._by_rate[key] = info
            if len(self._by_rate) > self.maxsize:
                self._by_rate.popitem(last=False)
        return info


def _capacity(rate: Rate) -> int:
    return max(1, math.floor(rate.limit))


class Plans:
    """Limits by plan: ``Plans({"free": "10/minute", "pro": "600/minute"},
    plan=lambda request: ...)``. Every rate is checked when the rule is
    built. A request whose plan is ``None`` or not in the mapping gets
    ``default`` (a plan name; the first plan when not given), so a
    missing or forged plan never means "no limit". Map a plan to ``None``
    to leave it unlimited."""

    def __init__(
        self,
        rates: Mapping[str, RateSpec | None],
        plan: Callable[[Request], Any],
        default: str | None = None,
    ) -> None:
        if not isinstance(rates, Mapping) or not rates:
            raise SettingError(
                "limit", "Plans needs a non-empty mapping of plan -> rate"
            )
        if not callable(plan):
            raise SettingError("limit", "Plans needs a plan function")
        if default is None:
            default = next(iter(rates))
        if default not in rates:
            raise SettingError("limit", f"default plan {default!r} is not in the plans")
        for name, spec in rates.items():
            if spec is not None and not callable(getattr(spec, "hit", None)):
                try:
                    normalize_rates(spec)
                except (TypeError, ValueError) as exc:
                    raise SettingError("limit", f"plan {name!r}: {exc}") from None
        self.rates = dict(rates)
        self.plan = plan
        self.default = default

    def __call__(self, request: Request) -> RateSpec | None:
        name = self.plan(request)
        if name is None or name not in self.rates:
            name = self.default
        return self.rates[name]


# -- verdicts and replies ------------------------------------------------------


class Reply(NamedTuple):
    """A 429 body: ``Reply(status, body, content_type)``. ``status`` may be
    changed (503 for a maintenance rule, say); stanchion adds the rate
    limit headers and ``Cache-Control: no-store`` itself."""

    status: int
    body: bytes
    content_type: str


class Verdict:
    """What a rule decided for one request.

    ``blocked`` is True only when the request must get a 429 (never in
    dry run); ``decision`` is the limiter's Decision (``None`` when the
    request could not be identified and ``unidentified="deny"``)."""

    __slots__ = ("blocked", "decision", "info", "request", "rule")

    def __init__(
        self,
        rule: Rule,
        decision: Decision | None,
        info: _RateInfo | None,
        blocked: bool,
        request: Request | None,
    ) -> None:
        self.rule = rule
        self.decision = decision
        self.info = info
        self.blocked = blocked
        self.request = request

    @property
    def allowed(self) -> bool:
        return not self.blocked

    def headers(self) -> list[tuple[str, str]]:
        """The rate limit headers this verdict adds to the response."""
        return self.rule._headers(self)

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The same, as ASGI's lower-case byte pairs."""
        return self.rule._raw_headers(self)

    def reply(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """``(status, headers, body)`` of the 429 response."""
        return self.rule._reply(self)

    def __repr__(self) -> str:
        return f"<Verdict blocked={self.blocked} {self.decision!r}>"


def _ceil_seconds(ns: int) -> int:
    return -(-ns // NS)


def problem_json(request: Request, decision: Decision | None) -> Reply:
    """The default 429 body: RFC 9457 problem details with the quota
    exceeded type of the IETF rate limit headers draft."""
    if decision is None:
        detail = "The client could not be identified, so it cannot be served."
    else:
        wait = _ceil_seconds(decision.retry_after_ns)
        detail = (
            f"Rate limit of {decision.limit} exceeded; retry in {wait} "
            f"second{'s' if wait != 1 else ''}."
        )
    body = {
        "type": PROBLEM_TYPE,
        "title": "Too Many Requests",
        "status": 429,
        "detail": detail,
    }
    return Reply(429, json.dumps(body).encode(), "application/problem+json")


def _sf_string(text: str) -> str:
    """``text`` as an RFC 8941 sf-string (printable ASCII, quoted)."""
    safe = "".join(c if " " <= c <= "~" else "_" for c in text)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


ResponseFunc: TypeAlias = Callable[[Request, "Decision | None"], Reply]


class _HeaderParts:
    """The parts of the rate limit headers that never change for one
    (rule, limiter) pair, and their renderer (``_core.RateHeaders``)."""

    __slots__ = ("info", "policy", "render")

    def __init__(
        self,
        info: _RateInfo,
        policy: str,
        names: tuple[str, ...],
        capacities: tuple[int, ...],
        ietf: bool = True,
        x: bool = True,
    ) -> None:
        self.info = info
        self.policy = policy
        # One name per capacity; a lone name answers for every capacity.
        if len(capacities) != len(names):
            capacities = (*capacities, 0)[:1]
        self.render = RateHeaders(policy, names, capacities, ietf, x)

    def py_pairs(self, d: Any) -> list[tuple[str, str]]:
        """What ``render.pairs`` gives, for a decision that is not a
        ``Decision`` (from a limiter object of the user's)."""
        return _py_pairs(self.render, d)

    def py_raw_pairs(self, d: Any) -> list[tuple[bytes, bytes]]:
        """``py_pairs`` as lower-case ASGI byte pairs."""
        return [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in _py_pairs(self.render, d)
        ]


def _py_pairs(h: RateHeaders, d: Any) -> list[tuple[str, str]]:
    """What ``RateHeaders.pairs`` renders, for any object with a
    Decision's fields."""
    limit = d.limit
    remaining = d.remaining
    reset = -(-d.reset_after_ns // NS)
    out: list[tuple[str, str]] = []
    if h.ietf:
        t = reset if d.allowed else -(-d.retry_after_ns // NS)
        name = h.names[0]
        if len(h.names) > 1 and limit in h.capacities:
            name = h.names[h.capacities.index(limit)]
        if h.policy:
            out.append(("RateLimit-Policy", h.policy))
        out.append(("RateLimit", f"{name};r={remaining};t={t}"))
    if h.x:
        out.append(("X-RateLimit-Limit", str(limit)))
        out.append(("X-RateLimit-Remaining", str(remaining)))
        out.append(("X-RateLimit-Reset", str(reset)))
    return out


class Rule:
    """One rate limit for HTTP requests.

    ``limit``: a rate string (``"100/minute;1000/day"``), a list of rates,
    a limiter object (``Limiter``, ``RedisLimiter``), a :class:`Plans`, or
    a function of the request returning any of these (``None``: not
    limited). ``request.key`` and ``request.client`` are set when it is
    called, so rates can depend on the key. One limiter is built per
    distinct rate and shared through ``limiters``.

    ``key``: a function of the request returning the identity to limit
    on (default: the client address). Helpers: :func:`api_key`,
    :func:`authenticated_user`.

    ``scope``: rules with the same scope and rate share buckets (a limit
    across several routes). Also names the policy in the headers.

    ``cost``: an int, or a function of the request returning one.

    ``exempt_paths`` (exact, or a prefix ending in ``*``),
    ``exempt_methods``, ``exempt_when`` (a predicate): not limited.

    ``dry_run``: decide and send headers, but never block (would-be
    429s are logged and counted in ``dry_run_denials``).

    ``headers``: which header families to send (:data:`HEADER_FAMILIES`);
    ``headers_on_allowed``: also on responses that were let through.

    ``response``: a function ``(request, decision) -> Reply`` for the
    429 body (default: :func:`problem_json`).
    """

    def __init__(
        self,
        limit: RateSpec | Callable[[Request], Any] | None,
        *,
        key: KeyFunc | None = None,
        scope: str = "default",
        cost: int | Callable[[Request], Any] = 1,
        exempt_paths: Iterable[str] = (),
        exempt_methods: Iterable[str] = (),
        exempt_when: Callable[[Request], Any] | None = None,
        dry_run: bool = False,
        trusted_proxies: Iterable[str] | ClientAddress = (),
        forwarded_header: str = "X-Forwarded-For",
        ipv6_prefix: int = 64,
        headers: Iterable[str] = HEADER_FAMILIES,
        headers_on_allowed: bool = True,
        response: ResponseFunc | None = None,
        unidentified: str = "deny",
        limiters: LimiterCache | None = None,
        algorithm: str = "token_bucket",
        storage: Any = None,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if limiters is None:
            limiters = LimiterCache(
                algorithm=algorithm, storage=storage, max_keys=max_keys, clock=clock
            )
        self.limiters = limiters
        if not isinstance(scope, str) or not scope:
            raise SettingError("scope", f"must be a non-empty str, got {scope!r}")
        self.scope = scope
        self._prefix = scope + "\x1f"
        # Client address -> its bucket key, and (rules without key, limit
        # or cost functions) -> its pending decision: both depend on the
        # address alone. A socket peer and the name ClientAddress gives it
        # lead to the same entry.
        self._address_keys: dict[str, str | bytes] = {}
        self._client_plans: dict[str, _Pending] = {}

        # limit: fixed (checked now) or a function (checked per request).
        self._fixed: _RateInfo | None = None
        self._limit_func: Callable[[Request], Any] | None = None
        if limit is None:
            raise SettingError("limit", "a rule needs a limit such as '100/minute'")
        if callable(limit) and not callable(getattr(limit, "hit", None)):
            self._limit_func = limit
        else:
            self._fixed = limiters.get(limit)

        if key is not None and not callable(key):
            raise SettingError("key", f"must be a function of the request, not {key!r}")
        self._key = key

        if callable(cost):
            self._cost_func: Callable[[Request], Any] | None = cost
            self._cost = 1
        else:
            self._cost_func = None
            self._cost = _check_cost(cost, "cost")
            if self._fixed is not None and self._fixed.capacities:
                cap = min(self._fixed.capacities)
                if self._cost > cap:
                    raise SettingError(
                        "cost",
                        f"cost {self._cost} is more than the limit allows at once "
                        f"({cap}); such requests could never pass",
                    )

        if isinstance(exempt_paths, str):
            exempt_paths = [exempt_paths]
        exact, prefixes = set(), []
        for p in exempt_paths:
            if not isinstance(p, str) or not p:
                raise SettingError("exempt_paths", f"expected path strings, got {p!r}")
            if p.endswith("*"):
                prefixes.append(p[:-1])
            else:
                exact.add(p)
        self._exempt_exact = frozenset(exact)
        self._exempt_prefixes = tuple(prefixes)
        if isinstance(exempt_methods, str):
            exempt_methods = [exempt_methods]
        methods = set()
        for m in exempt_methods:
            if not isinstance(m, str) or not m.isalpha():
                raise SettingError(
                    "exempt_methods", f"expected method names, got {m!r}"
                )
            methods.add(m.upper())
        self._exempt_methods = frozenset(methods)
        if exempt_when is not None and not callable(exempt_when):
            raise SettingError("exempt_when", "must be a predicate of the request")
        self._exempt_when = exempt_when
        self._plain = not (
            self._exempt_exact
            or self._exempt_prefixes
            or self._exempt_methods
            or self._exempt_when
        )

        if not isinstance(dry_run, bool):
            raise SettingError("dry_run", f"must be True or False, got {dry_run!r}")
        self.dry_run = dry_run
        self.dry_run_denials = 0

        if isinstance(trusted_proxies, ClientAddress):
            self.client_address = trusted_proxies
        else:
            self.client_address = ClientAddress(
                trusted_proxies, header=forwarded_header, ipv6_prefix=ipv6_prefix
            )

        if isinstance(headers, str):
            headers = [headers]
        fams = set()
        for h in headers:
            if not isinstance(h, str) or h.lower() not in HEADER_FAMILIES:
                raise SettingError(
                    "headers", f"unknown header family {h!r} (use {HEADER_FAMILIES})"
                )
            fams.add(h.lower())
        self._send_ietf = "ratelimit" in fams
        self._send_x = "x-ratelimit" in fams
        self._send_retry = "retry-after" in fams
        self._send_all = self._send_ietf and self._send_x
        if not isinstance(headers_on_allowed, bool):
            raise SettingError(
                "headers_on_allowed",
                f"must be True or False, got {headers_on_allowed!r}",
            )
        self.headers_on_allowed = headers_on_allowed and bool(
            self._send_ietf or self._send_x
        )

        if response is not None and not callable(response):
            raise SettingError(
                "response", "must be a function (request, decision) -> Reply"
            )
        self._response = response or problem_json

        if unidentified not in ("deny", "allow", "share"):
            raise SettingError(
                "unidentified",
                f"must be 'deny', 'allow' or 'share', got {unidentified!r}",
            )
        self.unidentified = unidentified
        self._warned = False
        self._parts_cache: dict[int, _HeaderParts] = {}
        self._fixed_parts = (
            self._parts(self._fixed) if self._fixed is not None else None
        )
        self._v6_prefix = self.client_address.ipv6_prefix
        self._tag4, self._tag6 = _scope_tags(scope, self._v6_prefix)
        self._has_funcs = bool(self._limit_func or self._cost_func or self._key)
        #: The fixed limiter decides in C and never waits: acheck_simple
        #: then calls its hit, skipping a coroutine.
        self._fixed_in_c = (
            self._fixed is not None and type(self._fixed.limiter).ahit is _INPROC_AHIT
        )
        #: True when a decision needs only the method, path and peer: the
        #: adapters then call check_simple/acheck_simple and build no
        #: Request view at all (the common case, and the fast one).
        self.simple = not (
            self._has_funcs
            or self._exempt_when is not None
            or self.client_address.has_proxies
            or response is not None
        )

    # -- deciding --------------------------------------------------------------

    def exempt(self, request: Request) -> bool:
        if self._plain:
            return False
        if request.method in self._exempt_methods:
            return True
        path = request.path
        if path in self._exempt_exact:
            return True
        for p in self._exempt_prefixes:
            if path.startswith(p):
                return True
        return bool(self._exempt_when is not None and self._exempt_when(request))

    def _client(self, request: Request, peer: str | None) -> str:
        client = self.client_address(peer, request._header)
        request.client = client or None
        return client

    def _finish(
        self, request: Request, client: str, answer: Any
    ) -> str | bytes | None:
        """The bucket key from a key function's answer (falling back to
        the client address), or None when there is no identity at all."""
        ident: str
        if answer is None or isinstance(answer, str):
            ident = answer or ""
        elif isinstance(answer, bytes):
            try:
                ident = answer.decode("utf-8")
            except UnicodeDecodeError:
                # Hashed as they are: replacing the bad bytes would merge
                # every client whose bytes differ only there.
                request.key = ident = _safe_identity(answer)
                return self._prefix + ident
        else:
            ident = str(answer)
        if not ident:
            if not client:
                return None
            request.key = client
            key = self._address_keys.get(client)
            if key is None:
                key = self._address_key(client)
                if len(client) > MAX_ADDRESS:
                    return key  # not remembered (see MAX_ADDRESS)
                if len(self._address_keys) >= MAX_ADDRESS_KEYS:
                    self._address_keys.clear()
                self._address_keys[client] = key
            return key
        # "#" starts only hashed identities: an answer that starts with it
        # is hashed too, so no answer can name another one's hash.
        if len(ident) > MAX_IDENTITY or not ident.isascii() or ident[0] == "#":
            ident = _safe_identity(ident)
        request.key = ident
        return self._prefix + ident

    def _address_key(self, addr: str) -> str | bytes:
        """The bucket key of a client address (a socket peer, or a name
        from ``client_address``), kept short enough to be stored inline
        in the in-process table (see ``_pack_address``)."""
        key = _pack_address(addr, self._tag4, self._tag6, self._v6_prefix)
        if key is not None:
            return key
        # Not an IP address (a test client's name, say).
        if len(addr) > MAX_IDENTITY or not addr.isascii() or addr[0] == "#":
            addr = _safe_identity(addr)
        return self._prefix + addr

    def _unidentified(self, request: Request) -> Verdict | str | None:
        """For a request with no identity: its 429 (``"deny"``), None (not
        limited: ``"allow"``, or ``"deny"`` in dry run) or the key of the
        one shared bucket (``"share"``)."""
        if self.unidentified == "deny":
            if self.dry_run:
                self.dry_run_denials += 1
                return None
            return Verdict(self, None, None, True, request)
        if not self._warned:
            self._warned = True
            log.warning(
                "stanchion: a request to %s could not be identified (no client "
                "address); unidentified=%r applies",
                request.path,
                self.unidentified,
            )
        if self.unidentified == "allow":
            return None
        request.key = "<unidentified>"
        return self._prefix + "<unidentified>"

    # Every decision takes three steps, the same for check, acheck,
    # check_simple and acheck_simple: a plan (what to ask which limiter,
    # or the verdict when no limiter need be asked; it awaits nothing),
    # the one limiter call (hit, or await ahit), and the conclusion (the
    # limiter's Decision as a Verdict). The four entry points only add
    # the call, so sync and async cannot decide differently.

    def _plan(
        self, request: Request, key: str | bytes | None, spec: Any, cost: Any
    ) -> _Pending | Verdict | None:
        """The pending decision for a request whose identity (``key``),
        rate (``spec``) and cost are known (``spec`` and ``cost`` are the
        limit and cost functions' answers, ignored when there are none);
        a Verdict when it is decided already; None when the request is
        not limited."""
        if key is None:
            shared = self._unidentified(request)
            if not isinstance(shared, str):
                return shared
            key = shared
        info = self._fixed
        if info is None:
            if spec is None:
                return None
            info = self.limiters.get(spec)
        if self._cost_func is None:
            cost = self._cost
        else:
            cost = _check_cost(cost, "cost function")
            if info.max_cost is not None and cost > info.max_cost:
                # More than the limit allows at once: it could never pass.
                d = Decision(False, min(info.capacities or (0,)), 0)
                return self._conclude((info, key, cost, request.key), d, request)
        return (info, key, cost, request.key)

    def _plan_client(self, request: Request, client: str) -> _Pending | Verdict | None:
        """``_plan`` for a rule without key, limit or cost functions,
        whose plan depends on the client address alone (so it is kept)."""
        if client:
            request.key = client
            p = self._client_plans.get(client)
            if p is not None:
                return p
        plan = self._plan(request, self._finish(request, client, None), None, 0)
        if client and isinstance(plan, tuple):
            self._keep_plan(client, plan)
        return plan

    def _plan_simple(
        self, method: str, path: str, peer: str | None
    ) -> _Pending | Verdict | None:
        """``_plan`` for a rule whose ``simple`` is True, from the method,
        path and socket peer alone."""
        if not self._plain and self._exempt_simple(method, path):
            return None
        if not peer:
            return self._plan(Request(method, path), None, None, 0)
        p = self._client_plans.get(peer)
        if p is None:
            info = self._fixed
            assert info is not None  # a simple rule's limit is fixed
            p = (info, self._address_key(peer), self._cost, peer)
            self._keep_plan(peer, p)
        return p

    def _keep_plan(self, address: str, plan: _Pending) -> None:
        if len(address) > MAX_ADDRESS:
            return  # not remembered (see MAX_ADDRESS)
        plans = self._client_plans
        if len(plans) >= MAX_ADDRESS_KEYS:
            plans.clear()
        plans[address] = plan

    def _conclude(
        self, pending: _Pending, d: Decision, request: Request | None
    ) -> Verdict:
        """The verdict on a pending decision, given the limiter's answer."""
        if d.allowed:
            return Verdict(self, d, pending[0], False, request)
        return self._denied(d, pending[0], request, pending[3])

    def _exempt_simple(self, method: str, path: str) -> bool:
        return (
            method in self._exempt_methods
            or path in self._exempt_exact
            or bool(self._exempt_prefixes and path.startswith(self._exempt_prefixes))
        )

    def check_simple(self, method: str, path: str, peer: str | None) -> Verdict | None:
        """``check`` for a rule whose ``simple`` is True, without a Request."""
        # A plain rule's plan depends on the peer alone: reuse it.
        p = self._client_plans.get(peer) if self._plain else None  # type: ignore[arg-type]
        if p is None:
            plan = self._plan_simple(method, path, peer)
            if not isinstance(plan, tuple):
                return plan
            p = plan
        d = p[0].limiter.hit(p[1], p[2])
        if d.allowed:
            return Verdict(self, d, p[0], False, None)
        return self._conclude(p, d, None)

    async def acheck_simple(
        self, method: str, path: str, peer: str | None
    ) -> Verdict | None:
        """``acheck`` for a rule whose ``simple`` is True, without a Request."""
        p = self._client_plans.get(peer) if self._plain else None  # type: ignore[arg-type]
        if p is None:
            plan = self._plan_simple(method, path, peer)
            if not isinstance(plan, tuple):
                return plan
            p = plan
        if self._fixed_in_c:
            d = p[0].limiter.hit(p[1], p[2])  # in C, never waits
        else:
            d = await p[0].limiter.ahit(p[1], p[2])
        if d.allowed:
            return Verdict(self, d, p[0], False, None)
        return self._conclude(p, d, None)

    def check(self, request: Request, peer: str | None) -> Verdict | None:
        """Decide (sync, calls ``limiter.hit``). ``None``: not limited."""
        if not self._plain and self.exempt(request):
            return None
        client = self._client(request, peer)
        if not self._has_funcs:
            p = self._plan_client(request, client)
        else:
            # In this order: the rate and cost functions may read request.key.
            ident = self._key(request) if self._key is not None else None
            key = self._finish(request, client, ident)
            spec = self._limit_func(request) if self._limit_func is not None else None
            cost = self._cost_func(request) if self._cost_func is not None else 0
            p = self._plan(request, key, spec, cost)
        if not isinstance(p, tuple):
            return p
        d = p[0].limiter.hit(p[1], p[2])
        if d.allowed:
            return Verdict(self, d, p[0], False, request)
        return self._conclude(p, d, request)

    async def acheck(self, request: Request, peer: str | None) -> Verdict | None:
        """Decide without blocking the loop (awaits ``limiter.ahit``;
        key, cost and limit functions may be coroutine functions)."""
        if not self._plain and self.exempt(request):
            return None
        client = self._client(request, peer)
        if not self._has_funcs:
            p = self._plan_client(request, client)
        else:
            # check's calls, in its order, each awaited if it gives an awaitable.
            key = self._finish(request, client, await _answer(self._key, request))
            spec = await _answer(self._limit_func, request)
            cost = await _answer(self._cost_func, request)
            p = self._plan(request, key, spec, cost)
        if not isinstance(p, tuple):
            return p
        lim = p[0].limiter
        if type(lim).ahit is _INPROC_AHIT:
            d = lim.hit(p[1], p[2])  # in C, never waits
        else:
            d = await lim.ahit(p[1], p[2])
        if d.allowed:
            return Verdict(self, d, p[0], False, request)
        return self._conclude(p, d, request)

    def _denied(
        self, d: Decision, info: _RateInfo, request: Request | None, key: Any
    ) -> Verdict:
        if self.dry_run:
            self.dry_run_denials += 1
            log.info(
                "stanchion dry run: would have limited key %r (scope %r)",
                key,
                self.scope,
            )
            return Verdict(self, d, info, False, request)
        return Verdict(self, d, info, True, request)

    # -- headers ---------------------------------------------------------------

    def _parts(self, info: _RateInfo) -> _HeaderParts:
        """The static parts of the headers for one limiter, cached."""
        parts = self._parts_cache.get(id(info))
        if parts is not None and parts.info is info:
            return parts
        windows = info.windows
        if len(windows) <= 1:
            names: tuple[str, ...] = (_sf_string(self.scope),)
        else:
            names = tuple(_sf_string(f"{self.scope}-{w}s") for _, w in windows)
        items = []
        for name, (q, w), cap in zip(names, windows, info.capacities, strict=False):
            item = f"{name};q={q};w={w}"
            if cap != q and getattr(info.limiter, "algorithm", "") == "token_bucket":
                item += f";stanchion-burst={cap}"
            items.append(item)
        parts = _HeaderParts(
            info,
            ", ".join(items),
            names,
            info.capacities,
            self._send_ietf,
            self._send_x,
        )
        if len(self._parts_cache) > 256:
            self._parts_cache.clear()
        self._parts_cache[id(info)] = parts
        return parts

    def _headers(self, v: Verdict) -> list[tuple[str, str]]:
        d = v.decision
        if d is None or v.info is None:
            return []
        if not v.blocked and not self.headers_on_allowed:
            return []
        parts = self._fixed_parts
        if parts is None or parts.info is not v.info:
            parts = self._parts(v.info)
        try:
            return parts.render.pairs(d)
        except TypeError:  # not a Decision: render it in Python
            return parts.py_pairs(d)

    def _raw_headers(self, v: Verdict) -> list[tuple[bytes, bytes]]:
        """``_headers`` as lower-case ASGI byte pairs, built directly."""
        d = v.decision
        if d is None or v.info is None:
            return []
        if not v.blocked and not self.headers_on_allowed:
            return []
        parts = self._fixed_parts
        if parts is None or parts.info is not v.info:
            parts = self._parts(v.info)
        try:
            return parts.render.raw_pairs(d)
        except TypeError:  # not a Decision: render it in Python
            return parts.py_raw_pairs(d)

    def _reply(self, v: Verdict) -> tuple[int, list[tuple[str, str]], bytes]:
        d = v.decision
        reply = self._response(v.request, d)  # type: ignore[arg-type]
        if not isinstance(reply, Reply):
            reply = Reply(*reply)
        headers = [
            ("Content-Type", reply.content_type),
            ("Cache-Control", "no-store"),
        ]
        if d is not None:
            if self._send_retry:
                headers.append(
                    ("Retry-After", str(max(1, _ceil_seconds(d.retry_after_ns))))
                )
            headers.extend(self._headers(v))
        body = reply.body if isinstance(reply.body, bytes) else str(reply.body).encode()
        return reply.status, headers, body


_INPROC_AHIT = Limiter.ahit

#: A pending decision: (rate info, bucket key, cost, the identity to name
#: in logs).
_Pending: TypeAlias = "tuple[_RateInfo, str | bytes, int, Any]"


async def _answer(func: Callable[[Request], Any] | None, request: Request) -> Any:
    """A key, limit or cost function's answer, awaited if it is awaitable."""
    if func is None:
        return None
    answer = func(request)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer


# -- client address keys -------------------------------------------------------
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
    return tag4, tag6


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


def _check_cost(cost: Any, setting: str) -> int:
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise SettingError(setting, f"cost must be an int, not {type(cost).__name__}")
    if cost < 1:
        raise SettingError(setting, f"cost must be >= 1, got {cost}")
    return cost


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


def middleware_rule(limit: Any, limiter: Any, scope: str, settings: Any) -> Rule:
    """The Rule of a middleware that limits every request: given a rate
    (``limit=``) or a ready limiter (``limiter=``), never both."""
    if limit is not None and limiter is not None:
        raise ValueError("give either limit= or limiter=, not both")
    return Rule(limit if limiter is None else limiter, scope=scope, **settings)
