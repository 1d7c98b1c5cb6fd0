"""What the relay asks of a session's analysis state, whichever follows it: a SessionTracker (statement
events, in the process that analyses) or a SessionGauge (a worker's capture for the main process's
tracker). Both are sans-IO: bytes and the monotonic time they arrived in, facts out."""

from __future__ import annotations

from typing import Protocol

from proxy.events import ConnectionInfo, StatementEvent


class SessionState(Protocol):
    info: ConnectionInfo
    terminated: bool  # the client sent Terminate
    fatal: bool  # the server sent a FATAL error: it is closing the session itself

    @property
    def busy(self) -> bool:
        """Requests are waiting for their answers (a cancel or a close now would cut one short)."""

    @property
    def server_at_boundary(self) -> bool:
        """The server's stream ends at a message boundary."""

    @property
    def transaction_status(self) -> str:
        """The latest ReadyForQuery status: I, T or E."""

    def client_data(self, data: bytes, now: float) -> None:
        """Bytes the client sent, already relayed."""

    def server_data(self, data: bytes, now: float) -> list[StatementEvent]:
        """Bytes the server sent, already relayed; the statements they completed (none for a gauge)."""

    def stop(self) -> None:
        """This session's analysis ends here (an unexpected failure); relaying goes on."""

    def closed(self, now: float) -> bool:
        """The session ended; True when the caller must tell the analysis (a ConnectionClosed event)."""
