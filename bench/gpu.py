"""GPU check with no weights to download: the 7B architecture timed on CUDA, then the CUDA-only tests.

Run from the repo root: ``make gpu-check`` or ``env/ros_env.sh ~/.cache/leovl_ros/venv python -m bench.gpu``.
Without a CUDA device it prints one line and exits 2.

Builds Qwen2.5-VL-7B from its published config (``leovl_ros.model.tiny.qwen25vl_7b_config``:
28 layers, hidden 3584, 4 KV heads, 32-block vision tower) with random bf16 weights on the GPU
(speed does not depend on the weights), adds the LoRA adapter and scene heads, and prints one
table beside the goals (paper setting, what a robot needs): time to first token with 750 scene
tokens, the scene prefix prefilled per question and cached (<= 150 ms); one beam-5 32-token
answer (<= 1 s); 8 questions answered in one batched call; keyframe encode + fuse with the 7B
vision tower at 640x480 (>= 30 keyframes/s); peak GPU memory. Random weights rarely emit the
end token, so answers run to (about) their token limit; the token counts are printed.

Then it runs the CUDA-only tests: those named ``*gpu*`` in the test files that skip without
CUDA. About 3-5 minutes on one H100 (the 8-minute budget of the issue). ``--tiny --device
cpu`` runs the same steps on the tiny random model without a GPU (a check of this script
itself, about a minute; no goal applies).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GOALS = {"ttft": 0.150, "beam5": 1.0, "keyframes": 30.0}


def _sync() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn, repeats: int = 5) -> tuple[float, object]:
    """Median seconds of ``repeats`` synchronised calls after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _model(tiny: bool):
    from leovl_ros.model.config import LeoVLConfig
    from leovl_ros.model.leovl import LeoVL
    from leovl_ros.model.tiny import qwen25vl_7b_config
    from leovl_ros.model.tokenizer import load_qwen_tokenizer
    from leovl_ros.model.tiny import tiny_leovl
    from transformers import Qwen2_5_VLForConditionalGeneration

    if tiny:
        return tiny_leovl(seed=0)
    qwen = qwen25vl_7b_config()
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            base = Qwen2_5_VLForConditionalGeneration(qwen)
    finally:
        torch.set_default_dtype(default)
    return LeoVL(base, load_qwen_tokenizer(), LeoVLConfig(base_model="qwen2.5-vl-7b-random", hidden_size=3584))


def _scene(model, device: str, tokens: int = 750):
    """A map on ``device`` whose CFG has ``tokens`` scene tokens (random features at random points)."""
    from leovl_ros.model.prompts import SceneQuery

    g = torch.Generator(device=device).manual_seed(0)
    vmap = model.new_voxel_map(device=device)
    points = torch.rand(40000, 3, generator=g, device=device) * torch.tensor([12.0, 12.0, 2.5], device=device)
    vmap.fuse(points, torch.randn(40000, vmap.feature_dim, generator=g, device=device))
    n = model.scene_tokens(vmap, SceneQuery("qa", "?")).shape[0]
    if n != tokens:
        raise SystemExit(f"bench.gpu: the random scene has {n} scene tokens, not {tokens}")
    return vmap


def _encode_and_fuse_rate(model, device: str, frames: int = 24) -> float:
    """Keyframes per second through the 7B vision tower, back-projection and fusion (640x480)."""
    from leovl_ros.geometry import Intrinsics, cell_points, depth_to_metres
    from leovl_ros.synth.render import render_frames
    from leovl_ros.synth.rooms import generate_room

    views = render_frames(generate_room(0), frames + 1, 640, 480)
    vmap = model.new_voxel_map(device=device)

    def one(frame) -> None:
        encoded = model.encoder.encode(frame.rgb)
        h, w = frame.depth_mm.shape
        points, cells = cell_points(depth_to_metres(frame.depth_mm), Intrinsics.from_K(frame.K, w, h),
                                    frame.T_map_camera, encoded.grid_hw)
        features = encoded.features[torch.from_numpy(cells).to(encoded.features.device)]
        vmap.fuse(torch.from_numpy(points).to(device), features)

    with torch.inference_mode():
        one(views[0])  # warm-up
        _sync()
        t0 = time.perf_counter()
        for frame in views[1:]:
            one(frame)
        _sync()
    return frames / (time.perf_counter() - t0)


