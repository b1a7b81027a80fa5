"""stanchion.django.CacheBackend held to what Django expects of its own
in-memory cache (LocMemCache), in a real Django configuration.

Django's settings are configured once per process: the web adapter tests
configure them when their module is imported, so this module only
configures them if nobody has (it runs alone), and puts its caches in
place with override_settings for each test.
"""

from __future__ import annotations

import inspect
import itertools
import json
import pickle
import subprocess
import sys
import threading
import types
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends import base as django_base
from django.core.cache.backends.base import BaseCache, CacheKeyWarning
from django.core.cache.backends.locmem import LocMemCache
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from django.views.decorators.cache import cache_page

import stanchion
from stanchion.django import CacheBackend as ExportedBackend
from stanchion.django.cache import CacheBackend
from stanchion.http import SettingError

from .conftest import FakeClock

BACKEND = "stanchion.django.CacheBackend"
TIMING = 0.3  # a short timeout, outlasted on the fake clock


def key_upper(key: str, prefix: str, version: int) -> str:
    """A KEY_FUNCTION, named by its dotted path in one of the caches."""
    return f"K/{prefix}/{version}/{key}".upper()


# -- a Django project: settings and caches ---------------------------------------

_locations = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def django_settings() -> None:
    if not settings.configured:
        settings.configure(
            SECRET_KEY="tests-only",
            ALLOWED_HOSTS=["testserver"],
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
            USE_TZ=True,
        )
        django.setup()


def caches_for(
    location: str, clock: FakeClock | None = None, **common: Any
) -> dict[str, dict[str, Any]]:
    """Several aliases over one LOCATION, each reading keys its own way,
    all on ``clock`` when one is given."""
    setting: dict[str, dict[str, Any]] = {
        "default": {},
        "prefixed": {"KEY_PREFIX": "pfx"},
        "v2": {"VERSION": 2},
        "keyfunc": {"KEY_FUNCTION": key_upper},
        "keyfunc_path": {"KEY_FUNCTION": f"{__name__}.key_upper"},
        "small": {"OPTIONS": {"MAX_ENTRIES": 9}},
        "forever": {"TIMEOUT": None},
        "short": {"TIMEOUT": TIMING},
    }
    for params in setting.values():
        params.setdefault("BACKEND", BACKEND)
        params.setdefault("LOCATION", location)
        params.update(common)
        if clock is not None:
            params["OPTIONS"] = {**params.get("OPTIONS", {}), "CLOCK": clock}
    return setting


@pytest.fixture(autouse=True)
def dj(django_settings: None, clock: FakeClock) -> Iterator[None]:
    """Fresh caches (a LOCATION of their own) for every test, on the
    test's fake clock."""
    with override_settings(CACHES=caches_for(f"test-{next(_locations)}", clock)):
        yield


@pytest.fixture
def cache() -> CacheBackend:
    c = caches["default"]
    assert isinstance(c, CacheBackend)
    return c


def entry_deadline(c: CacheBackend, key: str, version: int | None = None) -> Any:
    return c._store.cache.peek(c.make_key(key, version))[1]


# -- the basics -----------------------------------------------------------------


def test_settings_name_is_the_backend() -> None:
    assert ExportedBackend is CacheBackend
    assert type(caches["default"]) is CacheBackend


def test_set_then_get_and_missing_keys(cache: CacheBackend) -> None:
    cache.set("colour", "blue")
    assert cache.get("colour") == "blue"
    assert cache.get("never-set") is None
    assert cache.get("never-set", "fallback") == "fallback"
    cache.set("nothing", None)
    assert cache.get("nothing", "fallback") is None


def test_add_only_when_absent(cache: CacheBackend) -> None:
    assert cache.add("k", "first") is True
    assert cache.add("k", "second") is False
    assert cache.get("k") == "first"


def test_delete_says_whether_it_removed(cache: CacheBackend) -> None:
    cache.set_many({"a": 1, "b": 2})
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert cache.get("a") is None
    assert cache.get("b") == 2


def test_has_key_and_in(cache: CacheBackend) -> None:
    cache.set("present", "x")
    cache.set("none-value", None)
    cache.set("kept", "y", None)
    assert cache.has_key("present") and "present" in cache
    assert cache.has_key("none-value") and "none-value" in cache
    assert cache.has_key("kept")
    assert not cache.has_key("absent") and "absent" not in cache


def test_many_at_once(cache: CacheBackend) -> None:
    assert cache.set_many({"a": "A", "b": "B", "c": "C"}) == []
    assert cache.set_many({}) == []
    assert cache.get_many(["a", "c", "zz"]) == {"a": "A", "c": "C"}
    assert cache.get_many(iter(["b", "zz"])) == {"b": "B"}
    cache.set_many({"n": None, "one": 1})
    assert cache.get_many(["n", "one"]) == {"n": None, "one": 1}
    assert cache.delete_many(["a", "b"]) is None
    assert cache.delete_many([]) is None
    assert cache.get_many(["a", "b", "c"]) == {"c": "C"}


def test_clear_and_close(cache: CacheBackend) -> None:
    cache.set_many({"a": 1, "b": 2})
    cache.clear()
    assert cache.get_many(["a", "b"]) == {}
    cache.close()


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.x == self.x

    __hash__ = None  # type: ignore[assignment]


