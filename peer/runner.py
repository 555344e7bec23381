"""``meshpeer join``: one headless peer from the command line, until Ctrl-C or --duration.

Prints a compact status line every few seconds (``--stats-interval``), appends stats as
JSON lines (``--stats-json``), records (``--record``: a file per peer; ``--record-room``:
the room in one file), shows (``--display``) and snapshots (``--snapshot``) the room, and
chats (``--chat``: stdin lines to everyone on the data channel, what peers send printed).
Ctrl-C, SIGTERM, ``--duration`` and closing the window all leave the same way: the room is
left, recordings finalised, the snapshot written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import peer.events as ev
import peer.memory as memory
from peer.agent import Agent, random_peer_id, run_until
from peer.datachannel import MESHPEER
from peer.errors import MeshpeerError
from peer.ice import IceServerError
from peer.media.fanout import Encoding
from peer.tokens import read_claims
from signaling import event_loop

log = logging.getLogger(__name__)


def say(text: str) -> None:
    """A progress line for the user (stdout, flushed: the CLI may be piped)."""
    print(text, flush=True)


class StatsWriter:
    """Status lines and JSON lines from the agent's stats reports."""

    def __init__(self, agent: Agent, json_file: IO[str] | None, quiet: bool) -> None:
        self.agent = agent
        self.json_file = json_file
        self.quiet = quiet
        self.joined_unix = time.time()

    def __call__(self, event: ev.Event) -> None:
        if not isinstance(event, ev.StatsReport):
            return
        if not self.quiet:
            parts = [s.line() for s in event.peers] or ["alone in the room"]
            say(f"[{self.agent.peer_id}] " + " | ".join(parts))
        if self.json_file is not None:
            record: dict[str, Any] = {
                "time": round(time.time(), 3),
                "peer": self.agent.peer_id,
                "joined_at": round(self.joined_unix, 3),
                "peer_list_s": (
                    round(self.agent.in_room_at - self.agent.joined_at, 4)
                    if self.agent.in_room_at is not None
                    else None
                ),
                "signaling": self.agent.signaling_connected,
                "reconnects": self.agent.reconnects,
                "events_dropped": self.agent.dropped_events,
                # For long runs: what would show a leak of tasks or threads.
                "tasks": len(asyncio.all_tasks()),
                "threads": threading.active_count(),
                "loop": event_loop.loop_name(asyncio.get_running_loop()),
                "memory": memory.memory_use().to_json(),
                # Remote tracks being decoded now (only while something shows them).
                "decoders": sum(s.decoders for s in event.peers),
                "peers": [s.to_json() for s in event.peers],
            }
            self.json_file.write(json.dumps(record) + "\n")
            self.json_file.flush()


def progress(peer_id: str) -> Callable[[ev.Event], None]:
    """One line per lifecycle event (joins, leaves, connection states, first frames)."""

    def show(event: ev.Event) -> None:
        match event:
            case ev.Joined(peers=peers, rejoin=rejoin):
                verb = "rejoined" if rejoin else "joined"
                say(f"[{peer_id}] {verb}; in the room: {', '.join(peers) or 'nobody yet'}")
            case ev.SignalingLost(close_code=code):
                say(f"[{peer_id}] signaling lost (close code {code}); reconnecting")
            case ev.PeerJoined(peer=peer):
                say(f"[{peer_id}] {peer} joined")
            case ev.PeerLeft(peer=peer):
                say(f"[{peer_id}] {peer} left")
            case ev.ConnectionStateChanged(peer=peer, state=state):
                say(f"[{peer_id}] connection to {peer}: {state}")
            case ev.IceServerProblem(url=url, reason=reason):
                say(f"[{peer_id}] ICE server {url}: {reason}; connections go without it")
            case ev.FirstFrame(peer=peer, kind=kind, seconds=seconds):
                say(f"[{peer_id}] first {kind} frame from {peer} after {seconds:.3f} s")
            case ev.DataDropped(peer=peer, reason=reason, size=size, incoming=incoming):
                way = "from" if incoming else "to"
                say(f"[{peer_id}] a message {way} {peer} was dropped ({size} bytes): {reason}")
            case ev.Failed(reason=reason):
                say(f"[{peer_id}] giving up: {reason}")
            case _:
                pass

    return show


def sources(args: argparse.Namespace) -> tuple[str, str]:
    """The video and audio to send: as given; if not given, a test card and a tone, but
    nothing for a recorder (it is there to record the room, not to appear in it)."""
    recording = args.record is not None or getattr(args, "record_room", None) is not None
    video = args.video if args.video is not None else "none" if recording else "synthetic"
    audio = args.audio if args.audio is not None else "none" if recording else "tone"
    return video, audio


