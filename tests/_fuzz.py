"""Builds a C fuzz driver of tests/fuzz/ with the engine sources it
tests, without Python, under ASan+UBSan (-Werror), and runs it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(
    tmp_path: Path,
    driver: str,
    sources: list[str],
    *,
    libs: tuple[str, ...] = (),
    sanitize: bool = True,
) -> Path:
    """Compile tests/fuzz/<driver>.c with src/<sources> (-Werror), under
    ASan+UBSan unless ``sanitize`` is false; returns the executable."""
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is required"
    exe = tmp_path / driver
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    subprocess.run(
        [
            cc,
            "-std=c11",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            *(flags if sanitize else []),
            "-I",
            str(ROOT / "src"),
            str(ROOT / "tests/fuzz" / f"{driver}.c"),
            *(str(ROOT / "src" / n) for n in sources),
            *libs,
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return exe


def fuzz(
    tmp_path: Path,
    driver: str,
    sources: list[str],
    inputs: int,
    *,
    libs: tuple[str, ...] = (),
    timeout: float = 300,
    unit: str = "inputs",
) -> str:
    """Build tests/fuzz/<driver>.c with src/<sources> under ASan+UBSan,
    run it on ``inputs`` inputs (leak checks on) and return what it
    printed, once it said "<inputs> <unit> ok"."""
    exe = build(tmp_path, driver, sources, libs=libs)
    env = {"ASAN_OPTIONS": "detect_leaks=1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [str(exe), str(inputs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"{inputs} {unit} ok" in proc.stdout
    return proc.stdout
