"""Back-pressure and turn-taking for questions: at most ``max_pending`` requests run or wait,
they take the model in turn, and each can report its place in the queue and be cancelled."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from .records import RequestControl, RequestRefused

__all__ = ["RequestQueue"]

_POLL_S = 0.05  # how often a waiting request checks cancel, timeout and its queue position


class RequestQueue:
    """``model_lock`` is also taken by adapter swaps, which then delay every request."""

    def __init__(self, max_pending: int, timeout_s: float) -> None:
        self.max_pending, self.timeout_s = max_pending, timeout_s
        self.model_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._waiting: dict[object, None] = {}  # requests answered or waiting, oldest first

    def pending(self) -> int:
        with self._lock:
            return len(self._waiting)

    @contextmanager
    def turn(self, control: RequestControl) -> Iterator[None]:
        """Hold the model for one request; RequestRefused when busy, timed out or cancelled."""
        if not self._slots.acquire(blocking=False):
            raise RequestRefused(f"busy: {self.max_pending} requests are already being answered or waiting "
                                 "(parameter max_pending_requests); retry shortly")
        ticket = object()
        with self._lock:
            self._waiting[ticket] = None
        try:
            self._wait_for_model(ticket, control)
            try:
                yield
            finally:
                self.model_lock.release()
        finally:
            with self._lock:
                del self._waiting[ticket]
            self._slots.release()

    def _wait_for_model(self, ticket: object, control: RequestControl) -> None:
        deadline = time.monotonic() + self.timeout_s
        reported = None
        while not self.model_lock.acquire(timeout=_POLL_S):
            if control.cancel.is_set():
                raise RequestRefused("cancelled while waiting for the model")
            if time.monotonic() > deadline:
                raise RequestRefused(f"the model stayed busy for {self.timeout_s:.0f} s (long answers or an "
                                     "adapter swap); retry later")
            with self._lock:
                position = list(self._waiting).index(ticket)
            if control.progress is not None and position != reported:
                reported = position
                control.progress("queued", position, "")
        if control.cancel.is_set():
            self.model_lock.release()
            raise RequestRefused("cancelled while waiting for the model")
