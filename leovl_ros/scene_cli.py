"""``leovl-scene``: look at saved scenes (``save_scene`` of the node, build-scenes' cache files).

    leovl-scene show SCENE.safetensors --out map.png [--anchor X,Y[,Z] --anchor-radius R]
    leovl-scene show SCENE.safetensors --out map.png --question "What colour is the sofa?" [--model BUNDLE]

With ``--question`` the model (default: the bundled leovl-tiny) answers from the scene and the
picture gets a heat layer of where the answer came from (model/grounding.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .token_selection import QUESTION_SHARE, TOKEN_SELECTIONS

__all__ = ["main"]


def _point(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected X,Y or X,Y,Z in metres, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leovl-scene", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="draw the top-down CFG: occupied columns, kept tokens, camera path, anchor")
    show.add_argument("scene", help="a scene file (.safetensors) written by save_scene or build-scenes")
    show.add_argument("--out", required=True, help="PNG to write")
    show.add_argument("--max-tokens", type=int, default=None,
                      help="CFG token budget (the node's max_tokens; default 750, with --question the model's)")
    show.add_argument("--token-selection", default="densest", choices=TOKEN_SELECTIONS,
                      help="which columns become tokens past max_tokens (the node's token_selection)")
    show.add_argument("--cell-px", type=int, default=0, help="pixels per voxel column (0: about 800 px across)")
    show.add_argument("--anchor", type=_point, help="anchor point X,Y[,Z] (m, map frame) to mark")
    show.add_argument("--anchor-radius", type=float, default=0.5, help="anchor radius (m)")
    show.add_argument("--question",
                      help="ask this about the scene (greedy decoding) and draw where the answer came from")
    show.add_argument("--model", help="model bundle for --question (default: the bundled leovl-tiny)")
    return parser


def _ask(args: argparse.Namespace, vmap):
    """(answer, grounding, question embeddings for the selection) of --question."""
    from .model.config import ConfigOverrides
    from .model.grounding import answer_grounding
    from .model.loading import load_model
    from .model.prompts import SceneQuery

    path = Path(args.model) if args.model else Path(__file__).parent / "bundled_models" / "leovl-tiny"
    grid = {"token_selection": args.token_selection}
    if args.max_tokens is not None:
        grid["max_tokens"] = args.max_tokens
    # a picture tool on a CPU: one beam, not the node's five
    model = load_model(path, overrides=ConfigOverrides(grid=grid, generation={"num_beams": 1}))
    # the picture shows the grid the model answered from
    args.max_tokens, args.question_share = model.config.grid.max_tokens, model.config.grid.question_share
    anchor = None if args.anchor is None else (*args.anchor[:2], args.anchor[2] if len(args.anchor) > 2 else 0.0)
    query = SceneQuery("qa", args.question, anchor_center=anchor,
                       anchor_radius=args.anchor_radius if anchor is not None and args.anchor_radius > 0 else None)
    answer = model.generate([vmap], [query])[0]
    return answer, answer_grounding(model, vmap, query, answer), model.question_embeddings(query)


def _show(args: argparse.Namespace) -> str:
    from .scene_picture import draw_scene  # Pillow: the synth extra
    from .voxel_map import VoxelMap

    if (args.max_tokens is not None and args.max_tokens < 1) or args.cell_px < 0 or args.anchor_radius < 0:
        raise ValueError("--max-tokens must be >= 1, --cell-px >= 0 and --anchor-radius >= 0")
    if args.question is not None and not args.question.strip():
        raise ValueError("--question is empty")
    vmap = VoxelMap.load(args.scene)
    args.question_share = QUESTION_SHARE  # _ask sets the model's
    said, grounding, question = _ask(args, vmap) if args.question else ("", None, None)
    image, shown = draw_scene(vmap, args.max_tokens or 750, args.cell_px, args.anchor, args.anchor_radius,
                              args.token_selection, grounding, question, args.question_share)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    image.save(tmp, format="PNG", optimize=True)
    tmp.replace(out)  # atomic: a reader never sees half a picture
    done = (f"wrote {out} ({image.width}x{image.height}): {shown['voxels']} voxels in {shown['columns']} columns, "
            f"{shown['tokens']} tokens, {shown['path_points']} camera positions")
    if grounding is None:
        return done
    (x, y, _), w = (v[0].tolist() for v in grounding.top(1))
    where = (grounding.note if grounding.flat
             else f"heaviest column at ({x:.2f}, {y:.2f}) m, {100 * w:.1f} % of the weight")
    return f"{done}\nanswer: {said}\ngrounding: {where}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(_show(args))
        return 0
    except ImportError as exc:
        print(f"leovl-scene: error: drawing needs Pillow (pip install pillow): {exc}", file=sys.stderr)
    except (ValueError, OSError) as exc:
        print(f"leovl-scene: error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
