"""``meshpeer serve``: run the signaling server."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from aiohttp import web, web_response

from signaling.admission import Origin, OriginError, normalize_origin
from signaling.auth import SecretError, check_secret, mint_token
from signaling.event_loop import loop_name, new_event_loop
from signaling.flags import (
    BYTES,
    BYTES_PER_S,
    DURATION,
    MESSAGES,
    MSG_PER_S,
    N_PER_MIN,
    SECONDS,
    N,
    cap,
    count,
    duration,
    port,
    rate,
    seconds,
)
from signaling.headers import SERVER_NAME
from signaling.ice import IceServerError, parse_ice_server
from signaling.redis_registry import RedisRegistry
from signaling.server import ServerConfig, SignalingServer
from signaling.session import Limits
from signaling.turn import DEFAULT_TTL, TurnMinter

log = logging.getLogger(__name__)

_DEFAULTS = Limits()


@dataclass(frozen=True, slots=True)
class _LimitFlag:
    """How one ``Limits`` field is set from the command line: ``--max-peers`` for
    ``max_peers``, its value type (a bad value is a usage error naming the rule), its
    metavar (the unit, see :mod:`signaling.flags`), its help."""

    type: Callable[[str], float]
    metavar: str
    help: str


#: One flag per ``Limits`` field, in the order of the fields; a field missing here fails
#: at start-up (``_limit_flags``), so a new limit cannot ship without its flag.
_LIMIT_FLAGS = {
    "max_frame_bytes": _LimitFlag(count, BYTES, "largest frame accepted (default %(default)s)"),
    "max_peers": _LimitFlag(
        count,
        N,
        "peers per room (default %(default)s): a full mesh of N browsers sends N-1 copies of "
        "every stream, each encoded apart, and receives N-1: at 8, each browser encodes and "
        "uploads its camera 7 times and decodes 7. Raise it for rooms of bots or data only",
    ),
    "join_timeout": _LimitFlag(
        seconds, SECONDS, "seconds a new connection has to send join (default %(default)s)"
    ),
    "heartbeat": _LimitFlag(
        seconds,
        SECONDS,
        "seconds between pings; no pong within half of it drops the client (default %(default)s)",
    ),
    "probe_timeout": _LimitFlag(
        seconds,
        SECONDS,
        "seconds an ID's holder has to answer a ping when the ID is asked "
        "for again (default %(default)s)",
    ),
    "rate": _LimitFlag(
        rate, MSG_PER_S, "messages per second per connection, sustained (default %(default)s)"
    ),
    "burst": _LimitFlag(
        count,
        MESSAGES,
        "messages per connection allowed above --rate in a burst (default %(default)s)",
    ),
    "byte_rate": _LimitFlag(
        rate,
        BYTES_PER_S,
        "bytes per second a connection's messages may cost to deliver, sustained: a "
        "broadcast costs its size times the members it reaches (default %(default)d)",
    ),
    "byte_burst": _LimitFlag(
        count,
        BYTES,
        "bytes of deliveries per connection allowed above --byte-rate in a burst "
        "(default %(default)s)",
    ),
    "send_queue": _LimitFlag(
        count,
        MESSAGES,
        "messages queued for one client before it is dropped as too slow (default %(default)s)",
    ),
    "ip_connections": _LimitFlag(
        cap,
        N,
        "open WebSockets per client address, more get HTTP 429 (default %(default)s; 0: no cap)",
    ),
    "ip_connects_per_minute": _LimitFlag(
        cap,
        N_PER_MIN,
        "new WebSockets (join attempts) per client address per minute, more get HTTP 429 "
        "(default %(default)s; 0: no cap)",
    ),
}


def _limit_flags() -> list[tuple[str, _LimitFlag]]:
    """Each ``Limits`` field with its flag, in field order."""
    return [(f.name, _LIMIT_FLAGS[f.name]) for f in fields(Limits)]


def _flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _origin(text: str) -> str:
    try:
        return normalize_origin(text)
    except OriginError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _public_url(text: str) -> str:
    try:
        Origin.parse(text, page=True)
    except OriginError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def _minted_turn_url(text: str) -> str:
    try:
        return parse_ice_server(text, minted=True).url
    except IceServerError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def read_secret(path: Path | None, env: str, what: str) -> bytes | None:
    """A secret from a file (trailing newline stripped) or the environment; never a flag value,
    which every user of the machine could read in ``ps``."""
    if path is not None:
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise SecretError(f"cannot read the {what} file: {exc}") from None
        if not secret:
            raise SecretError(f"the {what} file {path} is empty")
        return secret
    value = os.environ.get(env, "").strip()
    return value.encode() if value else None


#: What ``serve --help`` says above its ICE flags: which one for what.
ICE_SERVERS_HELP = (
    "--ice-server: a STUN server, or a TURN server whose fixed user:pass every peer and page "
    "sees (a LAN, people you trust); --turn-url: your own TURN server (coturn "
    "use-auth-secret), each peer getting its own credentials that expire: the one for rooms "
    "on the internet. Peers get the --ice-server URLs first. With neither, host candidates "
    "only: enough on one network"
)


def add_log_level(group: argparse._ArgumentGroup, shown: str, default: str | None) -> None:
    """``--log-level`` in a command's ``run`` group; ``meshpeer`` gives ``default``
    ``SUPPRESS``, so a level given before the subcommand stays, and ``shown`` its own."""
    group.add_argument(
        "--log-level",
        default=default,
        metavar="LEVEL",
        help=f"DEBUG, INFO, WARNING or ERROR (default {shown})",
    )


def add_loop_flag(group: argparse._ArgumentGroup) -> None:
    """``--no-uvloop`` in a command's ``run`` group (every long-running command has it)."""
    group.add_argument(
        "--no-uvloop",
        action="store_true",
        help="run on asyncio's own event loop even when uvloop is installed",
    )


