"""``leovl-scene``: look at saved scenes (``save_scene`` of the node, build-scenes' cache files).

    leovl-scene show SCENE.safetensors --out map.png [--anchor X,Y[,Z] --anchor-radius R]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .token_selection import TOKEN_SELECTIONS

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
    show.add_argument("--max-tokens", type=int, default=750, help="CFG token budget (the node's max_tokens)")
    show.add_argument("--token-selection", default="densest", choices=TOKEN_SELECTIONS,
                      help="which columns become tokens past max_tokens (the node's token_selection)")
    show.add_argument("--cell-px", type=int, default=0, help="pixels per voxel column (0: about 800 px across)")
    show.add_argument("--anchor", type=_point, help="anchor point X,Y[,Z] (m, map frame) to mark")
    show.add_argument("--anchor-radius", type=float, default=0.5, help="anchor radius (m)")
    return parser


def _show(args: argparse.Namespace) -> str:
    from .scene_picture import draw_scene  # Pillow: the synth extra
    from .voxel_map import VoxelMap

    if args.max_tokens < 1 or args.cell_px < 0 or args.anchor_radius < 0:
        raise ValueError("--max-tokens must be >= 1, --cell-px >= 0 and --anchor-radius >= 0")
    image, shown = draw_scene(VoxelMap.load(args.scene), args.max_tokens, args.cell_px, args.anchor,
                              args.anchor_radius, args.token_selection)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    image.save(tmp, format="PNG", optimize=True)
    tmp.replace(out)  # atomic: a reader never sees half a picture
    return (f"wrote {out} ({image.width}x{image.height}): {shown['voxels']} voxels in {shown['columns']} columns, "
            f"{shown['tokens']} tokens, {shown['path_points']} camera positions")


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
