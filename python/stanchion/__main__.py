"""Command line: ``python -m stanchion demo``, ``stanchion probe URL``,
``stanchion report access.log``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def demo_burst() -> None:
    """A burst of 8 requests against "5/second" for each algorithm, on a
    simulated clock so the output is the same on every run."""
    from . import Limiter

    t = [0.0]
    print("A client sends 8 requests at once, then 3 more 0.5 s later,")
    print('against a limit of "5/second" with each algorithm.\n')
    for algorithm in ("token_bucket", "fixed_window", "sliding_window"):
        t[0] = 100.0
        lim = Limiter("5/second", algorithm=algorithm, clock=lambda: t[0])
        print(f"  {algorithm}")
        for when, n in ((0.0, 8), (0.5, 3)):
            t[0] = 100.0 + when
            row = []
            for _ in range(n):
                d = lim.hit("client-42")
                row.append(
                    f"ok({d.remaining} left)"
                    if d
                    else f"429(retry in {d.retry_after:.2f}s)"
                )
            print(f"    t={when:.1f}s  " + "  ".join(row))
        print()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stanchion")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="show limiters at work")
    from ._probe import add_probe_parser, run_probe_command

    add_probe_parser(sub)
    from .report._cli import add_report_parser, run_report_command

    add_report_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "probe":
        return run_probe_command(args, parser)
    if args.command == "report":
        return run_report_command(args, parser)
    if args.command == "demo":
        demo_burst()
        from ._demo_web import demo_ban, demo_queue, demo_web

        demo_web()
        demo_queue()
        demo_ban()
    return 0


if __name__ == "__main__":
    sys.exit(main())
