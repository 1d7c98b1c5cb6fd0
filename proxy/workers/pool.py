"""``--workers N``: forwarding in N processes, analysis in one (the pool, in the main process).

Each worker process runs its own event loop and Proxy on the shared port (SO_REUSEPORT: the kernel
spreads new connections over the workers), so relaying bytes never waits for the detectors' GIL
and can use more than one core. Workers do not analyse: they capture each session's bytes
(proxy.protocol.capture) and ship the capture every BATCH_S over a socketpair to the main process, whose
analysis thread replays it through the session trackers and the detectors; the main process also
owns the findings, HTTP, alerts and the admin console, so findings and metrics are merged by
construction. When the main process falls behind, captures are dropped and counted and the
sessions resynchronise; nothing waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import structlog

from proxy.logs import exception_summary
from proxy.protocol.replay import Captured, Replayer, count_statements
from proxy.workers.channel import _Channel, encode

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
CONN_ID_STRIDE = 1_000_000_000  # worker k's connections are numbered k * STRIDE + 1, + 2 ...


class WorkerError(RuntimeError):
    """A worker process did not start or could not listen."""


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never listening SO_REUSEPORT socket: it fixes the port (0 picks one) for the workers
    and across their restarts, and takes no connections itself."""
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class _Slot:
    index: int
    serial: int = 0
    proc: subprocess.Popen | None = None
    channel: _Channel | None = None
    stats: dict = field(default_factory=dict)
    ready: asyncio.Future | None = None
    restarts: int = 0
    started_at: float = 0.0
    report: asyncio.Future | None = None  # waiting for an on-demand stats message
    replayer: Replayer | None = None  # this worker's session trackers
    stalls: list = field(default_factory=list)  # the worker loop's latest stall records


def worker_settings(settings):
    """What a worker is told: no secret it has no use for (values are hashed by the trackers in the
    main process, which also holds the admin console and the HTTP server)."""
    return dataclasses.replace(settings, hash_key=None, admin_password=None, http_token=None)


