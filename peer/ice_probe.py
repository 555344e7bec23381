"""STUN and TURN servers checked in the background, so connections only use live ones.

aiortc gathers every candidate before ``setLocalDescription`` returns: a STUN or TURN
server that does not answer holds each offer and each answer for 5 s, and a TURN server
that refuses our credentials is silently skipped (no relay candidate, no error). So the
agent checks each server once, off the negotiation path, the way aioice itself would use
it: a TURN allocation with the credentials (then released), or a STUN binding request.

- A connection is given only the servers that answered: host candidates never wait.
- One that did not answer within ``timeout`` is left out, and checked again when asked
  for after ``recheck_after`` seconds.
- A refusal (401 ...) is reported at once, with the server's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aioice import stun, turn
from aiortc.rtcicetransport import parse_stun_turn_uri

from signaling.ice import IceServer

log = logging.getLogger(__name__)

#: Seconds a server has to answer a check: two round trips and a retransmission or two.
PROBE_TIMEOUT = 2.0
#: Seconds before a server that did not answer (or refused) is checked again.
RECHECK_AFTER = 30.0
#: Seconds between STUN binding request retransmissions while a check waits.
_STUN_RESEND = 0.25


class Verdict(StrEnum):
    PENDING = "pending"
    OK = "ok"
    DEAD = "dead"  # no answer, unreachable, connection refused
    REFUSED = "refused"  # answered with an error: credentials, quota, forbidden


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    detail: str
    at: float  # time.monotonic() of the verdict (or of the start, while pending)


def _key(server: IceServer) -> tuple[str, str | None, str | None]:
    return server.url, server.username, server.credential


class IceProbe:
    """Checks servers once each and remembers the verdicts.

    ``on_verdict(server, check)`` runs on the event loop for every finished check.
    """

    def __init__(
        self,
        on_verdict: Callable[[IceServer, Check], None],
        *,
        timeout: float = PROBE_TIMEOUT,
        recheck_after: float = RECHECK_AFTER,
    ) -> None:
        self._on_verdict = on_verdict
        self.timeout = timeout
        self.recheck_after = recheck_after
        self._checks: dict[tuple[str, str | None, str | None], Check] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def verdict(self, server: IceServer) -> Verdict | None:
        check = self._checks.get(_key(server))
        return check.verdict if check is not None else None

    def check(self, servers: Iterable[IceServer]) -> None:
        """Start checking the servers not known yet, or known bad for a while."""
        now = time.monotonic()
        for server in servers:
            known = self._checks.get(_key(server))
            if known is not None and (
                known.verdict in (Verdict.PENDING, Verdict.OK)
                or now - known.at < self.recheck_after
            ):
                continue
            self._checks[_key(server)] = Check(Verdict.PENDING, "", now)
            task = asyncio.get_running_loop().create_task(self._run(server))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def usable(self, servers: Iterable[IceServer]) -> list[IceServer]:
        """The servers that answered their check; the rest would only delay gathering."""
        return [s for s in servers if self.verdict(s) is Verdict.OK]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, server: IceServer) -> None:
        started = time.monotonic()
        verdict, detail = await probe(server, self.timeout)
        check = Check(verdict, detail, time.monotonic())
        self._checks[_key(server)] = check
        log.debug("%s: %s %s in %.3f s", server.url, verdict, detail, check.at - started)
        try:
            self._on_verdict(server, check)
        except Exception:
            log.exception("ICE server verdict handler failed")


async def probe(server: IceServer, limit: float = PROBE_TIMEOUT) -> tuple[Verdict, str]:
    """Check one server as aioice would use it; never takes longer than ``limit`` seconds."""
    try:
        parsed = parse_stun_turn_uri(server.url)
    except ValueError as exc:
        return Verdict.REFUSED, f"unusable URL ({exc})"
    address = (parsed["host"], parsed["port"])
    try:
        async with asyncio.timeout(limit):
            if parsed["scheme"] in ("turn", "turns"):
                await _allocate(server, address, parsed["scheme"] == "turns", parsed["transport"])
            else:
                await _binding(address)
    except TimeoutError:
        return Verdict.DEAD, f"no answer within {limit:g} s"
    except stun.TransactionFailed as exc:
        code, reason = exc.response.attributes.get("ERROR-CODE", (0, "error"))
        if code == 401:
            return Verdict.REFUSED, f"refused our credentials ({code} {reason})"
        return Verdict.REFUSED, f"refused the allocation ({code} {reason})"
    except (OSError, stun.TransactionError, ConnectionError) as exc:
        return Verdict.DEAD, f"unreachable ({exc or type(exc).__name__})"
    return Verdict.OK, ""


async def _allocate(server: IceServer, address: tuple[str, int], tls: bool, transport: str) -> None:
    relay, _ = await turn.create_turn_endpoint(
        asyncio.DatagramProtocol,
        server_addr=address,
        username=server.username,
        password=server.credential,
        ssl=tls,
        transport=transport,
    )
    relay.close()  # releases the allocation (a refresh with lifetime 0)


async def _binding(address: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[None] = loop.create_future()
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)

    class Answer(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            with contextlib.suppress(Exception):  # not STUN: not the answer
                reply = stun.parse_message(data)
                if reply.transaction_id == request.transaction_id and not answered.done():
                    answered.set_result(None)

    transport, _ = await loop.create_datagram_endpoint(Answer, remote_addr=address)
    try:
        while not answered.done():
            transport.sendto(bytes(request))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answered), _STUN_RESEND)
    finally:
        transport.close()
