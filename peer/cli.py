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
    add_log_level,
    add_loop_flag,
    add_serve_arguments,
    add_token_arguments,
    print_token,
    read_secret,
    serve,
)
from signaling.flags import FPS, PIXELS, SECONDS, N, count, seconds

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
        metavar="SOURCE",
        help="video to send: synthetic, webcam[:/dev/videoN], file:PATH or a URL, none "
        f"(default synthetic{unless})",
    )
    media.add_argument(
        "--audio",
        default=None if join else "tone",
        metavar="SOURCE",
        help=f"audio to send: tone, mic[:DEVICE] (the system's input; names: meshpeer "
        f"devices), file:PATH or a URL, none (default tone{unless})",
    )
    media.add_argument(
        "--width",
        type=count,
        default=width,
        metavar=PIXELS,
        help="video width (default %(default)s)",
    )
    media.add_argument(
        "--height",
        type=count,
        default=height,
        metavar=PIXELS,
        help="video height (default %(default)s)",
    )
    media.add_argument(
        "--fps",
        type=count,
        default=fps,
        metavar=FPS,
        help="video frames per second (default %(default)s)",
    )
    if join:
        media.add_argument(
            "--send-only",
            action="store_true",
            help="receive nothing: peers send this one no media, sparing their uplinks (a "
            "broadcaster); not with --record, --record-room, --display, --snapshot, --speaker",
        )
    # A comparison knob (benchmarks/fanout.py): out of --help, documented with the benchmark.
    parser.add_argument(
        "--encoding", choices=["shared", "per-peer"], default="shared", help=argparse.SUPPRESS
    )


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ice-server`` for ``join`` and ``demo``: the agent's own, besides the server's."""
    network = parser.add_argument_group("network")
    network.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="this agent's own STUN/TURN server, tried before those the signaling server "
        "hands out (its --ice-server and --turn-url): stun:host:port, "
        "turn:user:pass@host:port or turns:... (repeatable; default none: the server's, "
        "else host candidates only)",
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
    conn = parser.add_argument_group("connection")
    conn.add_argument(
        "url",
        nargs="?",
        default="ws://127.0.0.1:8080/ws",
        help="signaling server, ws://host:port/ws (default %(default)s)",
    )
    conn.add_argument(
        "--room", metavar="ROOM", help="room to join (default: the server's default room)"
    )
    conn.add_argument(
        "--id", dest="peer_id", metavar="ID", help="peer ID (default: a random peer-xxxxxx)"
    )
    token = conn.add_mutually_exclusive_group()
    token.add_argument(
        "--token",
        default=os.environ.get("MESHPEER_TOKEN") or None,
        metavar="TOKEN",
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
    add_network_arguments(parser)
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
        help="--record-room picture size in pixels (default 1280x720)",
    )
    out.add_argument(
        "--record-room-fps",
        type=count,
        default=15,
        metavar=FPS,
        help="--record-room frames per second (default %(default)s)",
    )
    out.add_argument(
        "--snapshot", type=Path, metavar="FILE", help="write a PNG mosaic of everyone to FILE"
    )
    out.add_argument(
        "--stats-interval",
        type=seconds,
        default=2.0,
        metavar=SECONDS,
        help="seconds between status lines (default %(default)s)",
    )
    out.add_argument(
        "--stats-json", type=Path, metavar="FILE", help="append stats as JSON lines to FILE"
    )
    out.add_argument("--quiet", action="store_true", help="no status lines")
    out.add_argument(
        "--chat",
        action="store_true",
        help="send each line of stdin to everyone on the data channel and print what peers "
        "send as 'peer: text' (stdin may be a pipe: the agent stays after its end)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--duration",
        type=seconds,
        metavar=SECONDS,
        help="leave after this many seconds (default: run until Ctrl-C)",
    )
    add_log_level(run, "WARNING", argparse.SUPPRESS)
    add_loop_flag(run)
    # glibc's allocator for long runs: the defaults are what benchmarks/soak.py found best;
    # its comparison (0 0: glibc's own) is the only use of the flags, so not in --help.
    parser.add_argument("--malloc-arenas", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--malloc-trim", type=float, default=60.0, help=argparse.SUPPRESS)
    # KiB; 0: glibc's sliding threshold (fixing it at 128 did not lower the soak's slope).
    parser.add_argument("--malloc-mmap-threshold", type=int, default=0, help=argparse.SUPPRESS)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    demo = parser.add_argument_group("demo")
    demo.add_argument(
        "--bots", type=count, default=3, metavar=N, help="bots in the room (default 3)"
    )
    demo.add_argument(
        "--duration",
        type=seconds,
        default=8.0,
        metavar=SECONDS,
        help="seconds to run (default %(default)s)",
    )
    demo.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder for recordings and the snapshot (default ./meshpeer-demo-<timestamp>/)",
    )
    add_media_arguments(parser, width=320, height=240, fps=15)
    add_network_arguments(parser)
    run = parser.add_argument_group("run")
    add_log_level(run, "WARNING", argparse.SUPPRESS)
    add_loop_flag(run)


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
    # Also accepted after the subcommand (`meshpeer join URL --log-level INFO`), where each
    # subcommand's help shows it with its own default.
    add_log_level(
        parser.add_argument_group("run"), "INFO for serve, WARNING otherwise", default=None
    )
    sub = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")
    serve_parser = sub.add_parser("serve", help="run the signaling server")
    add_serve_arguments(serve_parser, log_level=argparse.SUPPRESS)
    serve_parser.set_defaults(run=serve, default_level="INFO")
    join_parser = sub.add_parser("join", help="join a room as a headless peer")
    add_join_arguments(join_parser)
    join_parser.set_defaults(run=_join)
    devices_parser = sub.add_parser(
        "devices", help="list audio inputs and outputs and cameras, by the names the flags accept"
    )
    add_log_level(devices_parser.add_argument_group("run"), "WARNING", argparse.SUPPRESS)
    devices_parser.set_defaults(run=_devices)
    token_parser = sub.add_parser(
        "token", help="print an access token for a server run with --auth-secret-file"
    )
    add_token_arguments(token_parser)
    token_parser.set_defaults(run=print_token)
    demo_parser = sub.add_parser(
        "demo", help="run a server and a few bots on loopback, print what they saw"
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