class WorkerPool:
    """Starts, watches, restarts and stops the worker processes; merges what they report."""

    def __init__(self, app, count: int) -> None:
        self.app = app
        self.count = count
        self.log = structlog.get_logger("pgloupe.workers")
        self.slots = [_Slot(i) for i in range(count)]
        self.port = 0
        self._reserved: socket.socket | None = None
        self._dir: str | None = None
        self.admin_path = ""
        self._serial = 0
        self._stopping = False
        self._watch: asyncio.Task | None = None
        self.restarts = 0
        self.channel_errors = 0
        self.replay_errors = 0  # sessions whose capture a tracker here could not follow
        self.capture_dropped = 0  # statements in shipments dropped because analysis was behind

    async def start(self) -> None:
        host, port = self.app.settings.listen_address
        self._reserved = reserve_port(host, port)
        self.port = self._reserved.getsockname()[1]
        self._dir = tempfile.mkdtemp(prefix="pgloupe-")  # 0700: only this user reaches the admin socket
        self.admin_path = os.path.join(self._dir, "admin.sock")
        await self.app.proxy.start_admin_socket(self.admin_path)
        try:
            await asyncio.gather(*(self._spawn(slot) for slot in self.slots))
        except BaseException:
            await self.stop()
            raise
        self._watch = asyncio.get_running_loop().create_task(self._watch_workers())
        self.log.info("listening", listen=f"{host}:{self.port}", workers=self.count,
                      upstream=self.app.proxy.upstream.describe())

    async def _spawn(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        self._serial += 1
        slot.serial = self._serial
        parent, child = socket.socketpair()
        try:
            slot.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.workers.child", str(child.fileno())], pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL)
        finally:
            child.close()
        slot.ready = loop.create_future()
        slot.stats = {}
        serial = slot.serial
        slot.replayer = Replayer(self._tracker, time.time() - time.monotonic(), self._replay_failed,
                                 lambda: loop.call_soon_threadsafe(self._shipment_lost, slot, serial))
        slot.started_at = time.monotonic()
        _, slot.channel = await loop.connect_accepted_socket(
            lambda: _Channel(lambda m, s=slot: self._on_message(s, m), lambda s=slot: self._on_lost(s)), parent)
        settings = self.app.settings
        slot.channel.transport.write(encode({
            "settings": worker_settings(settings), "port": self.port, "admin_path": self.admin_path,
            "first_conn_id": slot.serial * CONN_ID_STRIDE + 1, "worker": slot.index,
        }))
        try:
            await asyncio.wait_for(asyncio.shield(slot.ready), START_TIMEOUT_S)
        except TimeoutError as exc:
            raise WorkerError(f"worker {slot.index} did not start within {START_TIMEOUT_S:g}s") from exc

    def _tracker(self, info, tx: str):
        from proxy.protocol.tracker import SessionTracker

        settings = self.app.settings
        return SessionTracker(info, self.app.proxy.hasher, settings.result_rows,
                              max_message=settings.max_message_size,
                              max_analysed=settings.max_analysed_message_size, markers=True, tx=tx,
                              texts=self.app.proxy.prepared_texts, on_error=self._replay_interrupted,
                              wall_offset=time.time() - time.monotonic())

    def _replay_interrupted(self, tracker, exc: Exception) -> None:
        """On the analysis thread: a session's tracker failed and waits for its next clean point."""
        self.replay_errors += 1
        if tracker.errors == 1:
            self.log.warning("analysis_interrupted", conn=tracker.info.conn_id, **exception_summary(exc),
                             resumes="at the session's next clean point")

    def _replay_failed(self, conn_id: int, exc: Exception) -> None:
        """On the analysis thread: a session's capture cannot be followed any more (its worker ended it)."""
        self.replay_errors += 1
        self.log.warning("analysis_stopped", conn=conn_id, **exception_summary(exc))

    def _shipment_lost(self, slot: _Slot, serial: int) -> None:
        """On the loop: a shipment could not be read; the worker restarts its sessions' streams."""
        self.replay_errors += 1
        self.log.warning("capture_unreadable", worker=slot.index, hint="sessions resynchronise at clean points")
        if slot.serial == serial and slot.channel is not None and slot.channel.transport is not None:
            slot.channel.transport.write(encode(("resync",)))

    def _on_message(self, slot: _Slot, message) -> None:
        kind = message[0]
        if kind == "capture":
            _, raw, stalls = message
            if stalls:
                slot.stalls = stalls
            queue = self.app.queue
            if not queue.put_capture(Captured(slot.replayer, raw, slot.stalls)):
                # analysis is this far behind: drop the shipment, and have the worker restart its
                # sessions' streams at their next clean points
                self.capture_dropped += count_statements(raw)
                queue.put_capture(Captured(slot.replayer, b"", [], "desync"))
                if slot.channel is not None and slot.channel.transport is not None:
                    slot.channel.transport.write(encode(("resync",)))
        elif kind == "events":
            put = self.app.queue.put
            for event in message[1]:
                put(event)
        elif kind == "stats":
            slot.stats = message[1]
            if slot.report is not None and not slot.report.done():
                slot.report.set_result(None)
        elif kind == "ready":
            if slot.ready is not None and not slot.ready.done():
                slot.ready.set_result(None)
        elif kind == "admit":  # a worker's new session, against the limits of all workers together
            _, conn_id, client_addr = message
            refusal = self.app.proxy.admission.limits.admit(conn_id, client_addr)
            if slot.channel is not None and slot.channel.transport is not None:
                slot.channel.transport.write(encode(("admitted", conn_id, refusal)))
        elif kind == "left":
            self.app.proxy.admission.limits.left(message[1])
        elif kind == "failed":
            if slot.ready is not None and not slot.ready.done():
                slot.ready.set_exception(WorkerError(message[1]))

    def _on_lost(self, slot: _Slot) -> None:
        if slot.ready is not None and not slot.ready.done():
            slot.ready.set_exception(WorkerError(f"worker {slot.index} exited during start"))

    async def _watch_workers(self) -> None:
        """Restart a worker that died, with a growing pause if it keeps dying."""
        while not self._stopping:
            await asyncio.sleep(0.5)
            for slot in self.slots:
                proc = slot.proc
                if self._stopping or proc is None or proc.poll() is None:
                    continue
                self.log.error("worker_exited", worker=slot.index, pid=proc.pid, code=proc.returncode)
                slot.proc = None
                if slot.replayer is not None:  # its sessions' units are complete now
                    self.app.queue.put_capture(Captured(slot.replayer, b"", [], "gone"))
                # its clients went with it: free their places
                serial = slot.serial
                self.app.proxy.admission.limits.forget(lambda conn_id, serial=serial: conn_id // CONN_ID_STRIDE == serial)
                if slot.channel is not None and slot.channel.transport is not None:
                    slot.channel.transport.close()
                if time.monotonic() - slot.started_at > 60:
                    slot.restarts = 0
                await asyncio.sleep(RESTART_BACKOFF_S[min(slot.restarts, len(RESTART_BACKOFF_S) - 1)])
                slot.restarts += 1
                self.restarts += 1
                if self._stopping:
                    return
                try:
                    await self._spawn(slot)
                except (WorkerError, OSError) as exc:
                    self.log.error("worker_restart_failed", worker=slot.index, reason=str(exc)[:200])
                    if slot.proc is not None and slot.proc.poll() is None:
                        slot.proc.kill()

    async def stop(self) -> None:
        """Ask every worker to stop (they close their sessions and send their last events), then wait."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        procs = []
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                with contextlib.suppress(OSError):
                    slot.proc.send_signal(signal.SIGTERM)
                procs.append(slot.proc)
        deadline = time.monotonic() + self.app.settings.shutdown_timeout + STOP_TIMEOUT_S
        for proc in procs:
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                self.log.warning("worker_killed", pid=proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.wait)
        await asyncio.sleep(0)  # let the channels deliver what the workers sent last
        for slot in self.slots:
            if slot.channel is not None and slot.channel.transport is not None:
                slot.channel.transport.close()
        if self._dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.admin_path)
                os.rmdir(self._dir)
            self._dir = None

    # ------------------------------------------------------------------ merged views

    async def refresh(self, timeout: float = 1.0) -> None:
        """Ask every worker for its counters and clients now (SHOW CLIENTS, /healthz), waiting at most
        ``timeout``; a worker that does not answer in time keeps its last report."""
        loop = asyncio.get_running_loop()
        waiting = []
        for slot in self.slots:
            channel = slot.channel
            if slot.proc is None or channel is None or channel.transport is None or channel.transport.is_closing():
                continue
            if slot.report is None or slot.report.done():
                slot.report = loop.create_future()
                channel.transport.write(encode(("report",)))
            waiting.append(slot.report)
        if waiting:
            await asyncio.wait([asyncio.shield(w) for w in waiting], timeout=timeout)

    def counters(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for slot in self.slots:
            for key, value in slot.stats.get("counters", {}).items():
                # lags are per loop: the worst one, not a sum
                total[key] = max(total.get(key, 0), value) if key.endswith("_lag_us") else total.get(key, 0) + value
        total["analysis_errors"] = total.get("analysis_errors", 0) + self.replay_errors
        return total

    def queue_counters(self) -> dict[str, int]:
        total = {"queued": 0, "dropped": self.capture_dropped, "closes_dropped": 0}
        for slot in self.slots:
            for key in total:
                total[key] += slot.stats.get(key, 0)
        return total

    def client_rows(self) -> list[dict]:
        return [row for slot in self.slots for row in slot.stats.get("clients", ())]
