"""``stanchion report``: the command line and the run that builds the model."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._limiter import ALGORITHMS
from .._penalty import Penalty
from .._rates import normalize_rates
from ._input import check_inputs, locate, make_parser, parser_engine, read_inputs
from ._model import HEADROOM, analyze, judge_replay, suggest_rates
from ._simulate import KEYS, Replay, parse_penalty

__all__ = ["add_report_parser", "build_report", "run_report_command"]

EXTRA_HINT = "pip install 'stanchion[report]'"


def _series_60(per_second: Sequence[Sequence[int]]) -> list[list[int]]:
    out: dict[int, int] = {}
    for sec, n in per_second:
        out[sec - sec % 60] = out.get(sec - sec % 60, 0) + n
    return [[s, n] for s, n in sorted(out.items())]


def _replay_result(replay: Replay, top: int) -> dict[str, Any]:
    r = replay.result(top)
    r["refused_per_minute"] = _series_60(r["refused_per_second"])
    return r


def build_report(
    names: Sequence[str],
    *,
    log_format: str = "combined",
    top: int = 10,
    track: int = 10_000,
    simulate: str | None = None,
    key: str = "ip",
    algorithm: str = "token_bucket",
    penalty: Penalty | None = None,
    suggest: bool = False,
    headroom: float = HEADROOM,
    progress: bool = False,
    engine: str = "auto",
) -> dict[str, Any]:
    """Read the logs and build the report model (see ``_model.analyze``),
    with the replay of ``simulate`` and, with ``suggest``, of the suggested
    rates. Bad arguments raise ValueError/TypeError before any reading."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an int >= 1, got {top!r}")
    if isinstance(track, bool) or not isinstance(track, int) or not 1 <= track < 2**31:
        raise ValueError(f"track must be an int from 1 to 2**31 - 1, got {track!r}")
    if key not in KEYS:
        raise ValueError(f"key must be one of {', '.join(KEYS)}, got {key!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}"
        )
    if not isinstance(headroom, (int, float)) or not 1 <= headroom <= 1000:
        raise ValueError(f"headroom must be a number from 1 to 1000, got {headroom!r}")
    if penalty is not None and simulate is None:
        raise ValueError("a penalty applies to a simulation: give --simulate RATES too")
    if simulate is not None:
        normalize_rates(simulate)  # a bad rate string fails here, not mid-log
    parser = make_parser(
        log_format, top=track, events=simulate is not None, engine=engine
    )
    inputs = check_inputs(names)
    replay = None
    if simulate is not None:
        replay = Replay(
            simulate, key=key, algorithm=algorithm, penalty=penalty, top=track
        )

    def feed(data: bytes) -> None:
        ev = parser.feed(data)
        if replay is not None:
            replay.feed(ev)

    started = time.perf_counter()
    try:
        read_inputs(
            inputs,
            feed,
            progress=progress,
            spool_stdin=suggest,
        )
        ev = parser.finish()
        if replay is not None:
            replay.feed(ev)
        summary = parser.summary()
        parse_s = time.perf_counter() - started
        model = analyze(summary, top=top)
        all_clients = model.pop("_all_clients")
        abusive = {c["key"] for c in model["abusive"]["clients"]}
        model["malformed_examples"] = [
            dict(zip(("input", "line"), locate(inputs, n), strict=True), text=text)
            for n, text in summary["malformed_examples"]
        ]
        model["inputs"] = [
            {"name": i.name, "gzip": i.gzip, "lines": i.lines, "size": i.size}
            for i in inputs
        ]
        model["format"] = log_format
        model["parser"] = parser_engine(parser)
        model["simulation"] = None
        model["suggestion"] = None
        if replay is not None:
            sim = _replay_result(replay, top)
            if key == "ip":
                sim["verdict"] = judge_replay(sim, abusive)
            model["simulation"] = sim
        if suggest:
            if not all_clients:
                raise RuntimeError("no parsed line to base a suggestion on")
            s = suggest_rates(all_clients, headroom)
            again = Replay(s["rates"], key="ip", algorithm=algorithm, top=track)
            p2 = make_parser(log_format, top=1, events=True, engine=engine)
            read_inputs(inputs, lambda d: again.feed(p2.feed(d)))
            again.feed(p2.finish())
            s["replay"] = _replay_result(again, top)
            s["verdict"] = judge_replay(s["replay"], abusive)
            model["suggestion"] = s
        model["timing"] = {
            "parse_s": parse_s,
            "total_s": time.perf_counter() - started,
            "lines_per_s": summary["lines"] / parse_s if parse_s > 0 else None,
        }
    finally:
        for i in inputs:
            if i.spool is not None:
                i.spool.close()
    return model


# -- command line -------------------------------------------------------------


