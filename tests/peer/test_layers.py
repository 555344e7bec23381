"""The agent's import graph, read from the source: no cycle inside ``peer``, and only the
wire protocol from ``signaling`` (the ``meshpeer`` command and its demo front the server
as well, so they alone may import it)."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import peer

ROOT = Path(peer.__file__).parent
#: What the agent may import of ``signaling``: the messages and the ICE server URLs.
WIRE = {"signaling.protocol", "signaling.ice"}
#: The command (``meshpeer serve``/``token``/``join``/``demo``), ``join``'s body and the
#: in-process demo: they also pick the event loop (``signaling.event_loop``).
FRONT = {"peer.cli", "peer.runner", "peer.demo"}


def imports() -> dict[str, set[str]]:
    """Every module of ``peer`` and the modules it imports (typing-only ones included)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = found
    return graph


def test_no_import_cycle_inside_peer() -> None:
    graph = imports()
    packages = {"peer", "peer.media"}  # their __init__ imports nothing
    inside = {
        module: {m for m in found if m in graph and m not in packages and m != module}
        for module, found in graph.items()
    }
    try:
        TopologicalSorter(inside).prepare()
    except CycleError as exc:
        raise AssertionError(f"import cycle in peer: {' -> '.join(exc.args[1])}") from None


def test_only_the_package_imports_the_public_surface() -> None:
    """``peer/__init__`` imports everything; a module inside that took a name from it
    (``from peer import Agent``) would import itself through it: only submodules may be
    taken from the package (``from peer import events``)."""
    submodules = {p.stem for p in ROOT.glob("*.py")} | {
        p.name for p in ROOT.iterdir() if p.is_dir()
    }
    wrong: dict[str, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        if path == ROOT / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "peer" and node.level == 0:
                names = [a.name for a in node.names if a.name not in submodules]
                if names:
                    wrong.setdefault(str(path.relative_to(ROOT.parent)), []).extend(names)
    assert wrong == {}


def wire(name: str) -> bool:
    """``name`` is a wire module or a name in one (``signaling.protocol.PeerId``)."""
    return any(name == module or name.startswith(module + ".") for module in WIRE)


def test_the_agent_imports_only_the_wire_protocol_of_signaling() -> None:
    wrong = {
        module: sorted(m for m in found if m.startswith("signaling.") and not wire(m))
        for module, found in imports().items()
        if module not in FRONT
    }
    assert {module: found for module, found in wrong.items() if found} == {}