async def join_room(args: argparse.Namespace) -> int:
    from peer.media.sources import VideoSettings, open_local_media

    token_peer = read_claims(args.token)[0] if args.token else None
    peer_id = args.peer_id or token_peer or random_peer_id()
    settings = VideoSettings(width=args.width, height=args.height, fps=args.fps)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # One exit stack: whatever fails while leaving (a snapshot that cannot be written ...),
    # everything set up so far is still released, in reverse order: the room left,
    # recordings finalised, media stopped. The first error is the one raised.
    async with contextlib.AsyncExitStack() as exits:
        media = open_local_media(*sources(args), label=peer_id, settings=settings)
        exits.callback(media.stop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            exits.callback(loop.remove_signal_handler, sig)
        recorder: Any = None
        mosaic: Any = None
        window: Any = None
        json_file: IO[str] | None = None
        if args.record is not None:
            from peer.media.recorder import Recorder

            recorder = Recorder(args.record, session=peer_id, transcode=args.record_transcode)
            exits.push_async_callback(_close_recorder, recorder, peer_id)
        consumers: list[Any] = []
        if args.record_room is not None:
            from peer.media.room_recorder import RoomRecorder

            room_recorder = RoomRecorder(
                args.record_room, size=args.record_room_size, fps=args.record_room_fps
            )
            consumers.append(room_recorder)
            exits.push_async_callback(_close_room_recorder, room_recorder, peer_id)
            width, height = args.record_room_size
            say(
                f"[{peer_id}] recording the room to {args.record_room} "
                f"({width}x{height} at {args.record_room_fps} fps)"
            )
        speaker = open_speaker_for(args, peer_id)
        if speaker is not None:
            consumers.append(speaker)
            exits.callback(speaker.close)
        if args.display or args.snapshot is not None:
            from peer.media.mosaic import Mosaic

            mosaic = Mosaic(indicators=True)
        if args.display:
            from peer.media.display import DisplayWindow

            window = DisplayWindow(mosaic)
            window.start()
            exits.push_async_callback(window.stop)
        if args.stats_json is not None:
            json_file = exits.enter_context(args.stats_json.open("a", encoding="utf-8"))
        agent = Agent(
            args.url,
            room=args.room,
            peer_id=peer_id,
            media=media,
            ice_servers=args.ice_server,
            token=args.token,
            recorder=recorder,
            mosaic=mosaic,
            consumers=consumers,
            stats_interval=args.stats_interval,
            encoding=Encoding(args.encoding),
            receive=not args.send_only,
            # Listeners only: a stream no one reads keeps the last 256 events, stats reports
            # of every peer among them (~1 KiB per peer per report, tracemalloc).
            event_queue_size=0,
        )
        if window is not None:
            window.on_key = window_keys(agent)
        if not args.quiet:
            agent.add_listener(progress(peer_id))
        if args.chat:
            agent.add_listener(print_chat)
        writer = StatsWriter(agent, json_file, args.quiet)
        agent.add_listener(writer)
        writer.joined_unix = time.time()
        exits.push_async_callback(agent.leave)
        if args.malloc_trim > 0:
            trimmer = loop.create_task(memory.trim_every(args.malloc_trim))
            exits.callback(trimmer.cancel)
        if not await _join_unless_stopped(agent, stop):
            return 130
        if mosaic is not None:
            for preview in local_preview(agent, mosaic):
                exits.push_async_callback(preview.stop)
        if args.snapshot is not None:
            from peer.media.mosaic import SnapshotWriter

            snapshots = SnapshotWriter(mosaic, args.snapshot)
            snapshots.start()
            # Written before the agent leaves: the last snapshot has everyone still in it.
            exits.push_async_callback(_last_snapshot, snapshots, peer_id, args.snapshot)
        if window is not None:
            watcher = loop.create_task(_set_when(window.closed, stop))
            exits.callback(watcher.cancel)
        for sig in (signal.SIGINT, signal.SIGTERM):  # first out: a 2nd Ctrl-C while leaving
            exits.callback(loop.remove_signal_handler, sig)  # interrupts (KeyboardInterrupt)
        if args.chat:
            chat = loop.create_task(chat_from_stdin(agent))
            exits.callback(chat.cancel)
        await run_until(agent, stop, args.duration)
        return 1 if agent.left.is_set() and not stop.is_set() else 0  # 1: the agent gave up
    raise AssertionError("unreachable")  # pragma: no cover - the stack returns or raises


def open_speaker_for(args: argparse.Namespace, peer_id: str) -> Any:
    """The ``--speaker`` (or ``--display``'s) speaker, or None. Asked for by name, a missing
    or busy device stops the command (MediaSourceError); implied by ``--display``, the call
    goes on without sound."""
    from peer.media.errors import MediaSourceError
    from peer.media.speaker import open_speaker

    device = getattr(args, "speaker", None)
    implied = device is None and args.display and not getattr(args, "no_speaker", False)
    if device is None and not implied:
        return None
    try:
        speaker = open_speaker(device or "")
    except MediaSourceError as exc:
        if not implied:
            raise
        say(f"[{peer_id}] no sound: {exc}")
        return None
    say(f"[{peer_id}] playing the room on {device or 'the default output'}")
    return speaker


def print_chat(event: ev.Event) -> None:
    """``--chat``: what peers send on the meshpeer channel, one ``peer: text`` line each."""
    if isinstance(event, ev.DataReceived) and event.channel == MESHPEER:
        data = event.data
        say(f"{event.peer}: {data if isinstance(data, str) else f'<{len(data)} bytes>'}")


#: ``--chat``: lines of stdin waiting to be sent, and the longest line (longer ones are cut).
_CHAT_BACKLOG = 64
_CHAT_LINE = 1024 * 1024


async def chat_from_stdin(agent: Agent) -> None:
    """``--chat``: send each line of stdin to everyone; returns at the end of input (the
    agent stays until --duration or Ctrl-C). Empty lines are skipped.

    A daemon thread reads: that works on a tty, a pipe and a file alike (the event loop
    polls none of them, and regular files not at all), and ``os.read`` holds no lock that
    could block the interpreter's exit while it waits for a line that never comes.
    """
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # no stdin (or pytest's stand-in)
        log.warning("--chat: no standard input to read lines from")
        return
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue(_CHAT_BACKLOG)

    def put(line: str | None) -> None:  # blocks the thread while the queue is full
        asyncio.run_coroutine_threadsafe(lines.put(line), loop).result()

    def read() -> None:
        pending = b""
        try:
            while chunk := os.read(fd, 65536):
                *complete, pending = (pending + chunk).split(b"\n")
                if len(pending) > _CHAT_LINE:
                    complete.append(pending)
                    pending = b""
                for line in complete:
                    put(line.decode(errors="replace"))
            put(pending.decode(errors="replace"))
            put(None)
        except (OSError, RuntimeError) as exc:  # stdin gone, or the loop closed: done
            log.debug("--chat: stopped reading stdin: %r", exc)

    threading.Thread(target=read, name="chat-stdin", daemon=True).start()
    while (line := await lines.get()) is not None:
        line = line.rstrip("\r")
        if line and agent.send_data(line) == 0:
            log.warning("--chat: nobody in the room to send %r to", line[:40])
    log.info("--chat: end of input; staying in the room")


async def _close_recorder(recorder: Any, peer_id: str) -> None:
    for path in await recorder.close():
        say(f"[{peer_id}] recording: {path}")


async def _close_room_recorder(room_recorder: Any, peer_id: str) -> None:
    result = await room_recorder.close()
    state = ", failed: see the log" if result.failed else ""
    say(f"[{peer_id}] room recording: {result.path} ({result.seconds:.1f} s{state})")


async def _last_snapshot(snapshots: Any, peer_id: str, path: Any) -> None:
    await snapshots.stop()  # writes the last one
    say(f"[{peer_id}] snapshot: {path}")


async def _join_unless_stopped(agent: Agent, stop: asyncio.Event) -> bool:
    """Join, or give up at Ctrl-C (the join may be retrying an ``id-taken`` for seconds)."""
    joining = asyncio.ensure_future(agent.join())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({joining, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not joining.done():
        joining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await joining
        return False
    joining.result()  # raises SignalingError, JoinRefused
    return True


def local_preview(agent: Agent, mosaic: Any) -> list[Any]:
    """Our own video as the first tile of the mosaic, and (with the mosaic's indicators) our
    audio's level on it, each read through its own relay copy: the taps, to stop."""
    from peer.media.tap import TrackTap

    consumer = mosaic.local_consumer(agent.peer_id)
    taps = []
    for kind in ("video", "audio") if mosaic.indicators else ("video",):
        track = agent.subscribe_local(kind)
        if track is not None:
            own = ev.RemoteTrack(agent.peer_id, kind)  # our own, through the same kind of tap
            tap = TrackTap(own, track, [consumer])
            tap.start()
            taps.append(tap)
    return taps


def window_keys(agent: Agent) -> Callable[[str], None]:
    """The ``--display`` window's keys for the agent: m turns our audio off and on, v our
    video (q and f are the window's own)."""

    def act(key: str) -> None:
        if key == "m":
            agent.mute_audio("audio" not in agent.muted)
        elif key == "v":
            agent.mute_video("video" not in agent.muted)

    return act


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


def _needs_receiving(args: argparse.Namespace) -> list[str]:
    """The output flags given that a send-only peer could not feed."""
    flags = {
        "--record": args.record is not None,
        "--record-room": args.record_room is not None,
        "--display": args.display,
        "--snapshot": args.snapshot is not None,
        "--speaker": args.speaker is not None,
    }
    return [flag for flag, given in flags.items() if given]


def run_join(args: argparse.Namespace) -> int:
    if args.record_transcode and args.record is None:
        print("meshpeer join: --record-transcode needs --record DIR", file=sys.stderr)
        return 2
    if args.send_only and (given := _needs_receiving(args)):
        drop = " or ".join(given)
        message = f"meshpeer join: --send-only receives nothing to output: drop {drop}"
        print(message, file=sys.stderr)
        return 2
    memory.limit_arenas(args.malloc_arenas)  # before any thread starts
    memory.fix_mmap_threshold(args.malloc_mmap_threshold)
    try:
        return event_loop.run(join_room(args), use_uvloop=not args.no_uvloop)
    # IceServerError: a bad --ice-server; OSError: e.g. --record DIR not writable
    except (MeshpeerError, IceServerError, OSError) as exc:
        print(f"meshpeer join: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while leaving
        return 130
