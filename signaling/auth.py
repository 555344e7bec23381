"""Access tokens: an HS256 JWT that admits one peer ID to one room until it expires.

Verification is pure: the caller passes the current Unix time; nothing here reads a clock,
a file or the network. Any backend can mint tokens without meshpeer (docs/PROTOCOL.md,
"Access tokens"):

    {"sub": "<peer ID>", "room": "<room>", "exp": <unix seconds>, "nbf"?: ..., "iat"?: ...}

Only HS256 is accepted, whatever the token's header says (no ``alg: none``, no RS/HS
confusion). A refusal names its reason for the server's log, never the token itself.
PyJWT mints tokens (``meshpeer token``) and is the reference the checks are tested against.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import jwt

from signaling.protocol import MAX_TOKEN_BYTES, CloseCode, ErrorCode, PeerId, RoomId
from signaling.session import JoinRequest, Reply, error_reply

ALGORITHM = "HS256"
#: Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (backend vs this server).
LEEWAY = 10.0
#: Shortest secret accepted: RFC 7518 wants an HS256 key of at least 256 bits.
MIN_SECRET_BYTES = 32
#: Claims a token must carry.
REQUIRED_CLAIMS = ("sub", "room", "exp")


class Reason(StrEnum):
    """Why a token was refused: logged by the server, and mapped to one error code."""

    MISSING = "no token"
    TOO_LARGE = "token too large"
    MALFORMED = "malformed token"
    ALGORITHM = "algorithm not HS256"
    SIGNATURE = "bad signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"
    MISSING_CLAIM = "claim missing or ill-typed"
    WRONG_ROOM = "token for another room"
    WRONG_PEER = "token for another peer ID"

    @property
    def code(self) -> ErrorCode:
        if self is Reason.MISSING:
            return ErrorCode.AUTH_REQUIRED
        if self is Reason.EXPIRED:
            return ErrorCode.TOKEN_EXPIRED
        return ErrorCode.INVALID_TOKEN


class TokenRefused(Exception):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason

    @property
    def code(self) -> ErrorCode:
        return self.reason.code


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token admits."""

    peer_id: PeerId
    room: RoomId
    expires: float


class SecretError(ValueError):
    """A secret that must not be used (empty or too short)."""


def check_secret(secret: bytes, what: str = "auth secret") -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(
            f"the {what} is {len(secret)} bytes; use at least {MIN_SECRET_BYTES} random bytes "
            "(for example: openssl rand -hex 32)"
        )
    return secret


