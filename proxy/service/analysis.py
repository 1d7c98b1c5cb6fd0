"""The analysis thread and its loop: statement events (or workers' captures) from the queue, through the
replay and the detectors, on one thread of its own; the tick that closes idle pieces of work; and the
watch that says when the analysis is stalled or one of its tasks has died.

Nothing here can stop the loop: each step contains its own failures (counted, logged once per cause,
never with a value), and the relay never waits for any of it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from detectors.pipeline import Pipeline
from proxy.events import ConnectionClosed, StatementEvent
from proxy.logs import exception_summary
from proxy.protocol.replay import replay
from proxy.relay.queue import BATCH_BYTES, BATCH_MAX, BATCH_S, EventQueue

TICK_S = 0.25
# Statements waiting while nothing has been analysed for this long: the analysis is stalled, and
# /healthz fails (a probe restarts a pgloupe that silently stopped finding anything).
STALL_S = 10.0
WATCH_S = 1.0
EventHandler = Callable[[list[StatementEvent]], None]


class Analysis:
    """``call`` runs a function on the analysis thread, the only thread that touches the pipeline."""

    def __init__(self, pipeline: Pipeline, queue: EventQueue, proxy, workers, handlers: list[EventHandler], log):
        self.pipeline = pipeline
        self.queue = queue
        self.proxy = proxy  # in one process: its stall records are taken off the events' durations
        self.workers = workers  # with workers: the batches hold their captures, replayed here
        self.handlers = handlers
        self.log = log
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="pgloupe-analysis")
        self.analysing = 0  # items of the batch on the analysis thread now (counted as queued)
        self.statements = Counter()  # command verb -> statements analysed
        self.failures = 0  # contained failures of a step
        self._failures_logged: set[str] = set()
        self._progress = (-1, -1)
        self._progress_at = time.monotonic()
        self.health_reasons: list[str] = []
        self.stalled_s = 0.0
        self.tasks: list[asyncio.Task] = []
        self.stopping = False
        pipeline.on_error = self._detector_failed

    def start(self, extra: list[tuple[str, object]] = ()) -> None:
        """The consumer, the tick and the watch (and ``extra`` (name, coroutine) tasks the watch also
        keeps an eye on) on the running loop."""
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._consume(), name="analysis"),
                      loop.create_task(self._tick(), name="tick"),
                      *(loop.create_task(coro, name=name) for name, coro in extra),
                      loop.create_task(self._watch(), name="watch")]

    async def cancel(self) -> None:
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def finish(self) -> None:
        """What is still queued, then every open piece of work judged (shutdown, end of a CI run)."""
        await self.call(lambda batch: self.pipeline.process(replay(batch)), self.queue.drain())
        await self.call(self.pipeline.flush)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn, *args):
        """Run ``fn`` on the analysis thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def lower_priority(self, priority: str) -> None:
        """On the analysis thread: Linux schedules each thread by its own policy and nice value."""
        tid = threading.get_native_id()
        try:
            if priority == "idle":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.setpriority(os.PRIO_PROCESS, tid, 19)
        except (OSError, AttributeError) as exc:  # not Linux, or not allowed: analysis runs at normal priority
            self.log.warning("analysis_priority_not_set", priority=priority, reason=str(exc))

    def failed(self, step: str, exc: BaseException, **fields) -> None:
        """A contained failure of one analysis step: counted, and logged once per step and cause (a bug
        that fires on every statement must not flood the log), with what failed and where, never a value."""
        self.failures += 1
        summary = exception_summary(exc)
        key = f"{step}|{summary['error']}|{summary.get('where', '')}"
        if key not in self._failures_logged and len(self._failures_logged) < 1000:
            self._failures_logged.add(key)
            self.log.error("analysis_step_failed", step=step, **summary, **fields)

    def _detector_failed(self, ev) -> None:
        """On the analysis thread: a detector raised on one event (the batch's others go on)."""
        self.failed("detectors", sys.exc_info()[1] or RuntimeError("detector failed"),
                    conn=getattr(ev, "conn_id", None))

    async def _consume(self) -> None:
        while True:
            try:
                await self.queue.wait()
                # Let a batch build up: thread switches (and the GIL hand-overs they cost an in-process
                # forwarding loop) stay rare.
                await asyncio.sleep(BATCH_S)
                batch = self.queue.get_nowait(BATCH_MAX, BATCH_BYTES)
                # still queued until analysed: a backlog taken in one batch must not read as an empty queue
                self.analysing = len(batch)
                try:
                    await self._analyse_batch(batch)
                finally:
                    self.analysing = 0
            except Exception as exc:  # never the end of the loop: the next batch is analysed
                self.failed("batch", exc)

    async def _analyse_batch(self, batch: list) -> None:
        if self.workers is None:
            self.proxy.discount_stalls(batch)
        else:  # the workers' captured sessions, through their trackers
            try:
                batch = await self.call(replay, batch, lambda exc: self.failed("replay", exc))
            except Exception as exc:
                self.failed("replay", exc)
                return
        statements = [e for e in batch if not isinstance(e, ConnectionClosed)]
        for event in statements:
            self.statements[event.command] += 1
        for handler in self.handlers:
            try:
                handler(statements)
            except Exception as exc:
                self.failed("event_handler", exc, handler=getattr(handler, "__name__", type(handler).__name__))
        try:
            await self.call(self.pipeline.process, batch)
        except Exception as exc:
            self.failed("pipeline", exc, events=len(batch))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if len(self.queue) or self.pipeline.events < self.queue.accepted:
                continue  # analysis is behind: idle gaps measured now would split units that are not idle
            try:
                await self.call(self.pipeline.tick, time.time())
            except Exception as exc:
                self.failed("tick", exc)

    def _progress_counters(self) -> tuple[int, int]:
        """Progress counters the analysis thread moves (read without a lock: plain ints)."""
        replayed = 0
        if self.workers is not None:
            replayed = sum(slot.replayer.records for slot in self.workers.slots if slot.replayer is not None)
        return self.pipeline.events, replayed

    async def _watch(self) -> None:
        """Health of the analysis itself: a backlog with no progress, or a task that ended."""
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                self.check_health()
            except Exception as exc:
                self.failed("watch", exc)

    def check_health(self) -> list[str]:
        now = time.monotonic()
        progress = self._progress_counters()
        if progress != self._progress:
            self._progress, self._progress_at = progress, now
        backlog = len(self.queue) + self.analysing
        reasons = []
        self.stalled_s = now - self._progress_at if backlog else 0.0
        if backlog and self.stalled_s > STALL_S:
            reasons.append(f"analysis stalled: {backlog} items waiting, nothing analysed for {self.stalled_s:.0f}s")
        if not self.stopping:
            for task in self.tasks:
                if task.done() and task.get_name() != "watch":
                    reasons.append(f"analysis task {task.get_name()} has stopped")
        self.health_reasons = reasons
        return reasons
