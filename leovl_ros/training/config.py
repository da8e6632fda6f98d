"""Training configuration: dataclasses with help text, loaded from YAML (yaml.safe_load).

Defaults are the paper's (Table 7: AdamW, weight decay 0.05, betas 0.9/0.999, lr 3e-5,
400 warmup steps, cosine decay, grad norm 5.0, 2 per GPU x 5 accumulation steps, bf16;
§4.4: SceneDPO w_a = w_s = 0.5, beta_a = 0.2, beta_s = 0.03, no reference model).
Relative paths are relative to the working directory. Unknown keys are an error (a typo
must not silently fall back to a default). ``leovl-train show-config`` prints every key.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from leovl_ros.parameters import setting as _help  # one way to declare a setting with its help text

from .gpt_score import DEFAULT_SYSTEM_PROMPT as JUDGE_SYSTEM_PROMPT
from .rephrase import DEFAULT_PROMPT as REPHRASE_PROMPT
from .scenes import ScenesConfig


@dataclass
class ModelSection:
    base: str = _help("Qwen2.5-VL checkpoint: a local folder, or a hub id when allow_network is true")
    bundle: str | None = _help("start from this adapter bundle (e.g. the SFT result for DPO)", None)
    allow_network: bool = _help("allow downloading a hub id", False)
    dtype: str = _help("weights dtype: auto (bfloat16 on CUDA with bf16 support, else float32) | float32 | bfloat16",
                       "auto")
    init_random: dict | None = _help(
        "create a random Qwen2.5-VL base at `base` when it does not exist: keyword arguments of "
        "leovl_ros.model.tiny.tiny_qwen25vl_config (tests; training from scratch with trainable: full)", None)
    leovl: dict = _help("LeoVLConfig overrides for a fresh model (voxel_size, grid, lora_r, ...); "
                        "with a bundle (which holds its config) only grid.pos_z / grid / max_tokens / "
                        "sample_seed / token_selection / question_share may be set: ablations continuing a trained model",
                        factory=dict)


@dataclass
class DataSection:
    train: list[str] = _help("JSONL record files to train on (tasks are mixed by shuffling)", factory=list)
    eval: list[str] = _help("JSONL record files for periodic evaluation", factory=list)
    task_repeat: dict[str, float] = _help("oversampling factor per task, e.g. {plan: 2.0} (default 1)",
                                          factory=dict)
    max_eval_records: int = _help("cap on eval records per evaluation (first N)", 256)
    history_turns: bool = _help("SFT: also train on the earlier assistant turns of records with a history "
                                "(needs model.leovl.dialogue_format: chat, where those turns are answers)", False)


@dataclass
class OptimSection:
    lr: float = _help("peak learning rate (Table 7)", 3e-5)
    weight_decay: float = _help("AdamW weight decay on matrices; biases / vectors get none", 0.05)
    betas: list[float] = _help("AdamW betas", factory=lambda: [0.9, 0.999])
    warmup_steps: int = _help("linear warmup, in optimizer steps", 400)
    schedule: str = _help("cosine | linear | constant (after warmup)", "cosine")
    max_grad_norm: float = _help("gradient clipping norm (0 = off)", 5.0)
    batch_size: int = _help("samples per device per micro-batch", 2)
    grad_accum: int = _help("micro-batches per optimizer step", 5)
    epochs: int = _help("passes over the training records", 5)
    loss_norm: str = _help("SFT loss: token (the summed answer-token NLL of the micro-batch / its answer tokens) | "
                           "sample (each sample's per-token mean, averaged over samples, as LEO)", "token")
    max_steps: int | None = _help("stop after this many optimizer steps (overrides epochs)", None)
    mixed_precision: str = _help("auto (bf16 where supported) | no | bf16 | fp16", "auto")


@dataclass
class RephraseSection:
    enabled: bool = _help("turn the model's correct answers into hard negatives by rephrasing them into plausible "
                          "wrong ones (paper §4.4; with generate_negatives)", True)
    rules: bool = _help("built-in rules for short answers: numbers +-1-2, yes<->no, opposite directions, colours and "
                        "object names swapped for others in the same scene's annotations", True)
    max_rule_words: int = _help("answers of at most this many words are rephrased by the rules", 4)
    endpoint: str | None = _help("OpenAI-compatible chat endpoint (base URL, e.g. http://host:8000/v1) for answers "
                                 "the rules cannot rephrase; null = off (the paper used GPT-4o)", None)
    model: str = _help("model name sent to the endpoint", "gpt-4o")
    api_key_env: str = _help("environment variable holding the endpoint's API key (sent when set)", "OPENAI_API_KEY")
    timeout_s: float = _help("seconds per endpoint request", 60.0)
    prompt: str = _help("endpoint prompt; {question}, {answer}, {situation} are filled in", REPHRASE_PROMPT)


@dataclass
class GPTScoreSection:
    endpoint: str | None = _help("OpenAI-compatible chat endpoint for GPT-Score (MSR3D's judge); null = off", None)
    model: str = _help("judge model name (MSR3D: gpt-4o-2024-08-06)", "gpt-4o-2024-08-06")
    api_key_env: str = _help("environment variable holding the endpoint's API key (sent when set)", "OPENAI_API_KEY")
    timeout_s: float = _help("seconds per endpoint request", 60.0)
    tasks: list[str] = _help("tasks whose records (with accepted answers) are judged", factory=lambda: ["qa"])
    system_prompt: str = _help("the judge's system message (MSR3D's own is not published)", JUDGE_SYSTEM_PROMPT)


@dataclass
class DPOSection:
    w_a: float = _help("weight of the answer-preference term L_a", 0.5)
    w_s: float = _help("weight of the scene-preference term L_s", 0.5)
    beta_a: float = _help("beta of L_a", 0.2)
    beta_s: float = _help("beta of L_s", 0.03)
    w_nll: float = _help("weight of L_NLL on the chosen answer (paper: 1)", 1.0)
    nll: str = _help("sequence: -log pi(a_w | s_w, q) summed over the answer's tokens (paper) | token: per answer "
                     "token (the SFT scale)", "sequence")
    reference: str = _help("none (paper) | initial (the starting policy) | base (the base with the adapter "
                           "disabled); reference log-probs are computed once before training", "none")
    negatives_file: str | None = _help("JSONL preference records: (scene, question, response=chosen, rejected)",
                                       None)
    generate_negatives: bool = _help("generate answers with the current model for training records without a "
                                     "rejected answer; keep those that are wrong (EM-R = 0)", False)
    generate_tasks: list[str] = _help("tasks whose answers are generated as negatives (EM-R is meaningful for "
                                      "short answers)", factory=lambda: ["qa"])
    rephrase: RephraseSection = _help("hard negatives from correct answers (paper §4.4)", factory=RephraseSection)


@dataclass
class EvalSection:
    every: int = _help("evaluate every N optimizer steps (0 = only at the end)", 500)
    generate: int = _help("eval records to answer by generation for EM / EM-R at each evaluation", 0)
    generation: dict = _help("GenerationConfig overrides for evaluation (num_beams, max_new_tokens, ...)",
                             factory=dict)
    gpt_score: GPTScoreSection = _help("GPT-Score by an LLM judge (leovl-eval; off by default)",
                                       factory=GPTScoreSection)


@dataclass
class TrainConfig:
    output_dir: str = _help("checkpoints, final bundle and logs go here")
    model: ModelSection = _help("the model to train", factory=lambda: ModelSection(base=""))
    data: DataSection = _help("record files", factory=DataSection)
    scenes: ScenesConfig = _help("scene sources and the feature cache", factory=ScenesConfig)
    optim: OptimSection = _help("optimizer and schedule (Table 7)", factory=OptimSection)
    dpo: DPOSection = _help("SceneDPO (leovl-train dpo only)", factory=DPOSection)
    eval: EvalSection = _help("periodic evaluation", factory=EvalSection)
    trainable: str = _help("adapter (LoRA + heads, paper) | full (all LLM weights + heads)", "adapter")
    seed: int = _help("seed of initialisation, data order and negative scenes", 0)
    log_every: int = _help("log loss / lr every N optimizer steps", 10)
    log_with: list[str] = _help("training-curve trackers of accelerate, rank 0 only: auto (tensorboard when "
                                "installed) | [] (none) | names: tensorboard, wandb, mlflow, comet_ml, aim, clearml, "
                                "dvclive, swanlab, trackio, all; TensorBoard writes to output_dir/leovl-<sft|dpo>",
                                factory=lambda: ["auto"])
    save_every: int = _help("checkpoint every N optimizer steps (0 = only the final bundle)", 1000)
    save_total_limit: int = _help("keep at most N checkpoints (0 = all)", 3)
    resume: str | None = _help("checkpoint folder to resume from, or 'auto' for the latest in output_dir", None)
    progress: bool = _help("show a progress bar", True)

    def _dialogue_format(self) -> str | None:
        """model.leovl's dialogue format, else that of the bundle the run continues (a bundle, or a
        full bundle as base, holds its config); None for a bundle that does not exist yet."""
        if "dialogue_format" in self.model.leovl:
            return self.model.leovl["dialogue_format"]
        for path in (self.model.bundle, self.model.base):
            stored = Path(path) / "leovl_config.json" if path else None
            if stored is not None and stored.is_file():
                return json.loads(stored.read_text()).get("dialogue_format", "inline")
        return None if self.model.bundle else "inline"

    def __post_init__(self) -> None:
        if self.trainable not in ("adapter", "full"):
            raise ValueError(f"trainable must be 'adapter' or 'full', got {self.trainable!r}")
        o, d = self.optim, self.dpo
        if o.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"optim.schedule must be cosine | linear | constant, got {o.schedule!r}")
        if o.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"optim.mixed_precision must be auto | no | bf16 | fp16, got {o.mixed_precision!r}")
        if o.batch_size < 1 or o.grad_accum < 1 or o.epochs < 1 or len(o.betas) != 2:
            raise ValueError("optim: batch_size, grad_accum and epochs must be >= 1 and betas two numbers")
        if self.data.history_turns and self._dialogue_format() not in ("chat", None):
            raise ValueError("data.history_turns needs model.leovl.dialogue_format: chat (inline history is "
                             "user text, not answers)")
        if o.loss_norm not in ("token", "sample"):
            raise ValueError(f"optim.loss_norm must be token | sample, got {o.loss_norm!r}")
        from accelerate.utils import LoggerType

        unknown = sorted(set(self.log_with) - set(LoggerType.list()) - {"auto"})
        if unknown or ("auto" in self.log_with and len(self.log_with) > 1):
            raise ValueError(f"log_with: {unknown or self.log_with} is not auto, [] or a list of "
                             f"{', '.join(LoggerType.list())}")
        if d.rephrase.max_rule_words < 1:
            raise ValueError(f"dpo.rephrase.max_rule_words must be >= 1, got {d.rephrase.max_rule_words}")
        if d.reference not in ("none", "initial", "base") or d.nll not in ("token", "sequence"):
            raise ValueError(f"dpo.reference must be none | initial | base and dpo.nll token | sequence, "
                             f"got {d.reference!r}, {d.nll!r}")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                         f"valid keys of {where or 'the top level'}: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and value is not None:
            value = _build(hint, value, f"{where}{name}.")
        else:
            value = _coerce(value, hint, where + name)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"config section {where or 'top level'}: {exc}") from exc


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check scalar types; numbers written like ``3e-5`` (a string to YAML 1.1) become floats."""
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        if typing.get_origin(hint) in (list, dict) or hint in (list, dict):
            return typing.get_origin(hint)() if typing.get_origin(hint) else hint()  # "key:" with nothing
        raise ValueError(f"config key {key} must not be empty")
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = [a for a in args if a is not type(None)] if union else [hint]
    base = typing.get_origin(kinds[0]) or kinds[0]
    if base is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"config key {key} must be a number, got {value!r}") from None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float, bool, str, list, dict) and (not isinstance(value, base) or
                                                        (base is int and isinstance(value, bool))):
        raise ValueError(f"config key {key} must be of type {base.__name__}, got {value!r}")
    return value


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML training config; ``overrides`` (nested dict) is merged on top."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if overrides:
        data = _merge(data, overrides)
    for key in ("output_dir", "model"):
        if key not in data:
            raise ValueError(f"{path}: missing required key '{key}'")
    if "base" not in (data["model"] or {}):
        raise ValueError(f"{path}: missing required key 'model.base'")
    return _build(TrainConfig, data, "")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def describe(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """One 'key: default  # help' line per config key (for ``leovl-train show-config``)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"{prefix}{f.name}:  # {f.metadata.get('help', '')}")
            lines += describe(hints[f.name], prefix + "  ")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "<required>")
        help_text = f.metadata.get("help", "")
        lines.append(f"{prefix}{f.name}: {default!r}" + (f"  # {help_text}" if help_text else ""))
    return lines
