"""Budgets sharing one limiter and one pauses table."""

from __future__ import annotations

import pytest

import stanchion
from stanchion._budget import Budget
from stanchion._pauses import pauses_for


def test_budgets_share_one_limiter_and_one_pauses_table(clock) -> None:
    limiter = stanchion.Limiter("1/second", burst=1, clock=clock)
    pauses = pauses_for(None, clock=clock)
    a = Budget("a", limiter, pauses=pauses, clock=clock)
    b = Budget("b", limiter, pauses=pauses, clock=clock)
    assert a.limiter is limiter and a.pauses is pauses
    assert a.take() == 0.0
    assert b.take() == 0.0  # each its own key
    assert a.take() == pytest.approx(1.0)
    a.settle(False, answer=_Answer(429, {"Retry-After": "5"}))
    assert pauses.remaining("a") == pytest.approx(5.0)
    assert pauses.remaining("b") == 0.0
    assert repr(a) == "Budget('a', '1/second')"


def test_a_budget_without_rates_only_pauses(clock) -> None:
    budget = Budget("a", None, clock=clock)
    assert budget.limiter is None and budget.auto is None
    assert all(budget.take() == 0.0 for _ in range(100))
    budget.settle(True, answer=_Answer(503, {"Retry-After": "2"}))
    assert budget.take() == pytest.approx(2.0)
    assert repr(budget) == "Budget('a', None)"


class _Answer:
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers
