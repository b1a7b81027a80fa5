"""Limiters per distinct rate (:class:`LimiterCache`) and limits by plan
(:class:`Plans`)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from .._limiter import Limiter, RateLimiter
from .._penalty import Penalty, check_penalty
from .._rates import Rate, normalize_rates
from .request import MAX_LIMITERS, RateSpec, Request, SettingError

# -- limiters per distinct rate ------------------------------------------------


class _RateInfo:
    """What the headers need to know about one limiter's rates."""

    __slots__ = ("capacities", "limiter", "max_cost", "rates", "windows")

    def __init__(
        self, limiter: Any, rates: tuple[Rate, ...], capacities: tuple[int, ...]
    ):
        self.limiter = limiter
        self.rates = rates
        self.capacities = capacities
        # The largest cost one hit may ask (None: the limiter does not say).
        self.max_cost: int | None = getattr(limiter, "max_cost", None)
        # (q, w) per rate for RateLimit-Policy: whole quota over whole
        # seconds, scaling the window when the rate is fractional.
        windows = []
        for r in rates:
            if float(r.limit).is_integer() and float(r.period).is_integer():
                windows.append((int(r.limit), int(r.period)))
            else:
                f = (Fraction(r.limit) / Fraction(r.period)).limit_denominator(10**6)
                windows.append((f.numerator, max(1, f.denominator)))
        self.windows = tuple(windows)


class LimiterCache:
    """One limiter per distinct rate (and algorithm), shared by every rule
    that uses it, at most ``maxsize`` of them (least recently used dropped
    first: its clients start afresh). ``penalty`` (a ``stanchion.Penalty``)
    applies to every limiter it builds, in whatever storage."""

    def __init__(
        self,
        *,
        algorithm: str = "token_bucket",
        storage: Any = None,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] | None = None,
        maxsize: int = MAX_LIMITERS,
        penalty: Penalty | None = None,
    ) -> None:
        try:
            check_penalty(penalty)
        except TypeError as exc:
            raise SettingError("penalty", str(exc)) from None
        if isinstance(storage, str):
            # A URL, as the framework settings take: memory://, shm://name,
            # redis://, rediss://, unix://.
            from .._settings import storage_from_url

            storage = storage_from_url(storage, lambda _: "storage")
        self.algorithm = algorithm
        self.storage = storage
        self.max_keys = max_keys
        self.clock = clock
        self.maxsize = maxsize
        self.penalty = penalty
        self._by_rate: OrderedDict[tuple[Any, ...], _RateInfo] = OrderedDict()
        self._dry_run: LimiterCache | None = None
        # Build one limiter now so a bad algorithm/max_keys/storage fails
        # at startup, not on the first request.
        try:
            Limiter("1/second", algorithm=algorithm, max_keys=max_keys, clock=clock)
        except (TypeError, ValueError) as exc:
            raise SettingError("algorithm/max_keys", str(exc)) from None
        if storage is not None and getattr(storage, "make_limiter", None) is None:
            # Else the first rate built reports it, as a bad rate.
            raise SettingError(
                "storage",
                f"unsupported storage {storage!r}: use None (in-process), a "
                "storage URL or a stanchion storage such as RedisStorage",
            )

    def for_dry_run(self) -> LimiterCache:
        """The limiters of the rules in dry run: these settings without
        the penalty (a refusal that did not happen bans no one), one
        cache shared by every such rule."""
        if self.penalty is None:
            return self
        if self._dry_run is None:
            # A storage naming keys by the rates (Redis) counts the dry
            # run's hits under keys of its own; the others keep a table
            # per limiter.
            storage = self.storage
            namespaced = getattr(storage, "namespaced", None)
            if namespaced is not None:
                storage = namespaced("dry-run:")
            self._dry_run = LimiterCache(
                algorithm=self.algorithm,
                storage=storage,
                max_keys=self.max_keys,
                clock=self.clock,
                maxsize=self.maxsize,
            )
        return self._dry_run

    def get(self, spec: RateSpec, setting: str = "limit") -> _RateInfo:
        if isinstance(spec, str):
            cache_key: tuple[Any, ...] = (spec,)
        elif isinstance(spec, list):
            cache_key = tuple(spec)
        elif isinstance(spec, tuple):
            cache_key = (spec,)
        else:
            return self._wrap(spec, setting)
        info = self._by_rate.get(cache_key)
        if info is not None:
            self._by_rate.move_to_end(cache_key)
            return info
        try:
            rates = tuple(normalize_rates(spec))
            limiter = Limiter(
                list(rates),
                algorithm=self.algorithm,
                storage=self.storage,
                max_keys=self.max_keys,
                clock=self.clock,
                penalty=self.penalty,
            )
        except (TypeError, ValueError) as exc:
            raise SettingError(setting, f"bad rate {spec!r}: {exc}") from None
        info = _RateInfo(limiter, rates, tuple(_capacity(r) for r in rates))
        self._by_rate[cache_key] = info
        if len(self._by_rate) > self.maxsize:
            self._by_rate.popitem(last=False)
        return info

    def _wrap(self, limiter: Any, setting: str) -> _RateInfo:
        """A limiter object given directly (a Limiter, RedisLimiter, ...)."""
        key = ("limiter", id(limiter))
        info = self._by_rate.get(key)
        if info is None or info.limiter is not limiter:
            if not isinstance(limiter, RateLimiter):
                reason = (
                    "expected a rate string such as '10/second', a list of rates "
                    f"or a limiter (a stanchion.RateLimiter), not "
                    f"{type(limiter).__name__}"
                )
                members = [m for m in vars(RateLimiter) if not m.startswith("_")]
                missing = [m for m in members if not hasattr(limiter, m)]
                if len(missing) < len(members):  # a limiter class, incomplete
                    reason += f" (it lacks {', '.join(missing)})"
                raise SettingError(setting, reason)
            rates = tuple(getattr(limiter, "rates", ()) or ())
            info = _RateInfo(limiter, rates, tuple(_capacity(r) for r in rates))
            self._by_rate[key] = info
            if len(self._by_rate) > self.maxsize:
                self._by_rate.popitem(last=False)
        return info


