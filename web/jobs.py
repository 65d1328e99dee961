"""One worker thread owns the models; requests wait for it in a bounded queue and can be cancelled.

A request becomes a :class:`Job`: the work (a function of the job, run on the worker thread) and the
events it sends back to the request's event loop (``queued``, ``started``, ``progress``, ``image``, then
``done`` or ``error``). :class:`JobQueue` holds at most ``size`` waiting jobs besides the one running; a
job submitted to a full queue is refused at once (:class:`QueueFullError`, HTTP 429), so a burst of
clients never piles up unbounded work. Cancelling a job (its client went away) takes effect at its next
sampling step: ``Job.progress`` raises :class:`Cancelled`, which ends the work; a job cancelled while
waiting is dropped when its turn comes.
"""

import asyncio
import base64
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.errors import InputError

LOG = logging.getLogger("web.jobs")
PROGRESS_EVERY = 0.01  # send a progress event for every 1% of the work (and the last step)


class Cancelled(Exception):
    """The job was cancelled (its client disconnected); raised at the job's next step."""


class QueueFullError(Exception):
    """The queue already holds as many waiting jobs as it may."""


@dataclass
class Stats:
    """What the queue has done since it started (``GET /api/status``)."""

    accepted: int = 0
    rejected: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    peak_waiting: int = 0


class Job:
    """One request's work and the stream of events it produces for the request handler.

    ``work(job)`` runs on the worker thread and returns the final result (a JSON-ready dict); it reports
    through :meth:`progress` and :meth:`image`. Events are delivered to ``loop`` (the handler's event
    loop), read with :meth:`next_event`.
    """

    def __init__(self, kind: str, work: Callable[["Job"], dict[str, Any]], loop: asyncio.AbstractEventLoop):
        self.id = uuid.uuid4().hex[:12]
        self.kind = kind
        self.work = work
        self._loop = loop
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._next_progress = 0.0

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop this job at its next step (or drop it before it starts); safe from any thread, repeatable."""
        self._cancelled.set()

    def progress(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` steps; raises :class:`Cancelled` if the job was cancelled."""
        if self.cancelled:
            raise Cancelled
        if done >= total or done >= self._next_progress * total:
            self._next_progress = done / max(total, 1) + PROGRESS_EVERY
            self.emit({"event": "progress", "done": done, "total": total})

    def image(self, index: int, png: bytes, **details: Any) -> None:
        """Report a finished image (PNG contents), sent base64-encoded with ``details`` (JSON-ready)."""
        png_text = base64.b64encode(png).decode("ascii")
        self.emit({"event": "image", "index": index, **details, "png": png_text})

    def emit(self, event: dict[str, Any]) -> None:
        """Send ``event`` to the handler (thread-safe); dropped if the handler's loop has closed."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is left to read the event
            self.cancel()

    async def next_event(self) -> dict[str, Any]:
        return await self._events.get()


@dataclass
class JobQueue:
    """At most ``size`` waiting jobs and one worker thread that runs them in order (see the module doc)."""

    size: int
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"the queue size must be at least 1, got {self.size}")
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=self.size)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._running: Job | None = None
        self._thread = threading.Thread(target=self._run, name="model-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`QueueFullError` (with the sentence for the client) when full."""
        with self._lock:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self.stats.rejected += 1
                raise QueueFullError(
                    f"the server is busy: {self.size} requests are already waiting; try again in a moment"
                ) from None
            self.stats.accepted += 1
            waiting = self._queue.qsize()
            self.stats.peak_waiting = max(self.stats.peak_waiting, waiting)
            # under the lock: the worker takes the lock before it sends "started"
            job.emit({"event": "queued", "id": job.id, "waiting": waiting})

    def status(self) -> dict[str, Any]:
        """The queue's size, what waits and runs now, and :class:`Stats`."""
        with self._lock:
            return {
                "queue_size": self.size,
                "waiting": self._queue.qsize(),
                "running": self._running.kind if self._running else None,
                **vars(self.stats),
            }

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every job, stop the worker after its current step and wait for it."""
        self._stopping.set()
        with self._lock:
            running = self._running
        if running:
            running.cancel()
        while True:
            try:
                self._queue.get_nowait().cancel()
            except queue.Empty:
                break
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            with self._lock:
                self._running = job
            try:
                self._execute(job)
            finally:
                with self._lock:
                    self._running = None

    def _execute(self, job: Job) -> None:
        """Run one job and send its final event; count how it ended."""
        if job.cancelled:
            self._count("cancelled")
            return
        job.emit({"event": "started"})
        try:
            result = job.work(job)
        except Cancelled:
            self._count("cancelled")
            return
        except InputError as error:  # the client's input is at fault: HTTP 400, its message shown
            self._count("failed")
            job.emit({"event": "error", "status": 400, "error": str(error)})
            return
        except Exception:  # a bug, not bad input: logged with its traceback, the client told only that
            LOG.exception("%s job %s failed", job.kind, job.id)
            self._count("failed")
            job.emit({"event": "error", "status": 500, "error": "internal error (see the server's log)"})
            return
        self._count("completed")
        job.emit({"event": "done", **result})

    def _count(self, outcome: str) -> None:
        with self._lock:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
