"""Access tokens, TURN credentials and admission rules: the pure core, no sockets, no clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import unicodedata
from typing import Any

import jwt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from signaling.admission import (
    ClientAddress,
    IpGate,
    OriginError,
    OriginPolicy,
    client_address,
    counted_address,
    normalize_origin,
)
from signaling.auth import (
    LEEWAY,
    Reason,
    SecretError,
    TokenRefused,
    TokenVerifier,
    authorize,
    mint_token,
)
from signaling.ice import IceServer
from signaling.protocol import (
    MAX_NAME_LENGTH,
    MAX_TOKEN_BYTES,
    CloseCode,
    ErrorCode,
    Join,
    PeerId,
    RoomId,
    parse,
    serialize,
)
from signaling.reasons import Refusal
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
        ("\u00e9" * (MAX_TOKEN_BYTES // 2 + 1), Reason.TOO_LARGE),  # in UTF-8 bytes
        (token(valid()) + "\u00e9", Reason.MALFORMED),  # a JWT is ASCII
        ("ey\ud800." + token(valid()), Reason.MALFORMED),  # not even UTF-8
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


#: Names a join's ``peerId``/``room`` may not have (signaling.protocol.check_name).
BAD_NAMES = [
    "mallory\x1fjoined",  # the cluster envelope's separator
    "eve\nFAKE LOG LINE",
    "tab\there",
    "c1\u0085",
    "x" * (MAX_NAME_LENGTH + 1),
    "a\u200bb",  # zero-width space
    "\u202emallory",  # right-to-left override
    "Jose\u0301",  # not NFC
    "x\ud800",  # a lone surrogate
]


@pytest.mark.parametrize("claim", ["sub", "room"])
@pytest.mark.parametrize("name", BAD_NAMES)
def test_sub_and_room_claims_obey_the_join_name_rules(claim: str, name: str) -> None:
    """Checked in verify(), so every path gets it: a join without peerId takes sub as its
    ID, and /config.json mints TURN credentials for it."""
    with pytest.raises(TokenRefused) as info:
        VERIFIER.verify(token(valid(**{claim: name})), NOW)
    assert info.value.reason is Reason.BAD_NAME and info.value.code is ErrorCode.INVALID_TOKEN
    assert claim in str(info.value)
    longest = "x" * MAX_NAME_LENGTH
    assert VERIFIER.verify(token(valid(**{claim: longest})), NOW)
    assert VERIFIER.verify(token(valid(**{claim: "Jos\u00e9 \U0001f600"})), NOW)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assemble(header: Any, claims: Any, secret: bytes = SECRET, alg: str = "sha256") -> str:
    """A token from raw parts (claims given as text: as they are), signed like HS256
    (whatever the header says)."""
    head = b64url(json.dumps(header).encode())
    body = b64url((claims if isinstance(claims, str) else json.dumps(claims)).encode())
    digest = hmac.new(secret, f"{head}.{body}".encode(), alg).digest()
    return f"{head}.{body}.{b64url(digest)}"


BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

MUTATIONS = ("none", "char", "bits", "pad", "drop", "extra", "space", "swap")
NO_MUTATION = ("none", 0, "A", 1)
#: (what, where, a character, how many)
mutations = st.tuples(
    st.sampled_from(MUTATIONS),
    st.integers(0, 1000),
    st.sampled_from(list("A_-=.+/ é!")),
    st.integers(1, 3),
)


def mutate(text: str, mutation: tuple[str, int, str, int]) -> str:
    how, at, char, count = mutation
    if how == "char":
        i = at % len(text)
        return text[:i] + char + text[i + 1 :]
    if how == "bits":  # the same bytes spelled another way: unused low bits of a last character
        segments = text.split(".")
        k = at % len(segments)
        segment = segments[k]
        if len(segment) % 4 in (2, 3) and segment[-1] in BASE64URL:  # 4 or 2 bits unused
            segments[k] = segment[:-1] + BASE64URL[BASE64URL.index(segment[-1]) | count]
        return ".".join(segments)
    if how == "pad":
        return text + "=" * count
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


#: What a review found the hand-written parser admitted: (a) other spellings of a valid
#: token, (b) a non-string kid or typ, (c) an audience, (d) non-finite or huge times.
REVIEW_CASES = {
    "signature-bits-1": mutate(token(valid()), ("bits", 2, "A", 1)),
    "signature-bits-2": mutate(token(valid()), ("bits", 2, "A", 2)),
    "signature-bits-3": mutate(token(valid()), ("bits", 2, "A", 3)),
    "kid-number": assemble({"alg": "HS256", "kid": 5}, valid()),
    "typ-number": assemble({"alg": "HS256", "typ": 5}, valid()),
    "aud": token(valid(aud="other-service")),
    "aud-list": token(valid(aud=["other-service"])),
    "exp-nan": assemble({"alg": "HS256"}, valid(exp=math.nan)),
    "exp-infinity": assemble({"alg": "HS256"}, valid(exp=math.inf)),
    "exp-1e400": assemble({"alg": "HS256"}, '{"sub":"alice","room":"lobby","exp":1e400}'),
    "exp-10**400": assemble({"alg": "HS256"}, valid(exp=10**400)),
    "nbf-nan": assemble({"alg": "HS256"}, valid(nbf=math.nan)),
    "nbf-minus-infinity": assemble({"alg": "HS256"}, valid(nbf=-math.inf)),
    "iat-10**400": assemble({"alg": "HS256"}, valid(iat=-(10**400))),
}


@pytest.mark.parametrize("case", REVIEW_CASES)
def test_what_the_review_found_is_refused(case: str) -> None:
    assert not ours_admits(REVIEW_CASES[case])
    assert not expected_admits(REVIEW_CASES[case])


def test_a_refusal_forges_no_log_line() -> None:
    """PyJWT's messages may quote the token (an unknown ``crit`` extension): escaped."""
    forged = assemble({"alg": "HS256", "crit": ["x\nFAKE LOG LINE"]}, valid())
    with pytest.raises(TokenRefused) as info:
        VERIFIER.verify(forged, NOW)
    assert info.value.reason is Reason.MALFORMED
    assert str(info.value).isprintable() and "FAKE" in str(info.value)


