"""The assistant session: live mapping, questions, plans, dialogue, feedback, hot swaps.

:class:`SceneSession` owns the voxel map, the keyframe selector, the model and the threads
around them; the ROS node only converts messages. Decision (paper silent), concurrency:

- Mapping: ``offer`` is cheap (pose check only) and never blocks; keyframes wait in a
  one-slot mailbox (a newer keyframe replaces an unencoded one, counted as dropped) that a
  dedicated worker thread encodes and fuses. A slow encoder therefore costs dropped frames,
  never a growing queue.
- Questions: at most ``max_pending_requests`` run or wait at once (more are refused at
  once), waiting at most ``request_timeout`` s; one answering thread takes up to
  ``max_batch`` of them per model call (request_queue), which holds the model lock. They
  read a copy of the map taken when it last changed, so fusion continues during generation,
  and start from that copy's scene prefix, prefilled once (``prefix_cache_mb``).
- Adapter swap: takes the model lock and pauses the encoder; questions arriving meanwhile
  wait for it (or time out with a clear message). If loading fails the old adapter stays.
- Lock order: model lock -> encoder lock -> map lock, and mailbox -> map lock; the map
  lock is never held while waiting for another lock.

Parts with no lock of their own here live beside it (request_queue, interaction_book,
scene_files, leveling, grid_view); what stays is everything that takes these locks, kept in
one file so the lock order above can be checked in one read.
"""
from __future__ import annotations

import copy
import math
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..camera_path import CAMERA_PATH_KEY, CameraPath
from ..gravity import depth_samples
from ..model.grounding import GROUNDING_TOP_K, answer_grounding
from ..model.prompts import SceneQuery, plan_instruction
from ..model.scene_tokens import check_map
from ..voxel_map import VoxelMap
from . import scene_files
from .grid_view import grid_cloud, grid_stats
from .leveling import GravityTracker, relevel_map
from .request_queue import Job, RequestQueue
from .interaction_book import InteractionBook
from .records import (ASK_TASKS, Interaction, RGBDFrame, Reply, RequestControl, RequestRefused,
                      SceneStats, split_plan_steps)
from .settings import AssistantConfig

__all__ = ["SceneSession"]


