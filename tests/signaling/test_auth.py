"""Access tokens, TURN credentials and admission rules: the pure core, no sockets, no clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.admission import IpGate, OriginError, OriginPolicy, client_address, normalize_origin
from signaling.auth import (
    LEEWAY,
    Reason,
    SecretError,
    TokenRefused,
    TokenVerifier,
    authorize,
    mint_token,
    read_claims,
)
from signaling.ice import IceServer
from signaling.metrics import Refusal
from signaling.protocol import (
    MAX_TOKEN_BYTES,
    CloseCode,
    ErrorCode,
    Join,
    PeerId,
    RoomId,
    parse,
    serialize,
)
from signaling.session import JoinRequest, Reply
from signaling.turn import TurnMinter, turn_credentials

SECRET = b"k" * 32
NOW = 1_800_000_000.0
VERIFIER = TokenVerifier(SECRET)


def token(claims: dict[str, Any], secret: bytes = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def valid(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "alice", "room": "lobby", "exp": NOW + 60}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def refusal(text: str | None, room: str = "lobby", peer: str | None = "alice") -> Reason:
    with pytest.raises(TokenRefused) as info:
        VERIFIER.admit(text, RoomId(room), PeerId(peer) if peer else None, NOW)
    assert "ey" not in str(info.value)  # the reason never carries the token
    return info.value.reason


def test_a_valid_token_admits_its_peer_to_its_room() -> None:
    grant = VERIFIER.admit(token(valid()), RoomId("lobby"), PeerId("alice"), NOW)
    assert (grant.peer_id, grant.room, grant.expires) == ("alice", "lobby", NOW + 60)
    # nbf and iat in the past are fine; so is the peer ID taken from sub.
    earlier = valid(nbf=NOW - 5, iat=NOW - 5)
    assert VERIFIER.admit(token(earlier), RoomId("lobby"), None, NOW).peer_id == "alice"


def _forged_alg_none() -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(valid())}."


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, Reason.MISSING),
        ("", Reason.MISSING),
        (token(valid(exp=NOW - LEEWAY - 1)), Reason.EXPIRED),
        (token(valid(nbf=NOW + LEEWAY + 5)), Reason.NOT_YET_VALID),
        (token(valid(iat=NOW + LEEWAY + 5)), Reason.NOT_YET_VALID),
        (token(valid(), secret=b"x" * 32), Reason.SIGNATURE),
        (token(valid(), secret=b"y" * 64, alg="HS512"), Reason.ALGORITHM),
        (token(valid(), secret=b"y" * 48, alg="HS384"), Reason.ALGORITHM),
        (_forged_alg_none(), Reason.ALGORITHM),
        (jwt.encode(valid(), None, algorithm="none"), Reason.ALGORITHM),
        ("not-a-jwt", Reason.MALFORMED),
        ("a.b.c", Reason.MALFORMED),
        (token(valid())[:-3], Reason.SIGNATURE),
        (token(valid(exp=None)), Reason.MISSING_CLAIM),
        (token(valid(sub=None)), Reason.MISSING_CLAIM),
        (token(valid(room=None)), Reason.MISSING_CLAIM),
        (token(valid(sub=7)), Reason.MISSING_CLAIM),
        (token(valid(room=["lobby"])), Reason.MISSING_CLAIM),
        (token(valid(sub="")), Reason.MISSING_CLAIM),
        (token(valid(exp="tomorrow")), Reason.MISSING_CLAIM),
        (token(valid(nbf="soon")), Reason.MISSING_CLAIM),
        (token(valid(room="other")), Reason.WRONG_ROOM),
        (token(valid(sub="mallory")), Reason.WRONG_PEER),
        (token(valid(pad="x" * MAX_TOKEN_BYTES)), Reason.TOO_LARGE),
    ],
)
def test_every_bad_token_is_refused_with_its_reason(text: str | None, reason: Reason) -> None:
    assert refusal(text) is reason


def test_refusal_codes_tell_a_client_what_to_do() -> None:
    assert Reason.MISSING.code is ErrorCode.AUTH_REQUIRED
    assert Reason.EXPIRED.code is ErrorCode.TOKEN_EXPIRED
    others = set(Reason) - {Reason.MISSING, Reason.EXPIRED}
    assert {r.code for r in others} == {ErrorCode.INVALID_TOKEN}


def test_leeway_tolerates_small_clock_skew_only() -> None:
    assert VERIFIER.verify(token(valid(exp=NOW - LEEWAY + 1)), NOW)
    assert VERIFIER.verify(token(valid(nbf=NOW + LEEWAY - 1)), NOW)
    assert refusal(token(valid(exp=NOW - LEEWAY))) is Reason.EXPIRED


def test_short_secrets_are_refused() -> None:
    with pytest.raises(SecretError, match="at least 32"):
        TokenVerifier(b"short")
    with pytest.raises(SecretError):
        mint_token(b"short", "lobby", "alice")


def test_minted_tokens_verify_and_read_back() -> None:
    text = mint_token(SECRET, "lobby", "alice", ttl=90, now=NOW)
    assert VERIFIER.admit(text, RoomId("lobby"), PeerId("alice"), NOW + 89).expires == NOW + 90
    assert refusal(mint_token(SECRET, "lobby", "alice", ttl=90, now=NOW - 200)) is Reason.EXPIRED
    assert read_claims(text) == ("alice", "lobby")
    assert read_claims("garbage") == (None, None)


def join_request(join: Join, room: str = "lobby") -> JoinRequest:
    return JoinRequest(join, RoomId(room))


def test_authorize_takes_the_peer_id_from_the_token() -> None:
    good = token(valid())
    admitted = authorize(join_request(Join(PeerId(""), token=good)), VERIFIER, NOW)
    assert isinstance(admitted, JoinRequest) and admitted.join.peer_id == "alice"


def test_the_session_takes_the_url_token_unless_the_join_has_its_own() -> None:
    from signaling.session import Limits, Session

    def request(text: str, url_token: str | None) -> JoinRequest | Reply:
        decision = Session(Limits(), 0.0, None, url_token).receive(text, 0.0)
        assert isinstance(decision, JoinRequest | Reply)
        return decision

    from_url = request('{"type":"join"}', "url-token")
    assert isinstance(from_url, JoinRequest) and from_url.join.token == "url-token"
    own = request('{"type":"join","peerId":"a","token":"own"}', "url-token")
    assert isinstance(own, JoinRequest) and own.join.token == "own"
    nameless = request('{"type":"join"}', None)  # neither an ID nor a token to take it from
    assert isinstance(nameless, Reply) and nameless.close is CloseCode.BAD_JOIN


def test_authorize_refuses_with_close_4407_and_a_reason() -> None:
    for join, code in [
        (Join(PeerId("alice")), ErrorCode.AUTH_REQUIRED),
        (Join(PeerId("alice"), token=token(valid(exp=NOW - 100))), ErrorCode.TOKEN_EXPIRED),
        (Join(PeerId("bob"), token=token(valid())), ErrorCode.INVALID_TOKEN),
    ]:
        reply = authorize(join_request(join), VERIFIER, NOW)
        assert isinstance(reply, Reply), join
        assert (reply.error.code, reply.close) == (code, CloseCode.UNAUTHORIZED)
        assert reply.error.message


def test_without_auth_a_join_needs_a_peer_id_and_tokens_are_ignored() -> None:
    plain = join_request(Join(PeerId("alice"), token="anything"))
    assert authorize(plain, None, NOW) is plain
    nameless = authorize(join_request(Join(PeerId(""), token="x")), None, NOW)
    assert isinstance(nameless, Reply) and nameless.close is CloseCode.BAD_JOIN


def test_join_token_field_round_trips_and_peer_id_may_be_absent_with_a_token() -> None:
    join = Join(PeerId(""), RoomId("lobby"), None, "tok")
    assert parse(serialize(join)) == join
    assert parse('{"type":"join","token":"t"}') == Join(PeerId(""), token="t")
    assert parse('{"type":"join"}') == Join(PeerId(""))  # the server refuses it without auth
    with pytest.raises(Exception, match="token"):
        parse('{"type":"join","peerId":"a","token":5}')


# -- hypothesis: random claim sets ------------------------------------------------------

claim_values = st.one_of(
    st.none(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=8),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
times = st.floats(NOW - 10_000, NOW + 10_000)
claim_sets = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.one_of(st.sampled_from(["alice", "bob", ""]), claim_values),
        "room": st.one_of(st.sampled_from(["lobby", "hall"]), claim_values),
        "exp": st.one_of(times, claim_values),
        "nbf": st.one_of(times, claim_values),
        "iat": st.one_of(times, claim_values),
        "extra": claim_values,
    },
)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def expected_ok(claims: dict[str, Any]) -> bool:
    """The rule, written independently of the verifier."""
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    if claims.get("sub") != "alice" or claims.get("room") != "lobby" or not _number(exp):
        return False
    if any(k in claims and not _number(claims[k]) for k in ("nbf", "iat")):
        return False
    return (
        exp > NOW - LEEWAY
        and (nbf is None or nbf <= NOW + LEEWAY)
        and (iat is None or iat <= NOW + LEEWAY)
    )


@settings(max_examples=300, deadline=None)
@given(claim_sets)
def test_random_claim_sets_are_admitted_exactly_when_valid(claims: dict[str, Any]) -> None:
    text = token(claims)
    try:
        VERIFIER.admit(text, RoomId("lobby"), PeerId("alice"), NOW)
        admitted = True
    except TokenRefused:
        admitted = False
    assert admitted == expected_ok(claims), claims


@settings(max_examples=100, deadline=None)
@given(claim_sets, st.binary(min_size=32, max_size=40))
def test_no_claim_set_gets_in_with_another_secret(claims: dict[str, Any], secret: bytes) -> None:
    if secret == SECRET:
        return
    with pytest.raises(TokenRefused):
        VERIFIER.admit(token(claims, secret), RoomId("lobby"), PeerId("alice"), NOW)


# -- TURN credentials (coturn's REST convention) ------------------------------------------


def test_turn_credentials_follow_coturns_rest_convention() -> None:
    username, credential = turn_credentials(b"turn-secret", "alice", 1_800_003_600)
    assert username == "1800003600:alice"
    digest = hmac.new(b"turn-secret", b"1800003600:alice", hashlib.sha1).digest()
    assert credential == base64.b64encode(digest).decode()


def test_the_minter_hands_every_url_the_same_fresh_credentials() -> None:
    urls = (IceServer("turn:t:3478?transport=udp"), IceServer("turns:t:5349?transport=tcp"))
    servers = TurnMinter(urls, b"s", ttl=600).servers_for("bob", NOW)
    assert [s.url for s in servers] == [u.url for u in urls]
    assert {s.username for s in servers} == {f"{int(NOW + 600)}:bob"}
    assert servers[0].credential == turn_credentials(b"s", "bob", int(NOW + 600))[1]


def test_peer_list_carries_ice_servers_and_parses_them_back() -> None:
    from signaling.protocol import PeerList

    servers = (IceServer("stun:s:3478"), IceServer("turn:t:3478", "1:bob", "cred"))
    text = serialize(PeerList((PeerId("a"),), "tok", RoomId("r"), servers))
    assert json.loads(text)["iceServers"] == [
        {"urls": "stun:s:3478"},
        {"urls": "turn:t:3478", "username": "1:bob", "credential": "cred"},
    ]
    assert parse(text) == PeerList((PeerId("a"),), "tok", RoomId("r"), servers)
    assert "iceServers" not in serialize(PeerList(()))
    # A client keeps what it can use: lists of URLs, and skips what it cannot.
    odd = (
        '{"type":"peer-list","peers":[],"iceServers":[{"urls":["stun:a:1","bogus:x"]},'
        '7,{"urls":5},{"urls":"turn:b:2","username":1}]}'
    )
    parsed = parse(odd)
    assert isinstance(parsed, PeerList)
    assert parsed.ice_servers == (IceServer("stun:a:1"), IceServer("turn:b:2"))


# -- admission: origins and per-address caps ---------------------------------------------


def test_origins_are_normalized_and_checked() -> None:
    assert normalize_origin("https://App.Example.com/") == "https://app.example.com"
    for bad in ("app.example.com", "ftp://x", "https://x/path", "https://u@x"):
        with pytest.raises(OriginError):
            normalize_origin(bad)
    policy = OriginPolicy.of(["https://app.example.com"])
    assert policy.admits("https://app.example.com", "signal.example.com")
    assert policy.admits("HTTPS://APP.EXAMPLE.COM", "signal.example.com")
    assert not policy.admits("https://evil.example", "signal.example.com")
    assert policy.admits(None, "signal.example.com")  # no Origin: a bot
    assert policy.admits("http://signal.example.com:8080", "signal.example.com:8080")  # own page
    assert OriginPolicy().admits("https://anything", "h")  # no list: any


def test_client_address_trusts_only_the_proxys_own_hop() -> None:
    assert client_address("10.0.0.9", "1.2.3.4", trust_proxy=False) == "10.0.0.9"
    assert client_address("10.0.0.9", "6.6.6.6, 1.2.3.4", trust_proxy=True) == "1.2.3.4"
    assert client_address("10.0.0.9", None, trust_proxy=True) == "10.0.0.9"
    assert client_address(None, None, trust_proxy=False) == "unknown"


def test_ip_gate_caps_open_connections_per_address() -> None:
    gate = IpGate(max_connections=2, connects_per_minute=0)
    assert gate.open("a", 0) is None and gate.open("a", 0) is None
    assert gate.open("a", 0) is Refusal.IP_CONNECTIONS
    assert gate.open("b", 0) is None  # others are not affected
    gate.close("a")
    assert gate.open("a", 0) is None


def test_ip_gate_caps_new_connections_per_minute_with_a_refilling_bucket() -> None:
    gate = IpGate(max_connections=0, connects_per_minute=6)
    for _ in range(6):
        assert gate.open("a", 100.0) is None
        gate.close("a")
    assert gate.open("a", 100.0) is Refusal.IP_RATE
    assert gate.open("a", 109.0) is Refusal.IP_RATE  # 6 a minute: one more every 10 s
    assert gate.open("a", 110.0) is None
    gate.close("a")
    assert gate.open("a", 115.0) is Refusal.IP_RATE


def test_ip_gate_forgets_idle_addresses() -> None:
    gate = IpGate(max_connections=5, connects_per_minute=60)
    for i in range(1000):
        address = f"10.0.{i // 250}.{i % 250}"
        assert gate.open(address, float(i)) is None
        gate.close(address)
    assert len(gate) < 200  # addresses idle for a minute are pruned as new ones come


# -- the server's check against PyJWT's, on random tokens ------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assemble(header: Any, claims: Any, secret: bytes, alg: str = "sha256") -> str:
    """A token from raw parts, signed like HS256 (whatever the header claims)."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    digest = hmac.new(secret, f"{head}.{body}".encode(), alg).digest()
    return f"{head}.{body}.{b64url(digest)}"


