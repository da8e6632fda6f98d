"""Training: data adapters, scene feature cache, SFT, SceneDPO, evaluation and CLIs."""