def add_serve_arguments(parser: argparse.ArgumentParser, log_level: str = "INFO") -> None:
    """``serve``'s flags by purpose; ``log_level``: ``--log-level``'s default (``meshpeer``
    gives ``SUPPRESS``, so the subcommand keeps a level given before it)."""
    net = parser.add_argument_group("network")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="HOST",
        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the server)",
    )
    net.add_argument(
        "--port", type=port, default=8080, metavar="PORT", help="port to bind (default 8080)"
    )
    net.add_argument(
        "--certfile", metavar="FILE", help="TLS certificate (PEM): serve wss:// and https://"
    )
    net.add_argument("--keyfile", metavar="FILE", help="TLS private key (PEM), with --certfile")
    ice = parser.add_argument_group(
        "ICE servers (how peers reach each other through NATs)", ICE_SERVERS_HELP
    )
    ice.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="ICE server handed to every peer, e.g. stun:host:3478 or "
        "turn:user:pass@host:3478 (repeatable; default none)",
    )
    ice.add_argument(
        "--turn-url",
        type=_minted_turn_url,
        action="append",
        default=[],
        metavar="URL",
        help="TURN server whose credentials are minted per peer, e.g. "
        "turn:turn.example.com:3478?transport=udp (repeatable; needs --turn-secret-file; "
        "use with --auth-secret-file, else anyone who reaches this server may relay)",
    )
    ice.add_argument(
        "--turn-secret-file",
        type=Path,
        metavar="FILE",
        help="the TURN server's static-auth-secret (coturn use-auth-secret), from FILE, at "
        "least 32 bytes (also $MESHPEER_TURN_SECRET)",
    )
    ice.add_argument(
        "--turn-ttl",
        type=duration,
        default=DEFAULT_TTL,
        metavar=DURATION,
        help="lifetime of minted TURN credentials, never beyond the access token's: seconds, "
        "or 90m, 1h ... (default 1h)",
    )
    access = parser.add_argument_group("access (docs/internet.md)")
    access.add_argument(
        "--auth-secret-file",
        type=Path,
        metavar="FILE",
        help="require an HS256 access token (JWT) signed with the secret in FILE for every join "
        "(also $MESHPEER_AUTH_SECRET; default: no tokens, anyone may join any room)",
    )
    access.add_argument(
        "--auth-audience",
        metavar="NAME",
        help="tokens must name NAME in their 'aud' claim (default: tokens naming any audience "
        "are refused, being minted for another service)",
    )
    access.add_argument(
        "--allow-origin",
        type=_origin,
        action="append",
        default=[],
        metavar="ORIGIN",
        help="browser origin allowed to connect besides the server's own, e.g. "
        "https://app.example.com (repeatable); '*': any site's pages (default: only the page "
        "served here, and --public-url; clients that send no Origin, bots, are not affected)",
    )
    access.add_argument(
        "--public-url",
        type=_public_url,
        metavar="URL",
        help="the URL people open the page at through your reverse proxy, e.g. "
        "https://rooms.example.com/: its origin is this server's own (default: the origin "
        "of each request's scheme and Host)",
    )
    access.add_argument(
        "--trust-proxy",
        action="store_true",
        help="count clients by the last X-Forwarded-For address, the one your reverse proxy "
        "appends (an IPv6 client by its /64, as without a proxy)",
    )
    cluster = parser.add_argument_group("several nodes")
    cluster.add_argument(
        "--redis-url",
        default=os.environ.get("MESHPEER_REDIS_URL") or None,
        metavar="URL",
        help="share rooms with the other nodes using this Redis, redis://HOST:PORT/DB "
        "(default $MESHPEER_REDIS_URL; none: rooms live in this process only)",
    )
    cluster.add_argument(
        "--node-id",
        metavar="NAME",
        help="this node's name among those sharing rooms (default: random)",
    )
    lim = parser.add_argument_group("limits")
    for name, flag in _limit_flags():
        lim.add_argument(
            _flag_name(name),
            type=flag.type,
            default=getattr(_DEFAULTS, name),
            metavar=flag.metavar,
            help=flag.help,
        )
    run = parser.add_argument_group("run")
    add_log_level(run, "INFO", log_level)
    add_loop_flag(run)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    limits = Limits(**{name: getattr(args, name) for name, _ in _limit_flags()})
    ice_servers = tuple(parse_ice_server(url) for url in args.ice_server)
    auth_secret = read_secret(args.auth_secret_file, "MESHPEER_AUTH_SECRET", "auth secret")
    if auth_secret is not None:
        check_secret(auth_secret)
    elif args.auth_audience is not None:
        raise SecretError("--auth-audience needs --auth-secret-file (or $MESHPEER_AUTH_SECRET)")
    turn_secret = read_secret(args.turn_secret_file, "MESHPEER_TURN_SECRET", "TURN secret")
    turn = None
    if args.turn_url:
        if turn_secret is None:
            raise SecretError("--turn-url needs --turn-secret-file (or $MESHPEER_TURN_SECRET)")
        turn = TurnMinter(
            tuple(parse_ice_server(u, minted=True) for u in args.turn_url),
            check_secret(turn_secret, "TURN secret"),
            args.turn_ttl,
        )
    elif args.turn_secret_file is not None:
        raise SecretError("--turn-secret-file needs at least one --turn-url")
    return ServerConfig(
        limits=limits,
        ice_servers=ice_servers,
        auth_secret=auth_secret,
        auth_audience=args.auth_audience,
        allowed_origins=tuple(args.allow_origin),
        public_url=args.public_url,
        trust_proxy=args.trust_proxy,
        turn=turn,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


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
    if config.auth_secret is None and not _is_loopback(args.host):
        log.warning(
            "no --auth-secret-file: anyone who can reach %s:%d can join any room",
            args.host,
            args.port,
        )
    if config.turn is not None and config.auth_secret is None:
        # On loopback too: a reverse proxy may publish it.
        log.warning(
            "--turn-url without --auth-secret-file: anyone who can reach this server gets "
            "TURN credentials, an open relay through your TURN server"
        )
    registry = None
    if args.redis_url:
        registry = RedisRegistry(args.redis_url, config.limits.max_peers, node=args.node_id)
        log.info("node %s: rooms shared through %s", registry.node, args.redis_url)
    elif args.node_id:
        log.error("--node-id goes with --redis-url")
        return 2
    server = SignalingServer(config, registry)
    scheme = "wss" if ssl_context else "ws"
    loop = new_event_loop(not args.no_uvloop)
    log.info(
        "signaling on %s://%s:%d/ws (loop: %s)",
        scheme,
        args.host,
        args.port,
        loop_name(loop),
    )
    # What aiohttp answers itself, before any route (a request it cannot parse), takes its
    # Server header from this module constant: our name there too, not aiohttp's version.
    web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]
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
    except ConnectionError as exc:  # Redis, at start-up
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        return 1
    return 0


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    token = parser.add_argument_group("token")
    token.add_argument(
        "--secret-file",
        type=Path,
        metavar="FILE",
        help="the server's --auth-secret-file (default: $MESHPEER_AUTH_SECRET)",
    )
    token.add_argument("--room", required=True, metavar="ROOM", help="the room the token admits to")
    token.add_argument(
        "--id", dest="peer_id", required=True, metavar="ID", help="the peer ID it admits as"
    )
    token.add_argument(
        "--ttl",
        type=duration,
        default=3600.0,
        metavar=DURATION,
        help="how long it is valid: seconds, or 90m, 1h, 7d ... (default 1h)",
    )
    token.add_argument(
        "--audience",
        metavar="NAME",
        help="the server's --auth-audience, put in the token's 'aud' claim (default: none)",
    )


def print_token(args: argparse.Namespace) -> int:
    """``meshpeer token``: print a token on stdout, for a room link or ``join --token``."""
    try:
        secret = read_secret(args.secret_file, "MESHPEER_AUTH_SECRET", "auth secret")
        if secret is None:
            raise SecretError("give --secret-file FILE (or set $MESHPEER_AUTH_SECRET)")
        token = mint_token(secret, args.room, args.peer_id, args.ttl, audience=args.audience)
    except SecretError as exc:
        print(f"meshpeer token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m signaling", description=__doc__)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return serve(args)
