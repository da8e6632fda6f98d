"""``leovl-eval``: EM / EM-LEO / EM-R (per question type), BLEU-4 / METEOR / ROUGE-L / CIDEr,
optional GPT-Score, per-benchmark scores and their overall average (training/evaluate.py).

    leovl-eval --config recipes/sft.yaml --bundle runs/sft/bundle --out report.json
    leovl-eval --predictions preds.jsonl --records sqa3d_test.jsonl --out report.json
    leovl-eval --predictions preds.jsonl --records msqa_test.jsonl --gpt-endpoint http://host:8000/v1

With ``--config`` the model answers the records (``--records``, default ``data.eval`` of
the config) with the config's generation settings (``eval.generation``) and the answers are
written next to the report; with ``--predictions`` an existing predictions JSONL
(``{"id", "prediction"}`` per line) is scored. Prints a table; ``--out`` writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .evaluate import format_table, predictions_jsonl, read_predictions, score_predictions
from .records import ConversionReport, atomic_write_text, read_records


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leovl-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="YAML training config: model, scenes, eval records and generation")
    src.add_argument("--predictions", help="predictions JSONL to score (needs --records)")
    p.add_argument("--records", nargs="+", help="record JSONL file(s) (default with --config: data.eval)")
    p.add_argument("--bundle", help="adapter bundle to evaluate (default: model.bundle of the config)")
    p.add_argument("--limit", type=int, help="evaluate the first N records only")
    p.add_argument("--out", help="write the JSON report here (predictions go to <out>.predictions.jsonl)")
    p.add_argument("--no-ngram", action="store_true", help="skip BLEU/METEOR/ROUGE/CIDEr (no Java needed)")
    p.add_argument("--tokenizer", choices=("clean", "ptb"), default="clean",
                   help="n-gram tokenisation: LEO's clean_answer (default) or the COCO PTB tokenizer")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--gpt-endpoint", help="OpenAI-compatible chat endpoint for GPT-Score (default with --config: "
                                          "eval.gpt_score.endpoint; off when neither is set)")
    p.add_argument("--gpt-model", help="judge model name (default: eval.gpt_score.model)")
    return p


def _judge(args: argparse.Namespace):
    """The GPT-Score judge and the tasks it judges, or (None, ()) when no endpoint is set."""
    from .chat_endpoint import ChatClient
    from .config import GPTScoreSection, load_config
    from .gpt_score import GPTScorer
    from .train_cli import parse_overrides

    g = load_config(args.config, parse_overrides(args.set)).eval.gpt_score if args.config else GPTScoreSection()
    endpoint = args.gpt_endpoint or g.endpoint
    if not endpoint:
        return None, ()
    client = ChatClient(endpoint, args.gpt_model or g.model, g.api_key_env, g.timeout_s)
    return GPTScorer(client, g.system_prompt), tuple(g.tasks)


def _generate(args: argparse.Namespace, records: list) -> list[str]:
    # The model stack is imported only when answers have to be generated.
    import torch

    from leovl_ros.model.config import resolve_generation

    from .config import load_config
    from .evaluate import generate_predictions
    from .modeling import load_model
    from .scenes import SceneStore
    from .train_cli import parse_overrides

    cfg = load_config(args.config, parse_overrides(args.set))
    if args.bundle:
        cfg.model.bundle = args.bundle
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(cfg.model, cfg.trainable, cfg.seed, device)
    generation = resolve_generation(model.config.generation, cfg.eval.generation)
    scenes = SceneStore(model, cfg.scenes)
    return generate_predictions(model, scenes, records, generation, cfg.optim.batch_size, progress=cfg.progress)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report_in = ConversionReport()
        if args.records:
            paths = args.records
        elif args.config:
            from .config import load_config

            paths = load_config(args.config).data.eval
            if not paths:
                raise ValueError(f"{args.config} has no data.eval records; pass --records")
        else:
            raise ValueError("--predictions needs --records")
        records = read_records(paths, report_in)[: args.limit]
        if not records:
            raise ValueError(f"no valid records in {paths}")
        preds = _generate(args, records) if args.config else read_predictions(args.predictions, records)
        judge, judged_tasks = _judge(args)
        report = score_predictions(records, preds, ngram=not args.no_ngram, tokenizer=args.tokenizer, judge=judge,
                                   judged_tasks=judged_tasks)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"leovl-eval: error: {exc}", file=sys.stderr)
        return 2
    if report_in.skipped:
        print(report_in.summary())
    print(format_table(report))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=1))
        if args.config:
            atomic_write_text(Path(args.out).with_suffix(".predictions.jsonl"), predictions_jsonl(records, preds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
