"""LEO-VL model: Qwen2.5-VL + condensed-feature-grid scene tokens + LoRA."""
