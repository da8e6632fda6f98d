"""Qwen2.5-VL configs built in code: tiny ones for tests and the 7B one for parameter counts.

A tiny config keeps the real architecture (window-attention vision tower with 2x2 patch
merger, GQA decoder with M-RoPE) and, by default, the full Qwen2.5 vocabulary so prompts
use real token ids; input and output embeddings are tied to keep it small (~10 M params
at hidden 64, mostly the embedding table).
"""
from __future__ import annotations

from transformers import Qwen2_5_VLConfig

from .tokenizer import VOCAB_SIZE

# Qwen2.5-VL checkpoints pad the embedding table to a multiple of 128 / 256.
QWEN25_VL_PADDED_VOCAB = 151936


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (t, h, w) like the 7B's [16, 24, 24] of 64."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def tiny_qwen25vl_config(
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int | None = None,
    vision_depth: int = 2,
    vision_hidden: int = 32,
    vision_heads: int = 2,
    vocab_size: int = QWEN25_VL_PADDED_VOCAB,
    tie_word_embeddings: bool = True,
) -> Qwen2_5_VLConfig:
    """A random-init-sized Qwen2.5-VL config (no weights, no download).

    ``vocab_size`` must cover the Qwen2.5 tokenizer (>= 151665) so that real prompts run.
    """
    if vocab_size < VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is below the Qwen2.5 tokenizer's {VOCAB_SIZE} ids")
    if hidden_size % heads or heads % kv_heads or (hidden_size // heads) % 2:
        raise ValueError(
            f"hidden_size={hidden_size}, heads={heads}, kv_heads={kv_heads}: need hidden divisible by heads, "
            "heads divisible by kv_heads and an even head_dim"
        )
    if vision_hidden % vision_heads or (vision_hidden // vision_heads) % 4:  # 2D rotary: half the dims per axis
        raise ValueError(f"vision_hidden={vision_hidden}, vision_heads={vision_heads}: need vision_hidden divisible "
                         "by vision_heads and a vision head_dim divisible by 4")
    head_dim = hidden_size // heads
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": _mrope_section(head_dim)},
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
    )
    vision = dict(
        depth=vision_depth,
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_heads=vision_heads,
        out_hidden_size=hidden_size,
        fullatt_block_indexes=[vision_depth - 1],
        window_size=112,
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie_word_embeddings)


def qwen25vl_7b_config() -> Qwen2_5_VLConfig:
    """The published Qwen2.5-VL-7B-Instruct architecture, for parameter counting only."""
    text = dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        tie_word_embeddings=False,
    )
    vision = dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
        fullatt_block_indexes=[7, 15, 23, 31], window_size=112,
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)


def tiny_leovl(seed: int = 0, tokenizer=None, hidden_size: int = 64, **config_overrides):
    """A random tiny LeoVL (real architecture, real tokenizer) for tests and benchmarks."""
    from .config import LeoVLConfig
    from .leovl import LeoVL

    config = LeoVLConfig(base_model=f"tiny-random-h{hidden_size}-s{seed}", hidden_size=hidden_size, **config_overrides)
    return LeoVL.from_config(tiny_qwen25vl_config(hidden_size=hidden_size), config, tokenizer, seed=seed)


def random_scene(model, num_points: int = 200, seed: int = 0, extent: tuple[float, float, float] = (4.0, 4.0, 2.0)):
    """A voxel map of ``model`` holding random features at random points (tests, benchmarks)."""
    import torch

    vmap = model.new_voxel_map()
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(num_points, 3, generator=g) * torch.tensor(extent)  # (N, 3) metres
    vmap.fuse(points, torch.randn(num_points, vmap.feature_dim, generator=g))
    return vmap
