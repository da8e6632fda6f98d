"""Back-pressure and batching for questions: at most ``max_pending`` requests run or wait; one
answering thread takes up to ``max_batch`` waiting requests that share decoding settings and
answers them in one model call; each request can report its place in the queue and be
cancelled, waiting or mid-batch, without disturbing the others.

Decision (paper silent): the batch is formed from what waits when the model becomes free
(no waiting for a batch to fill), so a lone question is never delayed; under load the
queue fills while the model works and the next batch is full.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from .records import RequestControl, RequestRefused

__all__ = ["Job", "RequestQueue"]

_POLL_S = 0.05  # how often a waiting request checks cancel, timeout and its queue position


@dataclass(eq=False)
class Job:
    """One request in the queue; ``run_batch`` sets ``result`` or ``error`` of each job it gets."""

    payload: Any
    control: RequestControl
    group: Hashable  # requests share a model call only within a group (e.g. decoding settings)
    result: Any = None
    error: RequestRefused | None = None
    running: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class RequestQueue:
    """``model_lock`` is held by the answering thread per batch and by adapter swaps, which
    then delay every request."""

    def __init__(self, max_pending: int, timeout_s: float, max_batch: int,
                 run_batch: Callable[[list[Job]], None]) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_pending, self.timeout_s, self.max_batch = max_pending, timeout_s, max_batch
        self.model_lock = threading.Lock()
        self._run_batch = run_batch
        self._slots = threading.BoundedSemaphore(max_pending)
        self._cond = threading.Condition()  # guards the fields below
        self._waiting: list[Job] = []  # oldest first
        self._pending = 0
        self.batches = self.batched_requests = 0  # model calls and the requests they answered
        self._closed = False
        self._thread = threading.Thread(target=self._answering, name="leovl-answering", daemon=True)
        self._thread.start()

    def pending(self) -> int:
        with self._cond:
            return self._pending

    def submit(self, payload: Any, control: RequestControl, group: Hashable = None) -> Any:
        """Wait for ``payload``'s answer; RequestRefused when busy, timed out, cancelled or failed."""
        if not self._slots.acquire(blocking=False):
            raise RequestRefused(f"busy: {self.max_pending} requests are already being answered or waiting "
                                 "(parameter max_pending_requests); retry shortly")
        job = Job(payload, control, group)
        try:
            with self._cond:
                if self._closed:
                    raise RequestRefused("the assistant is shutting down")
                self._pending += 1
                self._waiting.append(job)
                self._cond.notify_all()
            try:
                self._wait(job)
            finally:
                with self._cond:
                    self._pending -= 1
        finally:
            self._slots.release()
        if job.error is not None:
            raise job.error
        return job.result

    def _wait(self, job: Job) -> None:
        deadline = time.monotonic() + self.timeout_s
        reported = None
        while not job.done.wait(_POLL_S):
            with self._cond:
                if job.running:  # its batch stops this row at the next token; the reply goes now
                    if job.control.cancel.is_set():
                        raise RequestRefused("cancelled while answering")
                    continue
                if job.control.cancel.is_set() or time.monotonic() > deadline:
                    self._waiting.remove(job)
                    if job.control.cancel.is_set():
                        raise RequestRefused("cancelled while waiting for the model")
                    raise RequestRefused(f"the model stayed busy for {self.timeout_s:.0f} s (long answers or an "
                                         "adapter swap); retry later")
                if not self.model_lock.locked():
                    continue  # the model is free: the answering thread takes this job now, no queue to report
                position = 1 + self._waiting.index(job)
            if job.control.progress is not None and position != reported:
                reported = position
                job.control.progress("queued", position, "")

    def _take(self) -> list[Job]:
        """The oldest waiting job and up to max_batch - 1 later ones of its group (caller holds _cond)."""
        group = self._waiting[0].group
        batch = [j for j in self._waiting if j.group == group][:self.max_batch]
        for job in batch:
            self._waiting.remove(job)
            job.running = True
        return batch

    def _answering(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._closed)
                if self._closed:
                    return
            with self.model_lock:
                with self._cond:
                    if not self._waiting:  # all left (cancel, timeout) while an adapter swap held the model
                        continue
                    batch = self._take()
                    self.batches += 1
                    self.batched_requests += len(batch)
                try:
                    self._run_batch(batch)
                except Exception as exc:  # run_batch answers per job; this is a bug, never a dead queue
                    for job in batch:
                        if job.result is None and job.error is None:
                            job.error = RequestRefused(f"internal error while answering: {type(exc).__name__}: "
                                                       f"{exc}")
                finally:
                    for job in batch:
                        job.done.set()

    def close(self) -> None:
        """Stop the answering thread after its current batch; waiting requests are refused."""
        with self._cond:
            self._closed = True
            for job in self._waiting:
                job.error = RequestRefused("the assistant is shutting down")
                job.done.set()
            self._waiting.clear()
            self._cond.notify_all()
        self._thread.join(timeout=30.0)
