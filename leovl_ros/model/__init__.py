"""LEO-VL model: Qwen2.5-VL + condensed-feature-grid scene tokens + LoRA.

Heavy imports (torch, transformers, peft) happen on first use of a name, so importing
``leovl_ros.model`` for a type or a constant stays cheap.
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
