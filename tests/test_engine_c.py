"""Builds the pure C engine without Python and fuzzes it under ASan+UBSan."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._fuzz import fuzz

# A fuzz build under ASan+UBSan: seconds of compiling and running.
pytestmark = pytest.mark.slow


def test_engine_builds_without_python_and_survives_fuzzing(tmp_path: Path) -> None:
    fuzz(
        tmp_path,
        "engine_fuzz",
        ["rate.c", "limit.c", "keytable.c", "index.c", "clock.c"],
        200000,
        libs=("-lm",),
    )
