"""meshpeer's peer agent: a Python bot in a browser room.

Everything a bot needs is importable from here (``from peer import Agent, TrackReceived``);
the submodules are the implementation (docs/ARCHITECTURE.md). This is the only module of
``peer`` that imports the whole package: no module inside imports names from it
(``tests/peer/test_layers.py``), so there is no cycle through it.

The agent (``Agent``, ``Encoding``, ``Vp8Settings``, ``DataLimits``, ``IceServer``); its
events (every class of ``Event``) and what they carry (``RemoteTrack``, ``PeerStats``...);
sending (``LocalMedia``, ``open_local_media``, ``VideoSource``, ``AudioSource``);
receiving (``video_frames``' ``ReceivedVideo``, ``audio_frames``' ``ReceivedAudio``,
``FrameConsumer``, ``Recorder``, ``Mosaic``); every error class (``MeshpeerError`` is the
root of the package's own). ``tests/peer/test_public.py`` holds the list to that.
"""

from peer.agent import Agent
from peer.candidates import CandidateError
from peer.channel_limits import DataLimits
from peer.datachannel import DataChannel
from peer.errors import MeshpeerError
from peer.events import (
    ChannelOpened,
    ConnectionStateChanged,
    DataDropped,
    DataReceived,
    Event,
    Failed,
    FirstFrame,
    IceServerProblem,
    Joined,
    Kind,
    PeerJoined,
    PeerLeft,
    RemoteTrack,
    RoomMessage,
    SignalingLost,
    StatsReport,
    TrackEnded,
    TrackReceived,
)
from peer.ice import IceServer
from peer.media.capture import AudioSource, SourceStopped, VideoSource
from peer.media.encoders import UnsupportedCodec, Vp8Settings
from peer.media.errors import DisplayError, MediaError, MediaSourceError
from peer.media.fanout import Encoding
from peer.media.mosaic import Mosaic
from peer.media.readers import ReceivedAudio, ReceivedVideo
from peer.media.recorder import Recorder
from peer.media.sources import LocalMedia, VideoSettings, open_local_media
from peer.media.tap import FrameConsumer
from peer.mesh import LinkState
from peer.signaling_client import JoinRefused, SignalingError
from peer.stats import PeerStats
from signaling.ice import IceServerError
from signaling.protocol import PeerId

__all__ = [
    "Agent",
    "AudioSource",
    "CandidateError",
    "ChannelOpened",
    "ConnectionStateChanged",
    "DataChannel",
    "DataDropped",
    "DataLimits",
    "DataReceived",
    "DisplayError",
    "Encoding",
    "Event",
    "Failed",
    "FirstFrame",
    "FrameConsumer",
    "IceServer",
    "IceServerError",
    "IceServerProblem",
    "JoinRefused",
    "Joined",
    "Kind",
    "LinkState",
    "LocalMedia",
    "MediaError",
    "MediaSourceError",
    "MeshpeerError",
    "Mosaic",
    "PeerId",
    "PeerJoined",
    "PeerLeft",
    "PeerStats",
    "ReceivedAudio",
    "ReceivedVideo",
    "Recorder",
    "RemoteTrack",
    "RoomMessage",
    "SignalingError",
    "SignalingLost",
    "SourceStopped",
    "StatsReport",
    "TrackEnded",
    "TrackReceived",
    "UnsupportedCodec",
    "VideoSettings",
    "VideoSource",
    "Vp8Settings",
    "open_local_media",
]
