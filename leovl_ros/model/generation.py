"""Streaming and per-row cancel inside ``transformers`` generate (used by :meth:`LeoVL.generate`)."""
from __future__ import annotations

from typing import Callable

import torch
from transformers import StoppingCriteria

__all__ = ["StepHook"]


class StepHook(StoppingCriteria):
    """Streams each row's top hypothesis to its callback and stops the rows whose callback says so.

    Stopping criteria see the running sequences of each row together, sorted best first
    (beam search passes its top-k continuations), so the first of a row's block is its best
    hypothesis at every step; a ``TextStreamer`` would not do: transformers refuses streamers
    with beam search. A stopped row ends as if it wrote its end token; the others go on.
    """

    def __init__(self, tokenizer, hooks: list[Callable[[str], bool] | None], stop_all: bool) -> None:
        self.tokenizer, self.hooks, self.stop_all = tokenizer, hooks, stop_all

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        per_row = input_ids.shape[0] // len(self.hooks)
        stop = [bool(hook(self.tokenizer.decode(input_ids[b * per_row], skip_special_tokens=True).strip()))
                if hook is not None else False for b, hook in enumerate(self.hooks)]
        if self.stop_all:
            stop = [stop[0]] * len(stop)
        return torch.tensor(stop, device=input_ids.device).repeat_interleave(per_row)
