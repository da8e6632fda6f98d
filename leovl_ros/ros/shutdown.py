"""Shutting the node down without losing an answer: SIGTERM / SIGINT stop new requests, those
in flight are finished or refused within ``shutdown_timeout`` and each gets its reply, and
only then are the interaction log, the publishers and the node closed.

rclpy's own signal handler shuts the context down at once, while executor threads are still
answering (their replies and log lines then hit destroyed handles and a closed file), so the
node installs its own handlers and spins in a thread.
"""
from __future__ import annotations

import signal
import threading
import time
import weakref
from typing import Any, Callable

from rclpy.executors import Executor, ExternalShutdownException

from ..assistant.records import RequestControl

__all__ = ["RequestGate", "spin_until_signal"]

SHUTTING_DOWN = "the node is shutting down"
# rclpy sends a service response or action result from an executor task just after the callback
# returns, and offers no hook for "sent"; the executor keeps spinning this long for them.
_SEND_GRACE_S = 0.5


class RequestGate:
    """Counts the request callbacks in flight; once closed, refuses new ones and can cancel the rest."""

    def __init__(self, log: Callable[[str, str], None]) -> None:
        self._log = log
        self._cond = threading.Condition()
        self._active = 0
        self._controls: list[weakref.ref[RequestControl]] = []  # controls are unhashable dataclasses
        self.closed = False

    def control(self) -> RequestControl:
        """A control for a service call, so that shutdown can cancel it like an action goal."""
        control = RequestControl()
        with self._cond:
            self._track(control)
        return control

    def _track(self, control: RequestControl) -> None:
        self._controls = [c for c in self._controls if c() is not None] + [weakref.ref(control)]

    def wrap(self, what: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        """``handler(request, response, [control])`` counted while it runs; refused once closed."""
        def gated(request: Any, response: Any, *more: Any) -> Any:
            with self._cond:
                if self.closed:
                    refused = True
                else:
                    refused = False
                    self._active += 1
                    if more and isinstance(more[0], RequestControl):
                        self._track(more[0])
            if refused:
                response.success, response.message = False, f"{SHUTTING_DOWN}: {what} not accepted; retry later"
                self._log("info", f"{what} refused: {SHUTTING_DOWN}")
                return response
            try:
                return handler(request, response, *more)
            finally:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()
        return gated

    def close(self, timeout_s: float) -> None:
        """Refuse new requests; wait up to ``timeout_s`` for those in flight, then cancel the rest
        (each stops at its next generated token and is refused) and wait for their replies."""
        with self._cond:
            self.closed = True
            in_flight = self._active
            self._log("info", f"shutting down: {in_flight} requests in flight, finishing them for up to "
                              f"{timeout_s:g} s (parameter shutdown_timeout)")
            if not self._cond.wait_for(lambda: self._active == 0, timeout_s):
                self._log("warn", f"shutting down: {self._active} requests not finished within {timeout_s:g} s; "
                                  "refusing them")
                for ref in self._controls:
                    if (control := ref()) is not None:
                        control.cancel.set()
                self._cond.wait_for(lambda: self._active == 0, 30.0)


def spin_until_signal(executor: Executor, on_signal: Callable[[], None]) -> None:
    """Spin ``executor`` in a thread until SIGTERM / SIGINT (or an external shutdown), run
    ``on_signal`` while it still spins (so replies go out), then stop it."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass
        finally:
            stop.set()

    spinner = threading.Thread(target=spin, name="leovl-executor", daemon=True)
    spinner.start()
    try:
        stop.wait()
        if spinner.is_alive():
            on_signal()
            time.sleep(_SEND_GRACE_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        executor.shutdown(timeout_sec=5.0)
