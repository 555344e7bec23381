"""The documentation site builds with no warning (``mkdocs build --strict``, as ``./dev docs``),
its API reference shows every public name of ``peer``, and a public name without a docstring
fails the build (``docs/hooks.py``)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import peer
from tests.support import REPO, seconds


def mkdocs_build(config: Path, site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    for package in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        assert importlib.util.find_spec(package) is not None, (
            f"{package} is not installed: the docs need the test extra (pip install -e '.[test]')"
        )
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)]
    return subprocess.run(
        [*command, "-d", str(site)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds(90),
    )


def test_the_site_builds_without_a_warning(tmp_path: Path) -> None:
    built = mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site", REPO)
    output = built.stdout + built.stderr
    assert built.returncode == 0, output
    assert "WARNING" not in output, output
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    shown = set(re.findall(r'id="peer\.(\w+)"', api))
    assert set(peer.__all__) - shown == set(), "public names missing from the API reference"
    for page in ("getting-started", "bots", "recording", "server", "benchmarks", "PROTOCOL"):
        assert (tmp_path / "site" / page / "index.html").exists(), page
    assert readme_links_missing(tmp_path / "site") == []


def readme_links_missing(site: Path) -> list[str]:
    """The README's links into docs/ (outside the site, so mkdocs does not check them) whose
    page or anchor the built site lacks."""
    missing = []
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", readme)
    assert links, "no link into docs/ found in the README: the search is broken"
    for target, anchor in links:
        if not target.endswith(".md"):
            assert (REPO / target).exists(), target
            continue
        name = Path(target).stem
        page = site / ("index.html" if name == "index" else f"{name}/index.html")
        if not page.exists() or (anchor and f'id="{anchor}"' not in page.read_text()):
            missing.append(f"{target}#{anchor}" if anchor else target)
    return missing


def test_a_public_name_without_a_docstring_fails_the_build(tmp_path: Path) -> None:
    """The hook against a package of two exported functions, one without a docstring."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text(
        '"""A package."""\n\n__all__ = ["documented", "bare"]\n\n\n'
        'def documented() -> None:\n    """Has one."""\n\n\n'
        "def bare() -> None:\n    pass\n"
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# API\n\n::: pkg\n")
    (tmp_path / "mkdocs.yml").write_text(
        "site_name: t\n"
        f"hooks: [{REPO / 'docs' / 'hooks.py'}]\n"
        "plugins:\n  - mkdocstrings:\n      handlers:\n        python:\n          paths: [.]\n"
    )
    built = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site", tmp_path)
    output = built.stdout + built.stderr
    assert built.returncode != 0, output
    assert "pkg.bare has no docstring" in output, output
    assert "pkg.documented" not in output, output
