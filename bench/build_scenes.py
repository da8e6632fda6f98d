"""``leovl-data build-scenes`` cost: seconds per scene and scenes per hour per worker, measured
here with the bundled leovl-tiny, and the Qwen2.5-VL-7B vision tower's cost estimated from its
counted FLOPs per frame, so a user can size the cluster that maps LEO-VL's ~5,000 scans.

    python -m bench.build_scenes [--scenes 3] [--frames 60] [--size 640x480]

Measured (this machine, one worker, one thread): synthetic rooms written as ScanNet exports
(colour + uint16 depth + poses), built through the real path (scan source -> keyframes ->
vision tower -> fusion -> safetensors cache) on a fresh cache; the vision-tower share is timed
separately. FLOPs: ``torch.utils.flop_counter`` on the tower's forward at the same frame size,
after each model's own resize (leovl-tiny: its ``max_pixels``; 7B: the recipe's default
512 cells). The 7B tower is counted from towers of 1 and 2 of its blocks (a window block, a
full-attention block, the patch embedding and merger) scaled to its 28 window + 4 full
blocks: building the whole 7B tower here would need ~2.7 GB and minutes per frame.

Estimates: "7B on this CPU" assumes the tiny tower's achieved FLOP/s (pessimistic: larger
matrices run faster per FLOP); "7B on a GPU" assumes ``--gpu-tflops`` sustained (default 100,
about a third of an A100's bf16 peak). Frame reading and fusion are CPU work that stays as
measured.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # before torch starts its pools
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel  # noqa: E402

from leovl_ros.model.config import LeoVLConfig  # noqa: E402
from leovl_ros.model.encoder import VisionEncoder  # noqa: E402
from leovl_ros.model.leovl import LeoVL  # noqa: E402
from leovl_ros.model.tiny import qwen25vl_7b_config  # noqa: E402
from leovl_ros.synth.render import render_frames  # noqa: E402
from leovl_ros.synth.rooms import generate_room  # noqa: E402
from leovl_ros.synth.writers import write_scannet  # noqa: E402
from leovl_ros.training.scenes import ScenesConfig, SceneStore  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "leovl_ros" / "bundled_models" / "leovl-tiny"
SCANS = 5000  # LEO-VL's four domains: ~1.5k ScanNet + ~1.4k 3RScan + ~0.3k MultiScan + ~1.6k ARKitScenes (rounded up)


def tower_flops(encoder: VisionEncoder, rgb: np.ndarray) -> float:
    with FlopCounterMode(display=False) as counter:
        encoder.encode(rgb)
    return float(counter.get_total_flops())


def flops_7b(rgb: np.ndarray) -> tuple[float, int]:
    """FLOPs of the Qwen2.5-VL-7B vision tower on one frame at the recipe's max_pixels (see module doc)."""
    base = qwen25vl_7b_config().vision_config.to_dict()
    counts = {}
    for name, depth, full in (("A", 1, [0]), ("B", 2, [1]), ("C", 2, [0, 1])):
        cfg = type(qwen25vl_7b_config().vision_config)(**{**base, "depth": depth, "fullatt_block_indexes": full})
        visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg).eval()
        enc = VisionEncoder(visual, LeoVLConfig.max_pixels, LeoVLConfig.min_pixels)
        counts[name] = tower_flops(enc, rgb)
        cells = enc.encode(rgb).features.shape[0]
    window, full = counts["B"] - counts["A"], counts["C"] - counts["A"]
    embed_and_merger = counts["A"] - full
    return embed_and_merger + 28 * window + 4 * full, cells


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=3)
    p.add_argument("--frames", type=int, default=60, help="frames per scene (all considered: stride 1)")
    p.add_argument("--size", default="640x480", help="frame size WxH")
    p.add_argument("--gpu-tflops", type=float, default=100.0, help="assumed sustained GPU TFLOP/s for the 7B line")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(1)
    model = LeoVL.from_pretrained(TINY)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frames0 = None
        for i in range(args.scenes):
            frames = render_frames(generate_room(2000 + i), args.frames, w, h)
            frames0 = frames0 or frames
            write_scannet(frames, root / "scans" / f"scene{2000 + i:04d}_00", instances=False)
        store = SceneStore(model, ScenesConfig(cache_dir=str(root / "cache"),
                                               sources=[{"kind": "scannet", "root": str(root / "scans"), "stride": 1}]))
        encode_s, encoded = 0.0, 0
        encode_batch = model.encoder.encode_batch

        def timed(images):
            nonlocal encode_s, encoded
            t = time.perf_counter()
            out = encode_batch(images)
            encode_s += time.perf_counter() - t
            encoded += len(images)
            return out
        model.encoder.encode_batch = timed
        t0 = time.perf_counter()
        for i in range(args.scenes):
            store.get(f"scene{2000 + i:04d}_00")
        total_s = time.perf_counter() - t0
    per_scene = total_s / args.scenes
    keyframes = encoded / args.scenes
    tower_s = encode_s / encoded
    other_s = (total_s - encode_s) / args.scenes  # reading frames, keyframe test, back-projection, fusion, cache write
    rgb = frames0[0].rgb
    tiny_flops = tower_flops(model.encoder, rgb)
    big_flops, big_cells = flops_7b(rgb)
    achieved = tiny_flops / tower_s
    cpu_7b = other_s + keyframes * big_flops / achieved
    gpu_7b = other_s + keyframes * big_flops / (args.gpu_tflops * 1e12)
    rows = [("leovl-tiny (measured)", tower_s, tiny_flops, per_scene),
            ("Qwen2.5-VL-7B tower, this CPU (est.)", big_flops / achieved, big_flops, cpu_7b),
            (f"Qwen2.5-VL-7B tower, GPU at {args.gpu_tflops:g} TFLOP/s (est.)", big_flops / (args.gpu_tflops * 1e12),
             big_flops, gpu_7b)]
    print(f"{args.scenes} scenes x {args.frames} frames of {w}x{h}; {keyframes:.1f} keyframes per scene; "
          f"non-tower work {other_s:.2f} s per scene; tiny tower {tiny_flops / 1e9:.2f} GFLOP/frame at "
          f"{achieved / 1e9:.1f} GFLOP/s; 7B tower {big_cells} cells per frame")
    print("| vision tower | s / keyframe | GFLOP / keyframe | s / scene | scenes / hour / worker | "
          f"worker-hours for {SCANS} scans |")
    print("|---|---|---|---|---|---|")
    for name, s_frame, flops, s_scene in rows:
        print(f"| {name} | {s_frame:.3g} | {flops / 1e9:.1f} | {s_scene:.2f} | {3600 / s_scene:.0f} | "
              f"{SCANS * s_scene / 3600:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
