"""Griffe extension: render the reStructuredText habits of our docstrings as Markdown.

The docstrings are Google style with a few Sphinx touches that mkdocstrings would print
literally: roles (``:class:`~a.B` ``) become code spans, and a paragraph ending in ``::``
(which introduces an indented literal block, already rendered as code) ends in ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")
_LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)
_BARE_MARKER = re.compile(r"^\s*::\s*$", re.MULTILINE)


def _plain(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    if short:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def markdownify(text: str) -> str:
    """Return ``text`` with Sphinx roles and literal-block markers rewritten."""
    text = _ROLE.sub(_plain, text)
    text = _BARE_MARKER.sub("", text)
    return _LITERAL_MARKER.sub(":", text)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Called by griffe once per loaded package."""
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = markdownify(obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)
