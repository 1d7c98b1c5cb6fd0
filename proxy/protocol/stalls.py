"""A forwarding loop's stalls taken off the durations of the statements that ended inside one."""

from __future__ import annotations


def discount_stalls(stalls, events) -> None:
    """Take the forwarding loop's stalls ((due, ran) of late timer ticks, monotonic) off the durations
    of the statements that ended inside one."""
    if not stalls:
        return
    first = stalls[0][0]
    for ev in events:
        end = getattr(ev, "ended", 0.0)
        if end < first:
            continue
        for due, ran in reversed(stalls):
            if ran < end:
                break
            if due <= end:
                lag = min(ev.duration, end - due)
                ev.proxy_lag = lag
                ev.duration -= lag
                break
