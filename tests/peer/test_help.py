"""Every command's ``--help`` as a newcomer reads it: flags grouped by purpose, every
duration and rate with its unit, one metavar style, comparison knobs out of it but still
accepted. Rendered by the real parsers (``main([..., "--help"])``) and read as text."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

import peer.cli
import signaling.cli

Main = Callable[[Sequence[str]], int]

#: Each command: how to render its help.
COMMANDS: dict[str, tuple[Main, list[str]]] = {
    "meshpeer": (peer.cli.main, []),
    "meshpeer serve": (peer.cli.main, ["serve"]),
    "meshpeer join": (peer.cli.main, ["join"]),
    "meshpeer demo": (peer.cli.main, ["demo"]),
    "meshpeer devices": (peer.cli.main, ["devices"]),
    "meshpeer token": (peer.cli.main, ["token"]),
    "python -m signaling": (signaling.cli.main, []),
}

#: Knobs that exist to compare against (benchmarks/fanout.py, benchmarks/soak.py): out of
#: the help, still accepted, documented with their benchmark.
HIDDEN = {
    "meshpeer join": ["--encoding", "--malloc-arenas", "--malloc-trim", "--malloc-mmap-threshold"],
    "meshpeer demo": ["--encoding"],
}

#: The metavar style: the value's kind or unit in capitals, a rate as UNIT/S or UNIT/MIN.
METAVAR = re.compile(r"[A-Z]+(/(S|MIN))?|WxH")
#: A unit metavar and the words its help must say.
UNITS = {
    "SECONDS": "seconds",
    "DURATION": "seconds, or",
    "FPS": "frames per second",
    "MSG/S": "messages per second",
    "BYTES/S": "bytes per second",
    "N/MIN": "per minute",
}
#: An option is a duration or a rate when its name or its help says so.
TIMELY_NAME = re.compile(r"timeout|heartbeat|duration|interval|ttl|trim|rate|fps|per-minute")
TIMELY_HELP = re.compile(r"\b(seconds?|per second|per minute|how long|lifetime)\b")
_SERVE_TIMELY = {"--turn-ttl", "--join-timeout", "--heartbeat", "--probe-timeout", "--rate"}
#: The durations and rates of each command: what the two patterns above must find.
TIMELY = {
    "meshpeer serve": _SERVE_TIMELY | {"--byte-rate", "--ip-connects-per-minute"},
    "python -m signaling": _SERVE_TIMELY | {"--byte-rate", "--ip-connects-per-minute"},
    "meshpeer join": {"--fps", "--record-room-fps", "--stats-interval", "--duration"},
    "meshpeer demo": {"--fps", "--duration"},
    "meshpeer token": {"--ttl"},
}
#: ``  --flag METAVAR   help``, ``  -h, --help``, ``  --speaker [DEVICE]``.
ENTRY = re.compile(r"^  (?P<flags>-[-\w]+(?:, -[-\w]+)*)(?: (?P<metavar>\[?[^\s\]]+\]?))?(?:  +|$)")


@dataclass(frozen=True, slots=True)
class Option:
    flags: str
    metavar: str | None
    help: str
    section: str


def render(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    main, argv = COMMANDS[command]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def options(text: str) -> list[Option]:
    """The option entries of a rendered help, each with its section and its whole help."""
    found: list[Option] = []
    section = ""
    current: dict[str, str | None] | None = None
    lines: list[str] = []

    def close() -> None:
        if current is not None:
            help_text = " ".join(" ".join(lines).split())
            found.append(Option(current["flags"] or "", current["metavar"], help_text, section))

    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            close()
            current, lines, section = None, [], line[:-1]
            continue
        entry = ENTRY.match(line)
        if entry:
            close()
            current = {"flags": entry["flags"], "metavar": entry["metavar"]}
            lines = [line[entry.end() :]]
        elif current is not None and line.startswith("      "):
            lines.append(line)
        else:
            close()
            current, lines = None, []
    close()
    return found


@pytest.mark.parametrize("command", COMMANDS)
def test_help_groups_flags_by_purpose(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """argparse's catch-all "options" section holds only -h; no "positional arguments"."""
    text = render(command, capsys)
    found = options(text)
    assert len(found) > 1, text
    stray = [o.flags for o in found if o.section in ("options", "positional arguments")]
    assert stray == ["-h, --help"], text
    assert "positional arguments:" not in text
    if command != "meshpeer token":
        assert any(o.flags == "--log-level" and o.metavar == "LEVEL" for o in found), text


@pytest.mark.parametrize("command", COMMANDS)
def test_help_gives_every_duration_and_rate_its_unit(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    found = options(render(command, capsys))
    timely = [o for o in found if TIMELY_NAME.search(o.flags) or TIMELY_HELP.search(o.help.lower())]
    for option in timely:
        assert option.metavar in UNITS, option
        assert UNITS[option.metavar] in option.help, option
    assert {o.flags for o in timely} == TIMELY.get(command, set())
    for option in found:  # and a unit metavar only on a duration or a rate
        assert option.metavar not in UNITS or option in timely, option


@pytest.mark.parametrize("command", COMMANDS)
def test_help_metavars_follow_one_style(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    for option in options(render(command, capsys)):
        if option.metavar is not None:
            assert METAVAR.fullmatch(option.metavar.strip("[]")), option


@pytest.mark.parametrize("command", ["meshpeer serve", "python -m signaling"])
def test_serve_help_says_which_ice_flag_when(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line on --ice-server against --turn-url, and --max-peers' default with its reason."""
    text = " ".join(render(command, capsys).split())
    assert signaling.cli.ICE_SERVERS_HELP in text
    (max_peers,) = [o for o in options(render(command, capsys)) if o.flags == "--max-peers"]
    assert "(default 8)" in max_peers.help
    assert "a full mesh of N browsers sends N-1 copies of every stream" in max_peers.help


@pytest.mark.parametrize("command", HIDDEN)
def test_comparison_knobs_are_hidden_but_accepted(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = render(command, capsys)
    for flag in HIDDEN[command]:
        assert flag not in text
    argv = [command.split()[1], "--encoding", "per-peer"]
    if command == "meshpeer join":
        argv += ["--malloc-arenas", "0", "--malloc-trim", "0"]
    args = peer.cli.build_parser().parse_args(argv)
    assert args.encoding == "per-peer"
    defaults = peer.cli.build_parser().parse_args([command.split()[1]])
    assert defaults.encoding == "shared"
    if command == "meshpeer join":
        assert (args.malloc_arenas, args.malloc_trim) == (0, 0.0)
        assert (defaults.malloc_arenas, defaults.malloc_trim) == (2, 60.0)
