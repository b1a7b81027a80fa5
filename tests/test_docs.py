"""The docs site builds with ``mkdocs build --strict`` (a broken reference,
link or docstring fails it), its API reference documents the key objects
with the docstrings of the code (the C types' from the compiled module),
and every section of the README is on a page."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import stanchion

from .conftest import in_ci

# A build takes about 10 s.
pytestmark = [pytest.mark.docs, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
DOC_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _require_docs_extra() -> None:
    """Skip without mkdocs and its plugins on a developer's machine; fail
    in CI (CI=true), where `.[all]` brings the `docs` extra."""
    missing = [m for m in DOC_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return
    what = f"docs tools not installed: {', '.join(missing)} (pip install -e '.[docs]')"
    if in_ci():
        pytest.fail(what + "; CI must have them", pytrace=False)
    pytest.skip(what)


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    _require_docs_extra()
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    # The stanchion under test: the one this process imported.
    package_root = str(Path(stanchion.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root, *filter(None, [env.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config, "-d", site],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _text(page: Path) -> str:
    """A built page's visible text, one space between words."""
    raw = page.read_text()
    raw = re.sub(r"<(script|style)\b.*?</\1>", " ", raw, flags=re.DOTALL)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", raw)))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = _build(ROOT / "mkdocs.yml", out)
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def _first_line(doc: str | None) -> str:
    assert doc, "no docstring"
    return " ".join(doc.strip().split("\n\n")[0].split()).replace("`", "")


def test_api_reference_names_the_key_objects(site: Path) -> None:
    page = (site / "api" / "index.html").read_text()
    ids = set(re.findall(r'id="(stanchion\.[\w.]+)"', page))
    for name in (
        "stanchion.parse_rates",
        "stanchion.Rate",
        "stanchion.Limiter",
        "stanchion.Limiter.hit",
        "stanchion.Limiter.peek",
        "stanchion.Limiter.reset",
        "stanchion.Limiter.acquire",
        "stanchion.Limiter.ahit",
        "stanchion.Decision",
        "stanchion.Decision.retry_after",
        "stanchion.Cache",
        "stanchion.Cache.get",
        "stanchion.Cache.set",
        "stanchion.cached",
        "stanchion.Pool",
        "stanchion.SharedMemoryStorage",
        "stanchion.RedisStorage",
        "stanchion.http.Rule",
        "stanchion.respcache.ResponseCache",
    ):
        assert name in ids, f"{name} is not on the API page"


def test_c_types_carry_their_docstrings(site: Path) -> None:
    """hit, peek, Cache.get and Decision are C: their text comes from the
    compiled module's docstrings, their types from _core.pyi."""
    text = _text(site / "api" / "index.html")
    # Code spans and links leave spaces the plain docstring has not.
    bare = re.sub(r"\s", "", text)
    for obj in (
        stanchion.Limiter.hit,
        stanchion.Limiter.peek,
        stanchion.Cache.get,
        stanchion.Decision,
        stanchion.cached,
    ):
        first = _first_line(obj.__doc__)
        assert re.sub(r"\s", "", first) in bare, (
            f"{obj!r}: {first!r} is not on the page"
        )
    # A signature typed by the stub (the compiled method's own
    # __text_signature__ has no types).
    assert re.search(r"get\s*\(\s*key\s*:\s*_K", text), "Cache.get is not typed"
    hit = r"hit\s*\(\s*key\s*:\s*str\s*\|\s*bytes\s*,\s*/\s*,\s*cost\s*:\s*int"
    assert re.search(hit + r"\s*=\s*1\s*\)\s*->\s*Decision", text), "hit is not typed"


def _sections(readme: str) -> list[tuple[str, str]]:
    """(heading, first line of prose) of each ``##`` section of the README,
    the prose with its Markdown taken off as the site shows it."""
    readme = re.sub(r"^```.*?^```", "", readme, flags=re.MULTILINE | re.DOTALL)
    out = []
    for part in re.split(r"^## ", readme, flags=re.MULTILINE)[1:]:
        heading, _, body = part.partition("\n")
        prose = next(
            line.removeprefix("- ")
            for line in body.splitlines()
            if len(line) > 30 and not line.startswith(("#", "|", " ", "<"))
        )
        prose = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", prose)
        out.append((heading.strip(), re.sub(r"[`*]", "", prose)))
    return out


def test_every_readme_section_is_on_one_page(site: Path) -> None:
    """Each README section (its heading and its text) is on the site, its
    text on one page only: the pages' ranges of README headings neither
    miss a section nor take one twice."""
    sections = _sections((ROOT / "README.md").read_text())
    assert len(sections) > 10
    pages = {
        p: re.sub(r"\s", "", _text(p))
        for p in site.rglob("*.html")
        if p.name != "404.html" and "search" not in p.parts
    }
    for heading, prose in sections:
        words = re.sub(r"\s", "", re.sub(r"[`*]", "", heading))
        assert any(words in text for text in pages.values()), heading
        on = [p for p, text in pages.items() if re.sub(r"\s", "", prose) in text]
        assert len(on) == 1, (heading, prose, on)


def test_migration_page_and_framework_pages(site: Path) -> None:
    migrating = _text(site / "migrating" / "index.html")
    for words in ("360 days", "swallow_errors", "key_style", "RATELIMIT_FAIL_OPEN"):
        assert words in migrating
    for page, words in (
        ("fastapi", "stanchion.fastapi"),
        ("flask", "STANCHION_DEFAULT_LIMIT"),
        ("django", "STANCHION"),
        ("hug", "hug.wraps"),
        ("drf", "DEFAULT_THROTTLE_CLASSES"),
        ("fastapi", "DocumentedRoute"),
    ):
        assert words in _text(site / page / "index.html"), page


def test_a_broken_reference_fails_the_build(tmp_path: Path) -> None:
    """The site's own settings, one page with a reference to nothing."""
    _require_docs_extra()
    import yaml  # type: ignore[import-untyped]

    conf = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(
        "# Broken\n\n::: stanchion.NoSuchThing\n\nSee [the cache][no-such-heading].\n"
    )
    conf["docs_dir"] = str(docs)
    conf["nav"] = [{"Broken": "index.md"}]
    conf["hooks"] = [str(ROOT / "docs" / "hooks.py")]
    for plugin in conf["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            python = plugin["mkdocstrings"]["handlers"]["python"]
            python["paths"] = [str(ROOT / p) for p in python["paths"]]
            options = python["options"]
            options["extensions"] = [str(ROOT / e) for e in options["extensions"]]
    config = tmp_path / "mkdocs.yml"
    config.write_text(yaml.safe_dump(conf))
    built = _build(config, tmp_path / "site")
    assert built.returncode != 0
    assert "NoSuchThing" in built.stdout + built.stderr
