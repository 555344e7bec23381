"""Recording packets to file between real agents (issue 19): the file holds the bytes the
sender's shared encoder made, from a keyframe, for as long as the recording ran; a second
video track is a second stream; a recorder sends nothing unless given a source."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import av
import pytest

from peer import events as ev
from peer.agent import Agent
from peer.cli import build_parser
from peer.media.recorder import Recorder
from peer.media.synthetic import SyntheticVideoTrack
from peer.mesh import LinkState
from signaling.protocol import PeerId
from tests.media.clips import decoded_counts, demuxed, ffprobe_frames
from tests.peer.helpers import SMALL, agents, frames_from, join_command, sent_video
from tests.support import REPO, RunningServer, eventually, seconds

ALICE, REC = PeerId("alice"), PeerId("rec")


def video_taps_frames(bot: Agent, peer: PeerId) -> dict[int, int]:
    """Encoded video frames received from ``peer``, by track index."""
    link = bot.links.get(peer)
    taps = link.taps if link is not None else []
    return {t.remote.index: t.frames for t in taps if t.kind == "video"}


async def test_the_file_holds_the_senders_packets_for_the_time_recorded(
    server: RunningServer, tmp_path: Path
) -> None:
    recorder = Recorder(tmp_path)
    async with agents(server.ws_url, ["alice"]) as (alice,):
        bot = Agent(server.ws_url, room="test", peer_id=REC, recorder=recorder)
        await bot.join()
        try:
            await eventually(lambda: frames_from(bot, ALICE) >= 1, seconds(15), "alice's video")
            sent = sent_video(alice.links[REC])
            await eventually(recorder.files, seconds(10), "the file open", interval=0.01)
            # The file starts at the first packets (held until the sender reports came).
            taps = bot.links[ALICE].encoded.values()
            opened = min(t.first_frame_at for t in taps if t.first_frame_at is not None)
            await eventually(lambda: len(sent) >= 45, seconds(10), "3 s of video sent")
            stats = await bot.stats()
            assert [s.decoders for s in stats] == [0]  # a record-only bot decodes nothing
        finally:
            closing = time.monotonic()
            await bot.leave()  # the connection closes: the recorder finishes the file
    (path,) = await recorder.close()
    recorded = closing - opened

    video = [bytes(p) for p in demuxed(path)[0]]
    assert demuxed(path)[0][0].is_keyframe
    start = video.index(sent[0])  # the hook on alice's side came after the recording began
    overlap = min(len(video) - start, len(sent))
    assert overlap >= 40
    assert video[start : start + overlap] == sent[:overlap]  # byte for byte
    streams = ffprobe_frames(path)
    assert [s["codec_name"] for s in streams] == ["vp8", "opus"]
    counts = decoded_counts(path)
    assert [int(str(s["nb_read_frames"])) for s in streams] == [counts[0], counts[1]]
    assert counts[0] == len(video)
    with av.open(str(path)) as container:
        assert container.duration is not None
        duration = container.duration / av.time_base
    print(f"recorded {recorded:.2f} s, file {duration:.2f} s, {counts} frames")
    assert abs(duration - recorded) <= 0.5


async def test_a_second_video_track_is_a_second_stream(
    server: RunningServer, tmp_path: Path
) -> None:
    """A screen share added once the file is written: the next segment holds the camera,
    the screen and the microphone, the screen with >= 90% of the camera's frames."""
    recorder = Recorder(tmp_path)
    async with agents(server.ws_url, ["alice"]) as (alice,):
        bot = Agent(server.ws_url, room="test", peer_id=REC, recorder=recorder)
        await bot.join()
        screen = SyntheticVideoTrack("screen", width=SMALL.width, height=SMALL.height, fps=15)
        try:
            await eventually(recorder.files, seconds(15), "the first file open")
            assert await alice.add_track(REC, screen)
            await eventually(
                lambda: video_taps_frames(bot, ALICE).get(1, 0) >= 45,
                seconds(15),
                "3 s of the screen",
            )
        finally:
            await bot.leave()
            screen.stop()
    first, second = await recorder.close()
    assert second.name == first.name.replace(".mkv", "-part2.mkv")
    with av.open(str(second)) as container:
        titles = [s.metadata.get("title") for s in container.streams]
    assert titles == ["video 0", "video 1", "audio 0"]
    packets = demuxed(second)
    assert packets[0][0].is_keyframe and packets[1][0].is_keyframe
    counts = decoded_counts(second)
    print(f"segments: {decoded_counts(first)}, {counts}")
    assert counts[1] >= 0.9 * counts[0] > 0
    assert counts[2] > 0


def test_the_help_says_a_recorder_sends_nothing_by_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["join", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "sends nothing unless --video/--audio are given" in text
    assert "--record-transcode" in text


async def test_a_recorder_process_sends_no_tracks(server: RunningServer, tmp_path: Path) -> None:
    """``meshpeer join --record DIR`` without --video/--audio: connected, recording alice,
    and alice gets no track from it."""
    folder = tmp_path / "rec"
    proc = await asyncio.create_subprocess_exec(
        *join_command(server.ws_url, REC, "--record", str(folder)),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with agents(server.ws_url, ["alice"]) as (alice,):
            seen: list[ev.Event] = []
            alice.add_listener(seen.append)
            connected = ev.ConnectionStateChanged(REC, LinkState.CONNECTED)
            await eventually(lambda: connected in seen, seconds(20), "the recorder connected")
            await eventually(
                lambda: any(folder.glob("*.mkv")), seconds(10), "the recorder's file of alice"
            )
            # Tracks come with the descriptions, before the connection is up: none came.
            assert not [e for e in seen if isinstance(e, ev.TrackReceived)]
            assert REC not in {t.peer for t in alice.sinks.live_tracks()}
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), seconds(20)) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    (path,) = folder.glob("*.mkv")
    counts = decoded_counts(path)
    assert counts[0] > 0 and counts[1] > 0
