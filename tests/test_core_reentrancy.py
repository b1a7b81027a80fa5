"""The C core stays memory-safe whatever Python code it calls: finalizers run
by a collection inside an allocation, __float__ and clocks that change or
re-initialise the object being built or used, and numbers too large for
int64. Each attack runs in a fresh interpreter, so a crash is a failed test
rather than a dead test run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

import stanchion
from stanchion import Cache, Limiter, _core

from .conftest import FakeClock

PACKAGE_ROOT = str(Path(stanchion.__file__).resolve().parent.parent)


def run_attack(code: str) -> str:
    """Runs `code` in a fresh interpreter on this build of stanchion; it
    must exit cleanly (no signal, no failed assert) and print "ok"."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    )
    assert proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
    return proc.stdout


# Python code run by the cyclic collector (a finalizer, here a gc callback
# so that it runs at every collection) does `ACTION` to the cache. With
# gc.set_threshold(1 or 2) right before the call, the collection happens
# at the method's own first allocation of a tracked object.
GC_HOOK = """
import gc
import stanchion

c = stanchion.Cache(None)
armed = [False]
fired = [0]

def hook(phase, info):
    if phase == "start" and armed[0]:
        armed[0] = False
        fired[0] += 1
        ACTION

gc.callbacks.append(hook)

def popitem():
    try:
        return [c.popitem()]
    except KeyError:  # the collector emptied the cache first
        return []

def fill():
    c.clear()
    for i in range(64):
        c[i] = str(i)

def attack(call, rounds=100):
    for n in range(rounds):
        fill()
        gc.collect()
        # Empty the list free list, so that a new list is a tracked
        # allocation (which counts towards a collection).
        hold = [[] for _ in range(100)]
        gc.collect()
        gc.set_threshold(1 + n % 2)
        armed[0] = True
        got = call()
        armed[0] = False
        gc.set_threshold(700)
        del hold
        yield got
"""


@pytest.mark.parametrize("method", ["keys", "values", "items", "iter", "popitem"])
@pytest.mark.parametrize(
    "action",
    ["c.clear()", "[c.__setitem__(-j, j) for j in range(500)]", "c.popitem()"],
)
def test_collection_run_by_an_allocation_may_use_the_cache(
    method: str, action: str
) -> None:
    # On 3.10/3.11 the cyclic GC runs inside the allocation of the list,
    # tuples or pair these methods build.
    call = {
        "keys": "c.keys",
        "values": "c.values",
        "items": "c.items",
        "iter": "c.__iter__",
        "popitem": "popitem",
    }[method]
    run_attack(
        GC_HOOK.replace("ACTION", action)
        + f"""
for got in attack({call}):
    # Every element is a real object of the table as it is now.
    for x in got:
        k = x[0] if isinstance(x, tuple) else x
        assert isinstance(k, (int, str)), type(k)
    assert len(c.keys()) == len(c)
assert fired[0] >= 95, fired
print("ok")
"""
    )


def test_make_key_owns_the_keyword_items_while_it_allocates() -> None:
    run_attack(
        """
import gc
from stanchion import _core

class Value:
    def __init__(self, n):
        self.payload = [n] * 64

kwargs = {}
armed = [False]
fired = [0]

def hook(phase, info):
    if phase == "start" and armed[0]:
        armed[0] = False
        fired[0] += 1
        kwargs.clear()
        [Value(i) for i in range(50)]  # reuse the freed memory

gc.callbacks.append(hook)
for n in range(300):
    kwargs.clear()
    for j in range(8):
        kwargs[f"name{j}"] = Value(j)
    gc.collect()
    gc.set_threshold(1 + n % 3)  # the collection lands on varying allocations
    armed[0] = True
    key = _core.make_key((1, 2), kwargs)
    armed[0] = False
    gc.set_threshold(700)
    if len(key) == 2:
        continue  # the hook ran before make_key read the dict
    names = key[3::2]
    values = key[4::2]
    assert list(names) == [f"name{j}" for j in range(8)], names
    assert [v.payload[0] for v in values] == list(range(8))
assert fired[0] >= 100, fired
print("ok")
"""
    )


def test_rate_float_that_empties_the_rates_list() -> None:
    run_attack(
        """
from stanchion import _core

rates = []

class N:
    def __float__(self):
        rates.clear()
        [bytearray(64) for _ in range(100)]
        return 5.0

rates += [(N(), 1.0), (3, 60.0), "10/hour"]
lim = _core.Limiter(rates)
d = lim.hit("a")
assert d.allowed and d.limit == 3, d
assert lim.max_cost == 3
print("ok")
"""
    )


