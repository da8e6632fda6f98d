"""A top-down picture of a scene's CFG: occupied columns, the columns kept as tokens, the camera
path, an anchor and, for an answer, where it came from (``leovl-scene show [--question]``).

One square of ``cell_px`` pixels per voxel column, x to the right and y up (the map frame seen
from above), a margin of ``PAD`` pixels and a legend strip of ``LEGEND_PX`` at the bottom. Kept
columns are shaded by how many voxels they pool (darker = taller / denser), so walls and
furniture stand out from the floor; columns merged with others into one coarse token
(``coarsen``, ``question``) are grey-blue. An answer's grounding (model/grounding.py) is a heat layer
over them: yellow to red by the column's weight relative to the heaviest, the heaviest ringed.
Pure Pillow: no plotting library.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .camera_path import CameraPath
from .condensed_grid import GridConfig, focus_point, voxel_tokens
from .token_selection import QUESTION_SHARE, QuestionKey
from .voxel_map import VoxelMap

__all__ = ["COLOURS", "LEGEND_PX", "PAD", "SceneLayout", "draw_scene", "scene_layout"]

PAD = 12  # px around the map
LEGEND_PX = 22  # px of the legend strip under the map
COLOURS = {
    "empty": (255, 255, 255),
    "dropped": (205, 205, 205),  # occupied column the CFG leaves out (past max_tokens)
    "kept_light": (160, 200, 240),  # kept column pooling one voxel ...
    "kept_dark": (20, 60, 160),  # ... up to the densest column
    "merged": (185, 200, 220),  # kept, merged with other columns into one coarse token (coarsen, question)
    "path": (220, 30, 30),
    "start": (30, 160, 60),
    "anchor": (245, 140, 0),
    "heat_low": (255, 225, 0),  # a column with a small share of the answer's weight ...
    "heat_high": (215, 0, 0),  # ... up to the heaviest
    "text": (40, 40, 40),
}


@dataclass
class SceneLayout:
    """Where the map's columns land in the picture."""

    x0: int  # column index of the leftmost drawn column
    y1: int  # column index of the topmost drawn row (largest y)
    nx: int  # columns drawn across
    ny: int  # columns drawn down
    cell_px: int
    voxel_size: float

    @property
    def size(self) -> tuple[int, int]:
        return self.nx * self.cell_px + 2 * PAD, self.ny * self.cell_px + 2 * PAD + LEGEND_PX

    def cell_box(self, cx: int, cy: int) -> tuple[int, int, int, int]:
        """Pixel box (left, top, right, bottom; inclusive) of column (cx, cy)."""
        left, top = PAD + (cx - self.x0) * self.cell_px, PAD + (self.y1 - cy) * self.cell_px
        return left, top, left + self.cell_px - 1, top + self.cell_px - 1

    def point(self, x: float, y: float) -> tuple[float, float]:
        """Pixel of a map point (metres)."""
        return (PAD + (x / self.voxel_size - self.x0) * self.cell_px,
                PAD + (self.y1 + 1 - y / self.voxel_size) * self.cell_px)


def scene_layout(vmap: VoxelMap, cell_px: int, path: np.ndarray | None = None,
                 anchor: Sequence[float] | None = None, anchor_radius: float = 0.0) -> SceneLayout:
    """The drawn extent: every occupied column, the camera path and the anchor circle."""
    vs = vmap.voxel_size
    cols = vmap.coords[:, :2].numpy()
    extra = [] if path is None or not len(path) else [np.floor(path[:, :2] / vs).astype(np.int64)]
    if anchor is not None:
        a = np.asarray(anchor[:2], dtype=np.float64)
        extra.append(np.floor(np.stack([a - anchor_radius, a + anchor_radius]) / vs).astype(np.int64))
    allcols = np.concatenate([cols.reshape(-1, 2), *extra]) if extra or len(cols) else np.zeros((1, 2), np.int64)
    lo, hi = allcols.min(0), allcols.max(0)
    return SceneLayout(int(lo[0]), int(hi[1]), int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1), cell_px, vs)


