"""Build hooks of the docs site (mkdocs.yml names this file twice).

- ``on_page_markdown`` (an mkdocs hook): README sections are included in
  several pages, so a README link to one of its own headings (``#cache``)
  may point to another page: it becomes a cross-page reference that
  mkdocs-autorefs resolves (and reports, failing a strict build, when no
  page has that heading). Links to ``benchmarks/RESULTS.md`` point to the
  page that includes it, and the README's link to ``docs/`` (``./`` once
  rewritten) to the home page. A link to another file of the repository
  (``examples/gateway/README.md``: not a page of the site) is shown as
  its path; a link to a file that does not exist is left for the strict
  build to report.
- ``SphinxRoles`` (a griffe extension, for mkdocstrings): the docstrings
  are written for ``help()`` in reST; ``:class:`x``` and the like are
  shown as code, a paragraph ending in ``::`` (a literal block follows)
  ends in ``:``, and two-column simple tables become Markdown tables.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe
from markdown.extensions.toc import slugify

_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_LOCAL_LINK = re.compile(r"\]\(#([A-Za-z0-9_-]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
# README.md's links to other files, as include-markdown rewrote them
# (relative to docs/), and the page that shows each file.
_FILES = {"../benchmarks/RESULTS.md": "benchmarks.md", "./)": "index.md)"}


_REPO_LINK = re.compile(r"\[([^\]\n]+)\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    own = {slugify(h, "-") for h in _HEADING.findall(_FENCE.sub("", markdown))}

    def link(m: re.Match[str]) -> str:
        anchor = m.group(1)
        return m.group(0) if anchor in own else f"][{anchor}]"

    markdown = _LOCAL_LINK.sub(link, markdown)
    for path, target in _FILES.items():
        markdown = markdown.replace(f"]({path}", f"]({target}")
    here = Path(page.file.abs_src_path).parent
    root = Path(kwargs["config"]["config_file_path"]).parent.resolve()

    def repo_file(m: re.Match[str]) -> str:
        text, path = m.group(1), m.group(2)
        target = (here / path).resolve()
        if not target.exists() or not target.is_relative_to(root):
            return m.group(0)
        shown = target.relative_to(root).as_posix()
        return text if text.strip("`") == shown else f"{text} (`{shown}`)"

    return _REPO_LINK.sub(repo_file, markdown)


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)
_RULE = re.compile(r"( *)(=+)( +)=+ *")


def _simple_tables(text: str) -> str:
    """reST simple tables of two columns (a rule of ``=`` runs above and
    below) as Markdown tables."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        top = _RULE.fullmatch(lines[i])
        end = next(
            (j for j in range(i + 1, len(lines)) if _RULE.fullmatch(lines[j])), None
        )
        if top is None or end is None:
            out.append(lines[i])
            i += 1
            continue
        split = len(top.group(1)) + len(top.group(2)) + len(top.group(3))
        out += ["| | |", "| --- | --- |"]
        for row in lines[i + 1 : end]:
            cells = (row[:split].strip(), row[split:].strip())
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        i = end + 1
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Docstrings written in reST shown as Markdown: roles as code spans,
    ``::`` as ``:``, simple tables as tables."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        doc = obj.docstring
        if doc is None:
            return
        value = _ROLE.sub(r"`\1`", doc.value)
        value = _LITERAL.sub(r"\1:", value)
        doc.value = _simple_tables(value)
