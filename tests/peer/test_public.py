"""``from peer import ...`` is the public surface: everything a bot needs, and what the
README, the docs and the examples use, all listed in ``peer.__all__``."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import typing
from pathlib import Path

import peer
from peer import events

ROOT = Path(__file__).resolve().parents[2]
#: Modules run as their own process, never imported by the agent.
SCRIPTS = {"peer.media.display_child", "peer.__main__"}
#: Where users read how to use the agent: their code blocks and files.
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_every_listed_name_imports() -> None:
    missing = [name for name in peer.__all__ if not hasattr(peer, name)]
    assert missing == []
    assert len(set(peer.__all__)) == len(peer.__all__), "a name listed twice"


def test_every_event_is_exported() -> None:
    names = {cls.__name__ for cls in typing.get_args(events.Event)}
    assert names - set(peer.__all__) == set()


def package_modules() -> list[str]:
    found = pkgutil.walk_packages(peer.__path__, "peer.")
    return sorted(m.name for m in found if m.name not in SCRIPTS)


def test_every_error_class_is_exported() -> None:
    """Any exception class a module of ``peer`` defines (not private) is public: a bot
    that wants to catch it imports it from ``peer``."""
    errors = set()
    for name in package_modules():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not attr.startswith("_")
            ):
                errors.add(attr)
    assert errors, "no error class found: the search is broken"
    assert errors - set(peer.__all__) == set()


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def imported_from_peer(source: str) -> tuple[set[str], set[str]]:
    """The names taken from ``peer`` and the submodules of ``peer`` imported directly."""
    names: set[str] = set()
    deep: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "peer":
                names.update(alias.name for alias in node.names)
            elif node.module.startswith("peer."):
                deep.add(node.module)
        elif isinstance(node, ast.Import):
            deep.update(a.name for a in node.names if a.name.startswith("peer."))
    return names, deep


def sources() -> dict[str, str]:
    found = {f"{p.name}: block {i}": b for p in DOCS for i, b in enumerate(python_blocks(p))}
    found.update({f"examples/{p.name}": p.read_text() for p in EXAMPLES})
    return found


def test_the_docs_and_examples_import_from_peer_only() -> None:
    """No ``from peer.agent import ...`` in what users copy; every name they take from
    ``peer`` is listed."""
    used: set[str] = set()
    deep = {}
    for where, source in sources().items():
        names, modules = imported_from_peer(source)
        used |= names
        if modules:
            deep[where] = sorted(modules)
    assert deep == {}
    assert used, "no `from peer import` found: the search is broken"
    assert used - set(peer.__all__) == set()


def test_the_readme_shows_the_numpy_bot_as_it_is() -> None:
    """The README's bot (and the one of docs/bots.md) is ``examples/numpy_bot.py`` itself
    (run by test_examples), so they cannot drift; at most 15 lines of code (issue 18)."""
    bot = (ROOT / "examples" / "numpy_bot.py").read_text()
    pattern = r"`examples/numpy_bot.py`, the whole file.*?```python\n(.*?)```"
    for page in (ROOT / "README.md", ROOT / "docs" / "bots.md"):
        shown = re.search(pattern, page.read_text(), re.S)
        assert shown is not None, f"the bot section of {page.name} is gone"
        assert shown.group(1) == bot, page.name
    assert len([line for line in bot.splitlines() if line.strip()]) <= 15