@pytest.mark.parametrize(
    ("algorithm", "rate"),
    [
        ("sliding_window", "100/second"),  # was a division by zero
        ("fixed_window", "100/second"),
        ("token_bucket", "1000000/second"),  # was a wrapped cost
    ],
)
def test_clock_that_reinitialises_its_limiter(algorithm: str, rate: str) -> None:
    run_attack(
        f"""
from stanchion import _core

armed = [False]

def clock():
    if armed[0]:
        armed[0] = False
        lim.__init__("1/day", {algorithm!r}, None, 10, clock)
    return 1000.0

lim = _core.Limiter({rate!r}, {algorithm!r}, None, 10, clock)
assert lim.hit("a", 50)
armed[0] = True
try:
    lim.hit("a", 50)
except ValueError as e:
    assert "can never be allowed" in str(e), e
else:
    raise AssertionError("a cost above the new capacity was decided")
assert lim.max_cost == 1 and lim.stats()["keys"] == 0
assert lim.hit("a") and not lim.hit("a")
print("ok")
"""
    )


def test_callbacks_that_reinitialise_the_cache() -> None:
    # The clock, weigh, a key's __eq__ and a value's __del__ each
    # re-initialise the cache mid-operation, with other settings.
    run_attack(
        """
import gc
import stanchion

c = stanchion.Cache(4)
t = [1000.0]
todo = []

def reinit():
    if todo:
        todo.pop()()

def clock():
    reinit()
    return t[0]

def weigh(v):
    reinit()
    return 3

class Key:
    def __init__(self, n):
        self.n = n
    def __hash__(self):
        return 1
    def __eq__(self, other):
        reinit()
        return isinstance(other, Key) and other.n == self.n

class Value:
    def __del__(self):
        reinit()

settings = [
    lambda: c.__init__(2, 5, clock, maxweight=7, weigh=weigh),
    lambda: c.__init__(None, None, None),
    lambda: c.__init__(0),
    lambda: c.__init__(3, 1, clock),
    lambda: c.__init__(8, None, clock, maxweight=4, weigh=weigh),
]
for round in range(200):
    todo[:] = [settings[(round + j) % len(settings)] for j in range(2)]
    for i in range(6):
        c[Key(i)] = Value()
        c.set(Key(i % 3), Value(), ttl=2)
        t[0] += 0.7
        c.get(Key(i - 1))
        Key(i) in c
        c.pop(Key(i - 2), None)
    c.keys(), c.items(), len(c)
    if len(c):
        c.popitem()
    s = c.stats()
    assert s["size"] == len(c.keys()) == len(c)
    if "weight" in s:
        assert 0 <= s["weight"] <= s["maxweight"]
    assert s["maxsize"] is None or s["size"] <= s["maxsize"]
c.clear()
gc.collect()
print("ok")
"""
    )


