"""The asyncio side of the proxy: sockets, TLS, and relaying bytes the moment they arrive.

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

import structlog

from . import wire
from .admin import CLIENT_TLS_PARAM
from .admission import Limits, LocalAdmission
from .budget import PreparedTexts, prepared_budget
from .capture import CaptureBuffer, SessionGauge
from .config import Settings, Upstream
from .events import ConnectionClosed, ConnectionInfo, EventQueue, discount_stalls
from .hashing import ValueHasher
from .logs import exception_summary
from .startup import (
    CancelRequest,
    GSSEncRequest,
    ServerStartup,
    SSLRequest,
    StartupLengthError,
    StartupMessage,
    UnsupportedProtocol,
    cancel_request,
    parse_startup,
)
from .tls import certificate_der, client_context, upstream_context
from .tracker import SessionTracker

STARTUP, TLS_HANDSHAKE, CONNECTING, RELAY, CLOSED, ADMIN = range(6)
MAX_BUFFERED_BEFORE_RELAY = 1 << 20
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


class UpstreamError(Exception):
    """The upstream server could not be reached or refused the connection's transport."""


class ProxyStats:
    __slots__ = ("connections_total", "protocol_errors", "analysis_errors", "upstream_errors", "cancels_forwarded")

    def __init__(self) -> None:
        self.connections_total = 0
        self.protocol_errors = 0
        self.analysis_errors = 0
        self.upstream_errors = 0
        self.cancels_forwarded = 0


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
        self.admin_console = None  # proxy.admin.AdminConsole, set by the App
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


