"""What the assistant remembers of its exchanges: recent interactions (for scene_feedback),
dialogue histories per session_id, and the durable interaction log on disk."""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Callable

from .interaction_log import InteractionLog
from .records import Interaction, RequestRefused
from .settings import AssistantConfig

__all__ = ["InteractionBook"]


class InteractionBook:
    """Thread-safe; bounded by max_interactions, max_sessions and history_turns.

    ``warn(key, level, text)`` reports a failing log disk (throttled by the caller); an
    append that fails never fails the request: the interaction is still published.
    """

    def __init__(self, config: AssistantConfig, warn: Callable[[str, str, str], None]) -> None:
        self.config, self._warn = config, warn
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, deque] = OrderedDict()
        self._interactions: OrderedDict[str, Interaction] = OrderedDict()
        self._log = InteractionLog(config.interaction_log) if config.interaction_log else None

    def history(self, session_id: str) -> list[tuple[str, str]] | None:
        """The remembered (question, answer) turns of a dialogue session, oldest first."""
        with self._lock:
            turns = self._sessions.get(session_id)
            return list(turns) if turns else None

    def remember(self, record: Interaction) -> None:
        with self._lock:
            self._interactions[record.interaction_id] = record
            while len(self._interactions) > self.config.max_interactions:
                self._interactions.popitem(last=False)
            if record.session_id and self.config.history_turns > 0 and record.answer:
                turns = self._sessions.pop(record.session_id, None) or deque(maxlen=self.config.history_turns)
                turns.append((record.instruction, record.answer))
                self._sessions[record.session_id] = turns  # most recently used last
                while len(self._sessions) > self.config.max_sessions:
                    self._sessions.popitem(last=False)
        self._append(record)

    def feedback(self, interaction_id: str, corrected_answer: str, comment: str = "") -> Interaction:
        """The feedback record for an earlier interaction (logged; to publish); raises RequestRefused."""
        if not corrected_answer.strip():
            raise RequestRefused("corrected_answer is empty")
        with self._lock:
            original = self._interactions.get(interaction_id.strip())
        if original is None:
            raise RequestRefused(f"unknown interaction_id {interaction_id!r} (only the last "
                                 f"{self.config.max_interactions} interactions are kept)")
        record = replace(original, kind="feedback", corrected_answer=corrected_answer.strip(), latency=0.0,
                         comment=comment.strip())
        self._append(record)
        return record

    def close(self) -> None:
        if self._log is not None:
            self._log.close()

    def _append(self, record: Interaction) -> None:
        if self._log is None:
            return
        try:
            self._log.append(record)
        except (OSError, ValueError) as exc:
            self._warn("interaction log", "error", f"cannot append to the interaction log {self._log.path}: {exc}; "
                                                   "the interaction is only published on interactions")
