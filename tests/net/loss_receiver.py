"""A receive-only agent that measures what it decodes from "sender", for test_loss.py.

``python -m tests.net.loss_receiver URL ROOM ID SECONDS`` (cwd: the repository) joins,
waits until video from "sender" flows, prints ``{"ready": true}``, waits for a line on
stdin (the test sets up the loss meanwhile), then measures for SECONDS and prints one
JSON line: decoded video frames and keyframes in the window, the largest gap between
decoded frames, and the inbound RTP packets received and lost (all streams from the
sender) during the window, and the candidate pair in use. Then it leaves and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from peer.agent import Agent
from peer.stats import Counters, counters_from_report
from signaling.protocol import PeerId
from tests.keyframes import Keyframes, label_vp8_keyframes
from tests.peer.helpers import largest_gap, wait_for

SENDER = "sender"


async def counters(agent: Agent) -> Counters:
    link = agent.links[PeerId(SENDER)]
    report = await link.pc.getStats()
    return counters_from_report(report.values(), time.monotonic())


async def measure(url: str, room: str, peer_id: str, window: float) -> dict[str, Any]:
    seen = Keyframes()
    agent = Agent(url, room=room, peer_id=peer_id, consumers=[seen], stats_interval=None)
    await agent.join()
    try:
        await wait_for(lambda: len(seen.frames.get(SENDER, [])) >= 30, 30, "video from sender")
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        before = await counters(agent)
        start = time.monotonic()
        await asyncio.sleep(window)
        end = time.monotonic()
        after = await counters(agent)
        route = next((s.route for s in await agent.stats() if s.peer == SENDER), "")
    finally:
        await agent.leave()
    frames = [t for t in seen.frames.get(SENDER, []) if start <= t <= end]
    return {
        "peer": peer_id,
        "route": route,
        "window": round(end - start, 3),
        "frames": len(frames),
        "fps": round(len(frames) / (end - start), 1),
        "largest_gap": round(largest_gap(frames, start, end), 3),
        "keyframes": seen.keys_between(SENDER, start, end),
        "keyframes_total": len(seen.keys.get(SENDER, [])),
        "packets_received": after.packets_received - before.packets_received,
        "packets_lost": after.packets_lost - before.packets_lost,
    }


def main(argv: list[str]) -> int:
    url, room, peer_id, window = argv
    with label_vp8_keyframes():
        result = asyncio.run(measure(url, room, peer_id, float(window)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
