"""What do leovl-tiny's scene tokens carry, and how hard is it to learn to read them?

    python -m bench.scene_readout                      # probes: about 2 min on 2 cores
    python -m bench.scene_readout --decoder-steps 800  # + from-scratch decoders (about 8 min each)

Runs on the voxel maps that ``make tiny-model`` cached (training and held-out rooms) and the
rooms' scene graphs (the truth). Two questions, each answered on held-out rooms:

probe  An attention probe - one learned query per category, softmax attention over a room's
       tokens, linear heads - trained directly on (room, category) -> is there one, and for
       categories present once, its colour. It needs no language and gets 20 labels per
       room, so it bounds what an LLM reading the same tokens can reach with this tower.
decoder
       The colour lookup alone, learned by a from-scratch Qwen2 decoder of leovl-tiny's LLM
       shape (tokens, then a category token and a query token; colour read at the last
       position), batch 16: the step at which held-out accuracy first reaches 50 %. This is
       the step budget an LLM needs just to discover the lookup.

Token sets: the bundled model's CFG (its grid config); the CFG without height RoPE; and
"oracle" tokens - one per object, the sum of fixed random directions for its category and
colour - what a perfect vision tower would give, alone ("objects only") or among as many
empty tokens as the CFG has (the dilution the CFG's floor/wall columns add).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

D_ORACLE = 128


@dataclasses.dataclass
class Room:
    seed: int
    tokens: torch.Tensor  # (T, d)
    present: torch.Tensor  # (C,) 1.0 where the category is in the room
    colour_of: torch.Tensor  # (C,) colour index of a category present once, else -1


def _truth(seed: int) -> tuple[list, torch.Tensor, torch.Tensor]:
    from leovl_ros.synth.catalog import CATEGORY_NAMES, COLOURS
    from leovl_ros.synth.rooms import generate_room

    objects = generate_room(seed).objects
    count = Counter(o.category for o in objects)
    present = torch.tensor([float(c in count) for c in CATEGORY_NAMES])
    colour_of = torch.full((len(CATEGORY_NAMES),), -1)
    for o in objects:
        if count[o.category] == 1:
            colour_of[CATEGORY_NAMES.index(o.category)] = list(COLOURS).index(o.colour)
    return objects, present, colour_of


def oracle_tokens(objects: list, num_tokens: int, seed: int) -> torch.Tensor:
    """(max(num_tokens, objects), 128): one token per object at a random slot, the rest zero."""
    from leovl_ros.synth.catalog import CATEGORY_NAMES, COLOURS

    g = torch.Generator().manual_seed(12345)  # the same class directions for every room
    P = nn.functional.normalize(torch.randn(len(CATEGORY_NAMES) + len(COLOURS), D_ORACLE, generator=g), dim=1)
    n = max(num_tokens, len(objects))
    out = torch.zeros(n, D_ORACLE)
    slots = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for slot, o in zip(slots.tolist(), objects):
        out[slot] = P[CATEGORY_NAMES.index(o.category)] + P[len(CATEGORY_NAMES) + list(COLOURS).index(o.colour)]
    return out


def load_rooms(cache_dir: Path, grid) -> dict[str, list[Room]]:
    """{token set: rooms} for every cached map of a training or held-out room."""
    from leovl_ros.condensed_grid import build_grid
    from leovl_ros.voxel_map import VoxelMap
    from leovl_ros.training.tiny_model import SEEDS

    lo, hi = (int(s) for s in SEEDS["train"].split(":"))
    elo, ehi = (int(s) for s in SEEDS["eval"].split(":"))
    sets: dict[str, list[Room]] = {"CFG (shipped)": [], "CFG, pos_z none": [], "oracle, objects only": [],
                                   "oracle + empty tokens": []}
    seen = set()
    for path in sorted(cache_dir.glob("synth_*.safetensors")):
        vmap = VoxelMap.load(path)
        seed = int(vmap.metadata.get("scene_id", "synth_-1").split("_")[1])
        if seed in seen or not (lo <= seed < hi or elo <= seed < ehi):
            continue
        seen.add(seed)
        objects, present, colour_of = _truth(seed)
        cfg = build_grid(vmap, grid).features
        flat = build_grid(vmap, dataclasses.replace(grid, pos_z="none")).features
        for name, tokens in (("CFG (shipped)", cfg), ("CFG, pos_z none", flat),
                             ("oracle, objects only", oracle_tokens(objects, 0, seed)),
                             ("oracle + empty tokens", oracle_tokens(objects, cfg.shape[0], seed))):
            sets[name].append(Room(seed, tokens, present, colour_of))
    if not seen:
        raise FileNotFoundError(f"no cached maps of training/held-out rooms in {cache_dir}: run `make tiny-model`")
    return sets


def split(rooms: list[Room]) -> tuple[list[Room], list[Room]]:
    from leovl_ros.training.tiny_model import SEEDS

    elo = int(SEEDS["eval"].split(":")[0])
    return [r for r in rooms if r.seed < elo], [r for r in rooms if r.seed >= elo]


def _pad(rooms: list[Room]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, d) tokens, right-padded with zeros, and (B, T) validity."""
    T = max(r.tokens.shape[0] for r in rooms)
    x = torch.zeros(len(rooms), T, rooms[0].tokens.shape[1])
    valid = torch.zeros(len(rooms), T, dtype=torch.bool)
    for i, r in enumerate(rooms):
        x[i, : r.tokens.shape[0]] = r.tokens
        valid[i, : r.tokens.shape[0]] = True
    return x, valid