class _Throttle:
    def __init__(self, period_s: float) -> None:
        self.period_s, self._last = period_s, {}

    def __call__(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.period_s:
            return False
        self._last[key] = now
        return True


class SceneSession:
    """Map + keyframes + model for one robot; every public method is thread-safe."""

    def __init__(self, model, config: AssistantConfig, model_name: str,
                 log: Callable[[str, str], None] | None = None, log_period_s: float = 5.0) -> None:
        self.model = model
        self.config = config
        self.model_name = model_name
        self._log = log or (lambda level, text: None)
        self._throttle = _Throttle(log_period_s)
        # The model runs with these on top of whatever bundle it holds, across swaps (model.config);
        # a model serves one session: another session made on it would replace them.
        model.set_overrides(config.model_overrides())
        model.prefix_cache.max_bytes = int(config.prefix_cache_mb * 2**20)  # the weights stay fixed here
        self._requests = RequestQueue(config.max_pending_requests, config.request_timeout, config.max_batch,
                                      self._answer_batch)
        self._encoder_lock = threading.Lock()
        self._map_lock = threading.Lock()  # map, keyframes, counters, snapshot
        self._map = model.new_voxel_map(**self._map_options())
        self._keyframes = config.fusion.keyframe_selector(config.max_keyframe_rate)
        self._gravity = GravityTracker(config.align_gravity)
        self._epoch = self._version = 0
        self._reset_state()
        self._book = InteractionBook(config, self.warn_once)
        self._mailbox: tuple[RGBDFrame, int] | None = None
        self._busy = False  # the worker is encoding/fusing a keyframe
        self._wake = threading.Condition()
        self._closed = False
        self.worker_restarts, self._worker_error = 0, ""
        self.swap_note = ""  # what the last adapter swap did to the scene ('' = nothing)
        self._start_worker()

    # ------------------------------------------------------------------ mapping
    def _reset_state(self) -> None:
        self._epoch += 1  # frames encoded before a reset are discarded
        self._version += 1
        self._snapshot: tuple[int, VoxelMap, float | None] | None = None
        self._stats_cache: tuple[int, tuple[int, float, float]] | None = None
        self._received = self._fused = 0
        self._drops: dict[str, int] = {}
        self._newest_stamp: float | None = None
        self._keyframes.reset()
        self._gravity.reset()
        self._camera_path = CameraPath()  # keyframe positions, saved with the scene (leovl-scene show)

    def _drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1

    def reject_frame(self, reason: str, detail: str = "") -> None:
        """Count an RGB-D pair that never reached ``offer`` (bad image, no pose, ...); log it throttled."""
        with self._map_lock:
            self._received += 1
            self._drop(reason)
        if detail:
            self.warn_once(reason, "warn", f"dropping frames ({reason}): {detail}")

    def offer(self, frame: RGBDFrame) -> bool:
        """Queue ``frame`` for fusion if it is a keyframe; True if queued. Never blocks on the encoder."""
        with self._map_lock:
            self._received += 1
            try:
                frame = replace(frame, T_map_camera=self._gravity.level_pose(frame.T_map_camera))
                accepted = self._keyframes.accept(frame.T_map_camera, frame.stamp_s)
            except ValueError as exc:
                self._drop("invalid pose")
                accepted, error = False, str(exc)
            else:
                error = ""
                if not accepted:
                    self._drop("not a keyframe")
            epoch = self._epoch
        if error:
            self.warn_once("invalid pose", "warn", f"dropping frames (invalid pose): {error}")
        if not accepted:
            return False
        with self._wake:
            if self._mailbox is not None:
                with self._map_lock:
                    self._drop("encoder busy")
            self._mailbox = (frame, epoch)
            self._wake.notify()
        return True

    def _map_worker(self) -> None:
        try:
            while True:
                with self._wake:
                    self._wake.wait_for(lambda: self._mailbox is not None or self._closed)
                    if self._closed:
                        return
                    (frame, epoch), self._mailbox = self._mailbox, None
                    self._busy = True
                try:
                    reason = self._fuse(frame, epoch)
                except Exception as exc:  # a bad frame or encoder error must not stop mapping
                    reason = "fuse error"
                    self.warn_once("fuse error", "error", f"could not fuse a keyframe: {type(exc).__name__}: {exc}")
                if reason:
                    with self._map_lock:
                        self._drop(reason)
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()
        except BaseException as exc:  # reported by stats() and restarted there, never silently dead
            self._worker_error = f"{type(exc).__name__}: {exc}"
            with self._wake:
                self._busy = False
                self._wake.notify_all()
            raise

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._map_worker, name="leovl-mapping", daemon=True)
        self._worker.start()

    def _check_worker(self) -> None:
        """Restart a mapping worker that died (a bug, not a bad frame); counted and logged."""
        if self._closed or self._worker.is_alive():
            return
        self.worker_restarts += 1
        self.warn_once("worker died", "error", f"the mapping worker died ({self._worker_error}); restarted "
                                                f"({self.worker_restarts} restarts so far)")
        self._start_worker()

    def warn_once(self, key: str, level: str, text: str) -> None:
        """Log ``text`` at most once per throttle period per ``key``; logging can never raise here."""
        if self._throttle(key):
            try:
                self._log(level, text)
            except Exception:  # a broken logger must not take mapping or a request down with it
                pass

    def _fuse(self, frame: RGBDFrame, epoch: int) -> str:
        """Encode + back-project + fuse one keyframe; returns a drop reason or ''."""
        cfg = self.config.fusion
        depth_m = frame.depth_m
        if cfg.valid_pixels(depth_m) == 0:
            self.warn_once("no valid depth", "warn", f"dropping frames: no depth in [{cfg.depth_min}, "
                            f"{cfg.depth_max}] m (all zero/NaN/out of range; check the depth topic and its encoding)")
            return "no valid depth"
        reach = float(np.abs(frame.T_map_camera[:3, 3]).max()) + cfg.depth_max
        if reach >= self._map.max_extent_m:
            self.warn_once("pose out of range", "warn", f"dropping frames (pose out of range): the camera is "
                            f"{reach - cfg.depth_max:.0f} m from the map origin, beyond the map's "
                            f"+-{self._map.max_extent_m:.0f} m; give poses in a local map frame, not UTM/ECEF")
            return "pose out of range"
        with self._encoder_lock:
            encoded = self.model.encoder.encode(np.ascontiguousarray(frame.rgb))
        gh, gw = encoded.grid_hw
        if gh > depth_m.shape[0] or gw > depth_m.shape[1]:
            self.warn_once("depth too small", "warn", f"dropping frames (depth too small): the "
                            f"{depth_m.shape[1]}x{depth_m.shape[0]} depth image is coarser than the {gw}x{gh} "
                            "feature grid of the colour image; publish depth at (about) the colour resolution")
            return "depth too small"
        points, cells = cfg.cell_points(depth_m, frame.intrinsics, frame.T_map_camera, encoded.grid_hw)
        if cells.size == 0:
            return "no valid depth"
        features = encoded.features[torch.from_numpy(cells)]  # (N, d)
        samples = depth_samples(depth_m, frame.intrinsics, frame.T_map_camera, cfg.depth_min, cfg.depth_max)
        with self._map_lock:
            if epoch != self._epoch:
                return "scene reset"
            self._track_columns()
            full = self._map.num_voxels >= self._map.max_voxels
            self._map.fuse(points, features, origin=frame.T_map_camera[:3, 3])
            self._version += 1
            self._fused += 1
            self._gravity.add_keyframe(frame.T_map_camera, samples)
            self._camera_path.add(frame.T_map_camera)
            self._newest_stamp = max(self._newest_stamp or -math.inf, frame.stamp_s)
        if full:
            self.warn_once("map full", "warn", f"the map is full ({self._map.max_voxels} voxels, parameter "
                           f"max_voxels): {self._map.evicted_voxels} voxels evicted ({self._map.eviction}), "
                           f"{self._map.dropped_full} points of new space dropped so far")
        return ""

    def wait_idle(self, timeout_s: float) -> bool:
        """True once no keyframe waits for the encoder (tools and tests; mapping continues)."""
        with self._wake:
            return self._wake.wait_for(lambda: self._mailbox is None and not self._busy, timeout_s)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._worker.join(timeout=30.0)
        self._requests.close()
        self._book.close()

    # ------------------------------------------------------------------ scene state
    def _track_columns(self) -> None:
        """Keep the incremental CFG's column sums on the live map (caller holds the map lock): a new,
        loaded or re-levelled map, or another pos_z after an adapter swap, pays one pass over the map."""
        rope = self.model.config.grid.pos_z == "rope"
        if self._map.columns is None or self._map.columns.rope != rope:
            self._map.track_columns(rope)

    def _map_options(self) -> dict:
        return {"max_voxels": self.config.max_voxels, "eviction": self.config.eviction,
                "device": self.config.map_device}

    def _scene(self) -> tuple[VoxelMap, float | None]:
        """A copy of the map and its newest frame stamp, made once per change: readers never
        see a half-fused frame and fusion never waits for a reader."""
        with self._map_lock:
            if self._snapshot is None or self._snapshot[0] != self._version:
                self._track_columns()
                self._snapshot = (self._version, self._map.snapshot(), self._newest_stamp)  # copy on write
            return self._snapshot[1], self._snapshot[2]

    def snapshot(self) -> VoxelMap:
        """A consistent copy of the current map (shared between readers: do not modify it)."""
        return self._scene()[0]

    def _check_gravity(self) -> None:
        """Re-estimate the up direction (at most every few s, outside the map lock); warn once
        past ``gravity_warn_deg``; with ``align_gravity`` level the map and later poses."""
        with self._map_lock:
            if not self._gravity.due(self._version):
                return
            version, (points, cameras) = self._version, self._gravity.inputs()
        R = self._gravity.update(version, points, cameras, self._map.voxel_size)
        e = self._gravity.confirmed
        if R is not None:
            with self._map_lock:
                if self._version != version:  # the next report retries on the newer map
                    return
                self._map = relevel_map(self._map, R, self.model.new_voxel_map(**self._map_options()))
                self._gravity.rotate(R)
                self._camera_path.rotate(R)
                self._keyframes.reset()  # its last pose is in the old frame
                self._epoch += 1  # a keyframe posed in the old frame must not be fused
                self._version += 1
            self.warn_once("gravity level", "info", f"levelled the map by {e.angle_deg:.1f} deg (align_gravity; "
                           f"{self._gravity.leveled_deg:.1f} deg in all): up from the {e.source}")
        elif e is not None and e.angle_deg > self.config.gravity_warn_deg \
                and not self._gravity.warned:  # the camera prior alone is no evidence: cameras are pitched
            self._gravity.warned = True
            self.warn_once("gravity", "warn", (
                f"the map frame is tilted {e.angle_deg:.0f} deg from gravity (estimated from the {e.source}): "
                "height and column pooling assume z up; give a z-up map frame or set align_gravity: true"))

    def stats(self) -> SceneStats:
        """Counters and CFG size now (coordinates only, no copy: cheap enough for ~1 Hz)."""
        self._check_worker()
        self._check_gravity()
        pending = self._requests.pending()
        with self._map_lock:
            if self._stats_cache is None or self._stats_cache[0] != self._version:
                self._stats_cache = (self._version, grid_stats(self._map, self.model.config.grid))
            tokens, compression, preservation = self._stats_cache[1]
            return SceneStats(self._received, sum(self._drops.values()), self._fused, self._map.num_voxels, tokens,
                              compression, preservation, self._map.memory_bytes(), self._newest_stamp,
                              self.model_name, dict(self._drops), pending, self.worker_restarts,
                              self._gravity.plane_angle_deg(),
                              self._gravity.leveled_deg, self._map.evicted_voxels, self._map.dropped_full,
                              self._answering_counters())

    def _answering_counters(self) -> dict[str, int]:
        """Model calls, the requests they answered, and the prefix cache's memory and use."""
        c = self.model.prefix_cache.stats()
        return {"batches": self._requests.batches, "batched_requests": self._requests.batched_requests,
                "prefix_cache_entries": c.entries, "prefix_cache_bytes": c.bytes, "prefix_cache_max_bytes": c.max_bytes,
                "prefix_cache_hits": c.hits, "prefix_cache_misses": c.misses, "prefix_cache_evictions": c.evictions}

    def cloud(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The current CFG cells for display, see :func:`grid_cloud`."""
        return grid_cloud(self.snapshot(), self.model.config.grid)

    def version(self) -> int:
        """Changes whenever the map does (fusion, reset, load)."""
        with self._map_lock:
            return self._version

    def reset(self) -> int:
        """Empty the map and the frame counters (dialogue histories are kept); returns voxels dropped."""
        with self._wake:
            self._mailbox = None
        with self._map_lock:
            dropped = self._map.num_voxels
            self._map.reset()
            self._reset_state()
        return dropped

    def remove_stale_temps(self) -> list[Path]:
        """Delete temp files of saves killed mid-write (start-up clean-up of every writable dir)."""
        return scene_files.remove_killed_saves(self.config)

    def save(self, path: str = "", overwrite: bool = False) -> tuple[Path, int]:
        """Write the scene atomically; '' = <scene_dir>/scene_<time>.safetensors, relative = under
        scene_dir, a directory (or a path ending in '/') = a new scene_<time> file in it."""
        target = scene_files.save_target(self.config, path, overwrite)
        shared, newest = self._scene()
        vmap = copy.copy(shared)  # same tensors (save only reads them), own metadata dict
        vmap.metadata = {**shared.metadata, "scene_stamp": "" if newest is None else repr(newest),
                         CAMERA_PATH_KEY: self._camera_path.to_metadata()}
        try:
            vmap.save(target)
        except OSError as exc:
            raise RequestRefused(f"cannot write {target}: {exc.strerror or exc}") from exc
        return target, vmap.num_voxels

    def load(self, path: str) -> tuple[Path, int]:
        """Replace the scene by a saved one; on any error the current scene is unchanged."""
        if not path.strip():
            raise RequestRefused("path is required")
        target = scene_files.resolve(self.config, path)
        try:
            vmap = VoxelMap.load(target, device=self.config.map_device)
            check_map(vmap, self.model.config, self.model.encoder.encoder_id)
            path = CameraPath.from_metadata(vmap.metadata)
        except (ValueError, FileNotFoundError, OSError) as exc:
            raise RequestRefused(f"cannot load scene {target}: {exc}") from exc
        stamp = vmap.metadata.get("scene_stamp", "")
        with self._wake:
            self._mailbox = None
        with self._map_lock:
            self._map = vmap
            self._reset_state()
            self._newest_stamp = float(stamp) if stamp else None
            self._camera_path = path
            self._gravity.seed_from_map(vmap.centers.cpu().numpy())
        return target, vmap.num_voxels

    # ------------------------------------------------------------------ questions
    def history(self, session_id: str) -> list[tuple[str, str]] | None:
        """The remembered (question, answer) turns of a dialogue session, oldest first."""
        return self._book.history(session_id)

    def ask(self, question: str, situation: str = "", task: str = "", session_id: str = "",
            anchor: tuple[float, float, float] | None = None, anchor_radius: float = 0.0,
            control: RequestControl | None = None, anchor_size: tuple[float, float, float] | None = None) -> Reply:
        """Answer a question / dialogue turn / caption request; raises RequestRefused.

        The referred region is a box (``anchor`` centre + ``anchor_size`` extents, when any
        extent is > 0: an object's box, as the paper marks it) or else a sphere of
        ``anchor_radius`` around ``anchor``."""
        task = task.strip() or ("dialogue" if session_id else "qa")
        if task not in ASK_TASKS:
            raise RequestRefused(f"unknown task {task!r}; use one of {', '.join(ASK_TASKS)} (or '' for qa)")
        self._check_text("question", question)
        self._check_text("situation", situation, required=False)
        if task == "object_caption" and anchor is None:
            raise RequestRefused("object_caption needs use_anchor=true and anchor_point (the object to describe)")
        radius = size = None
        if anchor is not None:
            extents = tuple(float(v) for v in anchor_size or (0.0, 0.0, 0.0))
            if not all(math.isfinite(v) for v in (*anchor, anchor_radius, *extents)) or anchor_radius < 0 \
                    or min(extents) < 0:
                raise RequestRefused(f"anchor_point {anchor}, anchor_radius {anchor_radius} and anchor_size "
                                     f"{extents} must be finite (radius and sizes >= 0)")
            if any(extents):
                size = extents
            else:
                radius = anchor_radius or self.config.default_anchor_radius or self.model.config.anchor_radius
        query = SceneQuery(task, question.strip(), situation.strip() or None, self.history(session_id),
                           tuple(float(v) for v in anchor) if anchor is not None else None, radius, size)
        record = Interaction(uuid.uuid4().hex, session_id, "ask", task, question.strip(), situation.strip(),
                             query.anchor_center, radius or 0.0, anchor_size=size)
        return self._answer(query, record, control)

    def plan(self, goal: str, session_id: str = "", control: RequestControl | None = None) -> Reply:
        """A step-by-step plan for ``goal`` in the mapped scene; raises RequestRefused."""
        self._check_text("goal", goal)
        query = SceneQuery("plan", plan_instruction(goal), history=self.history(session_id))
        record = Interaction(uuid.uuid4().hex, session_id, "plan", "plan", goal.strip())
        reply = self._answer(query, record, control)
        reply.steps = split_plan_steps(reply.answer)
        return reply

    def _check_text(self, name: str, text: str, required: bool = True) -> None:
        if required and not text.strip():
            raise RequestRefused(f"{name} is empty")
        if len(text) > self.config.max_question_chars:
            raise RequestRefused(f"{name} has {len(text)} characters; the limit is {self.config.max_question_chars} "
                                 "(parameter max_question_chars)")

    def _answer(self, query: SceneQuery, record: Interaction, control: RequestControl | None = None) -> Reply:
        start = time.monotonic()
        control = control or RequestControl()
        if self.stats().num_voxels == 0:
            raise RequestRefused("the scene is empty: no keyframe has been fused yet; check that rgb, depth, "
                                 "camera_info and poses arrive (see scene_status), or load_scene a saved one")
        answer, grounding, newest, tokens, where = self._requests.submit((query, record), control)
        record.answer, record.scene_stamp_s, record.scene_tokens = answer, newest, tokens
        record.grounding_score, record.latency = float(grounding), time.monotonic() - start
        if where is not None:
            points, weights = where.top(GROUNDING_TOP_K)
            record.grounding_points = [tuple(map(float, p)) for p in points.tolist()]
            record.grounding_weights, record.grounding_flat = [float(w) for w in weights], where.flat
        self._book.remember(record)
        message = "" if answer else "the model wrote an empty answer; give the right one with scene_feedback"
        return Reply(bool(answer), message, answer, record, grounding=where)

    def _answer_batch(self, jobs: list[Job]) -> None:
        """Answer queued requests in one generate call (the answering thread, holding the model
        lock): each job gets (answer, grounding score, scene stamp, scene tokens, grounding map) or an error."""
        scene, newest = self._scene()
        if scene.num_voxels == 0:
            for job in jobs:
                job.error = RequestRefused("the scene was reset while this request waited; ask again once mapped")
            return
        tokens = grid_stats(scene, self.model.config.grid)[0]
        queries = [job.payload[0] for job in jobs]
        try:
            answers = self.model.generate([scene] * len(jobs), queries, on_step=[_streamer(j.control) for j in jobs])
            grounding = [0.0] * len(jobs)
            scored = [i for i, job in enumerate(jobs) if answers[i] and not job.control.cancel.is_set()]
            if self.config.compute_grounding and scored:  # both passes of every answer in one call
                n = len(scored)
                lp = self.model.score([scene] * n + [None] * n, [queries[i] for i in scored] * 2,
                                      [answers[i] for i in scored] * 2)
                for k, i in enumerate(scored):
                    grounding[i] = float(lp[k] - lp[n + k])
            where = [None] * len(jobs)  # the per-column map: one forward + backward pass per answer
            for i in scored if self.config.compute_grounding else []:
                where[i] = answer_grounding(self.model, scene, queries[i], answers[i])
        except Exception as exc:
            if len(jobs) > 1:  # a request the model fails on is refused alone; the others are answered
                for job in jobs:
                    self._answer_batch([job])
                return
            self.warn_once("model failure", "error",
                           f"model failure on {jobs[0].payload[1].kind}: {type(exc).__name__}: {exc}")
            jobs[0].error = RequestRefused(f"the model failed ({type(exc).__name__}: {exc}); see the node log")
            return
        for job, answer, score, place in zip(jobs, answers, grounding, where):
            if job.control.cancel.is_set():
                job.error = RequestRefused("cancelled while answering")
            elif not math.isfinite(score):
                self.warn_once("non-finite score", "error", "the model gives non-finite scores: its weights are broken")
                job.error = RequestRefused("the model produced non-finite scores (broken weights?); load another "
                                           "adapter")
            else:
                job.result = (answer, score, newest, tokens, place)

    def feedback(self, interaction_id: str, corrected_answer: str, comment: str = "") -> Interaction:
        """The feedback record for an earlier interaction (logged; to publish); raises RequestRefused."""
        return self._book.feedback(interaction_id, corrected_answer, comment)

    # ------------------------------------------------------------------ adapters
    def load_adapter(self, bundle_path: str) -> str:
        """Hot-swap the LoRA bundle; returns the new model name. The old adapter stays on failure."""
        path = Path(bundle_path.strip()).expanduser()
        if not bundle_path.strip() or not path.is_dir():
            raise RequestRefused(f"bundle_path {bundle_path!r} is not a bundle directory")
        if not self._requests.model_lock.acquire(timeout=self.config.request_timeout):
            raise RequestRefused(f"the model stayed busy for {self.config.request_timeout:.0f} s; retry later")
        try:
            with self._encoder_lock:
                try:
                    self.model.load_bundle(path)
                except (ValueError, OSError) as exc:
                    raise RequestRefused(f"cannot load bundle {path}: {exc}; "
                                         "the previous adapter stays in use") from exc
                self.model_name = f"{self.model.config.base_model}+{path.resolve()}"
                with self._map_lock:
                    self.swap_note = self._keep_scene_for_adapter()
                    self._snapshot = self._stats_cache = None  # the bundle's grid config may differ
        finally:
            self._requests.model_lock.release()
        if self.swap_note:
            self._log("warn", self.swap_note)
        return self.model_name

    def _keep_scene_for_adapter(self) -> str:
        """After a swap (map lock held): '' if the map suits the new model; else a map of another
        voxel size is re-binned into the new one (each voxel's mean feature at its centre: the
        features come from the same vision encoder), and any other map is reset. Says which."""
        try:
            check_map(self._map, self.model.config, self.model.encoder.encoder_id)
            return ""
        except ValueError as exc:
            old, count = self._map, self._map.num_voxels
            self._map = self.model.new_voxel_map(**self._map_options())
            if old.feature_dim != self._map.feature_dim or old.voxel_size == self._map.voxel_size or \
                    old.metadata.get("encoder_id", self.model.encoder.encoder_id) != self.model.encoder.encoder_id:
                self._reset_state()
                return f"the new adapter cannot use the current scene ({exc}); scene reset ({count} voxels dropped)"
        self._map = relevel_map(old, np.eye(3), self._map)
        self._version += 1
        self._epoch += 1  # a keyframe encoded before the swap must not be fused at the new size
        return (f"scene kept: its {count} voxels of {old.voxel_size:g} m were re-binned into "
                f"{self._map.num_voxels} voxels of {self._map.voxel_size:g} m, the new adapter's voxel size")


def _streamer(control: RequestControl) -> Callable[[str], bool]:
    """Per-token feedback of one request in a batch; True (stop its row) once it is cancelled."""
    def on_step(text: str) -> bool:
        if control.progress is not None:
            control.progress("answering", 0, text)
        return control.cancel.is_set()

    return on_step
