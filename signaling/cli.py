"""``meshpeer serve``: run the signaling server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import ssl
from collections.abc import Sequence

from aiohttp import web

from signaling.ice import parse_ice_server
from signaling.server import ServerConfig, SignalingServer
from signaling.session import Limits

log = logging.getLogger(__name__)

_DEFAULTS = Limits()


def _number(text: str, kind: type[int] | type[float], low: float, inclusive: bool) -> float:
    """Parse a flag value; a bad one becomes argparse's usage error (exit code 2)."""
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if not math.isfinite(value) or value < low or (value == low and not inclusive):
        bound = f"at least {low:g}" if inclusive else f"more than {low:g}"
        raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
    return value


def _count(text: str) -> int:
    return int(_number(text, int, 1, inclusive=True))


def _seconds(text: str) -> float:
    return _number(text, float, 0, inclusive=False)


def _port(text: str) -> int:
    port = int(_number(text, int, 0, inclusive=True))
    if port > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), got {text}")
    return port


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    net = parser.add_argument_group("network")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the server)",
    )
    net.add_argument("--port", type=_port, default=8080, help="port to bind (default 8080)")
    net.add_argument("--certfile", help="TLS certificate (PEM): serve wss:// and https://")
    net.add_argument("--keyfile", help="TLS private key (PEM), with --certfile")
    net.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="ICE server offered to browser pages, e.g. stun:host:3478 or "
        "turn:user:pass@host:3478 (repeatable; default none)",
    )
    lim = parser.add_argument_group("limits")
    lim.add_argument(
        "--max-frame-bytes",
        type=_count,
        default=_DEFAULTS.max_frame_bytes,
        help="largest frame accepted (default %(default)s)",
    )
    lim.add_argument(
        "--max-peers",
        type=_count,
        default=_DEFAULTS.max_peers,
        help="peers per room (default %(default)s)",
    )
    lim.add_argument(
        "--join-timeout",
        type=_seconds,
        default=_DEFAULTS.join_timeout,
        help="seconds a new connection has to send join (default %(default)s)",
    )
    lim.add_argument(
        "--heartbeat",
        type=_seconds,
        default=_DEFAULTS.heartbeat,
        help="seconds between pings; no pong within half of it drops the client "
        "(default %(default)s)",
    )
    lim.add_argument(
        "--probe-timeout",
        type=_seconds,
        default=_DEFAULTS.probe_timeout,
        help="seconds an ID's holder has to answer a ping when the ID is asked "
        "for again (default %(default)s)",
    )
    lim.add_argument(
        "--rate",
        type=_seconds,
        default=_DEFAULTS.rate,
        help="messages per second per connection, sustained (default %(default)s)",
    )
    lim.add_argument(
        "--burst",
        type=_count,
        default=_DEFAULTS.burst,
        help="messages per connection allowed above --rate in a burst (default %(default)s)",
    )
    lim.add_argument(
        "--send-queue",
        type=_count,
        default=_DEFAULTS.send_queue,
        help="messages queued for one client before it is dropped as too slow "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--no-uvloop",
        action="store_true",
        help="use asyncio's default event loop even when uvloop is installed",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    limits = Limits(
        max_frame_bytes=args.max_frame_bytes,
        max_peers=args.max_peers,
        join_timeout=args.join_timeout,
        heartbeat=args.heartbeat,
        probe_timeout=args.probe_timeout,
        rate=args.rate,
        burst=args.burst,
        send_queue=args.send_queue,
    )
    ice_servers = tuple(parse_ice_server(url) for url in args.ice_server)
    return ServerConfig(limits=limits, ice_servers=ice_servers)


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """uvloop when installed and wanted (faster relaying), else asyncio's loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def serve(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    ssl_context = None
    if args.certfile or args.keyfile:
        if not (args.certfile and args.keyfile):
            log.error("--certfile and --keyfile go together")
            return 2
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as exc:
            log.error("cannot load TLS certificate: %s", exc)
            return 2
    server = SignalingServer(config)
    scheme = "wss" if ssl_context else "ws"
    loop = new_event_loop(not args.no_uvloop)
    log.info(
        "signaling on %s://%s:%d/ws (loop: %s)",
        scheme,
        args.host,
        args.port,
        type(loop).__module__.split(".")[0],
    )
    try:
        web.run_app(
            server.app(),
            host=args.host,
            port=args.port,
            ssl_context=ssl_context,
            print=None,
            loop=loop,
            shutdown_timeout=5,
            access_log=None,
        )
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m signaling", description=__doc__)
    add_serve_arguments(parser)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return serve(args)
