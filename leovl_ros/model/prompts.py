"""Queries and the Appendix B prompt template, as token ids with scene-token placeholders.

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    <|vision_start|>{N x <|image_pad|>}<|vision_end|>{Instruction}<|im_end|>\\n
    <|im_start|>assistant\\n{Response}

The template is tokenised piecewise (special tokens are never merged with text by the
Qwen tokenizer), so N placeholders cost nothing to tokenise; tests check the result equals
tokenising the full template string.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

TASKS = ("qa", "object_caption", "scene_caption", "plan", "dialogue")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"


@dataclass
class SceneQuery:
    """One request about a scene.

    ``situation`` (QA) is put in front of the question, as the paper's Appendix B says.
    ``history`` holds earlier (user, assistant) turns of a dialogue. ``anchor_center`` with
    ``anchor_size`` (a box's extents) or ``anchor_radius`` (a sphere), metres in the map
    frame, mark the referred region for object captioning.
    """

    task: Literal["qa", "object_caption", "scene_caption", "plan", "dialogue"]
    instruction: str
    situation: str | None = None
    history: list[tuple[str, str]] | None = None
    anchor_center: tuple[float, float, float] | None = None
    anchor_radius: float | None = None
    anchor_size: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ValueError("instruction must be a non-empty string")
        if self.anchor_center is not None and len(self.anchor_center) != 3:
            raise ValueError(f"anchor_center must be (x, y, z) in metres, got {self.anchor_center!r}")
        if self.anchor_radius is not None and not self.anchor_radius > 0:
            raise ValueError(f"anchor_radius must be positive, got {self.anchor_radius}")
        if self.anchor_size is not None and (len(self.anchor_size) != 3 or min(self.anchor_size) < 0):
            raise ValueError(f"anchor_size must be 3 extents >= 0 metres, got {self.anchor_size!r}")
        for turn in self.history or []:
            if len(turn) != 2:
                raise ValueError(f"history turns must be (user, assistant) pairs, got {turn!r}")


def plan_instruction(goal: str) -> str:
    """The instruction used for a bare goal from the ``plan_task`` service."""
    return f"Create a step-by-step plan for the task: {goal.strip()}"


class PromptBuilder:
    """Turns queries into Appendix B token ids, and answers into target ids."""

    def __init__(self, tokenizer, system_prompt: str = "You are a helpful assistant.",
                 dialogue_format: Literal["inline", "chat"] = "inline", answer_eos: bool = True) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.dialogue_format = dialogue_format
        self.answer_eos = answer_eos
        ids = tokenizer.convert_tokens_to_ids([IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD])
        self.im_start_id, self.im_end_id, self.vision_start_id, self.vision_end_id, self.image_pad_id = ids
        if self.image_pad_id != 151655 or self.im_end_id != 151645:
            raise ValueError("tokenizer is not the Qwen2.5 one (<|image_pad|> must be id 151655)")
        self._head = self._encode(f"{IM_START}system\n{system_prompt}{IM_END}\n{IM_START}user\n{VISION_START}")
        self._tail = self._encode(f"{IM_END}\n{IM_START}assistant\n")
        self._next_user = self._encode(f"{IM_END}\n{IM_START}user\n")

    def _encode(self, template: str) -> list[int]:
        return self.tokenizer.encode(template, add_special_tokens=False)

    def _text(self, text: str) -> list[int]:
        """User / answer text: special-token strings in it stay plain text, so a question
        containing "<|image_pad|>" cannot add scene slots or end the turn."""
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def instruction_text(self, query: SceneQuery) -> str:
        """The user text after the scene tokens (situation first, inline history if any)."""
        text = query.instruction.strip()
        if query.situation:
            text = f"{query.situation.strip()} {text}"
        if query.history and self.dialogue_format == "inline":
            turns = " ".join(f"USER: {u.strip()} ASSISTANT: {a.strip()}" for u, a in query.history)
            text = f"{turns} USER: {text}"
        return text

    def prompt_text(self, query: SceneQuery, num_scene_tokens: int) -> str:
        """The full template string (for logs and tests; the model uses ``prompt_ids``)."""
        turns = self._chat_turns(query)
        first = turns[0][0] if turns else self.instruction_text(query)
        text = (f"{IM_START}system\n{self.system_prompt}{IM_END}\n{IM_START}user\n"
                f"{VISION_START}{IMAGE_PAD * num_scene_tokens}{VISION_END}{first}")
        if turns:
            text += f"{IM_END}\n{IM_START}assistant\n{turns[0][1]}"
            for user, assistant in turns[1:]:
                text += f"{IM_END}\n{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n{assistant}"
            text += f"{IM_END}\n{IM_START}user\n{self.instruction_text(query)}"
        return text + f"{IM_END}\n{IM_START}assistant\n"

    def _chat_turns(self, query: SceneQuery) -> list[tuple[str, str]]:
        if self.dialogue_format != "chat" or not query.history:
            return []
        return [(u.strip(), a.strip()) for u, a in query.history]

    def prompt_ids(self, query: SceneQuery, num_scene_tokens: int) -> list[int]:
        """Template token ids with ``num_scene_tokens`` ``<|image_pad|>`` placeholders."""
        return self.prompt_ids_and_history_mask(query, num_scene_tokens)[0]

    def prompt_ids_and_history_mask(self, query: SceneQuery, num_scene_tokens: int) -> tuple[list[int], list[bool]]:
        """``prompt_ids`` and, aligned with them, True on the earlier assistant turns' tokens
        (text + closing ``<|im_end|>``) of the "chat" format: targets when training on every
        turn of a session. All False in the "inline" format (history is user text there)."""
        if num_scene_tokens < 0:
            raise ValueError(f"num_scene_tokens must be >= 0, got {num_scene_tokens}")
        turns = self._chat_turns(query)
        ids = self._head + [self.image_pad_id] * num_scene_tokens + [self.vision_end_id]
        if not turns:
            ids += self._text(self.instruction_text(query)) + self._tail
            return ids, [False] * len(ids)
        mask = [False] * len(ids)

        def add(part: list[int], target: bool = False) -> None:
            ids.extend(part)
            mask.extend([target] * len(part))

        add(self._text(turns[0][0]) + self._tail)
        for k, (user, assistant) in enumerate(turns):
            if k:
                add(self._next_user[:1], True)  # <|im_end|> closing the previous answer
                add(self._next_user[1:] + self._text(user) + self._tail)
            add(self._text(assistant), True)
        add(self._next_user[:1], True)
        add(self._next_user[1:] + self._text(self.instruction_text(query)) + self._tail)
        return ids, mask

    def answer_ids(self, answer: str) -> list[int]:
        """Target ids of a response (``<|im_end|>`` appended when ``answer_eos``)."""
        ids = self._text(answer.strip())
        if not ids and not self.answer_eos:
            raise ValueError("empty answer has no tokens to score")
        return ids + [self.im_end_id] if self.answer_eos else ids

    def batch_prompt_ids(self, queries: Sequence[SceneQuery], num_scene_tokens: Sequence[int]) -> list[list[int]]:
        return [ids for ids, _ in self.batch_prompt_ids_and_history_masks(queries, num_scene_tokens)]

    def batch_prompt_ids_and_history_masks(self, queries: Sequence[SceneQuery],
                                           num_scene_tokens: Sequence[int]) -> list[tuple[list[int], list[bool]]]:
        if len(queries) != len(num_scene_tokens):
            raise ValueError(f"{len(queries)} queries but {len(num_scene_tokens)} scenes")
        return [self.prompt_ids_and_history_mask(q, n) for q, n in zip(queries, num_scene_tokens)]
