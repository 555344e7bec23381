"""MkDocs hook: a documented name without a docstring fails the strict build.

mkdocstrings leaves out what has no docstring (``show_if_no_docstring: false``) without a
word, so a public class or method added without one would silently vanish from the API
reference. This hook looks, with griffe (what mkdocstrings reads), at every object an
``::: identifier`` block of a page names (for a module: every name of its ``__all__``) and
at their public methods and properties, and logs a warning for each one without a
docstring: ``mkdocs build --strict`` (``./dev docs``, ``tests/test_docs.py``) then fails
naming it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import griffe

log = logging.getLogger("mkdocs.hooks.docstrings")

DIRECTIVE = re.compile(r"^::: +([\w.]+)", re.M)


#: The packages as griffe reads them, loaded once per build (``on_pre_build`` starts over)
#: from the folder of mkdocs.yml, as mkdocstrings' ``paths: [.]``.
_loader = griffe.GriffeLoader(search_paths=["."])


def on_pre_build(config: Any, **_: Any) -> None:
    global _loader
    _loader = griffe.GriffeLoader(search_paths=[str(Path(config.config_file_path).parent)])


def _load(path: str) -> griffe.Object | griffe.Alias:
    package = path.split(".")[0]
    if package not in _loader.modules_collection:
        _loader.load(package)
        _loader.resolve_aliases(external=True)  # loads what it re-exports from elsewhere
    return _loader.modules_collection.get_member(path)


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object:
    return obj.final_target if isinstance(obj, griffe.Alias) else obj


def _is_public_callable(member: griffe.Object | griffe.Alias) -> bool:
    if member.name.startswith("_") or isinstance(member, griffe.Alias):
        return False
    return member.is_function or member.is_class or "property" in member.labels


def undocumented(path: str) -> list[str]:
    """The objects ``::: path`` renders (with their public methods) that have no docstring."""
    root = _target(_load(path))
    if root.is_module and root.exports is not None:
        objects = [_target(root[name]) for name in root.exports]
    else:
        objects = [root]
    missing = []
    for obj in objects:
        if not obj.docstring:
            missing.append(obj.path)
        if obj.is_class:
            missing += [
                m.path for m in obj.members.values() if _is_public_callable(m) and not m.docstring
            ]
    return missing


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    for path in DIRECTIVE.findall(markdown):
        for name in undocumented(path):
            log.warning(
                "%s: %s has no docstring (the API reference would leave it out)",
                page.file.src_path,
                name,
            )
    return markdown


#: Sphinx roles in docstrings (``:class:`Recorder```): Markdown shows the name as code, with
#: the role before it as text; the role goes.
ROLE = re.compile(r":(?:class|attr|meth|func|mod|data|exc|obj):(?=<code>)")


def on_page_content(html: str, **_: Any) -> str:
    return ROLE.sub("", html)
