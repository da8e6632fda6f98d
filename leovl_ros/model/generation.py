"""The ``transformers`` generate call behind :meth:`LeoVL.generate`: settings, the repetition
penalty as our own processor, and per-row streaming and cancel."""
from __future__ import annotations

from typing import Callable

import torch
from transformers import DynamicCache, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers import GenerationConfig as HFGenerationConfig
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from .config import GenerationConfig

__all__ = ["StepHook", "hf_generate"]


def hf_generate(model, embeds: torch.Tensor, mask: torch.Tensor, gen: GenerationConfig,
                hooks: list[Callable[[str], bool] | None], stop_all: bool,
                cache: DynamicCache | None = None) -> list[str]:
    """Answers of ``model`` (a LeoVL) for left-padded prompt embeddings (B, L, d) and their
    mask; ``cache`` holds keys/values of the first positions (a scene prefix), if any.

    The repetition penalty covers generated tokens only (the prompt is embeddings; as in
    LEO). It is passed as our own processor because transformers 5 maps left-padding
    lengths onto the *generated* tokens when only ``inputs_embeds`` are given, which
    silently exempts a padded row's first tokens and makes answers batch-dependent."""
    processors = LogitsProcessorList()
    if gen.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(gen.repetition_penalty)))
    stopping = StoppingCriteriaList([StepHook(model.tokenizer, hooks, stop_all)] if any(hooks) else [])
    sampling = dict(temperature=gen.temperature, top_p=gen.top_p) if gen.do_sample else {}
    settings = HFGenerationConfig(
        num_beams=gen.num_beams, max_new_tokens=gen.max_new_tokens, length_penalty=gen.length_penalty,
        do_sample=gen.do_sample, **sampling, eos_token_id=[model.prompts.im_end_id, model.tokenizer.pad_token_id],
        pad_token_id=model.tokenizer.pad_token_id, use_cache=True)
    model.model.model.rope_deltas = None  # batch size and padding differ from the last call
    out = model.model.generate(inputs_embeds=embeds, attention_mask=mask, past_key_values=cache,
                               generation_config=settings, logits_processor=processors, stopping_criteria=stopping)
    model.model.model.rope_deltas = None
    # With inputs_embeds only, generate() returns just the new tokens.
    return [t.strip() for t in model.tokenizer.batch_decode(out, skip_special_tokens=True)]


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