def test_an_audience_is_refused_unless_the_server_names_its_own() -> None:
    assert refusal(token(valid(aud="other-service"))) is Reason.AUDIENCE
    ours = TokenVerifier(SECRET, audience="meshpeer")
    for aud in ("meshpeer", ["other-service", "meshpeer"]):
        assert ours.verify(token(valid(aud=aud)), NOW).peer_id == "alice"
    for claims in (valid(), valid(aud="other-service"), valid(aud=["other-service"])):
        with pytest.raises(TokenRefused) as info:
            ours.verify(token(claims), NOW)
        assert info.value.reason is Reason.AUDIENCE, claims
    minted = mint_token(SECRET, "lobby", "alice", now=NOW, audience="meshpeer")
    assert ours.verify(minted, NOW).room == "lobby"
    assert refusal(minted) is Reason.AUDIENCE


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

#: Times no clock reaches: not finite once decoded (PyJWT reads JSON with json, which
#: takes NaN, Infinity and 1e400), or too big for a float.
odd_times = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 2**64, 10**400, -(10**400)])
claim_values = st.one_of(
    st.none(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    odd_times,
    st.text(max_size=8),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
names = st.sampled_from(["alice", "bob", "", "Jos\u00e9", *BAD_NAMES])
rooms = st.sampled_from(["lobby", "hall", "Caf\u00e9", "lobby\x1f", "lobby\u200b"])
times = st.floats(NOW - 10_000, NOW + 10_000)
claim_sets = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.one_of(names, claim_values),
        "room": st.one_of(rooms, claim_values),
        "exp": st.one_of(times, claim_values),
        "nbf": st.one_of(times, claim_values),
        "iat": st.one_of(times, claim_values),
        "aud": st.sampled_from(["meshpeer", ["meshpeer"], "", []]),
        "extra": claim_values,
    },
)
#: One claim changed: a name, a time, an audience.
one_change = st.one_of(
    st.builds(lambda v: {"sub": v}, names),
    st.builds(lambda v: {"room": v}, rooms),
    st.builds(lambda v: {"exp": v}, st.one_of(times, odd_times)),
    st.builds(lambda v: {"nbf": v}, st.one_of(times, odd_times)),
    st.builds(lambda v: {"iat": v}, times),
    st.builds(lambda v: {"aud": v}, st.sampled_from(["meshpeer", ""])),
)
#: Mostly valid claim sets (up to two changes to a valid one), so admissions are common.
near_valid = st.one_of(
    claim_sets,
    st.builds(
        lambda changes: {k: v for c in [valid(), *changes] for k, v in c.items()},
        st.lists(one_change, max_size=2),
    ),
)


