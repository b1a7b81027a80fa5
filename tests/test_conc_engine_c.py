"""Builds the concurrency engine (src/conc.c) without Python and checks it
against a model under ASan+UBSan (tests/fuzz/conc_fuzz.c)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# A fuzz build under ASan+UBSan: seconds of compiling and running.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_concurrency_engine_builds_without_python_and_matches_its_model(
    tmp_path: Path,
) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is required"
    exe = tmp_path / "conc_fuzz"
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
            str(ROOT / "tests/fuzz/conc_fuzz.c"),
            *(str(ROOT / "src" / n) for n in ("conc.c", "keytable.c", "index.c")),
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    env = {"ASAN_OPTIONS": "detect_leaks=1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [str(exe), "50000"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "50000 inputs ok" in proc.stdout
