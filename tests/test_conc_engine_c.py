"""Builds the concurrency engine (src/conc.c) without Python and checks it
against a model under ASan+UBSan (tests/fuzz/conc_fuzz.c)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._fuzz import fuzz

# A fuzz build under ASan+UBSan: seconds of compiling and running.
pytestmark = pytest.mark.slow


def test_concurrency_engine_builds_without_python_and_matches_its_model(
    tmp_path: Path,
) -> None:
    fuzz(tmp_path, "conc_fuzz", ["conc.c", "keytable.c", "index.c"], 50000)
