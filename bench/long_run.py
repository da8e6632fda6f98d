"""Hours on a robot: one hour of camera frames through ``SceneSession`` (no ROS), per eviction policy.

Run from the repo root: ``env/ros_env.sh $(make -s venv-path) python -m bench.long_run``. A robot drives laps of a
60 x 30 m loop corridor (2 m wide, 3 m high) at 1 m/s with a 15 Hz RGB-D camera, for
``--minutes`` of simulated time; every frame is offered to the session, which keeps its
keyframes (0.1 m / 10 deg, at most 5 per s) and fuses each one (the bench waits for it, so
none is dropped as "encoder busy"). The map is capped at ``--max-voxels`` (one lap holds
about twice that many), so after the first minutes every keyframe meets a full map.

Fast by construction: depth is ray-cast against the corridor's boxes at 64 x 48 px, and the
model is a real tiny random LEO-VL whose encoder is replaced by precomputed per-cell
features (6 x 8 cells, d = 64): what is measured is the session's mapping path (keyframe
selection, back-projection, fusion, column sums, eviction), not a vision tower.

The table: per ``--every`` simulated minutes the keyframes fused, voxels, voxels evicted and
points dropped (full map), the map's allocated bytes, the process RSS, and the cost of a
question's scene: the map snapshot a question takes, and its CFG (incremental) against the
batch CFG of the same snapshot.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # before numpy/torch start their pools
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.table import print_table  # noqa: E402
from bench.timing import median_time  # noqa: E402
from leovl_ros.assistant import AssistantConfig, RGBDFrame, SceneSession  # noqa: E402
from leovl_ros.condensed_grid import build_grid  # noqa: E402
from leovl_ros.geometry import Intrinsics, depth_to_metres, look_at  # noqa: E402
from leovl_ros.model.config import LeoVLConfig  # noqa: E402
from leovl_ros.model.encoder import EncodedImage  # noqa: E402
from leovl_ros.model.leovl import LeoVL  # noqa: E402
from leovl_ros.model.tiny import tiny_qwen25vl_config  # noqa: E402

OUTER = np.array([[0.0, 0.0, 0.0], [60.0, 30.0, 3.0]])  # corridor loop: outer walls, floor, ceiling
INNER = np.array([[2.0, 2.0, 0.0], [58.0, 28.0, 3.0]])  # the block the corridor runs around
INTR = Intrinsics(fx=52.5, fy=52.5, cx=31.5, cy=23.5, width=64, height=48)
GRID_HW = (6, 8)
SPEED, FPS = 1.0, 15.0  # m/s, camera frames per second


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def camera_pose(t: float) -> np.ndarray:
    """T_map_camera (optical) on the corridor's centreline (1 m in from the outer wall) at time t."""
    corners = np.array([[1.0, 1.0], [59.0, 1.0], [59.0, 29.0], [1.0, 29.0], [1.0, 1.0]])
    legs = np.linalg.norm(np.diff(corners, axis=0), axis=1)
    s = (SPEED * t) % legs.sum()
    i = int(np.searchsorted(np.cumsum(legs), s, side="right"))
    s0 = s - np.concatenate([[0.0], np.cumsum(legs)])[i]
    direction = (corners[i + 1] - corners[i]) / legs[i]
    pos = np.r_[corners[i] + s0 * direction, 1.2]
    turn = np.clip((s0 - (legs[i] - 1.0)), 0.0, 1.0) * np.pi / 2  # turn left over the leg's last metre
    yaw = np.arctan2(direction[1], direction[0]) + turn
    return look_at(pos, np.array([np.cos(yaw), np.sin(yaw), -0.1]))


_U, _V = np.meshgrid(np.arange(INTR.width), np.arange(INTR.height))
_RAYS = np.stack([(_U - INTR.cx) / INTR.fx, (_V - INTR.cy) / INTR.fy, np.ones(_U.shape)], -1).reshape(-1, 3)


