"""Configuration of the LEO-VL model (JSON round trip, stored in every adapter bundle).

Paper values (Table 6): LoRA r=16, alpha=16, dropout 0 on q,k,v,o,gate,up,down; beam search
with 5 beams, 256 new tokens, repetition penalty 3.0, length penalty 1.0. Everything else
here: Decision (paper silent), each kept configurable.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

from ..condensed_grid import GridConfig

# LLM projections only: a plain name list would also wrap the vision tower's MLP.
LLM_LORA_TARGETS = (
    r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)


@dataclass
class GenerationConfig:
    """Decoding settings; defaults are the paper's (Table 6)."""

    num_beams: int = 5
    max_new_tokens: int = 256
    repetition_penalty: float = 3.0
    length_penalty: float = 1.0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {self.num_beams}, {self.max_new_tokens}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclass
class LeoVLConfig:
    """Everything that defines a LEO-VL model on top of its Qwen2.5-VL base.

    Decision (paper silent):
    - ``fourier_mlp_hidden``: width of the 2-layer GELU MLP on the Fourier features
      (None = LLM hidden size). Its output layer starts at zero, so an untrained model sees
      exactly the vision-tower features (like LoRA's B = 0).
    - ``fourier_w``: "learned" (default) trains the Fourier projection W with the MLP;
      "fixed" keeps its N(0, 1) draw. The paper says W "is initialized" from N(0, 1) and
      cites learnable Fourier features (Li et al. 2021, its [44]), whose W trains, and lists
      the "position embedding" among the learnable parameters; so W is learned. It adds
      d/2 x 2 weights (3584 at 7B), so the 66M count of §4 cannot tell the two apart.
      The width F = d of App. D.2 is ``grid.fourier_features`` = None (W has d/2 rows).

    Bundles written before ``fourier_w`` existed stored ``grid.fourier_features`` (then 128
    by default, the tiny model's 32) and had a fixed W; :meth:`from_json`, which reads a
    bundle's stored config, gives a config without ``fourier_w`` the value "fixed", so such
    a bundle keeps its width (stored) and its W (redrawn from ``grid.fourier_seed``) and
    answers exactly as before.
    - ``anchor_radius``: radius (m) of the referred sphere when a query gives a centre only.
    - ``dialogue_format``: "inline" puts earlier turns into the one user turn of the
      Appendix B template as ``USER: .. ASSISTANT: ..`` (LEO style); "chat" writes them as
      earlier Qwen chat turns, scene tokens in the first.
    - ``answer_eos``: scored / trained answers end with ``<|im_end|>`` so the model learns
      to stop and SceneDPO compares complete answers.
    - ``train_mode``: "adapter" (paper: LoRA + heads) or "full" (all LLM weights + heads,
      for a model with no pretrained base). The vision tower is frozen in both: scene
      features are computed once and cached in voxel maps.
    - ``question_scorer_rank``: None = ``token_selection: question`` scores columns with the
      raw word embeddings; r = a learned QuestionScorer of rank r (model/question_scorer.py),
      trained by its own stage (training/question_scorer.py), saved with the heads.
    - ``question_rerank_hidden``: 0 = the scorer's key alone ranks the columns; h = its
      reranker (hidden width h) reorders the key's best columns by what surrounds them.
    """

    base_model: str
    hidden_size: int
    voxel_size: float = 0.2
    grid: GridConfig = field(default_factory=GridConfig)
    pos_xy: Literal["fourier", "none"] = "fourier"
    fourier_mlp_hidden: int | None = None
    fourier_w: Literal["learned", "fixed"] = "learned"
    anchor_radius: float = 0.5
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: str = LLM_LORA_TARGETS
    train_mode: Literal["adapter", "full"] = "adapter"
    max_pixels: int = 28 * 28 * 512
    min_pixels: int = 56 * 56
    system_prompt: str = "You are a helpful assistant."
    dialogue_format: Literal["inline", "chat"] = "inline"
    answer_eos: bool = True
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    question_scorer_rank: int | None = None
    question_rerank_hidden: int = 0

    def __post_init__(self) -> None:
        if self.pos_xy not in ("fourier", "none"):
            raise ValueError(f"pos_xy must be 'fourier' or 'none', got {self.pos_xy!r}")
        if self.train_mode not in ("adapter", "full"):
            raise ValueError(f"train_mode must be 'adapter' or 'full', got {self.train_mode!r}")
        if self.fourier_w not in ("learned", "fixed"):
            raise ValueError(f"fourier_w must be 'learned' or 'fixed', got {self.fourier_w!r}")
        if self.pos_xy == "fourier" and self.grid.fourier_features is None and self.hidden_size % 2:
            raise ValueError(f"F = d Fourier features need an even hidden_size, got {self.hidden_size}")
        if self.dialogue_format not in ("inline", "chat"):
            raise ValueError(f"dialogue_format must be 'inline' or 'chat', got {self.dialogue_format!r}")
        if self.hidden_size <= 0 or self.voxel_size <= 0 or self.anchor_radius <= 0:
            raise ValueError("hidden_size, voxel_size and anchor_radius must be positive")
        if self.question_scorer_rank is not None and not 0 < self.question_scorer_rank <= self.hidden_size:
            raise ValueError(f"question_scorer_rank must be None or in 1..{self.hidden_size}, "
                             f"got {self.question_scorer_rank}")
        if self.question_rerank_hidden < 0:
            raise ValueError(f"question_rerank_hidden must be >= 0 (0: no reranker), got {self.question_rerank_hidden}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}")

    @property
    def fourier_frequencies(self) -> int:
        """Rows of W: ``grid.fourier_features``, or d/2 (F = d, App. D.2) when unset."""
        return self.grid.fourier_features or self.hidden_size // 2

    @property
    def fourier_dim(self) -> int:
        """Width of the Fourier feature [cos 2piWp || sin 2piWp] (the MLP's input)."""
        return 2 * self.fourier_frequencies

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LeoVLConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"leovl config has unknown keys {unknown} (written by a newer version?)")
        missing = [k for k in ("base_model", "hidden_size") if k not in data]
        if missing:
            raise ValueError(f"leovl config lacks the required keys {missing}")
        for key, sub in (("grid", GridConfig), ("generation", GenerationConfig)):
            if isinstance(data.get(key), dict):
                data[key] = sub(**data[key])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "LeoVLConfig":
        """A stored config (a bundle's ``leovl_config.json``). Keys added since the bundle
        was written take the value its model was trained with: ``fourier_w`` "fixed"."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"leovl config is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("leovl config JSON must be an object")
        data.setdefault("fourier_w", "fixed")  # written before W was learned
        return cls.from_dict(data)


@dataclass(frozen=True)
class ConfigOverrides:
    """Settings a model runs with on top of its own (stored) config: the node's parameters,
    a recipe's ``model.leovl.grid`` for a trained bundle, an evaluation's generation keys.
    They change no weight shape, so they hold across adapter swaps."""

    voxel_size: float | None = None  # m; None = the model's
    grid: Mapping[str, Any] = field(default_factory=dict)  # GridConfig fields
    generation: Mapping[str, Any] = field(default_factory=dict)  # GenerationConfig fields

    def __post_init__(self) -> None:  # read-only copies: an override cannot change behind the model's back
        object.__setattr__(self, "grid", MappingProxyType(dict(self.grid)))
        object.__setattr__(self, "generation", MappingProxyType(dict(self.generation)))

    def __bool__(self) -> bool:
        return self.voxel_size is not None or bool(self.grid) or bool(self.generation)


def _replaced(obj: Any, changes: Mapping[str, Any], what: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; known: {', '.join(sorted(names))}")
    return dataclasses.replace(obj, **changes) if changes else obj


def resolve_generation(base: GenerationConfig, changes: Mapping[str, Any]) -> GenerationConfig:
    """``base`` with some fields replaced (validated); ``base`` itself is not changed."""
    return _replaced(base, changes, "generation")


def resolve_config(config: LeoVLConfig, overrides: ConfigOverrides | None) -> LeoVLConfig:
    """The config a model runs with: defaults (the dataclasses') + its stored config + the
    overrides, validated; ``config`` itself is never changed (a new object when overridden)."""
    if not overrides:
        return config
    voxel_size = config.voxel_size if overrides.voxel_size is None else overrides.voxel_size
    return dataclasses.replace(config, voxel_size=voxel_size, grid=_replaced(config.grid, overrides.grid, "grid"),
                               generation=resolve_generation(config.generation, overrides.generation))
