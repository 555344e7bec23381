from __future__ import annotations

import os

import pytest

from tests.net.topology import NO_NETNS_ENV, netns_available


@pytest.fixture
def netns() -> None:
    """Network namespaces work here, or the test fails with the reason: these tests are the
    only evidence for the TURN/NAT, loss and network-cut claims, so they must not vanish
    from a run. ``MESHPEER_TEST_NO_NETNS=1`` turns that into a skip (listed in the summary)
    on a machine that cannot have namespaces."""
    why_not = netns_available()
    if why_not is None:
        return
    if os.environ.get(NO_NETNS_ENV, "") not in ("", "0"):
        pytest.skip(f"{why_not} ({NO_NETNS_ENV} is set)")
    pytest.fail(
        f"{why_not}: tests/net needs network namespaces (root, iproute2 and nftables; "
        f"./dev setup installs the tools). On a machine that cannot have them, set "
        f"{NO_NETNS_ENV}=1 to skip these tests instead.",
        pytrace=False,
    )