def render_depth_mm(T: np.ndarray) -> np.ndarray:
    """uint16 z-depth (mm) of the corridor seen from T (exit of the outer box, entry of the inner one)."""
    dirs = _RAYS @ T[:3, :3].T
    o = T[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t = np.where(dirs > 0, (OUTER[1] - o) * inv, (OUTER[0] - o) * inv).min(1)
        t0, t1 = (INNER[0] - o) * inv, (INNER[1] - o) * inv
        near, far = np.minimum(t0, t1).max(1), np.maximum(t0, t1).min(1)
        t = np.where((near <= far) & (near > 0) & (near < t), near, t)
    return np.clip(t.reshape(INTR.height, INTR.width) * 1000, 0, 65535).astype(np.uint16)


class PrecomputedEncoder:
    """The model's encoder interface with a fixed random feature per cell (no vision tower)."""

    def __init__(self, encoder_id: str, d: int) -> None:
        self.encoder_id = encoder_id
        self._features = torch.randn(GRID_HW[0] * GRID_HW[1], d, generator=torch.Generator().manual_seed(0))

    def encode(self, rgb: np.ndarray) -> EncodedImage:
        return EncodedImage(self._features, GRID_HW, (28 * GRID_HW[0], 28 * GRID_HW[1]))


def run(model: LeoVL, eviction: str, args) -> list[tuple]:
    config = AssistantConfig(max_voxels=args.max_voxels, eviction=eviction, compute_grounding=False)
    session = SceneSession(model, config, "tiny-random")
    rgb = np.zeros((INTR.height, INTR.width, 3), np.uint8)
    rows, frames, start = [], int(args.minutes * 60 * FPS), time.perf_counter()
    every = int(args.every * 60 * FPS)
    try:
        for k in range(1, frames + 1):
            t = k / FPS
            T = camera_pose(t)
            if session.offer(RGBDFrame(rgb, depth_to_metres(render_depth_mm(T)), INTR, T, t)):
                session.wait_idle(60.0)
            if k % every == 0:
                s = session.stats()
                t0 = time.perf_counter()
                scene = session.snapshot()
                t_snap = time.perf_counter() - t0
                grid = build_grid(scene, model.config.grid)
                t_inc = median_time(lambda: build_grid(scene, model.config.grid))
                t_batch = median_time(lambda: build_grid(scene, model.config.grid, incremental=False))
                rows.append((eviction, f"{t / 60:.0f}", s.keyframes_fused, s.num_voxels, s.voxels_evicted,
                             s.points_dropped_full, f"{s.memory_bytes / 2**20:.1f}", f"{rss_mib():.0f}",
                             f"{1e3 * t_snap:.1f}", f"{1e3 * t_inc:.2f}", f"{1e3 * t_batch:.1f}",
                             f"{grid.preservation_rate:.2f}", f"{time.perf_counter() - start:.0f}"))
    finally:
        session.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="simulated time")
    ap.add_argument("--every", type=float, default=5.0, help="simulated minutes between table rows")
    ap.add_argument("--max-voxels", type=int, default=20_000)
    ap.add_argument("--eviction", nargs="+", default=["least_recent", "farthest", "none"])
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    qwen = tiny_qwen25vl_config()
    model = LeoVL.from_config(qwen, LeoVLConfig(base_model="tiny-random", hidden_size=qwen.text_config.hidden_size),
                              seed=0)
    model.encoder = PrecomputedEncoder(model.encoder.encoder_id, qwen.text_config.hidden_size)
    rows = [r for policy in args.eviction for r in run(model, policy, args)]
    head = ("eviction", "min", "keyframes", "voxels", "evicted", "pts dropped", "map MiB", "RSS MiB",
            "snapshot ms", "CFG ms", "batch CFG ms", "pres", "wall s")
    print(f"long run: {args.minutes:g} min at {FPS:g} Hz, {SPEED:g} m/s laps of a 60 x 30 m corridor loop, "
          f"max_voxels {args.max_voxels}, d {qwen.text_config.hidden_size}, torch threads {torch.get_num_threads()}")
    print_table(head, rows)


if __name__ == "__main__":
    main()
