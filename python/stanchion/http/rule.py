"""The rule: which requests are limited, at what rate, keyed on what,
and what the client is told.

Empty identity
    A key function that returns ``None`` or ``""`` falls back to the
    client address (a missing API key is limited per address, never in
    one shared bucket). If the address is unknown too (no peer, e.g. a
    Unix socket without a trusted proxy), ``unidentified`` decides:
    ``"deny"`` (default) answers 429 without ``Retry-After``; ``"allow"``
    lets the request through unlimited; ``"share"`` puts every such
    request in one bucket named ``<unidentified>``. ``"allow"`` and
    ``"share"`` log a warning the first time they apply.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

from .. import metrics as _metrics
from .._concurrency import Concurrency, ConcurrencyLimitExceeded
from .._core import Decision, Gate, RateHeaders
from .._limiter import Limiter, RateLimiter
from .._penalty import DryRunBans, Penalty
from .access import AccessList
from .address import ClientAddress
from .headers import (
    ResponseFunc,
    Verdict,
    _HeaderParts,
    _RuleHeaders,
    problem_json,
)
from .identity import KeyFunc, _safe_identity
from .keys import MAX_ADDRESS_KEYS, _pack_address, _scope_tags
from .limiters import LimiterCache, Plans, _RateInfo
from .request import (
    HEADER_FAMILIES,
    MAX_ADDRESS,
    MAX_IDENTITY,
    RateSpec,
    Request,
    SettingError,
    log,
)


class Rule(_RuleHeaders):
    """One rate limit for HTTP requests.

    ``limit``: a rate string (``"100/minute;1000/day"``), a list of rates,
    a limiter object (``Limiter``, ``RedisLimiter``), a :class:`Plans`, or
    a function of the request returning any of these (``None``: not
    limited). ``request.key`` and ``request.client`` are set when it is
    called, so rates can depend on the key. One limiter is built per
    distinct rate and shared through ``limiters``.

    ``key``: a function of the request returning the identity to limit
    on (default: the client address). Helpers: :func:`api_key`,
    :func:`authenticated_user`.

    ``scope``: rules with the same scope and rate share buckets (a limit
    across several routes). Also names the policy in the headers.

    ``cost``: an int, or a function of the request returning one.

    ``exempt_paths`` (exact, or a prefix ending in ``*``),
    ``exempt_methods``, ``exempt_when`` (a predicate): not limited.

    ``dry_run``: decide and send headers, but never refuse: would-be
    429s, bans and busy refusals (no concurrency slot in time: the
    request is then served without one) are logged and counted in
    ``dry_run_denials``. No ban is recorded: the penalty's bans are
    only imagined, in this process (with a penalty, dry-run rules use
    limiters of their own, without it; a limiter object carrying a
    penalty is refused).

    ``headers``: which header families to send (:data:`HEADER_FAMILIES`);
    ``headers_on_allowed``: also on responses that were let through.

    ``response``: a function ``(request, decision) -> Reply`` for the
    429 body (default: :func:`problem_json`).

    ``penalty``: a :class:`stanchion.Penalty`: a client refused too often
    is banned (every request refused) for a while, longer each time; its
    refusals are answered ``ban_status`` (403, or 429) with
    ``Retry-After``. It applies to the limiters this rule builds (with
    ``limiters=``, set it on that :class:`LimiterCache`; a limiter object
    of its own carries its own).

    ``allow`` and ``deny``: addresses and CIDR blocks (IPv4, IPv6) of
    clients never limited, and of clients always refused (403), checked
    before any limit (the longest match wins; see
    :class:`stanchion.http.AccessList`).

    ``concurrency``: at most that many requests in flight (globally, or
    per client with ``concurrency_per="client"``), the next ``queue``
    ones waiting in arrival order up to ``queue_timeout`` seconds; a
    request that gets no slot in time is answered 503 with
    ``Retry-After`` (global) or 429 (per client). The adapters hold the
    slot until the response is sent. ``limit`` may be None then (no rate
    limit, only the concurrency limit). The slots live in the rule's
    ``storage`` (in process, shared memory or Redis, with leases).
    Load shedding: ``priorities=N`` lanes and ``priority``, a function of
    the request giving its lane (0, the default, is the least important);
    higher lanes are served first, ``reserve`` slots per lane are kept for
    the lanes above, and when the queue is full a request of a higher
    lane takes the place of a lower one (see :class:`stanchion.Concurrency`).

    ``on_decision`` and ``on_breach``: a function (or a list of them)
    called with a :class:`stanchion.metrics.DecisionEvent` for each
    request this rule decides, or each one it does not allow, besides
    the hooks given to :mod:`stanchion.metrics`.
    """

    def __init__(
        self,
        limit: RateSpec | Callable[[Request], Any] | None,
        *,
        key: KeyFunc | None = None,
        scope: str = "default",
        cost: int | Callable[[Request], Any] = 1,
        exempt_paths: Iterable[str] = (),
        exempt_methods: Iterable[str] = (),
        exempt_when: Callable[[Request], Any] | None = None,
        dry_run: bool = False,
        trusted_proxies: Iterable[str] | ClientAddress = (),
        forwarded_header: str = "X-Forwarded-For",
        ipv6_prefix: int = 64,
        headers: Iterable[str] = HEADER_FAMILIES,
        headers_on_allowed: bool = True,
        response: ResponseFunc | None = None,
        unidentified: str = "deny",
        limiters: LimiterCache | None = None,
        algorithm: str = "token_bucket",
        storage: Any = None,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] | None = None,
        penalty: Penalty | None = None,
        ban_status: int = 403,
        allow: Iterable[str] | str = (),
        deny: Iterable[str] | str = (),
        concurrency: int | None = None,
        queue: int = 0,
        queue_timeout: float | None = 30.0,
        concurrency_per: str = "global",
        priority: Callable[[Request], int] | None = None,
        priorities: int = 1,
        reserve: int = 0,
        on_decision: Any = None,
        on_breach: Any = None,
    ) -> None:
        try:
            #: This rule's own hooks (see stanchion.metrics.on_decision).
            self.on_decision = _metrics.check_hooks(on_decision, "on_decision")
            self.on_breach = _metrics.check_hooks(on_breach, "on_breach")
        except TypeError as exc:
            raise SettingError("on_decision/on_breach", str(exc)) from None
        if limiters is None:
            limiters = LimiterCache(
                algorithm=algorithm,
                storage=storage,
                max_keys=max_keys,
                clock=clock,
                penalty=penalty,
            )
        elif penalty is not None and limiters.penalty != penalty:
            raise SettingError(
                "penalty",
                "this rule shares its limiters (limiters=...): set the penalty "
                "on that LimiterCache, or give the rule its own limiters",
            )
        #: In dry run with a penalty, the bans it would give (logged, never
        #: recorded nor enforced): the rule's limiters then carry none.
        self._dry_bans: DryRunBans | None = None
        if dry_run is True and limiters.penalty is not None:
            self._dry_bans = DryRunBans(limiters.penalty, limiters.clock)
            limiters = limiters.for_dry_run()
        self.limiters = limiters
        if ban_status not in (403, 429) or type(ban_status) is not int:
            raise SettingError("ban_status", f"must be 403 or 429, got {ban_status!r}")
        self.ban_status = ban_status
        try:
            #: The allow and deny lists, checked before any limit.
            self.access = AccessList(allow, deny)
        except (TypeError, ValueError) as exc:
            raise SettingError("allow/deny", str(exc)) from None
        if not isinstance(scope, str) or not scope:
            raise SettingError("scope", f"must be a non-empty str, got {scope!r}")
        self.scope = scope
        self._prefix = scope + "\x1f"
        # Client address -> its bucket key, and (rules without key, limit
        # or cost functions) -> its pending decision: both depend on the
        # address alone. A socket peer and the name ClientAddress gives it
        # lead to the same entry.
        self._address_keys: dict[str, str | bytes] = {}
        self._client_plans: dict[str, _Pending] = {}

        # limit: fixed (checked now) or a function (checked per request).
        self._fixed: _RateInfo | None = None
        self._limit_func: Callable[[Request], Any] | None = None
        #: The concurrency limit's slots (None: no such limit).
        self.slots: Concurrency | None = None
        if concurrency is not None:
            if concurrency_per not in ("global", "client"):
                raise SettingError(
                    "concurrency_per",
                    f"must be 'global' or 'client', got {concurrency_per!r}",
                )
            if priority is not None and not callable(priority):
                raise SettingError(
                    "priority", "must be a function of the request giving a lane"
                )
            try:
                self.slots = Concurrency(
                    concurrency,
                    queue,
                    queue_timeout,
                    priorities=priorities,
                    reserve=reserve,
                    storage=storage if limiters is None else limiters.storage,
                    name=scope,
                )
            except (TypeError, ValueError) as exc:
                raise SettingError("concurrency", str(exc)) from None
        else:
            # A queue or lanes without the limit they belong to would be
            # silently nothing: refused, as the settings refuse QUEUE.
            for name, value, default in (
                ("queue", queue, 0),
                ("queue_timeout", queue_timeout, 30.0),
                ("concurrency_per", concurrency_per, "global"),
                ("priority", priority, None),
                ("priorities", priorities, 1),
                ("reserve", reserve, 0),
            ):
                if value is not default and value != default:
                    raise SettingError(
                        name, "applies to a concurrency limit: set concurrency"
                    )
        #: The lane of a request (0, the least important, to priorities-1).
        self.slot_priority = priority
        #: True when a slot needs no look at the request: one in-process
        #: limit for all, one lane; adapters then call
        #: ``slots.try_acquire()`` first, without a key.
        self.slots_plain = (
            type(self.slots) is Concurrency
            and concurrency_per == "global"
            and priority is None
        )
        #: Whether each client has its own ``concurrency`` slots.
        self.slots_per_client = concurrency_per == "client"
        self._warned_lane = False
        if limit is None:
            if self.slots is not None:
                pass  # only the concurrency limit
            else:
                raise SettingError("limit", "a rule needs a limit such as '100/minute'")
        elif callable(limit) and not isinstance(limit, RateLimiter):
            self._limit_func = limit
            if dry_run is True and isinstance(limit, Plans):
                for spec in limit.rates.values():
                    if isinstance(spec, RateLimiter):
                        _refuse_penalized(spec)
        else:
            self._fixed = limiters.get(limit)
            if dry_run is True:
                _refuse_penalized(self._fixed.limiter)

        if key is not None and not callable(key):
            raise SettingError("key", f"must be a function of the request, not {key!r}")
        self._key = key

        if callable(cost):
            self._cost_func: Callable[[Request], Any] | None = cost
            self._cost = 1
        else:
            self._cost_func = None
            self._cost = _check_cost(cost, "cost")
            if self._fixed is not None and self._fixed.capacities:
                cap = min(self._fixed.capacities)
                if self._cost > cap:
                    raise SettingError(
                        "cost",
                        f"cost {self._cost} is more than the limit allows at once "
                        f"({cap}); such requests could never pass",
                    )

        if isinstance(exempt_paths, str):
            exempt_paths = [exempt_paths]
        elif not isinstance(exempt_paths, Iterable):
            raise SettingError(
                "exempt_paths", f"expected a list of path strings, got {exempt_paths!r}"
            )
        exact, prefixes = set(), []
        for p in exempt_paths:
            if not isinstance(p, str) or not p:
                raise SettingError("exempt_paths", f"expected path strings, got {p!r}")
            if p.endswith("*"):
                prefixes.append(p[:-1])
            else:
                exact.add(p)
        self._exempt_exact = frozenset(exact)
        self._exempt_prefixes = tuple(prefixes)
        if isinstance(exempt_methods, str):
            exempt_methods = [exempt_methods]
        elif not isinstance(exempt_methods, Iterable):
            raise SettingError(
                "exempt_methods",
                f"expected a list of method names, got {exempt_methods!r}",
            )
        methods = set()
        for m in exempt_methods:
            if not isinstance(m, str) or not m.isalpha():
                raise SettingError(
                    "exempt_methods", f"expected method names, got {m!r}"
                )
            methods.add(m.upper())
        self._exempt_methods = frozenset(methods)
        if exempt_when is not None and not callable(exempt_when):
            raise SettingError("exempt_when", "must be a predicate of the request")
        self._exempt_when = exempt_when
        # Plain: nothing to check before the plan kept for a client.
        self._plain = not (
            self._exempt_exact
            or self._exempt_prefixes
            or self._exempt_methods
            or self._exempt_when
            or self.access
        )

        if not isinstance(dry_run, bool):
            raise SettingError("dry_run", f"must be True or False, got {dry_run!r}")
        self.dry_run = dry_run
        self.dry_run_denials = 0

        if isinstance(trusted_proxies, ClientAddress):
            self.client_address = trusted_proxies
        else:
            self.client_address = ClientAddress(
                trusted_proxies, header=forwarded_header, ipv6_prefix=ipv6_prefix
            )

        if isinstance(headers, str):
            headers = [headers]
        elif not isinstance(headers, Iterable):
            raise SettingError(
                "headers",
                f"expected a header family or a list of them ([] for none), "
                f"got {headers!r}",
            )
        fams = set()
        for h in headers:
            if not isinstance(h, str) or h.lower() not in HEADER_FAMILIES:
                raise SettingError(
                    "headers", f"unknown header family {h!r} (use {HEADER_FAMILIES})"
                )
            fams.add(h.lower())
        self._send_ietf = "ratelimit" in fams
        self._send_x = "x-ratelimit" in fams
        self._send_retry = "retry-after" in fams
        self._send_all = self._send_ietf and self._send_x
        if not isinstance(headers_on_allowed, bool):
            raise SettingError(
                "headers_on_allowed",
                f"must be True or False, got {headers_on_allowed!r}",
            )
        self.headers_on_allowed = headers_on_allowed and bool(
            self._send_ietf or self._send_x
        )

        if response is not None and not callable(response):
            raise SettingError(
                "response", "must be a function (request, decision) -> Reply"
            )
        self._response = response or problem_json

        if unidentified not in ("deny", "allow", "share"):
            raise SettingError(
                "unidentified",
                f"must be 'deny', 'allow' or 'share', got {unidentified!r}",
            )
        self.unidentified = unidentified
        self._warned = False
        self._parts_cache: dict[int, _HeaderParts] = {}
        self._fixed_parts = (
            self._parts(self._fixed) if self._fixed is not None else None
        )
        self._v6_prefix = self.client_address.ipv6_prefix
        self._tag4, self._tag6 = _scope_tags(scope, self._v6_prefix)
        self._has_funcs = bool(self._limit_func or self._cost_func or self._key)
        #: True when a decision needs only the method, path and peer: the
        #: adapters then call check_simple/acheck_simple and build no
        #: Request view at all (the common case, and the fast one).
        self.simple = not (
            self._has_funcs
            or self._exempt_when is not None
            or self.client_address.has_proxies
            or response is not None
        )
        #: True when ``simple`` and its limiter is the in-process C one,
        #: whose hit never waits: asyncio adapters call ``check_simple``
        #: then, without a coroutine.
        self.simple_in_c = (
            self.simple and self._fixed is not None and _in_c(self._fixed.limiter)
        )
        #: False for a rule with a concurrency limit alone and no allow or
        #: deny list: nothing to decide before the slot (the adapters skip
        #: deciding, and send no rate headers).
        self.decides = (
            self._fixed is not None or self._limit_func is not None or bool(self.access)
        )
        #: The adapters' fast path for a ``simple_in_c`` rule without
        #: exemptions: ``gate(peer)`` hits the limiter with the plan kept
        #: for that address, in C, and returns its Decision (allowed:
        #: send ``allowed_render``'s headers; refused: see
        #: :meth:`refused`), or None when no plan is kept yet (then
        #: :meth:`check_simple` decides, and keeps one).
        self.gate: Gate | None = None
        #: Renders the headers of an allowed response (``None``: none).
        self.allowed_render: RateHeaders | None = None
        if self.simple_in_c and self._plain and self._dry_bans is None:
            assert self._fixed is not None and self._fixed_parts is not None
            self.gate = Gate(self._fixed.limiter, self._client_plans)
            if self.headers_on_allowed:
                self.allowed_render = self._fixed_parts.render
        # Counted (and hooks called) while stanchion.metrics is on: the
        # rule then gets methods that count, and no gate; nothing is
        # looked up per request otherwise.
        _metrics.attach(self)

    # -- deciding --------------------------------------------------------------

    def exempt(self, request: Request) -> bool:
        if self._plain:
            return False
        if request.method in self._exempt_methods:
            return True
        path = request.path
        if path in self._exempt_exact:
            return True
        for p in self._exempt_prefixes:
            if path.startswith(p):
                return True
        return bool(self._exempt_when is not None and self._exempt_when(request))

    def _client(self, request: Request, peer: str | None) -> str:
        client = self.client_address(peer, request._header)
        request.client = client or None
        return client

    def _whole(self, request: Request, client: str, peer: str | None) -> str:
        """The client address for the allow and deny lists: ``client``
        (from ``_client``), or, when that names an IPv6 network, the
        address itself (a list may name one address of the network)."""
        if "/" not in client:
            return client
        return self.client_address.address(peer, request._header)

    def _finish(self, request: Request, client: str, answer: Any) -> str | bytes | None:
        """The bucket key from a key function's answer (falling back to
        the client address), or None when there is no identity at all."""
        ident: str
        if answer is None or isinstance(answer, str):
            ident = answer or ""
        elif isinstance(answer, bytes):
            try:
                ident = answer.decode("utf-8")
            except UnicodeDecodeError:
                # Hashed as they are: replacing the bad bytes would merge
                # every client whose bytes differ only there.
                request.key = ident = _safe_identity(answer)
                return self._prefix + ident
        else:
            ident = str(answer)
        if not ident:
            if not client:
                return None
            request.key = client
            key = self._address_keys.get(client)
            if key is None:
                key = self._address_key(client)
                if len(client) > MAX_ADDRESS:
                    return key  # not remembered (see MAX_ADDRESS)
                if len(self._address_keys) >= MAX_ADDRESS_KEYS:
                    self._address_keys.clear()
                self._address_keys[client] = key
            return key
        # "#" starts only hashed identities: an answer that starts with it
        # is hashed too, so no answer can name another one's hash.
        if len(ident) > MAX_IDENTITY or not ident.isascii() or ident[0] == "#":
            ident = _safe_identity(ident)
        request.key = ident
        return self._prefix + ident

    def _address_key(self, addr: str) -> str | bytes:
        """The bucket key of a client address (a socket peer, or a name
        from ``client_address``), kept short enough to be stored inline
        in the in-process table (see ``_pack_address``)."""
        key = _pack_address(addr, self._tag4, self._tag6, self._v6_prefix)
        if key is not None:
            return key
        # Not an IP address (a test client's name, say).
        if len(addr) > MAX_IDENTITY or not addr.isascii() or addr[0] == "#":
            addr = _safe_identity(addr)
        return self._prefix + addr

    def _unidentified(self, request: Request) -> Verdict | str | None:
        """For a request with no identity: its 429 (``"deny"``), None (not
        limited: ``"allow"``, or ``"deny"`` in dry run) or the key of the
        one shared bucket (``"share"``)."""
        if self.unidentified == "deny":
            if self.dry_run:
                self.dry_run_denials += 1
                return None
            return Verdict(self, None, None, True, request)
        if not self._warned:
            self._warned = True
            log.warning(
                "stanchion: a request to %s could not be identified (no client "
                "address); unidentified=%r applies",
                request.path,
                self.unidentified,
            )
        if self.unidentified == "allow":
            return None
        request.key = "<unidentified>"
        return self._prefix + "<unidentified>"

    # Every decision takes three steps, the same for check, acheck,
    # check_simple and acheck_simple: a plan (what to ask which limiter,
    # or the verdict when no limiter need be asked; it awaits nothing),
    # the one limiter call (hit, or await ahit), and the conclusion (the
    # limiter's Decision as a Verdict). The four entry points only add
    # the call, so sync and async cannot decide differently.

    def _plan(
        self, request: Request, key: str | bytes | None, spec: Any, cost: Any
    ) -> _Pending | Verdict | None:
        """The pending decision for a request whose identity (``key``),
        rate (``spec``) and cost are known (``spec`` and ``cost`` are the
        limit and cost functions' answers, ignored when there are none);
        a Verdict when it is decided already; None when the request is
        not limited."""
        if self._fixed is None and self._limit_func is None:
            return None  # a concurrency limit alone: no rate, any identity
        if key is None:
            shared = self._unidentified(request)
            if not isinstance(shared, str):
                return shared
            key = shared
        info = self._fixed
        if info is None:
            if spec is None:
                return None
            info = self.limiters.get(spec)
            if self.dry_run:
                # A limit function's limiter object: its bans would be
                # recorded, as for one given as the rule's limit.
                _refuse_penalized(info.limiter)
        if self._cost_func is None:
            cost = self._cost
        else:
            cost = _check_cost(cost, "cost function")
            if info.max_cost is not None and cost > info.max_cost:
                # More than the limit allows at once: it could never pass.
                # The limiter is not asked: no penalty counts it (nor a
                # dry run's imagined one).
                d = Decision(False, min(info.capacities or (0,)), 0)
                return self._denied(d, info, request, request.key)
        return (info, key, cost, request.key)

    def _screen(self, client: str | None, request: Request | None) -> Verdict | None:
        """The allow and deny lists' answer for a client address: a 403
        verdict (denied), or None; ``_ALLOWED`` when it is never limited."""
        found = self.access.check(client)
        if found is None:
            return None
        if found == "allow":
            allowed: Verdict = _ALLOWED
            return allowed
        return Verdict(self, None, None, True, request, reason="access")

    def _plan_client(
        self, request: Request, client: str, peer: str | None
    ) -> _Pending | Verdict | None:
        """``_plan`` for a rule without key, limit or cost functions,
        whose plan depends on the client address alone (so it is kept)."""
        if self.access:
            screened = self._screen(self._whole(request, client, peer), request)
            if screened is not None:
                return None if screened is _ALLOWED else screened
        if client:
            request.key = client
            p = self._client_plans.get(client)
            if p is not None:
                return p
        plan = self._plan(request, self._finish(request, client, None), None, 0)
        if client and isinstance(plan, tuple):
            self._keep_plan(client, plan)
        return plan

    def _plan_simple(
        self, method: str, path: str, peer: str | None
    ) -> _Pending | Verdict | None:
        """``_plan`` for a rule whose ``simple`` is True, from the method,
        path and socket peer alone."""
        if not self._plain:
            if self._exempt_simple(method, path):
                return None
            if self.access:
                screened = self._screen(peer, None)
                if screened is not None:
                    return None if screened is _ALLOWED else screened
        # The plan depends on the peer alone: kept per address.
        p = self._client_plans.get(peer)  # type: ignore[arg-type]
        if p is not None:
            return p
        if not peer:
            return self._plan(Request(method, path), None, None, 0)
        info = self._fixed
        if info is None:  # a rule with a concurrency limit alone
            return None
        p = (info, self._address_key(peer), self._cost, peer)
        self._keep_plan(peer, p)
        return p

    def _keep_plan(self, address: str, plan: _Pending) -> None:
        if len(address) > MAX_ADDRESS:
            return  # not remembered (see MAX_ADDRESS)
        plans = self._client_plans
        if len(plans) >= MAX_ADDRESS_KEYS:
            plans.clear()
        plans[address] = plan

    def _conclude(
        self, pending: _Pending, d: Decision, request: Request | None
    ) -> Verdict:
        """The verdict on a pending decision, given the limiter's answer."""
        if self._dry_bans is not None:
            return self._imagine_bans(pending, d, request)
        if d.allowed:
            return Verdict(self, d, pending[0], False, request)
        return self._denied(d, pending[0], request, pending[3])

    def _dry_hit(self, p: _Pending) -> Decision:
        """A dry run's hit, with a penalty: while the key's imagined ban
        lasts, a peek, since an enforced ban spends none of its budget
        (so the dry run's count after the ban is the enforcing one's)."""
        assert self._dry_bans is not None
        lim: RateLimiter = p[0].limiter
        if self._dry_bans.banned(p[1]):
            return lim.peek(p[1], p[2])
        return lim.hit(p[1], p[2])

    async def _adry_hit(self, p: _Pending) -> Decision:
        assert self._dry_bans is not None
        lim = p[0].limiter
        if self._dry_bans.banned(p[1]):
            return (
                lim.peek(p[1], p[2])
                if type(lim) is Limiter
                else await lim.apeek(p[1], p[2])
            )
        return (
            lim.hit(p[1], p[2]) if type(lim) is Limiter else await lim.ahit(p[1], p[2])
        )

    def _imagine_bans(
        self, pending: _Pending, d: Decision, request: Request | None
    ) -> Verdict:
        """``_conclude`` in dry run with a penalty: a key that would be
        banned is logged, and each of its requests meanwhile counted as
        a would-be refusal; nothing is refused, no ban recorded."""
        bans = self._dry_bans
        assert bans is not None
        left = bans.banned(pending[1])
        if left:
            self.dry_run_denials += 1
            log.info(
                "stanchion dry run: would have refused banned key %r (scope %r, "
                "%.3f s left)",
                pending[3],
                self.scope,
                left,
            )
            return Verdict(self, d, pending[0], False, request)
        if d.allowed:
            return Verdict(self, d, pending[0], False, request)
        ban = bans.refused(pending[1])
        if ban is None:
            return self._denied(d, pending[0], request, pending[3])
        self.dry_run_denials += 1
        log.info(
            "stanchion dry run: would have banned key %r (scope %r) for %.3f s "
            "(ban %d in a row)",
            pending[3],
            self.scope,
            *ban,
        )
        return Verdict(self, d, pending[0], False, request)

    def _exempt_simple(self, method: str, path: str) -> bool:
        return (
            method in self._exempt_methods
            or path in self._exempt_exact
            or bool(self._exempt_prefixes and path.startswith(self._exempt_prefixes))
        )

    def check_simple(self, method: str, path: str, peer: str | None) -> Verdict | None:
        """``check`` for a rule whose ``simple`` is True, without a Request."""
        # The hot path of every adapter: _plan_simple's lookup and
        # _conclude's allowed case, inline.
        p = self._client_plans.get(peer) if self._plain else None  # type: ignore[arg-type]
        if p is None:
            plan = self._plan_simple(method, path, peer)
            if not isinstance(plan, tuple):
                return plan
            p = plan
        if self._dry_bans is not None:
            return self._conclude(p, self._dry_hit(p), None)
        d = p[0].limiter.hit(p[1], p[2])
        if d.allowed:
            return Verdict(self, d, p[0], False, None)
        return self._conclude(p, d, None)

    def slot_key(
        self, peer: str | None, header: Callable[[str], str | None] | None = None
    ) -> str | None:
        """The ``slots`` key of a request: None (one global limit), or
        its client's address (after trusted proxies, read through
        ``header``)."""
        if not self.slots_per_client:
            return None
        if header is not None and self.client_address.has_proxies:
            client = self.client_address(peer, header)
        else:
            # Named as the rate limit names it: an IPv6 client by its
            # network (ipv6_prefix), an IPv4-mapped one as IPv4.
            client = self.client_address._name(peer) if peer else ""
        return client or "<unidentified>"

    def lane(self, request: Request) -> int:
        """The request's ``priority`` lane (0 without a function); a bad
        answer is the lowest lane, logged once."""
        func = self.slot_priority
        if func is None:
            return 0
        p = func(request)
        slots = self.slots
        assert slots is not None
        if isinstance(p, int) and not isinstance(p, bool):
            p = int.__index__(p)  # an IntEnum lane is its value
        if type(p) is not int or not 0 <= p < slots.priorities:
            if not self._warned_lane:
                self._warned_lane = True
                log.warning(
                    "stanchion: priority() gave %r, not a lane from 0 to %d; "
                    "lane 0 used",
                    p,
                    slots.priorities - 1,
                )
            return 0
        return p

    def busy(
        self, exc: ConcurrencyLimitExceeded, request: Request | None = None
    ) -> Verdict:
        """The refusal of a request that got no ``slots`` in time: a 503
        (a global limit) or a 429 (the client's own), with Retry-After. In
        dry run it is not refused (``blocked`` False: the adapters serve
        it without a slot), only logged and counted."""
        reason = "client busy" if self.slots_per_client else "busy"
        if self.dry_run:
            self.dry_run_denials += 1
            log.info(
                "stanchion dry run: would have answered %d (scope %r): %s",
                429 if self.slots_per_client else 503,
                self.scope,
                exc,
            )
        return Verdict(
            self,
            None,
            None,
            not self.dry_run,
            request,
            reason=reason,
            retry_after=exc.retry_after,
        )

    def refused(self, peer: str | None, d: Decision) -> Verdict:
        """The verdict on a hit :attr:`gate` refused for ``peer``."""
        p = self._client_plans.get(peer)  # type: ignore[arg-type]
        if p is None:  # dropped since (a full cache is cleared)
            assert self._fixed is not None
            key = self._address_key(peer) if peer else self._prefix
            p = (self._fixed, key, self._cost, peer)
        return self._conclude(p, d, None)

    async def acheck_simple(
        self, method: str, path: str, peer: str | None
    ) -> Verdict | None:
        """``acheck`` for a rule whose ``simple`` is True, without a Request."""
        p = self._plan_simple(method, path, peer)
        if not isinstance(p, tuple):
            return p
        if self._dry_bans is not None:
            return self._conclude(p, await self._adry_hit(p), None)
        lim = p[0].limiter
        # The C limiter itself never waits (not a subclass: its ahit may).
        d = lim.hit(p[1], p[2]) if type(lim) is Limiter else await lim.ahit(p[1], p[2])
        return self._conclude(p, d, None)

    def check(self, request: Request, peer: str | None) -> Verdict | None:
        """Decide (sync, calls ``limiter.hit``). ``None``: not limited."""
        # _plan_request and _conclude's allowed case, inline (per request).
        if self._has_funcs:
            p = self._plan_funcs(request, peer)
        elif self._plain or not self.exempt(request):
            p = self._plan_client(request, self._client(request, peer), peer)
        else:
            return None
        if not isinstance(p, tuple):
            return p
        if self._dry_bans is not None:
            return self._conclude(p, self._dry_hit(p), request)
        d = p[0].limiter.hit(p[1], p[2])
        if d.allowed:
            return Verdict(self, d, p[0], False, request)
        return self._conclude(p, d, request)

    async def acheck(self, request: Request, peer: str | None) -> Verdict | None:
        """Decide without blocking the loop (awaits ``limiter.ahit``;
        key, cost and limit functions may be coroutine functions)."""
        p = (
            await self._aplan_funcs(request, peer)
            if self._has_funcs
            else self._plan_request(request, peer)
        )
        if not isinstance(p, tuple):
            return p
        if self._dry_bans is not None:
            return self._conclude(p, await self._adry_hit(p), request)
        lim = p[0].limiter
        d = lim.hit(p[1], p[2]) if type(lim) is Limiter else await lim.ahit(p[1], p[2])
        return self._conclude(p, d, request)

    def _plan_request(self, request: Request, peer: str | None) -> _Planned:
        """``_plan`` for a rule without key, limit or cost functions."""
        if not self._plain and self.exempt(request):
            return None
        return self._plan_client(request, self._client(request, peer), peer)

    def _plan_funcs(self, request: Request, peer: str | None) -> _Planned:
        """``_plan`` for a rule with key, limit or cost functions."""
        if not self._plain and self.exempt(request):
            return None
        client = self._client(request, peer)
        if self.access:
            screened = self._screen(self._whole(request, client, peer), request)
            if screened is not None:
                return None if screened is _ALLOWED else screened
        # In this order: the rate and cost functions may read request.key.
        ident = self._key(request) if self._key is not None else None
        key = self._finish(request, client, ident)
        spec = self._limit_func(request) if self._limit_func is not None else None
        cost = self._cost_func(request) if self._cost_func is not None else 0
        return self._plan(request, key, spec, cost)

    async def _aplan_funcs(self, request: Request, peer: str | None) -> _Planned:
        """``_plan_funcs``, each function awaited if it gives an awaitable."""
        if not self._plain and self.exempt(request):
            return None
        client = self._client(request, peer)
        if self.access:
            screened = self._screen(self._whole(request, client, peer), request)
            if screened is not None:
                return None if screened is _ALLOWED else screened
        key = self._finish(request, client, await _answer(self._key, request))
        spec = await _answer(self._limit_func, request)
        cost = await _answer(self._cost_func, request)
        return self._plan(request, key, spec, cost)

    def _denied(
        self, d: Decision, info: _RateInfo, request: Request | None, key: Any
    ) -> Verdict:
        if self.dry_run:
            self.dry_run_denials += 1
            log.info(
                "stanchion dry run: would have limited key %r (scope %r)",
                key,
                self.scope,
            )
            return Verdict(self, d, info, False, request)
        return Verdict(self, d, info, True, request)


def _refuse_penalized(limiter: Any) -> None:
    """Refuse, for a rule in dry run, a limiter object that carries its
    own penalty: its bans would be recorded in its storage."""
    if getattr(limiter, "penalty", None):
        raise SettingError(
            "dry_run",
            "this limiter object carries a penalty, whose bans a dry run "
            "would record: give the penalty to the rule (penalty=...)",
        )


def _in_c(limiter: RateLimiter) -> bool:
    """Whether ``limiter`` is the in-process C limiter itself, whose ``hit``
    never waits. Exactly that class: a subclass may make ``ahit`` wait."""
    return type(limiter) is Limiter


#: What ``Rule._screen`` answers for an address on the allow list.
_ALLOWED: Any = object()  # a sentinel, typed as any Verdict

#: A pending decision: (rate info, bucket key, cost, the identity to name
#: in logs).
_Pending: TypeAlias = "tuple[_RateInfo, str | bytes, int, Any]"
#: What planning gives: a pending decision, a ready verdict, or nothing.
_Planned: TypeAlias = "_Pending | Verdict | None"


async def _answer(func: Callable[[Request], Any] | None, request: Request) -> Any:
    """A key, limit or cost function's answer, awaited if it is awaitable."""
    if func is None:
        return None
    answer = func(request)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer


# -- client address keys -------------------------------------------------------


def _check_cost(cost: Any, setting: str) -> int:
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise SettingError(setting, f"cost must be an int, not {type(cost).__name__}")
    if cost < 1:
        raise SettingError(setting, f"cost must be >= 1, got {cost}")
    return cost


def middleware_rule(
    limit: RateSpec | Callable[[Request], Any] | None,
    limiter: RateLimiter | None,
    scope: str,
    settings: dict[str, Any],
) -> Rule:
    """The Rule of a middleware that limits every request: given a rate
    (``limit=``) or a ready limiter (``limiter=``), never both."""
    if limit is not None and limiter is not None:
        raise ValueError("give either limit= or limiter=, not both")
    return Rule(limit if limiter is None else limiter, scope=scope, **settings)
