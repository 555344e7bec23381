"""The server's HTTP side besides the WebSocket: ``/healthz``, ``/metrics``,
``/config.json`` (the page's ICE servers, behind the access token when auth is on), the page
and its static modules, and the headers every response carries (:mod:`signaling.headers`).
They read the server's state and change none of it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from signaling.auth import TokenRefused, TokenVerifier
from signaling.headers import security_headers
from signaling.ice import IceServer
from signaling.metrics import CONTENT_TYPE, ServerState, exposition
from signaling.protocol import PeerId

__all__ = [
    "STATIC_DIR",
    "HttpEndpoints",
    "ServerView",
    "add_security_headers",
    "bearer",
    "revalidate_page",
]

STATIC_DIR = Path(__file__).parent / "static"


def bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def revalidate_page(request: web.Request, response: web.StreamResponse) -> None:
    """The page's modules must come from one version: browsers revalidate them (cheap 304s)
    instead of mixing cached old modules with new ones after an upgrade."""
    if request.path == "/" or request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-cache"


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response: the page's, JSON, metrics, errors, WebSocket refusals (headers.py)."""
    response.headers.update(security_headers(request.headers.get("Host")))


class ServerView(Protocol):
    """What the endpoints read of the server (:class:`signaling.server.SignalingServer`)."""

    shutting_down: bool
    verifier: TokenVerifier | None
    metrics_registry: CollectorRegistry

    def metrics_state(self) -> ServerState: ...

    def ice_servers_for(
        self, peer: PeerId, now: float, until: float | None = None
    ) -> tuple[IceServer, ...]: ...


class HttpEndpoints:
    """The HTTP handlers of one server."""

    def __init__(self, server: ServerView) -> None:
        self._server = server

    async def health(self, request: web.Request) -> web.Response:
        state = self._server.metrics_state()
        health: dict[str, object] = {
            "status": "stopping" if self._server.shutting_down else "ok",
            "rooms": state.rooms,
            "peers": state.peers,
            "connections": state.connections,
            "uptime": round(state.uptime, 3),
        }
        cluster = state.cluster
        if cluster is not None:
            rtt = cluster.redis_rtt
            health["redis"] = {
                "state": "ok" if cluster.redis_up else "unreachable",
                "node": cluster.node,
                "rtt_ms": round(rtt * 1000, 3) if rtt is not None else None,
            }
        return web.json_response(health)

    async def metrics(self, request: web.Request) -> web.Response:
        body = exposition(self._server.metrics_registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def config(self, request: web.Request) -> web.Response:
        """The page's ICE servers; with auth on, only for a valid token (TURN is minted for it)."""
        peer, now, until = PeerId("page"), time.time(), None
        if self._server.verifier is not None:
            token = bearer(request.headers.get("Authorization")) or request.query.get("token")
            try:
                grant = self._server.verifier.verify(token, now)
            except TokenRefused as exc:
                return web.json_response(
                    {"error": exc.code.value, "message": str(exc)},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            peer, until = grant.peer_id, grant.expires + self._server.verifier.leeway
        servers = self._server.ice_servers_for(peer, now, until)
        return web.json_response(
            {"iceServers": [s.to_json() for s in servers]}, headers={"Cache-Control": "no-store"}
        )

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")