def _row(name: str, value: float, unit: str, goal: str = "", ok: bool | None = None, note: str = "") -> list[str]:
    verdict = "" if ok is None else ("met" if ok else "MISSED")
    return [name, f"{value:.3f} {unit}", goal, verdict, note]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu with --tiny to check this script")
    ap.add_argument("--tiny", action="store_true", help="the tiny random model instead of the 7B architecture")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.gpu: no CUDA device (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU",
              file=sys.stderr)
        return 2
    from bench.table import print_table
    from leovl_ros.model.config import GenerationConfig
    from leovl_ros.model.prompts import SceneQuery

    start = time.perf_counter()
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = _model(args.tiny)
    if args.tiny:
        model.model.to(args.device)
        model.heads.to(args.device)
    built = time.perf_counter() - start
    vmap = _scene(model, args.device)
    question = SceneQuery("qa", "How many chairs are around the table?")
    questions = [SceneQuery("qa", f"What is on shelf {i} next to the door?") for i in range(8)]
    first = GenerationConfig(num_beams=1, max_new_tokens=1, repetition_penalty=1.0)
    beam5 = GenerationConfig(num_beams=5, max_new_tokens=32)
    rows = []
    with torch.inference_mode():
        model.prefix_cache.max_bytes = 0
        ttft_plain, _ = _timed(lambda: model.generate([vmap], [question], first))
        model.prefix_cache.max_bytes = 1 << 30
        ttft_cached, _ = _timed(lambda: model.generate([vmap], [question], first))
        beam_s, answer = _timed(lambda: model.generate([vmap], [question], beam5), 3)
        batch_s, answers = _timed(lambda: model.generate([vmap] * 8, questions, beam5), 3)
    rate = _encode_and_fuse_rate(model, args.device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    count = lambda text: len(model.tokenizer.encode(text))  # noqa: E731
    rows += [_row("first token, prefix per question", ttft_plain, "s", "<= 0.150 s", ttft_plain <= GOALS["ttft"],
                  "750 scene tokens"),
             _row("first token, cached prefix", ttft_cached, "s", "<= 0.150 s", ttft_cached <= GOALS["ttft"],
                  f"ratio {ttft_cached / ttft_plain:.2f}"),
             _row("beam-5 answer", beam_s, "s", "<= 1 s", beam_s <= GOALS["beam5"], f"{count(answer[0])} tokens"),
             _row("8 batched beam-5 answers", batch_s, "s", "", None,
                  f"{batch_s / 8:.3f} s each; {min(map(count, answers))}-{max(map(count, answers))} tokens"),
             _row("keyframe encode + fuse", rate, "keyframes/s", ">= 30/s", rate >= GOALS["keyframes"], "640x480"),
             _row("peak GPU memory", peak, "GiB", "", None, torch.cuda.get_device_name() if cuda else "no GPU")]
    what = "tiny random model" if args.tiny else "Qwen2.5-VL-7B architecture, random bf16 weights"
    print(f"{what} + LoRA r={model.config.lora_r} on {args.device}, built in {built:.0f} s\n")
    print_table(["measure", "value", "goal", "", "note"], rows)
    if not cuda:
        return 0
    del model, vmap
    torch.cuda.empty_cache()
    files = [str(p.relative_to(REPO)) for p in sorted((REPO / "test").glob("test_*.py"))
             if "torch.cuda.is_available()" in p.read_text()]
    print(f"\nCUDA-only tests ({', '.join(files)}, -k gpu):", flush=True)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-k", "gpu", *files],
                           cwd=REPO)
    print(f"\nbench.gpu done in {time.perf_counter() - start:.0f} s")
    return tests.returncode


if __name__ == "__main__":
    sys.exit(main())
