"""Reading access logs: files, gzip (told by its magic bytes, not the
name) and stdin ("-"), in 1 MiB chunks, with an optional progress bar."""

from __future__ import annotations

import gzip
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from .. import _core
from ._pyparse import PyLogParser

__all__ = ["CHUNK", "Input", "make_parser", "read_inputs"]

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
# A progress bar shows by itself on a terminal from this much input on.
PROGRESS_FROM = 32 << 20


def make_parser(
    log_format: str,
    *,
    top: int,
    events: bool,
    engine: str = "auto",
) -> Any:
    """The C parser when the extension has it (``engine="auto"`` or
    ``"c"``), else the pure-Python one (``"python"``)."""
    if engine not in ("auto", "c", "python"):
        raise ValueError(f"engine must be 'auto', 'c' or 'python', got {engine!r}")
    cls: Any = PyLogParser
    if engine != "python" and hasattr(_core, "LogParser"):
        cls = _core.LogParser
    elif engine == "c":
        raise ValueError("this build of stanchion has no C log parser")
    return cls(log_format, top=top, windows=(1, 60), events=events)


def parser_engine(parser: Any) -> str:
    return "python" if isinstance(parser, PyLogParser) else "c"


@dataclass
class Input:
    """One input: a path or "-" (stdin). ``spool`` (stdin only) keeps a
    copy of what was read, so a second pass can read it again."""

    name: str
    size: int | None = None  # bytes on disk (None for stdin)
    gzip: bool = False
    lines: int = 0  # newlines seen, to map line numbers to inputs
    first_line: int = 1  # the parser's line number of this input's line 1
    spool: IO[bytes] | None = field(default=None, repr=False)

    def open_raw(self) -> IO[bytes]:
        if self.name == "-":
            if self.spool is not None:
                self.spool.seek(0)
                return self.spool
            return sys.stdin.buffer
        return open(self.name, "rb")


def check_inputs(names: Sequence[str]) -> list[Input]:
    """Inputs for the names, or OSError naming the first that can't be
    read (before any parsing starts)."""
    out = []
    if list(names).count("-") > 1:
        raise ValueError("stdin ('-') can be read only once")
    for name in names:
        if name == "-":
            if sys.stdin is None:  # started with stdin closed
                raise ValueError("stdin ('-') is closed")
            out.append(Input(name))
            continue
        if os.path.isdir(name):
            raise IsADirectoryError(f"{name}: is a directory")
        size = os.path.getsize(name)
        with open(name, "rb"):
            pass
        out.append(Input(name, size=size))
    return out


class _Source:
    """An input's bytes as the parser reads them: counted (``count``, for
    the progress bar: compressed bytes for gzip, also from a pipe) and
    copied to ``copy`` when one is given (stdin kept for a second pass,
    written as it is read). ``head()`` reads the first two bytes in full
    (a pipe may bring them one at a time) and gives them back first."""

    __slots__ = ("_pending", "copy", "count", "raw")

    def __init__(self, raw: IO[bytes], copy: IO[bytes] | None = None) -> None:
        self.raw = raw
        self.copy = copy
        self.count = 0
        self._pending = b""

    def _read(self, size: int) -> bytes:
        data = self.raw.read(size)  # buffered: size bytes unless at the end
        self.count += len(data)
        if self.copy is not None and data:
            self.copy.write(data)
        return data

    def head(self) -> bytes:
        self._pending = self._read(2)
        return self._pending

    def read(self, size: int = -1) -> bytes:
        head = self._pending
        if not head:
            return self._read(size)
        if 0 <= size < len(head):
            self._pending = head[size:]
            return head[:size]
        self._pending = b""
        return head + self._read(-1 if size < 0 else size - len(head))

    def seek(self, offset: int, whence: int = 0) -> int:  # never: read once
        raise io.UnsupportedOperation("an input is read once, in order")


def _chunks(
    inp: Input,
    raw: IO[bytes],
    counted: Callable[[int], None],
    copy: IO[bytes] | None = None,
) -> Iterator[bytes]:
    source = _Source(raw, copy)
    inp.gzip = source.head() == GZIP_MAGIC
    stream: Any = gzip.GzipFile(fileobj=source, mode="rb") if inp.gzip else source
    last = 0
    while True:
        data = stream.read(CHUNK)
        counted(source.count - last)
        last = source.count
        if not data:
            return
        yield data


def read_inputs(
    inputs: Sequence[Input],
    feed: Callable[[bytes], None],
    *,
    progress: bool = False,
    spool_stdin: bool = False,
) -> None:
    """Feed every input's bytes to ``feed`` in order, a newline added
    after an input whose last line has none (so two inputs never join
    lines). ``spool_stdin`` keeps stdin in a temporary file for a second
    pass. The progress bar (rich) shows bytes read and lines per second."""
    bar: Any = None
    task: Any = None
    line_no = 1
    start = time.monotonic()
    if progress:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        total = (
            None
            if any(i.size is None for i in inputs)
            else sum(i.size or 0 for i in inputs)
        )
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=_stderr_console(),
            transient=True,
        )
        bar.start()
        task = bar.add_task("reading", total=total, rate="")
    try:
        for inp in inputs:
            inp.first_line = line_no
            inp.lines = 0
            if bar is not None:
                from ._terminal import quoted

                name = os.path.basename(inp.name) or inp.name
                bar.update(task, description=quoted(name))
            raw = inp.open_raw()
            spool = None  # stdin kept for a second pass, written as read
            if spool_stdin and inp.name == "-" and inp.spool is None:
                spool = inp.spool = tempfile.TemporaryFile(prefix="stanchion-report-")  # noqa: SIM115 (closed by build_report)

            def counted(n: int, before: int = line_no - 1, inp: Input = inp) -> None:
                if bar is not None and n:
                    elapsed = max(time.monotonic() - start, 1e-9)
                    lines = before + inp.lines
                    bar.update(task, advance=n, rate=f"{lines / elapsed:,.0f} lines/s")

            try:
                last = b"\n"
                for data in _chunks(inp, raw, counted, spool):
                    inp.lines += data.count(b"\n")
                    feed(data)
                    last = data[-1:]
                if last != b"\n":
                    inp.lines += 1
                    feed(b"\n")
            finally:
                if raw is not sys.stdin.buffer and raw is not inp.spool:
                    raw.close()
            line_no += inp.lines
    finally:
        if bar is not None:
            bar.stop()


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def locate(inputs: Sequence[Input], line_no: int) -> tuple[str, int]:
    """The input and its own line number of the parser's ``line_no``."""
    for inp in reversed(inputs):
        if line_no >= inp.first_line:
            return inp.name, line_no - inp.first_line + 1
    return inputs[0].name if inputs else "-", line_no
