"""The training loop shared by SFT and SceneDPO: accelerate, AdamW + warmup/cosine, gradient
accumulation and clipping, progress bar, periodic evaluation, checkpoints, exact resume.

Multi-process (``torchrun`` / ``accelerate launch``, GPUs or CPU processes over gloo): each
process takes every n-th batch of the epoch's order, gradients are averaged across processes
(DDP), so n processes with accumulation k train like one process with accumulation n*k;
only the main process writes checkpoints, bundles and logs.

Curves: every log entry goes to ``output_dir/metrics.jsonl`` and to accelerate's trackers
(``log_with``; TensorBoard in ``output_dir/leovl-<kind>/`` by default when installed) as
``train/<key>`` and ``eval/<key>``: loss, lr, grad_norm, SFT tokens; SceneDPO's
``answer_loss`` (L_a), ``scene_loss`` (L_s), ``nll`` (L_NLL), ``answer_acc`` (preference
accuracy) and ``scene_acc``; evaluation NLL, EM / EM-LEO / EM-R, in_domain. On a machine without CUDA the
accelerator is told the CPU is the device, otherwise every launched process trains alone.

Checkpoints (``output_dir/checkpoint-<step>/``, written to a temp folder and renamed):
``bundle/`` (the adapter bundle the node loads), ``trainer_state.safetensors`` (optimizer
moments and every process's RNG state; safetensors only, nothing is unpickled) and ``trainer_state.json``
(step, epoch, position in the epoch, scheduler, log history). Data order is a seeded
permutation per epoch, so a resumed run skips the batches already seen and continues
exactly as an uninterrupted run would.

Decision (paper silent): weight decay applies to matrices only (LoRA A/B, the Fourier MLP
weights, full-mode weight matrices); biases, norms and the anchor vector get none.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from leovl_ros.model.leovl import LeoVL

from .config import TrainConfig
from .records import atomic_write_text

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class Policy(nn.Module):
    """The trainable model as one nn.Module, so accelerate / DDP see every trainable
    parameter; ``forward`` = ``LeoVL.sequence_logprobs`` -> (B,) summed log p, (B,) counts."""

    def __init__(self, leovl: LeoVL) -> None:
        super().__init__()
        self.llm = leovl.model
        self.heads = leovl.heads
        object.__setattr__(self, "leovl", leovl)  # not a submodule: its modules are the two above

    def forward(self, scenes, queries, answers, history_turns: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.leovl.sequence_logprobs(scenes, queries, answers, history_turns)


StepFn = Callable[[Callable, list], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class TrainResult:
    steps: int
    bundle: Path
    history: list[dict[str, Any]] = field(default_factory=list)


def trackers(names: Sequence[str]) -> list[str]:
    """``log_with`` resolved: "auto" is TensorBoard when installed (else nothing); a named
    tracker that is not installed is an error, not a silently empty curve."""
    available = {getattr(t, "value", str(t)) for t in get_available_trackers()}
    if list(names) == ["auto"]:
        return ["tensorboard"] if "tensorboard" in available else []
    missing = [n for n in names if n != "all" and n not in available]
    if missing:
        raise ValueError(f"log_with: {', '.join(missing)} not installed (pip install it, or drop it from log_with)")
    return list(names)


def _hparams(cfg: TrainConfig) -> dict[str, Any]:
    """The config flattened to scalars (TensorBoard's hparams take no lists, dicts or None)."""
    def flat(d: dict, prefix: str = "") -> Iterable[tuple[str, Any]]:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield prefix + k, v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return dict(flat(dataclasses.asdict(cfg)))


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    mp = cfg.optim.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # find_unused_parameters: the anchor only gets gradients from object-caption samples.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # cpu=True without CUDA: accelerate only joins torchrun's processes (gloo) when told the
    # CPU is the device; left alone, each process would train the whole data by itself.
    return Accelerator(gradient_accumulation_steps=cfg.optim.grad_accum, mixed_precision=mp, kwargs_handlers=[ddp],
                       cpu=not torch.cuda.is_available(), log_with=trackers(cfg.log_with) or None,
                       project_dir=cfg.output_dir)


def prefetch_scenes(accelerator: Accelerator, scenes, scene_ids: Iterable[str], progress: bool) -> None:
    """Fill the scene cache once: the main process builds the missing maps, then the others
    read them from the cache (cache writes are atomic); prints how many each process built."""
    with accelerator.main_process_first():
        scenes.prefetch(scene_ids, progress=progress and accelerator.is_main_process)
    built = gather_object([scenes.built])
    accelerator.print(f"scene cache: {sum(built)} maps built (per process: {built}), {scenes.cache.hits} read by the "
                      f"main process from {scenes.config.cache_dir}")


def _optimizer(model: LeoVL, cfg: TrainConfig) -> torch.optim.AdamW:
    params = model.trainable_parameters()
    if not params:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.optim.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))


