"""The release check: ``python -m build`` makes the sdist and wheel, the wheel installs into a
fresh virtual environment with its declared dependencies, and from that install (run in an
empty folder, the source tree out of reach) ``meshpeer serve`` serves the page and
``meshpeer demo --duration 3`` writes its files.

Dependencies come from a wheelhouse (``.cache/wheels``, filled by ``pip download`` the first
time and whenever a declared dependency is missing from it) with ``--no-index``: the same
resolution pip does from an index, without its round trips (installing from the index took
20 s here, from the wheelhouse 7 s). Measured on 2 busy cores: build 5-7 s, install 7 s (10 s
when the wheelhouse is filled), serve 2-3 s, demo 5-6 s: 22-26 s in all."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import aiohttp

from tests.support import REPO, eventually, free_port, seconds

WHEELHOUSE = REPO / ".cache" / "wheels"
STATIC = REPO / "signaling" / "static"


def run(command: list[str], what: str, timeout: float, cwd: Path, env: dict[str, str]) -> str:
    """Run ``command``; fail with its output and ``what`` it was for when it fails."""
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=seconds(timeout)
    )
    if done.returncode != 0:
        raise AssertionError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return done.stdout


def isolated_env() -> dict[str, str]:
    """The environment without what would import the source tree instead of the install."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def install(wheel: Path, venv: Path, cwd: Path, env: dict[str, str]) -> None:
    """Install ``wheel`` and its dependencies into the fresh ``venv`` from the wheelhouse,
    filling the wheelhouse from the index first if it lacks something."""
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    offline = [*pip, "install", "--no-compile", "--no-index", "--find-links", str(WHEELHOUSE)]
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [*offline, str(wheel)], cwd=cwd, env=env, capture_output=True, timeout=seconds(120)
    )
    if done.returncode == 0:
        return
    fetch = [*pip, "download", "--dest", str(WHEELHOUSE), str(wheel)]
    run(fetch, "pip download of the dependencies", 300, cwd, env)
    for own in WHEELHOUSE.glob("meshpeer-*"):  # the wheel under test comes from the build
        own.unlink()
    run([*offline, str(wheel)], "pip install of the wheel", 120, cwd, env)


async def test_the_wheel_installs_fresh_and_serves_and_runs_the_demo(tmp_path: Path) -> None:
    started = time.monotonic()
    dist, cwd = tmp_path / "dist", tmp_path / "elsewhere"
    cwd.mkdir()
    env = isolated_env()
    build = [sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)]
    run(build, "python -m build", 180, cwd, env)
    (wheel,) = dist.glob("meshpeer-*.whl")
    (sdist,) = dist.glob("meshpeer-*.tar.gz")
    built = time.monotonic()

    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        assert f"{top}/LICENSE" in tar.getnames(), "the sdist has no LICENSE"
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    page = {f"signaling/static/{f.name}" for f in STATIC.iterdir() if f.is_file()}
    assert "signaling/static/index.html" in page
    assert not page - names, f"static files missing from the wheel: {sorted(page - names)}"
    assert {"signaling/py.typed", "peer/py.typed"} <= names, "py.typed missing from the wheel"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE in wheel"

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], "python -m venv", 60, cwd, env)
    install(wheel, venv, cwd, env)
    meshpeer = str(venv / "bin" / "meshpeer")
    where = run(
        [str(venv / "bin" / "python"), "-c", "import peer, signaling; print(signaling.__file__)"],
        "importing the installed packages",
        30,
        cwd,
        env,
    )
    assert where.startswith(str(venv)), f"imported {where.strip()}, not the install"
    installed = time.monotonic()

    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as sink:
        serve = await asyncio.create_subprocess_exec(
            meshpeer, "serve", "--host", "127.0.0.1", "--port", str(port),
            cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:

            async def page_served() -> str | None:
                assert serve.returncode is None, f"meshpeer serve exited: {log.read_text()}"
                try:
                    async with http.get(f"http://127.0.0.1:{port}/") as response:
                        return await response.text() if response.status == 200 else None
                except aiohttp.ClientConnectionError:
                    return None

            html = await eventually(page_served, seconds(30), "meshpeer serve's page")
            assert "app.js" in html
            async with http.get(f"http://127.0.0.1:{port}/static/app.js") as response:
                assert response.status == 200
    finally:
        serve.terminate()
        try:
            await asyncio.wait_for(serve.wait(), seconds(5))
        except TimeoutError:
            serve.kill()
            await serve.wait()
    served = time.monotonic()

    out = tmp_path / "demo"
    run([meshpeer, "demo", "--duration", "3", "--out", str(out)], "meshpeer demo", 90, cwd, env)
    assert (out / "mosaic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recordings = list((out / "recordings").iterdir())
    assert recordings and all(r.stat().st_size > 1000 for r in recordings), recordings
    print(
        f"build {built - started:.1f} s, install {installed - built:.1f} s, "
        f"serve {served - installed:.1f} s, demo {time.monotonic() - served:.1f} s"
    )
