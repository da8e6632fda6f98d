"""Model benchmark: prefill tokens and time per question, CFG scene vs 32 full frames.

Run from the repo root: ``env/ros_env.sh $(make -s venv-path) python -m bench.model`` (tiny random Qwen2.5-VL, CPU,
about a minute), or on a real checkpoint: ``--base /models/Qwen2.5-VL-7B-Instruct --device
cuda --dtype bfloat16``. Every number in the table is measured in this run.

The same 32 RGB-D frames of a synthetic room (rendered with leovl_ros.synth) are given to
the LLM two ways, through the same vision tower:
- CFG (ours): frames are encoded once while mapping, back-projected and fused into the
  voxel map; per question we build the CFG (<= 750 tokens) and prefill scene + question.
- 32 frames (the video-model way, e.g. GPT4Scene): every frame's merged vision tokens go
  into the prompt (one <|vision_start|>...<|vision_end|> block per frame). Its per-question
  cost is the prefill; re-encoding the frames per question is shown separately since a
  video model may cache it.
Only the last position's logits are computed (prefill cost, not a 150k-vocab matmul per token).

Then, on the CFG scene, what the assistant does per question: time to first token with the
scene prefix prefilled per question vs taken from the prefix cache, and 8 questions answered
in one batched generate call vs one call each (greedy, 16 tokens).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # shared small CPU boxes: see bench/scene_core.py
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from leovl_ros.geometry import Intrinsics, cell_points, depth_to_metres  # noqa: E402
from leovl_ros.model.config import GenerationConfig, LeoVLConfig  # noqa: E402
from leovl_ros.model.leovl import LeoVL, count_trainable_parameters  # noqa: E402
from leovl_ros.model.prompts import SceneQuery  # noqa: E402
from leovl_ros.model.tiny import qwen25vl_7b_config, tiny_leovl, tiny_qwen25vl_config  # noqa: E402
from leovl_ros.synth.render import render_frames  # noqa: E402
from leovl_ros.synth.rooms import generate_room  # noqa: E402

QUESTION = SceneQuery("qa", "How many chairs are there in the room?")


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls (after one warm-up) and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def prefill(model: LeoVL, ids: list[int], scene: torch.Tensor) -> torch.Tensor:
    """Last-position logits of one prompt whose <|image_pad|> slots take ``scene`` (T, d)."""
    ids_t = torch.tensor([ids], device=model.device)  # (1, L)
    embeds = model.model.get_input_embeddings()(ids_t)  # (1, L, d)
    if scene.shape[0]:
        embeds = embeds.masked_scatter((ids_t == model.prompts.image_pad_id)[..., None], scene.to(embeds.dtype))
    model.model.model.rope_deltas = None
    positions = torch.arange(ids_t.shape[1], device=model.device)[None]
    return model.model(inputs_embeds=embeds, position_ids=positions, logits_to_keep=1, use_cache=False).logits


def frames_prompt(model: LeoVL, cells_per_frame: list[int]) -> list[int]:
    """Appendix B template with one vision block per frame (the multi-image / video layout)."""
    p = model.prompts
    blocks = []
    for n in cells_per_frame:
        blocks += [p.vision_start_id] + [p.image_pad_id] * n + [p.vision_end_id]
    ids = p.prompt_ids(QUESTION, 0)
    start = ids.index(p.vision_start_id)
    return ids[:start] + blocks + ids[start + 2:]  # replace the empty <|vision_start|><|vision_end|>


def build_map(model: LeoVL, frames, encoded) -> object:
    vmap = model.new_voxel_map()
    for frame, enc in zip(frames, encoded):
        h, w = frame.depth_mm.shape
        intr = Intrinsics.from_K(frame.K, w, h)
        points, cells = cell_points(depth_to_metres(frame.depth_mm), intr, frame.T_map_camera, enc.grid_hw)
        vmap.fuse(points, enc.features[torch.from_numpy(cells)])
    return vmap


def serving(model: LeoVL, vmap, repeats: int) -> None:
    """TTFT without / with the prefix cache, and 8 questions batched vs one at a time."""
    first = GenerationConfig(num_beams=1, max_new_tokens=1, repetition_penalty=1.0)
    short = GenerationConfig(num_beams=1, max_new_tokens=16)
    questions = [SceneQuery("qa", f"How many chairs are there in room {i}?") for i in range(8)]
    rows = []
    for cached in (False, True):
        model.prefix_cache.max_bytes = 256 * 2**20 if cached else 0
        model.prefix_cache.clear()
        ttft, _ = timed(lambda: model.generate([vmap], [QUESTION], first), repeats)
        batched, _ = timed(lambda: model.generate([vmap] * 8, questions, short), repeats)
        alone, _ = timed(lambda: [model.generate([vmap], [q], short) for q in questions], repeats)
        rows.append((cached, ttft, batched, alone))
    model.prefix_cache.max_bytes = 0
    print(f"\n{'scene prefix':<24}{'first token s':>14}{'8 batched s':>13}{'8 alone s':>11}{'batch speed-up':>16}")
    for cached, ttft, batched, alone in rows:
        print(f"{'cached' if cached else 'prefilled per question':<24}{ttft:>14.4f}{batched:>13.3f}{alone:>11.3f}"
              f"{alone / batched:>16.2f}")
    print(f"time to first token, cached / per question: {rows[1][1] / rows[0][1]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="Qwen2.5-VL checkpoint directory (default: tiny random model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--room-seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    dtype = getattr(torch, args.dtype)
    if args.base:
        model = LeoVL.from_pretrained(args.base, device=args.device, dtype=dtype)
    else:
        model = tiny_leovl(seed=0)
        model.model.to(args.device, dtype)
        model.heads.to(args.device)
    print(f"model: {args.base or 'tiny random Qwen2.5-VL (hidden 64, 2 layers)'} on {args.device} {args.dtype}")

    t0 = time.perf_counter()
    frames = render_frames(generate_room(args.room_seed), args.frames, args.width, args.height)
    print(f"rendered {len(frames)} frames {args.width}x{args.height} in {time.perf_counter() - t0:.1f} s")

    with torch.inference_mode():
        enc_s, encoded = timed(lambda: model.encoder.encode_batch([f.rgb for f in frames]), 1)
        t0 = time.perf_counter()
        vmap = build_map(model, frames, encoded)
        fuse_s = time.perf_counter() - t0

        def cfg_question():
            tokens = model.scene_tokens(vmap, QUESTION)  # CFG build + Fourier MLP, per question
            return prefill(model, model.prompts.prompt_ids(QUESTION, tokens.shape[0]), tokens), tokens.shape[0]

        cfg_s, (_, n_cfg) = timed(cfg_question, args.repeats)
        cfg_len = len(model.prompts.prompt_ids(QUESTION, n_cfg))
        cells = [e.features.shape[0] for e in encoded]
        frame_ids = frames_prompt(model, cells)
        all_cells = torch.cat([e.features for e in encoded]).to(model.device)
        frames_s, _ = timed(lambda: prefill(model, frame_ids, all_cells), args.repeats)

    grid = model.scene_grid(vmap, QUESTION)
    print(f"map: {vmap.num_voxels} voxels from {sum(cells)} cells ({cells[0]} per frame, grid "
          f"{encoded[0].grid_hw}); CFG {grid.num_tokens} tokens, preservation {grid.preservation_rate:.2f}")
    print(f"one-off: encode {len(frames)} frames {enc_s:.2f} s, back-project + fuse {fuse_s:.2f} s\n")
    rows = [("32 full frames (baseline)", sum(cells), len(frame_ids), frames_s, enc_s),
            ("CFG (ours)", n_cfg, cfg_len, cfg_s, 0.0)]
    print(f"{'scene as':<28}{'scene tok':>10}{'prefill tok':>12}{'s/question':>12}{'+encode s':>11}"
          f"{'token ratio':>13}{'time ratio':>12}")
    for name, n_scene, n_prefill, sec, enc in rows:
        print(f"{name:<28}{n_scene:>10}{n_prefill:>12}{sec:>12.3f}{enc:>11.2f}"
              f"{n_prefill / rows[0][2]:>13.3f}{sec / rows[0][3]:>12.3f}")
    print(f"\nprefill tokens: CFG uses 1/{len(frame_ids) / cfg_len:.1f} of the 32-frame prompt")
    with torch.inference_mode():
        serving(model, vmap, args.repeats)

    print("\ntrainable parameters (LoRA r=16 on q,k,v,o,gate,up,down + Fourier W and MLP (F = d) + anchor):")
    for name, qc, hidden in (("tiny test config", tiny_qwen25vl_config(), 64),
                             ("Qwen2.5-VL-7B config", qwen25vl_7b_config(), 3584)):
        c = count_trainable_parameters(qc, LeoVLConfig(base_model=name, hidden_size=hidden))
        print(f"  {name:<22} LoRA {c['llm']:>12,}  Fourier MLP {c['fourier_mlp']:>11,}  W {c['fourier_w']:>5,}"
              f"  anchor {c['anchor']:>6,}"
              f"  total {c['trainable']:>12,}  ({100 * c['trainable'] / c['base_total']:.2f}% of {c['base_total']:,})")


if __name__ == "__main__":
    main()
