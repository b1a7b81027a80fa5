"""Builds the shared-memory table without Python and checks it under
ASan+UBSan (tests/fuzz/shm_fuzz.c): decisions against the in-process
engine, a flood, 8 forked processes on one key, a lock holder killed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# A fuzz build under ASan+UBSan: seconds of compiling and running.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_shm_engine_builds_without_python_and_matches_the_engine(
    tmp_path: Path,
) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is required"
    exe = tmp_path / "shm_fuzz"
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
            str(ROOT / "tests/fuzz/shm_fuzz.c"),
            str(ROOT / "src/shm.c"),
            str(ROOT / "src/limit.c"),
            str(ROOT / "src/penalty.c"),
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
    assert "200000 operations ok" in proc.stdout
