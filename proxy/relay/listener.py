"""The listening proxy: accepts clients, opens upstream connections, and keeps the relay's counters.

The relay, in short: sockets, TLS, and bytes relayed the moment they arrive.

Each received buffer is written to the other side first and analysed second, from the same
callback and without awaiting anything, so analysis can never hold a byte back. Analysis results
go to a bounded EventQueue that drops (and counts) rather than waits. Flow control is delegated to
the transports: when one side's write buffer fills, reading from the other side pauses.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections import deque
from dataclasses import dataclass

import structlog

from proxy.config import Settings, Upstream, prepared_budget
from proxy.protocol import wire
from proxy.protocol.capture import CaptureBuffer
from proxy.protocol.hashing import ValueHasher
from proxy.protocol.prepared import PreparedTexts
from proxy.protocol.stalls import discount_stalls
from proxy.relay.admission import Limits, LocalAdmission
from proxy.relay.client import ClientConnection
from proxy.relay.queue import EventQueue
from proxy.relay.tls import certificate_der, client_context, upstream_context
from proxy.relay.upstream import UpstreamConnection, UpstreamError

LAG_TICK_S = 0.025
MIN_LAG_S = 0.002  # a timer this late means the loop was busy; below it, timer granularity


monotonic = time.monotonic


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


@dataclass(slots=True)
class ProxyStats:
    connections_total: int = 0
    protocol_errors: int = 0
    analysis_errors: int = 0
    upstream_errors: int = 0
    cancels_forwarded: int = 0


class Proxy:
    """A listening proxy and the sessions it relays."""

    def __init__(self, settings: Settings, queue: EventQueue | None = None, hasher: ValueHasher | None = None,
                 first_conn_id: int = 1):
        self.settings = settings
        self.upstream: Upstream = settings.upstream_target
        self.queue = queue if queue is not None else EventQueue(settings.queue_size)
        self.hasher = hasher or ValueHasher(settings.hash_key.encode() if settings.hash_key else None)
        self.client_tls = client_context(settings)
        self.client_cert = certificate_der(settings.tls_cert) if settings.tls_cert else None
        self.upstream_tls = upstream_context(self.upstream)
        self.log = structlog.get_logger("pgloupe.proxy")
        self.stats = ProxyStats()
        self.clients: set[ClientConnection] = set()
        self._ids = itertools.count(first_conn_id)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        # The admin console (proxy.service.admin.AdminConsole, set by the App): its .session(...) answers
        # the sessions that open the admin database
        self.admin_console = None
        # In a worker process: admin-database sessions are relayed to the main process's console here.
        self.admin_relay: str | None = None
        self.admin_only = False  # the main process's internal socket: admin sessions only
        # Client limits; a worker's admission asks the main process (proxy.admission)
        self.admission = LocalAdmission(Limits(settings.max_client_connections, settings.max_connections_per_ip))
        # When this event loop was too busy to run its callbacks on time: (due, ran) of late timer ticks,
        # monotonic. A response read during such a stall may have waited in the socket, not on the
        # server; discount_stalls takes that wait off the statement's duration.
        self.stalls: deque[tuple[float, float]] = deque(maxlen=256)
        self.loop_lag = 0.0  # the latest tick's lateness, for /metrics
        # In a worker process: sessions are captured here for the main process's trackers (proxy.capture)
        self.capture: CaptureBuffer | None = None
        # Named statements' texts the in-process trackers keep, bounded for the whole process
        self.prepared_texts = PreparedTexts(prepared_budget(settings))
        self._lag_timer: asyncio.TimerHandle | None = None

    async def start(self, port: int | None = None, reuse_port: bool = False) -> None:
        host, configured = self.settings.listen_address
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ClientConnection(self), host,
                                                configured if port is None else port,
                                                reuse_address=True, reuse_port=reuse_port or None)
        self.log.info("listening", listen=f"{host}:{self.port}", upstream=self.upstream.describe(),
                      upstream_sslmode=self.upstream.sslmode, client_tls=self.client_tls is not None)
        self._lag_timer = asyncio.get_running_loop().call_later(LAG_TICK_S, self._lag_tick, monotonic() + LAG_TICK_S)

    def _lag_tick(self, due: float) -> None:
        now = monotonic()
        late = now - due
        self.loop_lag = late if late >= MIN_LAG_S else 0.0
        if late >= MIN_LAG_S:
            self.stalls.append((due, now))
        self._lag_timer = asyncio.get_running_loop().call_later(LAG_TICK_S, self._lag_tick, now + LAG_TICK_S)

    def discount_stalls(self, events) -> None:
        """Take this loop's stalls off the durations of statements that ended inside one (called on
        this loop, before the events leave for analysis)."""
        discount_stalls(self.stalls, events)

    async def start_admin_socket(self, path: str) -> None:
        """Listen on a private Unix socket for the admin sessions worker processes relay."""
        self.admin_only = True
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: ClientConnection(self), path)

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def counters(self) -> dict[str, int]:
        """The numbers /metrics and /healthz show, summed over processes when there are workers."""
        stats = self.stats
        clients = list(self.clients)
        return {
            "client_connections": len(clients),
            "upstream_connections": sum(1 for c in clients if c.upstream is not None and not c.upstream.closed),
            "connections_total": stats.connections_total,
            "protocol_errors": stats.protocol_errors,
            "analysis_errors": stats.analysis_errors,
            "upstream_errors": stats.upstream_errors,
            "cancels_forwarded": stats.cancels_forwarded,
            "loop_lag_us": int(self.loop_lag * 1e6),
        }

    def client_rows(self) -> list[dict]:
        """One row per client connection, for the admin console's SHOW CLIENTS."""
        rows = []
        for c in self.clients:
            tracker = c.tracker
            info = c.info
            rows.append({
                "conn_id": info.conn_id, "user": info.user, "database": info.database,
                "application_name": info.application_name, "client_addr": info.client_addr, "tls": c.tls,
                "state": "admin" if c.admin is not None or c.admin_relayed else
                ("active" if tracker is not None and tracker.busy else "idle"),
                "transaction": tracker.transaction_status if tracker is not None else "",
                "connected_at": c.connected_at,
            })
        return rows

    async def drain(self, timeout: float) -> None:
        """SIGTERM: stop accepting, let the statements in flight finish (up to ``timeout``), and end
        each session as PostgreSQL does at shutdown (FATAL 57P01) once it is between statements."""
        if self._server is not None:
            self._server.close()  # new connections are refused from now on
        deadline = monotonic() + timeout
        while True:
            for client in list(self.clients):
                if not client.busy:
                    client.shut_down()
            if not self.clients or monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        if self.clients:
            self.log.warning("shutdown_timeout", sessions_cut=len(self.clients), timeout_s=timeout)

    async def close(self) -> None:
        if self._lag_timer is not None:
            self._lag_timer.cancel()
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            client.shut_down()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def open_upstream(self, factory, admin: bool = False) -> tuple[asyncio.Transport, UpstreamConnection]:
        """Connect to the server and negotiate TLS as the upstream sslmode says (or, for ``admin``, to the
        main process's admin console)."""
        up = self.upstream
        loop = asyncio.get_running_loop()
        timeout = self.settings.connect_timeout
        try:
            if admin:
                transport, protocol = await asyncio.wait_for(
                    loop.create_unix_connection(factory, self.admin_relay), timeout)
                return transport, protocol
            if up.is_unix:
                coro = loop.create_unix_connection(factory, f"{up.host}/.s.PGSQL.{up.port}")
            else:
                coro = loop.create_connection(factory, up.host, up.port)
            transport, protocol = await asyncio.wait_for(coro, timeout)
        except TimeoutError as exc:
            raise UpstreamError(f"timed out after {timeout:g}s") from exc
        except OSError as exc:
            raise UpstreamError(exc.strerror or str(exc)) from exc
        if self.upstream_tls is None or up.is_unix:
            return transport, protocol
        try:
            protocol.negotiation = loop.create_future()
            transport.write(wire.request_code(wire.SSL_REQUEST))
            answer = await asyncio.wait_for(protocol.negotiation, timeout)
            protocol.negotiation = None
            if answer == b"S":
                transport = await loop.start_tls(
                    transport, protocol, self.upstream_tls, server_hostname=up.host,
                    ssl_handshake_timeout=timeout,
                )
                protocol.transport = transport
                protocol.peer_cert = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
            elif up.sslmode in ("require", "verify-ca", "verify-full"):
                raise UpstreamError(f"server does not support TLS, but upstream sslmode is {up.sslmode}")
        except UpstreamError:
            transport.close()
            raise
        except TimeoutError as exc:
            transport.close()
            raise UpstreamError(f"TLS negotiation timed out after {timeout:g}s") from exc
        except ssl.SSLCertVerificationError as exc:
            transport.close()
            raise UpstreamError(f"server certificate verification failed: {exc.verify_message}") from exc
        except (ssl.SSLError, OSError, ConnectionError) as exc:
            transport.close()
            raise UpstreamError(f"TLS negotiation failed: {exc}") from exc
        return transport, protocol

    async def forward_cancel(self, packet: bytes) -> None:
        """Deliver a CancelRequest on a fresh upstream connection, as the server expects."""
        try:
            transport, protocol = await self.open_upstream(lambda: UpstreamConnection(None))
        except UpstreamError as exc:
            self.log.warning("cancel_not_forwarded", reason=str(exc))
            return
        transport.write(packet)
        self.stats.cancels_forwarded += 1
        try:
            await asyncio.wait_for(protocol.closed_future, self.settings.connect_timeout)
        except TimeoutError:
            pass
        finally:
            transport.close()
