"""The agent reads its own token's claims (peer.tokens) as the server's minter writes them."""

from __future__ import annotations

from peer.tokens import read_claims
from signaling.auth import mint_token

SECRET = b"k" * 32
NOW = 1_800_000_000.0


def test_minted_tokens_read_back() -> None:
    text = mint_token(SECRET, "lobby", "alice", ttl=90, now=NOW)
    assert read_claims(text) == ("alice", "lobby")
    assert read_claims("garbage") == (None, None)
