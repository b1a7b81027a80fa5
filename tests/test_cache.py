"""stanchion.Cache: the mapping, expiry, weights, a differential test against
a small Python model, reentrancy, GC and reference counts."""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stanchion
from stanchion import Cache

from .conftest import FakeClock

ISOLATED = Path(__file__).with_name("isolated")

# ---------------------------------------------------------------------------
# The mapping
# ---------------------------------------------------------------------------


def test_is_exported_and_generic() -> None:
    assert stanchion.Cache is stanchion._core.Cache
    assert Cache[str, int].__origin__ is Cache  # type: ignore[attr-defined]


def test_mapping_protocol() -> None:
    c: Cache[Any, Any] = Cache(3)
    c["a"] = 1
    c.set("b", 2)
    c[3] = "three"
    assert len(c) == 3
    assert c["a"] == 1 and c.get("b") == 2 and c[3] == "three"
    assert "a" in c and "zz" not in c and 3 in c
    assert list(c) == ["a", "b", 3]  # least recently used first
    assert c.keys() == ["a", "b", 3]
    assert c.values() == [1, 2, "three"]
    assert c.items() == [("a", 1), ("b", 2), (3, "three")]
    del c["b"]
    assert "b" not in c and len(c) == 2
    with pytest.raises(KeyError):
        del c["b"]
    with pytest.raises(KeyError) as ei:
        c[("tuple", "key")]
    assert ei.value.args == (("tuple", "key"),)
    assert c.pop("a") == 1
    assert c.pop("a", "dflt") == "dflt"
    assert c.pop("a", default=None) is None
    with pytest.raises(KeyError):
        c.pop("a")
    c.clear()
    assert len(c) == 0 and list(c) == []


def test_get_default_and_keywords() -> None:
    c: Cache[str, int] = Cache()
    sentinel = object()
    assert c.get("x") is None
    assert c.get("x", sentinel) is sentinel
    assert c.get("x", default=sentinel) is sentinel
    c.set("x", 1, ttl=None)
    c.set("y", 2, 5)
    assert c.get("x", sentinel) == 1
    assert c.peek("x") == 1 and c.peek("nope", 7) == 7


def test_lru_eviction_order_and_stats() -> None:
    c: Cache[int, int] = Cache(3)
    for i in range(3):
        c[i] = i
    assert c.get(0) == 0  # 0 becomes most recent
    c[3] = 3  # evicts 1
    assert c.keys() == [2, 0, 3]
    assert c.get(1) is None
    c[0] = 10  # replace: no eviction, moves to the front
    assert c.keys() == [2, 3, 0]
    assert c.stats() == {
        "hits": 1,
        "misses": 1,
        "evictions": 1,
        "expirations": 0,
        "size": 3,
        "maxsize": 3,
    }
    c.reset_stats()
    assert c.stats()["hits"] == 0 and c.stats()["size"] == 3


def test_peek_and_contains_do_not_count_or_move() -> None:
    c: Cache[int, int] = Cache(2)
    c[1] = 1
    c[2] = 2
    assert c.peek(1) == 1 and 1 in c
    c[3] = 3  # 1 is still the least recent
    assert c.keys() == [2, 3]
    assert c.stats()["hits"] == 0 and c.stats()["misses"] == 0


def test_popitem_takes_least_recent() -> None:
    c: Cache[str, int] = Cache()
    c["a"] = 1
    c["b"] = 2
    c.get("a")
    assert c.popitem() == ("b", 2)
    assert c.popitem() == ("a", 1)
    with pytest.raises(KeyError):
        c.popitem()


def test_maxsize_zero_keeps_nothing_and_none_is_unbounded() -> None:
    c: Cache[int, int] = Cache(0)
    c[1] = 1
    assert len(c) == 0 and c.get(1) is None and c.maxsize == 0
    u: Cache[int, int] = Cache(None)
    for i in range(5000):
        u[i] = i
    assert len(u) == 5000 and u.maxsize is None and u.stats()["maxsize"] is None


