"""stanchion.http.AccessList: allow and deny lists of addresses and CIDR
blocks, for IPv4, IPv6, mapped and scoped addresses and hostile input."""

from __future__ import annotations

import ipaddress
import random

import pytest

from stanchion.http import AccessList
from stanchion.http.access import MEMO_SIZE


def test_empty_lists_answer_none() -> None:
    acl = AccessList()
    assert not acl
    for a in ("10.0.0.1", "::1", "", "garbage", None, 5):
        assert acl.check(a) is None


@pytest.mark.parametrize(
    ("address", "verdict"),
    [
        ("10.1.2.3", "deny"),
        ("10.255.255.255", "deny"),
        ("11.0.0.0", None),
        ("9.255.255.255", None),
        ("10.1.2.3:8080", "deny"),  # v4:port
        ("192.0.2.10", "allow"),  # the allowed host inside the denied /24
        ("192.0.2.11", "deny"),
        ("203.0.113.77", "allow"),
        ("2001:db8::1", "deny"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "deny"),  # the same, long
        ("2001:DB8::1", "deny"),
        ("[2001:db8::1]", "deny"),
        ("[2001:db8::1]:443", "deny"),
        ("2001:db8:0:1::5", "allow"),  # the allowed /64 inside the denied /32
        ("2001:db9::1", None),
        ("::ffff:10.9.9.9", "deny"),  # IPv4-mapped: its IPv4 self
        ("::ffff:0a09:0909", "deny"),
        ("::ffff:198.51.100.3", "allow"),  # matched by a mapped allow entry
        ("198.51.100.3", "allow"),
        ("::a09:909", None),  # IPv4-compatible is not mapped
        ("fe80::1%eth0", "deny"),  # a zone id is ignored
        ("fe80::1%25", "deny"),
        ("[fe80::1%eth0]:80", "deny"),
        ("fe80::1", "deny"),
        ("::1", "allow"),
        ("127.0.0.1", None),
    ],
)
def test_verdicts(address: str, verdict: str | None) -> None:
    acl = AccessList(
        allow=[
            "192.0.2.10",
            "203.0.113.0/24",
            "2001:db8:0:1::/64",
            "::ffff:198.51.100.0/120",
            "::1",
        ],
        deny=["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32", "fe80::/10"],
    )
    assert acl
    assert acl.check(address) == verdict
    assert acl.check(address) == verdict  # and from the memo


def test_longest_prefix_wins_and_deny_wins_a_tie() -> None:
    acl = AccessList(
        allow=["10.0.0.0/8", "10.1.0.0/16"], deny=["10.1.0.0/16", "10.0.0.0/12"]
    )
    assert acl.check("10.1.2.3") == "deny"  # /16 in both: deny
    assert acl.check("10.2.0.1") == "deny"  # /12 beats /8
    assert acl.check("10.200.0.1") == "allow"
    acl = AccessList(allow="10.1.2.3", deny="0.0.0.0/0")
    assert acl.check("10.1.2.3") == "allow"
    assert acl.check("10.1.2.4") == "deny"
    assert acl.check("::1") is None  # an IPv4 block says nothing of IPv6


class Hostile(str):
    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")


@pytest.mark.parametrize(
    "address",
    [
        "",
        " ",
        "not-an-ip",
        "999.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "01.2.3.4",
        "10.0.0.0/8",  # a block is not a peer
        "::ffff:1.2.3.4.5",
        "1.2.3.4%eth0",
        "[::1",
        "::1]:80",
        "10.1.2.3:",
        "10.1.2.3:http",
        "\x00",
        "10.1.2.3\x00",
        "\u0661\u0660.\u0661.\u0662.\u0663",  # non-ASCII digits
        "x" * 100_000,
        "1" * 65,
        ":" * 64,
        None,
        10,
        b"10.1.2.3",
        ["10.1.2.3"],
        Hostile("10.1.2.3"),
    ],
)
def test_hostile_input_never_raises(address: object) -> None:
    acl = AccessList(deny=["0.0.0.0/0", "::/0"])
    got = acl.check(address)
    if isinstance(address, Hostile):
        assert got == "deny"  # read as the plain string it holds
    else:
        assert got is None


def test_memo_is_bounded() -> None:
    acl = AccessList(deny=["10.0.0.0/8"])
    for i in range(3 * MEMO_SIZE):
        acl.check(f"10.{i % 256}.{i // 256 % 256}.1")
        acl.check(f"junk-{i}")
        assert len(acl._memo) <= MEMO_SIZE
    acl.check("y" * 1000)
    assert "y" * 1000 not in acl._memo


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"allow": ["10.0.0.0/33"]}, ValueError),
        ({"deny": ["hello"]}, ValueError),
        ({"deny": ["10.0.0.1/8/8"]}, ValueError),
        ({"deny": [""]}, ValueError),
        ({"allow": [5]}, TypeError),
        ({"allow": [b"10.0.0.1"]}, TypeError),
        ({"allow": 5}, TypeError),
        ({"deny": b"10.0.0.0/8"}, TypeError),
        ({"deny": None}, TypeError),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        AccessList(**kwargs)  # type: ignore[arg-type]


def test_any_iterable_and_normalised_repr() -> None:
    acl = AccessList(allow=(a for a in ["10.0.0.1/8", " 2001:db8::/32 "]))
    assert acl.allow == ("10.0.0.0/8", "2001:db8::/32")
    assert acl.check("10.3.3.3") == "allow"
    assert "10.0.0.0/8" in repr(acl)
    assert AccessList(deny="::ffff:10.0.0.0/104").deny == ("10.0.0.0/8",)


def test_agrees_with_ipaddress_on_random_addresses() -> None:
    rng = random.Random(13)
    allow = [f"10.{rng.randrange(4)}.0.0/16", "2001:db8:1::/48", "192.0.2.128/25"]
    deny = ["10.0.0.0/14", "2001:db8::/32", "192.0.2.0/24", "10.1.7.7"]
    acl = AccessList(allow=allow, deny=deny)
    nets = [(ipaddress.ip_network(n, strict=False), "allow") for n in allow] + [
        (ipaddress.ip_network(n, strict=False), "deny") for n in deny
    ]

    def expected(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        hits = [
            (n.prefixlen, v == "deny", v)
            for n, v in nets
            if n.version == ip.version and ip in n
        ]
        return max(hits)[2] if hits else None

    for _ in range(5000):
        if rng.random() < 0.5:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(
                rng.choice([0x0A000000, 0xC0000200]) + rng.randrange(1 << 18)
            )
            text = rng.choice([str(ip), f"::ffff:{ip}"])
        else:
            ip = ipaddress.IPv6Address((0x20010DB8 << 96) + rng.randrange(1 << 82))
            text = rng.choice([str(ip), ip.exploded, f"[{ip}]:80"])
        assert acl.check(text) == expected(ip), text