# ---------------------------------------------------------------------------
# Numbers beyond int64 and the clock policy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Limiter("1/s", max_keys=2**70),
        lambda: Limiter("1/s", max_keys=-(2**70)),
        lambda: _core.Limiter("1/s", "token_bucket", None, 2**70),
        lambda: Limiter("1/s", burst=2**70),
        lambda: Limiter(["1/s", "2/s"], burst=[2**70, None]),
        lambda: Limiter(stanchion.Rate(2**2000, 1)),
        lambda: Limiter(stanchion.Rate(1, 2**2000)),
        lambda: _core.Limiter([(2**2000, 1.0)]),
        lambda: _core.Limiter([(1, 2**2000)]),
        lambda: stanchion.parse_rates("1" + "0" * 400 + "/second"),
        lambda: stanchion.parse_rates("1 per " + "9" * 400 + " days"),
        lambda: Cache(2**70),
        lambda: Cache(10, ttl=2**2000),
        lambda: Cache(None, maxweight=2**70, weigh=len),
        lambda: Cache(None, maxweight=2**63, weigh=len),
        lambda: stanchion.Decision(True, 2**70, 0),
        lambda: stanchion.Decision(True, 1, -1),
        lambda: stanchion.Decision(True, 1, 0, 2**2000),
    ],
)
def test_huge_numbers_are_value_errors(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_huge_cost_and_ttl_arguments_are_value_errors() -> None:
    lim = Limiter("5/s")
    with pytest.raises(ValueError, match="can never be allowed"):
        lim.hit("a", cost=2**70)
    with pytest.raises(ValueError, match="cost must be >= 1"):
        lim.peek("a", cost=-(2**70))
    c: Cache[str, int] = Cache(10)
    with pytest.raises(ValueError, match="ttl"):
        c.set("a", 1, ttl=2**2000)
    assert len(c) == 0 and lim.stats()["keys"] == 0


def test_weights_summing_past_int64_evict_instead_of_wrapping() -> None:
    big = 2**62 + 1
    c: Cache[int, int] = Cache(None, maxweight=2**63 - 1, weigh=lambda v: v)
    c[1] = big
    c[2] = big  # 2**63 + 2: past int64; the oldest must go
    assert c.keys() == [2]
    assert c.weight == big
    c[3] = 2**63 - 1 - big
    c[4] = 2**63 - 1
    assert c.keys() == [4] and c.weight == 2**63 - 1
    assert c.stats()["evictions"] == 3


@pytest.mark.parametrize(
    "reading",
    [2**2000, -(2**2000), -1.0, -1e-9],
    ids=["2**2000", "-2**2000", "-1", "-1e-9"],
)
def test_clock_readings_out_of_range_are_value_errors(reading: float) -> None:
    lim = Limiter("1/s", clock=lambda: reading)
    with pytest.raises(ValueError, match="clock returned"):
        lim.hit("a")
    assert lim.stats()["keys"] == 0
    c: Cache[str, int] = Cache(10, ttl=5, clock=lambda: reading)
    with pytest.raises(ValueError, match="clock returned"):
        c["a"] = 1
    assert len(Cache(10, clock=lambda: reading)) == 0


def test_limiter_clock_going_backwards_is_held(clock: FakeClock) -> None:
    lim = Limiter("1/second", clock=clock)
    assert lim.hit("a")
    clock.advance(-0.5)  # a step back is taken as no time passing
    d = lim.hit("a")
    assert not d and d.retry_after_ns == 1_000_000_000
    assert not lim.peek("a")
    clock.advance(1.5)  # back at the last reading + 1 s
    assert lim.hit("a")


def _race(use: object) -> list[BaseException]:
    """Thread A reads the clock (1000.0) and is descheduled before the
    reading reaches the object; thread B reads 1000.5 and completes. A's
    reading then arrives earlier than the last one stored."""
    a_read = threading.Event()
    b_done = threading.Event()
    errors: list[BaseException] = []

    def clock() -> float:
        if threading.current_thread().name == "A":
            a_read.set()
            assert b_done.wait(10)
            return 1000.0
        return 1000.5

    def run(name: str) -> None:
        try:
            use(clock, name)  # type: ignore[operator]
        except BaseException as e:
            errors.append(e)
        finally:
            if name == "B":
                b_done.set()

    a = threading.Thread(target=run, args=("A",), name="A")
    b = threading.Thread(target=run, args=("B",), name="B")
    a.start()
    assert a_read.wait(10)
    b.start()
    a.join(10)
    b.join(10)
    return errors


def test_a_correct_clock_shared_by_threads_never_goes_backwards() -> None:
    state: dict[str, object] = {}

    def use_limiter(clock: object, name: str) -> None:
        lim = state.setdefault("lim", Limiter("10/second", clock=clock))
        assert lim.hit(name)  # type: ignore[attr-defined]

    assert _race(use_limiter) == []

    def use_cache(clock: object, name: str) -> None:
        c = state.setdefault("cache", Cache(10, ttl=60, clock=clock))
        c[name] = 1  # type: ignore[index]

    assert _race(use_cache) == []
    assert sorted(state["cache"].keys()) == ["A", "B"]  # type: ignore[attr-defined]


def test_a_replaced_value_is_released_once_the_bounds_hold() -> None:
    seen: list[tuple[int, int]] = []

    class Value:
        def __init__(self, weight: int) -> None:
            self.weight = weight

        def __del__(self) -> None:
            seen.append((len(c), c.weight))

    c: Cache[str, Value] = Cache(2, maxweight=10, weigh=lambda v: v.weight)
    c["a"] = Value(5)
    c["b"] = Value(5)
    c["a"] = Value(10)  # the old "a" goes, and "b" is evicted for weight
    c["c"] = Value(1)  # "a" is evicted
    c["d"] = Value(1)
    c["e"] = Value(1)  # full: "c" is evicted
    assert c.keys() == ["d", "e"]
    assert seen and all(n <= 2 and w <= 10 for n, w in seen), seen


class _Seconds:
    """A real number that is neither int nor float (as numpy scalars are)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __float__(self) -> float:
        return self.value


@pytest.mark.parametrize(
    "reading", [Fraction(3, 2), Decimal("1.5"), _Seconds(1.5)], ids=repr
)
def test_clock_readings_may_be_any_real_number(reading: Any) -> None:
    lim = Limiter("1/second", clock=lambda: reading)
    assert lim.hit("a").allowed
    assert lim.hit("a").retry_after == pytest.approx(1.0)
    c: Cache[str, int] = Cache(10, ttl=5, clock=lambda: reading)
    c["a"] = 1
    assert c["a"] == 1


@pytest.mark.parametrize("reading", [True, "1.5", None, 1.5j], ids=repr)
def test_clock_readings_that_are_not_real_numbers_are_type_errors(
    reading: Any,
) -> None:
    lim = Limiter("1/second", clock=lambda: reading)
    with pytest.raises(TypeError, match="clock must return a number"):
        lim.hit("a")
    assert lim.stats()["keys"] == 0