def test_equal_keys_of_different_types_match_like_dict() -> None:
    c: Cache[Any, str] = Cache()
    c[1] = "int"
    assert c[1.0] == "int" and c[True] == "int"
    c["é"] = "str"
    assert c["".join(["", "é"])] == "str"
    c["x" * 100] = "long"
    assert c["".join(["x"] * 100)] == "long"


def test_unhashable_key_is_a_type_error_like_dict() -> None:
    c: Cache[Any, int] = Cache()
    for op in (
        lambda: c[[1]],
        lambda: c.get([1]),
        lambda: c.set([1], 1),
        lambda: c.__setitem__([1], 1),
        lambda: c.pop([1], None),
        lambda: [1] in c,
    ):
        with pytest.raises(TypeError, match="unhashable"):
            op()
    assert len(c) == 0


def test_subclass_and_weakref() -> None:
    class Mine(Cache[str, int]):
        def __init__(self) -> None:
            super().__init__(2, ttl=10)
            self.extra = "yes"

    m = Mine()
    m["a"] = 1
    assert m["a"] == 1 and m.extra == "yes" and m.maxsize == 2 and m.ttl == 10.0
    r = weakref.ref(m)
    del m
    gc.collect()
    assert r() is None

    class NoInit(Cache[str, int]):
        def __init__(self) -> None:
            pass

    n = NoInit()  # defaults: maxsize 1024, no ttl
    n["a"] = 1
    assert n["a"] == 1 and n.maxsize == 1024
    assert "maxsize=1024" in repr(n)


def test_type_is_immutable_and_unhashable_instances() -> None:
    with pytest.raises(TypeError):
        Cache.get = None  # type: ignore[method-assign]
    with pytest.raises(TypeError):
        hash(Cache())


def test_reinit_replaces_settings_and_entries() -> None:
    c: Cache[int, int] = Cache(5)
    c[1] = 1
    c.__init__(2, ttl=3)  # type: ignore[misc]
    assert len(c) == 0 and c.maxsize == 2 and c.ttl == 3.0


def test_sizeof_counts_the_table() -> None:
    c: Cache[int, int] = Cache(None)
    empty = sys.getsizeof(c)
    for i in range(10_000):
        c[i] = i
    assert sys.getsizeof(c) > empty + 10_000 * 40


