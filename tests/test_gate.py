"""_core.Gate: a rule's fast path (the plan kept for a client address,
hit in C), against Limiter.hit, hostile plans and callbacks that re-enter
it."""

from __future__ import annotations

import gc
import sys
from typing import Any

import pytest

from stanchion import Limiter
from stanchion._core import Gate
from stanchion._core import Limiter as CoreLimiter

from .conftest import FakeClock


def test_the_same_decisions_as_limiter_hit(clock: FakeClock) -> None:
    gated = Limiter("3/minute;5/hour", clock=clock)
    direct = Limiter("3/minute;5/hour", clock=clock)
    plans = {"203.0.113.7": (None, b"\x01k", 1, "203.0.113.7"), "c": (None, "c", 2)}
    gate = Gate(gated, plans)
    for step in range(12):
        for peer, (_, key, cost, *_rest) in plans.items():
            assert gate(peer) == direct.hit(key, cost), (step, peer)
        clock.advance(7)


def test_no_plan_is_none_and_hits_nothing(clock: FakeClock) -> None:
    lim = Limiter("1/minute", clock=clock)
    gate = Gate(lim, {})
    assert gate("203.0.113.7") is None
    assert gate(None) is None
    assert lim.stats()["keys"] == 0
    with pytest.raises(TypeError, match="unhashable"):
        gate([])


@pytest.mark.parametrize(
    ("plan", "error", "match"),
    [
        ((None, "k"), TypeError, "a plan must be a tuple"),
        ([None, "k", 1], TypeError, "a plan must be a tuple"),
        ((None, 5, 1), TypeError, "key must be str or bytes"),
        ((None, "k", "1"), TypeError, "cost must be an int"),
        ((None, "k", True), TypeError, "cost must be an int"),
        ((None, "k", 0), ValueError, "out of range"),
        ((None, "k", 2), ValueError, "out of range"),
        ((None, "k", 2**70), ValueError, "out of range"),
        ((None, "k", -(2**70)), ValueError, "out of range"),
    ],
)
def test_bad_plans_are_errors_that_change_nothing(
    plan: Any, error: type[Exception], match: str
) -> None:
    lim = Limiter("1/minute")
    with pytest.raises(error, match=match):
        Gate(lim, {"p": plan})("p")
    assert lim.stats()["keys"] == 0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((None, {}), "limiter must be a stanchion.Limiter"),
        ((object(), {}), "limiter must be a stanchion.Limiter"),
        ((Limiter("1/s"), []), "must be dict"),
        ((Limiter("1/s"),), "missing"),
    ],
)
def test_bad_arguments(args: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        Gate(*args)


def test_bad_calls() -> None:
    gate = Gate(Limiter("1/s"), {})
    with pytest.raises(TypeError, match="one peer"):
        gate()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="one peer"):
        gate("a", "b")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="one peer"):
        gate(peer="a")  # type: ignore[call-arg]


def test_an_uninitialised_limiter_is_refused() -> None:
    lim = CoreLimiter.__new__(CoreLimiter)
    with pytest.raises(RuntimeError, match="__init__"):
        Gate(lim, {"p": (None, "k", 1)})("p")


def test_a_clock_that_drops_the_plan_and_reenters() -> None:
    """The injected clock runs while the gate holds the plan: it may
    clear the plans, drop the gate and call it again; the hit still uses
    the plan it started with, and nothing crashes."""
    plans: dict[str, Any] = {}
    holder: list[Any] = []
    depth = [0]

    def clock() -> float:
        if holder and depth[0] == 0:
            depth[0] += 1
            try:
                assert holder[0]("p") is not None  # re-entered
            finally:
                depth[0] -= 1
            plans.clear()
            holder.clear()
            gc.collect()
        return 1000.0

    lim = Limiter("5/minute", clock=clock)
    plans["p"] = (None, "k" + "ey" * 20, 1)  # a key not interned anywhere
    holder.append(Gate(lim, plans))
    d = holder[0]("p")
    assert d is not None and d.remaining == 3  # the re-entered hit counted
    assert plans == {} and holder == []


def test_peers_with_hostile_hash_and_eq() -> None:
    plans: dict[Any, Any] = {}

    class Peer(str):
        def __hash__(self) -> int:
            plans.clear()  # runs while the gate looks the peer up
            return str.__hash__(self)

    plans["p"] = (None, "k", 1)
    assert Gate(Limiter("5/minute"), plans)(Peer("p")) is None


def test_no_reference_leaks_in_a_hot_loop() -> None:
    lim = Limiter("1000000/second")
    key, peer = "k" * 10, "203.0.113.7"
    plan = (None, key, 1, peer)
    plans = {peer: plan}
    gate = Gate(lim, plans)
    objs = (lim, plans, plan, key, peer)
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(10_000):
        assert gate(peer)
        assert gate("other") is None
    assert [sys.getrefcount(o) for o in objs] == before


def test_a_cycle_through_the_gate_is_collected() -> None:
    plans: dict[str, Any] = {}
    gate = Gate(Limiter("1/s"), plans)
    plans["self"] = (gate, "k", 1)
    del gate, plans
    assert gc.collect() >= 1
