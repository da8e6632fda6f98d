"""2D perception: the Qwen2.5-VL vision tower of the loaded checkpoint as a per-cell encoder.

An RGB image of any size is resized to multiples of 28 px (``smart_resize``: aspect kept,
pixel count in [min_pixels, max_pixels]), normalised and patchified exactly as Qwen's own
image processor does (we use transformers' PIL backend, so torchvision is not needed),
then run through ``model.model.visual``. The 2x2 patch merger gives one d-dim vector per
28 x 28 px cell (d = LLM hidden size), in row-major order of the (h, w) cell grid: the
scene core back-projects one 3D point per cell.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

CELL_PX = 28  # patch 14 x merge 2


@dataclass
class EncodedImage:
    features: torch.Tensor  # (h*w, d) float32 on CPU, row-major over the cell grid
    grid_hw: tuple[int, int]  # (h, w) cells; cell (i, j) covers rows/cols of the resized image
    resized_hw: tuple[int, int]  # (H', W') pixels the image was resized to (= 28 * grid_hw)


def weights_fingerprint(*tensors: torch.Tensor, n: int = 4096) -> str:
    """Short hash of the first ``n`` values of each tensor, rounded to bf16.

    Rounding makes a checkpoint loaded in float32 and in bfloat16 hash alike, while
    different (or retrained) weights hash differently.
    """
    h = hashlib.sha1()
    for t in tensors:
        flat = t.detach().reshape(-1)[:n].to("cpu", torch.bfloat16).view(torch.int16)
        h.update(flat.numpy().tobytes())
    return h.hexdigest()[:12]


class VisionEncoder:
    """Frozen vision tower + Qwen's image preprocessing; no gradients, eval mode."""

    def __init__(self, visual: nn.Module, max_pixels: int, min_pixels: int = 56 * 56) -> None:
        cfg = visual.config
        if cfg.patch_size * cfg.spatial_merge_size != CELL_PX:
            raise ValueError(
                f"expected 14 px patches merged 2x2 (28 px cells), got {cfg.patch_size}x{cfg.spatial_merge_size}")
        if max_pixels < CELL_PX * CELL_PX:
            raise ValueError(f"max_pixels={max_pixels} is below one 28x28 cell")
        self.visual = visual
        self.max_pixels, self.min_pixels = int(max_pixels), int(min_pixels)
        self.processor = Qwen2VLImageProcessorPil(
            min_pixels=self.min_pixels, max_pixels=self.max_pixels,
            patch_size=cfg.patch_size, temporal_patch_size=cfg.temporal_patch_size,
            merge_size=cfg.spatial_merge_size,
        )
        fp = weights_fingerprint(visual.patch_embed.proj.weight, *[p for p in visual.merger.parameters()][-1:])
        # Identifies the feature space (weights only: paths differ between machines, and the
        # resolution cap changes detail, not the space): maps of another encoder are rejected.
        self.encoder_id = f"qwen2.5-vl-visual:{fp}"

    @property
    def feature_dim(self) -> int:
        return int(self.visual.config.out_hidden_size)

    @staticmethod
    def _check(rgb: np.ndarray) -> np.ndarray:
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
            got = getattr(rgb, "shape", type(rgb))
            raise ValueError(f"expected an RGB image as a (H, W, 3) uint8 array, got {got}")
        if rgb.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB, got {rgb.dtype} (convert/scale to 0..255 first)")
        if min(rgb.shape[:2]) < 1 or max(rgb.shape[:2]) / min(rgb.shape[:2]) > 200:
            raise ValueError(f"image {rgb.shape[1]}x{rgb.shape[0]} is empty or has an aspect ratio above 200")
        return rgb

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> pixel_values (sum_i h_i*w_i*4, 3*2*14*14), grid_thw (n, 3) in 14-px patches."""
        batch = self.processor([self._check(im) for im in images], return_tensors="pt")
        return batch["pixel_values"], batch["image_grid_thw"]

    @torch.no_grad()
    def encode_batch(self, images: Sequence[np.ndarray]) -> list[EncodedImage]:
        """Encode several images in one vision-tower call (window attention keeps them apart)."""
        if len(images) == 0:
            return []
        pixels, grid_thw = self.preprocess(images)
        p = next(self.visual.parameters())
        self.visual.eval()
        merged = self.visual(pixels.to(p.device, p.dtype), grid_thw=grid_thw.to(p.device)).pooler_output
        # merged: (sum_i h_i*w_i, d) with h_i, w_i in 28-px cells
        out, start = [], 0
        for _, gh, gw in grid_thw.tolist():
            h, w = gh // 2, gw // 2
            feats = merged[start:start + h * w].float().cpu()
            out.append(EncodedImage(feats, (h, w), (h * CELL_PX, w * CELL_PX)))
            start += h * w
        return out

    def encode(self, rgb: np.ndarray) -> EncodedImage:
        """One image -> per-cell features (h*w, d) float32 and the (h, w) cell grid."""
        return self.encode_batch([rgb])[0]
