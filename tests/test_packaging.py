"""What a user gets: the sdist holds what the build and the whole test suite
need, the version has one source, and a user's build does not fail on a
new compiler's warning."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import stanchion

from .conftest import require_peers

ROOT = Path(__file__).resolve().parent.parent


def project_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'^version = "([^"]+)"$', text, re.MULTILINE)
    assert m, "pyproject.toml has no static version"
    return m.group(1)


def test_version_comes_from_the_distribution_metadata() -> None:
    assert stanchion.__version__ == importlib.metadata.version("stanchion")
    assert stanchion.__version__ == project_version()
    init = Path(stanchion.__file__).read_text()
    assert not re.search(r"__version__\s*=\s*[\"']", init), "a second version source"


def test_sdist_holds_the_build_and_the_whole_test_suite(tmp_path: Path) -> None:
    # A copy without build leftovers: setuptools adds whatever an old
    # *.egg-info/SOURCES.txt lists, which would hide a missing MANIFEST.in line.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".venv*"
        ),
    )
    code = (
        "import sys; from setuptools import build_meta as b; "
        "print(b.build_sdist(sys.argv[1]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    name = proc.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as tar:
        top = name.removesuffix(".tar.gz")
        members = {
            m.name.removeprefix(top + "/") for m in tar.getmembers() if m.isfile()
        }

    def tree(*patterns: str) -> set[str]:
        return {
            str(p.relative_to(ROOT))
            for pattern in patterns
            for p in ROOT.glob(pattern)
            if "__pycache__" not in p.parts and p.suffix not in (".pyc", ".so")
        }

    needed = tree(
        "src/*.c",
        "src/*.h",
        "tests/**/*.py",
        "tests/fuzz/*.c",
        "benchmarks/*",
        "examples/**/*.py",
        "scripts/*",
        "docs/*",
    ) | {
        "mkdocs.yml",
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "setup.py",
        "python/stanchion/_core.pyi",
        "python/stanchion/py.typed",
    }
    assert "src/clock.h" in needed and "tests/conftest.py" in needed
    assert needed - members == set()
    assert not [m for m in members if m.endswith((".so", ".pyc", ".o"))]


def extension_args(env: dict[str, str]) -> list[str]:
    """The compile flags setup.py gives the extension under env."""
    code = (
        "import json, runpy, setuptools\n"
        "seen = {}\n"
        "setuptools.setup = lambda **kw: seen.update(kw)\n"
        "runpy.run_path('setup.py', run_name='__main__')\n"
        "print(json.dumps(seen['ext_modules'][0].extra_compile_args))\n"
    )
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CI", "STANCHION_DEBUG", "STANCHION_SANITIZE")
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    args: list[str] = json.loads(proc.stdout)
    return args


def test_warnings_are_errors_only_in_ci_and_debug_builds() -> None:
    user = extension_args({})
    assert "-Wall" in user and "-Werror" not in user and "-O3" in user
    assert "-Werror" in extension_args({"CI": "true"})
    debug = extension_args({"STANCHION_DEBUG": "1"})
    assert "-Werror" in debug and "-O0" in debug
    assert "-Werror" not in extension_args({"CI": "false"})


def test_benchmark_peers_skip_locally_and_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = "stanchion_no_such_peer"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=missing):
        require_peers("json", missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must have them"):
        require_peers("json", missing)
    require_peers("json", "re")  # all there: nothing happens
