"""Client limits: how many sessions pgloupe relays at once, in all and per client address.

One ``Limits`` object counts every admitted session of the whole pgloupe: in a single process the
Proxy asks it directly; worker processes ask the main process over their channel
(``RemoteAdmission``), so the limits hold however the kernel spreads connections over workers.
A refused client gets what PostgreSQL itself says when full: SQLSTATE 53300, too_many_connections.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import structlog

ASK_TIMEOUT_S = 2.0


class Limits:
    def __init__(self, max_clients: int, max_per_ip: int) -> None:
        self.max_clients = max_clients  # 0: no limit
        self.max_per_ip = max_per_ip
        self.sessions: dict[int, str] = {}  # conn id -> client address
        self.per_ip: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()  # reason -> refused sessions

    def admit(self, conn_id: int, client_addr: str) -> str | None:
        """None when the session may start, else the message for the client."""
        if self.max_clients and len(self.sessions) >= self.max_clients:
            self.rejected["max_client_connections"] += 1
            return (f"sorry, too many clients already (pgloupe max_client_connections is {self.max_clients})")
        if self.max_per_ip and self.per_ip[client_addr] >= self.max_per_ip:
            self.rejected["max_connections_per_ip"] += 1
            return (f"sorry, too many clients already from {client_addr} "
                    f"(pgloupe max_connections_per_ip is {self.max_per_ip})")
        self.sessions[conn_id] = client_addr
        self.per_ip[client_addr] += 1
        return None

    def left(self, conn_id: int) -> None:
        addr = self.sessions.pop(conn_id, None)
        if addr is not None:
            self.per_ip[addr] -= 1
            if self.per_ip[addr] <= 0:
                del self.per_ip[addr]

    def forget(self, predicate) -> None:
        """Drop the sessions of a worker that died (its clients are gone with it)."""
        for conn_id in [c for c in self.sessions if predicate(c)]:
            self.left(conn_id)


class LocalAdmission:
    """The Proxy and the Limits in one process."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    async def admit(self, conn_id: int, client_addr: str) -> str | None:
        return self.limits.admit(conn_id, client_addr)

    def left(self, conn_id: int) -> None:
        self.limits.left(conn_id)


class RemoteAdmission:
    """A worker's view: ask the main process, which holds the Limits for every worker."""

    def __init__(self, send) -> None:
        self.send = send  # sends one message to the main process
        self.waiting: dict[int, asyncio.Future] = {}
        self.timeouts = 0
        self.log = structlog.get_logger("pgloupe.admission")

    async def admit(self, conn_id: int, client_addr: str) -> str | None:
        future = asyncio.get_running_loop().create_future()
        self.waiting[conn_id] = future
        self.send(("admit", conn_id, client_addr))
        try:
            return await asyncio.wait_for(future, ASK_TIMEOUT_S)
        except TimeoutError:
            # The main process is stuck or gone: relaying matters more than counting, so let it in.
            self.timeouts += 1
            self.log.warning("admission_unanswered", conn=conn_id)
            return None
        finally:
            self.waiting.pop(conn_id, None)

    def answered(self, conn_id: int, refusal: str | None) -> None:
        future = self.waiting.get(conn_id)
        if future is not None and not future.done():
            future.set_result(refusal)

    def left(self, conn_id: int) -> None:
        self.send(("left", conn_id))
