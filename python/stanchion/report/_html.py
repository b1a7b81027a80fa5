"""The HTML report: one self-contained page (plotly.js inline, no network).

Each chart is a ``<div id="chart-NAME">`` and the figure it draws (plotly's
JSON: data and layout) sits next to it in ``<script type="application/json"
id="chart-NAME-data">``, so what the page shows can be read back by a
program; the whole model is in ``<script type="application/json"
id="report-model">``.
"""

from __future__ import annotations

import datetime
import html
import json
from typing import Any

__all__ = ["render_html", "write_html"]


def _t(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S"
    )


def _json(obj: Any) -> str:
    # Inside <script>, "</" ends the element and "<!--" then "<script"
    # keeps its end tag from ending it (the rest of the page becomes
    # script text): the log's strings carry no "<", ">" or "&" into it.
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _label(key: str) -> str:
    """A log's key as a chart label: plotly reads tags (<a href>, <span
    style>) and entities in labels, so the key's own "<", ">" and "&"
    are written as entities, which plotly shows as the characters."""
    return html.escape(key, quote=False)


MAX_SECOND_POINTS = 50_000

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.2em .7em;text-align:right}
td:first-child,th:first-child{text-align:left} tr:nth-child(even){background:#f4f4f4}
.abusive{color:#b00;font-weight:bold} .rule{color:#666;font-size:.9em}
.chart{width:100%;height:420px}
"""


def _figures(model: dict[str, Any]) -> dict[str, Any]:
    import plotly.graph_objects as go

    figs: dict[str, Any] = {}
    series = model["series"]
    sim = model.get("simulation")
    sug = model.get("suggestion")
    overlays = []
    if sim:
        overlays.append((f"refused by {sim['rates']} ({sim['key']})", sim))
    if sug:
        overlays.append((f"refused by the suggestion {sug['rates']}", sug["replay"]))

    def traffic(rows: list[list[int]], refused_field: str, title: str) -> Any:
        # plotly checks every item of a trace's arrays: the long series go
        # into the figure's JSON after it is built, unchecked (ints, str).
        stamps = [_t(r[0]) for r in rows]
        arrays: list[tuple[list[str], list[int]]] = [
            (stamps, [r[1] for r in rows]),
            (stamps, [r[3] for r in rows]),
        ]
        fig = go.Figure()
        fig.add_trace(
            go.Scatter(name="requests", mode="lines", line={"color": "#1f77b4"})
        )
        fig.add_trace(
            go.Scatter(name="4xx", mode="lines", line={"color": "#ff7f0e", "width": 1})
        )
        for (label, r), color in zip(overlays, ("#d62728", "#9467bd"), strict=False):
            pts = r[refused_field]
            arrays.append(([_t(s) for s, _ in pts], [n for _, n in pts]))
            fig.add_trace(
                go.Scatter(
                    name=label, mode="markers", marker={"color": color, "size": 5}
                )
            )
        fig.update_layout(
            title=title,
            template="plotly_white",
            xaxis_title="time (UTC)",
            yaxis_title="requests",
            legend={"orientation": "h", "y": -0.2},
        )
        spec = fig.to_plotly_json()
        for trace, (x, y) in zip(spec["data"], arrays, strict=True):
            trace["x"], trace["y"] = x, y
        return spec

    figs["traffic-minute"] = traffic(
        series["per_minute"], "refused_per_minute", "Requests per minute"
    )
    if len(series["per_second"]) <= MAX_SECOND_POINTS:
        figs["traffic-second"] = traffic(
            series["per_second"], "refused_per_second", "Requests per second"
        )
    clients = list(reversed(model["clients"]))
    figs["clients"] = go.Figure(
        go.Bar(
            x=[c["requests"] for c in clients],
            y=[_label(c["key"]) for c in clients],
            orientation="h",
            marker={
                "color": ["#d62728" if c.get("abusive") else "#1f77b4" for c in clients]
            },
            name="requests",
        )
    ).update_layout(
        title="Top clients (red: looks abusive)",
        template="plotly_white",
        yaxis={"type": "category"},
        xaxis_title="requests",
    )
    figs["status"] = go.Figure(
        go.Pie(
            labels=list(model["status"]),
            values=list(model["status"].values()),
            hole=0.4,
            sort=False,
        )
    ).update_layout(title="Status mix", template="plotly_white")
    if sug:
        rows = sug["replay"]["refused_by_key"]
        abusive = {c["key"] for c in model["abusive"]["clients"]}
        figs["suggestion"] = go.Figure(
            go.Bar(
                x=[_label(r["key"]) for r in rows],
                y=[r["refused"] for r in rows],
                marker={
                    "color": [
                        "#d62728" if r["key"] in abusive else "#1f77b4" for r in rows
                    ]
                },
                name="refused",
            )
        ).update_layout(
            title=f"Who the suggestion {sug['rates']} would refuse",
            template="plotly_white",
            xaxis={"type": "category"},
            yaxis_title="refused requests",
        )
    return figs


def _table(
    head: list[str], rows: list[list[str]], classes: list[str] | None = None
) -> str:
    out = ["<table><thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(
            f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def render_html(model: dict[str, Any]) -> str:
    import plotly.offline

    figs = _figures(model)
    tot = model["totals"]
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>stanchion report</title>",
        f"<style>{_CSS}</style>",
        f"<script>{plotly.offline.get_plotlyjs()}</script>",
        "</head><body>",
        "<h1>stanchion report</h1>",
        "<p>"
        + esc(", ".join(i["name"] for i in model["inputs"]))
        + f": {tot['lines']:,} lines, {tot['parsed']:,} parsed, {tot['malformed']:,} malformed; "
        + (
            esc(f"{_t(tot['first_ts'])} to {_t(tot['last_ts'])} UTC")
            if tot["first_ts"] is not None
            else ""
        )
        + "</p>",
    ]

    def chart(name: str) -> None:
        if name in figs:
            fig = figs[name]
            spec = _json(fig if isinstance(fig, dict) else fig.to_plotly_json())
            parts.append(f'<div class="chart" id="chart-{name}"></div>')
            parts.append(
                f'<script type="application/json" id="chart-{name}-data">{spec}</script>'
            )

    parts.append("<h2>Traffic over time</h2>")
    chart("traffic-minute")
    if "traffic-second" in figs:
        chart("traffic-second")
    else:
        parts.append(
            f'<p class="rule">The per-second chart is left out: the log has more '
            f"than {MAX_SECOND_POINTS:,} seconds with traffic (the JSON model "
            "has them all).</p>"
        )
    b = model["bursts"]
    if b["minutes"]:
        parts.append(
            _table(
                [
                    "burst from (UTC)",
                    "minutes",
                    "requests",
                    "peak minute",
                    "peak",
                    "x median",
                ],
                [
                    [
                        _t(m["start"]),
                        str(m["minutes"]),
                        f"{m['requests']:,}",
                        _t(m["peak_minute"]),
                        f"{m['peak']:,}",
                        f"{m['times_median']:.1f}" if m["times_median"] else "-",
                    ]
                    for m in b["minutes"]
                ],
            )
        )
    parts.append(f'<p class="rule">Burst rule: {esc(b["rule"])}.</p>')
    parts.append("<h2>Clients</h2>")
    chart("clients")
    parts.append(
        _table(
            [
                "client",
                "requests",
                "bytes",
                "4xx",
                "5xx",
                "1s p50/p99/max",
                "60s p99/max",
                "verdict",
            ],
            [
                [
                    c["key"],
                    f"{c['requests']:,}",
                    f"{c['bytes']:,}",
                    str(c["n4xx"]),
                    str(c["n5xx"]),
                    "/".join(
                        str(x)
                        for x in (
                            c["rates"]["1"][0],
                            c["rates"]["1"][2],
                            c["rates"]["1"][3],
                        )
                    ),
                    "/".join(
                        str(x) for x in (c["rates"]["60"][2], c["rates"]["60"][3])
                    ),
                    "; ".join(c.get("abusive", [])),
                ]
                for c in model["clients"]
            ],
            ["abusive" if c.get("abusive") else "" for c in model["clients"]],
        )
    )
    parts.append(f'<p class="rule">Abuse rule: {esc(model["abusive"]["rule"])}.</p>')
    parts.append("<h2>Paths</h2>")
    parts.append(
        _table(
            ["path", "requests", "4xx", "5xx"],
            [
                [p["key"], f"{p['requests']:,}", str(p["n4xx"]), str(p["n5xx"])]
                for p in model["paths"]
            ],
        )
    )
    parts.append(
        _table(
            ["template", "requests"],
            [[p["key"], f"{p['requests']:,}"] for p in model["templates"]],
        )
    )
    parts.append("<h2>Status</h2>")
    chart("status")
    sim = model.get("simulation")
    if sim:
        parts.append("<h2>Simulation</h2>")
        parts.append(
            f"<p>{esc(sim['rates'])} per {esc(sim['key'])} ({esc(sim['algorithm'])}): "
            f"{sim['refused']:,} of {sim['hits']:,} requests refused; {sim['bans']} bans.</p>"
        )
        parts.append(
            _table(
                [sim["key"], "refused", "of requests", "bans"],
                [
                    [r["key"], f"{r['refused']:,}", str(r["hits"]), str(r["bans"])]
                    for r in sim["refused_by_key"]
                ],
            )
        )
    sug = model.get("suggestion")
    if sug:
        parts.append("<h2>Suggested limit</h2>")
        v = sug["verdict"]
        parts.append(
            f"<p><strong>{esc(sug['rates'])}</strong> per client. {esc(sug['rule'])}.</p>"
            f"<p>Replayed: {sug['replay']['refused']:,} of {sug['replay']['hits']:,} requests refused; "
            f"abusive clients {v['abusive_refused']:,}, others {v['other_refused']:,} "
            f"over {v['other_clients_refused']} clients.</p>"
        )
        chart("suggestion")
    parts.append(
        f'<script type="application/json" id="report-model">{_json(model)}</script>'
    )
    parts.append(
        "<script>"
        'document.querySelectorAll("script[id^=chart-]").forEach(function(el){'
        "var spec=JSON.parse(el.textContent);"
        "Plotly.newPlot(el.id.slice(0,-5),spec.data,spec.layout,{responsive:true});});"
        "</script>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(model: dict[str, Any], path: str) -> None:
    text = render_html(model)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