def pyjwt_admits(text: str) -> bool:
    """PyJWT's verdict with the same rules: HS256 only, sub/room/exp required, our times."""
    try:
        claims = jwt.decode(
            text,
            SECRET,
            algorithms=["HS256"],
            # Times against NOW, not the real clock: expected_ok below checks them.
            options={
                "require": ["sub", "room", "exp"],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except (jwt.PyJWTError, ValueError, TypeError):
        return False
    return expected_ok(claims)


def ours_admits(text: str) -> bool:
    try:
        VERIFIER.admit(text, RoomId("lobby"), PeerId("alice"), NOW)
    except TokenRefused:
        return False
    return True


headers = st.fixed_dictionaries(
    {
        "alg": st.one_of(
            st.just("HS256"), st.sampled_from(["HS384", "hs256", "none", "RS256", "", 5, None])
        )
    },
    optional={
        "typ": st.sampled_from(["JWT", "jwt", 1]),
        "kid": st.text(max_size=4),
        "crit": st.just(["b64"]),
        "b64": st.booleans(),
        "jku": st.just("https://example.invalid/keys"),
    },
)


def mutate(text: str, data: st.DataObject) -> str:
    how = data.draw(
        st.one_of(
            st.just("none"), st.sampled_from(["char", "pad", "drop", "extra", "space", "swap"])
        )
    )
    if how == "char" and text:
        i = data.draw(st.integers(0, len(text) - 1))
        return text[:i] + data.draw(st.sampled_from(list("A_-=.+/ é!"))) + text[i + 1 :]
    if how == "pad":
        return text + "=" * data.draw(st.integers(1, 3))
    if how == "drop":
        return text.rsplit(".", 1)[0]
    if how == "extra":
        return text + ".e30"
    if how == "space":
        return f" {text}"
    if how == "swap":
        head, body, sig = text.split(".") if text.count(".") == 2 else (text, "", "")
        return f"{body}.{head}.{sig}"
    return text


#: Mostly valid claim sets, so that admissions are common enough to compare.
near_valid = st.one_of(
    claim_sets,
    st.builds(
        lambda extra: {**valid(), **extra},
        st.fixed_dictionaries(
            {}, optional={"exp": st.one_of(times, claim_values), "nbf": times, "iat": times}
        ),
    ),
)


@settings(max_examples=600, deadline=None)
@given(headers, near_valid, st.sampled_from([SECRET, b"x" * 32]), st.data())
def test_the_server_never_admits_a_token_pyjwt_refuses(
    header: dict[str, Any], claims: dict[str, Any], secret: bytes, data: st.DataObject
) -> None:
    """Random headers, claims, keys and corruptions: ours admits only what PyJWT admits,
    and exactly what it admits for tokens of the canonical HS256 header."""
    text = mutate(assemble(header, claims, secret), data)
    ours, theirs = ours_admits(text), pyjwt_admits(text)
    assert not ours or theirs, (header, claims, text)
    if header.keys() <= {"alg", "typ", "kid"} and "=" not in text:
        assert ours == theirs, (header, claims, text)


@settings(max_examples=200, deadline=None)
@given(claim_sets)
def test_tokens_pyjwt_mints_are_judged_alike(claims: dict[str, Any]) -> None:
    text = jwt.encode(claims, SECRET, algorithm="HS256")
    assert ours_admits(text) == pyjwt_admits(text), claims
