"""LEO-VL model: Qwen2.5-VL + condensed-feature-grid scene tokens + LoRA.

Heavy imports (torch, transformers, peft) happen on first use of a name, so importing
``leovl_ros.model`` for a type or a constant stays cheap.

    config.py        LeoVLConfig and GenerationConfig (paper values, JSON round trip); resolve_config
                     (stored config + ConfigOverrides = what a model runs with)
    tiny.py          Qwen2.5-VL configs built in code (tiny for tests, 7B for counts)
    tokenizer.py     the real Qwen2.5 tokenizer, built offline
    encoder.py       the vision tower as a per-cell 2D encoder
    scene_tokens.py  CFG columns + Fourier-feature MLP + anchor -> scene token embeddings
    question_scorer.py  learned question key and reranker: which columns token_selection 'question' keeps
    prompts.py       queries and the Appendix B template as token ids
    leovl.py         the model: scoring, generation, LoRA
    generation.py    streaming and per-row cancel inside transformers' generate
    prefix_cache.py  the scene prefix's KV cache, computed once per scene
    grounding.py     how much each map column mattered to an answer
    bundle.py        adapter bundles (safetensors only, written atomically)
    loading.py       the one way a model is loaded: base + adapter + run-time overrides
"""
from importlib import import_module

_EXPORTS = {
    "GenerationConfig": "config", "LeoVLConfig": "config",
    "SceneQuery": "prompts", "PromptBuilder": "prompts", "plan_instruction": "prompts",
    "VisionEncoder": "encoder", "EncodedImage": "encoder",
    "LeoVL": "leovl", "SceneBatch": "leovl", "count_trainable_parameters": "leovl",
    "load_qwen_tokenizer": "tokenizer",
    "tiny_qwen25vl_config": "tiny", "qwen25vl_7b_config": "tiny", "tiny_leovl": "tiny", "random_scene": "tiny",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'leovl_ros.model' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
