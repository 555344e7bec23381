"""The ``meshpeer`` command: ``serve`` runs the signaling server, ``join`` a peer, ``demo`` both,
``devices`` lists the sound and video devices ``join`` can use."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from signaling.auth import SecretError
from signaling.cli import (
    add_serve_arguments,
    add_token_arguments,
    print_token,
    read_secret,
    serve,
)
from signaling.flags import count, seconds

#: Libraries whose INFO logging is per packet or per candidate pair: quiet unless --log-level DEBUG.
_NOISY_LOGGERS = ("aioice", "aiortc", "aiohttp.access")


def add_media_arguments(
    parser: argparse.ArgumentParser, *, width: int, height: int, fps: int, join: bool = False
) -> None:
    """The sources and their settings; ``join``: a recorder sends nothing unless told to
    (``--video``/``--audio`` left as None: :func:`peer.runner.sources` decides)."""
    media = parser.add_argument_group("media")
    unless = "; none with --record, which then sends nothing unless given a source" if join else ""
    media.add_argument(
        "--video",
        default=None if join else "synthetic",
        help="video to send: synthetic, webcam[:/dev/videoN], file:PATH or a URL, none "
        f"(default synthetic{unless})",
    )
    media.add_argument(
        "--audio",
        default=None if join else "tone",
        help=f"audio to send: tone, mic[:DEVICE] (the system's input; names: meshpeer "
        f"devices), file:PATH or a URL, none (default tone{unless})",
    )
    media.add_argument(
        "--width", type=count, default=width, help="video width (default %(default)s)"
    )
    media.add_argument(
        "--height", type=count, default=height, help="video height (default %(default)s)"
    )
    media.add_argument(
        "--fps", type=count, default=fps, help="frames per second (default %(default)s)"
    )
    media.add_argument(
        "--encoding",
        choices=["shared", "per-peer"],
        default="shared",
        help="shared: encode each source once for every peer; per-peer: once per peer "
        "(aiortc's way, for comparison) (default shared)",
    )
    media.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="stun:host:port, turn:user:pass@host:port or turns:... (repeatable; default none, "
        "host candidates only)",
    )


def _token_file(text: str) -> str:
    """The token in a file (``--token-file``): out of the command line, where ps shows it."""
    try:
        token = read_secret(Path(text), "", "access token")
    except SecretError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return (token or b"").decode("utf-8", "replace")


def _frame_size(text: str) -> tuple[int, int]:
    """``WxH`` with even, positive numbers (``--record-room-size``)."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(f"expected WxH such as 1280x720, got {text!r}")
    size = int(width), int(height)
    if min(size) <= 0 or size[0] % 2 or size[1] % 2:
        raise argparse.ArgumentTypeError(f"width and height must be even and positive: {text!r}")
    return size


