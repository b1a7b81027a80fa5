"""cachetools' own LRUCache and TTLCache tests, run against stanchion.Cache.

Their test files are not copied here: this test downloads the sdist of
the cachetools version installed (``pip download``, from PyPI), unpacks
its ``tests/`` into a temporary directory and runs ``test_lru.py`` and
``test_ttl.py`` with pytest in a subprocess, with the plugin
``cachetools_adapter`` (next to this file) turning their ``LRUCache`` and
``TTLCache`` into ``stanchion.Cache`` at the constructor only.

The tests that fail are exactly the documented differences (README,
"Migrating from cachetools"): the set is asserted, so a change on either
side (a test of theirs that starts or stops failing) is noticed.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import stanchion

HERE = Path(__file__).resolve().parent
# Where the stanchion under test is imported from: the checkout's python/
# (an editable install), or site-packages (an installed build).
PACKAGE = Path(stanchion.__file__).resolve().parent.parent

# Test id -> the difference that makes it fail (each a row of the README
# table). Both their LRU and TTL classes run the shared CacheTestMixin.
_SHARED = {
    "test_defaults": "no getsizeof() method: sizes come from weigh=",
    "test_copy_getsizeof": "no getsizeof attribute: the function is weigh",
    "test_getsizeof_param": "with a size function, maxsize is maxweight",
    "test_missing_getsizeof": "with a size function, maxsize is maxweight",
    "test_getsizeof_subclass": "a getsizeof() override is not consulted",
    "test_maxsize_negative": "maxsize must be an int (TypeError for a float)",
    "test_maxsize_zero": "maxsize=0 stores nothing instead of raising",
}
EXPECTED_FAILURES = {
    **{f"test_lru.LRUCacheTest.{t}": why for t, why in _SHARED.items()},
    **{f"test_ttl.TTLCacheTest.{t}": why for t, why in _SHARED.items()},
    "test_ttl.TTLCacheTest.test_ttl_copy": "iteration is least recently used first",
    "test_ttl.TTLCacheTest.test_ttl_iter_modify": "iteration walks a snapshot",
    "test_ttl.TTLCacheTest.test_ttl_datetime": "ttl and clock are numbers of seconds",
    "test_ttl.TTLCacheTest.test_ttl_datetime_overflow": "ttl is a number of seconds",
    "test_ttl.TTLCacheTest.test_ttl_expire": "no expire(); the clock is not a "
    "context manager",
    "test_ttl.TTLCacheTest.test_ttl_iter_expired": "no expire()",
}


def _fail_or_skip(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def their_tests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cachetools' tests/ directory, from the sdist of the installed version."""
    try:
        version = importlib.metadata.version("cachetools")
    except importlib.metadata.PackageNotFoundError:
        _fail_or_skip("cachetools is not installed (the test extra has it)")
    where = tmp_path_factory.mktemp("cachetools-sdist")
    got = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-build-isolation",
            "--dest",
            str(where),
            f"cachetools=={version}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    sdists = list(where.glob("cachetools-*.tar.gz"))
    if got.returncode != 0 or len(sdists) != 1:
        _fail_or_skip(f"pip download cachetools=={version} failed: {got.stderr}")
    with tarfile.open(sdists[0]) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.isfile() and m.name.split("/")[1:2] == ["tests"]
        ]
        for m in members:
            m.name = "/".join(
                m.name.split("/")[1:]
            )  # cachetools-X/tests/... -> tests/...
            if hasattr(tarfile, "data_filter"):  # 3.12, and 3.10.12 on
                tar.extract(m, where, filter="data")
            else:
                tar.extract(m, where)
    tests = where / "tests"
    assert (tests / "test_lru.py").is_file() and (tests / "test_ttl.py").is_file()
    return tests


@pytest.mark.slow  # a download from PyPI and a pytest run: about 10 s
def test_their_lru_and_ttl_tests_against_stanchion_cache(their_tests: Path) -> None:
    report = their_tests.parent / "report.xml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE), str(HERE)])
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "cachetools_adapter",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={report}",
            "tests/test_lru.py",
            "tests/test_ttl.py",
        ],
        cwd=their_tests.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.is_file(), run.stdout + run.stderr
    passed, failed = set(), set()
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.', 1)[-1]}.{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(name)
        elif case.find("skipped") is None:
            passed.add(name)
    # The adapter is in use: stanchion.Cache answered their tests.
    assert "test_lru.LRUCacheTest.test_lru" in passed, run.stdout
    assert len(passed) >= 50, run.stdout
    assert failed == set(EXPECTED_FAILURES), run.stdout