def valid_name(value: Any) -> bool:
    """The name rule, written apart from check_name: 1-128 characters in NFC, none of them
    a control (Cc: C0, DEL, C1), format (Cf), surrogate (Cs) or line/paragraph separator
    (Zl, Zp)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NAME_LENGTH
        and unicodedata.is_normalized("NFC", value)
        and all(unicodedata.category(c) not in {"Cc", "Cf", "Cs", "Zl", "Zp"} for c in value)
    )


def finite_time(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too big for a float
        return False


def expected_valid(claims: dict[str, Any]) -> bool:
    """The claim rules, written apart from the verifier: names, no audience, times at NOW."""
    if not valid_name(claims.get("sub")) or not valid_name(claims.get("room")):
        return False
    if claims.get("aud"):  # "" and [] name no audience (PyJWT's reading too)
        return False
    present = [claims[k] for k in ("exp", "nbf", "iat") if k in claims]
    if "exp" not in claims or not all(finite_time(t) for t in present):
        return False
    exp, nbf, iat = claims["exp"], claims.get("nbf"), claims.get("iat")
    return (
        exp > NOW - LEEWAY
        and (nbf is None or nbf <= NOW + LEEWAY)
        and (iat is None or iat <= NOW + LEEWAY)
    )


def expected_ok(claims: dict[str, Any]) -> bool:
    """Valid, and for alice in the lobby."""
    return expected_valid(claims) and claims["sub"] == "alice" and claims["room"] == "lobby"


@settings(max_examples=300, deadline=None)
@given(near_valid)
def test_random_claim_sets_are_admitted_exactly_when_valid(claims: dict[str, Any]) -> None:
    text = token(claims)
    try:
        VERIFIER.admit(text, RoomId("lobby"), PeerId("alice"), NOW)
        admitted = True
    except TokenRefused:
        admitted = False
    assert admitted == expected_ok(claims), claims
    try:
        VERIFIER.verify(text, NOW)
        verified = True
    except TokenRefused:
        verified = False
    assert verified == expected_valid(claims), claims


@settings(max_examples=100, deadline=None)
@given(claim_sets, st.binary(min_size=32, max_size=40))
def test_no_claim_set_gets_in_with_another_secret(claims: dict[str, Any], secret: bytes) -> None:
    if secret == SECRET:
        return
    with pytest.raises(TokenRefused):
        VERIFIER.verify(token(claims, secret), NOW)


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
    assert normalize_origin("https://app.example.com:443") == "https://app.example.com"
    assert normalize_origin("http://[::1]:8080") == "http://[::1]:8080"
    assert normalize_origin("*") == "*"
    for bad in ("app.example.com", "ftp://x", "https://x/path", "https://u@x", "http://x:99999"):
        with pytest.raises(OriginError):
            normalize_origin(bad)
    policy = OriginPolicy.of(["https://app.example.com"])
    assert policy.admits("https://app.example.com", "http", "signal.example.com")
    assert policy.admits("HTTPS://APP.EXAMPLE.COM", "http", "signal.example.com")
    assert policy.admits("https://app.example.com:443", "http", "signal.example.com")
    assert not policy.admits("https://evil.example", "http", "signal.example.com")
    assert policy.admits(None, "http", "signal.example.com")  # no Origin: a bot
    own = "http://signal.example.com:8080"
    assert policy.admits(own, "http", "signal.example.com:8080")  # the page served here


#: (Origin, the request's scheme, its Host, admitted by the default policy)
OWN_ORIGIN_CASES = [
    ("http://127.0.0.1:8080", "http", "127.0.0.1:8080", True),
    ("http://h", "http", "h:80", True),  # default ports
    ("http://h:80", "http", "h", True),
    ("https://h", "https", "h:443", True),
    ("http://H.Example", "http", "h.example", True),
    ("http://[::1]:8080", "http", "[::1]:8080", True),
    ("http://[0:0::1]:8080", "http", "[::1]:8080", True),
    ("http://[::1]", "http", "[::1]:80", True),
    ("https://127.0.0.1:8080", "http", "127.0.0.1:8080", False),  # https page, http server
    ("http://h", "https", "h", False),
    ("http://h:8080", "http", "h:8081", False),
    ("http://h:443", "https", "h", False),
    ("http://localhost:8080", "http", "127.0.0.1:8080", False),
    ("http://evil.example", "http", "127.0.0.1:8080", False),
    ("http://[::2]:8080", "http", "[::1]:8080", False),
    ("null", "http", "h", False),  # a sandboxed frame, a file:// page
    ("http://h", "http", None, False),
    ("http://h", "http", "h/x", False),
    ("http://h", "http", "[::1", False),
    ("http://h", "http", "h:http", False),
]


@pytest.mark.parametrize(("origin", "scheme", "host", "admitted"), OWN_ORIGIN_CASES)
def test_by_default_only_the_servers_own_origin_is_admitted(
    origin: str, scheme: str, host: str | None, admitted: bool
) -> None:
    assert OriginPolicy().admits(origin, scheme, host) is admitted
    assert OriginPolicy.of(["*"]).admits(origin, scheme, host)  # --allow-origin '*': any
    assert OriginPolicy().admits(None, scheme, host)  # not a browser


def test_the_public_url_is_the_origin_users_of_a_proxy_see() -> None:
    policy = OriginPolicy.of([], public_url="https://Rooms.Example.com/meet/")
    behind = ("http", "127.0.0.1:8080")  # what the proxy forwards to
    assert policy.admits("https://rooms.example.com", *behind)
    assert policy.admits("https://rooms.example.com:443", *behind)
    assert not policy.admits("http://rooms.example.com", *behind)
    assert not policy.admits("https://rooms.example.com:8443", *behind)
    assert not policy.admits("https://evil.example", *behind)
    assert policy.admits("http://127.0.0.1:8080", *behind)  # still its own, locally
    for bad in ("rooms.example.com", "wss://rooms.example.com", "https://u:p@r.example"):
        with pytest.raises(OriginError):
            OriginPolicy.of([], public_url=bad)


def test_client_address_counts_the_last_entry_of_all_forwarded_lines() -> None:
    def counted(lines: list[str], trust: bool = True) -> ClientAddress:
        return client_address("10.0.0.9", lines, trust_proxy=trust)

    assert counted(["1.2.3.4"], trust=False) == ClientAddress("10.0.0.9")
    assert counted(["6.6.6.6, 1.2.3.4"]) == ClientAddress("1.2.3.4")
    # The client wrote the first line, the proxy appended the second: the last entry counts.
    assert counted(["6.6.6.6", "1.2.3.4"]) == ClientAddress("1.2.3.4")
    assert counted(["6.6.6.6, 7.7.7.7", " 1.2.3.4 "]) == ClientAddress("1.2.3.4")
    assert counted(["2001:DB8:0::1"]) == ClientAddress("2001:db8::1")
    assert counted([]) == ClientAddress("10.0.0.9")  # no proxy header: the socket's address
    # Not an address: the socket's, and the value, for the server to log.
    assert counted(["1.2.3.4", "unknown"]) == ClientAddress("10.0.0.9", "unknown")
    assert counted(["1.2.3.4, "]) == ClientAddress("10.0.0.9", "")
    assert counted(["1.2.3.4:5678"]) == ClientAddress("10.0.0.9", "1.2.3.4:5678")
    assert client_address(None, [], trust_proxy=False) == ClientAddress("unknown")


def test_ip_gate_counts_an_ipv6_client_by_its_64() -> None:
    gate = IpGate(max_connections=1, connects_per_minute=0)
    assert gate.open("2001:db8:1:2::1", 0) is None
    assert gate.open("2001:db8:1:2:ffff:ffff:ffff:ffff", 0) is Refusal.IP_CONNECTIONS
    assert gate.open("2001:db8:1:3::1", 0) is None  # the next /64: another client
    assert gate.open("1.2.3.4", 0) is None
    assert gate.open("::ffff:1.2.3.4", 0) is Refusal.IP_CONNECTIONS  # IPv4-mapped: the IPv4
    assert gate.open("1.2.3.5", 0) is None  # IPv4 stays per address
    gate.close("2001:db8:1:2::99")  # any address of the /64 closes its count
    assert gate.open("2001:db8:1:2::2", 0) is None
    assert counted_address("2001:DB8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert counted_address("::ffff:10.0.0.1") == "10.0.0.1"
    assert counted_address("unknown") == "unknown"


def test_ip_gate_rate_limits_an_ipv6_client_by_its_64() -> None:
    gate = IpGate(max_connections=0, connects_per_minute=2)
    for address in ("2001:db8::1", "2001:db8::2"):
        assert gate.open(address, 0) is None
        gate.close(address)
    assert gate.open("2001:db8::3", 0) is Refusal.IP_RATE
    assert gate.open("2001:db8:0:1::3", 0) is None


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


# -- the verifier against PyJWT plus our rules, on random tokens ------------------------------


def expected_admits(text: str) -> bool:
    """PyJWT's verdict on everything but the clock (HS256 only, the encoding, the header, the
    signature, ``aud``), then the rules above at NOW, and ``typ`` a string when present."""
    try:
        decoded = jwt.decode_complete(
            text,
            SECRET,
            algorithms=["HS256"],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.PyJWTError:
        return False
    claims = decoded["payload"]
    typ = decoded["header"].get("typ", "JWT")
    return isinstance(typ, str) and expected_valid(claims) and claims["room"] == "lobby"


def ours_admits(text: str) -> bool:
    """A join of the lobby that names no peer ID (it takes the token's)."""
    try:
        VERIFIER.admit(text, RoomId("lobby"), None, NOW)
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
        "typ": st.sampled_from(["JWT", "jwt", 1, None, ["JWT"]]),
        "kid": st.one_of(st.text(max_size=4), st.integers(), st.none()),
        "crit": st.sampled_from([["b64"], ["exp"], [], "b64"]),
        "b64": st.booleans(),
        "jku": st.just("https://example.invalid/keys"),
    },
)

