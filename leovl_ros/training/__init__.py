"""Training: data converters, scene feature cache, SFT, SceneDPO, evaluation and CLIs.

Frames are read by ``leovl_ros.scans`` (the same readers the scene player replays).

    records.py           the normalised JSONL record, readers that skip and count bad records
    adapters.py          ScanQA, SQA3D, MSQA, LEO-style dicts, synthetic rooms -> records
    caption_adapters.py  object and scene captions (ScanRefer, Nr3D/Sr3D, scanscribe, ...) -> records
    sessions.py          several questions of one scene as one chat record
    bags.py              robot bags' interactions -> SFT / preference records
    object_boxes.py      object regions (anchors) from the scans' instance annotations
    object_maps.py       a synthetic room as a voxel map in the LLM's word space (tiny model stage 2)
    question_scorer.py   trains a model's question scorer on rendered synthetic floors (tiny model stage 3b)
    scenes.py            frame fusion with the model's encoder; scenes by id (RAM -> cache -> build)
    cache.py             voxel maps on disk keyed by scene, encoder, voxel size and recipe
    config.py            YAML training config (paper defaults, help text)
    modeling.py          the model to train (base, optional random init, bundle)
    trainer.py           the accelerate loop: schedule, accumulation, checkpoints, exact resume
    sft.py               instruction tuning (leovl-train sft)
    scene_dpo.py         SceneDPO loss and training (leovl-train dpo)
    rephrase.py          hard negatives for SceneDPO (rules, optional chat endpoint)
    chat_endpoint.py     a minimal OpenAI-compatible chat client (rephraser, GPT-Score)
    metrics.py           EM / EM-R (LEO's cleaning) and n-gram metrics (pycocoevalcap)
    gpt_score.py         GPT-Score (MSR3D's judge protocol)
    evaluate.py          generation, scoring, report table (leovl-eval)
    vision_pretrain.py   pretraining a tiny vision tower on synthetic frames
    tiny_model.py        the bundled leovl-tiny, built by `make tiny-model`
    data_cli.py, train_cli.py, eval_cli.py   the leovl-data / leovl-train / leovl-eval commands
"""
