"""LEO-VL: Qwen2.5-VL + condensed-feature-grid scene tokens + LoRA (paper §3.1, App. B).

Scene tokens replace ``<|image_pad|>`` placeholders between ``<|vision_start|>`` and
``<|vision_end|>`` through ``inputs_embeds``. Batches are left-padded so generation and
scoring share one layout; positions are ``cumsum(attention_mask) - 1`` on all three M-RoPE
axes. Decision (paper silent): scene tokens get plain 1D text positions, not Qwen's 2D image
positions, because CFG columns are a sparse set, not an image raster; their spatial layout
is carried by the RoPE-height / Fourier-xy terms already inside each token.
"""
from __future__ import annotations

import dataclasses
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from transformers import GenerationConfig as HFGenerationConfig
from transformers import (LogitsProcessorList, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, StoppingCriteria,
                          StoppingCriteriaList)
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from ..condensed_grid import CondensedGrid
from ..voxel_map import VoxelMap
from . import bundle as bundle_io
from .config import ConfigOverrides, GenerationConfig, LeoVLConfig, resolve_config
from .encoder import VisionEncoder, weights_fingerprint
from .prompts import PromptBuilder, SceneQuery
from .scene_tokens import SceneHeads, check_map, scene_grid
from .tokenizer import load_qwen_tokenizer


@dataclass
class SceneBatch:
    """One padded batch (left padding) ready for the LLM."""

    input_ids: torch.Tensor  # (B, L) long, pad = <|endoftext|>
    inputs_embeds: torch.Tensor  # (B, L, d) model dtype, scene tokens scattered in
    attention_mask: torch.Tensor  # (B, L) long, 0 on padding
    position_ids: torch.Tensor  # (B, L) long
    answer_lengths: list[int]  # answer tokens at the end of each row (0 without answers)
    num_scene_tokens: list[int]
    history_targets: torch.Tensor  # (B, L) bool: earlier assistant turns' tokens (chat format)


def _inject_lora(model: Qwen2_5_VLForConditionalGeneration, config: LeoVLConfig) -> PeftModel:
    """LoRA on the LLM projections (regex keeps the vision MLP out); freezes everything else."""
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, bias="none")
    with warnings.catch_warnings():  # peft 0.21 reads a property transformers 5 deprecated
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
        return get_peft_model(model, lora)