def module_function() -> int:
    return 7


def test_values_of_many_types(cache: CacheBackend) -> None:
    values = {
        "str": "text",
        "int": 42,
        "big": 10**40,
        "float": 2.5,
        "bool": True,
        "list": [1, [2, 3]],
        "tuple": (1, 2),
        "dict": {"a": {"b": 1}},
        "set": {1, 2},
        "bytes": zlib.compress(b"squeeze me"),
        "function": module_function,
        "class": Point,
        "object": Point(3),
        "unicode": "Iñtërnâtiônàlizætiøn",
    }
    for k, v in values.items():
        cache.set(k, v)
        assert cache.get(k) == v
        assert type(cache.get(k)) is type(v)
    cache.set("Iñtërnâtiônàl_key", {"ü": 1})
    assert cache.get("Iñtërnâtiônàl_key") == {"ü": 1}
    assert zlib.decompress(cache.get("bytes")) == b"squeeze me"


def test_values_are_copies_not_shared(cache: CacheBackend) -> None:
    items = [1, 2]
    cache.set("items", items)
    items.append(3)
    assert cache.get("items") == [1, 2]
    got = cache.get("items")
    got.append(99)
    assert cache.get("items") == [1, 2]
    assert cache.get("items") is not cache.get("items")
    cache.add("added", items)
    cache.set_many({"many": items})
    items.clear()
    assert cache.get("added") == [1, 2, 3] == cache.get("many")


class Unpicklable:
    def __reduce__(self) -> Any:
        raise pickle.PicklingError("not this one")


def test_pickling_errors_reach_the_caller_and_store_nothing(
    cache: CacheBackend,
) -> None:
    cache.set("k", "old")
    with pytest.raises(pickle.PicklingError):
        cache.set("k", Unpicklable())
    with pytest.raises(pickle.PicklingError):
        cache.add("new", Unpicklable())
    with pytest.raises(pickle.PicklingError):
        cache.set_many({"m1": 1, "m2": Unpicklable()})
    assert cache.get("k") == "old"
    assert not cache.has_key("new")
    assert cache.get_many(["m1", "m2"]) == {}