def plan(n_items: int, cfg: TrainConfig, num_processes: int) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, epochs the loop starts) for ``n_items`` samples."""
    o = cfg.optim
    batches_per_epoch = math.ceil(n_items / (o.batch_size * num_processes))
    steps_per_epoch = math.ceil(batches_per_epoch / o.grad_accum)
    total_steps = o.max_steps or o.epochs * steps_per_epoch
    return steps_per_epoch, total_steps, max(o.epochs, math.ceil(total_steps / steps_per_epoch))


def _order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def find_checkpoint(output_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / "trainer_state.json").is_file():
            raise ValueError(f"resume: {path} is not a checkpoint folder (no trainer_state.json)")
        return path
    ckpts = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


def _save_checkpoint(path: Path, model: LeoVL, optimizer, scheduler, state: dict, limit: int,
                     rng_states: list[torch.Tensor]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        model.save_bundle(tmp / "bundle")
        tensors = {"rng/torch": torch.get_rng_state()}
        tensors.update({f"rng/torch/{rank}": s for rank, s in enumerate(rng_states)})
        if torch.cuda.is_available():
            tensors.update({f"rng/cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        opt = optimizer.state_dict()
        for idx, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"optim/{idx}/{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
        save_file(tensors, str(tmp / "trainer_state.safetensors"))
        full = {**state, "param_groups": opt["param_groups"], "scheduler": scheduler.state_dict()}
        (tmp / "trainer_state.json").write_text(json.dumps(full, indent=1))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if limit > 0:
        ckpts = sorted(path.parent.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        for old in ckpts[:-limit]:
            shutil.rmtree(old, ignore_errors=True)


def _load_trainer_state(path: Path, optimizer, scheduler, rank: int = 0) -> dict:
    full = json.loads((path / "trainer_state.json").read_text())
    tensors = load_file(str(path / "trainer_state.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": full.pop("param_groups")})
    scheduler.load_state_dict(full.pop("scheduler"))
    torch.set_rng_state(tensors.get(f"rng/torch/{rank}", tensors["rng/torch"]))
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return full


def train_loop(cfg: TrainConfig, accelerator: Accelerator, model: LeoVL, items: Sequence[Any], step_fn: StepFn,
               eval_fn: Callable[[], dict[str, float]] | None = None, kind: str = "sft") -> TrainResult:
    """Run ``step_fn(policy, batch) -> (loss, logs)`` over ``items`` as configured; returns the
    final bundle path (``output_dir/bundle``) and the log history."""
    if not items:
        raise ValueError(f"no training samples for {kind}: check data.train")
    out = Path(cfg.output_dir)
    o = cfg.optim
    ckpt = find_checkpoint(out, cfg.resume)
    if ckpt is not None:
        model.load_bundle(ckpt / "bundle")
        if model.config.train_mode != cfg.trainable:
            model.set_trainable(cfg.trainable)
    set_seed(cfg.seed)
    optimizer = _optimizer(model, cfg)
    steps_per_epoch, total_steps, epochs = plan(len(items), cfg, accelerator.num_processes)
    scheduler = get_scheduler(SCHEDULES[o.schedule], optimizer, num_warmup_steps=o.warmup_steps,
                              num_training_steps=total_steps)
    state = {"kind": kind, "global_step": 0, "epoch": 0, "batches_done": 0, "history": []}
    if ckpt is not None:
        state.update(_load_trainer_state(ckpt, optimizer, scheduler, accelerator.process_index))
        accelerator.print(f"resumed from {ckpt} at step {state['global_step']}")
    policy = Policy(model)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    params = model.trainable_parameters()
    bar = tqdm(total=total_steps, initial=state["global_step"], desc=kind, unit="step",
               disable=not (cfg.progress and accelerator.is_main_process))
    window: dict[str, list[float]] = {}
    samples = 0  # this process's samples since the last log entry
    metrics_file = out / "metrics.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)  # checkpoints may come before the first log line
        if ckpt is None:
            metrics_file.unlink(missing_ok=True)  # a fresh run starts a fresh log; a resumed one appends

    accelerator.init_trackers(f"leovl-{kind}", config=_hparams(cfg))  # rank 0 only (accelerate)

    def log(entry: dict) -> None:
        state["history"].append(entry)
        if accelerator.is_main_process:
            with metrics_file.open("a") as f:
                f.write(json.dumps(entry) + "\n")
        accelerator.log({(k if k.startswith("eval/") else f"train/{k}"): v for k, v in entry.items()
                         if k != "step" and isinstance(v, (int, float))}, step=entry["step"])

    def evaluate() -> None:
        if eval_fn is not None and state.get("last_eval") != state["global_step"]:
            state["last_eval"] = state["global_step"]
            policy.eval()
            with torch.no_grad():
                log({"step": state["global_step"], **{f"eval/{k}": v for k, v in eval_fn().items()}})
            policy.train()

    if cfg.eval.every and state["global_step"] == 0:
        evaluate()  # the starting point of the curves (Fig. 8)
    policy.train()
    done = state["global_step"] >= total_steps
    while not done and state["epoch"] < epochs:
        if hasattr(step_fn, "set_epoch"):  # e.g. SceneDPO redraws its negative scenes every epoch
            step_fn.set_epoch(state["epoch"])
        ordered = [items[i] for i in _order(len(items), cfg.seed, state["epoch"])]
        loader = accelerator.prepare_data_loader(DataLoader(ordered, batch_size=o.batch_size, collate_fn=list))
        if state["batches_done"]:
            loader = accelerator.skip_first_batches(loader, state["batches_done"])
        for batch in loader:
            with accelerator.accumulate(policy):
                loss, logs = step_fn(policy, batch)
                accelerator.backward(loss)
                for k, v in {"loss": float(loss.detach()), **logs}.items():
                    window.setdefault(k, []).append(v)
                samples += len(batch)
                state["batches_done"] += 1
                if not accelerator.sync_gradients:
                    continue
                grad_norm = accelerator.clip_grad_norm_(params, o.max_grad_norm) if o.max_grad_norm > 0 else None
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state["global_step"] += 1
            step = state["global_step"]
            bar.update(1)
            recent = window["loss"][-o.grad_accum:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step % max(1, cfg.log_every) == 0 or step == total_steps:
                means = {k: sum(v) / len(v) for k, v in window.items()}
                means = {k: accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean").item()
                         for k, v in means.items()}
                entry = {"step": step, "epoch": state["epoch"], "lr": scheduler.get_last_lr()[0], **means,
                         "samples": int(accelerator.reduce(torch.tensor(samples, device=accelerator.device), "sum"))}
                samples = 0
                if grad_norm is not None:
                    entry["grad_norm"] = float(grad_norm)
                log(entry)
                window.clear()
            if cfg.eval.every and step % cfg.eval.every == 0:
                evaluate()
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                accelerator.wait_for_everyone()
                rng_states = gather_object([torch.get_rng_state()])  # every process's, for an exact resume
                if accelerator.is_main_process:
                    _save_checkpoint(out / f"checkpoint-{step}", model, optimizer, scheduler, state,
                                     cfg.save_total_limit, rng_states)
            if step >= total_steps:
                done = True
                break
        else:
            state["epoch"] += 1
            state["batches_done"] = 0
    bar.close()
    evaluate()
    accelerator.wait_for_everyone()
    bundle = out / "bundle"
    if accelerator.is_main_process:
        model.save_bundle(bundle)
        atomic_write_text(out / "history.json", json.dumps(state["history"], indent=1))
    accelerator.end_training()  # flushes and closes the trackers
    return TrainResult(state["global_step"], bundle, state["history"])
