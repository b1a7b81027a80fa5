"""A generated access log (combined format) with a story to find.

``python -m stanchion.report.sample access.log.gz [--seed 15]`` writes the
log shipped as ``examples/logs/access.log.gz``; the same seed gives the
same bytes. Over ``minutes`` minutes (local time, UTC+01:00):

* ``clients`` normal visitors browse: page views come at random (a
  Poisson process, each visitor its own pace, one page every 40 s to 3 min)
  and each page pulls 0 to 3 assets in the same or the next second; a few
  404s, 304s for cached assets, a few POSTs;
* a scripted burst: at minute ``minutes // 2`` a crowd of new visitors
  (4 x ``clients`` of them) each load the launch page and its assets within
  that minute, and the servers answer some of them 503;
* an abuser, ``ABUSER_IP``: from minute ``2 * minutes // 3`` on, for a
  fifth of the log, 3 to 9 requests every second, mostly probing for
  admin pages and enumerating ids, so 70 % of its answers are 4xx;
* three malformed lines (a TLS handshake on the HTTP port, nginx's "-"
  request, a line cut short).
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
from collections.abc import Iterator, Sequence
from typing import IO

__all__ = [
    "ABUSER_IP",
    "START",
    "UTC_OFFSET",
    "abuser_minutes",
    "burst_minute",
    "sample_lines",
    "write_sample",
]

#: The log's first second, epoch seconds (2026-03-14 09:00:00 +01:00).
START = 1_773_475_200
UTC_OFFSET = 3600
ABUSER_IP = "198.51.100.66"

_MONTHS = (
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
_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/133.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_3) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:135.0) Gecko/20100101 Firefox/135.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
)
_ASSETS = ("/static/app.js", "/static/style.css", "/favicon.ico", "/static/logo.svg")
_PROBES = (
    "/wp-login.php",
    "/.env",
    "/admin/config.php",
    "/phpmyadmin/index.php",
    "/.git/config",
    "/xmlrpc.php",
    "/admin",
    "/backup.zip",
)


def burst_minute(minutes: int = 60) -> int:
    """Epoch second of the burst minute's start."""
    return START + 60 * (minutes // 2)


def abuser_minutes(minutes: int = 60) -> tuple[int, int]:
    """[start, end) epoch seconds of the abuser's activity."""
    start = START + 60 * (2 * minutes // 3)
    return start, start + 60 * max(1, minutes // 5)


def _time_local(t: int) -> str:
    lt = t + UTC_OFFSET
    days, rem = divmod(lt, 86400)
    # civil from days (proleptic Gregorian), as in Howard Hinnant's algorithm
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (m <= 2)
    h, rem = divmod(rem, 3600)
    mi, s = divmod(rem, 60)
    return f"{d:02d}/{_MONTHS[m - 1]}/{y:04d}:{h:02d}:{mi:02d}:{s:02d} +0100"


def _page(rng: random.Random) -> tuple[str, str, int, int]:
    """(method, target, status, bytes) of a page view."""
    r = rng.random()
    if r < 0.25:
        return "GET", "/", 200, rng.randint(9_000, 12_000)
    if r < 0.55:
        return (
            "GET",
            f"/products/{rng.randint(1, 400)}",
            200,
            rng.randint(15_000, 40_000),
        )
    if r < 0.70:
        item = f"{rng.getrandbits(128):032x}"
        uuid = f"{item[:8]}-{item[8:12]}-{item[12:16]}-{item[16:20]}-{item[20:]}"
        return "GET", f"/api/items/{uuid}", 200, rng.randint(500, 3_000)
    if r < 0.82:
        q = rng.choice(("shoes", "red+hat", "lamp", "desk", "gift"))
        return (
            "GET",
            f"/search?q={q}&page={rng.randint(1, 3)}",
            200,
            rng.randint(8_000, 20_000),
        )
    if r < 0.90:
        return "GET", "/cart", 200, rng.randint(4_000, 6_000)
    if r < 0.95:
        return "POST", "/cart/items", 201, rng.randint(100, 300)
    if r < 0.98:
        return "POST", "/login", 302, 0
    return "GET", f"/products/{rng.randint(401, 999)}", 404, 512


def _events(
    seed: int, minutes: int, clients: int
) -> list[tuple[int, str, str, str, int, int, str, str]]:
    rng = random.Random(seed)
    end = START + 60 * minutes
    out: list[tuple[int, str, str, str, int, int, str, str]] = []

    def visit(
        ip: str, t: int, ua: str, page: tuple[str, str, int, int], referer: str
    ) -> None:
        method, target, status, size = page
        out.append((t, ip, method, target, status, size, referer, ua))
        if method != "GET" or status != 200:
            return
        for asset in rng.sample(_ASSETS, rng.randint(0, 3)):
            at = t + (rng.random() < 0.3)
            cached = rng.random() < 0.4
            out.append(
                (
                    at,
                    ip,
                    "GET",
                    asset,
                    304 if cached else 200,
                    0 if cached else rng.randint(1_000, 90_000),
                    "https://shop.example" + target,
                    ua,
                )
            )

    for i in range(clients):
        ip = f"203.0.113.{i + 1}" if i < 200 else f"2001:db8::{i:x}"
        ua = rng.choice(_AGENTS)
        pace = rng.uniform(40, 180)  # mean seconds between page views
        t = START + rng.expovariate(1 / pace)
        while t < end:
            visit(
                ip,
                int(t),
                ua,
                _page(rng),
                "-" if rng.random() < 0.3 else "https://shop.example/",
            )
            t += rng.expovariate(1 / pace)

    burst = burst_minute(minutes)
    for i in range(4 * clients):
        ip = f"100.64.{i // 250}.{i % 250 + 1}"
        t = burst + rng.randrange(60)
        ua = rng.choice(_AGENTS)
        status = 503 if rng.random() < 0.08 else 200
        out.append(
            (
                t,
                ip,
                "GET",
                "/launch",
                status,
                0 if status == 503 else 14_000,
                "https://news.example/",
                ua,
            )
        )
        if status == 200:
            for asset in rng.sample(_ASSETS, 3):
                out.append(
                    (
                        min(t + rng.randint(0, 1), burst + 59),
                        ip,
                        "GET",
                        asset,
                        200,
                        rng.randint(1_000, 90_000),
                        "https://shop.example/launch",
                        ua,
                    )
                )

    a0, a1 = abuser_minutes(minutes)
    for t in range(a0, min(a1, end)):
        for _ in range(rng.randint(3, 9)):
            r = rng.random()
            if r < 0.45:
                target, status, size = rng.choice(_PROBES), 404, 162
            elif r < 0.60:
                target, status, size = "/admin/login", 403, 153
            elif r < 0.70:
                target, status, size = f"/api/users/{rng.randint(1, 99_999)}", 404, 88
            else:
                target, status, size = (
                    f"/products/{rng.randint(1, 400)}",
                    200,
                    rng.randint(15_000, 40_000),
                )
            out.append(
                (
                    t,
                    ABUSER_IP,
                    "GET",
                    target,
                    status,
                    size,
                    "-",
                    "python-requests/2.31.0",
                )
            )
    out.sort(key=lambda e: e[0])
    return out


def sample_lines(
    seed: int = 15, *, minutes: int = 60, clients: int = 60
) -> Iterator[str]:
    """The log's lines, newline-terminated, in time order."""
    if minutes < 3 or clients < 1:
        raise ValueError("a sample needs minutes >= 3 and clients >= 1")
    events = _events(seed, minutes, clients)
    bad_at = {len(events) // 4: 0, len(events) // 2: 1, 3 * len(events) // 4: 2}
    for n, (t, ip, method, target, status, size, referer, ua) in enumerate(events):
        when = _time_local(t)
        if n in bad_at:
            yield (
                f'192.0.2.7 - - [{when}] "\\x16\\x03\\x01\\x00\\xa5\\x01\\x00" 400 157 "-" "-"\n',
                f'192.0.2.8 - - [{when}] "-" 400 0 "-" "-"\n',
                f'192.0.2.9 - - [{when}] "GET /products/12 HTTP/1.1" 200 1\n',
            )[bad_at[n]]
        yield (
            f'{ip} - - [{when}] "{method} {target} HTTP/1.1" {status} {size} '
            f'"{referer}" "{ua}"\n'
        )


def write_sample(
    out: str | IO[bytes], seed: int = 15, *, minutes: int = 60, clients: int = 60
) -> int:
    """Write the sample to a path (gzip when it ends in .gz, with no
    timestamp in the header so the bytes only depend on the seed) or to a
    binary file; returns the lines written."""
    lines = sample_lines(seed, minutes=minutes, clients=clients)
    n = 0
    if isinstance(out, str):
        if out.endswith(".gz"):
            with (
                open(out, "wb") as raw,
                gzip.GzipFile(
                    filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=9
                ) as f,
            ):
                for line in lines:
                    f.write(line.encode())
                    n += 1
            return n
        with open(out, "wb") as g:
            return write_sample(g, seed, minutes=minutes, clients=clients)
    for line in lines:
        out.write(line.encode())
        n += 1
    return n


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m stanchion.report.sample",
        description="Write the sample access log.",
    )
    p.add_argument("out", help="output file (.gz: gzip), or - for stdout")
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--minutes", type=int, default=60)
    p.add_argument("--clients", type=int, default=60)
    args = p.parse_args(argv)
    if args.out == "-":
        write_sample(
            sys.stdout.buffer, args.seed, minutes=args.minutes, clients=args.clients
        )
    else:
        n = write_sample(
            args.out, args.seed, minutes=args.minutes, clients=args.clients
        )
        print(f"{n} lines written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
