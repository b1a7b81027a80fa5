"""Allow and deny lists of addresses and CIDR blocks, checked before any
limit: :class:`AccessList`.

``AccessList(allow=[...], deny=[...]).check(address)`` answers
``"allow"``, ``"deny"`` or ``None`` (neither list names it). When both
lists match, the longer prefix wins (deny ``10.0.0.0/8`` but allow
``10.1.2.3``), and deny wins a tie. IPv4-mapped IPv6 addresses
(``::ffff:192.0.2.1``) and networks (``::ffff:10.0.0.0/104``) are their
IPv4 selves; a zone id (``fe80::1%eth0``) is ignored. Bad configuration
raises TypeError or ValueError when the list is built; at request time
``check`` never raises: anything that is not an address is ``None``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .address import _parse_ip
from .request import MAX_ADDRESS

__all__ = ["AccessList"]

#: Answers remembered per address (the memo is emptied when full).
MEMO_SIZE = 4096

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

_MISSING = object()

# One compiled entry: (prefix length, 1 for deny / 0 for allow, version,
# network as an int, the shift that keeps its prefix bits).
_Entry = tuple[int, int, int, int, int]


def _network(item: object, name: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(item, str):
        raise TypeError(
            f"{name} entries must be address or CIDR strings, not {type(item).__name__}"
        )
    try:
        net = ipaddress.ip_network(item.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"{name}: {item!r} is not an IP address or CIDR block"
        ) from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        # ::ffff:a.b.c.d/96+n is the IPv4 block a.b.c.d/n
        v4 = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((v4, net.prefixlen - 96))
    return net


def _networks(
    items: Iterable[str] | str, name: str
) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    if isinstance(items, str):
        items = [items]
    elif not isinstance(items, Iterable) or isinstance(items, (bytes, bytearray)):
        raise TypeError(
            f"{name} must be a list of address or CIDR strings, not "
            f"{type(items).__name__}"
        )
    return [_network(item, name) for item in items]


def _entry(net: ipaddress.IPv4Network | ipaddress.IPv6Network, deny: int) -> _Entry:
    shift = net.max_prefixlen - net.prefixlen
    return (net.prefixlen, deny, net.version, int(net.network_address) >> shift, shift)


class AccessList:
    """Allow and deny lists of addresses and CIDR blocks (IPv4 and IPv6);
    see the module's docstring for the rules."""

    __slots__ = ("_entries", "_memo", "allow", "deny")

    def __init__(
        self, allow: Iterable[str] | str = (), deny: Iterable[str] | str = ()
    ) -> None:
        allowed = _networks(allow, "allow")
        denied = _networks(deny, "deny")
        entries = [_entry(n, 0) for n in allowed] + [_entry(n, 1) for n in denied]
        # Longest prefix first; at equal length, deny first.
        entries.sort(key=lambda e: (-e[0], -e[1]))
        self._entries = tuple(entries)
        self.allow = tuple(str(n) for n in allowed)
        self.deny = tuple(str(n) for n in denied)
        self._memo: dict[str, str | None] = {}

    def __bool__(self) -> bool:
        """False when both lists are empty (nothing to check)."""
        return bool(self._entries)

    def __repr__(self) -> str:
        return f"AccessList(allow={list(self.allow)!r}, deny={list(self.deny)!r})"

    def check(self, address: object) -> str | None:
        """``"allow"``, ``"deny"`` or ``None`` for a peer address string
        (bare, ``v4:port``, ``[v6]`` or ``[v6]:port``). Never raises."""
        if not self._entries:
            return None
        if type(address) is not str:
            if not isinstance(address, str):
                return None
            address = str.__str__(address)  # a plain copy: no user __eq__
        memo = self._memo
        verdict = memo.get(address, _MISSING)
        if verdict is not _MISSING:
            return verdict  # type: ignore[return-value]
        verdict = self._lookup(address)
        if len(address) <= MAX_ADDRESS:  # longer: never an address
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            memo[address] = verdict
        return verdict

    def _lookup(self, address: str) -> str | None:
        ip = _parse_ip(address)
        if ip is None:
            return None
        version, value = ip.version, int(ip)
        for _, deny, v, net, shift in self._entries:
            if v == version and value >> shift == net:
                return "deny" if deny else "allow"
        return None
