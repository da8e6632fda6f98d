"""The benches' plain-text tables: a header row, a rule, then left-aligned columns."""
from __future__ import annotations

from typing import Sequence


def print_table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print(" | ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)))
