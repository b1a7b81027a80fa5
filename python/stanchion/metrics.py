"""Metrics and hooks: what the limits and caches decided, for Prometheus
(``prometheus_client``) and OpenTelemetry (``opentelemetry-api``), and
for your own logging.

::

    import prometheus_client, stanchion.metrics
    stanchion.metrics.enable(prometheus_registry=prometheus_client.REGISTRY)

    from opentelemetry import metrics as otel
    stanchion.metrics.enable(otel_meter=otel.get_meter("my-app"))

    @stanchion.metrics.on_breach
    def log_breach(event):
        logger.info("refused %s %s (%s, scope %s)", event.client, event.path,
                    event.outcome, event.scope)

Series (labelled by scope, cache or storage name: never by client, so a
flood of distinct clients adds no series):

- ``stanchion_decisions_total{scope, outcome}`` (OpenTelemetry
  ``stanchion.decisions``): one per request a rule decided; ``outcome``
  is ``allowed``, ``denied`` (429), ``banned`` (a penalty ban),
  ``dry_run_denied`` (would have been refused), ``busy`` (no
  concurrency slot in time) or ``forbidden`` (the deny list).
- ``stanchion_queued_total{scope}`` and the histogram
  ``stanchion_queue_wait_seconds{scope, result}`` (``stanchion.queued``,
  ``stanchion.queue.wait``): holds of a :class:`stanchion.Concurrency`
  (in process, shared memory or Redis; a rule's is named after its
  scope) that waited in its queue, and how long; ``result`` is
  ``acquired``, ``timeout``, ``shed``, ``cancelled`` or ``refused``.
- ``stanchion_storage_errors_total{storage, server}`` and the gauge
  ``stanchion_storage_outage{storage, server}`` (1 during an outage):
  failed calls to Redis or Memcached (``storage="redis"``,
  ``"memcached"``).
- ``stanchion_cache_requests_total{cache, result}`` (``hit``,
  ``miss``), ``stanchion_cache_stale_total{cache}`` (stale answers
  served: stale-while-revalidate hits, stale-if-error misses),
  ``stanchion_cache_stores_total{cache}``,
  ``stanchion_cache_evictions_total{cache, reason}`` (``size``,
  ``expired``): read from the caches' own counters when the metrics are
  collected (nothing is added to a cache lookup). Response caches are
  watched as ``cache="response"``; name them, and watch a
  :class:`stanchion.Cache` or an ``@cached`` function, with
  :func:`watch`.

A limiter used directly is counted through :func:`counted`; a rule's
own ``on_decision``/``on_breach`` settings add hooks for it alone.

Cost: with nothing enabled (no exporter, no hook) the rules keep their
metrics-free path (nothing is looked up per request). Enabling switches
every rule, existing and future, to a path that also counts (and calls
the hooks); :func:`disable` switches them back. The decisions are
counted in process (one ``itertools.count`` step per request) and read
by the exporters when they collect.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import Decision
    from .http.headers import Verdict
    from .http.request import Request
    from .http.rule import Rule

__all__ = [
    "OUTCOMES",
    "CountedLimiter",
    "DecisionEvent",
    "counted",
    "disable",
    "enable",
    "enabled",
    "on_breach",
    "on_decision",
    "remove_hook",
    "unwatch",
    "watch",
    "watch_as",
]

log = logging.getLogger("stanchion.metrics")

#: The ``outcome`` label's values.
OUTCOMES = ("allowed", "denied", "banned", "dry_run_denied", "busy", "forbidden")
#: Queue wait results.
QUEUE_RESULTS = ("acquired", "timeout", "shed", "cancelled", "refused")
#: Histogram buckets of the queue wait, in seconds.
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10, 30)

_lock = threading.RLock()


class DecisionEvent:
    """What a hook receives: one decision and its request's context.

    ``scope`` (the rule's), ``outcome`` (see :data:`OUTCOMES`),
    ``decision`` (the limiter's :class:`stanchion.Decision`; None for a
    busy, forbidden or unidentified refusal), ``client`` (the identity
    limited: the client address or the key function's answer),
    ``method`` and ``path``, ``retry_after`` (seconds, or None),
    ``blocked`` (whether the request is refused) and ``request`` (the
    framework-neutral request view, None on the fast paths that build
    none)."""

    __slots__ = (
        "blocked",
        "client",
        "decision",
        "method",
        "outcome",
        "path",
        "request",
        "retry_after",
        "scope",
    )

    def __init__(
        self,
        scope: str,
        outcome: str,
        decision: Decision | None,
        client: Any,
        method: str | None,
        path: str | None,
        retry_after: float | None,
        blocked: bool,
        request: Request | None,
    ) -> None:
        self.scope = scope
        self.outcome = outcome
        self.decision = decision
        self.client = client
        self.method = method
        self.path = path
        self.retry_after = retry_after
        self.blocked = blocked
        self.request = request

    def __repr__(self) -> str:
        return (
            f"DecisionEvent(scope={self.scope!r}, outcome={self.outcome!r}, "
            f"client={self.client!r}, method={self.method!r}, path={self.path!r})"
        )


# -- exporters ----------------------------------------------------------------


def _noop(*_: Any) -> None:
    pass


class _Prometheus:
    """The series in one ``prometheus_client`` registry."""

    def __init__(self, registry: Any) -> None:
        try:
            import prometheus_client as pc
            from prometheus_client.core import (
                CounterMetricFamily,
                GaugeMetricFamily,
            )
        except ImportError:  # pragma: no cover - the extra is missing
            raise ImportError(
                "prometheus_registry= needs prometheus_client: "
                "pip install 'stanchion[prometheus]'"
            ) from None
        if not hasattr(registry, "register") or not hasattr(registry, "unregister"):
            raise TypeError(
                "prometheus_registry must be a prometheus_client CollectorRegistry, "
                f"not {type(registry).__name__}"
            )
        self.registry = registry
        self._counter_family = CounterMetricFamily
        self._gauge_family = GaugeMetricFamily
        made: list[Any] = []
        try:
            self.queued = pc.Counter(
                "stanchion_queued",
                "Holds that waited in a concurrency queue",
                ["scope"],
                registry=registry,
            )
            made.append(self.queued)
            self.wait = pc.Histogram(
                "stanchion_queue_wait_seconds",
                "Time spent in a concurrency queue",
                ["scope", "result"],
                buckets=WAIT_BUCKETS,
                registry=registry,
            )
            made.append(self.wait)
            self.collector = _Collected(self)
            registry.register(self.collector)
            made.append(self.collector)
        except ValueError as exc:
            for c in made:
                registry.unregister(c)
            raise ValueError(
                f"prometheus_registry already has stanchion's series ({exc}); "
                "call stanchion.metrics.disable() first, or give another registry"
            ) from None

    def queue(
        self, scope: str
    ) -> tuple[Callable[[], None], Callable[[str, float], None]]:
        wait = self.wait
        return self.queued.labels(scope).inc, lambda r, s: wait.labels(
            scope, r
        ).observe(s)

    def close(self) -> None:
        for c in (self.queued, self.wait, self.collector):
            try:
                self.registry.unregister(c)
            except KeyError:
                pass


class _Collected:
    """The series read when Prometheus collects: storage and caches."""

    def __init__(self, owner: _Prometheus) -> None:
        self.owner = owner

    def describe(self) -> list[Any]:
        """The families' names, without samples: the registry refuses
        a second collector with the same ones."""
        counter = self.owner._counter_family
        gauge = self.owner._gauge_family
        return [
            counter("stanchion_decisions", "", labels=["scope", "outcome"]),
            counter("stanchion_storage_errors", "", labels=["storage", "server"]),
            gauge("stanchion_storage_outage", "", labels=["storage", "server"]),
            counter("stanchion_cache_requests", "", labels=["cache", "result"]),
            counter("stanchion_cache_stale", "", labels=["cache"]),
            counter("stanchion_cache_stores", "", labels=["cache"]),
            counter("stanchion_cache_evictions", "", labels=["cache", "reason"]),
        ]

    def collect(self) -> Iterator[Any]:
        counter = self.owner._counter_family
        gauge = self.owner._gauge_family
        decided = counter(
            "stanchion_decisions",
            "Requests decided by a rate limit rule, by outcome",
            labels=["scope", "outcome"],
        )
        for (scope, outcome), n in decision_counts():
            decided.add_metric([scope, outcome], n)
        yield decided
        errors = counter(
            "stanchion_storage_errors",
            "Failed calls to a shared storage",
            labels=["storage", "server"],
        )
        outage = gauge(
            "stanchion_storage_outage",
            "1 while a shared storage is unavailable",
            labels=["storage", "server"],
        )
        for (storage, server), n in sorted(_storage_errors.items()):
            errors.add_metric([storage, server], n)
        for (storage, server), down in sorted(_outages.items()):
            outage.add_metric([storage, server], down)
        yield errors
        yield outage
        requests = counter(
            "stanchion_cache_requests",
            "Cache lookups, by result",
            labels=["cache", "result"],
        )
        stale = counter(
            "stanchion_cache_stale",
            "Stale entries served (also counted as a hit or a miss)",
            labels=["cache"],
        )
        stores = counter("stanchion_cache_stores", "Cache stores", labels=["cache"])
        evictions = counter(
            "stanchion_cache_evictions",
            "Cache entries dropped, by reason",
            labels=["cache", "reason"],
        )
        for name, c in sorted(cache_counts().items()):
            requests.add_metric([name, "hit"], c["hit"])
            requests.add_metric([name, "miss"], c["miss"])
            stale.add_metric([name], c["stale"])
            stores.add_metric([name], c["stores"])
            evictions.add_metric([name, "size"], c["evictions"])
            evictions.add_metric([name, "expired"], c["expirations"])
        yield requests
        yield stale
        yield stores
        yield evictions


class _OpenTelemetry:
    """The instruments of one OpenTelemetry meter."""

    def __init__(self, meter: Any) -> None:
        try:
            from opentelemetry.metrics import CallbackOptions, Observation
        except ImportError:  # pragma: no cover - the extra is missing
            raise ImportError(
                "otel_meter= needs opentelemetry-api: pip install 'stanchion[otel]'"
            ) from None
        if not hasattr(meter, "create_counter"):
            raise TypeError(
                "otel_meter must be an OpenTelemetry Meter (metrics.get_meter(...)), "
                f"not {type(meter).__name__}"
            )
        self.closed = False
        obs = Observation
        self.queued = meter.create_counter(
            "stanchion.queued",
            unit="{hold}",
            description="Holds that waited in a concurrency queue",
        )
        self.wait = meter.create_histogram(
            "stanchion.queue.wait",
            unit="s",
            description="Time spent in a concurrency queue",
        )

        def decided(_: CallbackOptions) -> Iterable[Observation]:
            if self.closed:
                return []
            return [
                obs(n, {"scope": scope, "outcome": outcome})
                for (scope, outcome), n in decision_counts()
            ]

        def storage_errors(_: CallbackOptions) -> Iterable[Observation]:
            if self.closed:
                return []
            return [
                obs(n, {"storage": s, "server": w})
                for (s, w), n in list(_storage_errors.items())
            ]

        def outages(_: CallbackOptions) -> Iterable[Observation]:
            if self.closed:
                return []
            return [
                obs(down, {"storage": s, "server": w})
                for (s, w), down in list(_outages.items())
            ]

        def cache_requests(_: CallbackOptions) -> Iterable[Observation]:
            if self.closed:
                return []
            out = []
            for name, c in cache_counts().items():
                for result in ("hit", "miss"):
                    out.append(obs(c[result], {"cache": name, "result": result}))
            return out

        def cache_stale(_: CallbackOptions) -> Iterable[Observation]:
            if self.closed:
                return []
            return [obs(c["stale"], {"cache": n}) for n, c in cache_counts().items()]

        def cache_stores(_: CallbackOptions) -> Iterable[Observation]:
            if self.closed:
                return []
            return [obs(c["stores"], {"cache": n}) for n, c in cache_counts().items()]

        def cache_evictions(_: CallbackOptions) -> Iterable[Observation]:
            if self.closed:
                return []
            out = []
            for name, c in cache_counts().items():
                out.append(obs(c["evictions"], {"cache": name, "reason": "size"}))
                out.append(obs(c["expirations"], {"cache": name, "reason": "expired"}))
            return out

        meter.create_observable_counter(
            "stanchion.decisions",
            [decided],
            unit="{request}",
            description="Requests decided by a rate limit rule, by outcome",
        )
        meter.create_observable_counter(
            "stanchion.storage.errors",
            [storage_errors],
            unit="{error}",
            description="Failed calls to a shared storage",
        )
        meter.create_observable_gauge(
            "stanchion.storage.outage",
            [outages],
            description="1 while a shared storage is unavailable",
        )
        meter.create_observable_counter(
            "stanchion.cache.requests",
            [cache_requests],
            unit="{request}",
            description="Cache lookups, by result",
        )
        meter.create_observable_counter(
            "stanchion.cache.stale",
            [cache_stale],
            unit="{response}",
            description="Stale entries served (also counted as a hit or a miss)",
        )
        meter.create_observable_counter(
            "stanchion.cache.stores",
            [cache_stores],
            unit="{entry}",
            description="Cache stores",
        )
        meter.create_observable_counter(
            "stanchion.cache.evictions",
            [cache_evictions],
            unit="{entry}",
            description="Cache entries dropped, by reason",
        )

    def queue(
        self, scope: str
    ) -> tuple[Callable[[], None], Callable[[str, float], None]]:
        add = self.queued.add
        record = self.wait.record
        attributes = {"scope": scope}
        by_result = {r: {"scope": scope, "result": r} for r in QUEUE_RESULTS}
        return (
            lambda: add(1, attributes),
            lambda r, s: record(s, by_result[r]),
        )

    def close(self) -> None:
        # The API cannot remove instruments: they go quiet instead.
        self.closed = True


_exporters: list[Any] = []


def enable(
    *,
    prometheus_registry: Any = None,
    otel_meter: Any = None,
) -> None:
    """Export the metrics to a ``prometheus_client`` registry (such as
    ``prometheus_client.REGISTRY``) and/or an OpenTelemetry meter.

    Each call adds exporters; the same registry twice is a ValueError
    (its series exist already). Every rule, built before or after,
    counts from now on."""
    if prometheus_registry is None and otel_meter is None:
        raise ValueError("give prometheus_registry=... and/or otel_meter=...")
    with _lock:
        new: list[Any] = []
        try:
            if prometheus_registry is not None:
                new.append(_Prometheus(prometheus_registry))
            if otel_meter is not None:
                new.append(_OpenTelemetry(otel_meter))
        except BaseException:
            for e in new:
                e.close()
            raise
        _exporters.extend(new)
        _refresh()


def disable() -> None:
    """Stop exporting (a Prometheus registry's series are unregistered)
    and remove every hook: rules go back to their metrics-free path."""
    with _lock:
        for e in _exporters:
            e.close()
        _exporters.clear()
        _decision_hooks.clear()
        _breach_hooks.clear()
        _hook_failures.clear()
        _refresh()


def enabled() -> bool:
    """Whether any exporter or hook is on."""
    return bool(_exporters or _decision_hooks or _breach_hooks)


# -- hooks --------------------------------------------------------------------

_decision_hooks: list[Callable[[DecisionEvent], Any]] = []
_breach_hooks: list[Callable[[DecisionEvent], Any]] = []
_hook_failures: set[int] = set()
_in_hook = threading.local()


def _add_hook(hooks: list[Callable[[DecisionEvent], Any]], func: Any, what: str) -> Any:
    if not callable(func):
        raise TypeError(f"{what} needs a callable, not {type(func).__name__}")
    if inspect.iscoroutinefunction(func):
        raise TypeError(
            f"{what} hooks are called in the request's path and must not block: "
            "give a plain function (hand the event to a queue or a task yourself)"
        )
    with _lock:
        if func not in hooks:
            hooks.append(func)
        _refresh()
    return func


def check_hooks(value: Any, what: str) -> tuple[Callable[[DecisionEvent], Any], ...]:
    """A rule's ``on_decision``/``on_breach`` setting as a tuple of
    hooks (None: none); TypeError for anything else."""
    if value is None:
        return ()
    funcs = [value] if callable(value) else value
    if isinstance(funcs, (str, bytes)) or not isinstance(funcs, Iterable):
        raise TypeError(f"{what} must be a function or a list of functions")
    out = []
    for f in funcs:
        if not callable(f):
            raise TypeError(f"{what} needs callables, not {type(f).__name__}")
        if inspect.iscoroutinefunction(f):
            raise TypeError(
                f"{what} hooks are called in the request's path and must not "
                "block: give a plain function"
            )
        out.append(f)
    return tuple(out)


def on_decision(func: Callable[[DecisionEvent], Any]) -> Callable[[DecisionEvent], Any]:
    """Call ``func(event)`` (a :class:`DecisionEvent`) for every request a
    rule decides. Usable as a decorator. A hook that raises is logged
    once (logger ``stanchion.metrics``) and the request goes on; a
    decision made inside a hook calls no hook."""
    return _add_hook(_decision_hooks, func, "on_decision")  # type: ignore[no-any-return]


def on_breach(func: Callable[[DecisionEvent], Any]) -> Callable[[DecisionEvent], Any]:
    """Like :func:`on_decision`, for the requests not allowed only
    (refused, banned, busy, forbidden, or refused in dry run)."""
    return _add_hook(_breach_hooks, func, "on_breach")  # type: ignore[no-any-return]


def remove_hook(func: Callable[[DecisionEvent], Any]) -> bool:
    """Remove a hook added by :func:`on_decision` or :func:`on_breach`;
    False when it was not there."""
    with _lock:
        found = False
        for hooks in (_decision_hooks, _breach_hooks):
            if func in hooks:
                hooks.remove(func)
                found = True
        _refresh()
    return found


def _call_hooks(
    hooks: tuple[Callable[[DecisionEvent], Any], ...], event: DecisionEvent
) -> None:
    if getattr(_in_hook, "on", False):
        return  # a decision made by a hook: no hook for it (no recursion)
    _in_hook.on = True
    try:
        for hook in hooks:
            try:
                result = hook(event)
                if inspect.isawaitable(result):
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                    raise TypeError("a hook returned an awaitable (not awaited)")
            except Exception:
                if id(hook) not in _hook_failures:
                    _hook_failures.add(id(hook))
                    log.exception(
                        "stanchion: the hook %r raised (logged once; the request "
                        "goes on)",
                        hook,
                    )
    finally:
        _in_hook.on = False


# -- rules ----------------------------------------------------------------------

_rules: weakref.WeakSet[Rule] = weakref.WeakSet()
_export_failed: set[str] = set()


def _exporter_failed(what: str) -> None:
    if what not in _export_failed:
        _export_failed.add(what)
        log.exception(
            "stanchion: exporting %s failed (logged once; requests go on)", what
        )


class _RuleMetrics:
    """One rule's counters (bound to its scope once) and hooks."""

    __slots__ = ("breach", "counters", "hooks", "scope")

    def __init__(self, rule: Rule) -> None:
        scope = self.scope = rule.scope
        self.counters = {o: _counter(scope, o) for o in OUTCOMES}
        every = [*_decision_hooks, *rule.on_decision]
        self.hooks = tuple(every)
        self.breach = tuple(dict.fromkeys([*every, *_breach_hooks, *rule.on_breach]))

    def record(
        self,
        verdict: Verdict | None,
        dry: bool,
        method: str | None,
        path: str | None,
        client: Any,
        request: Request | None,
    ) -> None:
        if dry:
            outcome = "dry_run_denied"
        elif verdict is None:
            return  # not limited (exempt, allowed address)
        elif not verdict.blocked:
            outcome = "allowed"
        elif verdict.reason == "access":
            outcome = "forbidden"
        elif verdict.reason is not None:
            outcome = "busy"
        elif verdict.decision is not None and verdict.decision.banned:
            outcome = "banned"
        else:
            outcome = "denied"
        self.counters[outcome]()
        hooks = self.hooks if outcome == "allowed" else self.breach
        if hooks:
            d = verdict.decision if verdict is not None else None
            if request is not None:
                client = request.key if request.key is not None else client
                method = request.method
                path = request.path
            retry = None
            if verdict is not None:
                retry = verdict.retry_after
                if retry is None and d is not None and not d.allowed:
                    retry = d.retry_after
            _call_hooks(
                hooks,
                DecisionEvent(
                    self.scope,
                    outcome,
                    d,
                    client,
                    method,
                    path,
                    retry,
                    verdict.blocked if verdict is not None else False,
                    request,
                ),
            )


# The decisions are counted here, in process, and read by the exporters
# when they collect: a request pays one C-level increment (``next`` of an
# itertools.count, atomic under the GIL), whatever the exporters.
_decisions: dict[tuple[str, str], itertools.count[int]] = {}


def _counter(scope: str, outcome: str) -> Callable[[], int]:
    """The increment of the (scope, outcome) count (one per pair, so
    rules sharing a scope share it; scopes are settings, never
    clients, so this stays small)."""
    c = _decisions.get((scope, outcome))
    if c is None:
        c = _decisions[(scope, outcome)] = itertools.count()
    return c.__next__


def _value(c: itertools.count[int]) -> int:
    """How many times ``c`` was advanced (``count(n)`` is its repr)."""
    return int(repr(c)[6:-1])


def decision_counts() -> list[tuple[tuple[str, str], int]]:
    """The decisions counted so far: ((scope, outcome), count) pairs,
    every outcome of each scope that decided anything (a rule built
    only to check settings adds no series)."""
    counts = [(k, _value(c)) for k, c in sorted(list(_decisions.items()))]
    active = {k[0] for k, n in counts if n}
    return [(k, n) for k, n in counts if k[0] in active]


def _fan(funcs: list[Callable[[], None]]) -> Callable[[], None]:
    if not funcs:
        return _noop
    if len(funcs) == 1:
        return funcs[0]
    each = tuple(funcs)

    def fan() -> None:
        for f in each:
            f()

    return fan


def attach(rule: Rule) -> None:
    """Called by each Rule once built: it counts from now if metrics are
    on, and whenever they are turned on later."""
    with _lock:
        _rules.add(rule)
        if enabled() or rule.on_decision or rule.on_breach:
            _instrument(rule)


def _refresh() -> None:
    """Switch every rule to the path the current settings need."""
    global _queue
    _queue = {} if _exporters else None
    on = enabled()
    for rule in list(_rules):
        _plain(rule)
        if on or rule.on_decision or rule.on_breach:
            _instrument(rule)


_METHODS = ("check_simple", "acheck_simple", "check", "acheck", "refused", "busy")


def _plain(rule: Rule) -> None:
    """Back to the rule's own methods and its C gate."""
    d = vars(rule)
    for name in _METHODS:
        d.pop(name, None)
    if "_metrics_gate" in d:
        rule.gate = d.pop("_metrics_gate")


def _instrument(rule: Rule) -> None:
    """Give ``rule`` instance methods that decide as its own do, then
    count; its C gate counts what it allows (without hooks), or is off
    (with hooks)."""
    m = _RuleMetrics(rule)
    record = m.record
    cls = type(rule)
    check_simple = cls.check_simple.__get__(rule)
    acheck_simple = cls.acheck_simple.__get__(rule)
    check = cls.check.__get__(rule)
    acheck = cls.acheck.__get__(rule)
    refused = cls.refused.__get__(rule)
    busy = cls.busy.__get__(rule)

    def check_simple_m(method: str, path: str, peer: str | None) -> Any:
        n = rule.dry_run_denials
        v = check_simple(method, path, peer)
        record(v, rule.dry_run_denials != n, method, path, peer, None)
        return v

    async def acheck_simple_m(method: str, path: str, peer: str | None) -> Any:
        n = rule.dry_run_denials
        v = await acheck_simple(method, path, peer)
        record(v, rule.dry_run_denials != n, method, path, peer, None)
        return v

    def check_m(request: Request, peer: str | None) -> Any:
        n = rule.dry_run_denials
        v = check(request, peer)
        record(v, rule.dry_run_denials != n, None, None, peer, request)
        return v

    async def acheck_m(request: Request, peer: str | None) -> Any:
        n = rule.dry_run_denials
        v = await acheck(request, peer)
        record(v, rule.dry_run_denials != n, None, None, peer, request)
        return v

    def refused_m(peer: str | None, d: Decision) -> Any:
        n = rule.dry_run_denials
        v = refused(peer, d)
        record(v, rule.dry_run_denials != n, None, None, peer, None)
        return v

    def busy_m(exc: Any, request: Request | None = None) -> Any:
        n = rule.dry_run_denials
        v = busy(exc, request)
        record(v, rule.dry_run_denials != n, None, None, exc.key, request)
        return v

    d = vars(rule)
    d.update(
        check_simple=check_simple_m,
        acheck_simple=acheck_simple_m,
        check=check_m,
        acheck=acheck_m,
        refused=refused_m,
        busy=busy_m,
    )
    if "_metrics_gate" not in d:
        d["_metrics_gate"] = rule.gate
    gate = d["_metrics_gate"]
    if gate is None or m.hooks or m.breach:
        # Hooks get the request's method and path: the gate knows only
        # the peer, so the rule decides on its full path.
        rule.gate = None
        return
    allowed = m.counters["allowed"]

    def gate_m(peer: str | None) -> Any:
        # The C gate, counting what it lets through; what it does not is
        # decided (and counted) by refused or check_simple.
        d = gate(peer)
        if d:
            allowed()
        return d

    rule.gate = gate_m  # type: ignore[assignment]


# -- limiters used directly ------------------------------------------------------


class CountedLimiter:
    """A limiter whose decisions are counted as ``scope`` (see
    :func:`counted`); every other attribute is the limiter's own."""

    __slots__ = ("_allowed", "_banned", "_denied", "limiter", "scope")

    def __init__(self, limiter: Any, scope: str) -> None:
        self.limiter = limiter
        self.scope = scope
        self._allowed = _counter(scope, "allowed")
        self._denied = _counter(scope, "denied")
        self._banned = _counter(scope, "banned")

    def _count(self, d: Decision, key: Any) -> Decision:
        if d.allowed:
            self._allowed()
            outcome = "allowed"
        elif d.banned:
            self._banned()
            outcome = "banned"
        else:
            self._denied()
            outcome = "denied"
        if _decision_hooks or (_breach_hooks and outcome != "allowed"):
            hooks = (
                tuple(_decision_hooks)
                if outcome == "allowed"
                else tuple(dict.fromkeys([*_decision_hooks, *_breach_hooks]))
            )
            _call_hooks(
                hooks,
                DecisionEvent(
                    self.scope,
                    outcome,
                    d,
                    key,
                    None,
                    None,
                    None if d.allowed else d.retry_after,
                    not d.allowed,
                    None,
                ),
            )
        return d

    def hit(self, key: str | bytes, cost: int = 1) -> Decision:
        return self._count(self.limiter.hit(key, cost), key)

    async def ahit(self, key: str | bytes, cost: int = 1) -> Decision:
        return self._count(await self.limiter.ahit(key, cost), key)

    def acquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision:
        """The limiter's ``acquire``: its outcome counted once (not each
        try while it waits)."""
        from ._limiter import RateLimitExceeded

        try:
            d = self.limiter.acquire(key, cost, timeout)
        except RateLimitExceeded as exc:
            self._count(exc.decision, key)
            raise
        return self._count(d, key)

    async def aacquire(
        self, key: str | bytes, cost: int = 1, timeout: float | None = None
    ) -> Decision:
        from ._limiter import RateLimitExceeded

        try:
            d = await self.limiter.aacquire(key, cost, timeout)
        except RateLimitExceeded as exc:
            self._count(exc.decision, key)
            raise
        return self._count(d, key)

    # Not decisions: passed through (so are the attributes below).
    def peek(self, key: str | bytes, cost: int = 1) -> Decision:
        d: Decision = self.limiter.peek(key, cost)
        return d

    async def apeek(self, key: str | bytes, cost: int = 1) -> Decision:
        d: Decision = await self.limiter.apeek(key, cost)
        return d

    def reset(self, key: str | bytes | None = None) -> None:
        self.limiter.reset(key)

    async def areset(self, key: str | bytes | None = None) -> None:
        await self.limiter.areset(key)

    @property
    def rates(self) -> Any:
        return self.limiter.rates

    @property
    def algorithm(self) -> str:
        algorithm: str = self.limiter.algorithm
        return algorithm

    def __getattr__(self, name: str) -> Any:
        return getattr(self.limiter, name)

    def __repr__(self) -> str:
        return f"counted({self.limiter!r}, scope={self.scope!r})"


def counted(limiter: Any, scope: str) -> CountedLimiter:
    """A limiter used directly (not through a rule), counted as ``scope``
    in ``stanchion_decisions_total`` (``allowed``, ``denied``,
    ``banned``) and seen by the hooks (``method`` and ``path`` None)::

        api = stanchion.metrics.counted(stanchion.Limiter("10/second"), "upstream")
        api.hit("client-42")

    ``hit``, ``ahit``, ``acquire`` and ``aacquire`` count (an acquire
    once, however long it waited); ``peek`` and ``reset`` do not. The
    limiter itself stays uncounted: only calls through this object are."""
    from ._limiter import RateLimiter

    if not isinstance(limiter, RateLimiter):
        raise TypeError(
            f"counted() needs a limiter (a stanchion.RateLimiter), not "
            f"{type(limiter).__name__}"
        )
    if not isinstance(scope, str) or not scope:
        raise ValueError(f"scope must be a non-empty str, got {scope!r}")
    return CountedLimiter(limiter, scope)


# -- concurrency queues -----------------------------------------------------------

#: scope -> (queued, wait) recorders; None when no exporter is on (the
#: queues' slow path looks at this alone).
_queue: dict[str, tuple[Callable[[], None], Callable[[str, float], None]]] | None = None


def queue_entered(name: str) -> float:
    """A hold of the queue ``name`` started waiting: its start time."""
    q = _queue
    if q is None:
        return 0.0
    rec = q.get(name)
    if rec is None:
        with _lock:
            pairs = [e.queue(name) for e in _exporters]
            incs = _fan([p[0] for p in pairs])
            waits = tuple(p[1] for p in pairs)

            def wait(result: str, seconds: float) -> None:
                for w in waits:
                    w(result, seconds)

            rec = q[name] = (incs, wait)
    try:
        rec[0]()
    except Exception:
        _exporter_failed("a queued hold")
    return time.perf_counter()


def queue_left(name: str, started: float, result: str) -> None:
    """The hold that waited since ``started`` left the queue."""
    q = _queue
    if q is None or not started:
        return
    rec = q.get(name)
    if rec is None:
        return
    try:
        rec[1](result, time.perf_counter() - started)
    except Exception:
        _exporter_failed("a queue wait")


# -- storage ------------------------------------------------------------------------

_storage_errors: dict[tuple[str, str], int] = {}
_outages: dict[tuple[str, str], int] = {}


def storage_error(storage: str, server: str) -> None:
    """Count a failed call to a shared storage (its error path only)."""
    with _lock:
        key = (storage, server)
        _storage_errors[key] = _storage_errors.get(key, 0) + 1


def storage_outage(storage: str, server: str, down: bool) -> None:
    """Record the start (``down``) or the end of a storage's outage."""
    with _lock:
        _outages[(storage, server)] = 1 if down else 0


# -- caches -------------------------------------------------------------------------

_FIELDS = ("hit", "miss", "stale", "stores", "evictions", "expirations")


class _Watched:
    __slots__ = ("__weakref__", "base", "last", "name", "ref")

    def __init__(self, obj: Any, name: str) -> None:
        self.ref = weakref.ref(obj, _Dropper(weakref.ref(self), id(obj)))
        self.name = name
        self.last = dict.fromkeys(_FIELDS, 0)
        self.base = dict.fromkeys(_FIELDS, 0)


class _Dropper:
    """Called when a watched cache is gone: its entry leaves the table
    (so caches made and dropped by the thousand leave nothing behind),
    its counts as last collected stay in its name's total."""

    __slots__ = ("key", "watched")

    def __init__(self, watched: weakref.ref[_Watched], key: int) -> None:
        self.watched = watched
        self.key = key

    def __call__(self, _: Any) -> None:
        w = self.watched()
        with _lock:
            if w is None or _watched.get(self.key) is not w:
                return
            del _watched[self.key]
            gone = _retired.setdefault(w.name, dict.fromkeys(_FIELDS, 0))
            for f in _FIELDS:
                gone[f] += w.base[f] + w.last[f]


_watched: dict[int, _Watched] = {}
_retired: dict[str, dict[str, int]] = {}


def watch(obj: Any, name: str) -> Any:
    """Export the counters of a cache as ``cache=name``: a
    :class:`stanchion.Cache`, an ``@cached`` function, a response cache
    (``stanchion.respcache.ResponseCache``, or a cache middleware).
    Caches sharing a name are summed. Read when the metrics are
    collected: lookups cost nothing more. Returns ``obj``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    target = _cache_of(obj)
    _counts(target)  # unsupported: TypeError now
    with _lock:
        _watched[id(target)] = _Watched(target, name)
    return obj


def watch_as(name: str) -> Callable[[Any], Any]:
    """:func:`watch` as a decorator, above ``@cached``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    return lambda obj: watch(obj, name)


def unwatch(obj: Any) -> bool:
    """Stop exporting a cache :func:`watch` named; False if not watched."""
    with _lock:
        return _watched.pop(id(_cache_of(obj)), None) is not None


def watch_default(obj: Any, name: str) -> None:
    """Watch ``obj`` as ``name`` unless it is watched already."""
    with _lock:
        w = _watched.get(id(obj))
        if w is None or w.ref() is not obj:
            _watched[id(obj)] = _Watched(obj, name)


def _cache_of(obj: Any) -> Any:
    inner = getattr(obj, "cache", None)
    if inner is not None and hasattr(inner, "stats") and hasattr(obj, "invalidate"):
        if hasattr(obj, "cache_info"):  # an @cached function
            return obj
        return inner  # a cache middleware: its ResponseCache
    return obj


def _counts(obj: Any) -> dict[str, int]:
    from ._core import Cache
    from .respcache import ResponseCache

    if isinstance(obj, ResponseCache):
        s = obj.stats()
        return {
            "hit": s["hits"],
            "miss": s["misses"],
            "stale": s["stale"],
            "stores": s["stores"],
            "evictions": 0,
            "expirations": 0,
        }
    if isinstance(obj, Cache):
        c = obj.stats()
        return {
            "hit": int(c["hits"] or 0),
            "miss": int(c["misses"] or 0),
            "stale": 0,
            "stores": 0,
            "evictions": int(c["evictions"] or 0),
            "expirations": int(c["expirations"] or 0),
        }
    info = getattr(obj, "cache_info", None)
    if info is not None and callable(info):
        i = info()
        inner = getattr(obj, "cache", None)
        extra = inner.stats() if isinstance(inner, Cache) else {}
        return {
            "hit": i[0],
            "miss": i[1],
            "stale": 0,
            "stores": int(getattr(obj, "_stanchion_store", _NoStores).stores),
            "evictions": int(extra.get("evictions") or 0),
            "expirations": int(extra.get("expirations") or 0),
        }
    raise TypeError(
        "watch() takes a stanchion.Cache, an @cached function or a response "
        f"cache, not {type(obj).__name__}"
    )


class _NoStores:
    stores = 0


def cache_counts() -> dict[str, dict[str, int]]:
    """Every watched name's counters now (monotonic: a cleared cache's
    counts before the clear, and a dropped cache's last ones, are kept)."""
    with _lock:
        totals: dict[str, dict[str, int]] = {n: dict(c) for n, c in _retired.items()}
        for w in list(_watched.values()):
            obj = w.ref()
            if obj is None:
                continue  # its dropper moves its counts to _retired
            try:
                now = _counts(obj)
            except Exception:
                _exporter_failed(f"cache {w.name!r}")
                now = w.last
            t = totals.setdefault(w.name, dict.fromkeys(_FIELDS, 0))
            for f in _FIELDS:
                if now[f] < w.last[f]:  # reset (cache_clear): keep the past
                    w.base[f] += w.last[f]
                w.last[f] = now[f]
                t[f] += w.base[f] + now[f]
        return totals
