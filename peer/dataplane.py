"""Which data channels each remote peer has: :class:`DataPlane` keeps them in the peer's
record (:class:`peer.room.RemotePeer`), so bob's channels are found, and go, with the rest
of what the agent knows of bob.

- ``RemotePeer.data_channel``: the ``meshpeer`` :class:`peer.datachannel.DataChannel`, made
  when first used and kept across the peer's connections until it leaves (:meth:`forget`).
- ``RemotePeer.extra_channels``: the extra channels, by the connection they belong to;
  closed with it (:meth:`link_closed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from peer.channel_limits import MESHPEER, DataLimits, prepare
from peer.datachannel import ChannelEvent, ChannelOwner, DataChannel
from peer.errors import MeshpeerError
from signaling.protocol import PeerId

if TYPE_CHECKING:
    from aiortc import RTCDataChannel

    from peer.room import Room


class DataPlane:
    """Every data channel of one agent, kept in the records of ``room``: a ``meshpeer``
    :class:`DataChannel` per remote peer (kept across its connections) and the extra
    channels of each connection."""

    def __init__(
        self, room: Room, emit: Callable[[ChannelEvent], None], limits: DataLimits | None = None
    ) -> None:
        self.limits = limits or DataLimits()
        self._room = room
        self._emit = emit
        #: The agent left: nothing is sent or opened any more.
        self.closed = False

    @property
    def meshpeer(self) -> dict[PeerId, DataChannel]:
        """The meshpeer channel per peer, read from the records (a copy)."""
        return {r.id: r.data_channel for r in self._room if r.data_channel is not None}

    def channel(self, peer: PeerId) -> DataChannel:
        record = self._room[peer]
        if record.data_channel is None:
            record.data_channel = DataChannel(
                peer, MESHPEER, framed=True, limits=self.limits, emit=self._emit
            )
        return record.data_channel

    def send(self, data: object, peers: Iterable[PeerId]) -> int:
        """Queue ``data`` on the meshpeer channel of each of ``peers``; how many took it."""
        message, size = prepare(data, self.limits.message, MESHPEER)
        return sum(self.channel(peer).put(message, size) for peer in peers)

    def send_data(self, data: object, to: PeerId | None) -> int:
        """:meth:`peer.agent.Agent.send_data`: to ``to`` or to everyone in the room or
        connected (none once the agent left)."""
        peers = self._room.members | set(self._room.links)
        if to is not None:
            peers &= {to}
        return self.send(data, () if self.closed else sorted(peers))

    def added(self, link: ChannelOwner, rtc: RTCDataChannel) -> None:
        """A channel of ``link``: our meshpeer one (offerer), or one the remote opened."""
        if rtc.label == MESHPEER:
            self.channel(link.remote).attach(rtc, link)
        else:
            self._extra(link, rtc)

    def open_channel(
        self, peer: PeerId, label: str, *, ordered: bool, max_retransmits: int | None
    ) -> DataChannel:
        """:meth:`peer.agent.Agent.open_channel`: on ``peer``'s current connection."""
        link = self._room.link(peer)
        if link is None or self.closed:
            raise MeshpeerError(f"no connection to {peer!r} to open channel {label!r} on")
        if label == MESHPEER:
            raise MeshpeerError(f"{MESHPEER!r} is the agent's own channel: use send_data")
        rtc = link.pc.createDataChannel(label, ordered=ordered, maxRetransmits=max_retransmits)
        return self._extra(link, rtc)

    def _extra(self, link: ChannelOwner, rtc: RTCDataChannel) -> DataChannel:
        channel = DataChannel(
            link.remote, rtc.label, framed=False, limits=self.limits, emit=self._emit
        )
        extras = self._room[link.remote].extra_channels
        channels = [c for c in extras.get(link, []) if not c.closed]
        extras[link] = [*channels, channel]
        channel.attach(rtc, link)
        return channel

    def link_closed(self, link: ChannelOwner) -> None:
        """``link`` is closed: its meshpeer channel waits for the next; its extras close.

        The record is left for the caller to tidy (:meth:`peer.room.Room.tidy`).
        """
        record = self._room.get(link.remote)
        if record is None:
            return
        if record.data_channel is not None:
            record.data_channel.detach_from(link)
        for extra in record.extra_channels.pop(link, []):
            extra.shut("the connection closed")

    def forget(self, peer: PeerId, reason: str = "the peer left") -> None:
        record = self._room.get(peer)
        if record is None or record.data_channel is None:
            return
        channel, record.data_channel = record.data_channel, None
        channel.shut(reason)
        self._room.tidy(peer)

    def close(self) -> None:
        for record in self._room:
            self.forget(record.id, "the agent left")
        for record in self._room:
            for link in list(record.extra_channels):
                self.link_closed(link)
