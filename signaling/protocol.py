"""The wire protocol as pure data: message types, one parse/serialize pair, error and close codes.

Shared by the server and the peer agent. No I/O, no event loop, no logging: feed it text,
get typed messages back, or a :class:`ProtocolError` that carries the ``error`` code the
server sends to the client. See ``docs/PROTOCOL.md``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, NewType, TypeAlias

from signaling.ice import IceServer, ice_servers_from_json

try:  # optional ("fast" extra): halves the relay's JSON decoding, its largest cost per message
    import orjson

    _fast_loads: Callable[[str], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on what is installed
    _fast_loads = json.loads

PeerId = NewType("PeerId", str)
"""A peer's name in its room (what ``join`` asks for; unique in the room)."""
RoomId = NewType("RoomId", str)

#: Room of clients that name none: the reference server has a single room, this one.
DEFAULT_ROOM = RoomId("default")
#: Longest peer ID, room name or resume token accepted, in characters.
MAX_NAME_LENGTH = 128
#: Longest access token (JWT) accepted, in bytes; longer ones are refused as invalid.
MAX_TOKEN_BYTES = 4096


class MessageType(StrEnum):
    JOIN = "join"
    PEER_LIST = "peer-list"
    PEER_JOINED = "peer-joined"
    PEER_LEFT = "peer-left"
    OFFER = "offer"
    ANSWER = "answer"
    CANDIDATE = "candidate"
    ERROR = "error"
    ICE_SERVERS = "ice-servers"