# ---------------------------------------------------------------------------
# Bad input: clear errors before any state changes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"maxsize": -1}, ValueError),
        ({"maxsize": 2**40}, ValueError),
        ({"maxsize": 2**100}, ValueError),
        ({"maxsize": 1.5}, TypeError),
        ({"maxsize": "10"}, TypeError),
        ({"maxsize": True}, TypeError),
        ({"ttl": 0}, ValueError),
        ({"ttl": -1}, ValueError),
        ({"ttl": math.nan}, ValueError),
        ({"ttl": math.inf}, ValueError),
        ({"ttl": 10**30}, ValueError),
        ({"ttl": "1"}, TypeError),
        ({"ttl": True}, TypeError),
        ({"clock": 5}, TypeError),
        ({"maxweight": 10}, TypeError),
        ({"weigh": len}, TypeError),
        ({"maxweight": 0, "weigh": len}, ValueError),
        ({"maxweight": 1.5, "weigh": len}, TypeError),
        ({"maxweight": 10, "weigh": 3}, TypeError),
        ({"bogus": 1}, TypeError),
    ],
)
def test_constructor_rejects_bad_input(
    kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    with pytest.raises(exc):
        Cache(**kwargs)


def test_bad_init_leaves_an_existing_cache_alone() -> None:
    c: Cache[int, int] = Cache(5)
    c[1] = 1
    with pytest.raises(ValueError):
        c.__init__(-1)  # type: ignore[misc]
    assert c[1] == 1 and c.maxsize == 5


def test_method_arguments_are_checked() -> None:
    c: Cache[Any, Any] = Cache()
    c["k"] = 1
    with pytest.raises(TypeError, match="get"):
        c.get()  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="at most 2"):
        c.get(1, 2, 3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="unexpected keyword argument 'dflt'"):
        c.get(1, dflt=2)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="multiple values"):
        c.get(1, 2, default=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        c.set(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'tl'"):
        c.set(1, 2, tl=3)  # type: ignore[call-arg]
    for bad, exc in (
        (0, ValueError),
        (-1.0, ValueError),
        (math.nan, ValueError),
        ("x", TypeError),
    ):
        with pytest.raises(exc):
            c.set("k", 2, ttl=bad)
    assert c["k"] == 1 and len(c) == 1
    with pytest.raises(TypeError):
        c.pop()  # type: ignore[call-overload]


# ---------------------------------------------------------------------------
# Expiry
# ---------------------------------------------------------------------------


def test_default_ttl_expires_on_access(clock: FakeClock) -> None:
    c: Cache[str, int] = Cache(10, ttl=5, clock=clock)
    c["a"] = 1
    clock.advance(4.9)
    assert c["a"] == 1  # a read does not extend the life
    clock.advance(0.1)
    assert c.get("a") is None
    assert c.stats()["expirations"] == 1 and c.stats()["misses"] == 1


def test_per_item_ttl_and_overwrite_resets_life(clock: FakeClock) -> None:
    c: Cache[str, int] = Cache(10, ttl=5, clock=clock)
    c.set("short", 1, ttl=1)
    c.set("long", 2, ttl=100)
    c["default"] = 3
    clock.advance(2)
    assert "short" not in c and c["long"] == 2 and c["default"] == 3
    c["default"] = 4  # rewritten: lives 5 more seconds
    clock.advance(4)
    assert c["default"] == 4
    clock.advance(1)
    assert "default" not in c and "long" in c
    c.set("long", 5)  # back to the default ttl
    clock.advance(5)
    assert "long" not in c


def test_per_item_ttl_without_default(clock: FakeClock) -> None:
    c: Cache[str, int] = Cache(10, clock=clock)
    c["forever"] = 1
    c.set("brief", 2, ttl=0.5)
    clock.advance(1)
    assert c.keys() == ["forever"]
    assert c.ttl is None


def test_writes_remove_every_expired_entry_and_give_memory_back(
    clock: FakeClock,
) -> None:
    c: Cache[int, int] = Cache(None, ttl=1, clock=clock)
    for i in range(20_000):
        c.set(i, i, ttl=1 + (i % 7))  # a mix of FIFO and heap entries
    full = sys.getsizeof(c)
    clock.advance(10)
    c["fresh"] = 0  # type: ignore[index]
    # Nobody read the old keys: the write removed them all.
    assert c.stats()["expirations"] == 20_000
    assert c.stats()["size"] == 1
    assert sys.getsizeof(c) < full / 50


def test_len_stats_and_iteration_hide_expired(clock: FakeClock) -> None:
    c: Cache[int, int] = Cache(10, ttl=1, clock=clock)
    c[1] = 1
    c.set(2, 2, ttl=3)
    clock.advance(2)
    assert len(c) == 1 and list(c) == [2] and c.items() == [(2, 2)]
    assert c.stats()["size"] == 1 and c.stats()["expirations"] == 1


def test_expired_entries_are_not_evicted_as_live(clock: FakeClock) -> None:
    c: Cache[int, int] = Cache(2, ttl=1, clock=clock)
    c[1] = 1
    c.set(2, 2, ttl=10)
    clock.advance(2)
    c[3] = 3  # 1 expired: removed as such, nothing evicted
    assert c.keys() == [2, 3]
    assert c.stats()["evictions"] == 0 and c.stats()["expirations"] == 1


def test_clock_going_backwards_is_held(clock: FakeClock) -> None:
    c: Cache[str, int] = Cache(10, ttl=5, clock=clock)
    c["a"] = 1
    clock.advance(4)
    c.get("a")
    clock.now -= 100  # a step back is treated as no time passing
    assert c["a"] == 1
    clock.now += 101
    assert "a" not in c


def test_bad_clock_results_raise_and_change_nothing() -> None:
    value: list[Any] = [0.0]
    c: Cache[str, int] = Cache(10, ttl=5, clock=lambda: value[0])
    c["a"] = 1
    for bad, exc in (
        ("soon", TypeError),
        (math.nan, ValueError),
        (1e300, ValueError),
        (True, TypeError),
    ):
        value[0] = bad
        with pytest.raises(exc):
            c["b"] = 2
        with pytest.raises(exc):
            c.get("a")
    value[0] = 1.0
    assert c.keys() == ["a"]

    def boom() -> float:
        raise RuntimeError("clock broke")

    d: Cache[str, int] = Cache(10, ttl=5, clock=boom)
    with pytest.raises(RuntimeError, match="clock broke"):
        d["a"] = 1
    assert len(Cache(10, clock=boom)) == 0  # no expiry: the clock is never read


def test_default_clock_expires_real_time() -> None:
    import time

    c: Cache[str, int] = Cache(10, ttl=0.02)
    c["a"] = 1
    assert c["a"] == 1
    time.sleep(0.05)
    assert "a" not in c


# ---------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------


def test_maxweight_evicts_by_weight() -> None:
    c: Cache[str, bytes] = Cache(None, maxweight=10, weigh=len)
    c["a"] = b"xxxx"
    c["b"] = b"xxxx"
    assert c.weight == 8
    c["c"] = b"xxxx"  # 12 > 10: drop the least recent
    assert c.keys() == ["b", "c"] and c.weight == 8
    c["big"] = b"x" * 10  # evicts everything else
    assert c.keys() == ["big"] and c.weight == 10
    s = c.stats()
    assert s["weight"] == 10 and s["maxweight"] == 10 and s["evictions"] == 3
    c["big"] = b""  # replacing adjusts the total
    assert c.weight == 0
    del c["big"]
    assert c.weight == 0 and c.maxweight == 10


def test_maxsize_and_maxweight_together() -> None:
    c: Cache[int, int] = Cache(2, maxweight=100, weigh=lambda v: v)
    c[1] = 1
    c[2] = 1
    c[3] = 1
    assert c.keys() == [2, 3]


def test_float_weights_round_up() -> None:
    c: Cache[str, float] = Cache(None, maxweight=3, weigh=lambda v: v)
    c["a"] = 0.1
    c["b"] = 1.5
    assert c.weight == 3


@pytest.mark.parametrize(
    ("result", "exc"),
    [
        (-1, ValueError),
        (math.nan, ValueError),
        (-0.5, ValueError),
        ("3", TypeError),
        (None, TypeError),
        (11, ValueError),
        (2**80, ValueError),
    ],
)
def test_bad_weights_raise_before_any_change(result: Any, exc: type[Exception]) -> None:
    c: Cache[str, Any] = Cache(
        None, maxweight=10, weigh=lambda v: result if v == "bad" else 1
    )
    c["a"] = "ok"
    with pytest.raises(exc):
        c["a"] = "bad"
    with pytest.raises(exc):
        c.set("b", "bad")
    assert c.items() == [("a", "ok")] and c.weight == 1


def test_weigh_is_called_before_the_clock_and_table(clock: FakeClock) -> None:
    calls: list[str] = []

    def weigh(v: int) -> int:
        calls.append("weigh")
        return v

    def tick() -> float:
        calls.append("clock")
        return clock()

    c: Cache[str, int] = Cache(10, ttl=1, clock=tick, maxweight=5, weigh=weigh)
    c["a"] = 1
    assert calls == ["weigh", "clock"]


# ---------------------------------------------------------------------------
# Differential test against a Python model
# ---------------------------------------------------------------------------


class Model:
    """OrderedDict (least recent first) plus expiry times in integer ns."""

    def __init__(
        self,
        maxsize: int | None,
        ttl: float | None,
        clock: FakeClock,
        maxweight: int | None = None,
    ) -> None:
        self.d: OrderedDict[Hashable, tuple[Any, int | None]] = OrderedDict()
        self.maxsize = maxsize
        self.ttl_ns = None if ttl is None else math.ceil(ttl * 1e9)
        self.clock = clock
        self.maxweight = maxweight
        self.stats = {"hits": 0, "misses": 0, "evictions": 0, "expirations": 0}

    def now(self) -> int:
        return round(self.clock() * 1e9)

    def _live(self, k: Hashable) -> bool:
        if k not in self.d:
            return False
        exp = self.d[k][1]
        if exp is not None and exp <= self.now():
            del self.d[k]
            self.stats["expirations"] += 1
            return False
        return True

    def _purge(self) -> None:
        now = self.now()
        for k in [
            k for k, (_, exp) in self.d.items() if exp is not None and exp <= now
        ]:
            del self.d[k]
            self.stats["expirations"] += 1

    def weight(self) -> int:
        return sum(v for v, _ in self.d.values()) if self.maxweight else 0

    def get(self, k: Hashable) -> Any:
        if self._live(k):
            self.d.move_to_end(k)
            self.stats["hits"] += 1
            return self.d[k][0]
        self.stats["misses"] += 1
        return None

    def peek(self, k: Hashable) -> Any:
        return self.d[k][0] if self._live(k) else None

    def set(self, k: Hashable, v: Any, ttl: float | None) -> None:
        if self.maxweight is not None and v > self.maxweight:
            raise ValueError
        if self.maxsize == 0:
            return
        self._purge()
        ttl_ns = self.ttl_ns if ttl is None else math.ceil(ttl * 1e9)
        self.d[k] = (v, None if ttl_ns is None else self.now() + ttl_ns)
        self.d.move_to_end(k)
        while (self.maxsize is not None and len(self.d) > self.maxsize) or (
            self.maxweight is not None and self.weight() > self.maxweight
        ):
            self.d.popitem(last=False)
            self.stats["evictions"] += 1

    def delete(self, k: Hashable) -> bool:
        if self._live(k):
            del self.d[k]
            return True
        return False

    def keys(self) -> list[Hashable]:
        self._purge()
        return list(self.d)

    def full_stats(self) -> dict[str, Any]:
        self._purge()
        return {**self.stats, "size": len(self.d), "maxsize": self.maxsize}


KEYS = st.sampled_from([0, 1, 2, 3, 4, 5, "a", "b", (1, 2), 2.5])
OPS = st.one_of(
    st.tuples(st.just("get"), KEYS),
    st.tuples(st.just("peek"), KEYS),
    st.tuples(st.just("in"), KEYS),
    st.tuples(
        st.just("set"),
        KEYS,
        st.integers(0, 6),
        st.sampled_from([None, None, 0.5, 1.0, 2.5, 4.0]),
    ),
    st.tuples(st.just("del"), KEYS),
    st.tuples(st.just("pop"), KEYS),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0])),
    st.tuples(st.just("len")),
    st.tuples(st.just("stats")),
)


@settings(max_examples=400, deadline=None)
@given(
    maxsize=st.one_of(st.none(), st.integers(0, 6)),
    ttl=st.sampled_from([None, 1.0, 2.0]),
    weighted=st.booleans(),
    ops=st.lists(OPS, max_size=60),
)
def test_matches_the_model(
    maxsize: int | None, ttl: float | None, weighted: bool, ops: list[tuple[Any, ...]]
) -> None:
    clock = FakeClock(1000.0)
    maxweight = 8 if weighted else None
    c: Cache[Hashable, int] = (
        Cache(maxsize, ttl, clock, maxweight=8, weigh=lambda v: v)
        if weighted
        else Cache(maxsize, ttl, clock)
    )
    m = Model(maxsize, ttl, clock, maxweight)
    for op in ops:
        name = op[0]
        if name == "get":
            assert c.get(op[1]) == m.get(op[1]), op
        elif name == "peek":
            assert c.peek(op[1]) == m.peek(op[1]), op
        elif name == "in":
            assert (op[1] in c) == m._live(op[1]), op
        elif name == "set":
            try:
                m.set(op[1], op[2], op[3])
            except ValueError:
                with pytest.raises(ValueError):
                    c.set(op[1], op[2], ttl=op[3])
            else:
                c.set(op[1], op[2], ttl=op[3])
        elif name == "del":
            if m.delete(op[1]):
                del c[op[1]]
            else:
                with pytest.raises(KeyError):
                    del c[op[1]]
        elif name == "pop":
            expected = m.d[op[1]][0] if m._live(op[1]) else "none"
            m.delete(op[1])
            assert c.pop(op[1], "none") == expected
        elif name == "advance":
            clock.advance(op[1])
        elif name == "len":
            assert len(c) == len(m.keys())
        elif name == "stats":
            s = c.stats()
            s.pop("weight", None)
            s.pop("maxweight", None)
            assert s == m.full_stats()
        # The same entries in the same recency order after every step.
        assert c.keys() == m.keys(), op
        if weighted:
            assert c.weight == m.weight()
    s = c.stats()
    if weighted:
        assert s.pop("weight") == m.weight() and s.pop("maxweight") == 8
    assert s == m.full_stats()