def draw_scene(vmap: VoxelMap, max_tokens: int = 750, cell_px: int = 0, anchor: Sequence[float] | None = None,
               anchor_radius: float = 0.5, token_selection: str = "densest", grounding=None,
               question: torch.Tensor | QuestionKey | None = None,
               question_share: float = QUESTION_SHARE) -> tuple[Image.Image, dict[str, int]]:
    """The picture and what it shows: voxels, columns, tokens, path points.

    ``cell_px`` 0 picks a size that makes the map about 800 px across (2..16 px per column).
    Kept columns are those whose voxels reach a token under ``max_tokens`` and ``token_selection``
    (cfg.voxel_tokens: with ``coarsen`` every column is kept, merged into fewer tokens), centred
    like the node's on the anchor (``anchor``) or the map's last viewpoint (``nearest``), or by
    ``question`` (its token embeddings or scorer key, ``question_share`` of the tokens single
    columns: the model's ``grid.question_share``) under ``question``. ``grounding`` (a model.grounding.Grounding)
    adds the heat layer (none when it is flat: the legend says so).
    """
    if vmap.num_voxels == 0:
        raise ValueError("the scene has no voxels: nothing to draw")
    path = CameraPath.from_metadata(vmap.metadata).points
    if cell_px <= 0:
        probe = scene_layout(vmap, 1, path, anchor, anchor_radius)
        cell_px = int(np.clip(800 // max(probe.nx, probe.ny), 2, 16))
    layout = scene_layout(vmap, cell_px, path, anchor, anchor_radius)
    image = Image.new("RGB", layout.size, COLOURS["empty"])
    draw = ImageDraw.Draw(image)

    cols, inverse, per_col = torch.unique(vmap.coords[:, :2].cpu(), dim=0, return_inverse=True, return_counts=True)
    # pos_z only matters to the question's relevance (RoPE'd column means, as the model sees them)
    config = GridConfig(max_tokens=max_tokens, pos_z="none" if question is None else "rope",
                        token_selection=token_selection, question_share=question_share)
    token, xy, _ = voxel_tokens(vmap, config, focus_point(vmap, config, anchor), question,
                                (anchor, anchor_radius, None))
    col_token = torch.full((len(cols),), -1, dtype=torch.int64).scatter_(0, inverse, token.cpu())
    kept_col = col_token >= 0
    shared = torch.bincount(col_token[kept_col], minlength=int(xy.shape[0]))[col_token.clamp(min=0)] > 1
    merged_col = kept_col & shared
    tokens = int(xy.shape[0])
    densest = int(per_col.max())
    light, dark = np.asarray(COLOURS["kept_light"]), np.asarray(COLOURS["kept_dark"])
    for (cx, cy), n, kept, merged in zip(cols.tolist(), per_col.tolist(), kept_col.tolist(), merged_col.tolist()):
        if merged:
            colour = COLOURS["merged"]
        elif kept:
            t = 0.0 if densest == 1 else (n - 1) / (densest - 1)
            colour = tuple(int(v) for v in np.round(light + t * (dark - light)))
        else:
            colour = COLOURS["dropped"]
        draw.rectangle(layout.cell_box(cx, cy), fill=colour)
    heat = grounding is not None and not grounding.flat and grounding.weight.numel() > 0
    if heat:
        _heat(draw, layout, grounding)

    if anchor is not None:
        ax, ay = layout.point(anchor[0], anchor[1])
        r = anchor_radius / vmap.voxel_size * cell_px
        draw.ellipse((ax - r, ay - r, ax + r, ay + r), outline=COLOURS["anchor"], width=2)
        draw.line((ax - 4, ay, ax + 4, ay), fill=COLOURS["anchor"], width=2)
        draw.line((ax, ay - 4, ax, ay + 4), fill=COLOURS["anchor"], width=2)
    if len(path):
        pts = [layout.point(x, y) for x, y in path[:, :2]]
        if len(pts) > 1:
            draw.line(pts, fill=COLOURS["path"], width=2, joint="curve")
        for (px, py), colour in ((pts[0], COLOURS["start"]), (pts[-1], COLOURS["path"])):
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)

    extra = [] if grounding is None else [("heat_high", "answer came from" if heat else "grounding flat")]
    _legend(draw, layout, tokens, extra)
    return image, {"voxels": vmap.num_voxels, "columns": len(cols), "tokens": tokens, "path_points": len(path)}


def _heat(draw: ImageDraw.ImageDraw, layout: SceneLayout, grounding) -> None:
    """Columns with at least 2 % of the heaviest column's weight, blended over the map by weight."""
    w = grounding.weight.numpy()
    t = w / w.max()
    low, high = np.asarray(COLOURS["heat_low"]), np.asarray(COLOURS["heat_high"])
    cells = np.floor(grounding.xyz[:, :2].numpy() / layout.voxel_size).astype(np.int64)
    for i in np.argsort(t):  # heaviest drawn last
        if t[i] < 0.02:
            continue
        draw.rectangle(layout.cell_box(*cells[i]), fill=tuple(int(v) for v in np.round(low + t[i] * (high - low))))
    left, top, right, bottom = layout.cell_box(*cells[int(np.argmax(t))])
    r = 2 * layout.cell_px
    draw.ellipse((left - r, top - r, right + r, bottom + r), outline=COLOURS["heat_high"], width=2)


def _legend(draw: ImageDraw.ImageDraw, layout: SceneLayout, tokens: int, extra: list[tuple[str, str]]) -> None:
    font = ImageFont.load_default()
    y = layout.size[1] - LEGEND_PX + 6
    x = PAD
    for key, label in [("kept_dark", f"{tokens} tokens"), ("merged", "merged"), ("dropped", "not kept"),
                       ("path", "camera"), ("anchor", "anchor"), *extra]:
        draw.rectangle((x, y, x + 9, y + 9), fill=COLOURS[key])
        draw.text((x + 13, y - 1), label, fill=COLOURS["text"], font=font)
        x += 18 + int(draw.textlength(label, font=font)) + 10
    metre = layout.cell_px / layout.voxel_size  # px per metre
    if x + metre + 30 < layout.size[0]:
        draw.line((x, y + 5, x + metre, y + 5), fill=COLOURS["text"], width=2)
        draw.text((x + metre + 4, y - 1), "1 m", fill=COLOURS["text"], font=font)
