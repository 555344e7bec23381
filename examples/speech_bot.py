"""Speech bot: prints when each participant starts and stops speaking.

python examples/speech_bot.py ws://127.0.0.1:8080/ws lobby

Each participant's sound arrives as 16 kHz mono int16 blocks of 20 ms
(``agent.audio_frames()``: continuous, up to 5 s wait for a slow reader). The bot measures
the energy (RMS) over the last 100 ms and decides with hysteresis: speaking starts when it
rises above ``START``, and stops once it has stayed below ``STOP`` for ``HANG`` seconds (a
pause between words is not the end). No model, nothing to download; the arithmetic is
microseconds per block, so it runs on the event loop (heavier work, a speech recogniser,
belongs in a thread: ``asyncio.to_thread``). Times are on the participant's own media clock
(seconds since its sound began).

On a server run with --auth-secret-file, give it a token for the ID "speech":
export MESHPEER_TOKEN=$(meshpeer token --secret-file FILE --room lobby --id speech)
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from peer import Agent, PeerLeft, ReceivedAudio, RemoteTrack, TrackReceived

#: The access token of a server that requires one (meshpeer token ... --id speech).
TOKEN = os.environ.get("MESHPEER_TOKEN") or None

SAMPLE_RATE, BLOCK_MS = 16_000, 20
#: The energy window: 100 ms of 20 ms blocks.
WINDOW = 100 // BLOCK_MS
#: RMS levels (int16 full scale 32768): above START speaking begins, below STOP it may end.
START, STOP = 1000.0, 400.0
#: Seconds below STOP before speaking has stopped.
HANG = 0.3


@dataclass
class Voice:
    """One participant's track: its recent block energies and whether it is speaking."""

    energies: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    speaking: bool = False
    last_loud: float = 0.0  # the end of the last block above STOP (media clock)

    def step(self, block: ReceivedAudio) -> tuple[bool, float] | None:
        """(True, when) as speaking starts, (False, when) once it has stopped, else None."""
        samples = block.array.astype(np.float64)
        energy = float(np.mean(samples**2))
        self.energies.append(energy)
        rms = float(np.sqrt(np.mean(self.energies)))
        end = block.timestamp + len(block.array) / SAMPLE_RATE
        if np.sqrt(energy) > STOP:
            self.last_loud = end
        if not self.speaking and rms > START:
            self.speaking = True
            return True, block.timestamp
        if self.speaking and rms < STOP and end - self.last_loud >= HANG:
            self.speaking = False
            return False, self.last_loud
        return None


async def main(url: str, room: str, *, report: Callable[[str], None] = print) -> None:
    voices: dict[RemoteTrack, Voice] = {}

    def follow(event: object) -> None:
        # A voice per audio track from its arrival to its peer's departure: blocks still
        # queued for a peer that left are skipped, not taken for a new voice.
        if isinstance(event, TrackReceived) and event.kind == "audio":
            voices[event.track] = Voice()
            report(f"{event.peer}: listening")
        elif isinstance(event, PeerLeft):
            for track in [t for t in voices if t.peer == event.peer]:
                del voices[track]

    async with Agent(url, room=room, peer_id="speech", token=TOKEN) as agent:
        agent.add_listener(follow)
        async for block in agent.audio_frames(sample_rate=SAMPLE_RATE, channels=1):
            voice = voices.get(block.track)
            if voice is None:
                continue
            change = voice.step(block)
            if change is not None:
                started, when = change
                what = "started" if started else "stopped"
                report(f"{block.peer}: {what} speaking at {when:.2f} s")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
