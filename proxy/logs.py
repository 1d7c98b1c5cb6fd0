"""structlog set-up. Log calls pass only identifiers and counts, never SQL values or credentials.

An exception's message can quote what it choked on (a literal, a row, a password in a URL), and so
can its traceback's last line and the repr of a failed asyncio task. So exceptions are logged as their
class and the file:line where they were raised, never their text; records from other libraries'
loggers (asyncio, asyncpg) keep their logger, level and exception class, not their message.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import structlog

OWN_LOGGERS = ("pgloupe",)  # stdlib loggers whose messages pgloupe writes itself (no values in them)


def exception_summary(exc: BaseException) -> dict[str, str]:
    """``error`` (the class) and ``where`` (innermost frames, newest first), never the message."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-3:]))
    summary = {"error": type(exc).__name__}
    if where:
        summary["where"] = where
    return summary


def _exception(exc_info) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1]
    if exc_info:
        return sys.exc_info()[1]
    return None


def scrub_exceptions(_logger, _method, event_dict: dict) -> dict:
    """structlog processor: ``exc_info`` becomes ``error``/``where`` (the renderers would print the message)."""
    for key in ("exc_info", "exception"):
        if key in event_dict:
            exc = _exception(event_dict.pop(key))
            if exc is not None:
                for field, value in exception_summary(exc).items():
                    event_dict.setdefault(field, value)
    return event_dict


class _StdlibHandler(logging.Handler):
    """Other libraries' log records, through the same structlog output, without their text."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict = {"logger": record.name}
            if record.name.split(".")[0] in OWN_LOGGERS:
                fields["detail"] = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                fields.update(exception_summary(record.exc_info[1]))
            log = structlog.get_logger(record.name)
            getattr(log, record.levelname.lower(), log.warning)("library_log", **fields)
        except Exception:  # logging must never raise into the caller
            pass


def configure(fmt: str = "console", level: str = "info", stream=None) -> None:
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            scrub_exceptions,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # one write per line: worker processes share the stream, and lines must not interleave
        logger_factory=structlog.WriteLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibHandler)]:
        root.removeHandler(handler)
    root.addHandler(_StdlibHandler())
    root.setLevel(max(numeric, logging.INFO))  # other libraries' debug output is not pgloupe's
