"""The scene prefix computed once: KV caches of the prompt up to and including the scene tokens.

Every question asked of one map snapshot starts with the same tokens (Appendix B: system
prompt, ``<|vision_start|>``, up to 750 scene tokens, ``<|vision_end|>``); so do both
passes of the grounding score. :class:`PrefixCache` keeps their keys and values, least
recently used first out past a byte budget, so a question only prefills its own text.

An entry is valid for one scene object (held by weak reference: a freed snapshot can never
be mistaken for a newer one that reuses its ``id``), one referred region (it changes the
scene tokens) and one grid/prompt setting. Weights are not part of the key: whoever changes
them (``load_bundle``) clears the cache, and it is off (budget 0) unless a caller that
keeps the weights fixed (the assistant) turns it on; training changes weights every step.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from transformers import DynamicCache

__all__ = ["PrefixCache", "PrefixCacheStats", "ScenePrefix", "prefill", "prefix_groups", "suffix_inputs"]


@dataclass
class ScenePrefix:
    """The prompt head of one (scene, region): its embeddings and per-layer keys/values."""

    num_scene_tokens: int
    embeds: torch.Tensor  # (1, P, d) inputs_embeds of the prefix (generate() wants the whole prompt's)
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (1, heads, P, head_dim) keys and values

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])

    @property
    def nbytes(self) -> int:
        return self.embeds.nbytes + sum(k.nbytes + v.nbytes for k, v in self.kv)

    def cache(self, rows: int, config: Any) -> DynamicCache:
        """A fresh cache of ``rows`` identical rows. Expanded views, not copies: the model
        concatenates new keys onto them (a new tensor) and never writes into them."""
        return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                            for k, v in self.kv], config=config)


@dataclass
class PrefixCacheStats:
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


class PrefixCache:
    """LRU of :class:`ScenePrefix` within ``max_bytes`` (0 = off: every call computes its own)."""

    def __init__(self, max_bytes: int = 0) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[Callable[[], object] | None, ScenePrefix]] = OrderedDict()
        self._bytes = self.hits = self.misses = self.evictions = 0
        self._lock = threading.Lock()  # the model thread fills it, /diagnostics reads its counters

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, scene: object | None, key: tuple, build: Callable[[], ScenePrefix]) -> ScenePrefix:
        """The prefix of (``scene``, ``key``), built by ``build()`` on a miss."""
        full_key = (None if scene is None else id(scene), *key)
        with self._lock:
            found = self._entries.get(full_key)
            if found is not None and (found[0] is None) == (scene is None) and (scene is None or found[0]() is scene):
                self._entries.move_to_end(full_key)
                self.hits += 1
                return found[1]
            self.misses += 1
            self._prune()  # a miss usually means the map changed: its old snapshots' prefixes go now
        prefix = build()
        if prefix.nbytes > self.max_bytes:
            return prefix  # larger than the whole budget: used once, never kept
        with self._lock:
            old = self._entries.pop(full_key, None)
            if old is not None:
                self._bytes -= old[1].nbytes
            self._entries[full_key] = (None if scene is None else weakref.ref(scene), prefix)
            self._bytes += prefix.nbytes
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes
                self.evictions += 1
        return prefix

    def clear(self) -> None:
        """Drop every entry (the weights or the map changed); counters keep counting."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _prune(self) -> None:
        """Drop entries whose scene was freed (a snapshot replaced by a newer map); caller holds the lock."""
        for key in [k for k, (ref, _) in self._entries.items() if ref is not None and ref() is None]:
            self._bytes -= self._entries.pop(key)[1].nbytes

    def stats(self) -> PrefixCacheStats:
        with self._lock:
            return PrefixCacheStats(len(self._entries), self._bytes, self.max_bytes, self.hits, self.misses,
                                    self.evictions)


def prefill(model, scene, query) -> ScenePrefix:
    """Prefill the prompt of ``query`` up to and including the scene's ``<|vision_end|>``."""
    tokens = model.scene_tokens(scene, query)  # (T, d)
    ids = model.prompts.prompt_ids(query, tokens.shape[0])
    # The first <|vision_end|> closes the scene: user text cannot hold one (split_special_tokens).
    ids_t = torch.tensor([ids[:ids.index(model.prompts.vision_end_id) + 1]], device=model.device)  # (1, P)
    embeds = model.model.get_input_embeddings()(ids_t)  # (1, P, d)
    if tokens.shape[0]:
        embeds = embeds.masked_scatter((ids_t == model.prompts.image_pad_id)[..., None], tokens.to(embeds.dtype))
    model.model.model.rope_deltas = None
    positions = torch.arange(ids_t.shape[1], device=model.device)[None]
    cache = model.model.model(inputs_embeds=embeds, position_ids=positions, use_cache=True).past_key_values
    return ScenePrefix(int(tokens.shape[0]), embeds, [(layer.keys, layer.values) for layer in cache.layers])


def prefix_groups(model, scenes: Sequence, queries: Sequence,
                  answers: Sequence | None = None) -> list[tuple[ScenePrefix, list[int]]]:
    """Rows sharing a scene prefix, in first-seen order: (prefix, row indices)."""
    if len(scenes) != len(queries) or (answers is not None and len(answers) != len(queries)) or not queries:
        raise ValueError(f"got {len(scenes)} scenes, {len(queries)} queries, "
                         f"{'no' if answers is None else len(answers)} answers: lengths must match and not be 0")
    groups: dict[tuple, tuple[ScenePrefix, list[int]]] = {}
    for i, (scene, query) in enumerate(zip(scenes, queries)):
        key = (id(scene), query.anchor_center, query.anchor_radius, query.anchor_size, model.selection_key(query))
        if key not in groups:
            groups[key] = (model.scene_prefix(scene, query), [])
        groups[key][1].append(i)
    return list(groups.values())


def suffix_inputs(model, prefix: ScenePrefix, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids after the prefix, left-padded *between* prefix and text, and the whole attention
    mask: positions (cumsum of the mask) are then exactly those of the unpadded prompt."""
    L, pad = max(map(len, rows)), model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (L - len(r)) + r for r in rows], device=model.device)  # (B, S)
    mask = torch.tensor([[1] * prefix.length + [0] * (L - len(r)) + [1] * len(r) for r in rows],
                        device=model.device)  # (B, P + S)
    return ids, mask
