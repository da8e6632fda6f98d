"""GPT-Score: an LLM judge rates each answer against the ground truth (MSR3D's protocol).

As MSR3D's evaluator (MSR3D/MSR3D, evaluator/evaluate_msqa.py ``get_gpt_score``): the judge
gets its system message(s), then one user message
``"Question: {question}\\nAnswer: {answer}\\nGround Truth: {gt}"`` with the first accepted
answer as ground truth; the first integer of its reply is the score s in 1..5 and
GPT-Score = (s - 1) * 25, so 0..100; a benchmark's GPT-Score is the mean over its records.
LEO-VL reports it for MSQA (Table 2).

MSR3D reads the system message from a prompt file (``gpt_score_prompt_path``) that its
repository does not include; :data:`DEFAULT_SYSTEM_PROMPT` is ours, stating the same 1-5
scale, and is configurable (``eval.gpt_score.system_prompt``). Decision: a reply without
a number in 1..5, or an endpoint error, leaves that record unscored and counted
(``GPT-Score-failed``) instead of MSR3D's crash, so one bad reply does not lose a run.
"""
from __future__ import annotations

import re
from typing import Sequence

from .chat_endpoint import ChatClient, ChatError

DEFAULT_SYSTEM_PROMPT = (
    "You are an impartial judge of answers to questions about a 3D indoor scene. You are given the question, "
    "a model's answer and the ground-truth answer. Rate how well the answer agrees with the ground truth on a "
    "scale of 1 to 5: 5 = correct (the same meaning), 4 = mostly correct, 3 = partly correct, 2 = mostly wrong, "
    "1 = wrong or no answer. Reply with the number only.")
_NUMBER = re.compile(r"\d+")


def judge_message(question: str, answer: str, ground_truth: str) -> str:
    """MSR3D's user message to the judge."""
    return "\n".join([f"Question: {question}", f"Answer: {answer}", f"Ground Truth: {ground_truth}"])


def parse_score(reply: str) -> float | None:
    """GPT-Score (0..100) from the judge's reply: (first integer - 1) * 25; None if not 1..5."""
    m = _NUMBER.search(reply or "")
    if m is None or not 1 <= int(m.group(0)) <= 5:
        return None
    return (int(m.group(0)) - 1) * 25.0


class GPTScorer:
    """Scores answers with a chat endpoint; see the module docstring."""

    def __init__(self, client: ChatClient, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> None:
        self.client, self.system_prompt = client, system_prompt

    def score_one(self, question: str, answer: str, ground_truth: str) -> float | None:
        messages = [{"role": "system", "content": self.system_prompt},
                    {"role": "user", "content": judge_message(question, answer, ground_truth)}]
        try:
            return parse_score(self.client.chat(messages, max_tokens=16))
        except ChatError:
            return None

    def score_each(self, questions: Sequence[str], answers: Sequence[str],
                   ground_truths: Sequence[str]) -> list[float | None]:
        """Per answer its GPT-Score or None (unscored); raises ChatError when none could be
        scored (the endpoint is unusable: better an error than a report without the metric)."""
        scores = [self.score_one(q, a, g) for q, a, g in zip(questions, answers, ground_truths)]
        if scores and all(s is None for s in scores):
            raise ChatError(f"GPT-Score: the judge at {self.client.url} scored none of {len(scores)} answers")
        return scores


def summarise(scores: Sequence[float | None]) -> dict[str, float]:
    """``{"GPT-Score": mean over the scored answers, "GPT-Score-failed": unscored count}``."""
    ok = [s for s in scores if s is not None]
    return {"GPT-Score": sum(ok) / len(ok) if ok else 0.0, "GPT-Score-failed": float(len(scores) - len(ok))}