def _capacity(rate: Rate) -> int:
    return max(1, math.floor(rate.limit))


class Plans:
    """Limits by plan: ``Plans({"free": "10/minute", "pro": "600/minute"},
    plan=lambda request: ...)``. Every rate is checked when the rule is
    built. A request whose plan is ``None`` or not in the mapping gets
    ``default`` (a plan name; the first plan when not given), so a
    missing or forged plan never means "no limit". Map a plan to ``None``
    to leave it unlimited."""

    def __init__(
        self,
        rates: Mapping[str, RateSpec | None],
        plan: Callable[[Request], Any],
        default: str | None = None,
    ) -> None:
        if not isinstance(rates, Mapping) or not rates:
            raise SettingError(
                "limit", "Plans needs a non-empty mapping of plan -> rate"
            )
        if not callable(plan):
            raise SettingError("limit", "Plans needs a plan function")
        if default is None:
            default = next(iter(rates))
        if default not in rates:
            raise SettingError("limit", f"default plan {default!r} is not in the plans")
        for name, spec in rates.items():
            if spec is not None and not isinstance(spec, RateLimiter):
                try:
                    normalize_rates(spec)
                except (TypeError, ValueError) as exc:
                    raise SettingError("limit", f"plan {name!r}: {exc}") from None
        self.rates = dict(rates)
        self.plan = plan
        self.default = default

    def __call__(self, request: Request) -> RateSpec | None:
        name = self.plan(request)
        if name is None or name not in self.rates:
            name = self.default
        return self.rates[name]


# -- verdicts and replies ------------------------------------------------------