# ---------------------------------------------------------------------------
# Reentrancy: keys, values, clocks and weigh that run Python code
# ---------------------------------------------------------------------------


class EvilKey:
    """Every instance hashes alike, so lookups compare them with __eq__,
    which runs `action` (while armed)."""

    armed = True

    def __init__(
        self, ident: int, action: Callable[[], None] | None = None, h: int = 7
    ) -> None:
        self.ident = ident
        self.action = action
        self.h = h

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other: object) -> bool:
        if EvilKey.armed and self.action is not None:
            self.action()
        return isinstance(other, EvilKey) and other.ident == self.ident

    def __repr__(self) -> str:
        return f"EvilKey({self.ident})"


def check_consistent(c: Cache[Any, Any]) -> None:
    EvilKey.armed = False
    try:
        keys = c.keys()
        assert len(keys) == len(c) == c.stats()["size"]
        for k in keys:
            assert k in c
            assert c.peek(k, "missing") != "missing"
        if c.maxsize is not None:
            assert len(keys) <= c.maxsize
    finally:
        EvilKey.armed = True


@pytest.mark.parametrize("what", ["clear", "insert", "delete", "grow", "reinit"])
def test_eq_that_mutates_the_cache(what: str) -> None:
    c: Cache[Any, Any] = Cache(8)
    counter = [0]

    def action() -> None:
        counter[0] += 1
        if counter[0] % 3:
            return
        if what == "clear":
            c.clear()
        elif what == "insert":
            c[f"s{counter[0]}"] = counter[0]
        elif what == "delete":
            for k in c.keys()[:2]:
                c.pop(k, None)
        elif what == "grow":
            for i in range(40):  # forces resizes and evictions
                c[i + 1000 * counter[0]] = i
        elif what == "reinit":
            c.__init__(8)  # type: ignore[misc]

    keys = [EvilKey(i, action) for i in range(12)]
    for round_ in range(30):
        for k in keys:
            c[k] = round_
            c.get(EvilKey(k.ident, action))
            EvilKey(k.ident, action) in c  # noqa: B015
            c.pop(EvilKey((k.ident + 5) % 12, action), None)
        check_consistent(c)