class LeoVL:
    """The model: encoder for mapping, scene tokens, LLM with LoRA, generation and scoring."""

    def __init__(self, model: Qwen2_5_VLForConditionalGeneration, tokenizer, config: LeoVLConfig,
                 seed: int = 0, overrides: ConfigOverrides | None = None) -> None:
        text_hidden = model.config.text_config.hidden_size
        if config.hidden_size != text_hidden:
            raise ValueError(f"config.hidden_size={config.hidden_size} but the base LLM has {text_hidden}")
        if model.config.vision_config.out_hidden_size != text_hidden:
            raise ValueError("vision tower output size differs from the LLM hidden size: not a Qwen2.5-VL model")
        self.tokenizer = tokenizer
        self._seed = seed
        self._overrides = overrides or ConfigOverrides()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            heads = SceneHeads(config).to(model.device)
        self._assemble(model, config, heads)

    def _assemble(self, model: Qwen2_5_VLForConditionalGeneration, config: LeoVLConfig, heads: SceneHeads,
                  adapter: dict[str, torch.Tensor] | None = None) -> None:
        """Set every part that depends on the weights or the config (construction and bundle
        loads both come here): LLM, LoRA (fresh, or ``adapter``'s weights), heads, encoder, prompts."""
        self.model, self.peft_model, self.heads = model.eval(), None, heads
        self._stored_config = config
        self._config = resolve_config(config, self._overrides)
        self.base_fingerprint = self._fingerprint()
        self.prompts = PromptBuilder(self.tokenizer, config.system_prompt, config.dialogue_format, config.answer_eos)
        self.encoder = VisionEncoder(model.model.visual, config.max_pixels, config.min_pixels)
        self.set_trainable(config.train_mode)  # 'adapter' injects a fresh LoRA from config
        if adapter is not None:
            set_peft_model_state_dict(self.peft_model, adapter)

    @property
    def config(self) -> LeoVLConfig:
        """The config the model runs with: :attr:`stored_config` + :attr:`overrides`, resolved
        once per change (:func:`resolve_config`); read-only from outside."""
        return self._config

    @property
    def stored_config(self) -> LeoVLConfig:
        """The model's own config (its bundle's, or the one it was built with); never overridden."""
        return self._stored_config

    @property
    def overrides(self) -> ConfigOverrides:
        return self._overrides

    def set_overrides(self, overrides: ConfigOverrides) -> None:
        """Run with ``overrides`` on top of the stored config, now and after every bundle load
        (a bad one raises ValueError and changes nothing)."""
        config = resolve_config(self._stored_config, overrides)
        self._overrides, self._config = overrides, config

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, qwen_config: Qwen2_5_VLConfig, leovl_config: LeoVLConfig, tokenizer=None,
                    seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "LeoVL":
        """Random init from configs (tests, or training from scratch); deterministic in ``seed``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration(qwen_config)
        model = model.to(device=device, dtype=dtype)
        return cls(model, tokenizer or load_qwen_tokenizer(), leovl_config, seed=seed)

    @classmethod
    def from_pretrained(cls, base: str | Path, bundle: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, allow_network: bool = False,
                        tokenizer=None) -> "LeoVL":
        """A Qwen2.5-VL checkpoint (local dir; hub id only with ``allow_network``) + optional bundle.

        ``base`` may itself be a full bundle (weights + heads + config in one directory).
        Weights are read with safetensors only.
        """
        from .loading import load_model  # loading builds on this module
        return load_model(base, bundle, device=device, dtype=dtype, allow_network=allow_network, tokenizer=tokenizer)

    def _fingerprint(self) -> str:
        inner = self.model.model
        return weights_fingerprint(inner.language_model.embed_tokens.weight, inner.visual.patch_embed.proj.weight)

    @property
    def device(self) -> torch.device:
        return self.model.model.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.model.language_model.embed_tokens.weight.dtype

    # ------------------------------------------------------------------ training modes
    def set_trainable(self, mode: Literal["adapter", "full"]) -> None:
        """'adapter': LoRA + heads train, all base weights frozen (paper). 'full': every LLM
        weight + heads train (no LoRA; existing LoRA is merged in). The vision tower stays
        frozen in both modes: map features are computed once and cached."""
        if mode not in ("adapter", "full"):
            raise ValueError(f"mode must be 'adapter' or 'full', got {mode!r}")
        if mode == "full" and self.peft_model is not None:
            self.model = self.peft_model.merge_and_unload()
            self.peft_model = None
        for p in self.model.parameters():
            p.requires_grad_(False)
        if mode == "adapter" and self.peft_model is None:
            with torch.random.fork_rng(devices=[]):  # LoRA A's random init: the same in every run and process
                torch.manual_seed(self._seed)
                self.peft_model = _inject_lora(self.model, self.config)
        if mode == "full":
            for p in self.model.model.language_model.parameters():
                p.requires_grad_(True)
            self.model.lm_head.weight.requires_grad_(True)
        for p in self.heads.parameters():
            p.requires_grad_(True)
        if mode != self._stored_config.train_mode:
            self._stored_config = dataclasses.replace(self._stored_config, train_mode=mode)
            self._config = resolve_config(self._stored_config, self._overrides)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters an optimiser should update (deduplicated: tied embeddings count once)."""
        seen, out = set(), []
        for p in list(self.model.parameters()) + list(self.heads.parameters()):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    @contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """Run the base LLM without LoRA (e.g. a SceneDPO reference); heads stay active."""
        if self.peft_model is None:
            raise ValueError("no LoRA adapter in 'full' train mode; keep a frozen copy as reference instead")
        with self.peft_model.disable_adapter():
            yield

    # ------------------------------------------------------------------ scenes
    def new_voxel_map(self, **kwargs) -> VoxelMap:
        """An empty map with this model's feature size, voxel size and encoder id."""
        vmap = VoxelMap(feature_dim=self.config.hidden_size, voxel_size=self.config.voxel_size, **kwargs)
        vmap.metadata["encoder_id"] = self.encoder.encoder_id
        return vmap

    def scene_grid(self, vmap: VoxelMap | None, query: SceneQuery | None = None) -> CondensedGrid | None:
        if vmap is not None:
            check_map(vmap, self.config, self.encoder.encoder_id)
        return scene_grid(vmap, query, self.config, self.heads, self.question_embeddings(query))

    def question_embeddings(self, query: SceneQuery | None) -> torch.Tensor | None:
        """(Q, d) input embeddings of the question's tokens when the grid selects columns by the
        question (``token_selection: question``), else None."""
        if query is None or self.config.grid.token_selection != "question":
            return None
        text = " ".join(t for t in (query.situation, query.instruction) if t)
        ids = torch.tensor(self.tokenizer.encode(text, add_special_tokens=False), device=self.device)
        return self.model.get_input_embeddings().weight.detach()[ids].float()

    def selection_key(self, query: SceneQuery) -> tuple | None:
        """What besides scene and region the scene tokens depend on: the question itself under
        ``token_selection: question`` (a key part for anything that reuses scene tokens)."""
        return (query.situation, query.instruction) if self.config.grid.token_selection == "question" else None

    def scene_tokens(self, vmap: VoxelMap | None, query: SceneQuery | None = None) -> torch.Tensor:
        """(T, d) float32 scene tokens (T = 0 for no / empty scene); differentiable in the heads."""
        grid = self.scene_grid(vmap, query)
        if grid is None:
            return torch.zeros(0, self.config.hidden_size, device=self.device)
        return self.heads(grid)

    # ------------------------------------------------------------------ batching
    def prepare_batch(self, scenes: Sequence[VoxelMap | None], queries: Sequence[SceneQuery],
                      answers: Sequence[str] | None = None) -> SceneBatch:
        """Left-padded ids/embeddings of prompt (+ answer) sequences, scene tokens in place."""
        if len(scenes) != len(queries) or (answers is not None and len(answers) != len(queries)):
            raise ValueError(f"got {len(scenes)} scenes, {len(queries)} queries, "
                             f"{'no' if answers is None else len(answers)} answers: lengths must match")
        if not queries:
            raise ValueError("empty batch")
        memo: dict[tuple, torch.Tensor] = {}  # a scene repeated in the batch (SceneDPO pairs) is built once
        tokens = []  # [(T_i, d)]
        for scene, query in zip(scenes, queries):
            center = None if query.anchor_center is None else tuple(map(float, query.anchor_center))
            key = (id(scene), center, query.anchor_radius, query.anchor_size, self.selection_key(query))
            if key not in memo:
                memo[key] = self.scene_tokens(scene, query)
            tokens.append(memo[key])
        counts = [int(t.shape[0]) for t in tokens]
        prompts = self.prompts.batch_prompt_ids_and_history_masks(queries, counts)
        ans = [self.prompts.answer_ids(a) for a in answers] if answers is not None else [[] for _ in prompts]
        seqs = [p + a for (p, _), a in zip(prompts, ans)]
        L, pad = max(map(len, seqs)), self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (L - len(s)) + s for s in seqs], device=self.device)  # (B, L)
        mask = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs], device=self.device)  # (B, L)
        history = torch.tensor([[False] * (L - len(s)) + h + [False] * len(a)
                                for s, (_, h), a in zip(seqs, prompts, ans)], device=self.device)  # (B, L)
        embeds = self.model.get_input_embeddings()(ids)  # (B, L, d)
        if sum(counts):
            is_scene = (ids == self.prompts.image_pad_id).unsqueeze(-1)  # (B, L, 1)
            embeds = embeds.masked_scatter(is_scene, torch.cat(tokens).to(embeds.dtype))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return SceneBatch(ids, embeds, mask, positions, [len(a) for a in ans], counts, history)

    def hidden_states(self, batch: SceneBatch) -> torch.Tensor:
        """(B, L, d) last-layer hidden states (after the final norm) of a prepared batch."""
        self.model.model.rope_deltas = None  # cached per batch shape by Qwen; never valid across batches
        return self.model.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False)[0]

    def logits(self, batch: SceneBatch, logits_to_keep: int = 0) -> torch.Tensor:
        """(B, L or logits_to_keep, V) next-token logits of a prepared batch."""
        hidden = self.hidden_states(batch)
        return self.model.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)

    # ------------------------------------------------------------------ scoring
    def sequence_logprobs(self, scenes: Sequence[VoxelMap | None], queries: Sequence[SceneQuery],
                          answers: Sequence[str], history_turns: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) summed log p of each answer's tokens and (B,) their counts; differentiable.

        ``history_turns``: also count the earlier assistant turns of "chat"-format queries
        (training on every turn of a session: one scene prefix, several supervised answers).
        The LM head runs on the target positions only (ragged, not B x longest answer): with
        a 152k vocabulary the logits of one long caption in a batch of short answers would
        otherwise cost more than the whole transformer.
        """
        batch = self.prepare_batch(scenes, queries, answers)
        hidden = self.hidden_states(batch)  # (B, L, d)
        B, L = batch.input_ids.shape
        lengths = torch.tensor(batch.answer_lengths, device=self.device)
        # Row b's answer fills its last lengths[b] positions; position t is predicted at t - 1.
        target = (torch.arange(1, L, device=self.device)[None, :] >= (L - lengths)[:, None])  # (B, L-1)
        if history_turns:
            target |= batch.history_targets[:, 1:]
            lengths = target.sum(-1)
        logits = self.model.lm_head(hidden[:, :-1][target]).float()  # (N, V), N = sum of lengths
        token_lp = -torch.nn.functional.cross_entropy(logits, batch.input_ids[:, 1:][target], reduction="none")
        row = torch.arange(B, device=self.device)[:, None].expand(B, L - 1)[target]  # (N,)
        return torch.zeros(B, device=self.device, dtype=token_lp.dtype).index_add(0, row, token_lp), lengths

    @torch.no_grad()
    def score(self, scenes: Sequence[VoxelMap | None], queries: Sequence[SceneQuery],
              answers: Sequence[str]) -> torch.Tensor:
        """(B,) summed log-likelihood of the given answers (no gradients)."""
        return self.sequence_logprobs(scenes, queries, answers)[0]

    def grounding_score(self, scene: VoxelMap | None, query: SceneQuery, answer: str,
                        other: VoxelMap | None = None) -> float:
        """log p(answer | scene) - log p(answer | other scene, default empty); ~0 = scene ignored."""
        lp = self.score([scene, other], [query, query], [answer, answer])
        return float(lp[0] - lp[1])

    # ------------------------------------------------------------------ generation
    def _hf_generation_config(self, gen: GenerationConfig) -> HFGenerationConfig:
        sampling = dict(temperature=gen.temperature, top_p=gen.top_p) if gen.do_sample else {}
        return HFGenerationConfig(
            num_beams=gen.num_beams, max_new_tokens=gen.max_new_tokens, length_penalty=gen.length_penalty,
            do_sample=gen.do_sample, **sampling, eos_token_id=[self.prompts.im_end_id, self.tokenizer.pad_token_id],
            pad_token_id=self.tokenizer.pad_token_id, use_cache=True)

    @torch.no_grad()
    def generate(self, scenes: Sequence[VoxelMap | None], queries: Sequence[SceneQuery],
                 generation: GenerationConfig | None = None,
                 on_step: Callable[[str], bool] | None = None) -> list[str]:
        """Answers for a batch of (scene, query) pairs; beam search by default (paper settings).

        ``on_step(text)`` is called after every generated token with the first query's best
        hypothesis so far (the top beam); returning True stops generation (cancel).

        The repetition penalty covers generated tokens only (the prompt is embeddings; as
        in LEO). It is passed as our own processor because transformers 5 maps left-padding
        lengths onto the *generated* tokens when only ``inputs_embeds`` are given, which
        silently exempts a padded row's first tokens and makes answers batch-dependent.
        """
        gen = generation or self.config.generation
        batch = self.prepare_batch(scenes, queries)
        processors = LogitsProcessorList()
        if gen.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(gen.repetition_penalty)))
        self.model.model.rope_deltas = None  # batch size and padding differ from the last call
        stopping = StoppingCriteriaList([_StepHook(self.tokenizer, on_step)] if on_step is not None else [])
        out = self.model.generate(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                  generation_config=self._hf_generation_config(gen), logits_processor=processors,
                                  stopping_criteria=stopping)
        self.model.model.rope_deltas = None
        # With inputs_embeds only, generate() returns just the new tokens.
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    # ------------------------------------------------------------------ bundles
    def save_bundle(self, path: str | Path) -> None:
        """Adapter bundle (LoRA + heads + config), or full weights in 'full' mode; atomic."""
        bundle_io.save_bundle(self, Path(path))

    def load_bundle(self, path: str | Path, weights_loaded: bool = False) -> None:
        """Hot-swap a bundle saved by :meth:`save_bundle`; mismatched base -> ValueError.
        ``weights_loaded``: the base was just loaded from this (full) bundle's own weights."""
        self._assemble(*bundle_io.read_bundle(self, Path(path), weights_loaded))


