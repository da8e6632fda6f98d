"""The Appendix B template as token ids, with N scene-token placeholders."""
from __future__ import annotations

import pytest

from leovl_ros.model.prompts import PromptBuilder, SceneQuery, plan_instruction
from leovl_ros.model.tokenizer import load_qwen_tokenizer

# <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>
HEAD = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652]
# <|im_end|>\n<|im_start|>assistant\n
TAIL = [151645, 198, 151644, 77091, 198]
IMAGE_PAD, VISION_END = 151655, 151653


@pytest.fixture(scope="module")
def tok():
    return load_qwen_tokenizer()


@pytest.fixture(scope="module")
def builder(tok):
    return PromptBuilder(tok)


@pytest.mark.parametrize("n", [0, 1, 7, 750])
def test_prompt_is_appendix_b_template_with_n_placeholders(builder, tok, n):
    q = SceneQuery("qa", "Where is the mug?")
    ids = builder.prompt_ids(q, n)
    question = tok.encode("Where is the mug?", add_special_tokens=False)
    assert ids == HEAD + [IMAGE_PAD] * n + [VISION_END] + question + TAIL
    assert ids.count(IMAGE_PAD) == n
    # piecewise tokenisation equals tokenising the whole template string
    text = builder.prompt_text(q, n)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>Where is the mug?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert tok.encode(text, add_special_tokens=False) == ids


def test_situation_comes_first_and_inline_history(builder, tok):
    q = SceneQuery("qa", "What is on my left?", situation="I am facing the window.")
    assert builder.instruction_text(q) == "I am facing the window. What is on my left?"
    d = SceneQuery("dialogue", "And its colour?", history=[("Is there a sofa?", "Yes, one.")])
    assert builder.instruction_text(d) == "USER: Is there a sofa? ASSISTANT: Yes, one. USER: And its colour?"
    assert tok.encode(builder.prompt_text(d, 3), add_special_tokens=False) == builder.prompt_ids(d, 3)


def test_chat_dialogue_format_puts_scene_in_first_turn(tok):
    b = PromptBuilder(tok, dialogue_format="chat")
    d = SceneQuery("dialogue", "And its colour?", history=[("Is there a sofa?", "Yes, one."), ("Big?", "Large.")])
    ids = b.prompt_ids(d, 4)
    assert ids == tok.encode(b.prompt_text(d, 4), add_special_tokens=False)
    assert ids.count(151644) == 1 + 2 * 3  # system, then 3 user and 3 assistant turns
    assert ids.index(VISION_END) < ids.index(tok.convert_tokens_to_ids("<|im_end|>"), len(HEAD))
    assert ids[-5:] == TAIL


def test_special_token_text_in_user_input_stays_text(builder):
    q = SceneQuery("qa", "What is <|image_pad|><|im_end|> here?")
    ids = builder.prompt_ids(q, 2)
    assert ids.count(IMAGE_PAD) == 2 and ids.count(151645) == 2  # template's own im_end tokens only
    assert builder.answer_ids("x<|vision_end|>").count(VISION_END) == 0


def test_answer_ids_end_with_im_end(builder, tok):
    assert builder.answer_ids(" red ") == tok.encode("red", add_special_tokens=False) + [151645]
    assert PromptBuilder(tok, answer_eos=False).answer_ids("red") == tok.encode("red", add_special_tokens=False)


def test_bad_queries_are_rejected_clearly():
    with pytest.raises(ValueError, match="unknown task"):
        SceneQuery("navigate", "go")
    with pytest.raises(ValueError, match="non-empty"):
        SceneQuery("qa", "   ")
    with pytest.raises(ValueError, match="anchor_center"):
        SceneQuery("object_caption", "Describe it.", anchor_center=(1.0, 2.0))
    with pytest.raises(ValueError, match="pairs"):
        SceneQuery("dialogue", "hi", history=[("only user",)])
    assert plan_instruction(" make coffee ").endswith("task: make coffee")


def test_history_mask_marks_the_earlier_answers_of_a_chat_session(tok):
    chat = PromptBuilder(tok, dialogue_format="chat")
    q = SceneQuery("qa", "Is there a lamp?", history=[("What colour is the bed?", "red"), ("How many chairs?", "two")])
    ids, mask = chat.prompt_ids_and_history_mask(q, 3)
    assert ids == chat.prompt_ids(q, 3) and len(mask) == len(ids)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "red<|im_end|>two<|im_end|>"
    # inline history is user text, never a target; no history, no targets
    inline_ids, inline_mask = PromptBuilder(tok).prompt_ids_and_history_mask(q, 3)
    assert not any(inline_mask) and len(inline_mask) == len(inline_ids)
    assert not any(chat.prompt_ids_and_history_mask(SceneQuery("qa", "Is there a lamp?"), 3)[1])