def test_eq_that_raises_propagates_and_leaves_the_cache_usable() -> None:
    c: Cache[Any, Any] = Cache(8)

    def boom() -> None:
        raise ZeroDivisionError

    EvilKey.armed = False
    c[EvilKey(1, boom)] = 1
    EvilKey.armed = True
    for op in (
        lambda: c.get(EvilKey(2, boom)),
        lambda: c.set(EvilKey(2, boom), 2),
        lambda: c.pop(EvilKey(2, boom)),
        lambda: EvilKey(2, boom) in c,
    ):
        with pytest.raises(ZeroDivisionError):
            op()
    check_consistent(c)
    assert len(c) == 1


class BadHash:
    def __hash__(self) -> int:
        raise ValueError("no hash for you")


def test_hash_that_raises_changes_nothing(clock: FakeClock) -> None:
    reads = [0]

    def counting_clock() -> float:
        reads[0] += 1
        return clock()

    c: Cache[Any, Any] = Cache(3, ttl=1, clock=counting_clock)
    c["a"] = 1
    clock.advance(5)  # "a" has expired, but a failed write must not purge
    reads[0] = 0
    for op in (
        lambda: c.set(BadHash(), 1),
        lambda: c.__setitem__(BadHash(), 1),
        lambda: c.get(BadHash()),
        lambda: c.pop(BadHash(), None),
        lambda: c.__delitem__(BadHash()),
        lambda: BadHash() in c,
    ):
        with pytest.raises(ValueError, match="no hash"):
            op()
    assert reads[0] == 0  # nothing ran: no clock, no purge
    assert c.stats() == {
        "hits": 0,
        "misses": 0,
        "evictions": 0,
        "expirations": 1,  # by stats() itself
        "size": 0,
        "maxsize": 3,
    }