JWT_HEADER = {"alg": "HS256", "typ": "JWT"}


@settings(max_examples=600, deadline=None)
@given(headers, near_valid, st.sampled_from([SECRET, b"x" * 32]), mutations)
# What the hand-written parser admitted: (a) another spelling of the signature,
@example(JWT_HEADER, valid(), SECRET, ("bits", 2, "A", 1))
@example(JWT_HEADER, valid(), SECRET, ("bits", 2, "A", 3))
# (b) a kid or typ that is not a string,
@example({"alg": "HS256", "kid": 5}, valid(), SECRET, NO_MUTATION)
@example({"alg": "HS256", "typ": 5}, valid(), SECRET, NO_MUTATION)
# (c) a token minted for another service,
@example(JWT_HEADER, valid(aud="other-service"), SECRET, NO_MUTATION)
# (d) times that never come (without orjson: NaN, Infinity) or do not fit a float.
@example(JWT_HEADER, valid(exp=math.nan), SECRET, NO_MUTATION)
@example(JWT_HEADER, valid(exp=math.inf), SECRET, NO_MUTATION)
@example(JWT_HEADER, valid(nbf=-math.inf), SECRET, NO_MUTATION)
@example(JWT_HEADER, valid(exp=10**400), SECRET, NO_MUTATION)
def test_the_verifier_is_pyjwt_plus_our_rules(
    header: dict[str, Any],
    claims: dict[str, Any],
    secret: bytes,
    mutation: tuple[str, int, str, int],
) -> None:
    """Random headers, claims, keys and corruptions: admitted exactly when PyJWT admits the
    token and our rules (names, times at NOW, the room) admit its claims."""
    text = mutate(assemble(header, claims, secret), mutation)
    assert ours_admits(text) == expected_admits(text), (header, claims, text)


@settings(max_examples=200, deadline=None)
@given(claim_sets)
def test_tokens_pyjwt_mints_are_judged_alike(claims: dict[str, Any]) -> None:
    text = jwt.encode(claims, SECRET, algorithm="HS256")
    assert ours_admits(text) == expected_admits(text), claims
