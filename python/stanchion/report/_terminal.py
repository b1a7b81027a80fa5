"""The terminal report: the model as rich tables."""

from __future__ import annotations

import datetime
import functools
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

__all__ = ["render", "utc"]


def utc(ts: float | None, seconds: bool = True) -> str:
    if ts is None:
        return "-"
    t = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def visible(s: str) -> str:
    """``s`` with its control and other unprintable characters written as
    ``\\xNN``/``\\uNNNN``: log fields are anyone's to write, and an escape
    sequence printed as it is would drive the operator's terminal."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def plain(s: str, style: str = "") -> Text:
    """Text from a log (or any outside source) for a table cell: shown as
    it is, never read as rich markup or emoji codes."""
    return Text(visible(s), style=style)


KEY_WIDTH = 48  # an IPv6 address fits


def key(s: str, style: str = "") -> Text:
    """A key for a table's first column (never wrapped, so an address
    stays whole): ``plain``, on lines of KEY_WIDTH characters when longer,
    so that a long path (anyone can send one) does not push the other
    columns out of the table."""
    v = visible(s)
    if len(v) > KEY_WIDTH:
        v = "\n".join(v[i : i + KEY_WIDTH] for i in range(0, len(v), KEY_WIDTH))
    return Text(v, style=style)


def quoted(s: str) -> str:
    """Text from a log for a markup string (printed with emoji=False)."""
    return escape(visible(s))


def size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _table(title: str, *columns: str, left: int = 1) -> Table:
    """A table whose first ``left`` columns are text, the others numbers."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, c in enumerate(columns):
        t.add_column(
            c, justify="left" if i < left else "right", overflow="fold", no_wrap=i == 0
        )
    return t


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render(
    model: dict[str, Any], console: Console | None = None, html: str | None = None
) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)
    p = functools.partial(console.print, emoji=False)
    tot = model["totals"]
    names = ", ".join(
        quoted(i["name"]) + (" (gzip)" if i["gzip"] else "") for i in model["inputs"]
    )
    p(f"[bold]stanchion report[/bold]: {names}")
    p(
        f"{tot['lines']:,} lines, {tot['parsed']:,} parsed, "
        f"{tot['malformed']:,} malformed; {size(tot['bytes'])} sent; "
        f"{tot['clients_tracked']:,} clients"
        + (
            ""
            if tot["distinct_exact"]
            else " tracked (more seen; counts are upper bounds)"
        )
    )
    if tot["first_ts"] is not None:
        p(
            f"{utc(tot['first_ts'])} to {utc(tot['last_ts'])} UTC "
            f"({(tot['duration_s'] or 0) / 60:.1f} min)"
        )
    timing = model.get("timing") or {}
    if timing.get("lines_per_s"):
        p(
            f"[dim]{model['parser']} parser: read"
            + (" and replayed" if model.get("simulation") else "")
            + f" in {timing['parse_s']:.2f} s ({timing['lines_per_s']:,.0f} lines/s)[/dim]"
        )

    if not tot["parsed"]:
        p(
            f"No line parsed with the format {quoted(repr(model['format']))}"
            + ("; is it the right --format?" if tot["malformed"] else ".")
        )
        _malformed(console, model)
        return

    # Peaks and bursts.
    rates = model["site_rates"]
    t = _table("Site traffic", "", "p50", "p90", "p99", "max")
    for name, label in (
        ("per_second", "requests per second"),
        ("per_minute", "requests per minute"),
    ):
        r = rates[name]
        t.add_row(label, str(r["p50"]), str(r["p90"]), str(r["p99"]), str(r["max"]))
    p(t)
    t = _table("Peaks", "busiest seconds", "requests", "busiest minutes", "requests")
    secs, mins = model["peaks"]["seconds"], model["peaks"]["minutes"]
    for i in range(max(len(secs), len(mins))):
        s = secs[i] if i < len(secs) else None
        m = mins[i] if i < len(mins) else None
        t.add_row(
            utc(s["start"]) if s else "",
            str(s["requests"]) if s else "",
            utc(m["start"], False) if m else "",
            str(m["requests"]) if m else "",
        )
    p(t)
    bursts = model["bursts"]
    if bursts["minutes"]:
        t = _table(
            "Bursts",
            "from (UTC)",
            "minutes",
            "requests",
            "peak minute",
            "peak",
            "x median",
        )
        for b in bursts["minutes"]:
            x = b["times_median"]
            t.add_row(
                utc(b["start"], False),
                str(b["minutes"]),
                f"{b['requests']:,}",
                utc(b["peak_minute"], False)[11:],
                f"{b['peak']:,}",
                f"{x:.1f}" if x else "-",
            )
        p(t)
    else:
        p("No burst minute.")
    p(f"[dim]Burst rule: {bursts['rule']}.[/dim]")

    # Clients.
    sim = model.get("simulation")
    refused = {}
    if sim and sim["key"] == "ip":
        refused = {r["key"]: r["refused"] for r in sim["refused_by_key"]}
    sug = model.get("suggestion")
    sug_refused = (
        {r["key"]: r["refused"] for r in sug["replay"]["refused_by_key"]} if sug else {}
    )
    cols = [
        "client",
        "requests",
        "share",
        "bytes",
        "4xx",
        "5xx",
        "1s p50/p99/max",
        "60s p99/max",
    ]
    if refused or sim:
        cols.append("sim." if sim and sim["key"] == "ip" else "")
    if sug:
        cols.append("sugg.")
    t = _table("Top clients", *cols)
    parsed = tot["parsed"]
    for c in model["clients"]:
        r1, r60 = c["rates"]["1"], c["rates"]["60"]
        row: list[Text | str] = [
            Text.assemble(key(c["key"], "bold red"), " !")
            if c.get("abusive")
            else key(c["key"]),
            f"{c['requests']:,}" + (f" (+-{c['error']})" if c["error"] else ""),
            _pct(c["requests"], parsed),
            size(c["bytes"]),
            str(c["n4xx"]),
            str(c["n5xx"]),
            f"{r1[0]}/{r1[2]}/{r1[3]}",
            f"{r60[2]}/{r60[3]}",
        ]
        if refused or sim:
            row.append(
                str(refused.get(c["key"], 0)) if sim and sim["key"] == "ip" else ""
            )
        if sug:
            row.append(str(sug_refused.get(c["key"], 0)))
        t.add_row(*row)
    p(t)
    notes = []
    if any(c.get("abusive") for c in model["clients"]):
        notes.append("!: looks abusive (see below)")
    if sim and sim["key"] == "ip":
        notes.append("sim.: refused by the simulation")
    if sug:
        notes.append("sugg.: refused by the suggestion")
    if notes:
        p("[dim]" + "; ".join(notes) + "[/dim]")

    ab = model["abusive"]
    if ab["clients"]:
        t = _table(
            "Clients that look abusive",
            "client",
            "requests",
            "max 1s",
            "max 60s",
            "4xx",
            "why",
        )
        t.columns[-1].justify = "left"
        for a in ab["clients"]:
            t.add_row(
                key(a["key"]),
                f"{a['requests']:,}",
                str(a["max_1s"]),
                str(a["max_60s"]),
                f"{a['share_4xx']:.0%}",
                "; ".join(a["reasons"]),
            )
        p(t)
    else:
        p("No client looks abusive.")
    p(f"[dim]Abuse rule: {ab['rule']}.[/dim]")

    t = _table("Top paths", "path", "requests", "bytes", "4xx", "5xx")
    for x in model["paths"]:
        t.add_row(
            key(x["key"]),
            f"{x['requests']:,}",
            size(x["bytes"]),
            str(x["n4xx"]),
            str(x["n5xx"]),
        )
    p(t)
    t = _table("Top path templates", "template", "requests")
    for x in model["templates"]:
        t.add_row(key(x["key"]), f"{x['requests']:,}")
    p(t)
    t = _table("Status", "status", "requests", "share")
    for code, n in model["status"].items():
        t.add_row(code, f"{n:,}", _pct(n, parsed))
    p(t)
    _malformed(console, model)

    if sim:
        _render_replay(console, "Simulation", sim)
    if sug:
        p(f'[bold]Suggested limit per client: "{sug["rates"]}"[/bold]')
        p(f"[dim]{sug['rule']}.[/dim]")
        _render_replay(
            console, "Replay of the suggestion", sug["replay"], sug.get("verdict")
        )
    if html:
        p(f"HTML report written to {quoted(html)}")


