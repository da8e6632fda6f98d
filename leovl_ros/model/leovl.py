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
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from ..condensed_grid import CondensedGrid
from ..token_selection import QuestionKey
from ..voxel_map import VoxelMap
from . import bundle as bundle_io
from .config import ConfigOverrides, GenerationConfig, LeoVLConfig, resolve_config
from .encoder import VisionEncoder, weights_fingerprint
from .generation import hf_generate
from .prefix_cache import PrefixCache, ScenePrefix, prefill, prefix_groups, suffix_inputs
from .prompts import PromptBuilder, SceneQuery
from .question_scorer import QuestionScorer
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
        self.prefix_cache = PrefixCache()  # off until a caller with fixed weights sets max_bytes (the assistant)
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
        self.prefix_cache.clear()  # prefixes of the old grid / prompt settings

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
        for name, p in self.heads.named_parameters():
            # The question scorer trains in its own stage (training/question_scorer.py): token
            # selection is discrete, so the answer loss gives it no gradient (and DDP rejects
            # parameters without one).
            p.requires_grad_(not name.startswith("question_scorer."))
        if mode != self._stored_config.train_mode:
            self._stored_config = dataclasses.replace(self._stored_config, train_mode=mode)
            self._config = resolve_config(self._stored_config, self._overrides)

    def add_question_scorer(self, rank: int, seed: int = 0, question_share: float | None = None,
                            rerank_hidden: int = 0) -> None:
        """A fresh QuestionScorer of ``rank`` (with a reranker of width ``rerank_hidden``, 0:
        none) in the heads (replacing any), to be trained by training/question_scorer.py; it is
        saved with the heads, its sizes (and the ``grid.question_share`` it is used with, when
        given) with the config."""
        grid = self._stored_config.grid
        if question_share is not None:
            grid = dataclasses.replace(grid, question_share=question_share)
        self._stored_config = dataclasses.replace(self._stored_config, question_scorer_rank=rank, grid=grid,
                                                  question_rerank_hidden=rerank_hidden)
        self._config = resolve_config(self._stored_config, self._overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            scorer = QuestionScorer(self.config.hidden_size, rank, rerank_hidden)
            self.heads.question_scorer = scorer.to(self.heads.anchor.device)
        self.prefix_cache.clear()  # scene tokens selected by the old scoring

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

    def question_embeddings(self, query: SceneQuery | None) -> torch.Tensor | QuestionKey | None:
        """What ``token_selection: question`` compares the map's columns with, else None: the
        learned scorer's (1, d) key of the question when the model has one (with its reranker,
        as a QuestionKey, when it has that too), else the (Q, d) input embeddings of the
        question's tokens."""
        if query is None or self.config.grid.token_selection != "question":
            return None
        words = self.question_words(" ".join(t for t in (query.situation, query.instruction) if t))
        scorer = self.heads.question_scorer
        if scorer is None:
            return words
        with torch.no_grad():
            key = scorer(words)
        return QuestionKey(key, scorer.rerank) if scorer.rerank_hidden else key

    def question_words(self, text: str) -> torch.Tensor:
        """(Q, d) float32 input embeddings of the tokens of ``text`` (frozen: no gradient)."""
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

    # ------------------------------------------------------------------ scene prefixes
    def scene_prefix(self, scene: VoxelMap | None, query: SceneQuery) -> ScenePrefix:
        """The prompt up to and including ``<|vision_end|>``, prefilled once per (scene, region,
        grid and prompt settings) while ``prefix_cache`` is on, else computed for this call."""
        if not self.prefix_cache.enabled:
            return prefill(self, scene, query)
        region = (None if query.anchor_center is None else tuple(map(float, query.anchor_center)),
                  query.anchor_radius, None if query.anchor_size is None else tuple(map(float, query.anchor_size)))
        key = (region, repr(self.config.grid), self.config.anchor_radius, self.config.system_prompt,
               str(self.dtype), str(self.device), self.selection_key(query))
        return self.prefix_cache.get(scene, key, lambda: prefill(self, scene, query))

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
        lengths = torch.tensor(batch.answer_lengths, device=self.device)
        target = self._answer_targets(lengths, batch.input_ids.shape[1])
        if history_turns:
            target |= batch.history_targets[:, 1:]
            lengths = target.sum(-1)
        return self._target_logprobs(self.hidden_states(batch), batch.input_ids, target), lengths

    def _answer_targets(self, lengths: torch.Tensor, L: int) -> torch.Tensor:
        """(B, L-1) bool: row b's answer fills its last lengths[b] positions; position t is predicted at t - 1."""
        return torch.arange(1, L, device=self.device)[None, :] >= (L - lengths)[:, None]

    def _target_logprobs(self, hidden: torch.Tensor, ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) summed log p of ``ids[:, 1:][target]`` given ``hidden`` (B, L, d)."""
        B, L = ids.shape
        logits = self.model.lm_head(hidden[:, :-1][target]).float()  # (N, V), N = number of targets
        token_lp = -torch.nn.functional.cross_entropy(logits, ids[:, 1:][target], reduction="none")
        row = torch.arange(B, device=self.device)[:, None].expand(B, L - 1)[target]  # (N,)
        return torch.zeros(B, device=self.device, dtype=token_lp.dtype).index_add(0, row, token_lp)

    @torch.no_grad()
    def score(self, scenes: Sequence[VoxelMap | None], queries: Sequence[SceneQuery],
              answers: Sequence[str]) -> torch.Tensor:
        """(B,) summed log-likelihood of the given answers (no gradients); from cached scene
        prefixes while ``prefix_cache`` is on (the same numbers, within float rounding)."""
        if not self.prefix_cache.enabled:
            return self.sequence_logprobs(scenes, queries, answers)[0]
        out = torch.zeros(len(queries), device=self.device)
        for prefix, idx in prefix_groups(self, scenes, queries, answers):
            rows = [self.prompts.prompt_ids(queries[i], prefix.num_scene_tokens)[prefix.length:]
                    + self.prompts.answer_ids(answers[i]) for i in idx]
            ids, mask = suffix_inputs(self, prefix, rows)
            self.model.model.rope_deltas = None
            hidden = self.model.model(inputs_embeds=self.model.get_input_embeddings()(ids), attention_mask=mask,
                                      position_ids=(mask.cumsum(-1) - 1)[:, prefix.length:],
                                      past_key_values=prefix.cache(len(idx), self.model.config), use_cache=True)[0]
            lengths = torch.tensor([len(self.prompts.answer_ids(answers[i])) for i in idx], device=self.device)
            out[idx] = self._target_logprobs(hidden, ids, self._answer_targets(lengths, ids.shape[1])).to(out.dtype)
        return out

    def grounding_score(self, scene: VoxelMap | None, query: SceneQuery, answer: str,
                        other: VoxelMap | None = None) -> float:
        """log p(answer | scene) - log p(answer | other scene, default empty); ~0 = scene ignored."""
        lp = self.score([scene, other], [query, query], [answer, answer])
        return float(lp[0] - lp[1])

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, scenes: Sequence[VoxelMap | None], queries: Sequence[SceneQuery],
                 generation: GenerationConfig | None = None,
                 on_step: Callable[[str], bool] | Sequence[Callable[[str], bool] | None] | None = None) -> list[str]:
        """Answers for a batch of (scene, query) pairs; beam search by default (paper settings).

        ``on_step``: one callback, or one per row (None = none for that row), called after
        every generated token with that row's best hypothesis so far (its top beam);
        returning True stops that row (cancel) and leaves the other rows' answers unchanged.
        A single callable belongs to the first row and stops every row (one request).

        While ``prefix_cache`` is on, rows sharing a scene prefix start from its cached keys
        and values (one generate call per prefix); the answers equal the uncached ones.
        """
        gen = generation or self.config.generation
        hooks = list(on_step) if isinstance(on_step, Sequence) else [on_step] + [None] * (len(queries) - 1)
        stop_all = callable(on_step)
        if len(hooks) != len(queries):
            raise ValueError(f"{len(hooks)} on_step callbacks for {len(queries)} queries")
        if not self.prefix_cache.enabled:
            batch = self.prepare_batch(scenes, queries)
            return hf_generate(self, batch.inputs_embeds, batch.attention_mask, gen, hooks, stop_all)
        answers = [""] * len(queries)
        for prefix, idx in prefix_groups(self, scenes, queries):
            rows = [self.prompts.prompt_ids(queries[i], prefix.num_scene_tokens)[prefix.length:] for i in idx]
            ids, mask = suffix_inputs(self, prefix, rows)
            embeds = torch.cat([prefix.embeds.expand(len(idx), -1, -1), self.model.get_input_embeddings()(ids)], 1)
            cache = prefix.cache(len(idx) * gen.num_beams, self.model.config)
            texts = hf_generate(self, embeds, mask, gen, [hooks[i] for i in idx], stop_all, cache)
            for i, text in zip(idx, texts):
                answers[i] = text
        return answers

    # ------------------------------------------------------------------ bundles
    def save_bundle(self, path: str | Path) -> None:
        """Adapter bundle (LoRA + heads + config), or full weights in 'full' mode; atomic."""
        bundle_io.save_bundle(self, Path(path))

    def load_bundle(self, path: str | Path, weights_loaded: bool = False) -> None:
        """Hot-swap a bundle saved by :meth:`save_bundle`; mismatched base -> ValueError.
        ``weights_loaded``: the base was just loaded from this (full) bundle's own weights."""
        self.prefix_cache.clear()  # before loading: a failed load may have changed some weights already
        self._assemble(*bundle_io.read_bundle(self, Path(path), weights_loaded))


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
