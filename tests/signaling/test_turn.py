"""How long minted TURN credentials last, and when fresh ones are due: pure, no clock."""

from __future__ import annotations

import pytest

from signaling.ice import IceServer
from signaling.turn import TurnMinter, turn_credentials

MINTER = TurnMinter((IceServer("turn:t:3478"),), b"s", ttl=600)


@pytest.mark.parametrize(
    ("until", "expiry", "refresh"),
    [
        (None, 1600, 300.0),  # no access tokens: a full lifetime, refreshed at half of it
        (5000.0, 1600, 300.0),  # a token that outlives them: the same
        (1600.0, 1600, None),  # as long as the token: nothing fresher can be minted for it
        (1200.9, 1200, None),  # a token ending sooner: they end with it, none follow
    ],
)
def test_credentials_never_outlive_the_token_they_are_minted_for(
    until: float | None, expiry: int, refresh: float | None
) -> None:
    (server,) = MINTER.servers_for("alice", 1000.0, until)
    assert server.username == f"{expiry}:alice"
    assert server.credential == turn_credentials(b"s", "alice", expiry)[1]
    assert MINTER.refresh_after(1000.0, until) == refresh
