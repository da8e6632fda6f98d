"""Real multi-process training: ``torchrun --nproc_per_node 2`` of ``leovl-train sft`` on CPU
processes (gloo), against one process with twice the gradient accumulation.

Shown: the two processes split every epoch (the logged samples of an epoch add up to the
data once, not twice: each process saw half), the loss curve equals the single process's
within 1e-4 (the same micro-batches reach each optimizer step; only the order of float sums
differs), only the main process writes logs, checkpoints and the bundle, the scene cache is
built once (by the main process), and a run killed after a checkpoint resumes to the same
weights as the uninterrupted run. SceneDPO runs on two processes too; ``build-scenes --shard
i/n`` splits the scenes.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import wait_for
from leovl_ros.training.adapters import convert_synthetic
from leovl_ros.training.data_cli import _shard
from leovl_ros.training.records import ConversionReport, read_records, write_records
from leovl_ros.training.train_cli import main as train_main

pytestmark = pytest.mark.slow  # four 2-process launches: ~1.5 min on 2 cores
REPO = Path(__file__).resolve().parents[1]
N_RECORDS = 16  # 2 processes x batch 2 -> 4 samples per step, 4 steps per epoch


def _config(root: Path, name: str, **optim) -> Path:
    cfg = {"output_dir": str(root / name), "seed": 0, "progress": False, "log_every": 1, "save_every": 2,
           "resume": None,
           "model": {"base": str(root / "base"), "init_random": {"hidden_size": 64, "layers": 2},
                     "leovl": {"grid": {"max_tokens": 64, "fourier_features": 16}, "max_pixels": 112 * 84}},
           "data": {"train": [str(root / "train.jsonl")]},
           "scenes": {"cache_dir": str(root / f"cache_{name}"), "synthetic_frames": 6, "synthetic_width": 112,
                      "synthetic_height": 84},
           "optim": {"lr": 5e-3, "warmup_steps": 0, "batch_size": 2, "max_steps": 8, **optim},
           "eval": {"every": 0}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(config: Path, command: str = "sft") -> subprocess.Popen:
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "leovl_ros.training.train_cli", command, "--config", str(config)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    qa = [r for r in convert_synthetic([0, 1], ConversionReport()) if r.task == "qa"]
    write_records(root / "train.jsonl", qa[: N_RECORDS // 2] + qa[-N_RECORDS // 2:])
    torch.set_num_threads(1)
    assert train_main(["sft", "--config", str(_config(root, "single", grad_accum=2))]) == 0  # also creates the base
    return root


def test_two_processes_train_like_one_with_double_accumulation(root):
    out = _finish(_torchrun(_config(root, "ddp", grad_accum=1)))
    ddp, single = _metrics(root / "ddp"), _metrics(root / "single")
    assert [m["step"] for m in ddp] == list(range(1, 9))  # each step logged once: one writer
    assert [m["samples"] for m in ddp] == [4] * 8  # both processes' micro-batches per step, summed
    for epoch in (0, 1):  # an epoch covers the data once between the two processes
        assert sum(m["samples"] for m in ddp if m["epoch"] == epoch) == N_RECORDS
    losses = [(a["loss"], b["loss"]) for a, b in zip(ddp, single)]
    assert all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in losses), losses
    assert losses[-1][0] < losses[0][0]  # it trains
    assert out.count("sft: 8 steps") == 1 and "per process: [2, 0]" in out  # rank 0 prints; cache built once
    assert sorted(p.name for p in (root / "ddp").iterdir()) == [
        "bundle", "checkpoint-2", "checkpoint-4", "checkpoint-6", "history.json", "metrics.jsonl"]


def test_a_killed_two_process_run_resumes_exactly(root):
    if not (root / "ddp" / "bundle").is_dir():
        pytest.skip("needs the uninterrupted two-process run of the test above")
    config = _config(root, "killed", grad_accum=1)
    proc = _torchrun(config)
    run = root / "killed"
    try:
        wait_for(lambda: (run / "checkpoint-2").is_dir() or proc.poll() is not None, 300, "the first checkpoint")
    finally:  # the launcher and both workers (torchrun starts them in sessions of their own), mid-run
        launcher = psutil.Process(proc.pid)
        for p in [launcher] + launcher.children(recursive=True):
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        proc.communicate()
    assert not (run / "bundle").exists(), "the run finished before it could be killed"
    config.write_text(config.read_text().replace("resume: null", "resume: auto"))
    out = _finish(_torchrun(config))
    assert "resumed from" in out
    for name in ("adapter_model.safetensors", "leovl_heads.safetensors"):
        a, b = load_file(root / "ddp" / "bundle" / name), load_file(run / "bundle" / name)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-7, rtol=0) for k in a), name


def test_scene_dpo_runs_on_two_processes(root):
    records = read_records(root / "train.jsonl")
    answers = sorted({r.response for r in records})
    prefs = [type(r).from_dict({**r.to_dict(), "rejected": next(a for a in answers if a != r.response)})
             for r in records]
    write_records(root / "pref.jsonl", prefs)
    config = _config(root, "dpo", grad_accum=1, max_steps=2)
    config.write_text(config.read_text().replace(str(root / "train.jsonl"), str(root / "pref.jsonl"))
                      .replace("cache_dpo", "cache_single"))  # the maps are cached already
    out = _finish(_torchrun(config, "dpo"))
    assert out.count("dpo: 2 steps") == 1 and "per process: [0, 0]" in out
    trained = [m["step"] for m in _metrics(root / "dpo") if "loss" in m]  # one writer: each step once
    assert trained == [1, 2] and (root / "dpo" / "bundle").is_dir()


def test_build_scenes_shards_cover_every_scene_once():
    ids = [f"scene{i:04d}_00" for i in range(10)]
    shards = [_shard(ids, f"{i}/3") for i in range(3)]
    assert sorted(sum(shards, [])) == ids and [len(s) for s in shards] == [4, 3, 3]
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            _shard(ids, bad)
