"""Cache as a MutableMapping for cachetools users: update, setdefault, ==,
currsize, on_evict (including callbacks that raise or use the cache),
__missing__, copy and pickle."""

from __future__ import annotations

import copy
import pickle
import sys
import types
from collections.abc import Mapping, MutableMapping
from typing import Any

import pytest

import stanchion
from stanchion import Cache

from .conftest import FakeClock


def test_is_a_mutable_mapping() -> None:
    c: Cache[Any, Any] = Cache(4)
    assert isinstance(c, MutableMapping) and isinstance(c, Mapping)
    assert issubclass(stanchion.Cache, MutableMapping)


def test_update_takes_mappings_pairs_and_keywords() -> None:
    c: Cache[Any, Any] = Cache(10)
    c.update({"a": 1})
    c.update(Cache(2))  # an empty mapping
    other: Cache[Any, Any] = Cache(2)
    other["b"] = 2
    c.update(other)
    c.update(types.MappingProxyType({"c": 3}))
    c.update([("d", 4)], e=5)
    c.update(f=6)
    c.update()
    assert c.items() == [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5), ("f", 6)]
    with pytest.raises(TypeError):
        c.update(5)
    with pytest.raises(TypeError):
        c.update([1])
    with pytest.raises(ValueError):
        c.update([("x", 1, 2)])
    with pytest.raises(TypeError):
        c.update({}, {})  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        c.update([([], 1)])  # an unhashable key
    assert len(c) == 6


def test_update_evicts_as_setitem_does() -> None:
    c: Cache[int, int] = Cache(2)
    c.update({1: 1, 2: 2, 3: 3})
    assert c.keys() == [2, 3] and c.stats()["evictions"] == 1


def test_setdefault() -> None:
    c: Cache[str, Any] = Cache(2)
    c["a"] = 1
    assert c.setdefault("a", 5) == 1 and c.stats()["hits"] == 1
    assert c.setdefault("b", 2) == 2 and c["b"] == 2
    assert c.setdefault("n") is None and "n" in c
    assert c.keys() == ["b", "n"]  # "a" was least recently used
    with pytest.raises(TypeError):
        c.setdefault()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        c.setdefault([], 1)  # type: ignore[arg-type]


def test_equality_with_mappings() -> None:
    c: Cache[Any, Any] = Cache(3)
    c.update({1: "a", 2: "b"})
    d: Cache[Any, Any] = Cache(100, ttl=60)
    d.update({2: "b", 1: "a"})
    assert c == {1: "a", 2: "b"}
    assert dict.__eq__({1: "a", 2: "b"}, c) is NotImplemented
    assert c == d
    assert (c != d) is False
    assert c == types.MappingProxyType({1: "a", 2: "b"})
    assert c != {1: "a"} and c != {1: "a", 2: "c"}
    assert c != [(1, "a"), (2, "b")] and c != 3 and c != "x"
    assert c.keys() == [1, 2]  # comparing read without moving keys
    assert c.stats()["hits"] == 0
    with pytest.raises(TypeError):
        hash(c)


def test_equality_sees_live_entries_only() -> None:
    clock = FakeClock()
    c: Cache[str, int] = Cache(10, ttl=5, clock=clock)
    c["a"] = 1
    assert c == {"a": 1}
    clock.advance(5)
    assert c == {}


def test_currsize_counts_entries_or_weight() -> None:
    clock = FakeClock()
    c: Cache[str, int] = Cache(3, ttl=1, clock=clock)
    assert c.currsize == 0
    c.update({"a": 1, "b": 2})
    assert c.currsize == 2
    clock.advance(1)
    assert c.currsize == 0
    w: Cache[str, str] = Cache(None, maxweight=10, weigh=len)
    w.update({"a": "xyz", "b": "zz"})
    assert w.currsize == 5 == w.weight and w.maxsize is None and w.maxweight == 10


def test_on_evict_for_room_and_expiry_only() -> None:
    clock = FakeClock()
    seen: list[tuple[Any, Any]] = []
    c: Cache[str, int] = Cache(
        2, ttl=10, clock=clock, on_evict=lambda k, v: seen.append((k, v))
    )
    assert c.on_evict is not None
    c["a"] = 1
    c["b"] = 2
    c["c"] = 3  # full: "a" makes room
    assert seen == [("a", 1)]
    c["b"] = 20  # replacing a value evicts nothing
    del c["b"]
    assert c.pop("c") == 3
    c["d"] = 4
    c.clear()  # explicit removals are not evictions
    assert seen == [("a", 1)]
    c["e"] = 5
    c.set("f", 6, ttl=1)
    clock.advance(1)
    assert "f" not in c  # expired on read
    clock.advance(9)
    assert len(c) == 0  # expired on purge
    assert seen == [("a", 1), ("f", 6), ("e", 5)]
    w: Cache[str, str] = Cache(
        None, maxweight=4, weigh=len, on_evict=lambda k, v: seen.append((k, v))
    )
    w["x"] = "ab"
    w["y"] = "cd"
    w["z"] = "efg"  # weighted: evicts until it fits
    assert seen[-2:] == [("x", "ab"), ("y", "cd")] and w.items() == [("z", "efg")]
    with pytest.raises(TypeError):
        Cache(2, on_evict=3)  # type: ignore[arg-type]


