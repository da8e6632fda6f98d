"""Object maps: a synthetic room written as a voxel map in the LLM's own word space.

The first SFT stage of ``leovl-tiny`` (``scenes.source: objects``) trains on these instead of
the rendered frames' maps. Each object of the room's scene graph becomes one voxel at its box
centre whose feature is the unit sum of the input embeddings of its category word and its
colour word, e.g. ``normalize(E[" laptop"] + E[" red"])``.

Why: a from-scratch LLM has to discover the lookup "the token that points at the word in the
question -> the colour it carries" before it can answer anything about a scene, and that
discovery is a sudden phase change whose onset grows with the number of tokens it has to
search. On 2 CPU cores it does not happen among the ~250 CFG tokens of a rendered room
(most of them floor and wall) but does among a room's ~15 objects within a few hundred steps,
and the circuit, once there, carries over to the full grid (bench/scene_readout.py measures
both). The vision tower's output is aligned with the same word embeddings (see
vision_pretrain.py), so a real map's object columns point in the directions the object map
taught; the second SFT stage trains on real maps only.
"""
from __future__ import annotations

import numpy as np
import torch

from leovl_ros.voxel_map import VoxelMap


def word_vector(model, word: str) -> torch.Tensor:
    """(d,) float32 input embedding of ``word`` written with a leading space; the mean of its
    tokens' for a word of several (" armchair" is " arm" + "chair")."""
    ids = model.tokenizer.encode(" " + word, add_special_tokens=False)
    return model.model.get_input_embeddings().weight[ids].detach().float().mean(0)


def object_map_recipe(model, floor: bool) -> str:
    """Cache recipe: the maps depend on the class words' embeddings, not on the vision tower."""
    from leovl_ros.model.encoder import weights_fingerprint
    from leovl_ros.synth.catalog import CATEGORY_NAMES, COLOURS

    words = torch.stack([word_vector(model, w) for w in (*CATEGORY_NAMES, *COLOURS)])
    return f"objects:v1:floor={floor}:{weights_fingerprint(words)}"


@torch.no_grad()
def object_map(seed: int, model, floor: bool = False) -> VoxelMap:
    """The voxel map of synthetic room ``seed`` with one word-space voxel per object; with
    ``floor`` also a zero-feature voxel on the floor of every column of the room, so that the
    grid has as many tokens as a real room's, most of them "nothing here" (a calibrated
    tower's floor is the zero vector too)."""
    from leovl_ros.synth.rooms import generate_room

    room = generate_room(seed)
    vmap = model.new_voxel_map()
    if room.objects:
        centres = torch.from_numpy(np.stack([o.center for o in room.objects])).float()  # (N, 3) metres
        feats = torch.stack([word_vector(model, o.category) + word_vector(model, o.colour) for o in room.objects])
        vmap.fuse(centres, torch.nn.functional.normalize(feats, dim=1))  # (N, d)
    if floor:
        v = vmap.voxel_size
        xs = np.arange(np.floor(-room.width / 2 / v), np.ceil(room.width / 2 / v)) * v + v / 2
        ys = np.arange(np.floor(-room.depth / 2 / v), np.ceil(room.depth / 2 / v)) * v + v / 2
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        pts = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, v / 2)], 1)  # (C, 3) metres: floor voxels
        vmap.fuse(torch.from_numpy(pts).float(), torch.zeros(len(pts), vmap.feature_dim))
    return vmap
