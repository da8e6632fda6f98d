"""Training: data adapters, scene feature cache, SFT, SceneDPO, evaluation and CLIs.

    records.py     the normalised JSONL record, readers that skip and count bad records
    adapters.py    ScanQA, SQA3D, LEO-style dicts, synthetic rooms -> records
    bags.py        robot bags (rosbags): posed frames, interactions -> SFT / preference records
    tf_buffer.py   offline TF lookups for bags
    frames.py      ScanNet exports and synthetic rooms as posed RGB-D frames
    scenes.py      frame fusion with the model's encoder; scenes by id (RAM -> cache -> build)
    cache.py       voxel maps on disk keyed by scene, encoder, voxel size and recipe
    config.py      YAML training config (paper defaults, help text)
    modeling.py    the model to train (base, optional random init, bundle)
    trainer.py     the accelerate loop: schedule, accumulation, checkpoints, exact resume
    sft.py         instruction tuning (leovl-train sft)
    scene_dpo.py   SceneDPO loss and training (leovl-train dpo)
    metrics.py     EM / EM-R (LEO's cleaning) and n-gram metrics (pycocoevalcap)
    evaluate.py    generation, scoring, report table (leovl-eval)
    data_cli.py, train_cli.py, eval_cli.py   the leovl-data / leovl-train / leovl-eval commands
"""