def probe(rooms: list[Room], steps: int = 600, seed: int = 0) -> dict[str, float]:
    """Held-out presence / colour accuracy of the attention probe (see module doc)."""
    train, held = split(rooms)
    C, K = train[0].present.numel(), 12
    d = train[0].tokens.shape[1]
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(d, 128), nn.GELU(), nn.Linear(128, 128))
    key, value = nn.Linear(128, 64), nn.Linear(128, 64)
    query = nn.Parameter(0.1 * torch.randn(C, 64))
    heads = nn.ModuleDict({"present": nn.Linear(64, 1), "colour": nn.Linear(64, K)})
    params = [*mlp.parameters(), *key.parameters(), *value.parameters(), query, *heads.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)

    def forward(batch: list[Room]) -> tuple[torch.Tensor, torch.Tensor]:
        x, valid = _pad(batch)
        h = mlp(x)  # (B, T, 128)
        logits = torch.einsum("ck,btk->bct", query, key(h)).masked_fill(~valid[:, None], float("-inf"))
        z = torch.einsum("bct,btk->bck", logits.softmax(-1), value(h))  # (B, C, 64)
        return heads["present"](z).squeeze(-1), heads["colour"](z)

    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = [train[i] for i in torch.randint(len(train), (32,), generator=g).tolist()]
        p, c = forward(batch)
        y = torch.stack([r.present for r in batch])
        col = torch.stack([r.colour_of for r in batch])
        loss = nn.functional.binary_cross_entropy_with_logits(p, y) + nn.functional.cross_entropy(c[col >= 0], col[col >= 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        p, c = forward(held)
    y, col = torch.stack([r.present for r in held]), torch.stack([r.colour_of for r in held])
    return {"presence": float(((p > 0).float() == y).float().mean()),
            "colour": float((c.argmax(-1) == col)[col >= 0].float().mean())}


def priors(rooms: list[Room]) -> dict[str, float]:
    """Accuracy of the training rooms' majority answer per category (presence) and overall (colour)."""
    train, held = split(rooms)
    y = torch.stack([r.present for r in train]).mean(0) > 0.5  # (C,)
    col = torch.cat([r.colour_of[r.colour_of >= 0] for r in train])
    hy, hc = torch.stack([r.present for r in held]), torch.stack([r.colour_of for r in held])
    return {"presence": float((hy == y.float()).float().mean()),
            "colour": float((hc[hc >= 0] == torch.bincount(col).argmax()).float().mean())}


def decoder_steps(rooms: list[Room], steps: int, seed: int = 0, every: int = 50) -> int | None:
    """First step (checked every ``every``) at which a from-scratch decoder reads the colour of a
    named category with >= 50 % held-out accuracy; None if it does not within ``steps``."""
    from transformers import Qwen2Config, Qwen2Model

    from leovl_ros.training.tiny_model import TINY_ARCH

    train, held = split(rooms)
    h = TINY_ARCH["hidden_size"]
    torch.manual_seed(seed)
    model = Qwen2Model(Qwen2Config(vocab_size=64, hidden_size=h, intermediate_size=4 * h,
                                   num_hidden_layers=TINY_ARCH["layers"], num_attention_heads=TINY_ARCH["heads"],
                                   num_key_value_heads=TINY_ARCH["kv_heads"], rope_theta=1e6))
    lift = nn.Linear(rooms[0].tokens.shape[1], h)
    head = nn.Linear(h, 12)
    params = [*model.parameters(), *lift.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
    C = rooms[0].present.numel()

    def batch(pool: list[Room], n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        picks = []
        for i in torch.randint(len(pool), (n,), generator=g).tolist():
            asked = torch.nonzero(pool[i].colour_of >= 0).squeeze(1)
            cat = int(asked[int(torch.randint(asked.numel(), (1,), generator=g))])
            picks.append((pool[i], cat))
        x, valid = _pad([r for r, _ in picks])  # right-padded: the question goes after the last real token
        B, T = valid.shape
        embeds = torch.cat([lift(x), torch.zeros(B, 2, h)], 1)  # (B, T + 2, h)
        n_tok = valid.sum(1)
        for b, (_, cat) in enumerate(picks):
            embeds[b, n_tok[b]] = model.embed_tokens.weight[cat]
            embeds[b, n_tok[b] + 1] = model.embed_tokens.weight[C]  # "what colour?"
        mask = torch.cat([valid, torch.zeros(B, 2, dtype=torch.bool)], 1)
        mask[torch.arange(B), n_tok] = mask[torch.arange(B), n_tok + 1] = True
        out = model(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state  # (B, T + 2, h)
        return head(out[torch.arange(B), n_tok + 1]), torch.tensor([r.colour_of[c] for r, c in picks])

    g = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        logits, y = batch(train, 16, g)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            with torch.no_grad():
                logits, y = batch(held, 256, torch.Generator().manual_seed(1))
            if float((logits.argmax(-1) == y).float().mean()) >= 0.5:
                return step
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="leovl_ros/bundled_models/leovl-tiny", help="bundle whose grid config is read")
    p.add_argument("--cache-dir", default="runs/leovl-tiny/scenes", type=Path, help="voxel maps of make tiny-model")
    p.add_argument("--probe-steps", type=int, default=600)
    p.add_argument("--decoder-steps", type=int, default=0, metavar="N", help="also train decoders for up to N steps")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from leovl_ros.model.bundle import read_config

    try:
        sets = load_rooms(args.cache_dir, read_config(Path(args.model)).grid)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bench.scene_readout: {exc}", file=sys.stderr)
        return 2
    train, held = split(next(iter(sets.values())))
    print(f"{len(train)} training rooms, {len(held)} held-out rooms; "
          f"CFG tokens per room: {sum(r.tokens.shape[0] for r in sets['CFG (shipped)']) / len(train + held):.0f}")
    base = priors(sets["CFG (shipped)"])
    cols = ["presence", "colour", "colour / prior"] + (["decoder: steps to 50 % colour"] if args.decoder_steps else [])
    print("| tokens | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    print(f"| answer prior | {base['presence']:.2f} | {base['colour']:.2f} | 1.0 |" + (" |" if args.decoder_steps else ""))
    for name, rooms in sets.items():
        t0 = time.perf_counter()
        acc = probe(rooms, args.probe_steps)
        row = [f"{acc['presence']:.2f}", f"{acc['colour']:.2f}", f"{acc['colour'] / base['colour']:.1f}"]
        if args.decoder_steps:
            step = decoder_steps(rooms, args.decoder_steps)
            row.append(f"not within {args.decoder_steps}" if step is None else str(step))
        print(f"| {name} | " + " | ".join(row) + f" |   ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
