"""``leovl-train``: instruction tuning and SceneDPO from a YAML config.

    leovl-train sft --config recipes/sft.yaml
    leovl-train dpo --config recipes/dpo.yaml --set optim.lr=1e-5 --set dpo.reference=initial
    torchrun --nproc_per_node 8 -m leovl_ros.training.train_cli sft --config recipes/sft.yaml   # 8 GPUs
    accelerate launch -m leovl_ros.training.train_cli sft --config recipes/sft.yaml     # several GPUs
    leovl-train show-config                                                   # every key, with help

The result is an adapter bundle in ``<output_dir>/bundle`` (checkpoints in
``<output_dir>/checkpoint-<step>/bundle``), loadable by the assistant node.
"""
from __future__ import annotations

import argparse
import os
import sys

import yaml


def parse_overrides(pairs: list[str]) -> dict:
    """``["optim.lr=1e-4", "dpo.reference=initial"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set takes key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leovl-train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("sft", "instruction tuning (prefix-LM loss on responses)"),
                       ("dpo", "SceneDPO post-training")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="YAML training config")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. optim.max_steps=10 (repeatable)")
    sub.add_parser("show-config", help="print every config key with its default and help")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported after parsing so --help answers without loading torch / transformers.
    from .config import describe, load_config

    if args.command == "show-config":
        print("\n".join(describe()))
        return 0
    try:
        cfg = load_config(args.config, parse_overrides(args.set))
    except (ValueError, FileNotFoundError, yaml.YAMLError) as exc:
        print(f"leovl-train: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "sft":
        from .sft import run_sft as run
    else:
        from .scene_dpo import run_dpo as run
    from .chat_endpoint import ChatError

    try:
        result = run(cfg)
    except (ValueError, FileNotFoundError, ChatError) as exc:  # ChatError: the rephrasing endpoint failed
        print(f"leovl-train {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not per launched process
        print(f"{args.command}: {result.steps} steps; bundle: {result.bundle}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
