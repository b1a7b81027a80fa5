"""Client address: the socket peer, or the first untrusted hop of a
forwarded header sent by a trusted proxy.

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
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

from .request import MAX_ADDRESS, MAX_HOPS, SettingError


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
        elif not isinstance(trusted_proxies, Iterable):
            raise SettingError(
                "trusted_proxies",
                "expected a list of address or CIDR strings ([] for none), "
                f"got {trusted_proxies!r}",
            )
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
        """The client address (an IPv6 one as its network of
        ``ipv6_prefix`` bits), or ``""`` when it cannot be known."""
        address = self.address(peer, get_header)
        return self._name(address) if address else ""

    def address(self, peer: str | None, get_header: Callable[[str], str | None]) -> str:
        """The client address as the peer or the proxy gave it (an IPv6
        address whole, for allow and deny lists), or ``""``."""
        if not self.has_proxies:
            return peer or ""
        if not peer:
            if not self.trust_unix:
                return ""
        elif not self._trusted(peer):
            return peer
        value = get_header(self.header)
        current = peer or ""
        if not value:
            return current
        if self.header == "forwarded":
            hops: Iterable[Any] = _forwarded_hops(value)
        else:
            hops = map(_parse_ip, reversed(value.rsplit(",", MAX_HOPS)))
        for ip in hops:
            if ip is None:
                break  # garbled: keep the last hop we could trust
            text = str(ip)
            if not self._trusted(text):
                return text
            current = text
        return current

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
