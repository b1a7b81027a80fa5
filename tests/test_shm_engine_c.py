"""Builds the shared-memory table without Python and checks it under
ASan+UBSan (tests/fuzz/shm_fuzz.c): decisions against the in-process
engine, a flood, 8 forked processes on one key, a lock holder killed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._fuzz import fuzz

# A fuzz build under ASan+UBSan: seconds of compiling and running.
pytestmark = pytest.mark.slow


def test_shm_engine_builds_without_python_and_matches_the_engine(
    tmp_path: Path,
) -> None:
    fuzz(
        tmp_path,
        "shm_fuzz",
        ["shm.c", "limit.c", "penalty.c"],
        200000,
        libs=("-lm",),
        unit="operations",
    )  # asserts it ran every operation without a sanitizer report
