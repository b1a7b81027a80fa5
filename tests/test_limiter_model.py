"""The C limiter against the pure-Python model, decision by decision."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stanchion import Limiter

from .conftest import FakeClock
from .model import ModelLimiter

ALGORITHMS = ["token_bucket", "fixed_window", "sliding_window"]

# Rates as (N, period in ns). Periods include ones that do not divide
# evenly by N, so the rounding of the emission interval is exercised.
rate = st.tuples(
    st.integers(min_value=1, max_value=20),
    st.sampled_from(
        [1_000_000, 7_000_000, 1_000_000_000, 3_000_000_000, 60_000_000_000]
    ),
)
step = st.tuples(
    st.integers(min_value=0, max_value=400_000_000),  # time advance, ns
    st.sampled_from(["a", "b", "c"]),
    st.integers(min_value=1, max_value=3),  # cost
    st.booleans(),  # hit (True) or peek
)


def run_both(
    algorithm: str,
    rates: list[tuple[int, int]],
    steps: list[tuple[int, str, int, bool]],
) -> None:
    clock = FakeClock(start=0.0)
    now_ns = 5_000_000_000_000  # an arbitrary start, exactly representable
    clock.now = now_ns / 1e9
    lim = Limiter([(n, p / 1e9) for n, p in rates], algorithm=algorithm, clock=clock)
    model = ModelLimiter([(float(n), p) for n, p in rates], algorithm)
    max_cost = lim.max_cost
    for advance, key, cost, commit in steps:
        now_ns += advance
        clock.now = now_ns / 1e9
        # The float round trip must land on the same integer ns.
        assert round(clock.now * 1e9) == now_ns
        cost = min(cost, max_cost)
        d = lim.hit(key, cost) if commit else lim.peek(key, cost)
        v = model.decide(key, now_ns, cost, commit)
        assert (
            d.allowed,
            d.limit,
            d.remaining,
            d.reset_after_ns,
            d.retry_after_ns,
        ) == (
            v.allowed,
            v.limit,
            v.remaining,
            v.reset_ns,
            v.retry_ns,
        ), (algorithm, rates, key, cost, commit)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    rates=st.lists(rate, min_size=1, max_size=1),
    steps=st.lists(step, max_size=80),
)
def test_single_rate_matches_model(
    algorithm: str,
    rates: list[tuple[int, int]],
    steps: list[tuple[int, str, int, bool]],
) -> None:
    run_both(algorithm, rates, steps)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    rates=st.lists(rate, min_size=2, max_size=4),
    steps=st.lists(step, max_size=80),
)
def test_several_rates_match_model(
    algorithm: str,
    rates: list[tuple[int, int]],
    steps: list[tuple[int, str, int, bool]],
) -> None:
    run_both(algorithm, rates, steps)


# -- what a policy may admit ---------------------------------------------------------

hits = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=300_000_000),
        st.integers(min_value=1, max_value=3),
    ),
    min_size=1,
    max_size=120,
)


def admitted(
    algorithm: str, n: int, period_ns: int, seq: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    clock = FakeClock(start=0.0)
    now = 7_000_000_000_000
    lim = Limiter([(n, period_ns / 1e9)], algorithm=algorithm, clock=clock)
    out = []
    for advance, cost in seq:
        now += advance
        clock.now = now / 1e9
        cost = min(cost, n)
        if lim.hit("k", cost):
            out.append((now, cost))
    return out


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 10),
    period=st.sampled_from([1_000_000_000, 2_000_000_000]),
    seq=hits,
)
def test_token_bucket_never_exceeds_burst_plus_refill(
    n: int, period: int, seq: list[tuple[int, int]]
) -> None:
    got = admitted("token_bucket", n, period, seq)
    interval = round(period / n)
    # In any interval [t_i, t_j], at most burst + (t_j - t_i) / interval.
    for i in range(len(got)):
        total = 0
        for j in range(i, len(got)):
            total += got[j][1]
            assert total <= n + (got[j][0] - got[i][0]) // interval


@settings(max_examples=200, deadline=None)
@given(
    algorithm=st.sampled_from(["fixed_window", "sliding_window"]),
    n=st.integers(1, 10),
    period=st.sampled_from([1_000_000_000, 2_000_000_000]),
    seq=hits,
)
def test_windows_never_exceed_their_bounds(
    algorithm: str, n: int, period: int, seq: list[tuple[int, int]]
) -> None:
    got = admitted(algorithm, n, period, seq)
    per_window: dict[int, int] = {}
    for t, c in got:
        per_window[t // period] = per_window.get(t // period, 0) + c
    # Every aligned window admits at most N.
    assert all(v <= n for v in per_window.values())
    for i in range(len(got)):
        total = 0
        for j in range(i, len(got)):
            if got[j][0] - got[i][0] >= period:
                break
            total += got[j][1]
            # Any sliding interval of one period: at most 2N for a fixed
            # window (the boundary burst); the sliding window's estimate
            # bounds it the same way in the worst case, and tighter when
            # the previous window's hits were spread out.
            assert total <= 2 * n
    if algorithm == "sliding_window":
        # The estimate itself never exceeds N at any admitted hit.
        for t, _c in got:
            w = t // period
            e = t - w * period
            prev = sum(c for tt, c in got if tt // period == w - 1)
            cur = sum(c for tt, c in got if tt // period == w and tt <= t)
            assert prev * (period - e) + cur * period <= n * period
