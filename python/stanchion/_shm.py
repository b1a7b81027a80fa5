"""Rate limits shared by the processes of one host, in shared memory.

``SharedMemoryStorage("myapp")`` names a family of POSIX shared-memory
segments, one per policy (algorithm and compiled rates):
``/dev/shm/stanchion.myapp@<digest of the policy>`` on Linux, so the
rules of one app (a default limit, per-view limits) each get their own
table under one storage name. The first limiter of a policy creates its
segment with its ``max_keys``; every process that makes a limiter with
the same rates then shares the limits (gunicorn or uvicorn workers,
forked or started separately). Opening it with another ``max_keys``, or
from a stanchion with another segment layout, raises ValueError naming
both.

Lifetime: the segment stays until ``unlink()`` (or a reboot, which
empties /dev/shm); restarting the server keeps the limits. A process
killed at any point, even while it holds one of the segment's locks,
never blocks the others. A process *stopped* while it holds one (SIGSTOP,
a debugger; a lock is held for well under a microsecond per decision)
does: the processes needing that bucket wait, spinning with the GIL held
(their other threads and Python signal handlers wait too), until it
continues or dies. All processes must share one pid namespace.

With ``penalty=`` (a ``stanchion.Penalty``), bans live in the segment
too, next to each key's rate state: every process sees them, and the
penalty is one of the segment's settings (it has its own segment). The
segment stores hashes of keys, not keys: ``bans()`` lists each banned
key's time left and ban count with ``key=None``; ``get_ban(key)`` and
``lift(key)`` take the key.

The pauses of the providers an app calls (``stanchion._pauses``) live
in one more segment, ``stanchion.myapp@pauses``: ``segments()`` lists it
and ``unlink()`` removes it with the others.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence

from . import _core
from ._limiter import BanConveniences, InstantConveniences, _check_algorithm
from ._penalty import Penalty, check_penalty, log_ban
from ._rates import Rate, normalize_rates
from ._registry import track

__all__ = ["SharedMemoryLimiter", "SharedMemoryStorage"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# The segment of a name: a prefix keeps stanchion's apart from others'.
_PREFIX = "/stanchion."
_SHM_DIR = "/dev/shm"


class SharedMemoryStorage:
    """Limits shared by the processes of one host: pass it as
    ``Limiter(rates, storage=SharedMemoryStorage("myapp"))``.

    ``name``: letters, digits, ``.``, ``_`` and ``-`` (at most 200), the
    same in every process that shares the limits. ``max_keys``: clients
    tracked at once; the segment is sized for it when created (with a
    quarter more slots, in buckets of 8; a client may live in either of
    two buckets), and a new client whose two buckets are full replaces
    the one of those 16 closest to being back to full.
    """

    def __init__(self, name: str, *, max_keys: int = 100_000) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not _NAME.fullmatch(name):
            raise ValueError(
                "name must be 1 to 200 letters, digits, '.', '_' or '-' "
                f"(not starting with '.', '_' or '-'), got {name!r}"
            )
        if isinstance(max_keys, bool) or not isinstance(max_keys, int):
            raise TypeError(f"max_keys must be an int, not {type(max_keys).__name__}")
        if not 1 <= max_keys <= 1 << 30:
            raise ValueError(
                f"max_keys must be between 1 and {1 << 30}, got {max_keys}"
            )
        self.name = name
        self.max_keys = max_keys

    def segment(self, template: _core.Limiter, penalty: Penalty | None = None) -> str:
        """The shm_open name of the segment for the policy of `template`
        (its algorithm and compiled rates, and the penalty when there is
        one; ``@`` is not in any name)."""
        settings: tuple[object, ...] = (template.algorithm, template.limits)
        if penalty is not None:
            settings += (penalty.compiled(),)
        policy = repr(settings).encode()
        return f"{_PREFIX}{self.name}@{hashlib.sha256(policy).hexdigest()[:20]}"

    def __repr__(self) -> str:
        return f"SharedMemoryStorage({self.name!r}, max_keys={self.max_keys})"

    def make_limiter(
        self,
        rates: list[Rate],
        *,
        algorithm: str,
        burst: int | list[int | None] | None,
        on_error: str = "allow",
        clock: Callable[[], float] | None = None,
        penalty: Penalty | None = None,
    ) -> SharedMemoryLimiter:
        """Called by ``stanchion.Limiter(..., storage=self)``. ``on_error``
        is accepted for every storage's sake: a decision in shared memory
        cannot fail. ``clock`` (tests): as ``Limiter``'s; every process
        sharing the segment must then use the same clock."""
        return SharedMemoryLimiter(
            self, rates, algorithm=algorithm, burst=burst, clock=clock, penalty=penalty
        )

    def segments(self) -> list[str]:
        """The shm_open names of this storage's segments (Linux lists them
        in /dev/shm)."""
        start = f"{_PREFIX[1:]}{self.name}@"
        try:
            names = os.listdir(_SHM_DIR)
        except FileNotFoundError:
            return []
        return sorted("/" + n for n in names if n.startswith(start))

    def unlink(self, missing_ok: bool = False) -> None:
        """Remove the names of this storage's segments: processes that use
        them keep their limits, new limiters create fresh segments.
        FileNotFoundError when there are none, unless `missing_ok`."""
        segments = self.segments()
        if not segments and not missing_ok:
            raise FileNotFoundError(f"no shared memory segments for {self!r}")
        for segment in segments:
            try:
                _core.shm_unlink(segment)
            except FileNotFoundError:
                pass


class SharedMemoryLimiter(
    BanConveniences, InstantConveniences, _core.SharedMemoryLimiter
):
    """A limiter in a :class:`SharedMemoryStorage`: the in-process
    ``Limiter``'s decisions, field for field, with the state shared by
    every process. ``hit``, ``peek``, ``reset`` and ``stats`` are C
    methods; this class adds ``acquire`` and the asyncio twins."""

    __slots__ = ("__weakref__", "_rates", "penalty", "storage")

    def __init__(
        self,
        storage: SharedMemoryStorage,
        rates: str | Rate | Sequence[str | Rate],
        *,
        algorithm: str = "token_bucket",
        burst: int | list[int | None] | None = None,
        clock: Callable[[], float] | None = None,
        penalty: Penalty | None = None,
    ) -> None:
        check_penalty(penalty)
        if not isinstance(storage, SharedMemoryStorage):
            raise TypeError(
                f"storage must be a SharedMemoryStorage, not {type(storage).__name__}"
            )
        parsed = normalize_rates(rates)
        _check_algorithm(algorithm)
        if burst is not None and algorithm != "token_bucket":
            raise ValueError("burst applies to algorithm='token_bucket' only")
        # The in-process limiter checks and compiles the rates; the
        # segment is created with (or checked against) its compiled form.
        template = _core.Limiter(
            parsed,
            algorithm,
            burst,
            storage.max_keys,
            None,
            None if penalty is None else penalty.compiled(),
        )
        super().__init__(
            storage.segment(template, penalty),
            template,
            clock,
            None if penalty is None else log_ban,
        )
        self._rates = tuple(parsed)
        self.penalty = penalty
        self.storage = storage
        # stanchion.testing.reset_all() empties its policy's shared state;
        # the fake clock leaves it alone (other processes share the time).
        track(self)

    @property
    def rates(self) -> tuple[Rate, ...]:
        return self._rates

    def __repr__(self) -> str:
        rates = ";".join(str(r) for r in self._rates)
        return (
            f"SharedMemoryLimiter({rates!r}, algorithm={self.algorithm!r}, "
            f"storage={self.storage!r})"
        )