def add_join_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url",
        nargs="?",
        default="ws://127.0.0.1:8080/ws",
        help="signaling server, ws://host:port/ws (default %(default)s)",
    )
    parser.add_argument("--room", help="room to join (default: the server's default room)")
    parser.add_argument("--id", dest="peer_id", help="peer ID (default: a random peer-xxxxxx)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token",
        default=os.environ.get("MESHPEER_TOKEN") or None,
        help="access token for a server that requires one (default: $MESHPEER_TOKEN); "
        "without --id, the ID is the token's. Prefer $MESHPEER_TOKEN or --token-file: "
        "a --token value shows in ps to every user of the machine",
    )
    token.add_argument(
        "--token-file",
        dest="token",
        type=_token_file,
        metavar="FILE",
        help="read the access token from FILE instead",
    )
    add_media_arguments(parser, width=640, height=480, fps=30, join=True)
    out = parser.add_argument_group("output")
    out.add_argument(
        "--display",
        action="store_true",
        help="show everyone in a window, who is speaking and who is muted (keys: m mutes the "
        "microphone, v stops the camera, f full screen, q leaves); plays the room too unless "
        "--no-speaker",
    )
    speaker = out.add_mutually_exclusive_group()
    speaker.add_argument(
        "--speaker",
        nargs="?",
        const="",
        metavar="DEVICE",
        help="play everyone's audio, mixed, on DEVICE (default: the system's output; names: "
        "meshpeer devices). No echo cancellation: with --audio mic, use headphones, or the "
        "others hear themselves",
    )
    speaker.add_argument(
        "--no-speaker", action="store_true", help="with --display: do not play the room's audio"
    )
    out.add_argument(
        "--record",
        type=Path,
        metavar="DIR",
        help="record every remote peer to DIR: one .mkv per peer with all its tracks, the "
        "packets as they came (no decoding); sends nothing unless --video/--audio are given",
    )
    out.add_argument(
        "--record-transcode",
        action="store_true",
        help="with --record: decode and encode again into one fixed format (H.264 and "
        "Opus), each peer's first camera and microphone only; costs a decoder and an "
        "encoder per peer",
    )
    out.add_argument(
        "--record-room",
        type=Path,
        metavar="FILE",
        help="record the whole room to one Matroska FILE: everyone's video as a labelled "
        "mosaic and everyone's audio mixed, encoded once",
    )
    out.add_argument(
        "--record-room-size",
        type=_frame_size,
        default=(1280, 720),
        metavar="WxH",
        help="--record-room picture size (default 1280x720)",
    )
    out.add_argument(
        "--record-room-fps",
        type=count,
        default=15,
        metavar="N",
        help="--record-room frames per second (default %(default)s)",
    )
    out.add_argument(
        "--snapshot", type=Path, metavar="FILE", help="write a PNG mosaic of everyone to FILE"
    )
    out.add_argument(
        "--duration",
        type=seconds,
        metavar="S",
        help="leave after S seconds (default: run until Ctrl-C)",
    )
    out.add_argument(
        "--stats-interval",
        type=seconds,
        default=2.0,
        metavar="S",
        help="seconds between status lines (default %(default)s)",
    )
    out.add_argument(
        "--stats-json", type=Path, metavar="FILE", help="append stats as JSON lines to FILE"
    )
    out.add_argument("--quiet", action="store_true", help="no status lines")
    memory = parser.add_argument_group("memory (glibc's allocator, for long runs)")
    memory.add_argument(
        "--malloc-arenas",
        type=int,
        default=2,
        metavar="N",
        help="at most N malloc arenas for the media threads (default %(default)s; 0: "
        "glibc's default of 8 per core)",
    )
    memory.add_argument(
        "--malloc-trim",
        type=float,
        default=60.0,
        metavar="S",
        help="give freed memory back to the system every S seconds (default %(default)s; 0: never)",
    )
    out.add_argument(
        "--chat",
        action="store_true",
        help="send each line of stdin to everyone on the data channel and print what peers "
        "send as 'peer: text' (stdin may be a pipe: the agent stays after its end)",
    )


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bots", type=count, default=3, help="bots in the room (default 3)")
    parser.add_argument(
        "--duration", type=seconds, default=8.0, help="seconds to run (default %(default)s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder for recordings and the snapshot (default ./meshpeer-demo-<timestamp>/)",
    )
    add_media_arguments(parser, width=320, height=240, fps=15)


def _join(args: argparse.Namespace) -> int:
    from peer.runner import run_join

    return run_join(args)


def _devices(_args: argparse.Namespace) -> int:
    """``meshpeer devices``: the names --audio mic:NAME, --speaker NAME and --video take."""
    from peer.media.devices import listing
    from peer.media.errors import MediaError

    try:
        text = listing()
    except MediaError as exc:
        print(f"meshpeer devices: {exc}", file=sys.stderr)
        return 1
    print(text)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from peer.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshpeer", description="Multi-peer WebRTC rooms.")
    parser.add_argument(
        "--log-level",
        help="DEBUG, INFO, WARNING or ERROR (default INFO for serve, WARNING otherwise)",
    )
    # Also accepted after the subcommand (`meshpeer join URL --log-level INFO`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run the signaling server", parents=[common])
    add_serve_arguments(serve_parser)
    serve_parser.set_defaults(run=serve, default_level="INFO")
    join_parser = sub.add_parser("join", help="join a room as a headless peer", parents=[common])
    add_join_arguments(join_parser)
    join_parser.set_defaults(run=_join)
    devices_parser = sub.add_parser(
        "devices",
        help="list audio inputs and outputs and cameras, by the names the flags accept",
        parents=[common],
    )
    devices_parser.set_defaults(run=_devices)
    token_parser = sub.add_parser(
        "token", help="print an access token for a server run with --auth-secret-file"
    )
    add_token_arguments(token_parser)
    token_parser.set_defaults(run=print_token)
    demo_parser = sub.add_parser(
        "demo",
        help="run a server and a few bots on loopback, print what they saw",
        parents=[common],
    )
    add_demo_arguments(demo_parser)
    demo_parser.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (args.log_level or getattr(args, "default_level", "WARNING")).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    result: int = args.run(args)
    return result