class _StepHook(StoppingCriteria):
    """Streams the top hypothesis to a callback and stops every sequence when it says so.

    Stopping criteria see the running sequences sorted best first (beam search passes its
    top-k continuations), so row 0 is the first query's best hypothesis at every step; a
    ``TextStreamer`` would not do: transformers refuses streamers with beam search.
    """

    def __init__(self, tokenizer, on_step: Callable[[str], bool]) -> None:
        self.tokenizer, self.on_step = tokenizer, on_step

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stop = bool(self.on_step(self.tokenizer.decode(input_ids[0], skip_special_tokens=True).strip()))
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def count_trainable_parameters(qwen_config: Qwen2_5_VLConfig, leovl_config: LeoVLConfig) -> dict[str, int]:
    """Trainable parameters per group for a config, built on the meta device (no weights)."""
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(qwen_config)
        heads = SceneHeads(leovl_config)
    total = sum(p.numel() for p in model.parameters())
    if leovl_config.train_mode == "adapter":
        peft_model = _inject_lora(model, leovl_config)
        llm = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    else:
        llm = sum(p.numel() for p in {id(p): p for p in model.model.language_model.parameters()}.values())
        llm += 0 if qwen_config.tie_word_embeddings else model.lm_head.weight.numel()
    fourier = sum(p.numel() for n, p in heads.named_parameters() if n.startswith("fourier_mlp"))
    w = sum(p.numel() for n, p in heads.named_parameters() if n == "fourier_w")  # 0 when W is fixed
    return {"llm": llm, "fourier_mlp": fourier, "fourier_w": w, "anchor": heads.anchor.numel(),
            "trainable": llm + fourier + w + heads.anchor.numel(), "base_total": total}
