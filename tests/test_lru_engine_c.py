"""Builds the cache engine (src/lru.c) without Python and checks it against
a model under ASan+UBSan (tests/fuzz/lru_fuzz.c)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._fuzz import fuzz

# A fuzz build under ASan+UBSan: seconds of compiling and running.
pytestmark = pytest.mark.slow


def test_cache_engine_builds_without_python_and_matches_its_model(
    tmp_path: Path,
) -> None:
    fuzz(tmp_path, "lru_fuzz", ["lru.c", "index.c"], 20000)
