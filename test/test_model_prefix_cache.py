"""The scene prefix computed once: answers and scores from cached prefixes equal uncached ones."""
from __future__ import annotations

import gc

import pytest
import torch

from leovl_ros.model.config import GenerationConfig
from leovl_ros.model.prompts import SceneQuery
from leovl_ros.model.tiny import random_scene, tiny_leovl

GREEDY = GenerationConfig(num_beams=1, max_new_tokens=12)
BEAM5 = GenerationConfig(num_beams=5, max_new_tokens=6)


@pytest.fixture(scope="module")
def model():
    m = tiny_leovl(seed=0)
    yield m
    m.prefix_cache.max_bytes = 0


@pytest.fixture(scope="module")
def scenes(model):
    return [random_scene(model, n, seed=n) for n in (400, 150)]


def _queries():
    return [SceneQuery("qa", "What is on my left?", situation="I face the door."),
            SceneQuery("scene_caption", "Describe this room."),
            SceneQuery("object_caption", "Describe the object here.", anchor_center=(1.0, 1.0, 0.5)),
            SceneQuery("dialogue", "And its colour?", history=[("Is there a sofa?", "Yes, by the window.")])]


def _both(model, fn):
    """fn() without, then with the prefix cache (a fresh one each time)."""
    model.prefix_cache.max_bytes = 0
    model.prefix_cache.clear()
    plain = fn()
    model.prefix_cache.max_bytes = 64 * 2**20
    try:
        return plain, fn()
    finally:
        model.prefix_cache.max_bytes = 0
        model.prefix_cache.clear()


@pytest.mark.parametrize("gen", [GREEDY, BEAM5], ids=["greedy", "beam5"])
def test_cached_answers_equal_uncached(model, scenes, gen):
    """A mixed batch (two scenes, a region, a dialogue; several rows per prefix, suffixes of
    different lengths) gives the same tokens as the plain left-padded batch and as each alone."""
    batch_scenes = [scenes[0], scenes[0], scenes[0], scenes[1], scenes[0]]
    queries = _queries() + [SceneQuery("qa", "How many chairs are there around the big table?")]
    plain, cached = _both(model, lambda: model.generate(batch_scenes, queries, gen))
    assert cached == plain
    alone, cached_alone = _both(model, lambda: [model.generate([s], [q], gen)[0]
                                                for s, q in zip(batch_scenes, queries)])
    assert cached_alone == alone == plain
    assert len(set(plain)) > 1  # the rows really differ: a row mix-up would show


def test_cached_scores_within_1e4(model, scenes):
    batch_scenes = [scenes[0], None, scenes[0], scenes[1]]
    queries = _queries()
    answers = ["a chair", "a big grey sofa next to the window", "it is red", "nothing"]
    plain, cached = _both(model, lambda: model.score(batch_scenes, queries, answers))
    assert torch.allclose(cached, plain, atol=1e-4, rtol=0)
    g_plain, g_cached = _both(model, lambda: model.grounding_score(scenes[0], queries[0], "a chair"))
    assert abs(g_plain - g_cached) < 1e-4


def test_prefix_reused_bounded_and_dropped(model, scenes):
    cache = model.prefix_cache
    cache.max_bytes = 64 * 2**20
    try:
        q = SceneQuery("qa", "What is here?")
        cache.clear()
        before = cache.stats()
        model.generate([scenes[0]], [q], GREEDY)
        model.grounding_score(scenes[0], q, "a chair")  # scene prefix reused; the empty scene's is new
        s = cache.stats()
        assert (s.entries, s.hits - before.hits, s.misses - before.misses) == (2, 1, 2)
        one = s.bytes
        # a budget below two scenes' prefixes keeps the most recent only
        cache.clear()
        cache.max_bytes = one  # scene + empty-scene prefix of scenes[0]
        model.grounding_score(scenes[1], q, "a chair")
        model.grounding_score(scenes[0], q, "a chair")
        s = cache.stats()
        assert s.bytes <= one and s.evictions >= 1
        # a freed snapshot's prefix is dropped on the next miss (the map changed)
        temp = random_scene(model, 50, seed=9)
        model.generate([temp], [q], GREEDY)
        del temp
        gc.collect()
        cache.max_bytes = 64 * 2**20
        model.generate([scenes[1]], [q], GREEDY)
        assert all(ref is None or ref() is not None for ref, _ in cache._entries.values())
    finally:
        cache.max_bytes = 0
        cache.clear()


def test_load_bundle_drops_prefixes(model, scenes, tmp_path):
    model.prefix_cache.max_bytes = 64 * 2**20
    try:
        model.generate([scenes[0]], [SceneQuery("qa", "What is here?")], GREEDY)
        model.save_bundle(tmp_path / "b")
        assert model.prefix_cache.stats().entries == 1
        model.load_bundle(tmp_path / "b")
        assert model.prefix_cache.stats().entries == 0
    finally:
        model.prefix_cache.max_bytes = 0
        model.prefix_cache.clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench.gpu runs it)")
def test_cached_answers_equal_uncached_on_the_gpu():
    gpu = tiny_leovl(seed=0)
    gpu.model.to("cuda")
    gpu.heads.to("cuda")
    scene = random_scene(gpu, 400, seed=1)
    queries = _queries()[:2]
    for gen in (GREEDY, BEAM5):
        plain, cached = _both(gpu, lambda: gpu.generate([scene, scene], queries, gen))
        assert cached == plain
    plain, cached = _both(gpu, lambda: gpu.score([scene, None], queries, ["a chair", "a sofa"]))
    assert torch.allclose(cached, plain, atol=1e-4, rtol=0)
