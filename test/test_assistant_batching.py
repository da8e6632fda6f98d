"""Batched answering in SceneSession: several waiting questions in one model call, each still
answered, cancelled, streamed and logged on its own; the scene prefix computed once."""
from __future__ import annotations

import json
import threading

import pytest

from leovl_ros.assistant import AssistantConfig, RequestControl, RequestRefused, SceneSession
from leovl_ros.assistant.request_queue import RequestQueue
from leovl_ros.model.config import LeoVLConfig
from leovl_ros.model.leovl import LeoVL
from leovl_ros.model.tiny import tiny_qwen25vl_config
from leovl_ros.synth.render import tiny_scene

from conftest import wait_for

FAST = {"num_beams": 1, "max_new_tokens": 6}
QUESTIONS = ["what is near the table?", "how many chairs are there?", "where is the door?",
             "is the window open?", "what colour is the floor?"]


@pytest.fixture(scope="module")
def model() -> LeoVL:
    qwen = tiny_qwen25vl_config()
    return LeoVL.from_config(qwen, LeoVLConfig(base_model="tiny-random", hidden_size=qwen.text_config.hidden_size),
                             seed=0)


@pytest.fixture(scope="module")
def frames():
    return tiny_scene(seed=3, num_frames=4)[1]


def _session(model, frames, **overrides) -> SceneSession:
    session = SceneSession(model, AssistantConfig(**{**FAST, "max_keyframe_rate": 0.0, **overrides}), "tiny-random")
    for f in frames:
        session.offer(f.rgbd())
        assert session.wait_idle(60.0)
    return session


@pytest.fixture(scope="module")
def alone(model, frames) -> dict[str, tuple[str, float]]:
    """Each question asked alone (max_batch 1, no prefix cache): the answers batching must keep."""
    session = _session(model, frames, max_batch=1, prefix_cache_mb=0.0)
    try:
        replies = {q: session.ask(q) for q in QUESTIONS}
    finally:
        session.close()
    return {q: (r.answer, r.interaction.grounding_score) for q, r in replies.items()}


def _ask_together(session: SceneSession, asks: list[tuple[str, RequestControl]], queued: int = 0) -> list[object]:
    """Queue every ask while the model is held (as an adapter swap holds it), then let them go:
    the answering thread finds them all waiting. Returns each Reply or refusal message."""
    results: list[object] = [None] * len(asks)

    def run(i: int, question: str, control: RequestControl) -> None:
        try:
            results[i] = session.ask(question, control=control)
        except RequestRefused as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=run, args=(i, q, c)) for i, (q, c) in enumerate(asks)]
    with session._requests.model_lock:
        for t in threads:
            t.start()
        wait_for(lambda: session.stats().pending_requests == (queued or len(asks)), 30.0, "the requests queued")
        wait_for(lambda: sum(r is not None for r in results) == len(asks) - (queued or len(asks)), 30.0,
                 "the refusals")
    for t in threads:
        t.join(120.0)
    return results


def test_waiting_questions_share_one_call_and_keep_their_answers(model, frames, alone, tmp_path):
    log = tmp_path / "interactions.jsonl"
    session = _session(model, frames, max_batch=8, interaction_log=str(log))
    try:
        before = session.stats().answering
        replies = _ask_together(session, [(q, RequestControl()) for q in QUESTIONS])
        after = session.stats().answering
    finally:
        session.close()
    assert after["batches"] - before["batches"] == 1
    assert after["batched_requests"] - before["batched_requests"] == len(QUESTIONS)
    for q, reply in zip(QUESTIONS, replies):
        assert reply.answer == alone[q][0]
        assert reply.interaction.grounding_score == pytest.approx(alone[q][1], abs=1e-4)
    # one scene prefix for all five questions and their grounding passes (+ the empty scene's)
    assert after["prefix_cache_misses"] - before["prefix_cache_misses"] == 2
    assert 0 < after["prefix_cache_bytes"] <= after["prefix_cache_max_bytes"]
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(r["instruction"] for r in logged) == sorted(QUESTIONS)  # each request logged on its own


def test_max_batch_splits_the_queue(model, frames):
    session = _session(model, frames, max_batch=2)
    try:
        before = session.stats().answering["batches"]
        replies = _ask_together(session, [(q, RequestControl()) for q in QUESTIONS])
        assert session.stats().answering["batches"] - before == 3  # 2 + 2 + 1
    finally:
        session.close()
    assert all(not isinstance(r, str) for r in replies)


def test_cancel_mid_batch_leaves_the_others_alone(model, frames, alone):
    session = _session(model, frames, max_batch=8)
    seen: list[str] = []

    def cancel_on_first_token(state: str, position: int, partial: str) -> None:
        if state == "answering":
            seen.append(partial)
            victim.cancel.set()

    victim = RequestControl(cancel_on_first_token)
    streamed: list[str] = []
    other = RequestControl(lambda state, position, partial: streamed.append(state))
    asks = [(QUESTIONS[0], RequestControl()), (QUESTIONS[1], victim), (QUESTIONS[2], other)]
    try:
        replies = _ask_together(session, asks)
    finally:
        session.close()
    assert replies[1] == "cancelled while answering" and seen
    assert replies[0].answer == alone[QUESTIONS[0]][0] and replies[2].answer == alone[QUESTIONS[2]][0]
    assert streamed.count("answering") >= 1  # per-token feedback reached the other rows too


def test_malformed_request_is_refused_and_the_rest_answered(model, frames, alone):
    session = _session(model, frames, max_batch=8, max_question_chars=100)
    asks = [(QUESTIONS[0], RequestControl()), ("x" * 101, RequestControl()), (QUESTIONS[1], RequestControl())]
    try:
        replies = _ask_together(session, asks, queued=2)
    finally:
        session.close()
    assert "question has 101 characters; the limit is 100" in replies[1]
    assert (replies[0].answer, replies[2].answer) == (alone[QUESTIONS[0]][0], alone[QUESTIONS[1]][0])


def test_requests_with_other_decoding_settings_never_share_a_call():
    calls: list[list[object]] = []

    def run(jobs):
        calls.append([job.group for job in jobs])
        for job in jobs:
            job.result = job.payload

    queue = RequestQueue(max_pending=6, timeout_s=30.0, max_batch=8, run_batch=run)
    results: list[object] = []
    threads = [threading.Thread(target=lambda i=i: results.append(queue.submit(i, RequestControl(), group=i % 2)))
               for i in range(6)]
    try:
        with queue.model_lock:
            for t in threads:
                t.start()
            wait_for(lambda: queue.pending() == 6, 30.0, "six queued requests")
            with pytest.raises(RequestRefused, match="busy: 6 requests"):
                queue.submit(6, RequestControl())
        for t in threads:
            t.join(30.0)
    finally:
        queue.close()
    assert sorted(results) == list(range(6))
    assert sorted(calls) == [[0, 0, 0], [1, 1, 1]]