class Bomb:
    """A value whose destruction runs code against the cache."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action

    def __del__(self) -> None:
        self.action()


@pytest.mark.parametrize("what", ["set", "clear", "get", "pop", "many"])
def test_value_del_that_uses_the_cache(what: str, clock: FakeClock) -> None:
    c: Cache[Any, Any] = Cache(4, ttl=2, clock=clock)
    box = [c]
    n = [0]

    def action() -> None:
        n[0] += 1
        if n[0] > 500 or not box:
            return
        c = box[0]
        if what == "set":
            c[f"from-del-{n[0] % 6}"] = n[0]
        elif what == "clear":
            c.clear()
        elif what == "get":
            c.get(0)
            len(c)
        elif what == "pop":
            if c.keys():
                c.pop(c.keys()[0], None)
        elif what == "many":
            for i in range(10):
                c.set(("m", i), Bomb(lambda: None), ttl=1)

    for i in range(60):
        c[i % 7] = Bomb(action)  # replacements and evictions
        if i % 5 == 0:
            clock.advance(1.5)  # expirations, removed by the next write
        if i % 11 == 0:
            try:
                c.popitem()
            except KeyError:  # a __del__ may have emptied it
                pass
        if i % 13 == 0:
            c.clear()
        check_consistent(c)
    c.__init__(4)  # type: ignore[misc]  # drops the old table with Python running
    check_consistent(c)
    for i in range(4):
        c[i] = Bomb(action)
    del c
    box.clear()  # the cache dies here, its values' __del__ running
    gc.collect()


def test_clock_and_weigh_that_mutate_the_cache() -> None:
    c: Cache[Any, Any]
    t = [0.0]

    def clock() -> float:
        c.clear()
        t[0] += 1
        return t[0]

    c = Cache(4, ttl=10, clock=clock)
    for i in range(20):
        c[i] = i
        c.get(i)
        check_consistent(c)

    inside = [False]

    def weigh(v: int) -> int:
        if not inside[0]:
            inside[0] = True
            try:
                if v % 2:
                    w.clear()
                else:
                    w[("w", v)] = 0
            finally:
                inside[0] = False
        return 1

    w: Cache[Any, Any] = Cache(4, maxweight=3, weigh=weigh)
    for i in range(20):
        w[i] = i
        check_consistent(w)
        assert w.weight <= 3


def test_reentrant_key_removing_itself_during_lookup() -> None:
    c: Cache[Any, Any] = Cache(8)

    def remove_stored() -> None:
        EvilKey.armed = False
        c.pop(EvilKey(1), None)
        EvilKey.armed = True

    EvilKey.armed = False
    c[EvilKey(1, remove_stored)] = "v"  # only the cache holds this key
    EvilKey.armed = True
    # Comparing against the stored key removes it from the cache (the
    # comparison holds the last reference): the answer is a miss.
    assert c.get(EvilKey(1)) is None
    assert len(c) == 0
    check_consistent(c)


# ---------------------------------------------------------------------------
# GC and reference counts
# ---------------------------------------------------------------------------


def test_cycles_through_values_keys_clock_and_weigh_are_collected() -> None:
    class Holder:
        pass

    for build in (
        lambda c: c.__setitem__("self", c),
        lambda c: c.__setitem__(Holder(), c),
        lambda c: c.__init__(4, ttl=1, clock=lambda: c and 1.0),  # type: ignore[misc]
        lambda c: c.__init__(4, maxweight=2, weigh=lambda v: c and 1),  # type: ignore[misc]
    ):
        c: Cache[Any, Any] = Cache(4)
        h = Holder()
        h.c = c  # type: ignore[attr-defined]
        c["holder"] = h
        build(c)
        r = weakref.ref(c)
        del c, h
        gc.collect()
        assert r() is None


def refcounts(*objs: object) -> list[int]:
    return [sys.getrefcount(o) for o in objs]


def test_refcounts_are_flat_on_every_path(clock: FakeClock) -> None:
    key, key2, value, value2, dflt = (
        "rc-key-" + "x",
        ("rc", 2),
        object(),
        object(),
        object(),
    )
    objs = (key, key2, value, value2, dflt)
    c: Cache[Any, Any] = Cache(2, ttl=5, clock=clock, maxweight=10, weigh=lambda v: 1)
    start = refcounts(*objs)

    for _ in range(3):
        c[key] = value  # insert
        c[key] = value2  # replace
        c.get(key)
        c.get(key2, dflt)  # miss
        c.peek(key, dflt)
        c.set(key2, value, ttl=1)  # heap entry
        c.set(3, 3)  # evicts key
        key in c  # noqa: B015
        c.keys(), c.items(), c.values(), list(c)
        c.stats()
        c.pop(key2, dflt)
        c.pop(key2, dflt)
        c.set(key2, value)
        clock.advance(10)
        c.get(key2, dflt)  # expired on access
        c[key] = value
        clock.advance(10)
        c[4] = value2  # purge on write
        with pytest.raises(ValueError):
            c.set(key, value, ttl=-1)
        with pytest.raises(TypeError):
            c[[key]] = value
        with pytest.raises(KeyError):
            c[key2]
        with pytest.raises(KeyError):
            del c[key2]
        c[key2] = value
        c.popitem()
        c.clear()
    del c
    gc.collect()
    assert refcounts(*objs) == start


def test_refcounts_when_weigh_and_clock_raise() -> None:
    key, value = "rc-raise-" + "k", object()

    def weigh(v: object) -> int:
        raise RuntimeError

    def clock() -> float:
        raise RuntimeError

    c: Cache[Any, Any] = Cache(2, maxweight=1, weigh=weigh)
    d: Cache[Any, Any] = Cache(2, ttl=1, clock=clock)
    start = refcounts(key, value, weigh, clock)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            c[key] = value
        with pytest.raises(RuntimeError):
            d.set(key, value)
    assert refcounts(key, value, weigh, clock) == start


# ---------------------------------------------------------------------------
# Processes: re-import and leaks
# ---------------------------------------------------------------------------


def run_python(code_or_script: str | Path) -> str:
    args = (
        [str(code_or_script)]
        if isinstance(code_or_script, Path)
        else ["-c", code_or_script]
    )
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_reimporting_the_extension_gives_independent_types() -> None:
    out = run_python(
        """
import gc, sys
import stanchion._core as first
c1 = first.Cache(4, ttl=60)
c1["x"] = 1
w1 = first.CachedCall(len, c1, lambda k, a, kw: len(*a))
assert w1("abc") == 3
del sys.modules["stanchion._core"]
import stanchion._core as second
assert second is not first and second.Cache is not first.Cache
c2 = second.Cache(4)
c2["y"] = 2
w2 = second.CachedCall(len, c2, lambda k, a, kw: len(*a), True)
assert w2("abcd") == 4
assert c1["x"] == 1 and c2["y"] == 2 and "y" not in c1
del first, c1, w1
gc.collect()
assert c2["y"] == 2
print("ok")
"""
    )
    assert out.strip() == "ok"


def test_a_million_operations_leak_nothing() -> None:
    out = run_python(ISOLATED / "leak_cache.py")
    assert out.startswith("ok")
