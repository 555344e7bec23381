"""Access tokens: an HS256 JWT that admits one peer ID to one room until it expires.

PyJWT checks the token (encoding, header, HS256 signature, ``aud``); this module adds our
own rules on top: ``sub`` and ``room`` are names as a join's ``peerId`` and ``room`` are
(:func:`signaling.protocol.check_name`), times are finite numbers checked against the
``now`` the caller passes (so verification stays pure: nothing here reads a clock, a file or
the network), and the join's room and ID must match. Any backend can mint tokens without
meshpeer (docs/PROTOCOL.md, "Access tokens"):

    {"sub": "<peer ID>", "room": "<room>", "exp": <unix seconds>, "nbf"?: ..., "iat"?: ...}

Only HS256 is accepted, whatever the token's header says (no ``alg: none``, no RS/HS
confusion). A refusal names its reason for the server's log, never the token itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import jwt
from jwt.exceptions import InvalidSubjectError

from signaling.protocol import (
    MAX_TOKEN_BYTES,
    CloseCode,
    ErrorCode,
    PeerId,
    ProtocolError,
    RoomId,
    check_name,
)
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
    BAD_NAME = "claim is no valid name"
    AUDIENCE = "token for another audience"
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


#: PyJWT reads the clock itself: its time checks are off, ours use the ``now`` passed in.
_PYJWT_OPTIONS: jwt.types.Options = {
    "require": list(REQUIRED_CLAIMS),
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}


class TokenVerifier:
    """Checks tokens against one secret and, when given one, one audience (``aud``)."""

    def __init__(self, secret: bytes, leeway: float = LEEWAY, audience: str | None = None):
        self._secret = check_secret(secret)
        self.leeway = leeway
        #: None: a token naming any audience is refused (it was minted for another service
        #: that shares the secret); else a token must name this one.
        self.audience = audience

    def verify(self, token: str | None, now: float) -> Grant:
        """The grant of a valid ``token`` at Unix time ``now``; raises :class:`TokenRefused`."""
        if not token:
            raise TokenRefused(Reason.MISSING)
        if len(token.encode("utf-8", "replace")) > MAX_TOKEN_BYTES:
            raise TokenRefused(Reason.TOO_LARGE, f"over {MAX_TOKEN_BYTES} bytes")
        if not token.isascii():  # a JWT is base64url and dots (PyJWT would encode it to UTF-8,
            raise TokenRefused(Reason.MALFORMED, "not ASCII")  # and fail on a lone surrogate)
        try:
            decoded = jwt.decode_complete(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self.audience,
                options=_PYJWT_OPTIONS,
            )
        except jwt.PyJWTError as exc:
            raise _refusal(exc) from None
        typ = decoded["header"].get("typ", "JWT")
        if not isinstance(typ, str):  # RFC 7515 4.1.9; PyJWT leaves it unchecked
            raise TokenRefused(Reason.MALFORMED, "'typ' is not a string")
        claims: dict[str, Any] = decoded["payload"]
        subject, room = claims["sub"], claims["room"]
        if not isinstance(subject, str) or not subject or not isinstance(room, str) or not room:
            raise TokenRefused(Reason.MISSING_CLAIM, "'sub' and 'room' must be non-empty strings")
        try:  # exactly as a join's own: sub becomes the peer ID of a join that names none
            check_name(subject, "sub")
            check_name(room, "room")
        except ProtocolError as exc:
            raise TokenRefused(Reason.BAD_NAME, exc.message) from None
        expires = _check_times(claims, now, self.leeway)
        return Grant(PeerId(subject), RoomId(room), expires)

    def admit(self, token: str | None, room: RoomId, peer_id: PeerId | None, now: float) -> Grant:
        """Verify ``token`` for a join of ``room`` as ``peer_id`` (None: take it from ``sub``)."""
        grant = self.verify(token, now)
        if grant.room != room:
            raise TokenRefused(Reason.WRONG_ROOM)
        if peer_id is not None and grant.peer_id != peer_id:
            raise TokenRefused(Reason.WRONG_PEER)
        return grant


def _refusal(exc: jwt.PyJWTError) -> TokenRefused:
    """PyJWT's exception as our reason. Its message may quote a piece of the header (an
    unknown ``crit`` extension): it is kept short and escaped, like any client string."""
    detail = repr(str(exc)[:80])
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return TokenRefused(Reason.ALGORITHM)
    if isinstance(exc, jwt.InvalidSignatureError):
        return TokenRefused(Reason.SIGNATURE)
    if isinstance(exc, jwt.InvalidAudienceError) or (
        isinstance(exc, jwt.MissingRequiredClaimError) and exc.claim == "aud"
    ):
        return TokenRefused(Reason.AUDIENCE, detail)
    if isinstance(exc, jwt.MissingRequiredClaimError | InvalidSubjectError):
        return TokenRefused(Reason.MISSING_CLAIM, detail)
    return TokenRefused(Reason.MALFORMED, detail)


def _seconds(claims: dict[str, Any], name: str) -> float | None:
    """A time claim as a finite float; None when absent. PyJWT's json reads NaN, Infinity
    and 1e400 (infinite), and integers too big for a float: none of them is a time."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if math.isfinite(seconds):
            return seconds
    raise TokenRefused(Reason.MISSING_CLAIM, f"'{name}' must be a finite number")


def _check_times(claims: dict[str, Any], now: float, leeway: float) -> float:
    """``exp`` once ``exp``, ``nbf`` and ``iat`` are checked at ``now`` (PyJWT's rules)."""
    expires, not_before, issued = (_seconds(claims, n) for n in ("exp", "nbf", "iat"))
    if expires is None:  # pragma: no cover - PyJWT requires it
        raise TokenRefused(Reason.MISSING_CLAIM, "no 'exp' claim")
    if now - leeway >= expires:
        raise TokenRefused(Reason.EXPIRED, f"{now - expires:.0f} s ago")
    if not_before is not None and now + leeway < not_before:
        raise TokenRefused(Reason.NOT_YET_VALID, f"'nbf' is {not_before - now:.0f} s ahead")
    if issued is not None and now + leeway < issued:
        raise TokenRefused(Reason.NOT_YET_VALID, f"'iat' is {issued - now:.0f} s ahead")
    return expires


def authorize(
    request: JoinRequest, verifier: TokenVerifier | None, now: float
) -> JoinRequest | Reply:
    """The join as admitted (its ``peerId`` from the token when it named none, and when the
    token stops being accepted), or a refusal.

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
    until = grant.expires + verifier.leeway
    if join.peer_id:
        return replace(request, admitted_until=until)
    return JoinRequest(replace(join, peer_id=grant.peer_id), request.room, until)


_REFUSAL_TEXT = {
    ErrorCode.AUTH_REQUIRED: "this server needs an access token ('token' in join, or ?token=): ",
    ErrorCode.TOKEN_EXPIRED: "access token ",
    ErrorCode.INVALID_TOKEN: "access token refused: ",
}


def mint_token(
    secret: bytes,
    room: str,
    peer_id: str,
    ttl: float = 3600.0,
    now: float | None = None,
    audience: str | None = None,
) -> str:
    """A token admitting ``peer_id`` to ``room`` for ``ttl`` seconds (``meshpeer token``),
    for the server of ``audience`` (``--auth-audience``) when given."""
    issued = time.time() if now is None else now
    claims: dict[str, Any] = {
        "sub": peer_id,
        "room": room,
        "iat": int(issued),
        "exp": int(issued + ttl),
    }
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, check_secret(secret), algorithm=ALGORITHM)