class ClientConnection(asyncio.Protocol):
    def __init__(self, proxy: Proxy):
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamConnection | None = None
        # Follows the session's protocol state: a SessionTracker that also builds its statement events, or
        # in a worker process a SessionGauge that captures the bytes for the main process's tracker.
        self.tracker: SessionTracker | SessionGauge | None = None
        self.state = STARTUP
        self.buf = bytearray()
        self.tls = False
        self.info = ConnectionInfo(next(proxy._ids), "")
        self._timer: asyncio.TimerHandle | None = None
        self._upstream_closing = False
        self.admin = None  # an AdminSession when this client opened the admin console
        self._admin_tail: asyncio.Future | None = None
        self.admin_relayed = False  # relayed to the main process's admin console (worker processes)
        self.admitted = False  # counted against the client limits
        self.connected_at = time.time()

    # --------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.info.client_addr = peer[0] if isinstance(peer, tuple) else "local"
        self.proxy.clients.add(self)
        self.proxy.stats.connections_total += 1
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.proxy.settings.startup_timeout, self._startup_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.state == RELAY:
            self.upstream.transport.write(data)
            tracker = self.tracker
            if tracker is not None:
                try:
                    tracker.client_data(data, monotonic())
                except wire.InvalidLength as exc:
                    # Not PostgreSQL's protocol any more (or a message beyond max_message_size): the
                    # server would drop the connection without a word, so the client hears it from us.
                    self.proxy.stats.protocol_errors += 1
                    self._cut_upstream()
                    self.fail(f"pgloupe: invalid message from the client: {exc}", "08P01")
                except Exception as exc:
                    self._analysis_failed("client", exc)
            return
        if self.state == ADMIN:
            self._admin_data(data)
            return
        self.buf += data
        if self.state == STARTUP:
            self._startup()
        elif len(self.buf) > MAX_BUFFERED_BEFORE_RELAY:
            self.fail("client sent too much data before the session started", "08P01")

    def connection_lost(self, exc) -> None:
        self.state = CLOSED
        self.proxy.clients.discard(self)
        if self.admitted:
            self.admitted = False
            self.proxy.admission.left(self.info.conn_id)
        if self._timer is not None:
            self._timer.cancel()
        if type(self.tracker) is SessionGauge:
            self.tracker.closed(monotonic())
        elif self.tracker is not None or self.info.user:
            self.proxy.queue.put(ConnectionClosed(self.info.conn_id, time.time()))
        up = self.upstream
        if up is None or up.closed:
            return
        tracker = self.tracker
        key = up.startup.backend_key
        if tracker is not None and tracker.busy and not tracker.terminated and key:
            # The server would run the abandoned statement to completion: stop it.
            self.proxy.spawn(self.proxy.forward_cancel(cancel_request(key)))
        self._upstream_closing = True
        up.transport.close()
        if tracker is not None:
            self.proxy.log.debug("session_closed", conn=self.info.conn_id, by="client")

    def pause_writing(self) -> None:
        if self.upstream is not None and not self.upstream.closed:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and not self.upstream.closed:
            self.upstream.transport.resume_reading()

    # --------------------------------------------------------------- startup phase

    def _startup(self) -> None:
        while self.state == STARTUP and self.buf:
            try:
                parsed = parse_startup(self.buf)
            except StartupLengthError as exc:  # as PostgreSQL: logged, and the connection closed unanswered
                self.proxy.stats.protocol_errors += 1
                self.proxy.log.info("client_rejected", conn=self.info.conn_id, client=self.info.client_addr,
                                    reason=str(exc))
                self.close()
                return
            except wire.ProtocolError as exc:
                self.proxy.stats.protocol_errors += 1
                self.fail(f"invalid startup packet: {exc}", "0A000" if isinstance(exc, UnsupportedProtocol) else "08P01")
                return
            if parsed is None:
                return
            request, size = parsed
            del self.buf[:size]
            if isinstance(request, SSLRequest):
                if self.buf:
                    # Bytes sent before the TLS handshake could be injected by a man in the middle.
                    self.fail("received unencrypted data after SSL request", "08P01")
                elif self.proxy.client_tls is None or self.tls:
                    self.transport.write(b"N")
                else:
                    self.state = TLS_HANDSHAKE
                    self.transport.pause_reading()
                    self.transport.write(b"S")
                    self.proxy.spawn(self._start_tls())
            elif isinstance(request, GSSEncRequest):
                self.transport.write(b"N")
            elif isinstance(request, CancelRequest):
                self.proxy.spawn(self.proxy.forward_cancel(request.raw))
                self.close()
            elif isinstance(request, StartupMessage):
                self._start_session(request)

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport = await loop.start_tls(
                self.transport, self, self.proxy.client_tls, server_side=True,
                ssl_handshake_timeout=self.proxy.settings.connect_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.proxy.log.info("client_tls_failed", conn=self.info.conn_id, client=self.info.client_addr,
                                reason=str(exc) or type(exc).__name__)
            self.close()
            return
        if self.state == CLOSED:
            return
        self.tls = True
        self.state = STARTUP
        self._startup()

    def _start_session(self, startup: StartupMessage) -> None:
        params = startup.params
        proxy = self.proxy
        if proxy.admin_only:  # relayed by a worker, which saw whether its client's connection is TLS
            self.tls = params.pop(CLIENT_TLS_PARAM, "0") == "1"
        if proxy.settings.tls_required and not self.tls:
            self.fail("pgloupe accepts only TLS connections (connect with sslmode=require)", "28000")
            return
        admin = params.get("database") == proxy.settings.admin_database
        if admin and proxy.admin_console is not None:
            self._start_admin(params.get("user", ""))
            return
        if proxy.admin_only:
            self.fail("pgloupe: this socket serves the admin console only", "08004")
            return
        if admin and proxy.admin_relay is not None:
            self.admin_relayed = True
            params[CLIENT_TLS_PARAM] = "1" if self.tls else "0"  # replaces one the client may have sent
            self.info.user = params.get("user", "")
            self.info.database = params["database"]
            self.state = CONNECTING
            self.transport.pause_reading()
            proxy.spawn(self._connect(startup.encode()))
            return
        up = self.proxy.upstream
        if "user" not in params and up.user:
            params["user"] = up.user
        if "database" not in params and up.database:
            params["database"] = up.database
        self.info.user = params.get("user", "")
        self.info.database = params.get("database", self.info.user)
        self.info.application_name = params.get("application_name", "")
        self.state = CONNECTING
        self.transport.pause_reading()
        self.proxy.spawn(self._admit_and_connect(startup.encode()))

    async def _admit_and_connect(self, startup_packet: bytes) -> None:
        refusal = await self.proxy.admission.admit(self.info.conn_id, self.info.client_addr)
        if refusal is not None:
            self.fail(refusal, "53300")
            return
        if self.state == CLOSED:  # gone while we asked
            self.proxy.admission.left(self.info.conn_id)
            return
        self.admitted = True
        await self._connect(startup_packet)

    def _start_admin(self, user: str) -> None:
        from .admin import AdminSession

        self.info.user = user
        self.info.database = self.proxy.settings.admin_database
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = ADMIN
        self.admin = AdminSession(self.proxy.admin_console, self.transport.write, self.close, self.proxy.log,
                                  self.proxy.settings.max_message_size)
        self.proxy.log.info("admin_session", conn=self.info.conn_id, user=user, client=self.info.client_addr)
        self.admin.start(user, self.proxy.settings, tls=self.tls)
        if self.buf:
            data, self.buf = bytes(self.buf), bytearray()
            self._admin_data(data)

    def _admin_data(self, data: bytes) -> None:
        for job in self.admin.feed(data):
            previous = self._admin_tail

            async def run(job=job, previous=previous):
                if previous is not None:
                    await previous  # answers go out in the order the queries came
                if self.state != CLOSED:
                    await job
                else:
                    job.close()

            self._admin_tail = asyncio.get_running_loop().create_task(run())
            self.proxy._tasks.add(self._admin_tail)
            self._admin_tail.add_done_callback(self.proxy._tasks.discard)

    async def _connect(self, startup_packet: bytes) -> None:
        try:
            transport, upstream = await self.proxy.open_upstream(lambda: UpstreamConnection(self), self.admin_relayed)
        except UpstreamError as exc:
            if self.admin_relayed:
                self.fail(f"pgloupe: the admin console is not available: {exc}", "08006")
                return
            self.proxy.stats.upstream_errors += 1
            self.proxy.log.warning("upstream_unavailable", conn=self.info.conn_id, upstream=self.proxy.upstream.describe(),
                                   reason=str(exc))
            self.fail(f"pgloupe: cannot connect to upstream server {self.proxy.upstream.describe()}: {exc}", "08006")
            return
        if self.state == CLOSED:
            transport.close()
            return
        self.upstream = upstream
        upstream.startup.keep_channel_binding = (
            self.tls and upstream.peer_cert is not None and upstream.peer_cert == self.proxy.client_cert)
        transport.write(startup_packet)
        self.state = RELAY
        if self.buf:
            transport.write(bytes(self.buf))
            self.buf.clear()
        self.transport.resume_reading()

    def session_ready(self, startup: ServerStartup, rest: bytes) -> None:
        """The server sent its first ReadyForQuery: from here on, statements are tracked."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.admin_relayed or not self.proxy.settings.analyse:
            return  # the console's own answers, or analysis switched off: relay only
        app = startup.parameters.get("application_name")
        if app is not None:
            self.info.application_name = app
        settings = self.proxy.settings
        capture = self.proxy.capture
        if capture is not None:  # a worker: the main process analyses, this loop only keeps count
            self.tracker = SessionGauge(self.info, capture, settings.result_rows, startup.transaction_status,
                                        settings.max_message_size, settings.max_analysed_message_size, monotonic())
        else:
            self.tracker = SessionTracker(self.info, self.proxy.hasher, settings.result_rows,
                                          max_message=settings.max_message_size,
                                          max_analysed=settings.max_analysed_message_size,
                                          tx=startup.transaction_status, texts=self.proxy.prepared_texts,
                                          on_error=self._analysis_interrupted)
        self.proxy.log.info("session_started", conn=self.info.conn_id, client=self.info.client_addr,
                            user=self.info.user, database=self.info.database,
                            application=self.info.application_name, tls=self.tls)
        if rest:
            self.upstream.analyse(rest)

    # --------------------------------------------------------------- endings

    def upstream_lost(self, up: UpstreamConnection, exc: Exception | None) -> None:
        if self.state == CLOSED or self._upstream_closing or up is not self.upstream:
            return  # not yet our upstream: _connect reports its failure itself
        tracker = self.tracker
        server_said_why = (up is not None and up.startup.failed is not None) or (tracker is not None and tracker.fatal)
        clean = tracker is None or tracker.server_at_boundary
        if not server_said_why and clean and not (tracker is not None and tracker.terminated):
            reason = f": {exc}" if exc else ""
            self.transport.write(wire.error_response(
                f"pgloupe: the upstream server closed the connection unexpectedly{reason}", "08006"))
        self.proxy.log.info("session_closed", conn=self.info.conn_id, by="server")
        self.close()

    def fail(self, message: str, code: str) -> None:
        """End this client's session with an ErrorResponse it can show its user."""
        if self.state == CLOSED:
            return
        self.proxy.log.info("client_rejected", conn=self.info.conn_id, client=self.info.client_addr,
                            sqlstate=code, reason=message)
        self.transport.write(wire.error_response(message, code))
        self.close()

    def close(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.transport.close()

    @property
    def busy(self) -> bool:
        """A statement is in flight (or the client is mid-message): shutting down now would cut it."""
        if self.state != RELAY:
            return False
        tracker = self.tracker
        return tracker is not None and (tracker.busy or not tracker.server_at_boundary)

    def shut_down(self) -> None:
        """End the session for a shutdown: tell a client between statements why, then close both sides."""
        if self.state == CLOSED:
            return
        # an ErrorResponse only where the client expects a message: between statements (which needs the
        # tracker to know), or in the admin console
        if self.state == ADMIN or (self.state == RELAY and self.tracker is not None and not self.busy):
            self.transport.write(wire.error_response("terminating connection due to administrator command "
                                                     "(pgloupe is shutting down)", "57P01"))
        self._cut_upstream()
        self.close()

    def _cut_upstream(self) -> None:
        up = self.upstream
        if up is not None and not up.closed and up.transport is not None:
            self._upstream_closing = True
            up.transport.close()

    def _startup_timed_out(self) -> None:
        self._timer = None
        if self.state in (STARTUP, TLS_HANDSHAKE):
            self.fail("pgloupe: timed out waiting for the startup packet", "08P01")
        elif self.tracker is None and self.state != CLOSED:
            self.fail("pgloupe: authentication did not complete in time", "08P01")

    def _analysis_interrupted(self, tracker: SessionTracker, exc: Exception) -> None:
        """The tracker could not follow this session: it waits for the next clean point and starts over.
        Counted each time, logged once per session (what failed and where, never a value)."""
        self.proxy.stats.analysis_errors += 1
        if tracker.errors == 1:
            self.proxy.log.warning("analysis_interrupted", conn=self.info.conn_id, **exception_summary(exc),
                                   resumes="at the session's next clean point")

    def _analysis_failed(self, side: str, exc: Exception) -> None:
        # Not expected (trackers and gauges contain their own failures): forwarding goes on untouched,
        # only this session's analysis stops.
        self.proxy.stats.analysis_errors += 1
        self.proxy.log.warning("analysis_stopped", conn=self.info.conn_id, side=side, **exception_summary(exc))
        if type(self.tracker) is SessionGauge:
            self.tracker.stop()
        self.tracker = None


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, client: ClientConnection | None):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.startup = ServerStartup()
        self.negotiation: asyncio.Future | None = None
        self.peer_cert: bytes | None = None  # the upstream's certificate (DER) when TLS is on
        self.ready = False
        self.closed = False
        self.closed_future: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        if self.ready:
            client.transport.write(data)
            self.analyse(data)
            return
        negotiation = self.negotiation
        if negotiation is not None:
            if not negotiation.done():
                if len(data) != 1:
                    negotiation.set_exception(UpstreamError("unexpected data after the server's SSL response"))
                else:
                    negotiation.set_result(data)
            return
        if client is None:
            return  # a cancel connection: the server answers nothing
        try:
            out, rest = self.startup.feed(data)
        except wire.ProtocolError as exc:
            client.fail(f"pgloupe: invalid data from the upstream server: {exc}", "08P01")
            return
        if out:
            client.transport.write(out)
        if self.startup.ready:
            self.ready = True
            client.session_ready(self.startup, rest)

    def analyse(self, data: bytes) -> None:
        client = self.client
        tracker = client.tracker
        if tracker is None:
            return
        try:
            events = tracker.server_data(data, monotonic())
        except Exception as exc:
            client._analysis_failed("server", exc)
            return
        if events:
            put = client.proxy.queue.put
            for event in events:
                put(event)

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.closed_future.done():
            self.closed_future.set_result(None)
        if self.negotiation is not None and not self.negotiation.done():
            self.negotiation.set_exception(UpstreamError("server closed the connection during TLS negotiation"))
        if self.client is not None:
            self.client.upstream_lost(self, exc)

    def pause_writing(self) -> None:
        if self.client is not None and self.client.state != CLOSED:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None and self.client.state != CLOSED:
            self.client.transport.resume_reading()
