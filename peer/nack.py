"""Ask again for lost video packets whose retransmission was lost too.

aiortc's receiver sends a NACK for a lost packet once, when the gap appears. If the
retransmission is lost as well, it asks again only when a later packet goes missing, and
its jitter buffer holds back every later frame meanwhile (until it overflows and asks
for a keyframe): at 5% loss, frozen pictures of 1 to 6.6 s in a quarter of 15 s runs
(tests/net/test_loss.py). ``NackRepeater`` asks again every ``REPEAT_EVERY`` for the
packets still missing, as browsers do, until they arrive or are too old for the sender
to have them.

It uses two aiortc internals, through :mod:`peer._aiortc`: the receiver's NACK generator
(its set of missing sequence numbers) and its NACK sender.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiortc import RTCRtpReceiver

from peer._aiortc import nack_generator, replace_nack_sender

__all__ = ["NackRepeater"]

log = logging.getLogger(__name__)

#: Seconds between requests for a packet still missing (loopback to LAN round trips).
REPEAT_EVERY = 0.1
#: Seconds after which a packet is given up: aiortc's sender keeps 128 packets, a second
#: or two of video.
GIVE_UP_AFTER = 1.0


class NackRepeater:
    """Repeats the NACKs of one video receiver; ``stop()`` with its connection."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self._receiver = receiver
        self._generator = nack_generator(receiver)
        self._ssrc: int | None = None
        #: When each missing packet was first asked for (time.monotonic()).
        self._asked: dict[int, float] = {}
        #: NACKs sent again, for tests and stats.
        self.repeats = 0
        self._send = replace_nack_sender(receiver, self._first_nack)
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def receiver(self) -> RTCRtpReceiver:
        return self._receiver

    def stop(self) -> None:
        self._task.cancel()

    async def _first_nack(self, media_ssrc: int, lost: list[int]) -> None:
        self._ssrc = media_ssrc
        now = time.monotonic()
        for seq in lost:
            self._asked.setdefault(seq, now)
        await self._send(media_ssrc, lost)

    async def _run(self) -> None:
        if self._generator is None:
            return
        while True:
            await asyncio.sleep(REPEAT_EVERY)
            missing = self._generator.missing
            now = time.monotonic()
            for seq, asked in list(self._asked.items()):
                if seq not in missing or now - asked > GIVE_UP_AFTER:
                    del self._asked[seq]
            due = sorted(seq for seq, asked in self._asked.items() if now - asked >= REPEAT_EVERY)
            if due and self._ssrc is not None:
                self.repeats += 1
                try:
                    await self._send(self._ssrc, due)
                except Exception as exc:  # a closing transport: the connection ends anyway
                    log.debug("repeating a NACK failed: %r", exc)
                    return
