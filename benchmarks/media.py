"""CPU cost of the media pieces, each alone in this process: no network at all.

- the synthetic video source consuming N frames as fast as its real-time pacing allows
  (CPU time / wall time = share of one core), and the tone source;
- the recorder: CPU per frame to encode (H.264 + Opus in Matroska, worker threads
  included), from frames made beforehand;
- the mosaic: CPU per render of 4 peers with a new frame each time (BGR conversion).

    ./dev bench media [--frames 300] [--sizes 640x480,1280x720]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from peer.events import RemoteTrack  # noqa: E402
from peer.media.mosaic import Mosaic  # noqa: E402
from peer.media.recorder import Recorder  # noqa: E402
from peer.media.synthetic import SyntheticVideoTrack, ToneAudioTrack  # noqa: E402
from peer.media.transcode_recorder import recording_format  # noqa: E402
from signaling.protocol import PeerId  # noqa: E402


async def _paced_cost(track: MediaStreamTrack, frames: int) -> tuple[float, float]:
    """CPU and wall seconds for ``frames`` frames of a paced source, then stop it."""
    await track.recv()  # the clock starts at the first frame
    cpu, wall = time.process_time(), time.monotonic()
    for _ in range(frames):
        await track.recv()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    track.stop()
    return cpu, wall


async def source_cost(width: int, height: int, fps: int, frames: int) -> dict[str, Any]:
    track = SyntheticVideoTrack("bench", width=width, height=height, fps=fps)
    cpu, wall = await _paced_cost(track, frames)
    return {
        "what": f"synthetic {width}x{height}@{fps}",
        "frames": frames,
        "wall_s": round(wall, 2),
        "achieved_fps": round(frames / wall, 1),
        "cpu_percent_of_core": round(100 * cpu / wall, 1),
        "cpu_ms_per_frame": round(1000 * cpu / frames, 2),
    }


async def tone_cost(frames: int) -> dict[str, Any]:
    cpu, wall = await _paced_cost(ToneAudioTrack("bench"), frames)
    return {
        "what": "tone 48 kHz, 20 ms frames",
        "frames": frames,
        "wall_s": round(wall, 2),
        "cpu_percent_of_core": round(100 * cpu / wall, 1),
        "cpu_ms_per_frame": round(1000 * cpu / frames, 3),
    }


def test_card_frames(width: int, height: int, frames: int, noise: bool) -> list[av.VideoFrame]:
    """The synthetic pattern on a 30 fps timeline; with noise, as hard as a grainy camera."""
    source = SyntheticVideoTrack("bench", width=width, height=height, fps=30)
    rng = np.random.default_rng(1)
    video = []
    for index in range(frames):
        frame = source.render(index)
        if noise:
            planes = frame.to_ndarray()
            grain = rng.integers(-12, 13, size=planes.shape, dtype=np.int16)
            planes = np.clip(planes.astype(np.int16) + grain, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts, frame.time_base = index * 3000, Fraction(1, 90_000)
        video.append(frame)
    source.stop()
    return video


async def recorder_cost(width: int, height: int, frames: int, noise: bool) -> dict[str, Any]:
    video = test_card_frames(width, height, frames, noise)
    tone = ToneAudioTrack("bench")
    tone_frame = await tone.recv()
    tone.stop()
    audio_frames = frames * 50 // 30
    audio = []
    for index in range(audio_frames):
        frame = av.AudioFrame.from_ndarray(tone_frame.to_ndarray(), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, index * 960, Fraction(1, 48_000)
        audio.append(frame)
    with tempfile.TemporaryDirectory() as directory:
        size = frames + audio_frames + 10
        recorder = Recorder(Path(directory), queue_size=size, transcode=True)
        peer = PeerId("bench")
        picture, sounds = RemoteTrack(peer, "video"), RemoteTrack(peer, "audio")
        recorder.expect(peer, {"audio", "video"})
        cpu, wall = time.process_time(), time.monotonic()
        for index, frame in enumerate(video):
            recorder.put_frame(picture, frame)
            for sound in audio[index * 50 // 30 : (index + 1) * 50 // 30]:
                recorder.put_frame(sounds, sound)
        path = await recorder.close_peer(peer)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        size = path.stat().st_size if path else 0
        await recorder.close()
    fmt = recording_format()
    return {
        "what": f"record {width}x{height} {'noisy' if noise else 'test card'} "
        f"{fmt.video_codec}+{fmt.audio_codec}",
        "frames": frames,
        "audio_frames": audio_frames,
        "wall_s": round(wall, 2),
        "cpu_ms_per_video_frame": round(1000 * cpu / frames, 2),
        "cpu_percent_at_30fps": round(100 * cpu / frames * 30, 1),
        "file_kbit_per_s": round(size * 8 / (frames / 30) / 1000),
    }


async def mosaic_cost(renders: int) -> dict[str, Any]:
    frames = test_card_frames(640, 480, 8, noise=False)
    mosaic = Mosaic()
    tracks = [RemoteTrack(PeerId(f"p{peer}"), "video") for peer in range(4)]
    cpu = time.process_time()
    for index in range(renders):
        for peer, track in enumerate(tracks):
            mosaic.put_frame(track, frames[(index + peer) % len(frames)])
        mosaic.render()
    cpu = time.process_time() - cpu
    return {
        "what": "mosaic render, 4 peers 640x480, new frames every render",
        "frames": renders,
        "cpu_ms_per_render": round(1000 * cpu / renders, 2),
        "cpu_percent_at_10fps": round(100 * cpu / renders * 10, 1),
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        rows.append(await source_cost(width, height, 30, args.frames))
    rows.append(await tone_cost(args.frames))
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        for noise in (False, True):
            rows.append(await recorder_cost(width, height, args.frames, noise))
    rows.append(await mosaic_cost(100))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--sizes", default="640x480,1280x720")
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    for row in rows:
        what = row.pop("what")
        print(f"{what:<48} " + "  ".join(f"{k}={v}" for k, v in row.items()))
        row["what"] = what
    out = REPO / "benchmarks" / "results" / "media.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"time": time.time(), "rows": rows}, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