def _malformed(console: Console, model: dict[str, Any]) -> None:
    if model["malformed_examples"]:
        t = _table(
            f"Malformed lines ({model['totals']['malformed']:,}); the first ones",
            "where",
            "line",
            left=2,
        )
        for m in model["malformed_examples"]:
            t.add_row(plain(f"{m['input']}:{m['line']}"), plain(m["text"]))
        console.print(t)


def _render_replay(
    console: Console,
    title: str,
    r: dict[str, Any],
    verdict: dict[str, Any] | None = None,
) -> None:
    p = functools.partial(console.print, emoji=False)
    pen = ""
    if r["penalty"]:
        q = r["penalty"]
        pen = f", penalty after={q['after']} within={q['within']:g}s ban={q['ban']:g}s"
    p(
        f'[bold]{title}[/bold]: "{r["rates"]}" per {r["key"]}, {r["algorithm"]}{pen}: '
        f"{r['refused']:,} of {r['hits']:,} requests refused ({_pct(r['refused'], r['hits'])}), "
        f"{_n(r['keys_refused'], 'key')} refused at least once"
    )
    if r.get("beyond_clock"):
        p(
            f"  [dim]{_n(r['beyond_clock'], 'line')} dated from 2116 on not "
            "replayed (past the limiter's clock)[/dim]"
        )
    verdict = verdict or r.get("verdict")
    if verdict:
        p(
            f"  abusive clients: {verdict['abusive_refused']:,} refused "
            f"({', '.join(map(quoted, verdict['abusive_clients_refused'])) or 'none'}); "
            "other clients: "
            + (
                f"{_n(verdict['other_refused'], 'request')} of "
                f"{_n(verdict['other_clients_refused'], 'client')} refused"
                if verdict["other_refused"]
                else "none refused"
            )
        )
    if r["refused_by_key"]:
        t = _table(f"{title}: most refused", r["key"], "refused", "of requests", "bans")
        for row in r["refused_by_key"]:
            t.add_row(
                key(row["key"]),
                f"{row['refused']:,}",
                f"{row['hits']:,}" if row["hits"] is not None else "-",
                str(row["bans"]),
            )
        p(t)
        per_min = sorted(r["refused_per_minute"], key=lambda x: (-x[1], x[0]))[:5]
        p(
            "  most refused minutes: "
            + ", ".join(f"{utc(m, False)} ({n:,})" for m, n in per_min)
        )
    if r["penalty"]:
        if r["banned_keys"]:
            p(
                f"  {_n(r['bans'], 'ban')}, {_n(len(r['banned_keys']), 'key')} banned: "
                + ", ".join(
                    f"{quoted(b['key'])} ({b['bans']}x from {utc(b['first_ban_ts'])})"
                    for b in r["banned_keys"][:10]
                )
            )
        else:
            p("  no key would have been banned")
