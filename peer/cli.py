"""The ``meshpeer`` command: ``serve`` runs the signaling server."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from signaling.cli import add_serve_arguments, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshpeer", description="Multi-peer WebRTC rooms.")
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run the signaling server")
    add_serve_arguments(serve_parser)
    serve_parser.set_defaults(run=serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result: int = args.run(args)
    return result