class TokenVerifier:
    """Checks tokens against one secret."""

    def __init__(self, secret: bytes, leeway: float = LEEWAY) -> None:
        self._secret = check_secret(secret)
        self.leeway = leeway

    def verify(self, token: str | None, now: float) -> Grant:
        """The grant of a valid ``token`` at Unix time ``now``; raises :class:`TokenRefused`."""
        if not token:
            raise TokenRefused(Reason.MISSING)
        if len(token) > MAX_TOKEN_BYTES or len(token.encode()) > MAX_TOKEN_BYTES:
            raise TokenRefused(Reason.TOO_LARGE, f"over {MAX_TOKEN_BYTES} bytes")
        claims = self._decode(token, now)
        subject, room, expires = claims.get("sub"), claims.get("room"), claims.get("exp")
        if not isinstance(subject, str) or not subject or not isinstance(room, str) or not room:
            raise TokenRefused(Reason.MISSING_CLAIM, "'sub' and 'room' must be non-empty strings")
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise TokenRefused(Reason.MISSING_CLAIM, "'exp' must be a number")
        return Grant(PeerId(subject), RoomId(room), float(expires))

    def admit(self, token: str | None, room: RoomId, peer_id: PeerId | None, now: float) -> Grant:
        """Verify ``token`` for a join of ``room`` as ``peer_id`` (None: take it from ``sub``)."""
        grant = self.verify(token, now)
        if grant.room != room:
            raise TokenRefused(Reason.WRONG_ROOM)
        if peer_id is not None and grant.peer_id != peer_id:
            raise TokenRefused(Reason.WRONG_PEER)
        return grant

    def _decode(self, token: str, now: float) -> dict[str, Any]:
        """The claims of a token signed with our secret, checked strictly.

        Not PyJWT's decode: on the join path it cost 80 µs of server CPU per join (measured,
        benchmarks/join_cost.py), this 15 µs. The rules are RFC 7515/7519's for HS256, and
        tests/signaling/test_auth.py checks that this never admits a token PyJWT refuses.
        """
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRefused(Reason.MALFORMED, "not three dot-separated segments")
        header_part, payload_part, signature_part = parts
        header = _json_segment(header_part, "header")
        if header.get("alg") != ALGORITHM:
            raise TokenRefused(Reason.ALGORITHM, f"alg is {str(header.get('alg'))[:20]!r}")
        if not header.keys() <= _HEADER_PARAMETERS:  # crit, b64, jku ...: not for us
            extra = sorted(header.keys() - _HEADER_PARAMETERS)[:3]
            raise TokenRefused(Reason.MALFORMED, f"unsupported header parameters {extra}")
        payload = _segment(payload_part, "payload")  # checks the alphabet: ASCII from here
        signature = _segment(signature_part, "signature")
        signed = f"{header_part}.{payload_part}".encode("ascii")
        expected = hmac.new(self._secret, signed, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            raise TokenRefused(Reason.SIGNATURE)
        claims = _json_object(payload, "payload")
        for name in REQUIRED_CLAIMS:
            if name not in claims:
                raise TokenRefused(Reason.MISSING_CLAIM, f"no {name!r} claim")
        _check_times(claims, now, self.leeway)
        return claims


try:  # optional ("fast" extra), as for the relay: stricter than json (no NaN), and faster
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on what is installed
    _loads = json.loads

#: Header parameters a token may carry; anything else (``crit``, ``b64`` ...) is refused.
_HEADER_PARAMETERS = frozenset({"alg", "typ", "kid"})
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _segment(text: str, name: str) -> bytes:
    """One base64url segment, unpadded (RFC 7515 section 2), strictly."""
    if _BASE64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise TokenRefused(Reason.MALFORMED, f"{name} is not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_segment(text: str, name: str) -> dict[str, Any]:
    return _json_object(_segment(text, name), name)


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = _loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise TokenRefused(Reason.MALFORMED, f"{name} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenRefused(Reason.MALFORMED, f"{name} is not a JSON object")
    return value


def _check_times(claims: dict[str, Any], now: float, leeway: float) -> None:
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise TokenRefused(Reason.MISSING_CLAIM, f"'{name}' must be a number")
    if now - leeway >= claims["exp"]:
        raise TokenRefused(Reason.EXPIRED, f"{now - claims['exp']:.0f} s ago")
    nbf = claims.get("nbf")
    if nbf is not None and now + leeway < nbf:
        raise TokenRefused(Reason.NOT_YET_VALID, f"'nbf' is {nbf - now:.0f} s ahead")
    iat = claims.get("iat")
    if iat is not None and now + leeway < iat:
        raise TokenRefused(Reason.NOT_YET_VALID, f"'iat' is {iat - now:.0f} s ahead")


def authorize(
    request: JoinRequest, verifier: TokenVerifier | None, now: float
) -> JoinRequest | Reply:
    """The join as admitted (its ``peerId`` from the token when it named none), or a refusal.

    Without a verifier (auth off) tokens are ignored, and a join still needs its ``peerId``.
    """
    join = request.join
    if verifier is None:
        if not join.peer_id:
            return error_reply(
                ErrorCode.BAD_MESSAGE, "'join' message needs a 'peerId' string", CloseCode.BAD_JOIN
            )
        return request
    try:
        grant = verifier.admit(join.token, request.room, join.peer_id or None, now)
    except TokenRefused as exc:
        return error_reply(exc.code, _REFUSAL_TEXT[exc.code] + str(exc), CloseCode.UNAUTHORIZED)
    if join.peer_id:
        return request
    return JoinRequest(replace(join, peer_id=grant.peer_id), request.room)


_REFUSAL_TEXT = {
    ErrorCode.AUTH_REQUIRED: "this server needs an access token ('token' in join, or ?token=): ",
    ErrorCode.TOKEN_EXPIRED: "access token ",
    ErrorCode.INVALID_TOKEN: "access token refused: ",
}


def read_claims(token: str) -> tuple[str | None, str | None]:
    """``(sub, room)`` of a token, unverified: a client reading its own token's defaults."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None, None
    sub, room = claims.get("sub"), claims.get("room")
    return (sub if isinstance(sub, str) else None), (room if isinstance(room, str) else None)


def mint_token(
    secret: bytes, room: str, peer_id: str, ttl: float = 3600.0, now: float | None = None
) -> str:
    """A token admitting ``peer_id`` to ``room`` for ``ttl`` seconds (``meshpeer token``)."""
    issued = time.time() if now is None else now
    claims = {"sub": peer_id, "room": room, "iat": int(issued), "exp": int(issued + ttl)}
    return jwt.encode(claims, check_secret(secret), algorithm=ALGORITHM)