def test_on_evict_that_raises_is_reported_and_harmless(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)

    def boom(k: Any, v: Any) -> None:
        raise RuntimeError(f"boom {k}")

    c: Cache[int, int] = Cache(2, on_evict=boom)
    for i in range(10):
        c[i] = i
    assert c.items() == [(8, 8), (9, 9)] and len(reported) == 8
    assert isinstance(reported[0].exc_value, RuntimeError)
    assert str(reported[0].exc_value) == "boom 0"


def test_on_evict_may_use_the_cache() -> None:
    clock = FakeClock()
    log: list[Any] = []
    c: Cache[Any, Any] = Cache(3, ttl=5, clock=clock)

    def reenter(k: Any, v: Any) -> None:
        # Reads, writes (which evict again, recursively), iteration and
        # clear, from inside an eviction.
        log.append((k, len(c), c.items(), c.get(k)))
        if isinstance(k, int) and k < 40:
            c[("again", k)] = v
        if k == 45:
            c.clear()
        if k == 47:
            c.__init__(2)  # type: ignore[misc]  # re-initialised mid-eviction

    c.__init__(3, ttl=5, clock=clock, on_evict=reenter)  # type: ignore[misc]
    for i in range(50):
        c[i] = i
        assert len(c) <= c.maxsize  # type: ignore[operator]
    assert len(c) <= 3 and log
    for _k, n, items, got in log:
        assert got is None and n <= 3 and len(items) == n
    c2: Cache[Any, Any] = Cache(4, ttl=1, clock=clock)

    def expire_reenter(k: Any, v: Any) -> None:
        c2[f"new{k}"] = v  # lives 1s from now
        list(c2)

    c2.__init__(4, ttl=1, clock=clock, on_evict=expire_reenter)  # type: ignore[misc]
    c2.update({1: 1, 2: 2, 3: 3})
    clock.advance(1)
    assert sorted(c2.keys()) == ["new1", "new2", "new3"]


def test_missing_in_subclasses() -> None:
    class Default(Cache):  # type: ignore[type-arg]
        def __missing__(self, key: Any) -> Any:
            self[key] = key * 2
            return key * 2

    c = Default(2)
    assert c[2] == 4 and c[2] == 4 and c.stats()["hits"] == 1
    assert c.get(3) is None and 3 not in c  # only [] calls __missing__

    class Raising(Cache):  # type: ignore[type-arg]
        def __missing__(self, key: Any) -> Any:
            raise LookupError(key)

    with pytest.raises(LookupError):
        Raising(2)[1]
    plain: Cache[int, int] = Cache(2)
    with pytest.raises(KeyError):
        plain[1]


def test_popitem_on_empty_suppresses_context() -> None:
    try:
        try:
            raise ValueError("inner")
        except ValueError:
            Cache(2).popitem()
    except KeyError as e:
        assert e.__cause__ is None and e.__suppress_context__


def _evicted(k: Any, v: Any) -> None:
    """A picklable on_evict."""


class Tagged(Cache):  # type: ignore[type-arg]
    pass


def test_pickle_and_copy_keep_order_settings_and_time_left() -> None:
    clock = FakeClock()
    src: Cache[Any, Any] = Cache(3, ttl=10, on_evict=_evicted)
    src.update({"a": 1, "b": [2], "c": 3})
    src["a"]  # "b" is now least recently used
    for dup in (
        pickle.loads(pickle.dumps(src)),
        copy.copy(src),
        copy.deepcopy(src),
    ):
        assert dup is not src and dup == src and dup.keys() == ["b", "c", "a"]
        assert (dup.maxsize, dup.ttl, dup.on_evict) == (3, 10.0, _evicted)
        dup["d"] = 4
        assert "b" not in dup and "b" in src  # each evicts on its own
    assert copy.copy(src)["b"] is src["b"] and copy.deepcopy(src)["b"] is not src["b"]
    timed: Cache[str, int] = Cache(4, ttl=10, clock=clock)
    timed["old"] = 1
    clock.advance(6)
    timed["new"] = 2
    timed.set("own", 3, ttl=100)
    dup = copy.copy(timed)  # shares the clock: expires at the same times
    assert dup.clock is clock
    clock.advance(4)
    assert dup.keys() == ["new", "own"] == timed.keys()
    clock.advance(6)
    assert dup.keys() == ["own"]
    w: Cache[str, str] = Cache(None, maxweight=10, weigh=len)
    w.update({"x": "abc", "y": "de"})
    w2 = pickle.loads(pickle.dumps(w))
    assert w2.currsize == 5 and w2.maxweight == 10 and w2 == w
    t = Tagged(2)
    t.label = "kept"  # type: ignore[attr-defined]
    t["k"] = "v"
    t2 = pickle.loads(pickle.dumps(t))
    assert type(t2) is Tagged and t2.label == "kept" and t2 == {"k": "v"}


def test_pickle_refuses_what_it_cannot_carry() -> None:
    c: Cache[str, int] = Cache(2, clock=lambda: 0.0)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(c)
    fresh: Cache[str, int] = Cache(2)
    with pytest.raises(TypeError):
        fresh.__setstate__([1])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fresh.__setstate__({"maxsize": 2})
    state = Cache(2).__getstate__()
    state["entries"] = [("k", 1)]
    with pytest.raises(ValueError):
        fresh.__setstate__(state)
    state["entries"] = []
    state["maxsize"] = -1
    with pytest.raises(ValueError):
        fresh.__setstate__(state)
