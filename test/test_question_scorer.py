"""The learned question scorer: it learns which columns a question names where the raw word
embeddings cannot tell, is saved with the bundle, and stays out of the answer loss."""
from __future__ import annotations

import pytest
import torch

from leovl_ros.condensed_grid import GridConfig
from leovl_ros.model.config import ConfigOverrides
from leovl_ros.model.prompts import SceneQuery
from leovl_ros.model.tiny import tiny_leovl
from leovl_ros.synth.floors import FloorConfig, generate_floor
from leovl_ros.synth.text import a
from leovl_ros.token_selection import QuestionKey
from leovl_ros.training.question_scorer import TEMPLATES, ReferredObject, SceneColumns, column_recall, \
    floor_columns, main, train_question_reranker, train_question_scorer

WORDS = ("mug", "sofa", "lamp", "bowl", "laptop", "vase", "pillow", "stool")
D = 32


def _floors(n: int, seed: int) -> list[SceneColumns]:
    """Maps the test lays out itself: 400 columns of clutter; each category on 2 columns whose
    features are its own visual direction (unrelated to its word embedding: the words alone
    cannot find it) diluted by the desk it stands on."""
    g = torch.Generator().manual_seed(1234)
    looks = {w: torch.randn(D, generator=g) for w in WORDS}  # the same "appearance" on every floor
    desk = torch.randn(D, generator=g)
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        feats = torch.randn(400, D, generator=rng) * 0.5 + desk * 0.5 * (torch.rand(400, 1, generator=rng) < 0.3)
        place = torch.randperm(400, generator=rng)
        objects = []
        for i, w in enumerate(WORDS):
            mask = torch.zeros(400, dtype=torch.bool)
            mask[place[2 * i: 2 * i + 2]] = True
            feats[mask] = 0.4 * looks[w] + 0.6 * desk + 0.2 * torch.randn(2, D, generator=rng)
            objects.append(ReferredObject(tuple(t.format(c=w, ac=a(w), r="kitchen") for t in TEMPLATES), mask, w))
        out.append(SceneColumns("test", torch.stack([torch.arange(400) // 20, torch.arange(400) % 20], 1), feats,
                                torch.full((400,), 5), objects))
    return out


def test_the_scorer_learns_which_columns_a_question_names_on_maps_it_never_saw():
    model = tiny_leovl(hidden_size=D, grid=GridConfig(max_tokens=16, token_selection="question"))
    train, held_out = _floors(12, seed=0), _floors(4, seed=99)
    words = column_recall(model, held_out, keep=8)
    model.add_question_scorer(D)
    losses = train_question_scorer(model, train, steps=250, lr=1e-2, progress=False)
    learned = column_recall(model, held_out, keep=8)
    # chance: 8 of 400 columns hold one of the object's 2 columns ~4 %
    assert words["recall"] < 0.3 and learned["recall"] > 0.8, (words, learned)
    assert sum(losses[-20:]) < sum(losses[:20])
    # The model's own selection now keeps the asked object's columns (token_selection path).
    vmap = model.new_voxel_map()
    vmap.track_columns(rope=False)
    floor = held_out[0]
    xy = torch.stack([torch.arange(400) // 20, torch.arange(400) % 20], 1).float() * vmap.voxel_size
    vmap.fuse(torch.cat([xy + vmap.voxel_size / 2, torch.full((400, 1), 0.1)], 1), floor.features)
    kept = 0
    for word, mask in ((o.category, o.mask) for o in floor.objects):
        grid = model.scene_grid(vmap, SceneQuery("qa", f"What colour is the {word}?"))
        centres = (xy[mask] + vmap.voxel_size / 2)
        single = grid.voxel_count == 1
        kept += any(bool(((grid.xy[single] - c).abs() < 1e-4).all(1).any()) for c in centres)
    assert kept >= 6, kept


def _context_floors(n: int, seed: int) -> list[SceneColumns]:
    """Maps where what a column shows cannot tell the object: each category twice with the same
    look, once on a desk (its 8 neighbours are desk) and once as a decoy amid clutter; only
    the one on the desk is the object asked about (as a mug on a desk beside a mug-coloured
    patch of carpet): its surroundings tell it."""
    g = torch.Generator().manual_seed(1234)
    looks = {w: torch.randn(D, generator=g) for w in WORDS}
    desk = torch.randn(D, generator=g)
    rng = torch.Generator().manual_seed(seed)
    cols = torch.stack([torch.arange(400) // 20, torch.arange(400) % 20], 1)
    slots = [(3 * i + 1) * 20 + 3 * j + 1 for i in range(6) for j in range(6)]  # centres of disjoint 3x3 blocks
    out = []
    for _ in range(n):
        feats = torch.randn(400, D, generator=rng) * 0.5
        place = [slots[i] for i in torch.randperm(36, generator=rng)[:2 * len(WORDS)]]
        objects = []
        for i, w in enumerate(WORDS):
            on_desk, decoy = place[2 * i], place[2 * i + 1]
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    feats[on_desk + 20 * dx + dy] = desk + 0.2 * torch.randn(D, generator=rng)
            for c in (on_desk, decoy):
                feats[c] = looks[w] + 0.2 * torch.randn(D, generator=rng)
            mask = torch.zeros(400, dtype=torch.bool)
            mask[on_desk] = True
            objects.append(ReferredObject(tuple(t.format(c=w, ac=a(w), r="kitchen") for t in TEMPLATES), mask, w))
        out.append(SceneColumns("test", cols, feats, torch.full((400,), 5), objects))
    return out


def test_the_reranker_tells_look_alikes_apart_by_what_surrounds_them():
    model = tiny_leovl(hidden_size=D, grid=GridConfig(max_tokens=16, token_selection="question"))
    train, held_out = _context_floors(12, seed=0), _context_floors(8, seed=99)
    model.add_question_scorer(D, rerank_hidden=32)
    train_question_scorer(model, train, steps=250, lr=1e-2, progress=False)
    keyed = column_recall(model, held_out, keep=2)
    losses = train_question_reranker(model, train, steps=300, lr=3e-3, progress=False)
    reranked = column_recall(model, held_out, keep=2)
    # The key finds the look (object or decoy: a coin toss between the two) but cannot see the desk.
    assert keyed["recall"] > 0.8 and keyed["first"] < 0.7, keyed
    assert reranked["first"] > 0.9, reranked
    assert sum(losses[-20:]) < sum(losses[:20])
    # The model's own selection now keeps the object on the desk, not its decoy (token_selection path).
    vmap = model.new_voxel_map()
    vmap.track_columns(rope=False)
    floor = held_out[0]
    xy = floor.cols.float() * vmap.voxel_size
    vmap.fuse(torch.cat([xy + vmap.voxel_size / 2, torch.full((400, 1), 0.1)], 1), floor.features)
    model.set_overrides(ConfigOverrides(grid={"question_share": 1 / 16}))  # one single column: the best
    kept = 0
    for word, mask in ((o.category, o.mask) for o in floor.objects):
        grid = model.scene_grid(vmap, SceneQuery("qa", f"What colour is the {word}?"))
        single = grid.xy[grid.voxel_count == 1]
        kept += bool(((single - (xy[mask] + vmap.voxel_size / 2)).abs() < 1e-4).all(1).any())
    assert kept >= 7, kept


def test_a_bundle_keeps_its_scorer_and_one_without_selects_by_words(tmp_path):
    model = tiny_leovl(hidden_size=D, grid=GridConfig(max_tokens=16, token_selection="question"))
    query = SceneQuery("qa", "What colour is the mug?")
    assert model.question_embeddings(query).shape[0] > 1  # no scorer: one row per question token
    model.add_question_scorer(8, seed=5)
    with torch.no_grad():
        model.heads.question_scorer.down.normal_()  # as if trained: W != I
    key = model.question_embeddings(query)
    model.save_bundle(tmp_path / "b")
    model2 = tiny_leovl(hidden_size=D, grid=GridConfig(max_tokens=16, token_selection="question"))
    model2.load_bundle(tmp_path / "b")
    assert model2.config.question_scorer_rank == 8
    assert torch.allclose(model2.question_embeddings(query), key)
    assert not isinstance(key, QuestionKey) and model2.config.question_rerank_hidden == 0
    model.add_question_scorer(8, seed=5)
    fresh = model.question_embeddings(query)
    model.add_question_scorer(8, seed=5, rerank_hidden=16)
    assert torch.equal(model.question_embeddings(query).key, fresh)  # same seed, same key, reranker or not
    with torch.no_grad():
        model.heads.question_scorer.rerank_out.weight.normal_()  # as if trained: the reranker matters
    model.save_bundle(tmp_path / "r")
    model2.load_bundle(tmp_path / "r")
    got = model2.question_embeddings(query)
    assert isinstance(got, QuestionKey) and model2.config.question_rerank_hidden == 16
    assert torch.allclose(got.key, fresh)
    f, ring, rel, n = torch.randn(5, D), torch.randn(5, D), torch.randn(5), torch.arange(1, 6)
    assert torch.allclose(got.rerank(got.key, f, ring, rel, n), model.heads.question_scorer.rerank(got.key, f, ring, rel, n))
    model3 = tiny_leovl(hidden_size=D, grid=GridConfig(max_tokens=16, token_selection="question"))
    model3.save_bundle(tmp_path / "plain")
    model2.load_bundle(tmp_path / "plain")  # a swap to a bundle without a scorer drops it
    assert model2.heads.question_scorer is None and model2.question_embeddings(query).shape[0] > 1


def test_the_answer_loss_does_not_train_the_scorer():
    model = tiny_leovl(hidden_size=D)
    model.add_question_scorer(4)
    for mode in ("adapter", "full"):
        model.set_trainable(mode)
        trainable = {id(p) for p in model.trainable_parameters()}
        assert not any(id(p) in trainable for p in model.heads.question_scorer.parameters())
        assert id(model.heads.anchor) in trainable


def test_floor_columns_mark_each_object_where_its_box_stands():
    model = tiny_leovl(hidden_size=D)
    config = FloorConfig(rooms=(3, 3))
    floor = generate_floor(5, config)
    got = floor_columns(model, 5, None, config, frames_per_room=3, size=(160, 120))
    assert got.features.shape == (got.counts.numel(), D) and got.cols.shape == (got.counts.numel(), 2)
    assert len(got.objects) > len(floor.objects) // 2  # most objects are seen along the route
    v = model.config.voxel_size
    centres = (got.cols.float() + 0.5) * v
    for _, mask, category, room in got.objects:
        # Truth from the scene graph: every marked column's centre is within one column of a box
        # of that category in that room (a voxel counts when its centre is within half a voxel).
        boxes = [(torch.tensor(o.min[:2]), torch.tensor(o.max[:2])) for o in floor.objects
                 if o.category == category and floor.room_of[o.id] == room]
        near = torch.zeros_like(mask)
        for lo, hi in boxes:
            near |= ((centres >= lo - v) & (centres <= hi + v)).all(1)
        assert mask.any() and bool(near[mask].all()), category
    assert sum(int(o.mask.sum()) for o in got.objects) < got.counts.numel()  # walls and floor are no object


def test_the_command_line_refuses_overlapping_or_empty_seed_ranges(capsys):
    assert main(["--model", "unused", "--out", "unused", "--floors", "0:4", "--eval-floors", "3:5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlap" in err[0]
    assert main(["--model", "unused", "--out", "unused", "--floors", "4:4"]) == 2
    assert "empty" in capsys.readouterr().err


@pytest.mark.parametrize("rank", [0, D + 1])
def test_a_rank_outside_one_to_the_hidden_size_is_refused(rank):
    model = tiny_leovl(hidden_size=D)
    with pytest.raises(ValueError, match="question_scorer_rank"):
        model.add_question_scorer(rank)
    with pytest.raises(ValueError, match="question_rerank_hidden"):
        model.add_question_scorer(4, rerank_hidden=-1)
    assert model.heads.question_scorer is None and model.config.question_scorer_rank is None


def test_the_scorer_brings_its_share_of_single_columns_to_the_bundle(tmp_path):
    g = torch.Generator().manual_seed(0)
    cols = torch.stack(torch.meshgrid(torch.arange(40), torch.arange(30), indexing="ij"), -1).reshape(-1, 2)
    counts = torch.randint(1, 10, (cols.shape[0],), generator=g)
    relevance = torch.randn(cols.shape[0], generator=g)
    from leovl_ros.token_selection import select_tokens

    for share, single in ((0.75, 48), (1 / 16, 4)):
        col_token, _, _ = select_tokens(cols, counts, 64, "question", 0.3, None, relevance, share)
        per_token = torch.bincount(col_token)
        top = torch.topk(relevance, single).indices
        assert bool((per_token[col_token[top]] == 1).all())  # the `single` most relevant: a token each
        top48 = torch.topk(relevance, 48).indices
        assert (int((per_token[col_token[top48]] == 1).sum()) == 48) == (share == 0.75)  # 1/16: the rest coarse
    model = tiny_leovl(hidden_size=D, grid=GridConfig(max_tokens=16, token_selection="question"))
    model.add_question_scorer(4, question_share=1 / 16)
    model.save_bundle(tmp_path / "b")
    other = tiny_leovl(hidden_size=D)
    other.load_bundle(tmp_path / "b")
    assert other.config.grid.question_share == 1 / 16
    with pytest.raises(ValueError, match="question_share"):
        GridConfig(question_share=0.0)


def _referring_records(seeds, far: bool = False):
    """ScanRefer-like records the test writes from the rooms' own scene graphs: each object's
    box as the anchor, a sentence naming it as the caption."""
    from leovl_ros.synth.rooms import generate_room
    from leovl_ros.training.records import Anchor, Record

    out = []
    for seed in seeds:
        for o in generate_room(seed).objects:
            out.append(Record(f"synth_{seed}", "object_caption", "Describe this object.",
                              f"the {o.colour} {o.category}", "scanrefer",
                              anchor=Anchor(tuple(float(v) for v in o.center), None, tuple(float(v) for v in o.size))))
    if far:  # a box no voxel of the map is in
        out.append(Record(f"synth_{seeds[0]}", "object_caption", "Describe this object.", "a ghost", "scanrefer",
                          anchor=Anchor((40.0, 40.0, 1.0), None, (0.5, 0.5, 0.5))))
    return out


def test_records_mark_the_columns_of_their_referred_box(tmp_path):
    from leovl_ros.synth.rooms import generate_room
    from leovl_ros.training.question_scorer import record_columns
    from leovl_ros.training.scenes import SceneStore, ScenesConfig

    model = tiny_leovl(hidden_size=D)
    store = SceneStore(model, ScenesConfig(cache_dir=str(tmp_path), synthetic_frames=3, synthetic_width=160,
                                           synthetic_height=120))
    records = _referring_records([3], far=True)
    scenes, empty = record_columns(model, store, records, progress=False)
    assert len(scenes) == 1 and empty >= 1  # the ghost (and any object the 3 frames missed) is skipped
    scene, v = scenes[0], model.config.voxel_size
    assert scene.scene_id == "synth_3" and len(scene.objects) == len(records) - empty
    assert {o.texts for o in scene.objects} <= {(r.response,) for r in records}
    centres = (scene.cols.float() + 0.5) * v
    boxes = {f"the {o.colour} {o.category}": o for o in generate_room(3).objects}
    for texts, mask, *_ in scene.objects:
        o = boxes[texts[0]]  # truth: the room generator's box, not the anchor the code read
        near = ((centres >= torch.tensor(o.min[:2]) - v) & (centres <= torch.tensor(o.max[:2]) + v)).all(1)
        assert mask.any() and bool(near[mask].all()), texts


def test_the_command_line_trains_from_records_with_the_config_scenes(tmp_path, capsys):
    from leovl_ros.model.leovl import LeoVL
    from leovl_ros.training.records import write_records

    model = tiny_leovl(hidden_size=D)
    model.set_trainable("full")  # a bundle that holds its weights: no base to find
    model.save_bundle(tmp_path / "start")
    write_records(tmp_path / "train.jsonl", _referring_records([3, 4]))
    write_records(tmp_path / "eval.jsonl", _referring_records([5]))
    (tmp_path / "recipe.yaml").write_text(
        f"output_dir: {tmp_path / 'unused'}\nmodel: {{base: unused}}\nscenes: {{cache_dir: {tmp_path / 'scenes'}, "
        "synthetic_frames: 3, synthetic_width: 160, synthetic_height: 120}\n")
    args = ["--model", str(tmp_path / "start"), "--out", str(tmp_path / "out"),
            "--records", str(tmp_path / "train.jsonl"), "--eval-records", str(tmp_path / "eval.jsonl"),
            "--config", str(tmp_path / "recipe.yaml"), "--steps", "30", "--rerank-steps", "20"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "2 scenes" in out and "held-out records" in out
    trained = LeoVL.from_pretrained(tmp_path / "out")
    assert trained.heads.question_scorer is not None and trained.config.question_rerank_hidden == 64
    assert len(list((tmp_path / "scenes").iterdir())) == 3  # the maps came from the config's scene store
    # --eval-records without --records is refused in one line before anything loads
    capsys.readouterr()
    assert main(["--model", "unused", "--out", "unused", "--eval-records", "x.jsonl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--records" in err[0]
