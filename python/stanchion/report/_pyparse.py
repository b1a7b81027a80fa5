"""The access-log parser in plain Python: the reference for the C parser.

``PyLogParser`` has the API and gives the same ``summary()`` as
``stanchion._core.LogParser``; the differential tests compare the two and
the benchmark runs it as the "plain Python regex parser" peer. The rules
both follow, beyond those of REPORT_SPEC (see ``LogParser``'s docstring):

* A format is a sequence of literals and fields; two fields must be
  separated by a literal. A field between two ``"`` is quoted: it runs to
  the next ``"`` not escaped by a backslash (``\\x`` skips x). Apache's
  ``%t`` is ``[`` up to the next ``]``, then ``]``. Any other field runs up
  to the first byte of the literal after it (a space when it is last);
  then the literal must follow byte for byte. Anything after the last
  element of the format is ignored. The client field must not be empty.
* The first field of a kind is the one used (client, time, request,
  status, bytes); later ones are opaque.
* Time: ``DD/Mon/YYYY:HH:MM:SS +hhmm`` (English month abbreviations, exact
  case) or ``YYYY-MM-DDTHH:MM:SS`` then ``Z`` or ``+hh:mm``; the whole
  value, nothing more. Year 1970 to 2261, a day that exists in its month,
  hour <= 23, minute <= 59, second <= 60 (a leap second counts as the next
  minute's 0), offset hours <= 23 and minutes <= 59; an instant before
  1970 in UTC is malformed.
* Status: exactly three digits. Bytes: ``-`` (0) or 1 to 18 digits;
  anything else is malformed.
* Request: ``METHOD TARGET`` or ``METHOD TARGET PROTOCOL`` separated by
  single spaces, METHOD one or more of ``A-Z``, ``_``, ``-``, TARGET and
  PROTOCOL one or more bytes other than a space.
* Client and path are cut to their first ``MAX_KEY`` bytes (the path
  after dropping the query; its template is made from the cut path), so
  the tables' memory is bounded by ``top`` times a few kB.
* Every text (client, path, method, examples) is decoded as latin-1, so
  any byte string is a key and the order of keys is the order of bytes.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["Events", "PyLogParser", "bucket", "compile_format", "template"]

Events = tuple[list[int], list[str], list[str], list[int]]

NAMED_FORMATS = {
    "common": '%h %l %u %t "%r" %>s %b',
    "combined": '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"',
    "nginx": (
        '$remote_addr - $remote_user [$time_local] "$request" $status '
        '$body_bytes_sent "$http_referer" "$http_user_agent"'
    ),
}

# Field kinds: client, time (Apache "[...]" or nginx time_local), iso
# (time_iso8601), request, status, bytes, opaque.
_APACHE_KINDS = {
    "h": "client",
    "a": "client",
    "t": "apache_time",
    "r": "request",
    "s": "status",
    "b": "bytes",
    "B": "bytes",
}
_NGINX_KINDS = {
    "remote_addr": "client",
    "time_local": "time",
    "time_iso8601": "iso",
    "request": "request",
    "status": "status",
    "body_bytes_sent": "bytes",
    "bytes_sent": "bytes",
}
_WANTED = ("client", "time", "request", "status", "bytes")

_APACHE_DIRECTIVE = re.compile(r"%([<>]*)(!?[0-9,]*)(\{[^}]*\})?([A-Za-z%])")
_NGINX_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")

_MONTH_NAMES = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)
_MONTHS = {m.encode(): i + 1 for i, m in enumerate(_MONTH_NAMES)}
_TIME_LOCAL = re.compile(
    rb"([0-9]{2})/([A-Z][a-z]{2})/([0-9]{4}):([0-9]{2}):([0-9]{2}):([0-9]{2})"
    rb" ([+-])([0-9]{2})([0-9]{2})"
)
_TIME_ISO = re.compile(
    rb"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    rb"(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))"
)
_REQUEST = re.compile(rb"([A-Z_-]+) ([^ ]+)(?: [^ ]+)?")
_STATUS = re.compile(rb"[0-9]{3}")
_BYTES = re.compile(rb"-|[0-9]{1,18}")
_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_LONG_HEX = re.compile(r"[0-9a-fA-F]{16,}")

MAX_METHODS = 16
MAX_ITEMS = 256  # literals and fields in a format
MAX_EXAMPLES = 5
EXAMPLE_BYTES = 200
# A longer line (after dropping a trailing "\r") is malformed: the C
# parser never buffers more than this of one line.
MAX_LINE = 65536
# Clients and paths are cut to this many bytes (the C parser's LP_MAX_KEY).
MAX_KEY = 2048
# Byte sums stop at the largest int64, as the C parser's do.
BYTES_MAX = 2**63 - 1


def _tokenize(log_format: str) -> list[tuple[str, str]]:
    """Split a format into ("lit", text) and ("field", kind) tokens."""
    tokens: list[tuple[str, str]] = []
    literal: list[str] = []

    def field(kind: str) -> None:
        if literal:
            tokens.append(("lit", "".join(literal)))
            literal.clear()
        elif tokens and tokens[-1][0] == "field":
            raise ValueError(
                f"log format {log_format!r}: two fields must be separated "
                "by a literal (such as a space)"
            )
        tokens.append(("field", kind))

    if "$" in log_format:
        i = 0
        while i < len(log_format):
            m = _NGINX_VARIABLE.match(log_format, i)
            if m is None:
                if log_format[i] == "$":
                    raise ValueError(
                        f"log format {log_format!r}: '$' at {i} is not "
                        "followed by a variable name"
                    )
                literal.append(log_format[i])
                i += 1
                continue
            field(_NGINX_KINDS.get(m.group(1) or m.group(2), "opaque"))
            i = m.end()
    elif "%" in log_format:
        text = log_format.replace('\\"', '"')
        i = 0
        while i < len(text):
            if text[i] != "%":
                literal.append(text[i])
                i += 1
                continue
            m = _APACHE_DIRECTIVE.match(text, i)
            if m is None:
                raise ValueError(
                    f"log format {log_format!r}: bad directive at {i} "
                    f"({text[i : i + 6]!r})"
                )
            letter = m.group(4)
            if letter == "%":
                literal.append("%")
            elif m.group(3) is not None:
                field("opaque")  # %{Referer}i, %{format}t, ...
            else:
                field(_APACHE_KINDS.get(letter, "opaque"))
            i = m.end()
    else:
        raise ValueError(
            f"unknown log format {log_format!r} (use 'common', 'combined', "
            "'nginx', an nginx log_format string with $variables or an "
            "Apache LogFormat string with %directives)"
        )
    if literal:
        tokens.append(("lit", "".join(literal)))
    return tokens


def compile_format(log_format: str) -> tuple[re.Pattern[bytes], dict[str, int]]:
    """A format -> (a regex over a line's bytes, group number of each kind).

    ``kinds`` maps "client", "time" (time_local text), "iso", "request",
    "status", "bytes" to regex groups; "apache_time" is folded into "time".
    """
    if not isinstance(log_format, str):
        raise TypeError(f"log_format must be a str, not {type(log_format).__name__}")
    named = NAMED_FORMATS.get(log_format)
    tokens = _tokenize(named if named is not None else log_format)
    # The C parser's bound (LP_MAX_ITEMS): runs of literal bytes and
    # fields, an Apache %t counting as "[", a field and "]".
    items, in_lit = 0, False
    for what, value in tokens:
        if what == "lit" and value:
            items += not in_lit
            in_lit = True
        elif value == "apache_time":
            items += 2 + (not in_lit)
            in_lit = True
        elif what != "lit":
            items += 1
            in_lit = False
    if items > MAX_ITEMS:
        raise ValueError(f"the log format has too many fields: {log_format!r}")
    parts: list[str] = []
    kinds: dict[str, int] = {}
    group = 0
    for n, (what, value) in enumerate(tokens):
        if what == "lit":
            parts.append(re.escape(value))
            continue
        prev = tokens[n - 1][1] if n > 0 else ""
        nxt = tokens[n + 1][1] if n + 1 < len(tokens) else ""
        kind = value
        if kind == "apache_time":
            body = r"\[([^\]\n]*)\]"
            kind = "time"
        elif prev.endswith('"') and nxt.startswith('"'):
            body = r'([^"\\\n]*(?:\\[^\n][^"\\\n]*)*)'
        else:
            stop = nxt[0] if nxt else " "
            body = "([^" + re.escape(stop) + r"\n]*)"
        if (kind == "time" and "iso" in kinds) or (kind == "iso" and "time" in kinds):
            kind = "opaque"
        group += 1
        if kind != "opaque" and kind not in kinds:
            kinds[kind] = group
        parts.append(body)
    if "client" not in kinds:
        raise ValueError(
            f"log format {log_format!r} has no client field (%h, $remote_addr)"
        )
    if "time" not in kinds and "iso" not in kinds:
        raise ValueError(
            f"log format {log_format!r} has no time field (%t, $time_local, "
            "$time_iso8601)"
        )
    return re.compile("".join(parts).encode("latin-1"), re.DOTALL), kinds


_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _epoch(
    y: int, mo: int, d: int, h: int, mi: int, s: int, sign: int, oh: int, om: int
) -> int | None:
    """Epoch seconds (UTC) of a local time and its offset, None if invalid."""
    if not 1970 <= y <= 2261 or not 1 <= mo <= 12:
        return None
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if not 1 <= d <= _DAYS[mo - 1] + (mo == 2 and leap):
        return None
    if h > 23 or mi > 59 or s > 60 or oh > 23 or om > 59:
        return None
    t = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s
    t -= sign * (oh * 3600 + om * 60)
    return t if t >= 0 else None


def parse_time_local(text: bytes) -> int | None:
    """``10/Oct/2000:13:55:36 -0700`` -> epoch seconds, None if malformed."""
    m = _TIME_LOCAL.fullmatch(text)
    if m is None:
        return None
    month = _MONTHS.get(m.group(2))
    if month is None:
        return None
    return _epoch(
        int(m.group(3)),
        month,
        int(m.group(1)),
        int(m.group(4)),
        int(m.group(5)),
        int(m.group(6)),
        1 if m.group(7) == b"+" else -1,
        int(m.group(8)),
        int(m.group(9)),
    )


def parse_time_iso(text: bytes) -> int | None:
    """``2000-10-10T13:55:36-07:00`` (or ``...Z``) -> epoch seconds."""
    m = _TIME_ISO.fullmatch(text)
    if m is None:
        return None
    if m.group(7):
        sign, oh, om = 1, 0, 0
    else:
        sign = 1 if m.group(8) == b"+" else -1
        oh, om = int(m.group(9)), int(m.group(10))
    return _epoch(
        int(m.group(1)),
        int(m.group(2)),
        int(m.group(3)),
        int(m.group(4)),
        int(m.group(5)),
        int(m.group(6)),
        sign,
        oh,
        om,
    )


def template(path: str) -> str:
    """``/users/42/posts/7`` -> ``/users/{id}/posts/{id}``: a segment that
    is all digits, a UUID or 16+ hex digits becomes ``{id}``."""
    segments = path.split("/")
    for i, seg in enumerate(segments):
        if seg and (
            (seg.isascii() and seg.isdigit())
            or _UUID.fullmatch(seg)
            or _LONG_HEX.fullmatch(seg)
        ):
            segments[i] = "{id}"
    return "/".join(segments)


def bucket(v: int) -> int:
    """A rate histogram's bucket: exact below 64, else the top 6 bits."""
    if v < 64:
        return v
    e = v.bit_length() - 6
    return (v >> e) << e


def percentiles(hist: dict[int, int], top: int) -> list[int]:
    """[p50, p90, p99, max] of a bucket -> count histogram."""
    n = sum(hist.values())
    out: list[int] = []
    values = sorted(hist)
    for p in (50, 90, 99):
        target = (p * n + 99) // 100
        cum = 0
        for v in values:
            cum += hist[v]
            if cum >= target:
                out.append(v)
                break
    out.append(top)
    return out


class _Rate:
    """One client's fixed-window counts for one window length."""

    __slots__ = ("count", "hist", "max", "window_id")

    def __init__(self, window_id: int) -> None:
        self.window_id = window_id
        self.count = 0
        self.hist: dict[int, int] = {}
        self.max = 0

    def add(self, window_id: int) -> None:
        if window_id > self.window_id:
            self._close()
            self.window_id = window_id
            self.count = 0
        self.count += 1

    def _close(self) -> None:
        b = bucket(self.count)
        self.hist[b] = self.hist.get(b, 0) + 1
        if self.count > self.max:
            self.max = self.count

    def summary(self) -> list[int]:
        hist = dict(self.hist)
        top = self.max
        if self.count:
            b = bucket(self.count)
            hist[b] = hist.get(b, 0) + 1
            top = max(top, self.count)
        return percentiles(hist, top)


class _Entry:
    __slots__ = (
        "bytes",
        "error",
        "first_ts",
        "last_ts",
        "n4xx",
        "n5xx",
        "rates",
        "requests",
        "seq",
    )

    def __init__(self, requests: int, error: int, seq: int) -> None:
        self.requests = requests
        self.error = error
        self.seq = seq
        self.bytes = 0
        self.n4xx = 0
        self.n5xx = 0
        self.first_ts = 0
        self.last_ts = 0
        self.rates: list[_Rate] = []


class _Table:
    """A space-saving table of at most ``top`` keys (Metwally et al.).

    The entry evicted for a new key is the one with the fewest requests,
    and of those the one updated longest ago (smallest ``seq``). While the
    table is full, a heap of (requests, seq, key) finds it; stale heap
    items (the entry changed since) are skipped, and the heap is rebuilt
    from the live entries when it grows past 4 * top.
    """

    def __init__(self, top: int) -> None:
        self.top = top
        self.entries: dict[str, _Entry] = {}
        self.heap: list[tuple[int, int, str]] | None = None
        self.evicted = False

    def touch(self, key: str, seq: int) -> tuple[_Entry, bool]:
        """The entry of key, counted one more request at seq; True if new."""
        entries = self.entries
        e = entries.get(key)
        if e is not None:
            e.requests += 1
            e.seq = seq
            if self.heap is not None:
                self._push(e, key)
            return e, False
        if len(entries) < self.top:
            e = entries[key] = _Entry(1, 0, seq)
            return e, True
        heap = self.heap
        if heap is None:
            heap = self.heap = [(v.requests, v.seq, k) for k, v in entries.items()]
            heapq.heapify(heap)
        while True:
            requests, old_seq, old_key = heapq.heappop(heap)
            old = entries.get(old_key)
            if old is not None and old.seq == old_seq and old.requests == requests:
                break
        del entries[old_key]
        self.evicted = True
        e = entries[key] = _Entry(requests + 1, requests, seq)
        self._push(e, key)
        return e, True

    def _push(self, e: _Entry, key: str) -> None:
        heap = self.heap
        assert heap is not None
        heapq.heappush(heap, (e.requests, e.seq, key))
        if len(heap) > 4 * self.top + 64:
            heap[:] = [(v.requests, v.seq, k) for k, v in self.entries.items()]
            heapq.heapify(heap)

    def ranked(self) -> list[tuple[str, _Entry]]:
        return sorted(self.entries.items(), key=lambda kv: (-kv[1].requests, kv[0]))


def _check_windows(windows: object) -> tuple[int, ...]:
    if not isinstance(windows, (tuple, list)):
        raise TypeError(
            f"windows must be a tuple of ints, not {type(windows).__name__}"
        )
    if not 1 <= len(windows) <= 4:
        raise ValueError(f"windows must hold 1 to 4 window lengths, got {len(windows)}")
    for w in windows:
        if isinstance(w, bool) or not isinstance(w, int):
            raise TypeError(f"windows must be ints (seconds), got {w!r}")
        if not 1 <= w <= 2**31 - 1:
            raise ValueError(f"windows must be positive seconds, got {w}")
    if len(set(windows)) != len(windows):
        raise ValueError(f"windows must be distinct, got {tuple(windows)}")
    return tuple(windows)


class PyLogParser:
    """Streaming access-log parser and aggregator (pure Python).

    ``PyLogParser(log_format="combined", *, top=10_000, windows=(1, 60),
    events=False)``; ``feed(bytes)`` and ``finish()`` return the parsed
    lines of the chunk as ``(ts_ns, clients, paths, statuses)`` when
    ``events`` is true, else None; ``summary()`` the aggregate (REPORT_SPEC).
    """

    def __init__(
        self,
        log_format: str = "combined",
        *,
        top: int = 10_000,
        windows: Sequence[int] = (1, 60),
        events: bool = False,
    ) -> None:
        regex, kinds = compile_format(log_format)
        if isinstance(top, bool) or not isinstance(top, int):
            raise TypeError(f"top must be an int, not {type(top).__name__}")
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        self._windows = _check_windows(windows)
        if not isinstance(events, bool):
            raise TypeError(f"events must be a bool, not {type(events).__name__}")
        self._match = regex.match
        self._g_client = kinds["client"]
        self._g_time = kinds.get("time")
        self._g_iso = kinds.get("iso")
        self._g_request = kinds.get("request")
        self._g_status = kinds.get("status")
        self._g_bytes = kinds.get("bytes")
        self._events = events
        self._tail = b""
        self._finished = False
        self._line_no = 0
        self._lines = 0
        self._parsed = 0
        self._malformed = 0
        self._examples: list[list[Any]] = []
        self._bytes = 0
        self._first_ts: int | None = None
        self._last_ts: int | None = None
        self._per_second: dict[int, list[int]] = {}
        self._status: dict[str, int] = {}
        self._methods: dict[str, int] = {}
        self._clients = _Table(top)
        self._paths = _Table(top)
        self._templates = _Table(top)

    # -- input ------------------------------------------------------------

    def feed(self, data: bytes) -> Events | None:
        if self._finished:
            raise ValueError("feed() after finish()")
        if isinstance(data, str) or not isinstance(
            data, (bytes, bytearray, memoryview)
        ):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        buf = self._tail + bytes(data)
        lines = buf.split(b"\n")
        self._tail = lines.pop()
        return self._lines_in(lines)

    def finish(self) -> Events | None:
        if self._finished:
            raise ValueError("finish() called twice")
        self._finished = True
        tail, self._tail = self._tail, b""
        return self._lines_in([tail] if tail else [])

    def _lines_in(self, lines: list[bytes]) -> Events | None:
        ev: Events | None = ([], [], [], []) if self._events else None
        for line in lines:
            self._line_no += 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                continue
            self._lines += 1
            if len(line) > MAX_LINE:
                self._bad(line)
                continue
            self._line(line, ev)
        return ev

    def _bad(self, line: bytes) -> None:
        self._malformed += 1
        if len(self._examples) < MAX_EXAMPLES:
            self._examples.append(
                [self._line_no, line[:EXAMPLE_BYTES].decode("latin-1")]
            )

    def _line(self, line: bytes, ev: Events | None) -> None:
        m = self._match(line)
        if m is None:
            return self._bad(line)
        client = m.group(self._g_client)
        if not client:
            return self._bad(line)
        if self._g_time is not None:
            sec = parse_time_local(m.group(self._g_time))
        else:
            assert self._g_iso is not None
            sec = parse_time_iso(m.group(self._g_iso))
        if sec is None:
            return self._bad(line)
        status = 0
        if self._g_status is not None:
            s = m.group(self._g_status)
            if _STATUS.fullmatch(s) is None:
                return self._bad(line)
            status = int(s)
        size = 0
        if self._g_bytes is not None:
            b = m.group(self._g_bytes)
            if _BYTES.fullmatch(b) is None:
                return self._bad(line)
            size = 0 if b == b"-" else int(b)
        method = path = ""
        if self._g_request is not None:
            r = _REQUEST.fullmatch(m.group(self._g_request))
            if r is None:
                return self._bad(line)
            method = r.group(1).decode("latin-1")
            path = r.group(2).split(b"?", 1)[0][:MAX_KEY].decode("latin-1")
        client = client[:MAX_KEY]
        self._count(client.decode("latin-1"), sec, method, path, status, size)
        if ev is not None:
            ev[0].append(sec * 1_000_000_000)
            ev[1].append(client.decode("latin-1"))
            ev[2].append(path)
            ev[3].append(status)

    def _count(
        self, client: str, sec: int, method: str, path: str, status: int, size: int
    ) -> None:
        self._parsed += 1
        seq = self._parsed
        self._bytes = min(self._bytes + size, BYTES_MAX)
        if self._first_ts is None or sec < self._first_ts:
            self._first_ts = sec
        if self._last_ts is None or sec > self._last_ts:
            self._last_ts = sec
        is4 = 400 <= status <= 499
        is5 = 500 <= status <= 599
        row = self._per_second.get(sec)
        if row is None:
            row = self._per_second[sec] = [0, 0, 0, 0]
        row[0] += 1
        row[1] = min(row[1] + size, BYTES_MAX)
        row[2] += is4
        row[3] += is5
        if self._g_status is not None:
            skey = f"{status:03d}"
            self._status[skey] = self._status.get(skey, 0) + 1
        if self._g_request is not None:
            if method not in self._methods and len(self._methods) >= MAX_METHODS:
                method = "OTHER"
            self._methods[method] = self._methods.get(method, 0) + 1

        e, new = self._clients.touch(client, seq)
        e.bytes = min(e.bytes + size, BYTES_MAX)
        e.n4xx += is4
        e.n5xx += is5
        if new:
            e.first_ts = e.last_ts = sec
            e.rates = [_Rate(sec // w) for w in self._windows]
        else:
            e.first_ts = min(e.first_ts, sec)
            e.last_ts = max(e.last_ts, sec)
        for rate, w in zip(e.rates, self._windows, strict=True):
            rate.add(sec // w)

        if self._g_request is not None:
            p, _ = self._paths.touch(path, seq)
            p.bytes = min(p.bytes + size, BYTES_MAX)
            p.n4xx += is4
            p.n5xx += is5
            self._templates.touch(template(path), seq)

    # -- output -----------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        clients = []
        for key, e in self._clients.ranked():
            clients.append(
                {
                    "key": key,
                    "requests": e.requests,
                    "bytes": e.bytes,
                    "n4xx": e.n4xx,
                    "n5xx": e.n5xx,
                    "first_ts": float(e.first_ts),
                    "last_ts": float(e.last_ts),
                    "error": e.error,
                    "rates": {
                        str(w): r.summary()
                        for w, r in zip(self._windows, e.rates, strict=True)
                    },
                }
            )
        paths = [
            {
                "key": key,
                "requests": e.requests,
                "bytes": e.bytes,
                "n4xx": e.n4xx,
                "n5xx": e.n5xx,
                "error": e.error,
            }
            for key, e in self._paths.ranked()
        ]
        templates = [
            {"key": key, "requests": e.requests, "error": e.error}
            for key, e in self._templates.ranked()
        ]
        return {
            "lines": self._lines,
            "parsed": self._parsed,
            "malformed": self._malformed,
            "malformed_examples": [list(x) for x in self._examples],
            "bytes": self._bytes,
            "first_ts": None if self._first_ts is None else float(self._first_ts),
            "last_ts": None if self._last_ts is None else float(self._last_ts),
            "per_second": [
                [sec, *row] for sec, row in sorted(self._per_second.items())
            ],
            "status": dict(self._status),
            "methods": dict(self._methods),
            "clients": clients,
            "paths": paths,
            "templates": templates,
            "distinct_exact": not (
                self._clients.evicted or self._paths.evicted or self._templates.evicted
            ),
        }
