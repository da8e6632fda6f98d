"""generate(): all five tasks, beam search with batch > 1 of different scene sizes."""
from __future__ import annotations

import pytest
import torch

from leovl_ros.model.config import GenerationConfig
from leovl_ros.model.prompts import SceneQuery, plan_instruction
from leovl_ros.model.tiny import random_scene, tiny_leovl

SHORT = GenerationConfig(max_new_tokens=4)  # paper beams / penalties, few tokens


@pytest.fixture(scope="module")
def model():
    return tiny_leovl(seed=0)


@pytest.fixture(scope="module")
def scenes(model):
    return [random_scene(model, n, seed=n) for n in (400, 60, 150)]


def _tasks():
    return [
        SceneQuery("object_caption", "Describe the object at the marked spot.", anchor_center=(1.0, 1.0, 0.5)),
        SceneQuery("scene_caption", "Describe this room."),
        SceneQuery("qa", "What is on my left?", situation="I am sitting on the bed facing the door."),
        SceneQuery("plan", plan_instruction("tidy up the desk")),
        SceneQuery("dialogue", "What colour is it?", history=[("Is there a sofa?", "Yes, next to the window.")]),
    ]


def test_batched_beam_search_equals_one_by_one(model, scenes):
    """Batch of 5 with scenes of different sizes (and none) == each alone: padding, the cached
    rope_deltas and the repetition penalty do not leak between rows."""
    batch_scenes = [scenes[0], scenes[1], None, scenes[2], scenes[1]]
    queries = _tasks()
    together = model.generate(batch_scenes, queries, SHORT)
    alone = [model.generate([s], [q], SHORT)[0] for s, q in zip(batch_scenes, queries)]
    assert together == alone
    assert all(isinstance(t, str) and t for t in together)
    # and again in another order / batch size (stale per-batch state would show here)
    assert model.generate(batch_scenes[::-1][:3], queries[::-1][:3], SHORT) == alone[::-1][:3]


def test_paper_defaults_and_overrides(model, scenes):
    g = model.config.generation
    assert (g.num_beams, g.max_new_tokens, g.repetition_penalty, g.length_penalty) == (5, 256, 3.0, 1.0)
    q = _tasks()[1]
    tokens = model.tokenizer.encode(model.generate([scenes[0]], [q], GenerationConfig(max_new_tokens=3))[0])
    assert 0 < len(tokens) <= 3
    # one greedy step is the argmax of the model's own next-token logits
    with torch.no_grad():
        first = int(model.logits(model.prepare_batch([scenes[0]], [q]), logits_to_keep=1)[0, -1].argmax())
    out = model.generate([scenes[0]], [q], GenerationConfig(num_beams=1, repetition_penalty=1.0, max_new_tokens=1))
    assert out == [model.tokenizer.decode([first], skip_special_tokens=True).strip()]


def test_repetition_penalty_reaches_padded_rows(model, scenes):
    """A strong penalty forbids any repeated token in every row, padded ones included."""
    cfg = GenerationConfig(num_beams=1, repetition_penalty=1e4, max_new_tokens=10)
    outs = model.generate([scenes[0], None], [_tasks()[1]] * 2, cfg)
    for text in outs:
        ids = model.tokenizer.encode(text)
        assert len(ids) == len(set(ids)), text


def test_bad_generation_settings():
    with pytest.raises(ValueError, match="num_beams"):
        GenerationConfig(num_beams=0)
    with pytest.raises(ValueError, match="repetition_penalty"):
        GenerationConfig(repetition_penalty=0.0)