#: Types only the server may emit: a client sending them could fake a departure.
SERVER_ONLY_TYPES = frozenset(
    {
        MessageType.PEER_LIST,
        MessageType.PEER_JOINED,
        MessageType.PEER_LEFT,
        MessageType.ERROR,
        MessageType.ICE_SERVERS,
    }
)


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` frame. Stable: clients may switch on it."""

    INVALID_JSON = "invalid-json"
    BINARY_FRAME = "binary-frame"
    BAD_MESSAGE = "bad-message"
    RESERVED_TYPE = "reserved-type"
    NOT_JOINED = "not-joined"
    ALREADY_JOINED = "already-joined"
    UNKNOWN_PEER = "unknown-peer"
    FORGED_FROM = "forged-from"
    ID_TAKEN = "id-taken"
    BAD_RESUME_TOKEN = "bad-resume-token"
    ROOM_FULL = "room-full"
    FRAME_TOO_LARGE = "frame-too-large"
    RATE_LIMITED = "rate-limited"
    JOIN_TIMEOUT = "join-timeout"
    AUTH_REQUIRED = "auth-required"
    TOKEN_EXPIRED = "token-expired"
    INVALID_TOKEN = "invalid-token"
    UNAVAILABLE = "unavailable"  # the shared room service (Redis) cannot be reached: retry


#: Refusals that no retry with the same token can fix.
AUTH_ERRORS = frozenset({ErrorCode.AUTH_REQUIRED, ErrorCode.TOKEN_EXPIRED, ErrorCode.INVALID_TOKEN})


class CloseCode(IntEnum):
    """WebSocket close codes the server uses; 4xxx mirror HTTP status codes."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutdown
    MESSAGE_TOO_BIG = 1009  # frame above the hard transport limit
    TRY_AGAIN_LATER = 1013  # the join cannot be served now (shared rooms unreachable)
    BAD_JOIN = 4400  # the join message was invalid
    BAD_RESUME_TOKEN = 4401
    ROOM_FULL = 4403
    UNAUTHORIZED = 4407  # no, expired or invalid access token (401/403 were taken)
    JOIN_TIMEOUT = 4408
    ID_TAKEN = 4409
    REPLACED = 4410  # the same peer resumed on a new connection
    SLOW_CONSUMER = 4508  # outgoing queue overflowed


class ProtocolError(Exception):
    """Bad input from a client; the server turns it into an ``error`` frame."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class Join:
    #: Empty when absent: the server then takes the ID from the access token's ``sub``.
    peer_id: PeerId
    room: RoomId | None = None
    resume_token: str | None = None
    #: Extension: the access token (JWT) of a server that requires one (docs/PROTOCOL.md).
    token: str | None = None


@dataclass(frozen=True, slots=True)
class PeerList:
    peers: tuple[PeerId, ...]
    #: Extension: lets this peer take its ID back on a new connection (docs/PROTOCOL.md).
    resume_token: str | None = None
    room: RoomId | None = None
    #: Extension: STUN/TURN servers (TURN with credentials minted for this peer).
    ice_servers: tuple[IceServer, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerJoined:
    peer_id: PeerId


@dataclass(frozen=True, slots=True)
class PeerLeft:
    peer_id: PeerId


@dataclass(frozen=True, slots=True)
class IceServers:
    """Extension: fresh TURN credentials, before those of the ``peer-list`` expire."""

    ice_servers: tuple[IceServer, ...]


@dataclass(frozen=True, slots=True)
class Error:
    code: str  # a str, not ErrorCode: a client must survive codes it does not know
    message: str


@dataclass(frozen=True, slots=True)
class IceCandidate:
    """A trickled candidate as browsers send it (``RTCIceCandidate.toJSON()``)."""

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None
    username_fragment: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "sdpMid": self.sdp_mid,
            "sdpMLineIndex": self.sdp_mline_index,
            "usernameFragment": self.username_fragment,
        }


@dataclass(frozen=True, slots=True)
class Routed:
    """A message relayed between peers: ``to`` one peer, or to the whole room when None.

    ``raw`` is the text as received, forwarded unchanged (payloads are the peers' business).
    """

    type: str
    sender: PeerId | None = None
    to: PeerId | None = None
    raw: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Offer(Routed):
    sdp: str = ""


@dataclass(frozen=True, slots=True)
class Answer(Routed):
    sdp: str = ""


@dataclass(frozen=True, slots=True)
class Candidate(Routed):
    #: None means end of candidates (a null, absent or empty candidate).
    candidate: IceCandidate | None = None


@dataclass(frozen=True, slots=True)
class Custom(Routed):
    """Any type the protocol does not define (``chat`` ...), forwarded as is."""

    data: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


Message: TypeAlias = Join | PeerList | PeerJoined | PeerLeft | IceServers | Error | Routed


# ---------------------------------------------------------------------------
# Parsing


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_MESSAGE, message)


def _name(obj: dict[str, Any], key: str, kind: str, *, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _bad(f"'{kind}' message needs a '{key}' string")
        return None
    if not isinstance(value, str):
        raise _bad(f"'{key}' must be a non-empty string, got {json.dumps(value)[:40]}")
    return check_name(value, key)


#: Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: a name
#: holding one could forge lines in logs and break people's screens.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_name(value: str, key: str = "name") -> str:
    """A peer ID, room name or resume token as accepted: 1-128 characters, no control or
    format characters nor lone surrogates, in Unicode NFC. Raises :class:`ProtocolError`
    (``bad-message``) naming the rule broken.

    Format characters (category Cf: bidi overrides, zero-width spaces and joiners, soft
    hyphens) make names that look like others; so would two spellings of one accented
    letter. A name not in NFC is refused rather than normalised: the joiner is never told
    the ID it got (``peer-list`` does not carry it), so it would go on naming itself (in
    ``from``, in its rejoins) differently from what the others were told.
    """
    if not value:
        raise _bad(f"'{key}' must be a non-empty string, got \"\"")
    if len(value) > MAX_NAME_LENGTH:
        raise _bad(f"'{key}' is longer than {MAX_NAME_LENGTH} characters")
    if _CONTROL.search(value) is not None:
        raise _bad(f"'{key}' must not contain control characters (newlines, tabs, ...)")
    if not value.isascii():  # ASCII has no format characters and is always NFC
        categories = {unicodedata.category(c) for c in value}
        if "Cf" in categories:
            raise _bad(
                f"'{key}' must not contain format characters (bidi controls, zero-width ...)"
            )
        if "Cs" in categories:  # JSON's "\ud800": no character, shown to others as "?"
            raise _bad(f"'{key}' must not contain lone surrogates")
        if not unicodedata.is_normalized("NFC", value):
            raise _bad(f"'{key}' must be in Unicode NFC (accents composed with their letters)")
    return value


def _token(obj: dict[str, Any]) -> str | None:
    """The join's access token: any non-empty string (the size check is the verifier's)."""
    value = obj.get("token")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(f"'token' must be a string, got {json.dumps(value)[:40]}")
    return value


def _optional_peer(obj: dict[str, Any], key: str, kind: str) -> PeerId | None:
    value = obj.get(key)
    if value is None or value == "":  # Go clients omit empties; some JS clients send ""
        return None
    if not isinstance(value, str):
        raise _bad(f"'{key}' must be a string, got {json.dumps(value)[:40]}")
    return PeerId(value)


def parse_candidate(value: Any) -> IceCandidate | None:
    """Accept a browser's candidate object, a bare candidate string, or null/"" (the end)."""
    fields = _candidate_fields(value)
    return IceCandidate(*fields) if fields is not None else None


def _candidate_fields(value: Any) -> tuple[str, str | None, int | None, str | None] | None:
    """The checks of :func:`parse_candidate`, building no object (the relay only checks)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value, None, None, None
    if not isinstance(value, dict):
        raise _bad("'candidate' must be an object, a string or null")
    text = value.get("candidate")
    if text is None or text == "":
        return None
    if not isinstance(text, str):
        raise _bad("'candidate.candidate' must be a string")
    mid = value.get("sdpMid")
    index = value.get("sdpMLineIndex")
    ufrag = value.get("usernameFragment")
    if mid is not None and not isinstance(mid, str):
        raise _bad("'candidate.sdpMid' must be a string or null")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise _bad("'candidate.sdpMLineIndex' must be an integer or null")
    if ufrag is not None and not isinstance(ufrag, str):
        raise _bad("'candidate.usernameFragment' must be a string or null")
    return text, mid, index, ufrag


def parse(text: str | bytes) -> Message:
    """Parse and validate one frame. Raises :class:`ProtocolError` with the code to send."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting: Recursion
        raise ProtocolError(ErrorCode.INVALID_JSON, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _bad("a message must be a JSON object")
    return parse_object(obj, text if isinstance(text, str) else text.decode())


#: Relayed types whose payload :func:`parse` checks; the relay's common case.
_CHECKED_ROUTED_TYPES = frozenset({MessageType.OFFER, MessageType.ANSWER, MessageType.CANDIDATE})
_CANDIDATE = MessageType.CANDIDATE  # an enum member lookup costs ~0.1 us on Python 3.11


def peek_route(text: str) -> tuple[str, PeerId | None, PeerId | None] | None:
    """``(type, from, to)`` of a valid offer, answer or candidate, else None.

    The relay's hot path: the same checks as :func:`parse` (which calls the same helpers),
    without building message objects. None means "ask :func:`parse`": it is never a
    different verdict, only a slower road to the same one (and to the error to send).
    orjson, where installed, decodes; it is stricter than :mod:`json` (NaN, lone surrogates,
    huge integers) and a frame it refuses goes to :func:`parse` too.
    """
    try:
        obj = _fast_loads(text)
    except (ValueError, RecursionError):
        return None
    if type(obj) is not dict:
        return None
    kind = obj.get("type")
    if type(kind) is not str or kind not in _CHECKED_ROUTED_TYPES:
        return None
    # _optional_peer's checks, inlined (a call per field is a tenth of this function's cost):
    # a JSON string or null/absent; "" means absent; anything else is parse's error to send.
    # Typed as what they are once the next line has checked them (they come in as Any).
    sender: PeerId | None = obj.get("from")
    to: PeerId | None = obj.get("to")
    if (sender is not None and type(sender) is not str) or (to is not None and type(to) is not str):
        return None
    try:
        if kind == _CANDIDATE:
            _candidate_fields(obj.get("candidate"))
        elif type(obj.get("sdp")) is not str:
            return None
    except ProtocolError:
        return None
    return kind, sender or None, to or None


def parse_object(obj: dict[str, Any], raw: str = "") -> Message:
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise _bad("a message needs a 'type' string")
    if kind == MessageType.JOIN:
        token = _token(obj)
        # Absent only makes sense with a token (the server then takes the token's ID): the
        # server refuses it otherwise (signaling.auth.authorize), as it would here.
        peer = _name(obj, "peerId", kind, required=False)
        room = _name(obj, "room", kind, required=False)
        resume = _name(obj, "resumeToken", kind, required=False)
        return Join(PeerId(peer or ""), RoomId(room) if room else None, resume, token)
    if kind in (MessageType.OFFER, MessageType.ANSWER):
        sdp = obj.get("sdp")
        if not isinstance(sdp, str):
            raise _bad(f"'{kind}' message needs an 'sdp' string")
        cls = Offer if kind == MessageType.OFFER else Answer
        return cls(
            kind, _optional_peer(obj, "from", kind), _optional_peer(obj, "to", kind), raw, sdp=sdp
        )
    if kind == MessageType.CANDIDATE:
        return Candidate(
            kind,
            _optional_peer(obj, "from", kind),
            _optional_peer(obj, "to", kind),
            raw,
            candidate=parse_candidate(obj.get("candidate")),
        )
    if kind == MessageType.PEER_LIST:
        peers = obj.get("peers")
        if peers is None:  # the reference server omits an empty list
            peers = []
        if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
            raise _bad("'peers' must be an array of strings")
        token = obj.get("resumeToken")
        room = obj.get("room")
        return PeerList(
            tuple(PeerId(p) for p in peers),
            token if isinstance(token, str) else None,
            RoomId(room) if isinstance(room, str) else None,
            ice_servers_from_json(obj.get("iceServers")),
        )
    if kind in (MessageType.PEER_JOINED, MessageType.PEER_LEFT):
        # From a server: any non-empty string (the reference server checks no names).
        peer = obj.get("peerId")
        if not isinstance(peer, str) or not peer:
            raise _bad(f"'{kind}' message needs a 'peerId' string")
        return (PeerJoined if kind == MessageType.PEER_JOINED else PeerLeft)(PeerId(peer))
    if kind == MessageType.ICE_SERVERS:
        return IceServers(ice_servers_from_json(obj.get("iceServers")))
    if kind == MessageType.ERROR:
        code, message = obj.get("code"), obj.get("message")
        return Error(str(code or ""), str(message or ""))
    sender, to = _optional_peer(obj, "from", kind), _optional_peer(obj, "to", kind)
    return Custom(kind, sender, to, raw, obj)


# ---------------------------------------------------------------------------
# Serializing


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def serialize(message: Message) -> str:
    """One frame of text for ``message``; the inverse of :func:`parse`."""
    match message:
        case Join(peer_id, room, resume, token):
            obj: dict[str, Any] = {"type": "join"}
            if peer_id:
                obj["peerId"] = peer_id
            if room is not None:
                obj["room"] = room
            if resume is not None:
                obj["resumeToken"] = resume
            if token is not None:
                obj["token"] = token
        case PeerList(peers, resume, room, ice_servers):
            obj = {"type": "peer-list", "peers": list(peers)}
            if resume is not None:
                obj["resumeToken"] = resume
            if room is not None:
                obj["room"] = room
            if ice_servers:
                obj["iceServers"] = [server.to_json() for server in ice_servers]
        case PeerJoined(peer_id):
            obj = {"type": "peer-joined", "peerId": peer_id}
        case PeerLeft(peer_id):
            obj = {"type": "peer-left", "peerId": peer_id}
        case IceServers(ice_servers):
            obj = {"type": "ice-servers", "iceServers": [s.to_json() for s in ice_servers]}
        case Error(code, text):
            obj = {"type": "error", "code": code, "message": text}
        case Custom():
            obj = dict(message.data)
            obj["type"] = message.type
            _address(obj, message)
        case Offer() | Answer():
            obj = {"type": message.type}
            _address(obj, message)
            obj["sdp"] = message.sdp
        case Candidate():
            obj = {"type": message.type}
            _address(obj, message)
            cand = message.candidate
            obj["candidate"] = cand.to_json() if cand is not None else None
        case Routed():
            if message.raw:
                return message.raw
            obj = {"type": message.type}
            _address(obj, message)
        case _:  # pragma: no cover - exhaustive above
            raise TypeError(f"cannot serialize {message!r}")
    return _dumps(obj)


def _address(obj: dict[str, Any], message: Routed) -> None:
    if message.sender is not None:
        obj["from"] = message.sender
    else:
        obj.pop("from", None)
    if message.to is not None:
        obj["to"] = message.to
    else:
        obj.pop("to", None)


def stamp_sender(raw: str, sender: PeerId) -> str:
    """``raw`` with ``"from": sender`` added, for a message that had no ``from``.

    Splices the field in after the opening brace instead of re-serializing, so the
    payload reaches the addressee byte for byte as it was sent. Text that already holds a
    ``"from"`` key (an explicit empty or null one, or one nested in the payload) is
    re-serialized instead: a second top-level key would be ambiguous.
    """
    if '"from"' in raw:
        obj = json.loads(raw)
        obj["from"] = sender
        return _dumps(obj)
    start = raw.find("{")
    field_ = '"from":' + json.dumps(sender, ensure_ascii=False) + ","
    return raw[: start + 1] + field_ + raw[start + 1 :]