class LockSpy:
    """Records whether the backend's lock was held while it was pickled."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.held: list[bool] = []

    def __reduce__(self) -> Any:
        self.held.append(self.lock.locked())
        return (int, (5,))


def test_pickling_happens_outside_the_lock(cache: CacheBackend) -> None:
    spy = LockSpy(cache._lock)
    cache.set("a", spy)
    assert cache.add("b", spy) is True
    cache.set_many({"c": spy})
    assert spy.held == [False, False, False]


# -- keys: prefix, version, key functions, warnings ------------------------------


def test_key_prefix_separates_caches_on_one_location(cache: CacheBackend) -> None:
    prefixed = caches["prefixed"]
    cache.set("same", "plain")
    assert prefixed.has_key("same") is False
    prefixed.set("same", "prefixed")
    assert cache.get("same") == "plain"
    assert prefixed.get("same") == "prefixed"


def test_versions(cache: CacheBackend) -> None:
    v2 = caches["v2"]
    cache.set("answer", 1)
    assert cache.get("answer", version=1) == 1
    assert cache.get("answer", version=2) is None
    assert v2.get("answer") is None
    assert v2.get("answer", version=1) == 1

    v2.set("answer", 2)
    assert cache.get("answer", version=2) == 2
    assert cache.get("answer") == 1

    assert cache.add("added", "x", version=2) is True
    assert v2.add("added", "y") is False
    assert v2.add("added", "z", version=1) is True
    assert (cache.get("added"), v2.get("added")) == ("z", "x")

    assert v2.has_key("answer") and v2.has_key("answer", version=1)
    assert not v2.has_key("answer", version=3)

    assert cache.incr("answer", version=2) == 3
    assert v2.decr("answer", version=1) == 0
    assert (cache.get("answer"), v2.get("answer")) == (0, 3)

    cache.set_many({"m": "one"}, version=2)
    assert cache.get_many(["m"]) == {}
    assert v2.get_many(["m"]) == {"m": "one"}

    assert v2.delete("answer", version=1) is True
    assert cache.get("answer") is None and v2.get("answer") == 3


def test_key_functions_callable_and_dotted(cache: CacheBackend) -> None:
    by_callable, by_path = caches["keyfunc"], caches["keyfunc_path"]
    cache.set("k", "plain")
    assert by_callable.get("k") is None and by_path.get("k") is None
    by_callable.set("k", "custom")
    assert by_path.get("k") == "custom"
    assert cache.get("k") == "plain"
    assert by_callable.make_key("k") == "K//1/K"


@pytest.mark.parametrize(
    "key",
    ["with spaces and 清", "tab\there", "a" * 250 + "x", "ctrl\x7f"],
)
@pytest.mark.parametrize("alias", ["default", "keyfunc"])
def test_bad_memcached_keys_warn_as_django_does(alias: str, key: str) -> None:
    ours = caches[alias]
    params = dict(settings.CACHES[alias], BACKEND="locmem")
    params["LOCATION"] = "compare"
    theirs = LocMemCache("compare-warnings", params)
    calls = [
        ("set", (key, 1)),
        ("add", (key, 1)),
        ("get", (key,)),
        ("incr", (key,)),
        ("decr", (key,)),
        ("touch", (key,)),
        ("has_key", (key,)),
        ("get_many", ([key, "b"],)),
        ("set_many", ({key: 1, "b": 2},)),
        ("delete_many", ([key, "b"],)),
        ("delete", (key,)),
    ]
    for name, args in calls:
        messages = []
        for c in (ours, theirs):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                getattr(c, name)(*args)
            messages.append([(w.category, str(w.message)) for w in caught])
        assert messages[0] == messages[1], name
        assert len(messages[0]) == 1 and messages[0][0][0] is CacheKeyWarning, name


def test_plain_keys_do_not_warn(cache: CacheBackend) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.set("fine-key_1", 1)
        assert cache.get("fine-key_1") == 1


def test_key_settings_changed_at_run_time_are_followed(cache: CacheBackend) -> None:
    cache.set("k", "plain")
    cache.key_prefix = "later"
    assert cache.make_key("k") == "later:1:k"
    assert cache.get("k") is None
    cache.set("k", "prefixed")
    cache.version = 5
    assert cache.get("k") is None and cache.get("k", version=1) == "prefixed"
    cache.key_func = key_upper
    cache.set("k", "upper")
    assert cache._store.cache.peek("K/LATER/5/K") is not None
    cache.key_prefix, cache.version, cache.key_func = (
        "",
        1,
        django_base.default_key_func,
    )
    assert cache.get("k") == "plain"


class ReversedKeys(CacheBackend):
    def make_key(self, key: Any, version: Any = None) -> str:
        return str(key)[::-1]


def test_a_subclass_making_its_own_keys_is_followed() -> None:
    c = ReversedKeys("subclass", {})
    c.set("abc", 1)
    assert c._store.cache.peek("cba") is not None
    assert c.get("abc") == 1


def test_non_str_keys_are_made_by_the_key_function(cache: CacheBackend) -> None:
    cache.set(1, "int key")
    assert cache.get(1) == "int key"
    assert cache.get("1") == "int key"  # Django's keys are text


# -- incr / decr ----------------------------------------------------------------


def test_incr_decr(cache: CacheBackend) -> None:
    cache.set("n", 41)
    assert cache.incr("n") == 42 and cache.get("n") == 42
    assert cache.incr("n", 10) == 52
    assert cache.incr("n", -10) == 42
    assert cache.decr("n") == 41
    assert cache.decr("n", 10) == 31
    assert cache.decr("n", -10) == 41
    cache.set("f", 1.5)
    assert cache.incr("f", 0.25) == 1.75
    for missing in (cache.incr, cache.decr):
        with pytest.raises(ValueError, match="not found"):
            missing("absent")
        with pytest.raises(ValueError):
            missing("absent", -1)
    cache.set("null", None)
    with pytest.raises(TypeError):
        cache.incr("null")
    with pytest.raises(TypeError):
        cache.decr("null")
    assert cache.get("null", "x") is None


def test_incr_of_a_pickled_value(cache: CacheBackend) -> None:
    cache.set("items", [1])
    assert cache.incr("items", [2]) == [1, 2]
    assert cache.get("items") == [1, 2]


def test_incr_keeps_the_expiry(cache: CacheBackend) -> None:
    cache.set("n", 1, timeout=1000)
    deadline = entry_deadline(cache, "n")
    assert cache.incr("n") == 2
    assert entry_deadline(cache, "n") == deadline
    assert cache.decr("n") == 1
    assert entry_deadline(cache, "n") == deadline
    cache.set("forever", 1, timeout=None)
    cache.incr("forever")
    assert entry_deadline(cache, "forever") is None


def test_incr_keeps_a_short_expiry(cache: CacheBackend, clock: FakeClock) -> None:
    cache.set("n", 1, timeout=TIMING)
    clock.advance(TIMING / 2)
    cache.incr("n")
    clock.advance(TIMING / 2)
    assert cache.get("n") is None
    with pytest.raises(ValueError):
        cache.incr("n")


def test_incr_is_atomic_across_threads(cache: CacheBackend) -> None:
    threads, rounds = 6, 1500
    cache.set("hits", 0, timeout=None)
    cache.set("other", 0, timeout=None)
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        # Each thread's own backend object, as Django gives each thread.
        c = caches["default"]
        start.wait()
        for r in range(rounds):
            c.incr("hits")
            if r % 7 == i:
                c.touch("hits", None)
            c.decr("other", 2)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert cache.get("hits") == threads * rounds
    assert cache.get("other") == -2 * threads * rounds


def test_add_is_atomic_across_threads(cache: CacheBackend) -> None:
    threads = 8
    won: list[int] = []
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        c = caches["default"]
        start.wait()
        for n in range(300):
            if c.add(f"slot-{n}", i):
                won.append(n)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert sorted(won) == list(range(300))


# -- timeouts -------------------------------------------------------------------


def test_entries_expire(cache: CacheBackend, clock: FakeClock) -> None:
    cache.set("e1", "soon", TIMING)
    cache.set("e2", "soon", TIMING)
    cache.set_many({"e3": "soon", "e4": "soon"}, TIMING)
    assert cache.get_many(["e1", "e2", "e3", "e4"]) == dict.fromkeys(
        ["e1", "e2", "e3", "e4"], "soon"
    )
    clock.advance(TIMING * 0.99)
    assert cache.has_key("e1") and cache.has_key("e4")
    clock.advance(TIMING * 0.01)
    assert cache.get("e1") is None
    assert cache.add("e2", "again") is True
    assert cache.get("e2") == "again"
    assert cache.has_key("e3") is False
    assert cache.get_many(["e3", "e4"]) == {}
    assert cache.touch("e4") is False
    assert cache.delete("e4") is False


def test_touch_sets_a_new_timeout(cache: CacheBackend, clock: FakeClock) -> None:
    cache.set("t", "v", timeout=TIMING)
    assert cache.touch("t", timeout=TIMING * 4) is True
    clock.advance(TIMING * 2)
    assert cache.has_key("t") is True
    clock.advance(TIMING * 2)
    assert cache.has_key("t") is False
    cache.set("t", "v", timeout=TIMING)
    assert cache.touch("t", timeout=None) is True
    assert entry_deadline(cache, "t") is None
    assert cache.touch("absent") is False
    # Without a timeout, touch gives the default one.
    cache.set("d", "v", timeout=TIMING)
    assert cache.touch("d") is True
    assert entry_deadline(cache, "d") == clock.now + 300


def test_timeout_none_keeps_for_ever(cache: CacheBackend, clock: FakeClock) -> None:
    cache.set("k1", "eggs", None)
    assert cache.add("k2", "ham", None) is True
    assert cache.add("k1", "other", None) is False
    cache.set_many({"k3": "spam"}, None)
    assert cache.get_many(["k1", "k2", "k3"]) == {
        "k1": "eggs",
        "k2": "ham",
        "k3": "spam",
    }
    cache.set("k4", "chips", timeout=TIMING)
    assert cache.touch("k4", timeout=None) is True
    clock.advance(10**9)  # about 32 years
    assert cache.get_many(["k1", "k2", "k3", "k4"]) == {
        "k1": "eggs",
        "k2": "ham",
        "k3": "spam",
        "k4": "chips",
    }


@pytest.mark.parametrize("zero", [0, 0.0, -1, -(10**9), float("-inf")])
def test_timeout_zero_or_less_does_not_cache(cache: CacheBackend, zero: Any) -> None:
    cache.set("k1", "was here")
    cache.set("k1", "eggs", zero)
    assert cache.get("k1") is None  # and the old value is gone too
    assert cache.add("k2", "ham", zero) is True
    assert cache.get("k2") is None
    cache.set_many({"k3": "a", "k4": "b"}, zero)
    assert cache.get_many(["k3", "k4"]) == {}
    cache.set("k5", "fries", timeout=5)
    assert cache.touch("k5", timeout=zero) is True
    assert cache.get("k5") is None
    cache.set("k6", "live")
    assert cache.add("k6", "dead", zero) is False
    assert cache.get("k6") == "live"


@pytest.mark.parametrize(
    "timeout",
    [60 * 60 * 24 * 30 + 1, 60 * 60 * 24 * 365, 100.2, 10**12, float("inf"), 2**70],
)
def test_long_and_float_timeouts(cache: CacheBackend, timeout: Any) -> None:
    cache.set("k1", "eggs", timeout)
    assert cache.add("k2", "ham", timeout) is True
    cache.set_many({"k3": "sausage"}, timeout)
    assert cache.get_many(["k1", "k2", "k3"]) == {
        "k1": "eggs",
        "k2": "ham",
        "k3": "sausage",
    }
    assert cache.touch("k1", timeout) is True


def test_default_timeout_comes_from_settings(clock: FakeClock) -> None:
    caches["default"].set("k", "v")
    assert entry_deadline(caches["default"], "k") == clock.now + 300
    caches["forever"].set("k", "v")
    assert entry_deadline(caches["forever"], "k") is None
    short = caches["short"]  # TIMEOUT=0.3: a fraction is kept, not truncated to 0
    short.set("s", "v")
    short.set_many({"m": "v"})
    assert short.add("a", "v") is True
    assert short.get_many(["s", "m", "a"]) == {"s": "v", "m": "v", "a": "v"}
    clock.advance(TIMING)
    assert short.get_many(["s", "m", "a"]) == {}


@pytest.mark.parametrize(
    ("timeout", "error"),
    [("10", TypeError), (True, TypeError), ([], TypeError), (float("nan"), ValueError)],
)
def test_bad_timeouts_are_refused_before_anything_changes(
    cache: CacheBackend, timeout: Any, error: type[Exception]
) -> None:
    cache.set("k", "old")
    for call in (
        lambda: cache.set("k", "new", timeout),
        lambda: cache.add("k2", "new", timeout),
        lambda: cache.touch("k", timeout),
        lambda: cache.set_many({"k": "new"}, timeout),
    ):
        with pytest.raises(error, match="timeout"):
            call()
    assert cache.get("k") == "old"
    assert entry_deadline(cache, "k") is not None
    assert not cache.has_key("k2")


# -- bounds ---------------------------------------------------------------------


def test_max_entries_bounds_exactly() -> None:
    small = caches["small"]
    for i in range(1, 50):
        small.set(f"k{i}", i, 1000)
    kept = [i for i in range(1, 50) if small.has_key(f"k{i}")]
    assert kept == list(range(41, 50))
    assert small.stats()["size"] == 9 and small.stats()["maxsize"] == 9


def test_get_set_and_incr_make_keys_recent() -> None:
    small = caches["small"]
    for k in range(9):
        small.set(k, k, timeout=None)
    for k in range(6):
        assert small.get(k) == k
    small.set(9, 9, timeout=None)
    assert [k for k in range(10) if small.has_key(k)] == [0, 1, 2, 3, 4, 5, 7, 8, 9]

    small.clear()
    for k in range(9):
        small.set(k, k, timeout=None)
    for k in range(3, 9):
        small.set(k, k, timeout=None)
    small.set(9, 9, timeout=None)
    assert [k for k in range(10) if small.has_key(k)] == list(range(1, 10))

    small.clear()
    for k in range(9):
        small.set(k, k, timeout=None)
    for k in range(6):
        assert small.incr(k) == k + 1
    small.set(9, 9, timeout=None)
    # One entry (the least recent, 6) made room for 9.
    assert small.get_many(range(10)) == {
        0: 1,
        1: 2,
        2: 3,
        3: 4,
        4: 5,
        5: 6,
        7: 7,
        8: 8,
        9: 9,
    }


def test_max_bytes_bounds_the_stored_size() -> None:
    conf = caches_for(
        f"bytes-{next(_locations)}", OPTIONS={"MAX_ENTRIES": 1000, "MAX_BYTES": 10_000}
    )
    with override_settings(CACHES=conf):
        c = caches["default"]
        for i in range(40):
            c.set(f"blob{i}", "x" * 900)
        stats = c.stats()
        assert stats["maxweight"] == 10_000
        assert stats["weight"] is not None and 9_000 < stats["weight"] <= 10_000
        assert stats["evictions"] == 40 - stats["size"]
        assert c.get("blob39") == "x" * 900 and c.get("blob0") is None
        # Heavier than the bound: not kept, and the old value goes (as
        # memcached does with a value over its size limit), no error.
        c.set("blob39", [0] * 100_000)
        assert c.get("blob39") is None
        assert c.add("huge", "y" * 20_000) is True
        assert c.get("huge") is None
        assert c.get("blob38") == "x" * 900


def test_incr_past_max_bytes_drops_the_entry_and_keeps_the_rest() -> None:
    conf = caches_for(f"bytes-{next(_locations)}", OPTIONS={"MAX_BYTES": 10_000})
    with override_settings(CACHES=conf):
        c = caches["default"]
        c.set("items", [0], timeout=None)
        c.set("timed", [0], timeout=1000)
        # The grown value is returned, as incr returns it, but not kept.
        assert c.incr("items", [0] * 10_000) == [0] * 10_001
        assert c.get("items") is None
        assert c.incr("timed", [1]) == [0, 1]
        assert c.incr("timed", [0] * 10_000) == [0, 1, *[0] * 10_000]
        assert c.get("timed") is None
        c.set("small", [0], timeout=1000)
        deadline = entry_deadline(c, "small")
        c.incr_version("small")
        assert entry_deadline(c, "small", version=2) == deadline


@pytest.mark.parametrize(
    ("params", "setting"),
    [
        ({"OPTIONS": {"MAX_ENTRIES": 0}}, "MAX_ENTRIES"),
        ({"OPTIONS": {"MAX_ENTRIES": "ten"}}, "MAX_ENTRIES"),
        ({"OPTIONS": {"MAX_ENTRIES": "1.5"}}, "MAX_ENTRIES"),
        ({"OPTIONS": {"MAX_ENTRIES": "0"}}, "MAX_ENTRIES"),
        ({"OPTIONS": {"MAX_BYTES": "lots"}}, "MAX_BYTES"),
        ({"OPTIONS": {"MAX_ENTRIES": True}}, "MAX_ENTRIES"),
        ({"OPTIONS": {"MAX_BYTES": -1}}, "MAX_BYTES"),
        ({"OPTIONS": {"MAX_BYTES": 1.5}}, "MAX_BYTES"),
        ({"OPTIONS": ["MAX_ENTRIES"]}, "OPTIONS"),
        ({"OPTIONS": {"CLOCK": 5}}, "CLOCK"),
        ({"OPTIONS": {"CLOCK": "no.such.clock"}}, "CLOCK"),
        ({"TIMEOUT": "5 minutes"}, "TIMEOUT"),
        ({"TIMEOUT": "nan"}, "TIMEOUT"),
        ({"TIMEOUT": float("nan")}, "TIMEOUT"),
    ],
)
def test_bad_settings_are_refused(params: dict[str, Any], setting: str) -> None:
    with pytest.raises(SettingError, match=setting):
        CacheBackend("bad", params)


@pytest.mark.parametrize(
    ("timeout", "expected"), [("1", 1), (" 60 ", 60), ("0.5", 0.5), ("-1", -1)]
)
def test_numbers_given_as_text_are_read_as_django_reads_them(
    timeout: str, expected: float
) -> None:
    c = CacheBackend(
        f"text-{next(_locations)}",
        {"TIMEOUT": timeout, "OPTIONS": {"MAX_ENTRIES": "3", "MAX_BYTES": "5000"}},
    )
    assert c.default_timeout == expected
    for i in range(5):
        c.set(f"k{i}", i, 100)
    assert c.stats()["maxsize"] == 3 and c.stats()["maxweight"] == 5000
    assert c.get_many([f"k{i}" for i in range(5)]) == {"k2": 2, "k3": 3, "k4": 4}


def test_cache_page_with_a_text_timeout() -> None:
    """Django's own test settings give TIMEOUT as "1": the middleware and
    cache_page must work on such an alias."""
    calls = {"n": 0}

    def counted(request: HttpRequest) -> HttpResponse:
        calls["n"] += 1
        return HttpResponse(f"call {calls['n']}")

    conf = {
        "default": {"BACKEND": BACKEND, "LOCATION": f"text-{next(_locations)}"},
        "other": {
            "BACKEND": BACKEND,
            "LOCATION": f"text-{next(_locations)}",
            "TIMEOUT": "1",
        },
    }
    with override_settings(CACHES=conf):
        urls = types.ModuleType("text_timeout_urls")
        urls.urlpatterns = [  # type: ignore[attr-defined]
            path("p", cache_page(None, cache="other")(counted))
        ]
        with override_settings(ROOT_URLCONF=urls):
            client = Client()
            bodies = [client.get("/p").content for _ in range(2)]
        assert caches["other"].default_timeout == 1
    assert bodies == [b"call 1", b"call 1"]


def test_caches_of_one_location_share_entries_across_threads() -> None:
    caches["default"].set("shared", "yes")
    seen: list[Any] = []

    def other_thread() -> None:
        c = caches["default"]
        seen.append((c is not caches_main, c.get("shared")))
        c.set("from-thread", 1)

    caches_main = caches["default"]
    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert seen == [(True, "yes")]
    assert caches_main.get("from-thread") == 1


def test_aliases_of_one_location_share_entries_whatever_their_bounds(
    clock: FakeClock,
) -> None:
    """As with LocMemCache: one LOCATION, one set of entries, and each
    alias evicts down to its own MAX_ENTRIES when it writes."""
    big, small = caches["default"], caches["small"]  # 300 and 9 entries
    big.set("from-big", 1)
    small.set("from-small", 2)
    assert small.get("from-big") == 1 and big.get("from-small") == 2
    for i in range(20):
        big.set(f"k{i}", i)
    assert big.stats()["size"] == 22  # the larger bound holds them all
    small.set("one-more", 3)  # evicts the least recently used down to 9
    kept = big.get_many(
        ["from-big", "from-small", "one-more"] + [f"k{i}" for i in range(20)]
    )
    assert kept == {"one-more": 3, **{f"k{i}": i for i in range(12, 20)}}
    assert small.stats()["maxsize"] == 9 and big.stats()["maxsize"] == 300
    assert big.stats()["evictions"] == small.stats()["evictions"] == 14


def test_a_larger_alias_built_later_keeps_what_was_stored(clock: FakeClock) -> None:
    location = f"grow-{next(_locations)}"
    options = {"CLOCK": clock}
    small = CacheBackend(location, {"OPTIONS": {**options, "MAX_ENTRIES": 3}})
    small.set("a", "A", 10)
    small.set("b", "B", None)
    small.set("c", "C")
    assert small.get("a") == "A"  # a is now the most recently used
    a_deadline = entry_deadline(small, "a")
    big = CacheBackend(
        location, {"OPTIONS": {**options, "MAX_ENTRIES": 5, "MAX_BYTES": 10_000}}
    )
    assert big.get_many(["a", "b", "c"]) == {"a": "A", "b": "B", "c": "C"}
    assert entry_deadline(big, "a") == a_deadline
    assert entry_deadline(big, "b") is None
    assert big.stats()["hits"] == 4 and big.stats()["maxweight"] == 10_000
    assert "maxweight" not in small.stats()
    # The recency order came along: b, c, a from least to most recent.
    big.set("d", "D")
    big.set("e", "E")
    small.set("f", "F")
    assert big.get_many(list("abcdef")) == {"d": "D", "e": "E", "f": "F"}
    clock.advance(10)
    big.set("g", "G", 1)
    assert small.get("g") == "G" and big.get("f") == "F"


def test_an_alias_with_a_tighter_max_bytes_evicts_down_to_it() -> None:
    location = f"bytes-{next(_locations)}"
    roomy = CacheBackend(location, {"OPTIONS": {"MAX_BYTES": 10_000}})
    tight = CacheBackend(location, {"OPTIONS": {"MAX_BYTES": 2_000}})
    unbounded = CacheBackend(location, {})
    # What one blob weighs (its pickle's size depends on the Python).
    one = CacheBackend(f"bytes-{next(_locations)}", {"OPTIONS": {"MAX_BYTES": 10_000}})
    one.set("blob0", "x" * 900)
    blob = one.stats()["weight"]
    assert 900 < blob < 1000
    for i in range(8):
        roomy.set(f"blob{i}", "x" * 900)
    assert roomy.stats()["weight"] == unbounded.stats()["size"] * blob
    assert unbounded.stats()["size"] == 8
    tight.set("small", "y")
    assert tight.stats()["weight"] <= 2_000
    assert tight.get_many(["blob5", "blob6", "blob7", "small"]) == {
        "blob6": "x" * 900,
        "blob7": "x" * 900,
        "small": "y",
    }
    for i in range(30):  # no bound of its own: only MAX_ENTRIES (300)
        unbounded.set(f"more{i}", "z" * 900)
    assert unbounded.stats()["size"] == 33 and "weight" not in unbounded.stats()


def test_a_refused_alias_leaves_its_location_as_it_was() -> None:
    """An alias whose bound the C cache cannot take is a SettingError,
    and the LOCATION keeps the bounds of the aliases that were built."""
    location = f"refused-{next(_locations)}"
    CacheBackend(location, {"OPTIONS": {"MAX_ENTRIES": 10}})
    for options in ({"MAX_ENTRIES": 2**30}, {"MAX_BYTES": 2**63}):
        with pytest.raises(SettingError, match="must be at most"):
            CacheBackend(location, {"OPTIONS": options})
    roomy = CacheBackend(location, {"OPTIONS": {"MAX_ENTRIES": 1000}})
    for i in range(100):
        roomy.set(f"k{i}", i)
    assert roomy.stats()["size"] == 100
    assert roomy.get_many([f"k{i}" for i in range(100)]) == {
        f"k{i}": i for i in range(100)
    }


@pytest.mark.parametrize("cull", [float("inf"), 10**400], ids=["inf", "huge"])
def test_infinite_timeouts_are_forever_or_never(cull: float) -> None:
    """TIMEOUT inf keeps entries until evicted, -inf caches nothing; an
    infinite CULL_FREQUENCY is ignored like any other (Django's int()
    would raise OverflowError on each)."""
    forever = CacheBackend(
        f"inf-{next(_locations)}",
        {"TIMEOUT": float("inf"), "OPTIONS": {"CULL_FREQUENCY": cull}},
    )
    never = CacheBackend(f"inf-{next(_locations)}", {"TIMEOUT": float("-inf")})
    forever.set("k", 1)
    never.set("k", 1)
    assert forever.get("k") == 1 and entry_deadline(forever, "k") is None
    assert never.get("k") is None


def test_location_clock_is_one_clock(clock: FakeClock) -> None:
    location = f"clock-{next(_locations)}"
    first = CacheBackend(location, {"OPTIONS": {"CLOCK": clock}})
    follower = CacheBackend(location, {})  # takes the LOCATION's clock
    follower.set("k", "v", 2)
    clock.advance(2)
    assert first.get("k") is None
    with pytest.raises(SettingError, match="another clock"):
        CacheBackend(location, {"OPTIONS": {"CLOCK": FakeClock()}})


def test_clock_by_dotted_path() -> None:
    c = CacheBackend(
        f"path-{next(_locations)}", {"OPTIONS": {"CLOCK": f"{__name__}.stopped_clock"}}
    )
    c.set("k", "v", 1)
    assert entry_deadline(c, "k") == 43.0


def stopped_clock() -> float:
    return 42.0


def test_locations_are_separate() -> None:
    conf = {
        "a": {"BACKEND": BACKEND, "LOCATION": f"sep-{next(_locations)}"},
        "b": {"BACKEND": BACKEND, "LOCATION": f"sep-{next(_locations)}"},
    }
    with override_settings(CACHES=conf):
        caches["a"].set("k", "in a")
        assert caches["b"].get("k") is None


# -- versions moved whole -------------------------------------------------------


def test_incr_and_decr_version(cache: CacheBackend) -> None:
    v2 = caches["v2"]
    cache.set("answer", 42, version=2)
    assert cache.incr_version("answer", version=2) == 3
    assert cache.get("answer", version=2) is None
    assert cache.get("answer", version=3) == 42

    v2.set("answer2", 42)
    assert v2.incr_version("answer2") == 3
    assert v2.get("answer2") is None and v2.get("answer2", version=3) == 42

    assert cache.decr_version("answer", version=3) == 2
    assert cache.get("answer", version=2) == 42
    assert v2.decr_version("answer2", version=3) == 2
    assert v2.get("answer2") == 42

    with pytest.raises(ValueError):
        cache.incr_version("absent")
    with pytest.raises(ValueError):
        cache.decr_version("absent", version=2)
    cache.set("null", None)
    assert cache.incr_version("null") == 2
    assert cache.has_key("null", version=2)


def test_incr_version_keeps_the_expiry(cache: CacheBackend) -> None:
    cache.set("k", "v", 1000)
    deadline = entry_deadline(cache, "k")
    cache.incr_version("k")
    assert entry_deadline(cache, "k", version=2) == deadline


# -- get_or_set -----------------------------------------------------------------


def test_get_or_set(cache: CacheBackend) -> None:
    assert cache.get("projector") is None
    assert cache.get_or_set("projector", 42) == 42
    assert cache.get_or_set("projector", 43) == 42
    assert cache.get_or_set("null", None) is None
    assert cache.get("null", "default") is None
    assert cache.get_or_set("called", lambda: "made") == "made"
    assert cache.get_or_set("called", lambda: "again") == "made"
    assert cache.get_or_set("brian", 1979, version=2) == 1979
    assert cache.get("brian") is None
    assert cache.get_or_set("brian", 42, version=1) == 42
    assert cache.get_or_set("brian", 0, version=2) == 1979
    with pytest.raises(TypeError, match="default"):
        cache.get_or_set("brian")  # type: ignore[call-arg]
    cache.get_or_set("zero", "x", timeout=0)
    assert not cache.has_key("zero")


def test_get_or_set_when_another_caller_wins_the_add(
    cache: CacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CacheBackend, "add", lambda *a, **k: False)
    assert cache.get_or_set("key", "default") == "default"


# -- async: same behaviour, no thread ---------------------------------------------

ASYNC_NAMES = [
    name
    for name in dir(BaseCache)
    if name.startswith("a") and inspect.iscoroutinefunction(getattr(BaseCache, name))
]


def test_every_async_method_is_our_own() -> None:
    assert {"aget", "aset", "aadd", "aincr", "aget_many", "aclear"} <= set(ASYNC_NAMES)
    for name in ASYNC_NAMES:
        assert getattr(CacheBackend, name) is not getattr(BaseCache, name), name


class ThreadSpy:
    """Records the thread that pickles it, unpickles it or adds to it."""

    threads: list[int] = []

    def __init__(self, n: int = 0) -> None:
        self.n = n

    def __reduce__(self) -> Any:
        ThreadSpy.threads.append(threading.get_ident())
        return (ThreadSpy, (self.n,))

    def __add__(self, other: int) -> ThreadSpy:
        ThreadSpy.threads.append(threading.get_ident())
        return ThreadSpy(self.n + other)


async def test_async_methods_run_in_the_loop(
    cache: CacheBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_thread_hop(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sync_to_async used")

    monkeypatch.setattr(django_base, "sync_to_async", no_thread_hop)
    ThreadSpy.threads = []
    me = threading.get_ident()

    await cache.aset("a", ThreadSpy(1))
    assert (await cache.aget("a")).n == 1
    assert await cache.aget("missing", "d") == "d"
    assert await cache.aadd("a", 0) is False
    assert await cache.aadd("b", ThreadSpy(2)) is True
    assert (await cache.aincr("b", 5)).n == 7
    assert await cache.aset_many({"c": 1, "d": ThreadSpy(4)}) == []
    got = await cache.aget_many(["a", "c", "zz"])
    assert got["a"].n == 1 and got["c"] == 1 and "zz" not in got
    assert await cache.aincr("c") == 2
    assert await cache.adecr("c", 3) == -1
    assert await cache.ahas_key("c") is True
    assert await cache.atouch("c", 0) is True
    assert await cache.ahas_key("c") is False
    assert await cache.adelete("a") is True
    assert await cache.adelete("a") is False
    assert await cache.adelete_many(["b", "d"]) is None
    assert await cache.aget_or_set("e", lambda: "made") == "made"
    assert await cache.aincr_version("e") == 2
    assert await cache.adecr_version("e", version=2) == 1
    assert await cache.aget("e") == "made"
    await cache.aclear()
    assert await cache.aget_many(["e"]) == {}
    await cache.aclose()
    with pytest.raises(ValueError):
        await cache.aincr("gone")
    assert ThreadSpy.threads and set(ThreadSpy.threads) == {me}


# -- as the backend of @stanchion.cached --------------------------------------------


async def test_cached_decorator_ttl_reaches_this_backend(
    cache: CacheBackend, clock: FakeClock
) -> None:
    calls: list[str] = []

    @stanchion.cached(ttl=5, backend=cache)
    def shout(word: str) -> str:
        calls.append(word)
        return word.upper()

    @stanchion.cached(ttl=5, backend=cache)
    async def whisper(word: str) -> str:
        calls.append(word)
        return word.lower()

    assert shout("hey") == "HEY" == shout("hey")
    assert await whisper("HO") == "ho" == await whisper("HO")
    assert calls == ["hey", "HO"]
    # TIMEOUT is 300 s: a deadline 5 s away is the decorator's ttl.
    for word in ("hey", "HO"):
        assert entry_deadline(cache, word) == clock.now + 5


def test_lazy_querysets_through_the_async_methods(tmp_path: Path) -> None:
    """Pickling a lazy QuerySet runs its query, which Django refuses in an
    event loop: aset/aadd/aset_many/aget_or_set still store it, as
    LocMemCache does (real SQLite, in a process of its own)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("isolated") / "django_queryset_cache.py"),
            str(tmp_path / "db.sqlite3"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout)
    assert got["stanchion"] == got["locmem"]
    assert got["stanchion"] == {
        "a-notes": ["apple", "avocado"],
        "added": True,
        "all": ["apple", "avocado", "banana"],
        "ordered": ["banana", "avocado", "apple"],
        "made": ["banana"],
        "plain": "text",
    }


# -- in a Django project ------------------------------------------------------------


def test_cache_page_serves_from_this_backend() -> None:
    view_calls = {"n": 0}

    def counted(request: HttpRequest) -> HttpResponse:
        view_calls["n"] += 1
        response = HttpResponse(f"call {view_calls['n']}")
        response.set_cookie("flavour", "plain")
        return response

    # cache_page reads settings when it decorates: so here, not at import.
    urls = types.ModuleType("counted_urls")
    urls.urlpatterns = [path("counted", cache_page(60)(counted))]  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=urls):
        client = Client()
        first = client.get("/counted")
        second = client.get("/counted")
        calls_after_two = view_calls["n"]
        hits = caches["default"].stats()["hits"]
        third_after_clear = (caches["default"].clear(), client.get("/counted"))[1]
    assert first.status_code == second.status_code == 200
    assert first.content == second.content == b"call 1"
    assert calls_after_two == 1
    assert second.cookies["flavour"].value == "plain"
    assert hits is not None and hits >= 1
    assert third_after_clear.content == b"call 2"
