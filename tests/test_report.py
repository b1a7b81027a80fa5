"""``stanchion report``: the command on the shipped sample log, its HTML
page read back, JSON, inputs (.gz, stdin), the replay checked against
counts worked out independently, the suggestion, and bad arguments."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

import pytest

import stanchion._core
from stanchion.__main__ import main
from stanchion.report import sample
from stanchion.report._cli import build_report
from stanchion.report._simulate import parse_penalty

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "logs" / "access.log.gz"
ENGINES = ["python"] + (["c"] if hasattr(stanchion._core, "LogParser") else [])


def run_cli(
    *args: str, stdin: bytes | None = None, blocked: Sequence[str] = ()
) -> subprocess.CompletedProcess[bytes]:
    """``stanchion report ARGS`` in a child Python, where the modules
    ``blocked`` cannot be imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "120"}
    script = (
        f"import sys\nsys.modules.update(dict.fromkeys({list(blocked)!r}))\n"
        "from stanchion.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, "report", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )


def utc_minute(ts: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M"
    )


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """One run of the documented command on the shipped sample."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    proc = run_cli(
        str(SAMPLE),
        "--simulate",
        "10/second;100/minute",
        "--penalty",
        "after=5,within=60,ban=300",
        "--suggest",
        "--html",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode(), out.read_text(encoding="utf-8")


def test_shipped_sample_is_the_generators_output():
    assert SAMPLE.stat().st_size < 1_000_000
    with gzip.open(SAMPLE, "rt") as f:
        shipped = f.read()
    assert shipped == "".join(sample.sample_lines(15))
    assert "".join(sample.sample_lines(16)) != shipped


def test_terminal_report_finds_the_burst_and_the_abuser(sample_run):
    text, _ = sample_run
    burst = utc_minute(sample.burst_minute())
    # The busiest minute and the first burst are the scripted minute.
    peaks = text[text.index("busiest minutes") :]
    assert peaks.splitlines()[2].split()[3:5] == burst.split()
    bursts = text[text.index("Bursts") :]
    assert bursts.splitlines()[4].split()[:2] == burst.split()
    # The abuser, and only it, is flagged, with the reasons.
    flagged = text[text.index("Clients that look abusive") :].splitlines()
    rows = [ln for ln in flagged[4:] if ln.strip() and not ln.startswith("Abuse rule")]
    assert rows[0].split()[0] == sample.ABUSER_IP
    assert "4xx of" in rows[0] and "max 60-s rate" in rows[0]
    assert not any(ln.split()[0].startswith("203.0.113.") for ln in rows[1:3])
    assert "Abuse rule:" in text and "Burst rule:" in text
    # The malformed lines with where they are.
    assert "3 malformed" in text
    assert f"{SAMPLE}:" in text
    # The simulation bans the abuser; the suggestion refuses it.
    assert f"{sample.ABUSER_IP} (" in text[text.index("bans, 1 key banned") :]
    assert 'Suggested limit per client: "' in text


class _Checker(HTMLParser):
    VOID = {"meta", "br", "img", "input", "link", "hr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.scripts: dict[str, str] = {}
        self.divs: set[str] = set()
        self.external: list[str] = []
        self._script_id: str | None = None
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for name in ("src", "href"):
            if a.get(name):
                self.external.append(a[name])
        if tag == "div" and a.get("id"):
            self.divs.add(a["id"])
        if tag == "script":
            self._script_id = a.get("id") or ""
            self._buf = []
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag not in self.VOID:
            self.errors.append(f"self-closed <{tag}/>")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag == "script" and self._script_id:
            self.scripts[self._script_id] = "".join(self._buf)
        if tag == "script":
            self._script_id = None

    def handle_data(self, data):
        if self._script_id is not None:
            self._buf.append(data)


def test_html_is_well_formed_and_carries_the_chart_data(sample_run):
    _, page = sample_run
    assert page.startswith("<!DOCTYPE html>")
    c = _Checker()
    c.feed(page)
    c.close()
    assert c.errors == [] and c.stack == []
    assert c.external == []  # self-contained: nothing fetched
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js inline
    model = json.loads(c.scripts["report-model"])
    charts = {
        k[: -len("-data")]: json.loads(v)
        for k, v in c.scripts.items()
        if k.endswith("-data")
    }
    assert {
        "chart-traffic-minute",
        "chart-traffic-second",
        "chart-clients",
        "chart-status",
        "chart-suggestion",
    } <= set(charts)
    assert set(charts) <= c.divs  # each chart has its div

    import datetime

    def stamp(ts):
        return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S"
        )

    for name, field, refused_field in (
        ("chart-traffic-minute", "per_minute", "refused_per_minute"),
        ("chart-traffic-second", "per_second", "refused_per_second"),
    ):
        traces = {t["name"]: t for t in charts[name]["data"]}
        rows = model["series"][field]
        assert traces["requests"]["x"] == [stamp(r[0]) for r in rows]
        assert traces["requests"]["y"] == [r[1] for r in rows]
        # The refused overlays: the simulation's and the suggestion's.
        sim = model["simulation"]
        overlay = next(
            t for n, t in traces.items() if n.startswith("refused by 10/second")
        )
        assert overlay["x"] == [stamp(s) for s, _ in sim[refused_field]]
        assert overlay["y"] == [n for _, n in sim[refused_field]]
        assert sum(overlay["y"]) == sim["refused"] > 0
        sug = next(
            t for n, t in traces.items() if n.startswith("refused by the suggestion")
        )
        assert sum(sug["y"]) == model["suggestion"]["replay"]["refused"] > 0
    # The per-minute series adds up to the per-second one and to the lines.
    assert sum(r[1] for r in model["series"]["per_minute"]) == model["totals"]["parsed"]
    peak = max(model["series"]["per_minute"], key=lambda r: r[1])
    assert peak[0] == sample.burst_minute()
    clients = charts["chart-clients"]["data"][0]
    assert clients["y"][-1] == sample.ABUSER_IP  # the top bar
    status = charts["chart-status"]["data"][0]
    assert dict(zip(status["labels"], status["values"], strict=True)) == model["status"]
    suggestion = charts["chart-suggestion"]["data"][0]
    assert suggestion["x"][0] == sample.ABUSER_IP


@pytest.mark.parametrize("engine", ENGINES)
def test_json_round_trip_and_same_model_as_the_api(engine):
    proc = run_cli(str(SAMPLE), "--json", "--suggest", "--engine", engine, "--top", "5")
    assert proc.returncode == 0, proc.stderr.decode()
    model = json.loads(proc.stdout)
    assert json.loads(json.dumps(model)) == model
    direct = build_report([str(SAMPLE)], top=5, suggest=True, engine=engine)
    model.pop("timing")
    direct.pop("timing")
    assert model == json.loads(json.dumps(direct))
    assert model["parser"] == engine
    if engine != "python":  # the C parser's report is the reference's
        ref = build_report([str(SAMPLE)], top=5, suggest=True, engine="python")
        ref.pop("timing")
        ref["parser"] = engine
        assert model == json.loads(json.dumps(ref))
    assert len(model["clients"]) == 5
    assert [a["key"] for a in model["abusive"]["clients"]] == [sample.ABUSER_IP]
    assert model["bursts"]["minutes"][0]["peak_minute"] == sample.burst_minute()


def test_stdin_and_gzip_inputs_agree(tmp_path):
    raw = gzip.decompress(SAMPLE.read_bytes())
    plain = tmp_path / "access.log"
    plain.write_bytes(raw)
    disguised = tmp_path / "access.txt"  # gzip told by its bytes, not its name
    disguised.write_bytes(SAMPLE.read_bytes())

    def totals(*args, stdin=None):
        proc = run_cli(*args, "--json", "--suggest", stdin=stdin)
        assert proc.returncode == 0, proc.stderr.decode()
        m = json.loads(proc.stdout)
        return m["totals"], m["status"], m["suggestion"]["rates"], m["inputs"]

    ref = totals(str(plain))
    assert ref[3][0]["gzip"] is False
    for args, stdin in (
        ((str(disguised),), None),
        (("-",), raw),
        (("-",), SAMPLE.read_bytes()),  # gzip on stdin
    ):
        got = totals(*args, stdin=stdin)
        assert got[:3] == ref[:3]
    assert totals(str(disguised))[3][0]["gzip"] is True
    # Two inputs: the lines of both, a missing final newline not joining them.
    first = tmp_path / "a.log"
    first.write_bytes(raw[: raw.index(b"\n", 1000)])  # no final newline
    second = tmp_path / "b.log"
    second.write_bytes(raw[raw.index(b"\n", 1000) + 1 :])
    both = totals(str(first), str(second))
    assert both[0] == ref[0]


# -- the replay against counts worked out by hand -----------------------------------


def log(rows):
    """rows: (ip, second offset, path, status) -> combined lines."""
    out = []
    for ip, sec, path, status in rows:
        m, s = divmod(sec, 60)
        out.append(
            f'{ip} - - [01/Feb/2025:10:{m:02d}:{s:02d} +0000] "GET {path} HTTP/1.1" '
            f'{status} 10 "-" "t"\n'
        )
    return "".join(out).encode()


def test_simulate_fixed_window_matches_an_independent_count(tmp_path):
    import random

    rng = random.Random(3)
    rows = sorted(
        (
            (rng.choice("ab"), rng.randrange(0, 150), rng.choice(["/x", "/y"]), 200)
            for _ in range(1200)
        ),
        key=lambda r: r[1],
    )
    path = tmp_path / "t.log"
    path.write_bytes(log(rows))
    for key, keyf in (
        ("ip", lambda r: r[0]),
        ("path", lambda r: r[2]),
        ("ip+path", lambda r: f"{r[0]} {r[2]}"),
    ):
        m = build_report(
            [str(path)],
            simulate="3/second;40/minute",
            key=key,
            algorithm="fixed_window",
            top=50,
        )
        sim = m["simulation"]
        # Fixed windows: a hit passes when its second and its minute both
        # have room; a refused hit consumes nothing.
        per_s: Counter = Counter()
        per_m: Counter = Counter()
        refused: Counter = Counter()
        per_sec_refused: Counter = Counter()
        base = 1738404000  # 2025-02-01 10:00:00 UTC
        for r in rows:
            k = keyf(r)
            if per_s[k, r[1]] < 3 and per_m[k, r[1] // 60] < 40:
                per_s[k, r[1]] += 1
                per_m[k, r[1] // 60] += 1
            else:
                refused[k] += 1
                per_sec_refused[base + r[1]] += 1
        assert sim["hits"] == len(rows)
        assert sim["refused"] == sum(refused.values()) > 0
        assert {x["key"]: x["refused"] for x in sim["refused_by_key"]} == dict(refused)
        assert sim["refused_per_second"] == sorted(
            [s, n] for s, n in per_sec_refused.items()
        )
        per_min: Counter = Counter()
        for s, n in per_sec_refused.items():
            per_min[s - s % 60] += n
        assert sim["refused_per_minute"] == sorted([s, n] for s, n in per_min.items())


def test_simulate_token_bucket_and_penalty_by_hand(tmp_path):
    # "1/second" token bucket (burst 1): one hit per second passes.
    # Client a: t=0,0,0 -> 1 passes, 2 refused; penalty after=1 within=10:
    # the 2nd refusal (t=0) bans for 5 s. t=2: banned (refused). t=6: the
    # ban ended at 5, a token is there: passes. t=6 again: refused
    # (a new window of refusals opens, 1 <= after: no ban).
    # Client b: t=0 and t=1 pass, t=1 again refused once: no ban.
    rows = [("a", 0, "/", 200)] * 3 + [("b", 0, "/", 200)] + [("b", 1, "/", 200)] * 2
    rows += [("a", 2, "/", 200), ("a", 6, "/", 200), ("a", 6, "/", 200)]
    rows.sort(key=lambda r: r[1])
    path = tmp_path / "t.log"
    path.write_bytes(log(rows))
    m = build_report(
        [str(path)],
        simulate="1/second",
        penalty=parse_penalty("after=1,within=10s,ban=5s"),
    )
    sim = m["simulation"]
    assert {
        x["key"]: (x["refused"], x["hits"], x["bans"]) for x in sim["refused_by_key"]
    } == {
        "a": (4, 6, 1),
        "b": (1, 3, 0),
    }
    assert sim["bans"] == 1 and sim["banned_hits"] == 2
    assert [b["key"] for b in sim["banned_keys"]] == ["a"]
    assert sim["banned_keys"][0]["first_ban_ts"] == 1738404000.0


def test_suggest_refuses_the_abuser_not_the_others():
    m = build_report([str(SAMPLE)], suggest=True)
    s = m["suggestion"]
    assert s["verdict"]["abusive_clients_refused"] == [sample.ABUSER_IP]
    abuser = next(c for c in m["clients"] if c["key"] == sample.ABUSER_IP)
    assert s["verdict"]["abusive_refused"] > abuser["requests"] // 2
    others = m["totals"]["parsed"] - abuser["requests"]
    assert s["verdict"]["other_refused"] <= others // 1000
    # The suggested rates sit above what normal clients do.
    normal = [c for c in m["clients"] if not c.get("abusive")]
    assert all(c["rates"]["1"][2] <= s["per_second"] for c in normal)
    assert all(c["rates"]["60"][2] <= s["per_minute"] for c in normal)


def test_parse_penalty():
    p = parse_penalty("after=5, within=1m, ban=300,factor=3,max_ban=1h")
    assert (p.after, p.within, p.ban, p.factor, p.max_ban) == (
        5,
        60.0,
        300.0,
        3.0,
        3600.0,
    )
    for bad in (
        "after=5",
        "after=x,within=1,ban=1",
        "after=1,within=1,ban=1,ban=2",
        "foo=1",
        "after=1,within=1y,ban=1",
    ):
        with pytest.raises(ValueError):
            parse_penalty(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--simulate", "10/fortnight"], "fortnight"),
        (["--simulate", "10/second", "--key", "host"], "invalid choice"),
        (["--simulate", "10/second", "--algorithm", "leaky"], "invalid choice"),
        (["--simulate", "10/second", "--penalty", "after=1"], "lacks within, ban"),
        (["--penalty", "after=1,within=1,ban=1"], "give --simulate"),
        (["--top", "0"], "expected an integer >= 1"),
        (["--track", "3000000000"], "track must be an int from 1 to 2**31 - 1"),
        (["--headroom", "0.5"], "from 1 to 1000"),
        (["--format", "%l %u"], "client field"),
        (["--format", "apache"], "'apache'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args, message):
    proc = run_cli(str(SAMPLE), *args)
    assert proc.returncode == 2
    assert message in proc.stderr.decode()
    assert proc.stdout == b""


def test_missing_input_and_no_input(tmp_path):
    proc = run_cli(str(tmp_path / "nope.log"))
    assert proc.returncode == 2 and "nope.log" in proc.stderr.decode()
    proc = run_cli()
    assert proc.returncode == 2 and "LOG" in proc.stderr.decode()
    proc = run_cli("-", "-", stdin=b"")
    assert proc.returncode == 2 and "only once" in proc.stderr.decode()


def test_empty_and_unparsable_inputs(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    bad = tmp_path / "bad.log"
    bad.write_bytes(b"garbage\n\nmore")
    proc = run_cli(str(empty))
    assert proc.returncode == 0 and b"No line parsed" in proc.stdout
    proc = run_cli(
        str(bad), "--simulate", "1/second", "--html", str(tmp_path / "r.html")
    )
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert "right --format?" in out and "bad.log:1" in out and "bad.log:3" in out
    m = json.loads(run_cli(str(bad), "--json").stdout)
    assert (m["totals"]["lines"], m["totals"]["malformed"]) == (2, 2)
    proc = run_cli(str(empty), "--suggest")
    assert proc.returncode == 1 and b"no parsed line" in proc.stderr


def test_progress_counts_compressed_bytes_from_a_pipe():
    """The progress bar advances by the compressed bytes read, from a file
    and from a pipe (stdin: no tell()), whose first read may bring a
    single byte; the lines are the same. Stdin kept for a second pass
    (--suggest) is copied as it is read, not before."""
    import io

    from stanchion.report._input import Input, _chunks

    # Four gzip members: more than gzip reads at once (128 KiB on 3.15).
    gz = SAMPLE.read_bytes() * 4
    plain = gzip.decompress(SAMPLE.read_bytes())[:300_000]

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)
            self.first = True

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
            n = 1 if self.first else min(len(b), 4096)
            self.first = False
            chunk = self.data.read(n)
            b[: len(chunk)] = chunk
            return len(chunk)

    for data in (gz, plain):
        results = []
        for raw in (io.BufferedReader(io.BytesIO(data)), io.BufferedReader(Pipe(data))):
            steps: list[int] = []
            copy = io.BytesIO()
            inp = Input("-")
            with raw:
                text = b"".join(_chunks(inp, raw, steps.append, copy))
            assert inp.gzip is (data is not plain)
            assert sum(steps) == len(data) and copy.getvalue() == data
            if inp.gzip:
                assert len([n for n in steps if n]) > 1  # it moves as it reads
            results.append(text)
        assert results[0] == results[1]
        assert results[0].count(b"\n") == (
            4 * 11_405 if inp.gzip else plain.count(b"\n")
        )


def test_closed_stdin_is_an_error_not_a_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "stanchion", "report", "-", "--json"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=60,
        check=False,
        close_fds=True,
        preexec_fn=lambda: os.close(0),
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.decode().strip() == "stanchion report: stdin ('-') is closed"


def test_truncated_gzip_fails_cleanly(tmp_path):
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(SAMPLE.read_bytes()[:5000])
    proc = run_cli(str(cut))
    assert proc.returncode == 1
    assert "stanchion report:" in proc.stderr.decode()
    assert b"Traceback" not in proc.stderr


def test_without_the_report_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich -> ImportError
    assert main(["report", str(SAMPLE)]) == 2
    err = capsys.readouterr().err
    assert "stanchion[report]" in err and "rich" in err


def test_progress_bar_on_a_terminal_or_when_asked():
    """On a terminal (a pty here) --progress shows bytes read and lines per
    second on stderr; stdout stays the report."""
    import pty
    import threading

    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "120"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stanchion",
            "report",
            str(SAMPLE),
            "--progress",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            seen.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = proc.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    assert proc.returncode == 0
    assert json.loads(out)["totals"]["parsed"] > 0
    bar = b"".join(seen).decode(errors="replace")
    assert "lines/s" in bar and "access.log.gz" in bar and "kB" in bar
    # Without a terminal and without --progress: nothing on stderr.
    quiet = run_cli(str(SAMPLE), "--json")
    assert quiet.returncode == 0 and quiet.stderr == b""


def test_other_formats_through_the_command(tmp_path):
    path = tmp_path / "n.log"
    path.write_bytes(
        b'10.1.1.1 [2025-02-01T10:00:00+00:00] "GET /a/1 HTTP/1.1" 200\n'
        b'10.1.1.1 [2025-02-01T10:00:01+00:00] "GET /a/2 HTTP/1.1" 404\n'
    )
    proc = run_cli(
        str(path),
        "--format",
        '$remote_addr [$time_iso8601] "$request" $status',
        "--json",
    )
    assert proc.returncode == 0, proc.stderr.decode()
    m = json.loads(proc.stdout)
    assert m["totals"]["parsed"] == 2
    assert m["templates"] == [{"key": "/a/{id}", "requests": 2, "error": 0}]


# -- the model's rules on hand-made figures ------------------------------------------


def _client(key, requests, max1, max60, n4xx=0, p99_1=None, p99_60=None):
    return {
        "key": key,
        "requests": requests,
        "n4xx": n4xx,
        "rates": {
            "1": [1, 1, p99_1 or max1, max1],
            "60": [1, 1, p99_60 or max60, max60],
        },
    }


def test_friendly_numbers():
    from stanchion.report._model import friendly

    got = [friendly(x) for x in (0, 1, 1.01, 2, 2.5, 4, 5.5, 9, 10, 11, 31, 299, 501)]
    assert got == [1, 1, 2, 2, 3, 5, 10, 10, 10, 20, 50, 300, 1000]


def test_abuse_rule_on_hand_made_clients():
    from stanchion.report._model import analyze

    # 9 normal clients: max 1-s rates 2..4, max 60-s 10..14; median 1-s 3,
    # MAD 1 -> threshold max(3 + 6 * 1.4826, 15, 10) = 15 ; 60-s: median 12,
    # MAD 1 -> max(12 + 8.9, 60, 60) = 60.
    clients = [_client(f"n{i}", 50, 2 + i % 3, 10 + i % 5) for i in range(9)]
    clients.append(_client("fast", 100, 16, 50))  # 16 > 15: abusive
    clients.append(_client("steady", 300, 10, 61))  # 61 > 60: abusive
    clients.append(_client("errors", 60, 3, 12, n4xx=30))  # 50% 4xx, 60 >= 50
    clients.append(_client("few-errors", 10, 3, 12, n4xx=10))  # too few requests
    summary = {
        "clients": clients,
        "per_second": [[60, 1, 0, 0, 0]],
        "first_ts": 60.0,
        "last_ts": 60.0,
        "status": {},
        "methods": {},
        "paths": [],
        "templates": [],
        "lines": 1,
        "parsed": 1,
        "malformed": 0,
        "bytes": 0,
        "distinct_exact": True,
    }
    m = analyze(summary, top=20)
    found = {a["key"]: a["reasons"] for a in m["abusive"]["clients"]}
    assert set(found) == {"fast", "steady", "errors"}
    assert found["fast"] == ["max 1-s rate 16 > 15"]
    assert found["steady"] == ["max 60-s rate 61 > 60"]
    assert found["errors"] == ["50% 4xx of 60 requests"]
    assert m["abusive"]["thresholds"]["max_1s"]["median"] == 3


def test_suggestion_from_normal_clients_only():
    from stanchion.report._model import suggest_rates

    clients = [_client(f"n{i}", 50, 5, 20, p99_1=3, p99_60=14) for i in range(99)]
    clients.append(_client("odd", 50, 5, 20, p99_1=4, p99_60=16))
    clients.append(
        dict(_client("bad", 9000, 90, 900, p99_1=80, p99_60=800), abusive=["x"])
    )
    s = suggest_rates(clients, headroom=2)
    # p99 over 100 normal clients (nearest rank 99): 3/s and 14/min;
    # x2 = 6 and 28 -> 10/second, 30/minute.
    assert s["basis"] == {"clients": 100, "p99_of_p99_1s": 3, "p99_of_p99_60s": 14}
    assert s["rates"] == "10/second;30/minute"
    assert suggest_rates(clients, headroom=3)["rates"] == "10/second;50/minute"


def test_bursts_group_consecutive_minutes():
    from stanchion.report._model import analyze

    # 20 minutes of 10 requests; minutes 5 and 12-13 at 100, 60, 80.
    counts = [10] * 20
    counts[5], counts[12], counts[13] = 100, 60, 80
    per_second = [[600 + 60 * i, n, 0, 0, 0] for i, n in enumerate(counts)]
    summary = {
        "clients": [],
        "per_second": per_second,
        "first_ts": 600.0,
        "last_ts": 600.0 + 60 * 19,
        "status": {},
        "methods": {},
        "paths": [],
        "templates": [],
        "lines": 1,
        "parsed": 1,
        "malformed": 0,
        "bytes": 0,
        "distinct_exact": True,
    }
    b = analyze(summary)["bursts"]
    # median 10, MAD 0 -> threshold max(10, 30) = 30
    assert b["threshold"] == 30
    assert [
        (e["start"], e["minutes"], e["requests"], e["peak_minute"])
        for e in b["minutes"]
    ] == [
        (900, 1, 100, 900),
        (1320, 2, 140, 1380),
    ]


# -- hostile log content ------------------------------------------------------------

# Fields an attacker writes (the path, even the client field behind a
# proxy): escape sequences (clear the screen, set the title, a hidden
# hyperlink, an 8-bit CSI), rich markup and emoji codes.
EVIL_CLIENT = "\x1b]0;pwned\x07[red]:smile:"
EVIL_PATH = "/\x1b[2J[link=https://evil.example]x[/link]:smile:"
EVIL_LINE = (
    "junk \x1b]8;;https://evil.example\x1b\\x\x1b]8;;\x1b\\ [bold]b[/bold] \x9b31m"
)


def evil_log() -> bytes:
    rows = [(f"10.0.0.{i}", 5 * i, "/ok", 200) for i in range(1, 8)]
    rows += [(EVIL_CLIENT, 1, EVIL_PATH, 404)] * 30
    rows.sort(key=lambda r: r[1])
    return log(rows).replace(b"\n", b"\n" + EVIL_LINE.encode("latin-1") + b"\n", 1)


def test_terminal_report_shows_hostile_fields_as_text():
    """What the log says is printed as text: no escape sequence reaches
    the terminal, no rich markup or emoji code is interpreted."""
    proc = run_cli(
        "-",
        "--simulate",
        "1/second",
        "--penalty",
        "after=1,within=10,ban=5",
        "--suggest",
        stdin=evil_log(),
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    shown = "\\x1b]0;pwned\\x07[red]:smile:"
    assert f"{shown} !" in out  # the abusive clients' table
    assert f"abusive clients: 29 refused ({shown})" in out
    assert f"1 key banned: {shown} (" in out
    assert folded(out, "/\\x1b[2J[link=https://evil.example]x[/link]:smile:")
    # the malformed line (the table may wrap it at a space)
    assert "-:2     junk" in out
    assert "\\x1b]8;;https://evil.example\\x1b\\x\\x1b]8;;\\x1b\\" in out
    assert "[bold]b[/bold]" in out and "\\x9b31m" in out


def test_html_report_keeps_hostile_fields_out_of_its_markup(tmp_path):
    """Strings from the log never end or reopen the page's <script>
    blocks ("</script>", or "<!--" then "<script", which keeps the end
    tag from ending the block), and chart labels carry no tags for
    plotly to draw (a link)."""
    link = '<a\thref="https://evil.example/">x</a>'
    rows = [(f"10.0.0.{i}", 5 * i, "/ok", 200) for i in range(1, 8)]
    rows += [("<!--<script>", 1, "/</script><script>alert(1)</script>", 404)] * 30
    rows += [(link, 2, "/<!--<script>", 200)] * 2
    path = tmp_path / "evil.log"
    path.write_bytes(log(sorted(rows, key=lambda r: r[1])))
    out = tmp_path / "r.html"
    proc = run_cli(str(path), "--suggest", "--html", str(out), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    page = out.read_text()
    blocks = page.split('<script type="application/json"')[1:]
    assert len(blocks) == 6
    for block in blocks:
        text = block[block.index(">") + 1 : block.index("</script>")]
        assert "<" not in text  # no "</", "<!--" or "<script" inside
    c = _Checker()
    c.feed(page)
    c.close()
    assert c.errors == [] and c.stack == []
    model = json.loads(c.scripts["report-model"])
    assert model == json.loads(proc.stdout)
    keys = {x["key"] for x in model["clients"]}
    assert {"<!--<script>", link} <= keys
    assert "/</script><script>alert(1)</script>" in {x["key"] for x in model["paths"]}
    bars = json.loads(c.scripts["chart-clients-data"])["data"][0]["y"]
    assert "&lt;!--&lt;script&gt;" in bars
    assert '&lt;a\thref="https://evil.example/"&gt;x&lt;/a&gt;' in bars
    refused = json.loads(c.scripts["chart-suggestion-data"])["data"][0]["x"]
    assert refused and not any("<" in k for k in refused)


def test_counts_with_empty_steps_match_the_filled_list():
    """Percentiles, median and MAD over a series' steps, the empty ones as
    zeros, agree with the same figures over the list written out."""
    import random
    import statistics

    from stanchion.report._model import _Counts, _percentile

    rng = random.Random(5)
    for _ in range(300):
        step = rng.choice([1, 60])
        secs = sorted(rng.sample(range(0, 400 * step, step), rng.randrange(1, 40)))
        series = [[s, rng.choice([1, 2, 3, 50, rng.randrange(1, 400)])] for s in secs]
        filled = [0] * ((secs[-1] - secs[0]) // step + 1)
        for s, n in series:
            filled[(s - secs[0]) // step] = n
        c = _Counts(series, step)
        assert c.n == len(filled)
        for p in (1, 50, 90, 99, 100):
            assert c.percentile(p) == _percentile(filled, p)
        med = statistics.median(filled)
        assert c.median_and_mad() == (
            med,
            statistics.median(abs(v - med) for v in filled),
        )


def test_a_log_spanning_centuries_is_no_memory_bomb(tmp_path):
    """Two lines 292 years apart: the report neither lists every empty
    second nor every empty minute in between."""
    path = tmp_path / "span.log"
    path.write_bytes(
        b'1.1.1.1 - - [01/Jan/1970:00:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "u"\n'
        b'1.1.1.1 - - [31/Dec/2261:23:59:59 +0000] "GET / HTTP/1.1" 200 1 "-" "u"\n'
        b'1.1.1.1 - - [31/Dec/2261:23:59:59 +0000] "GET / HTTP/1.1" 200 1 "-" "u"\n'
    )
    m = build_report([str(path)])
    rates = m["site_rates"]
    assert rates["per_second"] == {"p50": 0, "p90": 0, "p99": 0, "max": 2}
    assert rates["per_minute"] == {"p50": 0, "p90": 0, "p99": 0, "max": 2}
    assert m["totals"]["duration_s"] == 9214646400
    assert m["bursts"]["median"] == 0 and m["bursts"]["mad"] == 0


def test_lines_past_the_limiters_clock_are_left_out_of_the_replay(tmp_path):
    """The parsers read dates up to 2261, the limiter's clock ends in
    2116: such lines are counted, not replayed, and the rest is."""
    path = tmp_path / "late.log"
    path.write_bytes(
        log([("a", 0, "/", 200), ("a", 0, "/", 200)])
        + b'b - - [31/Dec/2261:23:59:59 +0000] "GET / HTTP/1.1" 200 1 "-" "u"\n'
    )
    proc = run_cli(str(path), "--simulate", "1/second", "--suggest", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    m = json.loads(proc.stdout)
    assert m["totals"]["parsed"] == 3
    sim = m["simulation"]
    assert (sim["hits"], sim["refused"], sim["beyond_clock"]) == (2, 1, 1)
    assert m["suggestion"]["replay"]["beyond_clock"] == 1
    text = run_cli(str(path), "--simulate", "1/second").stdout.decode()
    assert "1 line dated from 2116 on not replayed" in text


def test_replay_keeps_long_keys_apart_in_little_memory():
    """Keys of any length are limited apart (two 2 kB paths that differ in
    their last byte, a path that looks like a digest), while the limiter
    holds a short digest of the long ones, not the 2 kB."""
    from stanchion.report._simulate import Replay, _limiter_key

    base = "/" + "a" * 2046
    keys = [base + "1", base + "2", "#" + "0" * 32, _limiter_key(base + "1")]
    assert len(set(map(_limiter_key, keys))) == 4
    r = Replay("1/second", key="path")
    n = 3 * len(keys)
    r.feed(([10**18] * n, ["c"] * n, keys * 3, [200] * n))
    res = r.result()
    assert (res["hits"], res["refused"]) == (12, 8)
    assert {x["key"]: x["refused"] for x in res["refused_by_key"]} == dict.fromkeys(
        keys, 2
    )
    script = (
        "import resource\n"
        "from stanchion.report._simulate import Replay\n"
        "r = Replay('1/second', key='path')\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "body = '/' + 'a' * 2040\n"
        "for j in range(10):\n"
        "    keys = [f'{body}{j * 10000 + i:07d}' for i in range(10000)]\n"
        "    r.feed(([10**18] * 10000, ['c'] * 10000, keys, [200] * 10000))\n"
        "    del keys\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < 100_000  # kB; 100000 keys of 2 kB: 200 MB and more


def test_json_needs_neither_rich_nor_plotly(tmp_path):
    """--json runs without the report extra and gives the same model;
    the tables need rich, --html plotly, --progress rich: each refused
    with exit 2 and the extra to install, before anything is read."""
    both = ["rich", "plotly"]
    bare = run_cli(str(SAMPLE), "--json", "--no-progress", blocked=both)
    assert bare.returncode == 0, bare.stderr
    full = run_cli(str(SAMPLE), "--json", "--no-progress")
    assert full.returncode == 0
    bare_model, full_model = json.loads(bare.stdout), json.loads(full.stdout)
    assert bare_model["totals"]["lines"] == 11_405
    bare_model.pop("timing"), full_model.pop("timing")  # how long it took
    assert bare_model == full_model
    page = tmp_path / "r.html"
    for blocked, args, missing in (
        (both, [], "rich is"),
        (["plotly"], ["--json", "--html", str(page)], "plotly is"),
        (["rich"], ["--json", "--progress"], "rich is"),
        (both, ["--html", str(page)], "rich and plotly are"),
    ):
        proc = run_cli(str(SAMPLE), *args, blocked=blocked)
        assert proc.returncode == 2 and proc.stdout == b"", (blocked, args)
        err = proc.stderr.decode()
        assert f"({missing} not installed)" in err
        assert "pip install 'stanchion[report]'" in err
    assert not page.exists()
    # plotly alone missing: the tables still print.
    tables = run_cli(str(SAMPLE), "--no-progress", blocked=["plotly"])
    assert tables.returncode == 0 and b"198.51.100.66" in tables.stdout


def test_an_unwritable_html_path_fails_before_reading(tmp_path):
    """A wrong --html path is told at once (exit 2), not after the whole
    log was read; nothing is printed on stdout."""
    for bad, why in (
        (tmp_path, "is a directory"),
        (tmp_path / "no" / "r.html", "its directory does not exist"),
    ):
        proc = run_cli("-", "--html", str(bad), stdin=b"never read\n")
        assert proc.returncode == 2 and proc.stdout == b""
        assert f"cannot write {bad}: {why}" in proc.stderr.decode()


def test_penalty_after_too_large_says_the_range():
    with pytest.raises(ValueError, match=r"from 1 to 2\*\*63 - 1"):
        parse_penalty("after=99999999999999999999,within=1,ban=1")


@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_a_reader_that_leaves_early_gets_no_traceback(fmt):
    """`stanchion report log --json | head -1`: the pipe closes before the
    report is written; the command ends with status 1, quietly."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stanchion", "report", str(SAMPLE), *fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the log is read
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 1
    assert b"Traceback" not in err and b"Broken pipe" not in err


def test_a_long_key_does_not_push_the_numbers_out_of_the_tables():
    """Anyone can request a 300-byte path (or, behind a proxy, send a long
    client field): the tables still show every row's counts, the long
    key on several lines."""
    rows = [(f"10.0.0.{i}", i, "/a", 200) for i in range(5)]
    rows.append(("X" * 300, 9, "/" + "p" * 300, 404))
    proc = run_cli("-", stdin=log(rows))
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert re.search(r"^ 10\.0\.0\.0 +1 +16\.7% +10 B +0 +0 +1/1/1 +1/1 *$", out, re.M)
    assert re.search(r"^ /a +5 +50 B +0 +0 *$", out, re.M)
    assert re.search(r"^ /p{47} +1 +10 B +1 +0 *$", out, re.M)
    assert re.search(r"^ X{48} +1 +16\.7% +10 B +1 +0 ", out, re.M)
    assert folded(out, "/" + "p" * 300)


def folded(out: str, text: str, width: int = 48) -> bool:
    """``text`` in a table's first column, on lines of ``width``."""
    return all(
        re.search("^ " + re.escape(text[i : i + width]), out, re.M)
        for i in range(0, len(text), width)
    )