def _penalty_arg(text: str) -> Penalty:
    try:
        return parse_penalty(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _rates_arg(text: str) -> str:
    try:
        normalize_rates(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {n}")
    return n


def _headroom_arg(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 1 <= x <= 1000:
        raise argparse.ArgumentTypeError(
            f"expected a number from 1 to 1000, got {text}"
        )
    return x


def add_report_parser(sub: Any) -> None:
    """The ``report`` subcommand's arguments."""
    p = sub.add_parser(
        "report",
        help="read access logs: traffic, peaks, abusive clients, limits",
        description=(
            "Read web server access logs (files, .gz, '-' for stdin): requests "
            "per client, path and status, per-second and per-minute peaks, "
            "clients that look abusive; replay them through a Limiter "
            "(--simulate) and suggest limits (--suggest)."
        ),
    )
    p.add_argument(
        "logs", nargs="+", metavar="LOG", help="access log files, or - for stdin"
    )
    p.add_argument(
        "--format",
        dest="log_format",
        default="combined",
        metavar="FORMAT",
        help="common, combined (default), nginx, or an nginx log_format / "
        "Apache LogFormat string",
    )
    p.add_argument(
        "--top",
        type=_positive_int,
        default=10,
        metavar="N",
        help="rows per table (default 10)",
    )
    p.add_argument(
        "--track",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="keys tracked per table (memory bound; default 10000)",
    )
    p.add_argument(
        "--simulate",
        type=_rates_arg,
        metavar="RATES",
        help='replay through a Limiter: "10/second;1000/day"',
    )
    p.add_argument(
        "--key", choices=KEYS, default="ip", help="the limiter's key (default ip)"
    )
    p.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default="token_bucket",
        help="(default token_bucket)",
    )
    p.add_argument(
        "--penalty",
        type=_penalty_arg,
        metavar="after=K,within=W,ban=P",
        help="ban keys refused more than K times within W (with --simulate)",
    )
    p.add_argument(
        "--suggest",
        action="store_true",
        help="suggest rates per client and replay them",
    )
    p.add_argument(
        "--headroom",
        type=_headroom_arg,
        default=HEADROOM,
        metavar="X",
        help=f"the suggestion's factor over normal clients' rates (default {HEADROOM:g})",
    )
    p.add_argument("--json", action="store_true", help="print the report model as JSON")
    p.add_argument(
        "--html", metavar="FILE", help="write a self-contained HTML page with charts"
    )
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress", action="store_true", default=None, help="show a progress bar"
    )
    bar.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show one"
    )
    p.add_argument(
        "--engine",
        choices=("auto", "c", "python"),
        default="auto",
        help=argparse.SUPPRESS,
    )


def _missing_extra(args: argparse.Namespace) -> list[str]:
    """The modules of the ``report`` extra this run needs and cannot
    import: rich for the tables and an asked-for progress bar, plotly for
    ``--html``. ``--json`` alone needs neither."""
    needed = []
    if not args.json or args.progress:
        needed.append("rich")
    if args.html:
        needed.append("plotly")
    return [m for m in needed if not _have(m)]


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def run_report_command(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    *,
    out: Callable[[str], None] | None = None,
) -> int:
    """``stanchion report``: 0 on success, 2 on bad arguments or inputs
    (or without the ``report`` extra), 1 when an input fails mid-way or
    holds nothing to suggest from."""
    missing = _missing_extra(args)
    if missing:
        print(
            "stanchion report needs the 'report' extra for this "
            f"({' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"not installed): {EXTRA_HINT}",
            file=sys.stderr,
        )
        return 2
    if args.penalty is not None and args.simulate is None:
        parser.error("--penalty applies to a simulation: give --simulate RATES too")
    if args.html:
        # Before reading a large log, not after: where the page goes.
        where = os.path.dirname(os.path.abspath(args.html))
        why = (
            "is a directory"
            if os.path.isdir(args.html)
            else "its directory does not exist"
            if not os.path.isdir(where)
            else "its directory is not writable"
            if not os.access(where, os.W_OK)
            else None
        )
        if why is not None:
            print(f"stanchion report: cannot write {args.html}: {why}", file=sys.stderr)
            return 2
    progress = args.progress
    if progress is None:
        sizes = [
            os.path.getsize(n) for n in args.logs if n != "-" and os.path.isfile(n)
        ]
        progress = sys.stderr.isatty() and sum(sizes) >= (32 << 20) and _have("rich")
    try:
        model = build_report(
            args.logs,
            log_format=args.log_format,
            top=args.top,
            track=args.track,
            simulate=args.simulate,
            key=args.key,
            algorithm=args.algorithm,
            penalty=args.penalty,
            suggest=args.suggest,
            headroom=args.headroom,
            progress=progress,
            engine=args.engine,
        )
    except (ValueError, TypeError) as e:
        print(f"stanchion report: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"stanchion report: {e}", file=sys.stderr)
        return (
            2
            if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError))
            else 1
        )
    except RuntimeError as e:
        print(f"stanchion report: {e}", file=sys.stderr)
        return 1
    except EOFError as e:  # a truncated .gz
        print(f"stanchion report: input ends early: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stanchion report: interrupted", file=sys.stderr)
        return 130
    if args.html:
        from ._html import write_html

        try:
            write_html(model, args.html)
        except OSError as e:
            print(f"stanchion report: cannot write {args.html}: {e}", file=sys.stderr)
            return 1
    try:
        if args.json:
            text = json.dumps(model, indent=2)
            (out or print)(text)
        else:
            from ._terminal import render

            render(model, html=args.html)
    except BrokenPipeError:
        # The reader left (| head): no traceback, and none again when
        # Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0
