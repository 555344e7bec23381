"""The agent's room: one :class:`RemotePeer` record per other peer, holding all it knows of it.

"What happens to bob when he leaves" is answered by reading bob's record: whether the
server lists him, his connection, its failures and re-offer backoff, his timers, his
serial work and his data channels. The modules that act on a peer (:mod:`peer.negotiation`,
:mod:`peer.timers`, :mod:`peer.serial`, :mod:`peer.dataplane`) keep no table of their own:
they read and write the record here.

A record's fields default to "nothing known", so a record is dropped as soon as it holds
nothing again (:meth:`Room.tidy`), and a missing one reads the same as an empty one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from signaling.protocol import PeerId

if TYPE_CHECKING:
    from peer.datachannel import ChannelOwner, DataChannel
    from peer.link import PeerLink
    from peer.stats import Sampler


@dataclass(eq=False)
class RemotePeer:
    """One other peer of the room, as this agent knows it."""

    id: PeerId
    #: The server lists it in the room (peer-list, peer-joined; until peer-left).
    member: bool = False
    #: The current connection to it, if any (one per peer, never two).
    link: PeerLink | None = None
    #: Failed connections since the last one that worked: picks the TURN URL to try.
    failures: int = 0
    #: Re-offers since the last connection that worked: the backoff step.
    reoffers: int = 0
    #: After peer-left, the grace before a working connection is closed.
    grace: asyncio.TimerHandle | None = None
    #: The backoff before a failed connection is offered again.
    reoffer: asyncio.TimerHandle | None = None
    #: After peer-joined, how long its offer may take before we offer ourselves.
    offer_wait: asyncio.TimerHandle | None = None
    #: Its serial work (:mod:`peer.serial`): the lock and how many steps wait or run.
    lock: asyncio.Lock | None = None
    backlog: int = 0
    #: The previous stats sample of the current connection (rates are since it).
    sampler: Sampler | None = None
    #: Its ``meshpeer`` data channel (:mod:`peer.dataplane`): kept across its connections.
    data_channel: DataChannel | None = None
    #: The extra data channels, by the connection they belong to (closed with it).
    extra_channels: dict[ChannelOwner, list[DataChannel]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Nothing known: the record can go."""
        return not (
            self.member
            or self.link is not None
            or self.failures
            or self.reoffers
            or self.grace is not None
            or self.reoffer is not None
            or self.offer_wait is not None
            or self.backlog
            or self.data_channel is not None
            or self.extra_channels
        )


class Room:
    """The records of the other peers, by ID."""

    def __init__(self) -> None:
        self._peers: dict[PeerId, RemotePeer] = {}

    def get(self, peer: PeerId) -> RemotePeer | None:
        return self._peers.get(peer)

    def __getitem__(self, peer: PeerId) -> RemotePeer:
        """``peer``'s record, made empty if there is none."""
        record = self._peers.get(peer)
        if record is None:
            record = self._peers[peer] = RemotePeer(peer)
        return record

    def __iter__(self) -> Iterator[RemotePeer]:
        return iter(list(self._peers.values()))

    def tidy(self, peer: PeerId) -> None:
        """Drop ``peer``'s record if it holds nothing any more."""
        record = self._peers.get(peer)
        if record is not None and record.empty:
            del self._peers[peer]

    def is_member(self, peer: PeerId) -> bool:
        record = self._peers.get(peer)
        return record is not None and record.member

    def link(self, peer: PeerId) -> PeerLink | None:
        record = self._peers.get(peer)
        return record.link if record is not None else None

    @property
    def members(self) -> set[PeerId]:
        """Who the server says is in the room besides us (a copy)."""
        return {record.id for record in self._peers.values() if record.member}

    @property
    def links(self) -> dict[PeerId, PeerLink]:
        """The connections, by peer (a copy)."""
        return {r.id: r.link for r in self._peers.values() if r.link is not None}
