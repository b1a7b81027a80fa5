"""Builds the pure C engine without Python and fuzzes it under ASan+UBSan."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# A fuzz build under ASan+UBSan: seconds of compiling and running.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_engine_builds_without_python_and_survives_fuzzing(tmp_path: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is required"
    exe = tmp_path / "engine_fuzz"
    sources = [ROOT / "tests/fuzz/engine_fuzz.c"] + [
        ROOT / "src" / n
        for n in ("rate.c", "limit.c", "keytable.c", "index.c", "clock.c")
    ]
    subprocess.run(
        [
            cc,
            "-std=c11",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-I",
            str(ROOT / "src"),
            *map(str, sources),
            "-lm",
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    env = {"ASAN_OPTIONS": "detect_leaks=1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [str(exe), "200000"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "200000 inputs ok" in proc.stdout
