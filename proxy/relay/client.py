"""One client session: startup, TLS, admission, then every chunk relayed to the server first and
handed to the session's analysis state (proxy.protocol.session) second."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING

from proxy.events import ConnectionClosed, ConnectionInfo
from proxy.logs import exception_summary
from proxy.protocol import wire
from proxy.protocol.capture import SessionGauge
from proxy.protocol.session import SessionState
from proxy.protocol.startup import (
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
from proxy.protocol.tracker import SessionTracker
from proxy.relay.upstream import UpstreamConnection, UpstreamError

if TYPE_CHECKING:
    from proxy.relay.listener import Proxy

STARTUP, TLS_HANDSHAKE, CONNECTING, RELAY, CLOSED, ADMIN = range(6)
MAX_BUFFERED_BEFORE_RELAY = 1 << 20
# Added by a worker to the startup packet of an admin session it relays to the main process: whether the
# client's connection is TLS, which the main process cannot see. Believed only on the private admin socket.
CLIENT_TLS_PARAM = "_pgloupe_client_tls"
monotonic = time.monotonic


class ClientConnection(asyncio.Protocol):
    def __init__(self, proxy: Proxy):
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamConnection | None = None
        # Follows the session's protocol state: a SessionTracker that also builds its statement events, or
        # in a worker process a SessionGauge that captures the bytes for the main process's tracker.
        self.tracker: SessionState | None = None
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
        tracker = self.tracker
        if tracker is not None and tracker.closed(monotonic()) or tracker is None and self.info.user:
            self.proxy.queue.put(ConnectionClosed(self.info.conn_id, time.time()))
        up = self.upstream
        if up is None or up.closed:
            return
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
        self.info.user = user
        self.info.database = self.proxy.settings.admin_database
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = ADMIN
        self.admin = self.proxy.admin_console.session(self.transport.write, self.close, self.proxy.log,
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
                                          on_error=self._analysis_interrupted,
                                          wall_offset=time.time() - monotonic())
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

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

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
        if self.tracker is not None:
            self.tracker.stop()
        self.tracker = None
